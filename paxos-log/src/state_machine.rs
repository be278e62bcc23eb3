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
pub trait StateMachine: Send + 'static {
    /// Applies the command chosen in `slot` and returns the answer for its
    /// proposer.
    fn apply(&mut self, slot: Slot, command: &[u8]) -> Vec<u8>;

    /// Answers a read-only query against the current state.
    fn read(&mut self, query: &[u8]) -> Vec<u8>;

    /// The highest slot whose effects survive a crash (0 if none).
    fn durable_slot(&self) -> Slot;
}
