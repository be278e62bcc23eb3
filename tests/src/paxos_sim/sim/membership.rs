//! The simulated operator's membership changes, and the crashes of the
//! machines they add or remove.
//!
//! While the faults last, with probability [`Scenario::reconfig_rate`] per
//! tick, the replica that believes it leads (sometimes any machine, as a
//! misdirected operator would) is asked to `reconfigure` to a member set
//! drawn from its newest configuration (`membership().latest()`): one
//! machine added, one member removed (the leader itself too), or one
//! member replaced by a non-member, in one call. Sizes stay mostly within
//! `3..=5`, sometimes beyond, never below 1. Every set a replica takes is
//! recorded, so a chosen `Reconfigure` that no leader took is a validity
//! violation.
//!
//! Right after a change is taken, with probability
//! [`Scenario::crash_changing_node_rate`], the machine being added or
//! removed crashes, at once or a few ticks later, for a short or a long
//! stretch: the change then happens while it is down, and after its
//! restart it must catch up from the log or, past the others' compaction
//! points, from a snapshot that carries the membership.
//!
//! Every draw comes from `member_rng`, so scenarios without changes replay
//! exactly as before they existed.
//!
//! [`Scenario::reconfig_rate`]: super::super::scenario::Scenario::reconfig_rate
//! [`Scenario::crash_changing_node_rate`]: super::super::scenario::Scenario::crash_changing_node_rate

use paxos_log::{NodeId, ProposeError};

use super::super::trace::TraceEvent;
use super::{Sim, Step};

/// Sizes a change usually keeps the group within: below the low end only
/// removals are refused, above the high end only additions, except with
/// probability [`UNUSUAL_SIZE_RATE`].
const USUAL_MEMBERS_MIN: usize = 3;
/// See [`USUAL_MEMBERS_MIN`].
const USUAL_MEMBERS_MAX: usize = 5;
/// Per change drawn: a removal below [`USUAL_MEMBERS_MIN`] (down to one
/// member) or an addition above [`USUAL_MEMBERS_MAX`] is allowed.
const UNUSUAL_SIZE_RATE: f64 = 0.1;

/// Of the crashes of a changing machine: the share that waits a few ticks
/// (the change is then in flight or chosen, not just queued).
const CHANGING_CRASH_LATER_FRACTION: f64 = 0.5;
/// A later crash comes `[1, CHANGING_CRASH_DELAY_TICKS_MAX]` ticks after
/// the change was taken.
const CHANGING_CRASH_DELAY_TICKS_MAX: u64 = 20;
/// Of the crashes of a changing machine: the share that keeps it down for
/// a long stretch (`Scenario::long_outage_ticks`, or three times
/// `down_ticks_max` without long outages), so the group compacts past it.
const CHANGING_CRASH_LONG_FRACTION: f64 = 0.3;

/// What a change does to the newest configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChangeKind {
    Add,
    Remove,
    Replace,
}

impl ChangeKind {
    fn describe(self) -> &'static str {
        match self {
            ChangeKind::Add => "add",
            ChangeKind::Remove => "remove",
            ChangeKind::Replace => "replace",
        }
    }
}

/// A drawn change: its kind, the new member set, and the machines it adds
/// or removes.
struct Change {
    kind: ChangeKind,
    members: Vec<NodeId>,
    changing: Vec<NodeId>,
}

