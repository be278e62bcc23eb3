//! The application the log drives: [`StateMachine`], and
//! [`SharedStateMachine`] to share one with the rest of a server.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::types::Slot;

/// The replicated application. The driver calls it from one thread, in slot
/// order, with every chosen command.
///
/// # Correctness
///
/// * `apply` must be deterministic: the same commands in the same order give
///   the same state and outputs on every replica (no clocks, no randomness,
///   no iteration over hash maps).
/// * `durable_slot` must never exceed what survives a crash: after a
///   restart the log replays (or re-learns) every slot above it.
/// * The durable slot may advance only by applying chosen commands through
///   `apply`, or by `restore` of a snapshot the driver saved first. The
///   core takes the values of slots between the acceptor store's compaction
///   point and `durable_slot` from the store, which is right only for slots
///   applied through this replica's log.
pub trait StateMachine: Send + 'static {
    /// Applies the command chosen in `slot` and returns the answer for its
    /// proposer.
    fn apply(&mut self, slot: Slot, command: &[u8]) -> Vec<u8>;

    /// Answers a read-only query against the current state.
    fn read(&mut self, query: &[u8]) -> Vec<u8>;

    /// The highest slot whose effects survive a crash (0 if none).
    fn durable_slot(&self) -> Slot;

    /// The whole state as of the last applied slot, for a snapshot; `None`
    /// if this state machine does not support snapshots (then the driver
    /// never compacts the log). Required when the driver runs with a
    /// snapshot store.
    fn snapshot(&mut self) -> Option<Vec<u8>> {
        None
    }

    /// Replaces the whole state with `snapshot`, taken at `slot` (by this
    /// replica earlier, or by a peer). An error leaves the state unchanged.
    fn restore(&mut self, slot: Slot, snapshot: &[u8]) -> Result<(), String> {
        let _ = (slot, snapshot);
        Err("this state machine does not support snapshots".to_string())
    }
}

/// A state machine shared between the driver thread, which applies, reads
/// and snapshots through [`StateMachine`], and the rest of a server (status
/// pages, tests, background tasks reading the local state). The driver
/// holds the lock for one call at a time.
///
/// A panic inside a method poisons the lock; [`SharedStateMachine::lock`]
/// still hands the state out, so a shared state machine must leave itself
/// consistent before anything that could panic (decide, then write).
#[derive(Debug, Default)]
pub struct SharedStateMachine<M>(Arc<Mutex<M>>);

impl<M> Clone for SharedStateMachine<M> {
    fn clone(&self) -> Self {
        SharedStateMachine(Arc::clone(&self.0))
    }
}

impl<M> SharedStateMachine<M> {
    /// Shares `machine`.
    pub fn new(machine: M) -> Self {
        SharedStateMachine(Arc::new(Mutex::new(machine)))
    }

    /// The state machine, locked.
    pub fn lock(&self) -> MutexGuard<'_, M> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<M: StateMachine> StateMachine for SharedStateMachine<M> {
    fn apply(&mut self, slot: Slot, command: &[u8]) -> Vec<u8> {
        self.lock().apply(slot, command)
    }

    fn read(&mut self, query: &[u8]) -> Vec<u8> {
        self.lock().read(query)
    }

    fn durable_slot(&self) -> Slot {
        self.lock().durable_slot()
    }

    fn snapshot(&mut self) -> Option<Vec<u8>> {
        self.lock().snapshot()
    }

    fn restore(&mut self, slot: Slot, snapshot: &[u8]) -> Result<(), String> {
        self.lock().restore(slot, snapshot)
    }
}
