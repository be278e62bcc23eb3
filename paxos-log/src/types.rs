//! The vocabulary of the replicated log: nodes, ballots, slots, values.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Identifies one replica of a group. Never reused for a different replica.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// A proposal number. Totally ordered by `(round, node_id)`, so two
/// proposers never share a ballot.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Ballot {
    /// Grows by one each time a replica starts an election.
    pub round: u64,
    /// The replica that owns this ballot (the would-be leader).
    pub node_id: NodeId,
}

impl Ballot {
    /// The ballot below every real one: nothing promised, nothing accepted.
    pub const ZERO: Ballot = Ballot {
        round: 0,
        node_id: NodeId(0),
    };

    /// The smallest ballot owned by `node_id` that is above `self`.
    pub fn next_for(self, node_id: NodeId) -> Ballot {
        Ballot {
            round: self.round + 1,
            node_id,
        }
    }
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.round, self.node_id.0)
    }
}

/// A position in the replicated log. Slot 1 is the first; 0 means "none".
pub type Slot = u64;

/// An opaque client command. The log never looks inside.
pub type Command = Vec<u8>;

/// What a slot holds once chosen.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Value {
    /// Fills a hole a new leader found in the log; applies as nothing.
    Noop,
    /// A batch of commands proposed together, applied in order.
    Commands(Vec<Command>),
    /// A membership change: chosen in slot `r`, these members vote on every
    /// slot from `r + reconfig_window_slots` on (see [`crate::Membership`]).
    /// Applies as nothing to the state machine.
    Reconfigure(Vec<NodeId>),
}

impl Value {
    /// Approximate encoded size, for batch and message bounds.
    pub fn size_bytes(&self) -> usize {
        match self {
            Value::Noop => 1,
            Value::Commands(commands) => commands.iter().map(|c| c.len() + 8).sum::<usize>() + 8,
            Value::Reconfigure(members) => members.len() * 8 + 8,
        }
    }
}

/// A chosen slot, handed to the application in slot order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its position.
    pub slot: Slot,
    /// The value chosen there.
    pub value: Value,
}
