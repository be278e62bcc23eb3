//! The proposer: elections (phase 1), the leader's pipeline of batched slots
//! (phase 2), heartbeats and linearizable reads.
//!
//! A new leader runs phase 1 once, for every slot from its first one not
//! known chosen. From the promises of a quorum it re-proposes, in each open
//! slot, the value accepted at the highest ballot, and a no-op where no one
//! accepted anything ("Paxos Made Simple", §3). After that, new commands
//! need phase 2 only: the leader cuts queued commands into slots (one slot
//! holds a batch) and keeps up to `inflight_slots_max` slots in flight.

use std::collections::BTreeMap;

use tracing::{debug, info};

use super::{Proposal, Replica, Role, SlotState};
use crate::message::{Message, PromisedSlot, SlotValue};
use crate::ready::ReadReady;
use crate::types::{Ballot, NodeId, Slot, Value};

impl Replica {
    /// Phase 1a: a new ballot above everything seen, sent to every member.
    pub(super) fn start_election(&mut self) {
        let above = self.highest_seen.max(self.promised).max(self.ballot);
        self.ballot = above.next_for(self.id());
        self.observe(self.ballot);
        self.role = Role::Candidate;
        self.leader_hint = None;
        self.promises.clear();
        self.prepare_first_slot = self.chosen_upto + 1;
        self.reset_election_timer();
        debug!(node = %self.id(), ballot = %self.ballot, first_slot = self.prepare_first_slot, "election");
        let message = Message::Prepare {
            ballot: self.ballot,
            first_slot: self.prepare_first_slot,
        };
        for member in self.members() {
            self.send(member, message.clone());
        }
    }

    /// Phase 1b arrived.
    pub(super) fn on_promise(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        first_slot: Slot,
        compacted_upto: Slot,
        slots: Vec<PromisedSlot>,
    ) {
        if self.role != Role::Candidate
            || ballot != self.ballot
            || first_slot != self.prepare_first_slot
        {
            return;
        }
        if compacted_upto >= first_slot {
            // The promiser forgot chosen slots this candidate does not know,
            // so the promise cannot show their values: taking over could
            // propose no-ops over chosen values. Catch up first (the peer
            // answers with a snapshot), and let a replica that is not
            // behind win this election.
            self.step_down(None);
            self.leader_commit = self.leader_commit.max(compacted_upto);
            self.send(
                from,
                Message::CatchUp {
                    first_slot: self.chosen_upto + 1,
                    last_slot: compacted_upto,
                },
            );
            return;
        }
        self.promises.insert(from, slots);
        if self.promises.len() >= self.quorum() {
            self.become_leader();
        }
    }

    /// A quorum promised: take over every open slot, then lead.
    fn become_leader(&mut self) {
        // Per slot: a chosen value wins; otherwise the highest-ballot accept.
        let mut found: BTreeMap<Slot, (Option<Ballot>, Value)> = BTreeMap::new();
        for slots in std::mem::take(&mut self.promises).into_values() {
            for reported in slots {
                let slot = reported.slot();
                if slot < self.prepare_first_slot {
                    continue;
                }
                match reported {
                    PromisedSlot::Chosen { value, .. } => {
                        found.insert(slot, (None, value));
                    }
                    PromisedSlot::Accepted { ballot, value, .. } => {
                        let higher = match found.get(&slot) {
                            None => true,
                            Some((None, _)) => false,
                            Some((Some(current), _)) => ballot > *current,
                        };
                        if higher {
                            found.insert(slot, (Some(ballot), value));
                        }
                    }
                }
            }
        }
        let last_found = found.keys().next_back().copied().unwrap_or(0);
        let last_open = last_found.max(self.chosen_upto);

        self.role = Role::Leader;
        self.leader_hint = Some(self.id());
        self.leader_since = self.now_ticks;
        self.heartbeat_elapsed_ticks = 0;
        self.proposals.clear();
        self.acked_probe.clear();
        self.last_heard_at.clear();
        self.next_slot = last_open + 1;
        self.recovered_upto = last_open;
        info!(node = %self.id(), ballot = %self.ballot, open_slots = last_open.saturating_sub(self.chosen_upto), "leader");

        let mut reproposed = Vec::new();
        for slot in self.prepare_first_slot..=last_open {
            if slot <= self.chosen_upto {
                continue;
            }
            let known_chosen = matches!(self.log.get(&slot), Some(SlotState::Chosen { .. }));
            match found.remove(&slot) {
                Some((None, value)) => self.learn_chosen(slot, value),
                // This replica knows the slot chosen (above a gap, so not yet
                // counted in chosen_upto) even if the quorum reported it only
                // as accepted: nothing to propose.
                _ if known_chosen => {}
                Some((Some(_), value)) => reproposed.push((slot, value)),
                None => reproposed.push((slot, Value::Noop)),
            }
        }
        self.advance_chosen();
        for (slot, value) in reproposed {
            self.proposals.insert(
                slot,
                Proposal {
                    value,
                    acks: Default::default(),
                },
            );
        }
        let slots: Vec<Slot> = self.proposals.keys().copied().collect();
        self.send_accepts(&slots, None);
        self.broadcast_heartbeat();
    }

