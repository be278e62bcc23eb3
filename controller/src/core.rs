//! The pure controller: every configuration so far and the operations that
//! create the next one ([`Controller`]).
//!
//! No I/O, no clock, no randomness, no sessions: the same operations in the
//! same order give the same configurations on every replica.
//! [`ControllerStateMachine`](crate::ControllerStateMachine) wraps it with
//! at-most-once sessions and byte encodings for `paxos-log`.
//!
//! # Validation
//!
//! Each operation checks its whole request against the latest configuration
//! before changing anything, and refuses it with a typed
//! [`ControllerError`]; a refused request creates no configuration. Checks
//! run in a fixed order (groups by gid, addresses in the order given) so
//! every replica reports the same error for the same request.
//!
//! # Shard ids
//!
//! Ids are dense: configuration 0 has shards `0..N` in key order and each
//! Split gives its new shard the next id (`N`, `N + 1`, …). A shard's start
//! key never changes (a Split shortens the lower shard's *end* and gives the
//! upper part a new id), and shards never merge. So the shards of any
//! configuration are exactly the ids below its shard count, and their key
//! order is the order of their (immutable) starts.
//!
//! # History and its memory cost
//!
//! Every configuration stays queryable forever (clerks and replica groups
//! walk configurations one number at a time). Thanks to the id rules above
//! a configuration is stored as
//!
//! * its owner per shard id (`Option<Gid>`, 16 bytes per shard), whose
//!   length is also its shard count;
//! * the index of its group table (gid -> addresses), shared by every
//!   configuration between two Joins or Leaves;
//!
//! while every start key is stored once for the whole history, with one
//! key order of all ids. A change (of any kind) thus costs 16 bytes per
//! shard, plus one copy of the group table for a Join or Leave: 1,000
//! changes on 1,024 shards take about 16 MiB. Nothing is ever freed: the
//! count of configurations is bounded only by how often an operator changes
//! the cluster, and the snapshot holds the same data. If that ever matters,
//! storing each configuration as its owner changes against a periodic full
//! checkpoint would make each change cost O(shards moved).
//! [`Controller::query`] builds the flat [`Configuration`] on demand, in
//! O(shards).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::config::{presplit_boundaries, ConfigNum, Configuration, Gid, Shard, ShardId};
use crate::error::ControllerError;
use crate::limits::{
    MAX_ADDRESSES_PER_GROUP, MAX_ADDRESS_BYTES, MAX_GROUPS, MAX_KEY_BYTES, MAX_SHARDS,
};
use crate::rebalance::rebalance;
use crate::wire::{ControllerOp, ControllerReply};

/// One configuration, by reference to the shared parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredConfig {
    /// Index into [`Controller::group_tables`].
    groups: usize,
    /// `owners[id]` serves shard `id`; the configuration's shards are the
    /// ids `0..owners.len()`.
    owners: Vec<Option<Gid>>,
}

/// Every configuration so far, and the operations that add the next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Controller {
    /// `starts[id]` is the first key of shard `id`, fixed when it was made.
    starts: Vec<Vec<u8>>,
    /// Every shard id ever made, ordered by start key: the key order of the
    /// latest configuration, and (filtered to its ids) of any earlier one.
    key_order: Vec<usize>,
    /// Group tables, each shared by consecutive configurations.
    group_tables: Vec<BTreeMap<Gid, Vec<String>>>,
    /// `configs[num]` is configuration `num`; never empty.
    configs: Vec<StoredConfig>,
}

/// The shard id of index `index` (ids are dense indices; `usize` is at most
/// 64 bits on every supported target).
fn shard_id(index: usize) -> ShardId {
    index as ShardId
}

