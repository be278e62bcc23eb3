//! Which replicas vote on which slot: the group's configurations over its
//! log, under the α-window rule.
//!
//! A group starts with its genesis members (`Config::members`), which
//! govern slot 1 on. A [`crate::Value::Reconfigure`] chosen in slot `r`
//! governs every slot from `r + α` on, where `α` is the group-wide
//! `Config::reconfig_window_slots`. A leader proposes slot `i` only once
//! every slot up to `i - α` is chosen, so the configuration of any slot it
//! proposes is fixed by the chosen prefix, and every replica computes the
//! same one. See `docs/protocol.md`, "Membership change".
//!
//! [`Membership`] is that history: `effective slot -> members`. The core
//! keeps it from the chosen values it learns, and the driver stores it
//! with every snapshot, because a snapshot replaces the log prefix that
//! held the `Reconfigure` values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::{NodeId, Slot};

/// Most members one configuration may have. Quorums are counted per slot,
/// so this also bounds the work of counting them.
pub const MEMBERS_MAX: usize = 15;

/// The configurations of a group, each with the first slot it governs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// First governed slot -> members, sorted. Never empty; the first key
    /// is at most the first slot anyone asks about.
    configs: BTreeMap<Slot, Vec<NodeId>>,
}

/// Votes needed among `members`: a majority.
pub fn majority(members: &[NodeId]) -> usize {
    members.len() / 2 + 1
}

/// Why a set of members cannot be a configuration.
pub fn validate_members(members: &[NodeId]) -> Result<(), String> {
    if members.is_empty() {
        return Err("a configuration needs at least one member".to_string());
    }
    if members.len() > MEMBERS_MAX {
        return Err(format!(
            "a configuration has at most {MEMBERS_MAX} members, not {}",
            members.len()
        ));
    }
    let mut sorted = members.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != members.len() {
        return Err("a configuration must not name a member twice".to_string());
    }
    if sorted.contains(&NodeId(0)) {
        return Err("node id 0 is reserved (it marks \"no ballot\")".to_string());
    }
    Ok(())
}

impl Membership {
    /// A group whose genesis members govern every slot from 1 on.
    pub fn genesis(members: &[NodeId]) -> Membership {
        let mut sorted = members.to_vec();
        sorted.sort_unstable();
        Membership {
            configs: BTreeMap::from([(1, sorted)]),
        }
    }

    /// The members that vote on `slot`.
    pub fn members_at(&self, slot: Slot) -> &[NodeId] {
        self.configs
            .range(..=slot)
            .next_back()
            .or_else(|| self.configs.iter().next())
            .map_or(&[], |(_, members)| members.as_slice())
    }

    /// Records that `members` was chosen in slot `chosen_in`: it governs
    /// from `chosen_in + window_slots` on. Recording the same change twice
    /// changes nothing.
    pub fn record(&mut self, chosen_in: Slot, members: &[NodeId], window_slots: u64) {
        let mut sorted = members.to_vec();
        sorted.sort_unstable();
        self.configs.insert(chosen_in + window_slots, sorted);
    }

    /// The configurations that govern slots in `[first, last]`: each with
    /// the first slot of that range it governs, in slot order.
    pub fn runs(&self, first: Slot, last: Slot) -> Vec<(Slot, &[NodeId])> {
        let mut runs = vec![(first, self.members_at(first))];
        if last > first {
            runs.extend(
                self.configs
                    .range(first + 1..=last)
                    .map(|(&slot, members)| (slot, members.as_slice())),
            );
        }
        runs
    }

    /// Whether any configuration takes effect after `slot` (a change is
    /// chosen but not yet in force there).
    pub fn changes_after(&self, slot: Slot) -> bool {
        self.configs.range(slot + 1..).next().is_some()
    }

    /// The newest configuration: the one that will govern once every
    /// change chosen so far is in force, with its first slot.
    pub fn latest(&self) -> (Slot, &[NodeId]) {
        self.configs
            .iter()
            .next_back()
            .map_or((1, &[][..]), |(&slot, members)| (slot, members.as_slice()))
    }