    /// Steps down to follower, forgetting leader or candidate state.
    /// Queued commands are dropped: their proposers must treat them as
    /// unknown (a new leader may still choose values already sent).
    pub(super) fn step_down(&mut self, leader_hint: Option<NodeId>) {
        if self.role != Role::Follower {
            info!(node = %self.id(), ballot = %self.ballot, ?leader_hint, "stepping down");
        }
        self.role = Role::Follower;
        self.leader_hint = leader_hint;
        self.promises.clear();
        self.proposals.clear();
        self.pending.clear();
        self.pending_reads.clear();
        self.probe_wanted = false;
        self.reset_election_timer();
    }

    /// Cuts queued commands into slots while the pipeline has room.
    pub(super) fn flush_pending(&mut self) {
        let mut new_slots = Vec::new();
        while !self.pending.is_empty()
            && (self.proposals.len() as u64) < self.config.inflight_slots_max
        {
            let mut batch = Vec::new();
            let mut batch_bytes = 0;
            while let Some(command) = self.pending.front() {
                let full = batch.len() >= self.config.batch_commands_max
                    || (!batch.is_empty()
                        && batch_bytes + command.len() > self.config.batch_bytes_max);
                if full {
                    break;
                }
                batch_bytes += command.len();
                if let Some(command) = self.pending.pop_front() {
                    batch.push(command);
                }
            }
            let slot = self.next_slot;
            self.next_slot += 1;
            self.proposals.insert(
                slot,
                Proposal {
                    value: Value::Commands(batch),
                    acks: Default::default(),
                },
            );
            new_slots.push(slot);
        }
        if !new_slots.is_empty() {
            self.send_accepts(&new_slots, None);
        }
    }

    /// Sends `Accept` for `slots` (in flight) to `only` or to every member,
    /// at most `message_slots_max` slots per message.
    fn send_accepts(&mut self, slots: &[Slot], only: Option<&[NodeId]>) {
        let targets = match only {
            Some(targets) => targets.to_vec(),
            None => self.members(),
        };
        for chunk in slots.chunks(self.config.message_slots_max) {
            let entries: Vec<SlotValue> = chunk
                .iter()
                .filter_map(|slot| {
                    self.proposals.get(slot).map(|p| SlotValue {
                        slot: *slot,
                        value: p.value.clone(),
                    })
                })
                .collect();
            if entries.is_empty() {
                continue;
            }
            for &target in &targets {
                let message = Message::Accept {
                    ballot: self.ballot,
                    entries: entries.clone(),
                    commit_upto: self.chosen_upto,
                };
                self.send(target, message);
            }
        }
    }

    /// Phase 2b arrived: count it, and learn what a quorum accepted.
    pub(super) fn on_accepted(&mut self, from: NodeId, ballot: Ballot, slots: &[Slot]) {
        if self.role != Role::Leader || ballot != self.ballot {
            return;
        }
        // Check-quorum counts peers; the leader's own acceptances (delivered
        // in `advance`) say nothing about whether it can reach anyone.
        if from != self.id() {
            self.last_heard_at.insert(from, self.now_ticks);
        }
        let quorum = self.quorum();
        let mut chosen_any = false;
        for slot in slots {
            let Some(proposal) = self.proposals.get_mut(slot) else {
                continue;
            };
            proposal.acks.insert(from);
            if proposal.acks.len() >= quorum {
                let Some(proposal) = self.proposals.remove(slot) else {
                    continue;
                };
                // The leader's own acceptance may not be among the quorum,
                // but the value is the one it proposed at its ballot, which
                // its own acceptor holds or will hold; nothing to persist.
                self.log.insert(
                    *slot,
                    SlotState::Chosen {
                        value: proposal.value,
                    },
                );
                chosen_any = true;
            }
        }
        if chosen_any {
            self.advance_chosen();
        }
    }