impl Controller {
    /// A controller holding only configuration 0: no groups, and `shards`
    /// unowned shards cut by the pre-split rule (see [`crate::config`]),
    /// with ids `0..shards` in key order.
    pub fn new(shards: u32) -> Result<Self, ControllerError> {
        let mut starts = vec![Vec::new()];
        starts.extend(presplit_boundaries(shards)?);
        let count = starts.len();
        Ok(Controller {
            starts,
            key_order: (0..count).collect(),
            group_tables: vec![BTreeMap::new()],
            configs: vec![StoredConfig {
                groups: 0,
                owners: vec![None; count],
            }],
        })
    }

    /// The number of the latest configuration.
    pub fn latest_num(&self) -> ConfigNum {
        // At most one configuration per applied log slot: fits in u64.
        u64::try_from(self.configs.len() - 1).unwrap_or(u64::MAX)
    }

    /// Configuration `num`, or the latest if `num` is `None` or beyond it.
    pub fn query(&self, num: Option<ConfigNum>) -> Configuration {
        let latest = self.configs.len() - 1;
        let index = num
            .and_then(|num| usize::try_from(num).ok())
            .map_or(latest, |index| index.min(latest));
        self.build(index)
    }

    /// Configuration `num`, if it exists.
    pub fn config(&self, num: ConfigNum) -> Option<Configuration> {
        let index = usize::try_from(num).ok()?;
        (index < self.configs.len()).then(|| self.build(index))
    }

    /// The latest configuration.
    pub fn latest(&self) -> Configuration {
        self.query(None)
    }

    /// Applies `op`: the reply says which configuration it created, or why
    /// it was refused (then nothing changed).
    pub fn apply(&mut self, op: &ControllerOp) -> ControllerReply {
        let result = match op {
            ControllerOp::Join { groups } => self
                .join(groups)
                .map(|num| ControllerReply::Changed { num }),
            ControllerOp::Leave { gids } => {
                self.leave(gids).map(|num| ControllerReply::Changed { num })
            }
            ControllerOp::Move { shard, gid } => self
                .move_shard(*shard, *gid)
                .map(|num| ControllerReply::Changed { num }),
            ControllerOp::Split { key } => self
                .split(key)
                .map(|(num, shard)| ControllerReply::Split { num, shard }),
            ControllerOp::SetAddresses { gid, addresses } => self
                .set_addresses(*gid, addresses)
                .map(|num| ControllerReply::Changed { num }),
        };
        result.unwrap_or_else(ControllerReply::Error)
    }

    /// Adds `groups` (gid -> replica addresses) and rebalances; returns the
    /// new configuration's number.
    pub fn join(
        &mut self,
        groups: &BTreeMap<Gid, Vec<String>>,
    ) -> Result<ConfigNum, ControllerError> {
        if groups.is_empty() {
            return Err(ControllerError::EmptyRequest);
        }
        let current = self.latest_groups();
        for (&gid, addresses) in groups {
            if gid == 0 {
                return Err(ControllerError::ReservedGid);
            }
            if current.contains_key(&gid) {
                return Err(ControllerError::GroupExists { gid });
            }
            check_addresses(gid, addresses)?;
        }
        let count = current.len() + groups.len();
        if count > MAX_GROUPS {
            return Err(ControllerError::TooManyGroups {
                count,
                max: MAX_GROUPS,
            });
        }
        let mut table = current.clone();
        table.extend(
            groups
                .iter()
                .map(|(&gid, addresses)| (gid, addresses.clone())),
        );
        let joined: BTreeSet<Gid> = groups.keys().copied().collect();
        Ok(self.push_rebalanced(table, &joined))
    }

    /// Removes the groups `gids` and gives their shards to the others (or
    /// leaves them unowned if no group remains); returns the new
    /// configuration's number.
    pub fn leave(&mut self, gids: &[Gid]) -> Result<ConfigNum, ControllerError> {
        if gids.is_empty() {
            return Err(ControllerError::EmptyRequest);
        }
        let current = self.latest_groups();
        let mut leaving = BTreeSet::new();
        for &gid in gids {
            if !current.contains_key(&gid) {
                return Err(ControllerError::UnknownGroup { gid });
            }
            if !leaving.insert(gid) {
                return Err(ControllerError::DuplicateGid { gid });
            }
        }
        let mut table = current.clone();
        table.retain(|gid, _| !leaving.contains(gid));
        Ok(self.push_rebalanced(table, &BTreeSet::new()))
    }

