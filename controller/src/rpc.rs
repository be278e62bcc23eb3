//! The controller's client-facing wire contract: the [`ShardController`]
//! tarpc service and the [`ServiceError`] it answers with.
//!
//! ```text
//!   ControllerClerk ──change(client_id, seq, op)──► ControllerServer ──propose──► paxos-log
//!                   ──query(num)──────────────────►                  ──read (read-index)
//! ```
//!
//! Admin clients ([`crate::clerk::ControllerClerk`]) call it;
//! [`crate::server::ControllerServer`] serves it on each replica's client
//! address, next to (and separate from) the replicas' own `paxos-log` peer
//! port. It carries the existing wire types of [`crate::wire`]
//! ([`ControllerOp`], [`ControllerReply`]) and [`Configuration`] unchanged.
//! Frames are length-delimited bincode, bounded like the log's peer
//! transport (see [`paxos_log::net::codec`], shared with the log's peers).
//!
//! # Errors
//!
//! Two layers, deliberately kept apart:
//!
//! * The controller's own refusals ([`ControllerError`]: unknown group,
//!   split at a boundary, ...) are *answers*: a `change` returns
//!   `Ok(ControllerReply::Error(..))`, exactly the reply the state machine
//!   recorded in its session table, so a retried request gets the same
//!   refusal. Nothing changed. A `query` cannot be refused by the rules, but
//!   a refusal of the request itself would come back as
//!   [`ServiceError::Controller`].
//! * [`ServiceError`]'s other variants are about reaching the controller:
//!   whether the change certainly did not happen ([`ServiceError::NotLeader`],
//!   [`ServiceError::Busy`], [`ServiceError::Stopped`]) or may have
//!   ([`ServiceError::Indeterminate`]).
//!
//! Changing anything here changes the wire format between clerks and
//! controller replicas.

use serde::{Deserialize, Serialize};

use crate::config::{ConfigNum, Configuration};
use crate::error::ControllerError;
use crate::session::ClientId;
use crate::wire::{ControllerOp, ControllerReply};

/// What a controller replica offers admin clients.
#[tarpc::service]
pub trait ShardController {
    /// Applies `op` at most once for `(client_id, seq)`: a retry with the
    /// same pair gets the reply of the first application (see
    /// [`crate::session`]). Answers once the change is chosen and applied:
    /// [`ControllerReply::Changed`] or [`ControllerReply::Split`], or
    /// [`ControllerReply::Error`] if the controller refused it (nothing
    /// changed).
    async fn change(
        client_id: ClientId,
        seq: u64,
        op: ControllerOp,
    ) -> Result<ControllerReply, ServiceError>;

    /// Configuration `num`, or the latest one if `num` is `None` or beyond
    /// the latest. Linearizable: it reflects every change acknowledged
    /// before the call.
    async fn query(num: Option<ConfigNum>) -> Result<Configuration, ServiceError>;

    /// What this replica knows, without going through the log (it may
    /// lag): for `kvctl cluster status`.
    async fn status() -> ControllerStatus;
}

/// One controller replica's view of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerStatus {
    /// This replica.
    pub node_id: u64,
    /// `leader`, `candidate` or `follower`.
    pub role: String,
    /// The replica it believes leads.
    pub leader_hint: Option<u64>,
    /// Every slot up to here is applied.
    pub applied_slot: u64,
    /// The latest configuration this replica has applied.
    pub num: ConfigNum,
}

/// Why a call did not get the controller's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ServiceError {
    /// This replica does not lead; the request certainly did not take
    /// effect. `leader_hint` is the *client* address of the replica it
    /// believes leads, if any.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// Client address (`host:port`) of the believed leader.
        leader_hint: Option<String>,
    },
    /// The replica's queue is full; the request certainly did not take
    /// effect. Retry after a backoff.
    #[error("controller replica busy; retry later")]
    Busy,
    /// The change may or may not have taken effect (leadership changed, or
    /// no answer in time). Retrying with the same `(client_id, seq)` is safe
    /// and tells which.
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
    /// The replica is stopping; the request certainly did not take effect.
    #[error("controller replica stopped")]
    Stopped,
    /// The controller refused the request itself; nothing changed.
    #[error(transparent)]
    Controller(ControllerError),
}
