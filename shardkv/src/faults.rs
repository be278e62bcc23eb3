//! Faults a test injects into one replica: [`Faults`]. All zero in real use.
//!
//! A lost request or reply comes back to the caller as
//! [`ServiceError::Indeterminate`](crate::ServiceError::Indeterminate), which
//! is what a clerk concludes from a real timeout, only sooner; a lost peer
//! message is dropped before the `paxos-log` transport sends it. Decisions
//! come from a seeded generator, so a run's fault pattern depends only on
//! the seed and on the order of calls.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use paxos_log::{Envelope, Transport};

/// What to lose, in parts per thousand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Client requests (write, read, pull, delete) lost before they run.
    pub lose_request_per_mille: u32,
    /// Replies lost after the request ran.
    pub lose_reply_per_mille: u32,
    /// `paxos-log` messages to peers lost.
    pub lose_peer_message_per_mille: u32,
    /// Seed of the decisions.
    pub seed: u64,
}

/// A shared, seeded coin.
#[derive(Debug)]
pub(crate) struct Dice {
    state: AtomicU64,
}

impl Dice {
    pub(crate) fn new(seed: u64) -> Dice {
        Dice {
            state: AtomicU64::new(seed),
        }
    }

    /// True with probability `per_mille` / 1000.
    pub(crate) fn roll(&self, per_mille: u32) -> bool {
        if per_mille == 0 {
            return false;
        }
        // splitmix64 over an atomic counter: lock-free and reproducible
        // for a given order of calls.
        let mut z = self
            .state
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        z % 1000 < u64::from(per_mille)
    }
}

/// A transport that loses a share of the messages it is given.
pub(crate) struct LossyTransport<T: ?Sized> {
    pub(crate) inner: Arc<T>,
    pub(crate) dice: Dice,
    pub(crate) per_mille: u32,
}

impl<T: Transport + ?Sized> Transport for LossyTransport<T> {
    fn send(&self, mut envelopes: Vec<Envelope>) {
        envelopes.retain(|_| !self.dice.roll(self.per_mille));
        if !envelopes.is_empty() {
            self.inner.send(envelopes);
        }
    }
}