impl Sim {
    /// The operator's load: with probability `reconfig_rate`, one
    /// `reconfigure` call while the faults last.
    pub(super) fn reconfig_calls(&mut self) -> Step {
        if !self.faults_active || !self.member_rng.chance(self.scenario.reconfig_rate) {
            return Ok(());
        }
        let Some(target) = self.pick_target(|sim| &mut sim.member_rng) else {
            self.stats.reconfigs_nobody_to_ask += 1;
            return Ok(());
        };
        let base = self.nodes[&target]
            .replica
            .as_ref()
            .expect("picked among running machines")
            .membership()
            .latest()
            .1
            .to_vec();
        let Some(change) = self.draw_change(&base) else {
            return Ok(());
        };
        self.stats.reconfigs_asked += 1;
        let replica = self.replica(target).expect("picked among running machines");
        let outcome = match replica.reconfigure(change.members.clone()) {
            Ok(()) => "taken",
            Err(ProposeError::NotLeader { .. }) => "not leader",
            Err(ProposeError::Reconfiguring) => "another change under way",
            Err(ProposeError::InvalidMembership(_)) => "invalid membership",
            Err(ProposeError::Busy) => "busy",
        };
        match outcome {
            "taken" => self.stats.reconfigs_taken += 1,
            "not leader" => self.stats.reconfigs_not_leader += 1,
            "another change under way" => self.stats.reconfigs_refused_in_progress += 1,
            _ => self.stats.reconfigs_refused_other += 1,
        }
        self.trace.push(
            self.now,
            TraceEvent::Reconfigure {
                node: target,
                kind: change.kind.describe(),
                members: change.members.clone(),
                outcome,
            },
        );
        if outcome == "taken" {
            self.checker.record_proposed_members(&change.members);
            match change.kind {
                ChangeKind::Add => self.stats.adds += 1,
                ChangeKind::Remove => self.stats.removes += 1,
                ChangeKind::Replace => self.stats.replaces += 1,
            }
            if change.changing.contains(&target) && !change.members.contains(&target) {
                self.stats.leader_removals += 1;
            }
        }
        self.observe(target)?;
        self.pump(target)?;
        if outcome == "taken"
            && self
                .member_rng
                .chance(self.scenario.crash_changing_node_rate)
        {
            let victim = change.changing[self.member_rng.index(change.changing.len())];
            if self.member_rng.chance(CHANGING_CRASH_LATER_FRACTION) {
                let delay = self.member_rng.between(1, CHANGING_CRASH_DELAY_TICKS_MAX);
                self.changing_crashes.push((self.now + delay, victim));
            } else {
                self.crash_changing(victim);
            }
        }
        Ok(())
    }

    /// A change of `base` (a sorted configuration): one of the kinds its
    /// size and the machines outside it allow, or `None` if none does (a
    /// single member and no machine outside it).
    fn draw_change(&mut self, base: &[NodeId]) -> Option<Change> {
        let outside: Vec<NodeId> = self
            .machines
            .iter()
            .copied()
            .filter(|id| !base.contains(id))
            .collect();
        let mut kinds = Vec::new();
        if !outside.is_empty()
            && (base.len() < USUAL_MEMBERS_MAX || self.member_rng.chance(UNUSUAL_SIZE_RATE))
        {
            kinds.push(ChangeKind::Add);
        }
        if base.len() > USUAL_MEMBERS_MIN
            || (base.len() > 1 && self.member_rng.chance(UNUSUAL_SIZE_RATE))
        {
            kinds.push(ChangeKind::Remove);
        }
        if !outside.is_empty() && !base.is_empty() {
            kinds.push(ChangeKind::Replace);
        }
        if kinds.is_empty() {
            return None;
        }
        let kind = kinds[self.member_rng.index(kinds.len())];
        let mut members = base.to_vec();
        let changing = match kind {
            ChangeKind::Add => {
                // Appended: the core must not rely on the order it is given.
                let added = outside[self.member_rng.index(outside.len())];
                members.push(added);
                vec![added]
            }
            ChangeKind::Remove => {
                let removed = members.remove(self.member_rng.index(members.len()));
                vec![removed]
            }
            ChangeKind::Replace => {
                let added = outside[self.member_rng.index(outside.len())];
                let index = self.member_rng.index(members.len());
                let removed = std::mem::replace(&mut members[index], added);
                vec![added, removed]
            }
        };
        Some(Change {
            kind,
            members,
            changing,
        })
    }

    /// Carries out the crashes of changing machines that are due.
    pub(super) fn due_changing_crashes(&mut self) {
        if self.changing_crashes.is_empty() {
            return;
        }
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = self
            .changing_crashes
            .drain(..)
            .partition(|&(at, _)| at <= now);
        self.changing_crashes = later;
        for (_, id) in due {
            self.crash_changing(id);
        }
    }

    /// Crashes `id`, a machine a change adds or removes, if it runs: for a
    /// short stretch, or a long one the group may compact past.
    fn crash_changing(&mut self, id: NodeId) {
        if self.nodes[&id].replica.is_none() {
            return;
        }
        let long = self.member_rng.chance(CHANGING_CRASH_LONG_FRACTION);
        let down_ticks = if long {
            if self.scenario.long_outage_rate > 0.0 {
                self.member_rng.in_range(self.scenario.long_outage_ticks)
            } else {
                let max = self.scenario.down_ticks_max.max(1);
                self.member_rng.between(max, max * 3)
            }
        } else {
            self.member_rng
                .between(1, self.scenario.down_ticks_max.max(1))
        };
        self.stats.changing_node_crashes += 1;
        self.crash_for(id, "machine being added or removed", down_ticks);
        // Counted as away by the long outages, which keep a majority up.
        self.nodes.get_mut(&id).expect("machine").long_down = long;
    }
}
