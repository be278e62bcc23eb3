//! The simulated network and disk: one timed event queue, and the set of
//! cut links and isolated replicas.

use std::collections::{BTreeMap, BTreeSet};

use paxos_log::{Envelope, NodeId};

use super::rng::SimRng;
use super::state_machine::Snapshot;

/// Something due at a tick.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// A message arrives.
    Deliver(Envelope),
    /// A state machine snapshot sent by the driver of `from` arrives (the
    /// real driver streams it as `Message::Snapshot` chunks; the simulation
    /// moves it whole, so a lost chunk is a lost snapshot).
    Snapshot {
        from: NodeId,
        to: NodeId,
        snapshot: Snapshot,
    },
    /// The persist of the `Ready` a replica incarnation took completes.
    DiskDone { node: NodeId, incarnation: u64 },
}

/// Events ordered by due tick, then by a random key (so events due in the
/// same tick happen in random order), then by insertion.
#[derive(Debug, Default)]
pub(crate) struct EventQueue {
    events: BTreeMap<(u64, u64, u64), Event>,
    seq: u64,
}

impl EventQueue {
    pub(crate) fn schedule(&mut self, at: u64, order: u64, event: Event) {
        self.seq += 1;
        self.events.insert((at, order, self.seq), event);
    }

    /// The next event due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: u64) -> Option<Event> {
        let entry = self.events.first_entry()?;
        if entry.key().0 > now {
            return None;
        }
        Some(entry.remove())
    }

    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }
}

/// Which directed links are cut, and which replicas are cut off from
/// everyone for a long stretch.
#[derive(Debug, Default)]
pub(crate) struct Links {
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Replicas isolated both ways, until the tick given.
    isolated: BTreeMap<NodeId, u64>,
}

impl Links {
    pub(crate) fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        (!self.cut.is_empty() && self.cut.contains(&(from, to)))
            || (!self.isolated.is_empty()
                && (self.isolated.contains_key(&from) || self.isolated.contains_key(&to)))
    }

    /// Whether a partition or a link cut is in force (long isolations do
    /// not count: they end on their own).
    pub(crate) fn is_split(&self) -> bool {
        !self.cut.is_empty()
    }

    /// Ends the partition or link cut in force (not the long isolations).
    pub(crate) fn heal(&mut self) {
        self.cut.clear();
    }

    /// Ends every cut and every isolation.
    pub(crate) fn heal_all(&mut self) {
        self.cut.clear();
        self.isolated.clear();
    }

    /// Cuts `node` off from everyone, both ways, until tick `until`.
    pub(crate) fn isolate(&mut self, node: NodeId, until: u64) {
        self.isolated.insert(node, until);
    }

    pub(crate) fn is_isolated(&self, node: NodeId) -> bool {
        self.isolated.contains_key(&node)
    }

    /// Ends the isolations due by `now`; returns the replicas reconnected.
    pub(crate) fn end_isolations(&mut self, now: u64) -> Vec<NodeId> {
        let due: Vec<NodeId> = self
            .isolated
            .iter()
            .filter(|(_, &until)| until <= now)
            .map(|(&node, _)| node)
            .collect();
        for node in &due {
            self.isolated.remove(node);
        }
        due
    }

    /// Cuts the link between two distinct random members, both ways.
    /// Returns a description for the trace.
    pub(crate) fn cut_link(&mut self, members: &[NodeId], rng: &mut SimRng) -> String {
        let a = members[rng.index(members.len())];
        let others: Vec<NodeId> = members.iter().copied().filter(|&m| m != a).collect();
        let b = others[rng.index(others.len())];
        self.cut.insert((a, b));
        self.cut.insert((b, a));
        format!("link {a}<->{b} cut (the others reach both)")
    }

    /// Splits `members` into two non-empty sides at random and cuts the
    /// links from side A to side B, and back unless `one_way`. Returns a
    /// description for the trace.
    pub(crate) fn split(&mut self, members: &[NodeId], one_way: bool, rng: &mut SimRng) -> String {
        let mut side_a: Vec<NodeId> = members
            .iter()
            .copied()
            .filter(|_| rng.chance(0.5))
            .collect();
        if side_a.is_empty() {
            side_a.push(members[rng.index(members.len())]);
        }
        if side_a.len() == members.len() {
            let keep = rng.index(side_a.len());
            side_a.remove(keep);
        }
        let side_b: Vec<NodeId> = members
            .iter()
            .copied()
            .filter(|m| !side_a.contains(m))
            .collect();
        for &a in &side_a {
            for &b in &side_b {
                self.cut.insert((a, b));
                if !one_way {
                    self.cut.insert((b, a));
                }
            }
        }
        let names = |side: &[NodeId]| {
            side.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        if one_way {
            format!(
                "one-way cut: {{{}}} cannot reach {{{}}}",
                names(&side_a),
                names(&side_b)
            )
        } else {
            format!("partition {{{}}} | {{{}}}", names(&side_a), names(&side_b))
        }
    }
}
