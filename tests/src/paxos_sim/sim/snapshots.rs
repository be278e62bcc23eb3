//! The simulated driver's snapshots: taking them and compacting below them,
//! sending them to peers that fell behind the compacted log, installing the
//! ones received; and the long outages that make replicas fall that far
//! behind.
//!
//! This follows `paxos-log`'s driver (`driver.rs`, `driver/snapshots.rs`):
//! a snapshot is taken between `Ready`s once K slots were applied since the
//! last, saved durably, and only then are the core and the acceptor store
//! compacted; a peer listed in `Ready::snapshot_requests` is sent the newest
//! snapshot (at most once per `snapshot_resend_ticks`); a snapshot received
//! beyond what the state machine applied is restored, saved durably,
//! installed in the core, and the store compacted below it. Two departures
//! that widen what is exercised, both within the core's contract: some
//! snapshots are taken at random moments, with a `Ready` in flight, and some
//! compact only part of what the snapshot covers.

use paxos_log::{AcceptorStore, Membership, NodeId, Role, Value};

use super::super::invariants::Checker;
use super::super::network::Event;
use super::super::scenario::Corruption;
use super::super::state_machine::Snapshot;
use super::super::trace::{MsgSummary, TraceEvent};
use super::super::{command, FORGED_COMMAND};
use super::{Sim, Step};

impl Sim {
    /// Snapshots at random moments: each running replica, with probability
    /// `snapshot_random_rate`, takes one now, whatever it applied.
    pub(super) fn random_snapshots(&mut self) -> Step {
        if self.snapshot_every == 0 || self.scenario.snapshot_random_rate <= 0.0 {
            return Ok(());
        }
        for id in self.machines.clone() {
            if self.nodes[&id].replica.is_some()
                && self.snap_rng.chance(self.scenario.snapshot_random_rate)
            {
                self.maybe_take_snapshot(id, true)?;
            }
        }
        Ok(())
    }

    /// Takes a snapshot of `id`'s state machine if K slots were applied
    /// since its last one (or `now_anyway`, if it applied anything since):
    /// saves it durably, then compacts the core's log and the acceptor
    /// store below it (all of it, or a random part). A crash may hit right
    /// after the save.
    pub(super) fn maybe_take_snapshot(&mut self, id: NodeId, now_anyway: bool) -> Step {
        if self.snapshot_every == 0 {
            return Ok(());
        }
        let node = &self.nodes[&id];
        let Some(replica) = node.replica.as_ref() else {
            return Ok(());
        };
        let applied = node.sm.applied_upto();
        if applied <= node.snapshot.slot() || (!now_anyway && applied < node.snapshot_due) {
            return Ok(());
        }
        let compacted = replica.log_start() - 1;
        let compact_upto = if self.snap_rng.chance(self.scenario.compact_partial_fraction) {
            self.snap_rng.between(compacted.min(applied), applied)
        } else {
            applied
        };
        let crash =
            self.faults_active && self.fault_rng.chance(self.scenario.crash_in_snapshot_rate);
        let node = self.nodes.get_mut(&id).expect("member");
        node.snapshot = node.sm.snapshot();
        node.snapshot_due = applied + self.snapshot_every;
        self.stats.snapshots_taken += 1;
        self.trace.push(
            self.now,
            TraceEvent::SnapshotTaken {
                node: id,
                slot: applied,
                compact_upto,
                crash,
            },
        );
        if crash {
            self.stats.crashes_in_snapshot += 1;
            self.crash(id, "after saving a snapshot, before compacting below it");
            return Ok(());
        }
        let node = self.nodes.get_mut(&id).expect("member");
        if let Some(replica) = node.replica.as_mut() {
            replica.compact(compact_upto);
        }
        node.store
            .compact(compact_upto)
            .expect("MemAcceptorStore::compact cannot fail");
        Ok(())
    }