    /// Replaces group `gid`'s addresses, keeping every owner; returns the
    /// new configuration's number.
    pub fn set_addresses(
        &mut self,
        gid: Gid,
        addresses: &[String],
    ) -> Result<ConfigNum, ControllerError> {
        if !self.latest_groups().contains_key(&gid) {
            return Err(ControllerError::UnknownGroup { gid });
        }
        check_addresses(gid, addresses)?;
        let mut table = self.latest_groups().clone();
        table.insert(gid, addresses.to_vec());
        let owners = self.latest_stored().owners.clone();
        self.group_tables.push(table);
        self.configs.push(StoredConfig {
            groups: self.group_tables.len() - 1,
            owners,
        });
        Ok(self.latest_num())
    }

    /// Hands shard `shard` to group `gid`, with no rebalance; returns the
    /// new configuration's number.
    pub fn move_shard(&mut self, shard: ShardId, gid: Gid) -> Result<ConfigNum, ControllerError> {
        if !self.latest_groups().contains_key(&gid) {
            return Err(ControllerError::UnknownGroup { gid });
        }
        let mut next = self.latest_stored().clone();
        let owner = usize::try_from(shard)
            .ok()
            .and_then(|index| next.owners.get_mut(index))
            .ok_or(ControllerError::UnknownShard { shard })?;
        *owner = Some(gid);
        self.configs.push(next);
        Ok(self.latest_num())
    }

    /// Splits the shard containing `key` at `key`; the new shard `[key, end)`
    /// gets a fresh id and stays on the same group. Returns the new
    /// configuration's number and the new shard's id.
    pub fn split(&mut self, key: &[u8]) -> Result<(ConfigNum, ShardId), ControllerError> {
        if key.len() > MAX_KEY_BYTES {
            return Err(ControllerError::KeyTooLong {
                len_bytes: key.len(),
                max_bytes: MAX_KEY_BYTES,
            });
        }
        // In the latest configuration every shard ever made exists, so
        // `key_order` is its key order. The first shard starts at the empty
        // key, so `after >= 1`.
        let after = self
            .key_order
            .partition_point(|&index| self.starts[index].as_slice() <= key);
        let containing = self.key_order[after.saturating_sub(1)];
        if self.starts[containing] == key {
            return Err(ControllerError::SplitAtBoundary {
                shard: shard_id(containing),
            });
        }
        if self.starts.len() >= MAX_SHARDS {
            return Err(ControllerError::TooManyShards { max: MAX_SHARDS });
        }
        let mut next = self.latest_stored().clone();
        let new_index = self.starts.len();
        next.owners.push(next.owners[containing]);
        self.starts.push(key.to_vec());
        self.key_order.insert(after, new_index);
        self.configs.push(next);
        Ok((self.latest_num(), shard_id(new_index)))
    }

