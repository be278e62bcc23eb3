//! What crosses the log and the network: [`ControllerCommand`],
//! [`ControllerQuery`], [`ControllerReply`], and [`encode`] / [`decode`].
//!
//! The encoding is bincode 1.3.3 with fixed-width integers (the same bytes
//! `bincode::serialize` writes), rejecting trailing bytes. [`decode`] never
//! panics and never allocates more than its input could describe: commands
//! and queries over [`MAX_REQUEST_BYTES`] are refused before decoding, and
//! the decoder's byte limit is the input length, so a corrupt length prefix
//! fails instead of allocating.

use std::collections::BTreeMap;

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigNum, Configuration, Gid, ShardId};
use crate::error::ControllerError;
use crate::limits::MAX_REQUEST_BYTES;
use crate::session::ClientId;

/// A change to the configuration. Each one that succeeds creates the next
/// configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerOp {
    /// New groups (gid -> replica addresses) join; shards rebalance.
    Join {
        /// The joining groups.
        groups: BTreeMap<Gid, Vec<String>>,
    },
    /// Groups leave; their shards go to the remaining groups (or become
    /// unowned if none remains).
    Leave {
        /// The leaving groups.
        gids: Vec<Gid>,
    },
    /// Hands one shard to one group, overriding the balance (no rebalance).
    Move {
        /// The shard to move.
        shard: ShardId,
        /// The group to serve it.
        gid: Gid,
    },
    /// Splits the shard containing `key` at `key`: the shard keeps
    /// `[start, key)` and its id, the new shard `[key, end)` gets a fresh id
    /// and the same group. No data moves; no rebalance.
    Split {
        /// The first key of the new shard.
        key: Vec<u8>,
    },
    /// Replaces group `gid`'s replica addresses (after a replica was added
    /// to or removed from it). No shard moves.
    SetAddresses {
        /// The group.
        gid: Gid,
        /// Its replicas' client addresses.
        addresses: Vec<String>,
    },
}

/// A read of the configurations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerQuery {
    /// Configuration `num`, or the latest one if `num` is `None` or beyond
    /// the latest.
    Config {
        /// The configuration asked for.
        num: Option<ConfigNum>,
    },
}

/// A command ordered through the log. Reads are not commands: a
/// [`ControllerQuery`] goes through the driver's read-index `read`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerCommand {
    /// A change, applied at most once per `(client_id, seq)` (see
    /// [`crate::session`]).
    Change {
        /// The client sending it.
        client_id: ClientId,
        /// The client's request number; retries reuse it.
        seq: u64,
        /// The change.
        op: ControllerOp,
    },
}

/// The answer to a command or query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerReply {
    /// A Join, Leave or Move took effect, creating configuration `num`.
    Changed {
        /// The configuration created.
        num: ConfigNum,
    },
    /// A Split took effect, creating configuration `num` and shard `shard`.
    Split {
        /// The configuration created.
        num: ConfigNum,
        /// The id of the new upper shard.
        shard: ShardId,
    },
    /// The configuration a query asked for.
    Config(Configuration),
    /// The request was refused; nothing changed.
    Error(ControllerError),
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::ControllerCommand {}
    impl Sealed for super::ControllerQuery {}
    impl Sealed for super::ControllerReply {}
}

/// A type [`encode`] and [`decode`] handle.
pub trait WireMessage: sealed::Sealed + Serialize + DeserializeOwned {
    /// Longest encoding [`decode`] accepts, in bytes.
    const MAX_BYTES: usize;
}

impl WireMessage for ControllerCommand {
    const MAX_BYTES: usize = MAX_REQUEST_BYTES;
}

impl WireMessage for ControllerQuery {
    const MAX_BYTES: usize = MAX_REQUEST_BYTES;
}

impl WireMessage for ControllerReply {
    // A configuration of MAX_SHARDS long keys is megabytes; the input
    // length (the decoder's limit) is the only bound.
    const MAX_BYTES: usize = usize::MAX;
}

/// The bincode options of every controller (and shardkv) encoding:
/// fixed-width integers, no trailing bytes, and a byte limit on decoding.
pub fn bincode_options(limit_bytes: usize) -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(u64::try_from(limit_bytes).unwrap_or(u64::MAX))
}

/// Encodes a command, query or reply.
pub fn encode<T: WireMessage>(value: &T) -> Vec<u8> {
    // Serializing these derived, plain-data enums into a Vec cannot fail
    // (no limit applies to encoding a value that exists in memory, and no
    // impl returns an error). Were it ever to, the empty output decodes as
    // `Malformed` at the receiver instead of panicking on the apply path.
    bincode_options(usize::MAX)
        .serialize(value)
        .unwrap_or_default()
}

/// Decodes a command, query or reply; garbage is an error, never a panic.
pub fn decode<T: WireMessage>(bytes: &[u8]) -> Result<T, ControllerError> {
    if bytes.len() > T::MAX_BYTES {
        return Err(ControllerError::RequestTooLarge {
            len_bytes: bytes.len(),
            max_bytes: T::MAX_BYTES,
        });
    }
    bincode_options(bytes.len())
        .deserialize(bytes)
        .map_err(|err| ControllerError::Malformed {
            reason: err.to_string(),
        })
}
