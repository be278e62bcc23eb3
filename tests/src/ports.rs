//! Loopback ports for servers that tests stop and restart on the same
//! address: [`restartable_addr`].
//!
//! A port picked by binding port 0 comes from the kernel's ephemeral range
//! (32768-60999 on Linux), the same range outgoing connections take their
//! local ports from. Once a test stops a server to restart it, any client
//! connection in any test process may take that port, and the restart
//! fails with "address in use". Ports picked here lie below that range,
//! where no outgoing connection lands; another test could still choose the
//! same one, but only by the same random draw, which the bind check and
//! ~12,000 candidates make rare.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::paxos_sim::SimRng;

/// First port considered.
const LOW_PORT: u16 = 20_000;
/// One past the last port considered (the default start of Linux's
/// ephemeral range).
const HIGH_PORT: u16 = 32_768;

/// Draws of this process so far, so two calls never share a generator
/// state.
static DRAWS: AtomicU64 = AtomicU64::new(0);

/// A loopback address whose port is free now and lies below the ephemeral
/// range (see the module docs). The port is not held: bind it soon.
pub fn restartable_addr() -> SocketAddr {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    let seed = u64::from(std::process::id()) << 32
        ^ u64::from(nanos)
        ^ DRAWS
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9);
    let mut rng = SimRng::new(seed);
    for _ in 0..1000 {
        let offset = rng.below(u64::from(HIGH_PORT - LOW_PORT));
        let port = LOW_PORT + u16::try_from(offset).expect("below the span, which fits u16");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free loopback port between {LOW_PORT} and {HIGH_PORT} after 1000 draws");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_below_the_ephemeral_range_and_bindable() {
        for _ in 0..20 {
            let addr = restartable_addr();
            assert!((LOW_PORT..HIGH_PORT).contains(&addr.port()));
            TcpListener::bind(addr).expect("free");
        }
    }
}
