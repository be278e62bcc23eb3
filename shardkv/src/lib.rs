//! shardkv replica groups: the store clients use.
//!
//! ```text
//!   Clerk ──tarpc ShardKv (client address)──► ShardKvServer (one per replica)
//!     config cache (ControllerClerk)            ├─ write: propose Command::Write to paxos-log
//!     leader per group, backoff,                ├─ read:  paxos-log read-index, no log write
//!     (client_id, seq) retries                  ├─ pull_shard / delete_shard: for other groups
//!                                               ├─ export_begin / _chunk / _end: shard images
//!                                               └─ migration task (leader only):
//!                                                    poll controller → InstallConfig
//!                                                    pull frozen shards → InstallChunk
//!                                                    tell old owners → DeleteShard / GcDone
//!                                                         │
//!   paxos-log Node ── apply ──► ShardMachine (state_machine) ── sled: one tree per shard
//!                                 ├─ group:   configuration, per-shard state (plan)
//!                                 └─ session: at-most-once per shard, expiry
//! ```
//!
//! Each replica group serves the key-range shards the controller gives it.
//! Every write is a [`Command`] in the group's `paxos-log`; the
//! [`ShardMachine`] applies it to the shard's sled tree together with the
//! shard's session table and applied index, in one atomic batch. Reads use
//! the log's read-index path. The group follows the controller's
//! configurations one at a time through its own log ([`group`]); shards it
//! gains are pulled from their previous owner in chunks and installed through
//! the log ([`migration`]); the previous owner deletes its copy once the new
//! owner confirms. The [`Clerk`] routes each key to its group, finds leaders,
//! retries safely and reports operations whose outcome is unknown as
//! indeterminate. Each replica counts the requests it serves ([`stats`]),
//! for the metrics the `tools` crate exports. Design notes and the
//! reasoning behind them: `docs/shardkv.md`.

pub mod clerk;
pub mod error;
pub mod export;
pub mod faults;
pub mod group;
pub mod hash;
pub mod limits;
pub mod migration;
pub mod rpc;
pub mod server;
pub mod session;
pub mod state_machine;
pub mod stats;
pub mod wire;

pub use crate::clerk::{CasResult, Clerk, ClerkError, ClerkOptions, ScanPage};
pub use crate::error::KvError;
pub use crate::group::{GroupState, ShardState};
pub use crate::limits::Limits;
pub use crate::rpc::{ServiceError, ShardKv, ShardKvClient};
pub use crate::server::{ShardKvServer, ShardKvServerConfig};
pub use crate::state_machine::ShardMachine;
pub use crate::wire::{Command, ReadOp, ReadReply, WriteOp, WriteReply};

use controller::ShardId;

/// The sled tree holding the group state. Shard ids count up from 0 and
/// never reach it; a configuration using it is refused.
pub const GROUP_TREE: ShardId = u64::MAX;

/// The sled tree whose applied index is the durable slot: every log entry
/// up to it is flushed to the store.
pub const DURABLE_TREE: ShardId = u64::MAX - 1;
