//! The replicated shard controller: numbered configurations of groups and
//! key-range shards, replicated with `paxos-log`.
//!
//! ```text
//!   admin client ──(client_id, seq, op)──► paxos-log ──► apply(slot, bytes)
//!                                                          │
//!                               ControllerStateMachine ◄───┘
//!                               ├─ wire:     decode command / encode reply
//!                               ├─ session:  at-most-once per (client, seq)
//!                               └─ core:     Controller (pure history)
//!                                   ├─ config:    Configuration, Shard, pre-split
//!                                   └─ rebalance: owners after Join / Leave
//! ```
//!
//! A [`Configuration`] numbers groups (gid -> replica addresses) and the
//! shards (ordered key ranges `[start, end)` covering the key space) each
//! group serves. [`Controller`] holds every configuration so far and creates
//! the next one for each Join, Leave, Move or Split; Join and Leave
//! [`rebalance`](rebalance::rebalance) so shard counts differ by at most one
//! with the fewest moves. [`ControllerStateMachine`] implements
//! [`paxos_log::StateMachine`] on top: it decodes commands, deduplicates
//! retried changes by `(client_id, seq)`, answers queries and takes and
//! restores snapshots. Everything up to here is pure and deterministic.
//!
//! The service around it:
//!
//! ```text
//!   ControllerClerk (clerk) ──tarpc ShardController (rpc)──► ControllerServer (server)
//!     leader cache, backoff,                                   ├─ change: propose to paxos-log
//!     (client_id, seq) retries                                 ├─ query:  read-index read
//!                                                              └─ paxos-log Node + WAL + snapshots
//! ```
//!
//! [`ControllerServer`] runs one replica: a `paxos-log` node over TCP with
//! a durable WAL and snapshots, driving the state machine, and the
//! [`ShardController`] service for admin clients.
//! [`ControllerClerk`] finds the leader, retries safely and reports a change
//! whose outcome is unknown as indeterminate.

pub mod clerk;
pub mod config;
pub mod core;
pub mod error;
pub mod limits;
pub mod rebalance;
pub mod rpc;
pub mod server;
pub mod session;
pub mod state_machine;
pub mod wire;

pub use crate::clerk::{unique_client_id, ClerkError, ClerkOptions, ControllerClerk};
pub use crate::config::{ConfigNum, Configuration, Gid, Shard, ShardId};
pub use crate::core::Controller;
pub use crate::error::ControllerError;
pub use crate::rpc::{ControllerStatus, ServiceError, ShardController, ShardControllerClient};
pub use crate::server::{
    ControllerListeners, ControllerServer, ControllerServerConfig, MemberAddrs, ServerError,
};
pub use crate::session::{ClientId, SessionTable};
pub use crate::state_machine::{ControllerStateMachine, SNAPSHOT_VERSION};
pub use crate::wire::{
    decode, encode, ControllerCommand, ControllerOp, ControllerQuery, ControllerReply,
};
