//! What the core asks its driver to do: the `Ready` batch.

use serde::{Deserialize, Serialize};

use crate::message::Envelope;
use crate::types::{Ballot, Entry, NodeId, Slot, Value};

/// A change to the acceptor's durable state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PersistOp {
    /// The acceptor promised `ballot`: it will refuse anything lower.
    Promise {
        /// The promised ballot.
        ballot: Ballot,
    },
    /// The acceptor accepted `value` at `ballot` in `slot`.
    Accept {
        /// The slot.
        slot: Slot,
        /// The ballot.
        ballot: Ballot,
        /// The value.
        value: Value,
    },
    /// The replica learned that `value` is chosen in `slot` from a peer
    /// (catch-up, or a new leader's phase 1) rather than by accepting it. It
    /// is persisted before it is applied, so that after a restart every slot
    /// up to the applied one holds its chosen value on this replica's disk.
    Chosen {
        /// The slot.
        slot: Slot,
        /// The chosen value.
        value: Value,
    },
    /// Written by a store when it compacts, never by the core, after
    /// re-writing every retained slot: forget every slot up to
    /// `compacted_upto`, and keep at least `promised`. It never removes
    /// anything above the compaction point, so a crash that tears a
    /// checkpoint loses nothing.
    Checkpoint {
        /// The promise at the time of the checkpoint.
        promised: Ballot,
        /// Every slot up to here is compacted away.
        compacted_upto: Slot,
    },
}

/// A linearizable read that may now be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadReady {
    /// The id the driver gave to [`crate::Replica::read_index`].
    pub read_id: u64,
    /// Serve the read once the state machine has applied this slot.
    pub slot: Slot,
}

/// Everything the driver must do after a batch of inputs, in this order:
///
/// 1. send `messages` (they promise nothing, so they may go before the disk
///    write: this is how the leader's accepts reach peers while its own
///    write is in flight);
/// 2. make `persist` durable with one fsync;
/// 3. only then send `persisted_messages` (promises and acceptances);
/// 4. apply `chosen` in order and answer `reads` once applied;
/// 5. call [`crate::Replica::advance`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[must_use = "a Ready must be persisted, sent and advanced"]
pub struct Ready {
    /// Send now.
    pub messages: Vec<Envelope>,
    /// Make durable, all together.
    pub persist: Vec<PersistOp>,
    /// Send only once `persist` is durable.
    pub persisted_messages: Vec<Envelope>,
    /// Newly chosen entries, contiguous and in slot order.
    pub chosen: Vec<Entry>,
    /// Reads whose leadership check completed.
    pub reads: Vec<ReadReady>,
    /// Peers that need slots this replica compacted away: send each the
    /// latest state machine snapshot (then the log catches them up).
    pub snapshot_requests: Vec<NodeId>,
}

impl Ready {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.persist.is_empty()
            && self.persisted_messages.is_empty()
            && self.chosen.is_empty()
            && self.reads.is_empty()
            && self.snapshot_requests.is_empty()
    }
}
