//! Who serves which shard after a Join or a Leave: [`rebalance`].
//!
//! A pure function from the shard owners before the change, the groups after
//! it and the groups that just joined, to the owners after it. It is
//! deterministic (only `BTreeMap`/`BTreeSet` iteration and explicit sorts
//! with total orders), balanced (counts per group differ by at most one) and
//! moves as few shards as possible. Move and Split never call it.
//!
//! # Algorithm
//!
//! With `S` shards and `n` groups after the change, let `q = S / n` and
//! `r = S % n`: every balanced assignment gives `q + 1` shards to `r` groups
//! (they hold a *ceil slot*) and `q` to the others. Write `c_g` for the
//! shards group `g` holds now and `t_g` for its target. A shard is an
//! *orphan* if it is unowned or owned by a group that is not in the new
//! configuration (it left).
//!
//! 1. **Targets.** Group `g` can keep at most `min(c_g, t_g)` of its shards,
//!    so at least `S − Σ min(c_g, t_g)` shards change owner. A ceil slot
//!    raises that sum by one exactly when it goes to a *loaded* group
//!    (`c_g > q`), so the ceil slots go first to loaded groups (by count
//!    descending, then gid). Ceil slots left over change no count of moves;
//!    they go to joining groups next (by gid), then to the other surviving
//!    groups (by count descending, then gid), because a joining group's
//!    extra slot can absorb a surviving group's surplus, whereas a surviving
//!    group's extra slot may have to be filled from another survivor.
//! 2. **Sources.** Orphans (by shard id ascending), then the surplus
//!    `c_g − t_g` of each group above its target (groups by gid; a group
//!    keeps its lowest shard ids and gives away its highest, i.e. the most
//!    recently split-off ones).
//! 3. **Sinks.** Groups below their target, each receiving `t_g − c_g`.
//!    Orphans fill surviving groups first (by gid), then joining groups;
//!    surpluses fill joining groups first, then surviving groups.
//!
//! Every group ends at its target, each shard changes owner at most once,
//! and exactly `min(c_g, t_g)` shards stay with each group, so the number of
//! moves is the lower bound of step 1: **minimal**. Among minimal solutions
//! it also minimises moves between two surviving groups: with surviving
//! surplus `SS`, orphans `O`, surviving deficit `SD` and joining demand `ND`
//! (so `SS + O = SD + ND`), at least `max(0, SS − ND)` surplus shards must go
//! to a survivor whatever the routing, and routing orphans to survivors
//! first achieves exactly that.
//!
//! # Balanced before, no moves between survivors
//!
//! If before the change every shard was owned and the counts of the groups
//! then present differed by at most one (or there was no group), then no
//! shard moves between two groups present both before and after:
//!
//! * **Join** (`m ≥ 1` groups at `q0` or `q0 + 1`, `r0` of them at `q0 + 1`,
//!   `k ≥ 1` joining): `q ≤ q0`. If `q < q0` every old group is loaded, so
//!   its target `≤ q + 1 ≤ c_g`. If `q = q0` then `r = r0 − k·q0 ≤ r0`, so
//!   the ceil slots all go to the `r0` loaded groups and the others keep
//!   `t_g = q0 = c_g`. Either way no old group is below its target: every
//!   move goes to a joining group.
//! * **Leave** (the `m'` remaining groups at `q0` or `q0 + 1`, `h` of them at
//!   `q0 + 1`): `q ≥ q0`. If `q > q0` no group exceeds `q`. If `q = q0`,
//!   `S ≥ m'·q0 + h` gives `r ≥ h`, so every loaded group gets a ceil slot
//!   and `t_g = c_g`. Either way no remaining group is above its target:
//!   every move comes from a leaving group.
//!
//! Without that precondition (after a Move, or Splits that piled shards on
//! one group) balancing may *require* a move between survivors: groups A
//! with 5 shards, B with 1 and C with 1, then C leaves; 7 shards on two
//! groups means 4 and 3, so B must gain two, and C has only one to give.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use crate::config::{Gid, ShardId};