    /// Forgets configurations superseded before `slot`: nobody asks about
    /// slots below it any more (they are compacted).
    pub fn forget_before(&mut self, slot: Slot) {
        let Some((&in_force, _)) = self.configs.range(..=slot).next_back() else {
            return;
        };
        self.configs = self.configs.split_off(&in_force);
    }

    /// What a snapshot taken at `slot` must carry: the configurations
    /// chosen in slots up to `slot` that govern slots after it. Changes
    /// chosen later are in the log above the snapshot.
    pub fn as_of(&self, slot: Slot, window_slots: u64) -> Membership {
        let mut configs: BTreeMap<Slot, Vec<NodeId>> = self
            .configs
            .range(..=slot + window_slots)
            .map(|(&first, members)| (first, members.clone()))
            .collect();
        if let Some((&in_force, _)) = configs.range(..=slot + 1).next_back() {
            configs = configs.split_off(&in_force);
        }
        Membership { configs }
    }

    /// Every configuration with its first slot, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (Slot, &[NodeId])> {
        self.configs
            .iter()
            .map(|(&slot, members)| (slot, members.as_slice()))
    }

    /// Checks a membership from a peer or a file before it is used.
    pub fn validate(&self) -> Result<(), String> {
        if self.configs.is_empty() {
            return Err("a membership needs at least one configuration".to_string());
        }
        for (&slot, members) in &self.configs {
            if slot == 0 {
                return Err("a configuration cannot start at slot 0".to_string());
            }
            validate_members(members)
                .map_err(|e| format!("configuration from slot {slot}: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(ids: &[u64]) -> Vec<NodeId> {
        ids.iter().copied().map(NodeId).collect()
    }

    #[test]
    fn a_change_governs_from_its_slot_plus_the_window() {
        let mut m = Membership::genesis(&ids(&[3, 1, 2]));
        assert_eq!(m.members_at(1), ids(&[1, 2, 3]).as_slice());
        m.record(10, &ids(&[1, 2, 4]), 4);
        assert_eq!(m.members_at(13), ids(&[1, 2, 3]).as_slice());
        assert_eq!(m.members_at(14), ids(&[1, 2, 4]).as_slice());
        assert_eq!(majority(m.members_at(14)), 2);
        assert!(m.changes_after(13));
        assert!(!m.changes_after(14));
        assert_eq!(
            m.runs(12, 20),
            vec![(12, &ids(&[1, 2, 3])[..]), (14, &ids(&[1, 2, 4])[..])]
        );
    }

    #[test]
    fn a_snapshot_carries_what_governs_after_it_and_no_later_change() {
        let mut m = Membership::genesis(&ids(&[1, 2, 3]));
        m.record(10, &ids(&[1, 2, 4]), 4);
        m.record(20, &ids(&[1, 4, 5]), 4);
        let at_12 = m.as_of(12, 4);
        assert_eq!(at_12.members_at(13), ids(&[1, 2, 3]).as_slice());
        assert_eq!(at_12.members_at(100), ids(&[1, 2, 4]).as_slice());
        let at_30 = m.as_of(30, 4);
        assert_eq!(at_30.iter().count(), 1);
        assert_eq!(at_30.members_at(31), ids(&[1, 4, 5]).as_slice());
        m.forget_before(16);
        assert_eq!(m.iter().count(), 2);
        assert_eq!(m.members_at(16), ids(&[1, 2, 4]).as_slice());
    }

    #[test]
    fn bad_member_sets_are_refused() {
        assert!(validate_members(&[]).is_err());
        assert!(validate_members(&ids(&[1, 1])).is_err());
        assert!(validate_members(&ids(&[0, 1])).is_err());
        assert!(validate_members(&ids(&(1..=16).collect::<Vec<_>>())).is_err());
        assert!(validate_members(&ids(&[1, 2, 3])).is_ok());
    }
}