    /// `from` answers a snapshot request of `to` with its newest durable
    /// snapshot, through the network, unless it sent `to` one less than
    /// `snapshot_resend_ticks` ago.
    pub(super) fn send_snapshot(&mut self, from: NodeId, to: NodeId) {
        let now = self.now;
        let resend = self.scenario.snapshot_resend_ticks;
        let node = self.nodes.get_mut(&from).expect("member");
        let snapshot = node.snapshot.clone();
        let slot = snapshot.slot();
        if slot == 0
            || node
                .snapshot_sent_at
                .get(&to)
                .is_some_and(|&at| now < at + resend)
        {
            return;
        }
        node.snapshot_sent_at.insert(to, now);
        self.stats.snapshots_sent += 1;
        self.trace
            .push(now, TraceEvent::SnapshotSent { from, to, slot });
        self.transmit(
            from,
            to,
            MsgSummary::snapshot(slot),
            Event::Snapshot { from, to, snapshot },
        );
    }

    /// A snapshot from `from` arrives at `to`: ignored unless it is beyond
    /// what `to` applied; kept until the `Ready` in flight is carried out;
    /// otherwise installed at once.
    pub(super) fn deliver_snapshot(
        &mut self,
        from: NodeId,
        to: NodeId,
        snapshot: Snapshot,
    ) -> Step {
        let mut snapshot = snapshot;
        let summary = MsgSummary::snapshot(snapshot.slot());
        if self.dropped_on_arrival(from, to, summary) {
            return Ok(());
        }
        if self.scenario.corruption == Some(Corruption::CorruptSnapshots) && snapshot.slot() > 0 {
            let len = usize::try_from(snapshot.slot()).expect("a snapshot's length is a usize");
            let index = self.snap_rng.index(len);
            let (damaged, changed_slot) =
                snapshot.with_value_replaced(index, Value::Commands(vec![command(FORGED_COMMAND)]));
            self.stats.snapshots_corrupted += 1;
            self.trace.push(
                self.now,
                TraceEvent::SnapshotCorrupted {
                    to,
                    slot: damaged.slot(),
                    changed_slot,
                },
            );
            snapshot = damaged;
        }
        self.stats.snapshots_delivered += 1;
        self.trace.push(
            self.now,
            TraceEvent::Deliver {
                from,
                to,
                msg: summary,
            },
        );
        let node = self.nodes.get_mut(&to).expect("member");
        let slot = snapshot.slot();
        if slot <= node.sm.applied_upto() {
            self.stats.snapshots_stale += 1;
            self.trace.push(
                self.now,
                TraceEvent::SnapshotIgnored {
                    node: to,
                    slot,
                    why: "not beyond what it applied",
                },
            );
            return Ok(());
        }
        if node.in_flight.is_some() {
            if node
                .pending_snapshot
                .as_ref()
                .is_none_or(|(_, pending)| pending.slot() < slot)
            {
                node.pending_snapshot = Some((from, snapshot));
            }
            self.stats.snapshots_deferred += 1;
            self.trace.push(
                self.now,
                TraceEvent::SnapshotIgnored {
                    node: to,
                    slot,
                    why: "deferred until the Ready in flight is carried out",
                },
            );
            return Ok(());
        }
        self.install_snapshot(to, from, snapshot)
    }

