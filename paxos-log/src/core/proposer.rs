//! The proposer: elections (phase 1), the leader's pipeline of batched slots
//! (phase 2), membership changes, heartbeats and linearizable reads.
//!
//! A new leader runs phase 1 once, for every slot from its first one not
//! known chosen. From the promises of a quorum it re-proposes, in each open
//! slot, the value accepted at the highest ballot, and a no-op where no one
//! accepted anything ("Paxos Made Simple", §3). After that, new commands
//! need phase 2 only: the leader cuts queued commands into slots (one slot
//! holds a batch) and keeps up to `inflight_slots_max` slots in flight.
//!
//! With membership changes every slot is its own Paxos instance among the
//! members of its configuration, which the α-window rule fixes before the
//! slot can be proposed. So a slot is proposed only when (1) every slot up to
//! `slot - α` is chosen, (2) a majority of that slot's members promised the
//! leader's ballot for it, and (3) its value is the highest-ballot one those
//! promises reported there. A candidate needs (2) for every configuration
//! of its window to lead; when the window reaches a configuration that has
//! not promised yet, the leader asks its members with the same ballot and
//! proposes nothing there until a majority answered.

use tracing::{debug, info};

use super::{PromiseInfo, Proposal, Replica, Role, SlotState};
use crate::membership::majority;
use crate::message::{Message, PromisedSlot, SlotValue};
use crate::ready::{PersistOp, ReadReady};
use crate::types::{Ballot, NodeId, Slot, Value};

/// Where the value of the leader's next slot comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// This replica already knows the slot chosen: skip it.
    KnownChosen,
    /// A promise reported a value accepted there: re-propose it.
    Recovered,
    /// Below the highest slot a promise reported, and nobody accepted
    /// anything here: a no-op fills the hole.
    Hole,
    /// The queued membership change.
    Reconfigure,
    /// Queued client commands.
    Commands,
    /// A chosen (or in flight) change is not yet in force: no-ops carry the
    /// log to it, so it takes effect without waiting for client load.
    WindowFill,
}

impl Replica {
    /// Phase 1a: a new ballot above everything seen, sent to every member
    /// of every configuration in the window.
    pub(super) fn start_election(&mut self) {
        let above = self.highest_seen.max(self.promised).max(self.ballot);
        self.ballot = above.next_for(self.id());
        self.observe(self.ballot);
        self.role = Role::Candidate;
        self.leader_hint = None;
        self.promises.clear();
        self.recovered_upto = 0;
        self.prepare_first_slot = self.chosen_upto + 1;
        self.reset_election_timer();
        debug!(node = %self.id(), ballot = %self.ballot, first_slot = self.prepare_first_slot, "election");
        let message = Message::Prepare {
            ballot: self.ballot,
            first_slot: self.prepare_first_slot,
        };
        for member in self.window_members() {
            self.send(member, message.clone());
        }
    }

