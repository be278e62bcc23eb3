//! The acceptor: promises and acceptances, the part Paxos's safety rests on.
//!
//! Two rules ("Paxos Made Simple", §2.2, P1a and the phase 2 rule):
//! * never answer a `Prepare` or accept an `Accept` whose ballot is below the
//!   highest ballot promised;
//! * a `Promise` reports every value accepted from the candidate's first
//!   open slot on, and is sent only once the promise is durable; likewise an
//!   `Accepted` is sent only once the accepted values are durable (both go
//!   through `send_persisted`).

use tracing::debug;

use super::{Replica, Role, SlotState};
use crate::message::{Message, PromisedSlot, SlotValue};
use crate::ready::PersistOp;
use crate::types::{Ballot, NodeId, Slot};

impl Replica {
    /// The rule every message from a proposer goes through first: note its
    /// ballot, and answer `Nack` (returning true) if it is below the
    /// promise, so a stale proposer learns what to exceed.
    pub(super) fn refuse_below_promise(&mut self, from: NodeId, ballot: Ballot) -> bool {
        self.observe(ballot);
        if ballot >= self.promised {
            return false;
        }
        self.send(
            from,
            Message::Nack {
                ballot,
                promised: self.promised,
            },
        );
        true
    }

    /// Phase 1b.
    pub(super) fn on_prepare(&mut self, from: NodeId, ballot: Ballot, first_slot: Slot) {
        if self.refuse_below_promise(from, ballot) {
            return;
        }
        if ballot > self.promised {
            self.promised = ballot;
            self.persist(PersistOp::Promise { ballot });
            if ballot > self.ballot && self.role != Role::Follower {
                self.step_down(Some(ballot.node_id));
            } else if ballot.node_id != self.id() {
                // Give the candidate time to win before competing with it.
                self.reset_election_timer();
            }
        }
        let slots = self
            .log
            .range(first_slot.max(self.log_start)..)
            .map(|(&slot, state)| match state {
                SlotState::Accepted { ballot, value } => PromisedSlot::Accepted {
                    slot,
                    ballot: *ballot,
                    value: value.clone(),
                },
                SlotState::Chosen { value } => PromisedSlot::Chosen {
                    slot,
                    value: value.clone(),
                },
            })
            .collect();
        // A duplicate Prepare for the promised ballot is answered again; the
        // reply still waits for this Ready, so it never overtakes the write
        // of the promise it repeats.
        self.send_persisted(
            from,
            Message::Promise {
                ballot,
                first_slot,
                compacted_upto: self.log_start - 1,
                slots,
            },
        );
    }

    /// Phase 2b.
    pub(super) fn on_accept(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        entries: Vec<SlotValue>,
        commit_upto: Slot,
    ) {
        if self.refuse_below_promise(from, ballot) {
            return;
        }
        // Accepting at a ballot promises it; the accept records carry it.
        self.promised = ballot;
        self.heard_from_leader(ballot);
        let mut slots = Vec::with_capacity(entries.len());
        for SlotValue { slot, value } in entries {
            slots.push(slot);
            match self.log.get(&slot) {
                // Already chosen here: the value must be the same (Paxos
                // safety); keep it, and acknowledge.
                Some(SlotState::Chosen { value: chosen }) => {
                    debug_assert_eq!(chosen, &value, "slot {slot}: a different value was chosen");
                }
                _ if slot <= self.chosen_upto => {}
                _ => {
                    self.persist(PersistOp::Accept {
                        slot,
                        ballot,
                        value: value.clone(),
                    });
                    self.log.insert(slot, SlotState::Accepted { ballot, value });
                }
            }
        }
        debug!(node = %self.id(), %ballot, count = slots.len(), "accepted");
        self.send_persisted(from, Message::Accepted { ballot, slots });
        self.learn_commit(from, ballot, commit_upto);
    }

    /// A message from the leader of `ballot` (not below the promise) arrived:
    /// follow it.
    pub(super) fn heard_from_leader(&mut self, ballot: Ballot) {
        if ballot.node_id == self.id() {
            return;
        }
        if self.role != Role::Follower && ballot > self.ballot {
            self.step_down(Some(ballot.node_id));
        }
        if self.role == Role::Follower {
            if self.leader_hint != Some(ballot.node_id) {
                self.leader_commit = self.chosen_upto;
            }
            self.leader_hint = Some(ballot.node_id);
            self.election_elapsed_ticks = 0;
        }
    }
}
