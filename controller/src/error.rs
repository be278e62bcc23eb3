//! Why the controller refused a request: [`ControllerError`].
//!
//! Every refusal is a value of this one enum. It derives serde so that the
//! state machine can return it inside a
//! [`ControllerReply`](crate::ControllerReply) through the log and over the
//! wire, and the client sees exactly which rule the request broke. A refused
//! request changes nothing: no configuration is created.

use serde::{Deserialize, Serialize};

use crate::config::{Gid, ShardId};
use crate::session::ClientId;

/// A request the controller refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ControllerError {
    /// A join named no group, or a leave named no gid.
    #[error("the request names no group")]
    EmptyRequest,
    /// Gid 0 is reserved: it never names a group, so that "no group" can
    /// never be confused with a real one (in this crate or in a consumer
    /// that stores owners as plain integers).
    #[error("group id 0 is reserved")]
    ReservedGid,
    /// A join named a group that is already in the latest configuration.
    #[error("group {gid} has already joined")]
    GroupExists {
        /// The group that is already present.
        gid: Gid,
    },
    /// A leave or move named a group that is not in the latest configuration.
    #[error("unknown group {gid}")]
    UnknownGroup {
        /// The group that is not present.
        gid: Gid,
    },
    /// A leave listed the same group twice.
    #[error("group {gid} is listed twice")]
    DuplicateGid {
        /// The repeated group.
        gid: Gid,
    },
    /// A move named a shard that is not in the latest configuration.
    #[error("unknown shard {shard}")]
    UnknownShard {
        /// The shard id asked for.
        shard: ShardId,
    },
    /// A split key is already where a shard starts (the empty key always
    /// is: it starts the first shard), so there is nothing to split.
    #[error("the key already starts shard {shard}; nothing to split")]
    SplitAtBoundary {
        /// The shard that starts at the key.
        shard: ShardId,
    },
    /// A join gave a group no replica address.
    #[error("group {gid} lists no replica address")]
    NoAddresses {
        /// The group without addresses.
        gid: Gid,
    },
    /// A join gave a group an empty address.
    #[error("group {gid} lists an empty address")]
    EmptyAddress {
        /// The group with the empty address.
        gid: Gid,
    },
    /// A join gave a group the same address twice.
    #[error("group {gid} lists address {address:?} twice")]
    DuplicateAddress {
        /// The group with the repeated address.
        gid: Gid,
        /// The repeated address.
        address: String,
    },
    /// A join gave a group more addresses than
    /// [`MAX_ADDRESSES_PER_GROUP`](crate::limits::MAX_ADDRESSES_PER_GROUP).
    #[error("group {gid} lists {count} addresses; at most {max} are allowed")]
    TooManyAddresses {
        /// The group with too many addresses.
        gid: Gid,
        /// How many addresses it listed.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A join gave a group an address longer than
    /// [`MAX_ADDRESS_BYTES`](crate::limits::MAX_ADDRESS_BYTES).
    #[error(
        "an address of group {gid} is {len_bytes} bytes long; at most {max_bytes} are allowed"
    )]
    AddressTooLong {
        /// The group with the long address.
        gid: Gid,
        /// Length of the address.
        len_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// A split key is longer than
    /// [`MAX_KEY_BYTES`](crate::limits::MAX_KEY_BYTES).
    #[error("the key is {len_bytes} bytes long; at most {max_bytes} are allowed")]
    KeyTooLong {
        /// Length of the key.
        len_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// A split would exceed [`MAX_SHARDS`](crate::limits::MAX_SHARDS).
    #[error("a configuration holds at most {max} shards")]
    TooManyShards {
        /// The limit.
        max: usize,
    },
    /// A join would exceed [`MAX_GROUPS`](crate::limits::MAX_GROUPS).
    #[error("the join would make {count} groups; at most {max} are allowed")]
    TooManyGroups {
        /// Groups after the join.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The initial configuration must have 1 to
    /// [`MAX_INITIAL_SHARDS`](crate::limits::MAX_INITIAL_SHARDS) shards.
    #[error("the initial configuration needs 1 to {max} shards, not {count}")]
    InvalidInitialShards {
        /// The count asked for.
        count: u32,
        /// The limit.
        max: u32,
    },
    /// The client already sent a later request; this one is an old retry
    /// whose reply is no longer kept, so it is refused rather than applied
    /// a second time.
    #[error("client {client_id} sent seq {seq} after seq {last_seq}; the old retry is refused")]
    StaleSeq {
        /// The client.
        client_id: ClientId,
        /// The seq of this request.
        seq: u64,
        /// The latest seq the controller applied for the client.
        last_seq: u64,
    },
    /// The encoded request is longer than
    /// [`MAX_REQUEST_BYTES`](crate::limits::MAX_REQUEST_BYTES).
    #[error("the request is {len_bytes} bytes long; at most {max_bytes} are allowed")]
    RequestTooLarge {
        /// Length of the encoded request.
        len_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// The bytes do not decode as a request.
    #[error("malformed request: {reason}")]
    Malformed {
        /// What the decoder said.
        reason: String,
    },
}