    /// Checks every invariant of a well-formed controller (each
    /// configuration per [`Configuration::check`], dense ids in key order,
    /// shard counts that never shrink, limits); used on a decoded snapshot
    /// before trusting it.
    pub fn check(&self) -> Result<(), String> {
        if self.configs.is_empty() {
            return Err("no configuration".to_string());
        }
        if self.starts.len() > MAX_SHARDS {
            return Err("more shards than the limit".to_string());
        }
        let mut seen = vec![false; self.starts.len()];
        for &index in &self.key_order {
            match seen.get_mut(index) {
                Some(seen) if !*seen => *seen = true,
                _ => {
                    return Err(format!(
                        "shard {index} is missing or repeated in the key order"
                    ))
                }
            }
        }
        if seen.iter().any(|seen| !seen) {
            return Err("a shard is missing from the key order".to_string());
        }
        let ordered = self
            .key_order
            .windows(2)
            .all(|pair| self.starts[pair[0]] < self.starts[pair[1]]);
        if !ordered {
            return Err("shard starts are not strictly increasing in key order".to_string());
        }
        let mut shard_count = 0;
        for (index, stored) in self.configs.iter().enumerate() {
            let groups = self.group_tables.get(stored.groups).ok_or_else(|| {
                format!("configuration {index}: no group table {}", stored.groups)
            })?;
            if stored.owners.len() < shard_count || stored.owners.len() > self.starts.len() {
                return Err(format!("configuration {index}: impossible shard count"));
            }
            shard_count = stored.owners.len();
            if groups.len() > MAX_GROUPS {
                return Err(format!("configuration {index}: too many groups"));
            }
            self.build(index)
                .check()
                .map_err(|err| format!("configuration {index}: {err}"))?;
        }
        if shard_count != self.starts.len() {
            return Err("the latest configuration lacks shards".to_string());
        }
        Ok(())
    }

    /// The latest stored configuration.
    fn latest_stored(&self) -> &StoredConfig {
        self.configs
            .last()
            .expect("a controller always holds configuration 0")
    }

    /// The latest configuration's groups.
    fn latest_groups(&self) -> &BTreeMap<Gid, Vec<String>> {
        &self.group_tables[self.latest_stored().groups]
    }

    /// Pushes the configuration with groups `table` and the latest owners
    /// rebalanced; returns its number.
    fn push_rebalanced(
        &mut self,
        table: BTreeMap<Gid, Vec<String>>,
        joined: &BTreeSet<Gid>,
    ) -> ConfigNum {
        let latest = self.latest_stored();
        let before: BTreeMap<ShardId, Option<Gid>> = latest
            .owners
            .iter()
            .enumerate()
            .map(|(index, &owner)| (shard_id(index), owner))
            .collect();
        let gids: BTreeSet<Gid> = table.keys().copied().collect();
        // Keyed by the dense ids 0..len, so values come back in id order.
        let owners = rebalance(&before, &gids, joined).into_values().collect();
        self.group_tables.push(table);
        self.configs.push(StoredConfig {
            groups: self.group_tables.len() - 1,
            owners,
        });
        self.latest_num()
    }

    /// Materialises configuration `index` (which must exist).
    fn build(&self, index: usize) -> Configuration {
        let stored = &self.configs[index];
        let count = stored.owners.len();
        let present: Vec<usize> = self
            .key_order
            .iter()
            .copied()
            .filter(|&id| id < count)
            .collect();
        let shards = present
            .iter()
            .enumerate()
            .map(|(position, &id)| Shard {
                id: shard_id(id),
                start: self.starts[id].clone(),
                end: present
                    .get(position + 1)
                    .map(|&next| self.starts[next].clone()),
                gid: stored.owners[id],
            })
            .collect();
        Configuration {
            num: u64::try_from(index).unwrap_or(u64::MAX),
            groups: self.group_tables[stored.groups].clone(),
            shards,
        }
    }
}

