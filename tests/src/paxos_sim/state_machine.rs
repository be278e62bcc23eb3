//! The replicas' state machines and their snapshots, as the simulation
//! models them.
//!
//! A state machine is the applied log prefix itself: the value of every slot
//! from 1 to the last applied one, in order. So "the state machine equals
//! the chosen log prefix" can be checked value by value against the global
//! record, and a snapshot (the state machine at one applied slot) is a
//! prefix that can be sent, damaged, installed and saved. Values are shared
//! (`Rc`), so taking a snapshot copies pointers, not commands.

use std::rc::Rc;

use paxos_log::{Membership, NodeId, Slot, Value};

/// The slot of 0-based position `index` in a prefix.
fn slot_of(index: usize) -> Slot {
    Slot::try_from(index).expect("usize fits in u64") + 1
}

/// The 0-based position of `slot` in a prefix, if it can be one.
fn index_of(slot: Slot) -> Option<usize> {
    usize::try_from(slot.checked_sub(1)?).ok()
}

/// A replica's state machine: the values of slots `1..=applied_upto`.
#[derive(Debug, Clone, Default)]
pub(crate) struct StateMachine {
    values: Vec<Rc<Value>>,
}

impl StateMachine {
    /// Every slot up to here is applied.
    pub(crate) fn applied_upto(&self) -> Slot {
        Slot::try_from(self.values.len()).expect("usize fits in u64")
    }

    /// The value applied in `slot`, if it was.
    pub(crate) fn value(&self, slot: Slot) -> Option<&Value> {
        self.values.get(index_of(slot)?).map(|value| &**value)
    }

    /// Applies the next slot (`applied_upto() + 1`).
    pub(crate) fn apply(&mut self, value: Value) {
        self.values.push(Rc::new(value));
    }

    /// Keeps only slots up to `upto` (a restart whose state machine was
    /// flushed only that far).
    pub(crate) fn truncate(&mut self, upto: Slot) {
        if let Ok(len) = usize::try_from(upto) {
            self.values.truncate(len);
        }
    }

    /// A snapshot of everything applied.
    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            values: Rc::new(self.values.clone()),
        }
    }

    /// Replaces the state with `snapshot`'s.
    pub(crate) fn restore(&mut self, snapshot: &Snapshot) {
        self.values = snapshot.values.to_vec();
    }
}

/// A state machine snapshot: the applied prefix up to its slot. Cheap to
/// clone (shared).
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    values: Rc<Vec<Rc<Value>>>,
}

impl Snapshot {
    /// The snapshot covers every slot up to here (0: the empty snapshot, a
    /// replica that never took or installed one).
    pub(crate) fn slot(&self) -> Slot {
        Slot::try_from(self.values.len()).expect("usize fits in u64")
    }

    /// The value of `slot` in the snapshot.
    pub(crate) fn value(&self, slot: Slot) -> Option<&Value> {
        self.values.get(index_of(slot)?).map(|value| &**value)
    }

    /// The group's configurations as of this snapshot's slot, computed from
    /// the prefix itself (the real driver saves the core's own account,
    /// `Replica::membership_for_snapshot`, with the file): the genesis
    /// members, then every `Reconfigure` in the prefix.
    pub(crate) fn membership(&self, genesis: &[NodeId], window_slots: u64) -> Membership {
        let mut membership = Membership::genesis(genesis);
        for (index, value) in self.values.iter().enumerate() {
            if let Value::Reconfigure(members) = &**value {
                membership.record(slot_of(index), members, window_slots);
            }
        }
        membership
    }

    /// A copy with the value of 0-based position `index` (reduced modulo
    /// the length) replaced by `value`: the test-only damage in transit.
    /// Returns the copy and the slot changed; an empty snapshot is returned
    /// unchanged, with slot 0.
    pub(crate) fn with_value_replaced(&self, index: usize, value: Value) -> (Snapshot, Slot) {
        if self.values.is_empty() {
            return (self.clone(), 0);
        }
        let index = index % self.values.len();
        let mut values = self.values.to_vec();
        values[index] = Rc::new(value);
        (
            Snapshot {
                values: Rc::new(values),
            },
            slot_of(index),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_restore_truncate() {
        let mut sm = StateMachine::default();
        sm.apply(Value::Noop);
        sm.apply(Value::Commands(vec![vec![1]]));
        let snapshot = sm.snapshot();
        assert_eq!(snapshot.slot(), 2);
        sm.apply(Value::Noop);
        assert_eq!(sm.applied_upto(), 3);
        assert_eq!(snapshot.value(2), Some(&Value::Commands(vec![vec![1]])));
        assert_eq!(snapshot.value(0), None);
        assert_eq!(snapshot.value(3), None);
        let (damaged, slot) = snapshot.with_value_replaced(3, Value::Commands(vec![vec![9]]));
        assert_eq!(slot, 2);
        assert_eq!(damaged.value(2), Some(&Value::Commands(vec![vec![9]])));
        assert_eq!(snapshot.value(2), Some(&Value::Commands(vec![vec![1]])));
        sm.truncate(1);
        assert_eq!(sm.applied_upto(), 1);
        sm.restore(&damaged);
        assert_eq!(sm.applied_upto(), 2);
        assert_eq!(sm.value(1), Some(&Value::Noop));
    }
}