    /// Phase 1b arrived, for the candidate's election or for a leader
    /// asking a new configuration.
    pub(super) fn on_promise(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        first_slot: Slot,
        compacted_upto: Slot,
        slots: Vec<PromisedSlot>,
    ) {
        if self.role == Role::Follower || ballot != self.ballot {
            return;
        }
        if compacted_upto >= first_slot {
            // The promiser forgot chosen slots this replica does not know,
            // so the promise cannot show their values: proposing there
            // could put no-ops over chosen values. Catch up first (the peer
            // answers with a snapshot), and let a replica that is not
            // behind lead.
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
        let mut accepted = std::collections::BTreeMap::new();
        for reported in slots {
            let slot = reported.slot();
            if slot < first_slot {
                continue;
            }
            self.recovered_upto = self.recovered_upto.max(slot);
            match reported {
                PromisedSlot::Chosen { value, .. } => self.learn_chosen(slot, value),
                PromisedSlot::Accepted { ballot, value, .. } => {
                    accepted.insert(slot, (ballot, value));
                }
            }
        }
        self.advance_chosen();
        // A promise covering more slots is worth more; an acceptor promises
        // each ballot once, so a second one only repeats the first.
        let keep_older = self
            .promises
            .get(&from)
            .is_some_and(|p| p.first_slot <= first_slot);
        if !keep_older {
            self.promises.insert(
                from,
                PromiseInfo {
                    first_slot,
                    accepted,
                },
            );
        }
        if self.role == Role::Candidate && self.phase1_complete() {
            self.become_leader();
        }
    }

    /// Whether a majority of every configuration in the window promised.
    fn phase1_complete(&self) -> bool {
        self.window_runs()
            .iter()
            .all(|&(first, _)| self.has_promise_quorum(first))
    }

    /// Phase 1 is done: lead. The open slots are filled from the promises
    /// as the pipeline gets to them (`fill_slots`).
    fn become_leader(&mut self) {
        self.role = Role::Leader;
        self.leader_hint = Some(self.id());
        self.leader_since = self.now_ticks;
        self.heartbeat_elapsed_ticks = 0;
        self.proposals.clear();
        self.acked_probe.clear();
        self.last_heard_at.clear();
        self.promises_requested_for = None;
        self.next_slot = self.chosen_upto + 1;
        self.recovered_upto = self.recovered_upto.max(self.chosen_upto);
        info!(node = %self.id(), ballot = %self.ballot, open_slots = self.recovered_upto - self.chosen_upto, "leader");
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
        self.promises_requested_for = None;
        self.proposals.clear();
        self.pending.clear();
        self.reconfig_queued = None;
        self.pending_reads.clear();
        self.probe_wanted = false;
        self.reset_election_timer();
    }

    /// What the leader's next slot would hold, if it may propose it now.
    pub(super) fn next_source(&self) -> Option<Source> {
        if self.role != Role::Leader
            || self.proposals.len() as u64 >= self.config.inflight_slots_max
        {
            return None;
        }
        let slot = self.next_slot.max(self.chosen_upto + 1);
        if slot > self.window_last() {
            return None;
        }
        if matches!(self.log.get(&slot), Some(SlotState::Chosen { .. })) {
            return Some(Source::KnownChosen);
        }
        if !self.has_promise_quorum(slot) {
            return None;
        }
        if self.recovered_accept(slot).is_some() {
            Some(Source::Recovered)
        } else if slot <= self.recovered_upto {
            Some(Source::Hole)
        } else if self.reconfig_queued.is_some() {
            Some(Source::Reconfigure)
        } else if !self.pending.is_empty() {
            Some(Source::Commands)
        } else if self.change_not_in_force_at(slot) {
            Some(Source::WindowFill)
        } else {
            None
        }
    }

    /// The value accepted at the highest ballot in `slot` among the
    /// promises of its members that cover it: the one value phase 2 may
    /// propose there.
    fn recovered_accept(&self, slot: Slot) -> Option<&(Ballot, Value)> {
        self.membership
            .members_at(slot)
            .iter()
            .filter_map(|m| self.promises.get(m))
            .filter(|p| p.first_slot <= slot)
            .filter_map(|p| p.accepted.get(&slot))
            .max_by_key(|(ballot, _)| *ballot)
    }

    /// Whether a membership change chosen or in flight governs only slots
    /// after `slot`.
    fn change_not_in_force_at(&self, slot: Slot) -> bool {
        self.membership.changes_after(slot)
            || self
                .unrecorded_change()
                .is_some_and(|r| r + self.config.reconfig_window_slots > slot)
    }

    /// Proposes every slot the window, the pipeline and the promises allow.
    pub(super) fn fill_slots(&mut self) {
        let mut new_slots = Vec::new();
        while let Some(source) = self.next_source() {
            self.next_slot = self.next_slot.max(self.chosen_upto + 1);
            let slot = self.next_slot;
            self.next_slot += 1;
            let value = match source {
                Source::KnownChosen => continue,
                Source::Recovered => self
                    .recovered_accept(slot)
                    .map_or(Value::Noop, |(_, value)| value.clone()),
                Source::Hole | Source::WindowFill => Value::Noop,
                Source::Reconfigure => match self.reconfig_queued.take() {
                    Some(members) => Value::Reconfigure(members),
                    None => Value::Noop,
                },
                Source::Commands => self.cut_batch(),
            };
            debug_assert!(self.has_promise_quorum(slot), "proposing without phase 1");
            self.proposals.insert(
                slot,
                Proposal {
                    value,
                    acks: Default::default(),
                },
            );
            new_slots.push(slot);
        }
        // Promises are needed only for slots not yet proposed.
        let next_slot = self.next_slot;
        for promise in self.promises.values_mut() {
            if promise
                .accepted
                .first_key_value()
                .is_some_and(|(&first, _)| first < next_slot)
            {
                promise.accepted = promise.accepted.split_off(&next_slot);
            }
        }
        if !new_slots.is_empty() {
            self.send_accepts(&new_slots, None);
        }
    }

    /// Takes one slot's worth of queued commands.
    fn cut_batch(&mut self) -> Value {
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        while let Some(command) = self.pending.front() {
            let full = batch.len() >= self.config.batch_commands_max
                || (!batch.is_empty() && batch_bytes + command.len() > self.config.batch_bytes_max);
            if full {
                break;
            }
            batch_bytes += command.len();
            if let Some(command) = self.pending.pop_front() {
                batch.push(command);
            }
        }
        Value::Commands(batch)
    }

    /// The window reached a configuration without a majority of promises:
    /// asks its members to promise the leader's ballot from that slot on.
    /// Sent once per slot, and again every heartbeat interval (`tick_leader`
    /// clears the mark) while messages may be lost.
    pub(super) fn request_promises_if_stalled(&mut self) {
        let slot = self.next_slot.max(self.chosen_upto + 1);
        if slot > self.window_last()
            || self.promises_requested_for == Some(slot)
            || self.has_promise_quorum(slot)
        {
            return;
        }
        self.promises_requested_for = Some(slot);
        let missing: Vec<NodeId> = self
            .membership
            .members_at(slot)
            .iter()
            .copied()
            .filter(|m| self.promises.get(m).is_none_or(|p| p.first_slot > slot))
            .collect();
        debug!(node = %self.id(), ballot = %self.ballot, slot, ?missing, "phase 1 for a new configuration");
        let message = Message::Prepare {
            ballot: self.ballot,
            first_slot: slot,
        };
        for member in missing {
            self.send(member, message.clone());
        }
    }

    /// Sends `Accept` for `slots` (in flight) to `only` or to every member
    /// of their configurations, at most `message_slots_max` slots per
    /// message.
    fn send_accepts(&mut self, slots: &[Slot], only: Option<NodeId>) {
        for chunk in slots.chunks(self.config.message_slots_max) {
            // Consecutive slots usually share one configuration: one
            // message per member for the whole run.
            let mut start = 0;
            while start < chunk.len() {
                let members = self.membership.members_at(chunk[start]).to_vec();
                let mut end = start + 1;
                while end < chunk.len()
                    && self.membership.members_at(chunk[end]) == members.as_slice()
                {
                    end += 1;
                }
                let entries: Vec<SlotValue> = chunk[start..end]
                    .iter()
                    .filter_map(|slot| {
                        self.proposals.get(slot).map(|p| SlotValue {
                            slot: *slot,
                            value: p.value.clone(),
                        })
                    })
                    .collect();
                start = end;
                if entries.is_empty() {
                    continue;
                }
                for &target in &members {
                    if only.is_some_and(|only| only != target) {
                        continue;
                    }
                    let message = Message::Accept {
                        ballot: self.ballot,
                        entries: entries.clone(),
                        commit_upto: self.chosen_upto,
                    };
                    self.send(target, message);
                }
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
        let me = self.id();
        let mut chosen_any = false;
        for slot in slots {
            let members = self.membership.members_at(*slot);
            if !members.contains(&from) {
                continue;
            }
            let quorum = majority(members);
            let leader_votes = members.contains(&me);
            let Some(proposal) = self.proposals.get_mut(slot) else {
                continue;
            };
            proposal.acks.insert(from);
            if proposal.acks.len() < quorum {
                continue;
            }
            let Some(proposal) = self.proposals.remove(slot) else {
                continue;
            };
            if !leader_votes {
                // A leader outside the slot's configuration (its own
                // removal, on the way to taking effect) holds the value
                // nowhere on disk: persist it before it is applied, as
                // every applied slot must be.
                self.persist(PersistOp::Chosen {
                    slot: *slot,
                    value: proposal.value.clone(),
                });
            }
            // Otherwise the leader's own acceptance may not be among the
            // quorum, but the value is the one it proposed at its ballot,
            // which its own acceptor holds or will hold (the accept to
            // itself is persisted in the same `Ready` that sent it).
            self.log.insert(
                *slot,
                SlotState::Chosen {
                    value: proposal.value,
                },
            );
            chosen_any = true;
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
            // Every configuration in the window needs a live majority.
            let since = self.now_ticks - window;
            let me = self.id();
            let quiet = self.window_runs().iter().any(|(_, members)| {
                let alive = members
                    .iter()
                    .filter(|&&m| {
                        m == me || self.last_heard_at.get(&m).is_some_and(|&at| at >= since)
                    })
                    .count();
                alive < majority(members)
            });
            if quiet {
                self.step_down(None);
                return;
            }
        }
        self.broadcast_heartbeat();
        // Ask a stalled configuration to promise again: messages may have
        // been lost.
        self.promises_requested_for = None;
        // Retransmit every slot still in flight to the members that have
        // not acknowledged it: messages may have been lost.
        let mut missing: std::collections::BTreeMap<NodeId, Vec<Slot>> = Default::default();
        for (&slot, proposal) in &self.proposals {
            for member in self
                .membership
                .members_at(slot)
                .iter()
                .filter(|m| !proposal.acks.contains(m))
            {
                missing.entry(*member).or_default().push(slot);
            }
        }
        for (member, slots) in missing {
            self.send_accepts(&slots, Some(member));
        }
    }

    /// A new heartbeat round to every member of the window; also confirms
    /// leadership for the reads waiting on it.
    pub(super) fn broadcast_heartbeat(&mut self) {
        self.probe += 1;
        let id = self.id();
        self.acked_probe.insert(id, self.probe);
        let message = Message::Heartbeat {
            ballot: self.ballot,
            commit_upto: self.chosen_upto,
            probe: self.probe,
        };
        for peer in self.window_members() {
            if peer != id {
                self.send(peer, message.clone());
            }
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

    /// Releases every read whose heartbeat round a majority of every
    /// configuration in the window acknowledged, once everything the
    /// promises reported is chosen and every configuration in the window
    /// promised. Then no lower ballot can have chosen a slot this leader
    /// does not know (its window's promises would have reported it), and
    /// no higher ballot can have chosen anything before the round (a
    /// majority of that slot's members would have refused the heartbeat);
    /// see "Membership change" in `docs/protocol.md`.
    pub(super) fn confirm_reads(&mut self) {
        if self.pending_reads.is_empty() || self.chosen_upto < self.recovered_upto {
            return;
        }
        let mut confirmed = u64::MAX;
        for (first, members) in self.window_runs() {
            if !self.has_promise_quorum(first) {
                return;
            }
            let mut acked: Vec<u64> = members
                .iter()
                .map(|m| self.acked_probe.get(m).copied().unwrap_or(0))
                .collect();
            acked.sort_unstable_by(|a, b| b.cmp(a));
            let Some(&round) = acked.get(majority(members) - 1) else {
                return;
            };
            confirmed = confirmed.min(round);
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