/// The owners after a Join or Leave: every shard of `owners` (keyed by shard
/// id) mapped to a group of `groups`, or to `None` for every shard if
/// `groups` is empty. `joined` names the groups that just joined (a subset
/// of `groups`; other gids in it are ignored). See the module docs for the
/// algorithm and why it is minimal.
pub fn rebalance(
    owners: &BTreeMap<ShardId, Option<Gid>>,
    groups: &BTreeSet<Gid>,
    joined: &BTreeSet<Gid>,
) -> BTreeMap<ShardId, Option<Gid>> {
    let mut result = owners.clone();
    if groups.is_empty() {
        result.values_mut().for_each(|owner| *owner = None);
        return result;
    }
    let floor = owners.len() / groups.len();
    let ceil_slots = owners.len() % groups.len();

    // Each group's shards, ascending by id; orphans ascending by id.
    let mut held: BTreeMap<Gid, Vec<ShardId>> =
        groups.iter().map(|&gid| (gid, Vec::new())).collect();
    let mut orphans = Vec::new();
    for (&id, owner) in owners {
        match owner.and_then(|gid| held.get_mut(&gid)) {
            Some(shards) => shards.push(id),
            None => orphans.push(id),
        }
    }

    // Step 1: targets.
    let mut ranked: Vec<(Gid, usize)> = held
        .iter()
        .map(|(&gid, shards)| (gid, shards.len()))
        .collect();
    ranked.sort_by_key(|&(gid, count)| {
        let class = if count > floor {
            0
        } else if joined.contains(&gid) {
            1
        } else {
            2
        };
        (class, Reverse(count), gid)
    });
    let targets: BTreeMap<Gid, usize> = ranked
        .iter()
        .enumerate()
        .map(|(rank, &(gid, _))| (gid, floor + usize::from(rank < ceil_slots)))
        .collect();

    // Steps 2 and 3: sources and sinks, in gid order.
    let mut surplus = Vec::new();
    let mut surviving_sinks = Sinks::default();
    let mut joining_sinks = Sinks::default();
    for (gid, shards) in &held {
        let target = targets.get(gid).copied().unwrap_or(floor);
        if shards.len() > target {
            surplus.extend(shards.iter().rev().take(shards.len() - target));
        } else if shards.len() < target {
            let sinks = if joined.contains(gid) {
                &mut joining_sinks
            } else {
                &mut surviving_sinks
            };
            sinks.slots.push((*gid, target - shards.len()));
        }
    }
    for id in orphans {
        let gid = surviving_sinks.take().or_else(|| joining_sinks.take());
        debug_assert!(gid.is_some(), "deficits cover orphans and surpluses");
        result.insert(id, gid);
    }
    for id in surplus {
        if let Some(gid) = joining_sinks.take().or_else(|| surviving_sinks.take()) {
            result.insert(id, Some(gid));
        } else {
            debug_assert!(false, "deficits cover orphans and surpluses");
        }
    }
    result
}

/// Groups below their target, filled in order.
#[derive(Default)]
struct Sinks {
    /// `(gid, shards still wanted)`, in gid order.
    slots: Vec<(Gid, usize)>,
    /// First slot that may still want a shard.
    next: usize,
}

impl Sinks {
    /// The next group that still wants a shard, counting the shard given.
    fn take(&mut self) -> Option<Gid> {
        while let Some((gid, wanted)) = self.slots.get_mut(self.next) {
            if *wanted > 0 {
                *wanted -= 1;
                return Some(*gid);
            }
            self.next += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owners(list: &[Option<Gid>]) -> BTreeMap<ShardId, Option<Gid>> {
        (0..).zip(list.iter().copied()).collect()
    }

    fn set(gids: &[Gid]) -> BTreeSet<Gid> {
        gids.iter().copied().collect()
    }

    #[test]
    fn first_join_of_two_groups_gives_contiguous_halves() {
        let after = rebalance(&owners(&[None; 4]), &set(&[1, 2]), &set(&[1, 2]));
        assert_eq!(after, owners(&[Some(1), Some(1), Some(2), Some(2)]));
    }

    #[test]
    fn join_takes_the_highest_ids_of_the_loaded_group() {
        let after = rebalance(&owners(&[Some(1); 4]), &set(&[1, 2]), &set(&[2]));
        assert_eq!(after, owners(&[Some(1), Some(1), Some(2), Some(2)]));
    }

    #[test]
    fn leftover_ceil_slots_go_to_joining_groups_before_survivors() {
        // A: 4, B: 1; C joins. 5 shards on 3 groups: one ceil slot besides
        // A's. Giving it to C keeps B untouched (A gives 2 to C), giving it
        // to B would move a shard A -> B for the same number of moves.
        let before = owners(&[Some(1), Some(1), Some(1), Some(1), Some(2)]);
        let after = rebalance(&before, &set(&[1, 2, 3]), &set(&[3]));
        assert_eq!(
            after,
            owners(&[Some(1), Some(1), Some(3), Some(3), Some(2)])
        );
    }

    #[test]
    fn everyone_leaving_unowns_every_shard() {
        let after = rebalance(&owners(&[Some(1), Some(2)]), &set(&[]), &set(&[]));
        assert_eq!(after, owners(&[None, None]));
    }
}
