//! Messages between replicas of one group. Every message is one-way: replies
//! are just more messages, so the core never waits on the network.

use serde::{Deserialize, Serialize};

use crate::membership::Membership;
use crate::types::{Ballot, NodeId, Slot, Value};

/// A message with its sender and receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sending replica.
    pub from: NodeId,
    /// The receiving replica.
    pub to: NodeId,
    /// The content.
    pub message: Message,
}

/// One slot's value in an `Accept` or a catch-up reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotValue {
    /// The slot.
    pub slot: Slot,
    /// Its value.
    pub value: Value,
}

/// What an acceptor reports about one slot in a `Promise`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PromisedSlot {
    /// The acceptor accepted `value` at `ballot` (and knows nothing more).
    Accepted {
        /// The slot.
        slot: Slot,
        /// The ballot it was accepted at.
        ballot: Ballot,
        /// The value.
        value: Value,
    },
    /// The acceptor knows `value` is chosen at `slot`.
    Chosen {
        /// The slot.
        slot: Slot,
        /// The chosen value.
        value: Value,
    },
}

impl PromisedSlot {
    /// The slot reported on.
    pub fn slot(&self) -> Slot {
        match self {
            PromisedSlot::Accepted { slot, .. } | PromisedSlot::Chosen { slot, .. } => *slot,
        }
    }
}

/// The protocol. Phase 1 is `Prepare`/`Promise`, phase 2 `Accept`/`Accepted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Phase 1a: "promise to ignore ballots below `ballot`, and tell me what
    /// you accepted in every slot from `first_slot` on".
    Prepare {
        /// The candidate's ballot.
        ballot: Ballot,
        /// The candidate's first slot not known chosen.
        first_slot: Slot,
    },
    /// Phase 1b: the promise, with everything accepted from `first_slot` on.
    /// Sent only after the promise is durable.
    Promise {
        /// The ballot promised.
        ballot: Ballot,
        /// Echo of the `Prepare`'s first slot.
        first_slot: Slot,
        /// The acceptor forgot every slot up to here (compacted below a
        /// snapshot). They are all chosen, but the promise cannot report
        /// them: a candidate whose `first_slot` is not above this must not
        /// lead, and fetches a snapshot instead.
        compacted_upto: Slot,
        /// Every slot >= `first_slot` the acceptor holds, in slot order.
        slots: Vec<PromisedSlot>,
    },
    /// Phase 2a: "accept these values at `ballot`". Also carries the
    /// leader's commit point so followers learn what is chosen.
    Accept {
        /// The leader's ballot.
        ballot: Ballot,
        /// Values for slots, in slot order.
        entries: Vec<SlotValue>,
        /// Every slot up to here is chosen (with the leader's values).
        commit_upto: Slot,
    },
    /// Phase 2b: the values of `Accept` are durable at `ballot`.
    Accepted {
        /// The ballot accepted.
        ballot: Ballot,
        /// The slots accepted (those of one `Accept`).
        slots: Vec<Slot>,
    },
    /// Refusal: the acceptor has promised a higher ballot.
    Nack {
        /// The refused ballot.
        ballot: Ballot,
        /// The acceptor's promise, which the proposer must exceed.
        promised: Ballot,
    },
    /// The leader is alive; everything up to `commit_upto` is chosen.
    /// `probe` numbers the heartbeat so acknowledgements confirm leadership
    /// for linearizable reads.
    Heartbeat {
        /// The leader's ballot.
        ballot: Ballot,
        /// The leader's commit point.
        commit_upto: Slot,
        /// Sequence number of this heartbeat round.
        probe: u64,
    },
    /// "I have promised nothing above your ballot" at heartbeat `probe`.
    HeartbeatAck {
        /// The leader's ballot, echoed.
        ballot: Ballot,
        /// The heartbeat round, echoed.
        probe: u64,
    },
    /// A follower asks for the chosen values of slots it misses.
    CatchUp {
        /// First missing slot.
        first_slot: Slot,
        /// Last slot wanted.
        last_slot: Slot,
    },
    /// Chosen values for a `CatchUp`, in slot order.
    Chosen {
        /// The values.
        entries: Vec<SlotValue>,
    },
    /// One chunk of a state machine snapshot, for a replica whose missing
    /// slots were compacted away. Handled by the driver, never by the core.
    Snapshot {
        /// The snapshot covers every slot up to here.
        slot: Slot,
        /// Where `data` starts in the snapshot.
        offset: u64,
        /// The snapshot's whole size.
        total_bytes: u64,
        /// The group's configurations as of `slot` (see
        /// [`crate::Replica::membership_for_snapshot`]); on the first
        /// chunk (offset 0) only.
        membership: Option<Membership>,
        /// The bytes.
        data: Vec<u8>,
    },
}

impl Message {
    /// A short name, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Prepare { .. } => "prepare",
            Message::Promise { .. } => "promise",
            Message::Accept { .. } => "accept",
            Message::Accepted { .. } => "accepted",
            Message::Nack { .. } => "nack",
            Message::Heartbeat { .. } => "heartbeat",
            Message::HeartbeatAck { .. } => "heartbeat_ack",
            Message::CatchUp { .. } => "catch_up",
            Message::Chosen { .. } => "chosen",
            Message::Snapshot { .. } => "snapshot",
        }
    }
}
