//! Every size limit of the controller in one place.
//!
//! The controller keeps all its configurations in memory and replicates every
//! request through `paxos-log`, so each limit bounds either one log entry or
//! the state a single request can add. A request over a limit is refused with
//! a typed [`ControllerError`](crate::ControllerError) and changes nothing.

/// Most shards a configuration may hold. [`Split`](crate::ControllerOp::Split)
/// beyond it is refused with
/// [`TooManyShards`](crate::ControllerError::TooManyShards).
pub const MAX_SHARDS: usize = 65_536;

/// Most shards the initial configuration may be pre-split into (`kvctl
/// cluster init --shards`). The pre-split rule (see [`crate::config`])
/// separates up to 95 × 95 = 9,025 boundaries; this keeps cluster init
/// modest and leaves room for later splits.
pub const MAX_INITIAL_SHARDS: u32 = 1024;

/// Most groups a configuration may hold.
pub const MAX_GROUPS: usize = 1024;

/// Most replica addresses one group may list. Paxos groups are typically 3
/// or 5 replicas; beyond a few dozen, every write waits on too many fsyncs.
pub const MAX_ADDRESSES_PER_GROUP: usize = 32;

/// Longest replica address, in bytes: a DNS name (at most 253 bytes) plus
/// `:port`.
pub const MAX_ADDRESS_BYTES: usize = 260;

/// Longest key a [`Split`](crate::ControllerOp::Split) may use, in bytes.
/// Every configuration a query returns carries each boundary twice (as one
/// shard's end and the next one's start), so boundaries are kept short.
pub const MAX_KEY_BYTES: usize = 4096;

/// Longest encoded command or query the state machine decodes, in bytes. Larger input is refused before decoding (so a hostile
/// length prefix cannot make the decoder allocate). It stays well below
/// `paxos-log`'s default batch of 1 MiB so one command always fits a batch.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// Most client sessions kept for at-most-once replies. When a new client
/// would exceed it, the session used least recently (lowest last slot, then
/// lowest client id) is dropped; that client's retries of old requests would
/// then be applied again, so admin clients are expected to be few.
pub const MAX_SESSIONS: usize = 1024;