    /// `id` installs `snapshot` from `from` (no `Ready` in flight): restores
    /// its state machine from it, which must then be the chosen log prefix,
    /// saves it durably, calls `install_snapshot` and compacts its store. A
    /// crash may hit right after the save. Delivery then continues from the
    /// slot after the snapshot (checked as every delivery is).
    pub(super) fn install_snapshot(
        &mut self,
        id: NodeId,
        from: NodeId,
        snapshot: Snapshot,
    ) -> Step {
        let slot = snapshot.slot();
        let node = self.nodes.get_mut(&id).expect("member");
        let applied_before = node.sm.applied_upto();
        if slot <= applied_before || node.replica.is_none() {
            self.stats.snapshots_stale += 1;
            return Ok(());
        }
        node.sm.restore(&snapshot);
        node.snapshot = snapshot;
        node.snapshot_due = slot + self.snapshot_every;
        let crash =
            self.faults_active && self.fault_rng.chance(self.scenario.crash_in_install_rate);
        self.trace.push(
            self.now,
            TraceEvent::SnapshotInstalled {
                node: id,
                from,
                slot,
                applied_before,
                crash,
            },
        );
        let node = &self.nodes[&id];
        self.checker.check_state_machine(
            id,
            &format!("state machine restored from {from}'s snapshot"),
            slot,
            |s| node.sm.value(s),
        )?;
        if crash {
            self.stats.crashes_in_snapshot += 1;
            self.crash(
                id,
                "after restoring and saving a received snapshot, before install_snapshot",
            );
            return Ok(());
        }
        self.stats.snapshots_installed += 1;
        if !self.faults_active {
            self.stats.snapshots_installed_in_recovery += 1;
        }
        // A machine the group took in after the slot it had applied (a
        // spare, or one removed and added back) catching up this way: the
        // snapshot's membership is all it knows of the changes before it.
        let member_at = |slot| {
            self.checker
                .true_members_at(slot)
                .is_some_and(|members| members.contains(&id))
        };
        if member_at(slot + 1) && !member_at(applied_before + 1) {
            self.stats.snapshots_installed_by_added += 1;
        }
        let membership = self.snapshot_membership(&self.nodes[&id].snapshot);
        let node = self.nodes.get_mut(&id).expect("member");
        if node
            .replica
            .as_ref()
            .is_some_and(|r| r.role() != Role::Follower)
        {
            self.stats.snapshots_installed_not_follower += 1;
        }
        if let Some(replica) = node.replica.as_mut() {
            replica.install_snapshot(slot, Some(membership));
        }
        node.store
            .compact(slot)
            .expect("MemAcceptorStore::compact cannot fail");
        // The core hands out nothing up to the snapshot again.
        node.emitted_upto = node.emitted_upto.max(slot);
        let log_start = node.replica.as_ref().map(|r| r.log_start());
        Checker::check_compaction(
            id,
            log_start,
            node.sm.applied_upto(),
            node.snapshot.slot(),
            node.store.state().compacted_upto,
        )?;
        self.serve_reads(id);
        self.observe(id)?;
        self.pump(id)
    }

    /// The membership the driver hands the core with a snapshot it restores
    /// or installs: the one saved with it (here computed from its prefix,
    /// [`Snapshot::membership`]), or, under the test-only
    /// [`Corruption::ForgetSnapshotMembership`], the genesis configuration.
    pub(super) fn snapshot_membership(&self, snapshot: &Snapshot) -> Membership {
        if self.scenario.corruption == Some(Corruption::ForgetSnapshotMembership) {
            Membership::genesis(&self.genesis)
        } else {
            snapshot.membership(&self.genesis, self.scenario.reconfig_window_slots)
        }
    }

    /// Per tick: with probability `long_outage_rate`, one running machine
    /// (while fewer than a minority of the size of the latest
    /// configuration are away) goes away for a long stretch: crashed, or
    /// cut off from everyone both ways. Any machine may go, members or not:
    /// a spare away for long that is then added can only catch up through
    /// a snapshot.
    pub(super) fn long_outage(&mut self) {
        if !self.fault_rng.chance(self.scenario.long_outage_rate) {
            return;
        }
        let away = self
            .machines
            .iter()
            .filter(|id| self.nodes[id].long_down || self.links.is_isolated(**id))
            .count();
        let group_size = self.checker.latest_members().map_or(0, <[NodeId]>::len);
        if away >= group_size.saturating_sub(1) / 2 {
            return;
        }
        let candidates: Vec<NodeId> = self
            .machines
            .iter()
            .copied()
            .filter(|id| self.nodes[id].replica.is_some() && !self.links.is_isolated(*id))
            .collect();
        if candidates.is_empty() {
            return;
        }
        let id = candidates[self.fault_rng.index(candidates.len())];
        let ticks = self.fault_rng.in_range(self.scenario.long_outage_ticks);
        self.stats.long_outages += 1;
        if self
            .fault_rng
            .chance(self.scenario.long_outage_isolate_fraction)
        {
            self.links.isolate(id, self.now + ticks);
            self.trace.push(
                self.now,
                TraceEvent::Network(format!("{id} cut off from everyone for {ticks} ticks")),
            );
        } else {
            self.crash_for(id, "long outage", ticks);
            self.nodes.get_mut(&id).expect("member").long_down = true;
        }
    }
}
