//! The network transport of the replicated log: [`TarpcTransport`] sends a
//! replica's messages to its peers over TCP, and [`PeerListener`] receives
//! them and hands them to the local replica.
//!
//! ```text
//!  driver thread ──send()──► TarpcTransport: one bounded queue + one task per peer
//!                                   │  batches what is queued into one
//!                                   │  `deliver` RPC (tarpc)
//!                                   ▼
//!              TCP: 4-byte length prefix, bincode body, frames ≤ max_frame_bytes
//!                                   │
//!  peer: PeerListener ──► a task per connection ──► NodeHandle::deliver ──► driver
//! ```
//!
//! The accept loop, connection limits, idle timeouts and shutdown of the
//! server side are [`service`]'s generic [`service::TarpcServer`], which
//! other services of the system (the controller's admin service) share.
//!
//! This is the only code of the log that touches a socket: the core
//! ([`crate::Replica`]) and the driver ([`crate::Node`]) see only the
//! [`Transport`](crate::Transport) trait and
//! [`NodeHandle::deliver`](crate::NodeHandle::deliver), so the same replica
//! runs over [`ChannelTransport`](crate::ChannelTransport) in tests and
//! over this module in production.
//!
//! # The RPC
//!
//! One method, [`rpc::PaxosPeer::deliver`]: `(group, batch of envelopes)`,
//! answered with `()` as soon as the batch is handed to the local replica's
//! input queue. Messages are one-way (a reply is just another envelope sent
//! the other way), so the answer carries nothing but flow control and
//! error detection. The server drops the whole batch if `group` is not its
//! own group id (a peer configured for another group, or a stale address
//! reused by another group), and drops each envelope whose `to` is not its
//! replica. Paxos tolerates loss, so dropping is always safe.
//!
//! # Sending
//!
//! [`Transport::send`](crate::Transport::send) runs on the driver's OS
//! thread and never blocks: each envelope goes into its peer's bounded
//! queue with `try_send`, and is dropped when that queue is full (a slow or
//! dead peer) or when the peer is unknown. One tokio task per peer owns the
//! connection: it connects lazily, batches everything queued into one
//! `deliver` call (bounded by [`NetLimits::batch_envelopes_max`] and by the
//! frame size), waits for the answer, and after any error drops the
//! connection and reconnects with exponential backoff. A peer's task only
//! ever waits on that peer, so one slow peer never holds up the others.
//!
//! # Access
//!
//! With an [`AccessKey`] in [`NetLimits::access`], every connection opens
//! with a hello carrying the cluster id and secret, checked by the server
//! before any frame is read ([`access`]); a wrong or missing hello closes
//! that connection only, and the client is told why. With a [`TlsConfig`]
//! in [`NetLimits::tls`], a mutual TLS handshake comes first ([`tls`]) and
//! everything after it, the hello included, is encrypted.
//!
//! # Frames and bad input
//!
//! Every message is one length-delimited frame (a 4-byte big-endian length,
//! then a bincode 1.x body, tarpc's serde transport over tokio-util's
//! `LengthDelimitedCodec` and tokio-serde's `Bincode`). Both sides refuse
//! frames longer than [`NetLimits::max_frame_bytes`] (16 MiB by default),
//! before reading their body, and bincode is bounded by the same size. The
//! sender never builds a frame over the limit: a batch is cut before it, and
//! a single envelope that could never fit is dropped (and counted).
//!
//! On the server, anything wrong with a connection (an oversized length, a
//! body that is not a valid request, a frame cut short by end of stream, a
//! request deadline above [`NetLimits::max_request_deadline`], an I/O
//! error, or no request for [`NetLimits::idle_timeout`]) closes that
//! connection only; the accept loop and every other connection go on. The
//! deadline check exists because tarpc would otherwise panic (in its timer
//! wheel, or adding the deadline to `Instant::now()`) on a deadline years
//! away. Concurrent connections are capped by
//! [`NetLimits::max_connections`] (the excess is accepted and closed at
//! once) and requests in flight on one connection by
//! [`NetLimits::max_in_flight_per_connection`] (the connection is not read
//! further until one completes). Nothing read from the network is
//! unwrapped: every decoding failure is an error that closes the connection.

pub mod access;
mod client;
pub mod codec;
pub mod rpc;
mod server;
pub mod service;
pub mod tls;

use std::time::Duration;

pub use self::access::AccessKey;
pub use self::client::{connect, TarpcTransport, TransportStats};
pub use self::server::{PeerListener, ServerHandle, ServerStats};
pub use self::tls::{NetStream, TlsConfig};

/// Default [`NetLimits::max_frame_bytes`]: 16 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 << 20;

/// Sizes, bounds and timeouts of the transport. One value configures both
/// the server and the client side; each uses the fields that concern it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetLimits {
    /// Longest frame (body, without the 4-byte length) either side sends
    /// or accepts. A longer length prefix closes the connection.
    pub max_frame_bytes: usize,
    /// Server: connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// Server: requests of one connection being handled at once; the
    /// connection is not read further until one completes.
    pub max_in_flight_per_connection: usize,
    /// Server: a connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Server: requests whose deadline is further away than this are
    /// refused (and their connection closed).
    pub max_request_deadline: Duration,
    /// Client: envelopes queued per peer before new ones are dropped.
    pub peer_queue_depth: usize,
    /// Client: most envelopes in one `deliver` call.
    pub batch_envelopes_max: usize,
    /// Client: how long one `deliver` call may take before the connection
    /// is considered broken. Also the deadline the request carries, so it
    /// must not exceed the server's `max_request_deadline`.
    pub rpc_timeout: Duration,
    /// Client: how long a TCP connect may take.
    pub connect_timeout: Duration,
    /// Client: first wait before reconnecting after an error.
    pub backoff_min: Duration,
    /// Client: longest wait between reconnection attempts.
    pub backoff_max: Duration,
    /// Both sides: the cluster's id and secret. With a key, a client opens
    /// every connection with the [`access`] handshake and a server refuses
    /// connections that do not (see the module). `None`: no handshake.
    pub access: Option<AccessKey>,
    /// Both sides: mutual TLS with the cluster's CA ([`tls`]). `None`:
    /// plaintext.
    pub tls: Option<TlsConfig>,
}

impl Default for NetLimits {
    fn default() -> Self {
        NetLimits {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_connections: 1024,
            max_in_flight_per_connection: 32,
            idle_timeout: Duration::from_secs(60),
            max_request_deadline: Duration::from_secs(60),
            peer_queue_depth: 8192,
            batch_envelopes_max: 1024,
            rpc_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            access: None,
            tls: None,
        }
    }
}
