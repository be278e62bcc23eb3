//! Why a replica group refused a request: [`KvError`].
//!
//! Every refusal is a value of this one enum, decided either by the server
//! before the request takes a log slot (sizes) or by the state machine at the
//! request's place in the log (ownership, sessions). A refused request
//! changed nothing. It derives serde so the state machine can return it
//! through the log and the server over the wire, and the client sees exactly
//! which rule the request broke.

use controller::{ConfigNum, ShardId};
use serde::{Deserialize, Serialize};

/// A request the group refused; it certainly changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum KvError {
    /// This group does not serve the key's shard at configuration `num`
    /// (another group does, or the shard is still arriving). Ask the
    /// controller for a configuration newer than `num` if it names another
    /// group; otherwise retry later.
    #[error("this group does not serve that key at configuration {num}")]
    WrongGroup {
        /// The group's configuration when it refused.
        num: ConfigNum,
    },
    /// The key is longer than the group's limit.
    #[error("the key is {len_bytes} bytes long; at most {max_bytes} are allowed")]
    KeyTooLarge {
        /// Length of the key.
        len_bytes: usize,
        /// The limit (`key_bytes_max`).
        max_bytes: usize,
    },
    /// The value (or, for an append, the value it would produce) is longer
    /// than the group's limit.
    #[error("the value would be {len_bytes} bytes long; at most {max_bytes} are allowed")]
    ValueTooLarge {
        /// Length of the value.
        len_bytes: u64,
        /// The limit (`value_bytes_max`).
        max_bytes: u64,
    },
    /// A scan range whose end is not after its start.
    #[error("the scan range is empty: the end is not after the start")]
    EmptyRange,
    /// A later request of this client was applied first, so this one is a
    /// late copy; it was not applied now (an earlier copy may have been).
    #[error("request {seq} of client {client_id:016x} is older than its last applied request {last_seq}")]
    StaleRequest {
        /// The client.
        client_id: u64,
        /// The request's sequence number.
        seq: u64,
        /// The last sequence number applied for the client.
        last_seq: u64,
    },
    /// The shard no longer remembers this client and the request is old
    /// enough to be a retry of one it forgot; it was not applied now (an
    /// earlier copy may have been). Start a new client session.
    #[error("the session of client {client_id:016x} expired; start a new client")]
    SessionExpired {
        /// The client.
        client_id: u64,
    },
    /// The shard remembers as many clients as it may; a new client is
    /// refused until idle sessions expire. Retry later.
    #[error("shard {shard} remembers {max} client sessions already; retry later")]
    TooManySessions {
        /// The shard.
        shard: ShardId,
        /// The limit (`sessions_per_shard_max`).
        max: u64,
    },
    /// The request could not be decoded (a bug or a version mismatch).
    #[error("malformed request: {reason}")]
    Malformed {
        /// What the decoder said.
        reason: String,
    },
}
