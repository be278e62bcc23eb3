//! What crosses the log and the network: client operations
//! ([`WriteOp`], [`ReadOp`]), the log's [`Command`]s, their answers, and
//! [`encode`] / [`decode`].
//!
//! Writes go through the log as [`Command::Write`]; reads never do: a
//! [`ReadOp`] is answered through `paxos-log`'s read-index path. The other
//! commands are the group's own bookkeeping, proposed by its leader:
//! installing the next configuration, installing a chunk of a shard pulled
//! from its previous owner, deleting a shard the new owner has confirmed,
//! and noting that the previous owner deleted its copy.
//!
//! The encoding is bincode 1.3.3 with fixed-width integers, rejecting
//! trailing bytes; [`decode`] never panics and never allocates more than its
//! input could describe (the decoder's byte limit is the input length).

use bincode::Options;
use controller::{ConfigNum, Configuration, ShardId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::KvError;
use crate::limits::ApplyLimits;

/// Identifies a client (a clerk instance): unique per instance, never
/// reused.
pub type ClientId = u64;

/// A client operation that changes the store, applied at most once per
/// `(client_id, seq)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Appends `value` to the value of `key` (an absent key counts as
    /// empty).
    Append {
        /// The key.
        key: Vec<u8>,
        /// The bytes to append.
        value: Vec<u8>,
    },
    /// Removes `key` (absent already is fine).
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Sets `key` to `new` if its value equals `expected` (`None`: the key
    /// is absent).
    Cas {
        /// The key.
        key: Vec<u8>,
        /// The value the key must have; `None` means absent.
        expected: Option<Vec<u8>>,
        /// The value to set.
        new: Vec<u8>,
    },
    /// Sets `key` to [`put_hash`](crate::hash::put_hash)`(previous, value)`
    /// and answers with the previous value.
    PutHash {
        /// The key.
        key: Vec<u8>,
        /// The argument hashed after the previous value.
        value: Vec<u8>,
    },
}

impl WriteOp {
    /// The key the operation touches.
    pub fn key(&self) -> &[u8] {
        match self {
            WriteOp::Put { key, .. }
            | WriteOp::Append { key, .. }
            | WriteOp::Delete { key }
            | WriteOp::Cas { key, .. }
            | WriteOp::PutHash { key, .. } => key,
        }
    }

    /// The longest value argument it carries, in bytes.
    pub fn value_len(&self) -> usize {
        match self {
            WriteOp::Put { value, .. }
            | WriteOp::Append { value, .. }
            | WriteOp::PutHash { value, .. } => value.len(),
            WriteOp::Delete { .. } => 0,
            WriteOp::Cas { expected, new, .. } => {
                new.len().max(expected.as_ref().map_or(0, Vec::len))
            }
        }
    }
}

/// The answer to a [`WriteOp`] that was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteReply {
    /// A put, append or delete took effect.
    Done,
    /// A compare-and-swap: whether it swapped, and if not, the value it
    /// found (`None`: absent).
    Cas {
        /// Whether the new value was set.
        swapped: bool,
        /// The value found when it did not swap.
        current: Option<Vec<u8>>,
    },
    /// A put-hash took effect; the value before it (`None`: absent).
    Previous(Option<Vec<u8>>),
}

/// A read, answered without writing the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadOp {
    /// The value of `key`.
    Get {
        /// The key.
        key: Vec<u8>,
    },
    /// Keys in `[start, end)` of the shard that contains `start`, in key
    /// order, at most `limit` of them (`end: None` is the end of the key
    /// space).
    Scan {
        /// First key (inclusive).
        start: Vec<u8>,
        /// End (exclusive); `None`: no end.
        end: Option<Vec<u8>>,
        /// Most items wanted.
        limit: u32,
    },
}

/// The answer to a [`ReadOp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadReply {
    /// The value of the key (`None`: absent).
    Value(Option<Vec<u8>>),
    /// Items of one shard, in key order.
    Items {
        /// The key/value pairs.
        items: Vec<(Vec<u8>, Vec<u8>)>,
        /// Where the rest of the range starts (the next key after a reply
        /// cut short by `limit` or the byte bound, else the end of the
        /// shard), or `None` if the range is done.
        resume: Option<Vec<u8>>,
    },
}

/// Which key space of a shard a migrated record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RecordSpace {
    /// Client data.
    Data,
    /// Bookkeeping that moves with the shard (sessions).
    Aux,
}

