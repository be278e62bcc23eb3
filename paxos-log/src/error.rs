//! Errors of the replicated log.

use crate::types::NodeId;

/// A configuration that cannot work; the text says which setting and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid paxos-log configuration: {0}")]
pub struct ConfigError(pub String);

/// Why a proposal or read was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader takes proposals; try the hinted replica.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The replica this one believes leads, if any.
        leader_hint: Option<NodeId>,
    },
    /// Too many proposals are queued; retry after a backoff.
    #[error("too many pending proposals; retry later")]
    Busy,
    /// A membership change is already under way (proposed, or chosen and
    /// not yet in force); retry once it is in force.
    #[error("a membership change is already in progress; retry once it is in force")]
    Reconfiguring,
    /// The proposed members cannot form a configuration.
    #[error("invalid membership: {0}")]
    InvalidMembership(String),
}
