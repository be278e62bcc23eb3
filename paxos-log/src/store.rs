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
            if newer {
                state.accepted.insert(*slot, (*ballot, value.clone()));
            }
        }
        PersistOp::Chosen { slot, value } => {
            state.chosen.insert(*slot, value.clone());
        }
    }
}

/// An in-memory store: durable for as long as the value lives. The
/// simulation keeps it across simulated crashes, which drop only what was
/// never handed to `persist`.
#[derive(Debug, Clone, Default)]
pub struct MemAcceptorStore {
    state: RecoveredState,
    /// Number of `persist` calls, a stand-in for fsyncs.
    pub persist_count: u64,
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
        self.persist_count += 1;
        Ok(())
    }
}