/// Where a migration stands: the last record received.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cursor {
    /// Its space (data comes before aux).
    pub space: RecordSpace,
    /// Its key.
    pub key: Vec<u8>,
}

/// One record of a migrating shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Its space.
    pub space: RecordSpace,
    /// Its key.
    pub key: Vec<u8>,
    /// Its value.
    pub value: Vec<u8>,
}

impl Record {
    /// Bytes of key and value.
    pub fn size_bytes(&self) -> usize {
        self.key.len() + self.value.len()
    }

    /// The cursor just past this record.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            space: self.space,
            key: self.key.clone(),
        }
    }
}

/// One entry of a group's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A client write.
    Write {
        /// The client.
        client_id: ClientId,
        /// The client's request number; retries reuse it.
        seq: u64,
        /// Wall-clock time (ms since the Unix epoch) at the replica that
        /// proposed it: the shard's log time advances to it, which is what
        /// expires idle sessions (see [`crate::session`]).
        stamp_ms: u64,
        /// The limits it is applied under.
        limits: ApplyLimits,
        /// The operation.
        op: WriteOp,
    },
    /// Moves the group from its configuration to `config`, which must be
    /// the next one.
    InstallConfig {
        /// The next configuration.
        config: Configuration,
    },
    /// Installs records of `shard`, gained in configuration `num`, that
    /// follow `after` (`None`: the first records).
    InstallChunk {
        /// The shard.
        shard: ShardId,
        /// The configuration that gave it to this group.
        num: ConfigNum,
        /// The last record installed before this chunk.
        after: Option<Cursor>,
        /// The records, in order.
        records: Vec<Record>,
        /// Whether these are the last ones.
        done: bool,
    },
    /// Deletes this group's copy of `shard`, lost in configuration `num`,
    /// now that its new owner has it.
    DeleteShard {
        /// The shard.
        shard: ShardId,
        /// The configuration in which this group lost it.
        num: ConfigNum,
    },
    /// Notes that the previous owner of `shard` (gained in `num`) deleted
    /// its copy.
    GcDone {
        /// The shard.
        shard: ShardId,
        /// The configuration that gave it to this group.
        num: ConfigNum,
    },
}

/// The state machine's answer to a command or read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome<T> {
    /// It was applied (or answered).
    Ok(T),
    /// It was refused by the rules; nothing changed.
    Refused(KvError),
    /// This replica's storage failed while applying it. The entry is in the
    /// log, so other replicas applied it: its outcome is unknown to the
    /// client. The replica stops serving.
    Failed(String),
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Command {}
    impl Sealed for super::ReadOp {}
    impl<T> Sealed for super::Outcome<T> {}
}

/// A type [`encode`] and [`decode`] handle.
pub trait WireMessage: sealed::Sealed + Serialize + DeserializeOwned {}
impl WireMessage for Command {}
impl WireMessage for ReadOp {}
impl<T: Serialize + DeserializeOwned> WireMessage for Outcome<T> {}

/// The bincode options of every shardkv encoding: the controller's
/// (fixed-width integers, no trailing bytes, a byte limit on decoding), so
/// the whole project writes one bincode dialect.
pub(crate) use controller::wire::bincode_options;

/// Encodes a command, read or answer.
pub fn encode<T: WireMessage>(value: &T) -> Vec<u8> {
    // Serializing these plain-data enums into a Vec cannot fail (no limit
    // applies to encoding, and no impl returns an error). Were it ever to,
    // the empty output decodes as malformed at the receiver instead of
    // panicking on the apply path.
    bincode_options(usize::MAX)
        .serialize(value)
        .unwrap_or_default()
}

/// Decodes a command, read or answer; garbage is an error, never a panic.
pub fn decode<T: WireMessage>(bytes: &[u8]) -> Result<T, KvError> {
    bincode_options(bytes.len())
        .deserialize(bytes)
        .map_err(|err| KvError::Malformed {
            reason: err.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_decodes_to_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            b"\x00",
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff",
            b"hello",
        ] {
            assert!(matches!(
                decode::<Command>(bytes),
                Err(KvError::Malformed { .. })
            ));
        }
        let command = Command::GcDone { shard: 3, num: 7 };
        let mut bytes = encode(&command);
        assert_eq!(decode::<Command>(&bytes), Ok(command));
        bytes.push(0);
        assert!(decode::<Command>(&bytes).is_err(), "trailing bytes refused");
    }
}
