//! The learner: which slots are chosen, and fetching the ones this replica
//! missed.
//!
//! A follower learns that slot `s` is chosen when the leader of ballot `b`
//! says its commit point covers `s` and the follower itself accepted `s` at
//! `b`: a leader proposes one value per slot per ballot, so the follower's
//! value is the chosen one. A slot it did not accept at `b` (a lost message,
//! a restart) is fetched with `CatchUp` from the leader, which answers with
//! chosen values only.

use tracing::error;

use super::{Replica, SlotState};
use crate::message::{Message, SlotValue};
use crate::ready::PersistOp;
use crate::types::{Ballot, NodeId, Slot, Value};

impl Replica {
    /// The leader of `ballot` (`from`) says every slot up to `commit_upto`
    /// is chosen.
    pub(super) fn learn_commit(&mut self, from: NodeId, ballot: Ballot, commit_upto: Slot) {
        if ballot.node_id == self.id() {
            return;
        }
        self.leader_commit = self.leader_commit.max(commit_upto);
        let mut slot = self.chosen_upto + 1;
        while slot <= commit_upto {
            match self.log.get_mut(&slot) {
                Some(SlotState::Accepted {
                    ballot: accepted,
                    value,
                }) if *accepted == ballot => {
                    let value = std::mem::replace(value, Value::Noop);
                    self.log.insert(slot, SlotState::Chosen { value });
                }
                Some(SlotState::Chosen { .. }) => {}
                _ => break,
            }
            slot += 1;
        }
        self.advance_chosen();
        self.request_catch_up(from);
    }

    /// Asks `from` for missing chosen slots if this replica is behind the
    /// leader's commit point, at most once per heartbeat interval.
    pub(super) fn request_catch_up(&mut self, from: NodeId) {
        if self.chosen_upto >= self.leader_commit {
            return;
        }
        let interval = u64::from(self.config.heartbeat_interval_ticks);
        if self
            .catch_up_sent_at
            .is_some_and(|at| self.now_ticks < at + interval)
        {
            return;
        }
        self.catch_up_sent_at = Some(self.now_ticks);
        let first_slot = self.chosen_upto + 1;
        let last_slot = self
            .leader_commit
            .min(first_slot + self.config.message_slots_max as u64 - 1);
        self.send(
            from,
            Message::CatchUp {
                first_slot,
                last_slot,
            },
        );
    }

    /// Answers a `CatchUp` with the chosen values this replica has.
    pub(super) fn on_catch_up(&mut self, from: NodeId, first_slot: Slot, last_slot: Slot) {
        if first_slot < self.log_start {
            // Compacted away: only a snapshot can bring the peer up to here.
            if !self.out.snapshot_requests.contains(&from) {
                self.out.snapshot_requests.push(from);
            }
            return;
        }
        let last_slot =
            last_slot.min(first_slot.saturating_add(self.config.message_slots_max as u64 - 1));
        let entries: Vec<SlotValue> = self
            .log
            .range(first_slot..=last_slot.max(first_slot))
            .map_while(|(&slot, state)| match state {
                SlotState::Chosen { value } => Some(SlotValue {
                    slot,
                    value: value.clone(),
                }),
                SlotState::Accepted { .. } => None,
            })
            .collect();
        if !entries.is_empty() {
            self.send(from, Message::Chosen { entries });
        }
    }

    /// Chosen values from a peer.
    pub(super) fn on_chosen(&mut self, from: NodeId, entries: Vec<SlotValue>) {
        let before = self.chosen_upto;
        let full_batch = entries.len() >= self.config.message_slots_max;
        for SlotValue { slot, value } in entries {
            self.learn_chosen(slot, value);
        }
        self.advance_chosen();
        if self.chosen_upto < self.leader_commit {
            self.catch_up_sent_at = None;
            if let Some(leader) = self.leader_hint {
                self.request_catch_up(leader);
            }
        } else if full_batch && self.chosen_upto > before {
            // A pull without a leader (`pull_catch_up`): the peer may have
            // more. Only while this answer moved the prefix, so duplicated
            // answers never loop.
            self.send_catch_up(from);
        }
    }

    /// A non-voter that hears no leader asks every member it knows for the
    /// chosen slots after its prefix (see `Replica::tick`).
    pub(super) fn pull_catch_up(&mut self) {
        let mut peers = self.window_members();
        peers.extend_from_slice(self.membership.latest().1);
        peers.sort_unstable();
        peers.dedup();
        for peer in peers {
            if peer != self.id() {
                self.send_catch_up(peer);
            }
        }
    }

    /// Asks `peer` for one message's worth of chosen slots after the prefix.
    fn send_catch_up(&mut self, peer: NodeId) {
        let first_slot = self.chosen_upto + 1;
        let last_slot = first_slot + self.config.message_slots_max as u64 - 1;
        self.send(
            peer,
            Message::CatchUp {
                first_slot,
                last_slot,
            },
        );
    }

    /// Records that `value` is chosen in `slot`, learned from a peer rather
    /// than from this replica's own acceptance at the chosen ballot.
    pub(super) fn learn_chosen(&mut self, slot: Slot, value: Value) {
        if slot <= self.chosen_upto {
            return;
        }
        match self.log.get(&slot) {
            Some(SlotState::Chosen { value: known }) => {
                // Only a safety bug or a damaged message can get here. Tests
                // stop on it; a release build keeps what it knows and logs,
                // rather than letting a network message crash the replica.
                debug_assert_eq!(known, &value, "slot {slot}: two different values chosen");
                if known != &value {
                    error!(slot, "a peer reported a different chosen value; ignored");
                }
            }
            _ => {
                // Persist before it is applied: after a restart, every slot
                // up to the applied one must hold its chosen value on disk.
                self.persist(PersistOp::Chosen {
                    slot,
                    value: value.clone(),
                });
                self.log.insert(slot, SlotState::Chosen { value });
            }
        }
        // A leader may learn from a peer a slot it still has in flight (a
        // catch-up answer it asked for before it was elected): it is done.
        self.proposals.remove(&slot);
    }

    /// Moves `chosen_upto` over every contiguous chosen slot, and records
    /// the membership changes it passes (in slot order, so every replica
    /// knows the same configurations for the same chosen prefix).
    pub(super) fn advance_chosen(&mut self) {
        while let Some(SlotState::Chosen { value }) = self.log.get(&(self.chosen_upto + 1)) {
            self.chosen_upto += 1;
            if let Value::Reconfigure(members) = value {
                super::record_change(
                    &mut self.membership,
                    self.chosen_upto,
                    members,
                    &self.config,
                );
            }
        }
    }
}
