//! Where an acceptor's promises and accepted values are kept: the
//! [`AcceptorStore`] trait, and [`MemAcceptorStore`] for tests.

pub mod wal;

use std::collections::BTreeMap;

use storage::StorageError;

use crate::ready::PersistOp;
use crate::types::{Ballot, Slot, Value};

pub use self::wal::WalAcceptorStore;

/// An acceptor's durable state, as read back after a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveredState {
    /// The highest ballot promised.
    pub promised: Ballot,
    /// For each slot, the value accepted at the highest ballot.
    pub accepted: BTreeMap<Slot, (Ballot, Value)>,
    /// Values this replica learned as chosen without accepting them.
    pub chosen: BTreeMap<Slot, Value>,
    /// Every slot up to here was compacted away below a snapshot.
    pub compacted_upto: Slot,
}

impl RecoveredState {
    /// Forgets every slot up to `upto` (they are covered by a snapshot).
    pub fn compact(&mut self, upto: Slot) {
        if upto <= self.compacted_upto {
            return;
        }
        self.accepted = self.accepted.split_off(&(upto + 1));
        self.chosen = self.chosen.split_off(&(upto + 1));
        self.compacted_upto = upto;
    }

    /// The ops that rebuild this state from nothing: a `Checkpoint`, then
    /// every retained slot. What a store writes when it compacts.
    pub fn checkpoint_ops(&self) -> Vec<PersistOp> {
        let mut ops = Vec::with_capacity(1 + self.accepted.len() + self.chosen.len());
        ops.push(PersistOp::Checkpoint {
            promised: self.promised,
            compacted_upto: self.compacted_upto,
        });
        for (&slot, (ballot, value)) in &self.accepted {
            ops.push(PersistOp::Accept {
                slot,
                ballot: *ballot,
                value: value.clone(),
            });
        }
        for (&slot, value) in &self.chosen {
            ops.push(PersistOp::Chosen {
                slot,
                value: value.clone(),
            });
        }
        ops
    }
}

/// Durable storage of acceptor state.
///
/// # Correctness
///
/// * `persist` returns `Ok` only when every op of the batch is durable: a
///   crash after it returns must not lose any of them.
/// * A batch is applied in order; a crash during `persist` may keep any
///   prefix of the batch (never a later op without the earlier ones).
/// * `recover` returns the state built from every durable op by
///   [`apply_op`]: the highest promise, per slot the accept with the highest
///   ballot, and every learned chosen value.
pub trait AcceptorStore {
    /// Reads back the durable state.
    fn recover(&mut self) -> Result<RecoveredState, StorageError>;
    /// Makes a batch of ops durable.
    fn persist(&mut self, ops: &[PersistOp]) -> Result<(), StorageError>;

    /// Forgets every slot up to `upto` and reclaims the space they took.
    ///
    /// # Correctness
    ///
    /// Called only once a snapshot covering `upto` is durable. The promise
    /// and every slot above `upto` must survive a crash during or after the
    /// call; slots up to `upto` may come back after a crash during it.
    fn compact(&mut self, upto: Slot) -> Result<(), StorageError>;
}

/// Applies one op to a recovered state: shared by every store so that
/// recovery means the same thing everywhere.
pub fn apply_op(state: &mut RecoveredState, op: &PersistOp) {
    match op {
        PersistOp::Promise { ballot } => {
            state.promised = state.promised.max(*ballot);
        }
        PersistOp::Accept {
            slot,
            ballot,
            value,
        } => {
            // Accepting at a ballot promises it: no separate record needed.
            state.promised = state.promised.max(*ballot);
            let newer = state
                .accepted
                .get(slot)
                .is_none_or(|(current, _)| ballot >= current);
            if newer && *slot > state.compacted_upto {
                state.accepted.insert(*slot, (*ballot, value.clone()));
            }
        }
        PersistOp::Chosen { slot, value } => {
            if *slot > state.compacted_upto {
                state.chosen.insert(*slot, value.clone());
            }
        }
        PersistOp::Checkpoint {
            promised,
            compacted_upto,
        } => {
            // Never a reset: a crash may keep any prefix of a checkpoint,
            // so it must not take away what the records before it say.
            state.promised = state.promised.max(*promised);
            state.compact(*compacted_upto);
        }
    }
}

/// An in-memory store: durable for as long as the value lives. The
/// simulation keeps it across simulated crashes, which drop only what was
/// never handed to `persist`.
#[derive(Debug, Clone, Default)]
pub struct MemAcceptorStore {
    state: RecoveredState,
}

impl MemAcceptorStore {
    /// An empty store.
    pub fn new() -> MemAcceptorStore {
        MemAcceptorStore::default()
    }

    /// The current durable state.
    pub fn state(&self) -> &RecoveredState {
        &self.state
    }
}

impl AcceptorStore for MemAcceptorStore {
    fn recover(&mut self) -> Result<RecoveredState, StorageError> {
        Ok(self.state.clone())
    }
    fn persist(&mut self, ops: &[PersistOp]) -> Result<(), StorageError> {
        for op in ops {
            apply_op(&mut self.state, op);
        }
        Ok(())
    }
    fn compact(&mut self, upto: Slot) -> Result<(), StorageError> {
        self.state.compact(upto);
        Ok(())
    }
}