    /// Someone promised a higher ballot: stop proposing with ours.
    pub(super) fn on_nack(&mut self, ballot: Ballot, promised: Ballot) {
        self.observe(promised);
        if self.role != Role::Follower && ballot == self.ballot && promised > self.ballot {
            self.step_down(None);
        }
    }

    /// Leader's tick: heartbeats, retransmission, and stepping down when a
    /// quorum has gone quiet (so clients find the new leader quickly).
    pub(super) fn tick_leader(&mut self) {
        self.heartbeat_elapsed_ticks += 1;
        if self.heartbeat_elapsed_ticks < self.config.heartbeat_interval_ticks {
            return;
        }
        self.heartbeat_elapsed_ticks = 0;
        let window = u64::from(self.config.election_timeout_ticks_max);
        if self.now_ticks >= self.leader_since + window {
            let since = self.now_ticks - window;
            let alive = self
                .last_heard_at
                .values()
                .filter(|&&at| at >= since)
                .count();
            if alive + 1 < self.quorum() {
                self.step_down(None);
                return;
            }
        }
        self.broadcast_heartbeat();
        // Retransmit every slot still in flight to the members that have
        // not acknowledged it: messages may have been lost.
        let mut missing: BTreeMap<NodeId, Vec<Slot>> = BTreeMap::new();
        for (&slot, proposal) in &self.proposals {
            for member in self
                .config
                .members
                .iter()
                .filter(|m| !proposal.acks.contains(m))
            {
                missing.entry(*member).or_default().push(slot);
            }
        }
        for (member, slots) in missing {
            self.send_accepts(&slots, Some(&[member]));
        }
    }

    /// A new heartbeat round to every member; also confirms leadership for
    /// the reads waiting on it.
    pub(super) fn broadcast_heartbeat(&mut self) {
        self.probe += 1;
        let id = self.id();
        self.acked_probe.insert(id, self.probe);
        let message = Message::Heartbeat {
            ballot: self.ballot,
            commit_upto: self.chosen_upto,
            probe: self.probe,
        };
        for peer in self.peers().collect::<Vec<_>>() {
            self.send(peer, message.clone());
        }
        self.confirm_reads();
    }

    /// A heartbeat from a leader.
    pub(super) fn on_heartbeat(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        commit_upto: Slot,
        probe: u64,
    ) {
        if self.refuse_below_promise(from, ballot) {
            return;
        }
        self.heard_from_leader(ballot);
        self.learn_commit(from, ballot, commit_upto);
        self.send(from, Message::HeartbeatAck { ballot, probe });
    }

    /// A peer confirmed it promised nothing above our ballot at `probe`.
    pub(super) fn on_heartbeat_ack(&mut self, from: NodeId, ballot: Ballot, probe: u64) {
        if self.role != Role::Leader || ballot != self.ballot {
            return;
        }
        self.last_heard_at.insert(from, self.now_ticks);
        let acked = self.acked_probe.entry(from).or_insert(0);
        *acked = (*acked).max(probe);
        self.confirm_reads();
    }

    /// Releases every read whose heartbeat round a quorum acknowledged, and
    /// whose slot is not below what phase 1 recovered.
    pub(super) fn confirm_reads(&mut self) {
        if self.pending_reads.is_empty() {
            return;
        }
        let mut acked: Vec<u64> = self.acked_probe.values().copied().collect();
        acked.sort_unstable_by(|a, b| b.cmp(a));
        let Some(&confirmed) = acked.get(self.quorum() - 1) else {
            return;
        };
        if self.chosen_upto < self.recovered_upto {
            return;
        }
        let mut waiting = Vec::new();
        for read in std::mem::take(&mut self.pending_reads) {
            if read.probe <= confirmed {
                let slot = read.slot.max(self.recovered_upto);
                self.ready_read(ReadReady {
                    read_id: read.read_id,
                    slot,
                });
            } else {
                waiting.push(read);
            }
        }
        self.pending_reads = waiting;
    }
}