/// Checks one joining group's addresses against the limits.
fn check_addresses(gid: Gid, addresses: &[String]) -> Result<(), ControllerError> {
    if addresses.is_empty() {
        return Err(ControllerError::NoAddresses { gid });
    }
    if addresses.len() > MAX_ADDRESSES_PER_GROUP {
        return Err(ControllerError::TooManyAddresses {
            gid,
            count: addresses.len(),
            max: MAX_ADDRESSES_PER_GROUP,
        });
    }
    let mut seen = BTreeSet::new();
    for address in addresses {
        if address.is_empty() {
            return Err(ControllerError::EmptyAddress { gid });
        }
        if address.len() > MAX_ADDRESS_BYTES {
            return Err(ControllerError::AddressTooLong {
                gid,
                len_bytes: address.len(),
                max_bytes: MAX_ADDRESS_BYTES,
            });
        }
        if !seen.insert(address.as_str()) {
            return Err(ControllerError::DuplicateAddress {
                gid,
                address: address.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
impl Controller {
    /// Overwrites one owner, bypassing every check, to build broken states.
    pub(crate) fn set_owner_for_tests(&mut self, num: usize, shard: usize, gid: Option<Gid>) {
        self.configs[num].owners[shard] = gid;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A controller whose configuration 0 has `shards` unowned shards with
    /// 4-byte big-endian start keys (building it by splits would take a
    /// configuration per split).
    fn with_shards(shards: usize) -> Controller {
        let starts = (0..u32::try_from(shards).unwrap())
            .map(|i| {
                if i == 0 {
                    Vec::new()
                } else {
                    i.to_be_bytes().to_vec()
                }
            })
            .collect();
        Controller {
            starts,
            key_order: (0..shards).collect(),
            group_tables: vec![BTreeMap::new()],
            configs: vec![StoredConfig {
                groups: 0,
                owners: vec![None; shards],
            }],
        }
    }

    #[test]
    fn split_stops_at_max_shards() {
        let mut full = with_shards(MAX_SHARDS);
        full.check().unwrap();
        assert_eq!(
            full.split(b"\xff"),
            Err(ControllerError::TooManyShards { max: MAX_SHARDS })
        );
        assert_eq!(full.latest_num(), 0);

        let mut almost = with_shards(MAX_SHARDS - 1);
        assert_eq!(almost.split(b"\xff"), Ok((1, MAX_SHARDS as u64 - 1)));
        assert_eq!(almost.latest().shards.len(), MAX_SHARDS);
        almost.check().unwrap();
    }

    #[test]
    fn check_finds_broken_invariants() {
        let mut broken = with_shards(3);
        broken.configs[0].owners[1] = Some(5);
        assert!(broken.check().unwrap_err().contains("unknown group 5"));

        let mut broken = with_shards(3);
        broken.key_order.swap(1, 2);
        assert!(broken.check().unwrap_err().contains("strictly increasing"));

        let mut broken = with_shards(3);
        broken.key_order[2] = 1;
        assert!(broken.check().unwrap_err().contains("repeated"));

        let mut broken = with_shards(3);
        broken.starts.push(b"\xff".to_vec());
        broken.key_order.push(3);
        assert!(broken.check().unwrap_err().contains("lacks shards"));

        let mut broken = with_shards(3);
        broken.configs[0].groups = 4;
        assert!(broken.check().unwrap_err().contains("no group table"));

        let mut broken = with_shards(3);
        broken.configs.clear();
        assert!(broken.check().unwrap_err().contains("no configuration"));

        let mut broken = with_shards(0);
        broken.configs.clear();
        assert!(broken.check().is_err());
    }

    #[test]
    fn configurations_share_keys_and_group_tables() {
        let mut controller = Controller::new(4).unwrap();
        controller
            .join(&BTreeMap::from([(1, vec!["a:1".to_string()])]))
            .unwrap();
        controller.move_shard(0, 1).unwrap();
        controller.split(b"m").unwrap();
        assert_eq!(controller.configs.len(), 4);
        assert_eq!(controller.starts.len(), 5, "each start key stored once");
        assert_eq!(
            controller.group_tables.len(),
            2,
            "only the join copied the groups"
        );
        // Configuration 2 (before the split) still has 4 shards, the last
        // (id 3, from "g") reaching the end of the key space.
        let before_split = controller.config(2).unwrap();
        assert_eq!(before_split.shards.len(), 4);
        assert_eq!(before_split.shard(3).unwrap().end, None);
        let after_split = controller.config(3).unwrap();
        assert_eq!(after_split.shard(3).unwrap().end, Some(b"m".to_vec()));
        assert_eq!(after_split.shard(4).unwrap().start, b"m".to_vec());
    }
}
