//! The application the log drives: [`StateMachine`].

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
