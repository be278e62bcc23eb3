//! What a configuration is: [`Configuration`], [`Shard`], and the rule that
//! pre-splits the initial configuration.
//!
//! A configuration has a number `num` (0 is the initial one, each change
//! adds one), the groups (`gid -> replica addresses`) and the shards: ordered,
//! half-open key ranges `[start, end)` that together cover the whole key
//! space, each owned by one group (or by none while no group has joined).
//! Keys are byte strings ordered lexicographically; the first shard starts
//! at the empty key and `end: None` means the end of the key space. This is
//! the value `kvctl admin config` prints and the value every replica group
//! and clerk reads to route a key.
//!
//! # Pre-split rule
//!
//! `kvctl cluster init --shards N` creates configuration 0 with N shards
//! (1 ≤ N ≤ [`MAX_INITIAL_SHARDS`]) so a
//! fresh cluster spreads typical keys without any manual split. The
//! boundaries divide printable ASCII (the 95 bytes `0x20 ' '` to `0x7e '~'`)
//! evenly:
//!
//! * `d` = 1 digit if N ≤ 95, else 2 digits; the boundary space has
//!   `95^d` points (95 or 9,025).
//! * boundary `i` (for `i` in `1..N`) is the point `v = floor(i × 95^d / N)`
//!   written as `d` base-95 digits, most significant first, each digit `x`
//!   stored as the byte `0x20 + x`.
//!
//! Shard `i` (id `i`) is `[boundary i, boundary i+1)`, with boundary 0 the
//! empty key and boundary N the end of the key space. Because every boundary
//! has the same length `d`, byte order equals numeric order, and because
//! `95^d / N ≥ 1`, consecutive points differ by at least one: boundaries are
//! strictly increasing and all above the empty key. With N = 8, for
//! example, the boundaries are `+ 7 C O [ g s`, so keys starting with a
//! digit fall in shards 1-2, upper case in 3-5, lower case in 5-7. Keys
//! that share a long prefix (`user:…`) still land in one shard: that is what
//! [`Split`](crate::ControllerOp::Split) is for.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ControllerError;
use crate::limits::MAX_INITIAL_SHARDS;

/// The number of a configuration: 0 is the initial one, each change adds one.
pub type ConfigNum = u64;

/// Identifies a replica group. Never 0 (reserved).
pub type Gid = u64;

/// Identifies a shard. Shard ids are never reused: a split gives the new
/// upper half a fresh id and the lower half keeps the old one.
pub type ShardId = u64;

/// First byte of the pre-split alphabet (`' '`).
pub const PRESPLIT_FIRST_BYTE: u8 = 0x20;

/// Number of bytes in the pre-split alphabet (`0x20..=0x7e`).
pub const PRESPLIT_RADIX: u32 = 95;

/// A half-open key range `[start, end)` and the group that serves it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shard {
    /// The shard's id, unique over the whole history.
    pub id: ShardId,
    /// First key of the range (inclusive).
    pub start: Vec<u8>,
    /// End of the range (exclusive); `None` is the end of the key space.
    pub end: Option<Vec<u8>>,
    /// The group that serves the shard; `None` while no group has joined
    /// (or after every group left).
    pub gid: Option<Gid>,
}

impl Shard {
    /// Whether `key` falls in `[start, end)`.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.start.as_slice() <= key && self.end.as_deref().is_none_or(|end| key < end)
    }
}

/// One numbered configuration: groups and the shards they serve.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Configuration {
    /// The configuration's number.
    pub num: ConfigNum,
    /// Every group of this configuration and its replica addresses.
    pub groups: BTreeMap<Gid, Vec<String>>,
    /// The shards in key order; they cover the whole key space.
    pub shards: Vec<Shard>,
}

impl Configuration {
    /// The shard whose range contains `key`. `None` only for a
    /// configuration that breaks the invariants (see [`Self::check`]).
    pub fn shard_for_key(&self, key: &[u8]) -> Option<&Shard> {
        // Shards are sorted by start and the first starts at the empty key,
        // so the containing shard is the last one starting at or below key.
        let after = self
            .shards
            .partition_point(|shard| shard.start.as_slice() <= key);
        self.shards.get(after.checked_sub(1)?)
    }

    /// The group serving `key`, if any.
    pub fn gid_for_key(&self, key: &[u8]) -> Option<Gid> {
        self.shard_for_key(key).and_then(|shard| shard.gid)
    }

    /// The shard with id `id`, if it is in this configuration.
    pub fn shard(&self, id: ShardId) -> Option<&Shard> {
        self.shards.iter().find(|shard| shard.id == id)
    }

    /// How many shards each group serves (groups serving none included).
    pub fn shard_counts(&self) -> BTreeMap<Gid, usize> {
        let mut counts: BTreeMap<Gid, usize> = self.groups.keys().map(|&gid| (gid, 0)).collect();
        for gid in self.shards.iter().filter_map(|shard| shard.gid) {
            *counts.entry(gid).or_insert(0) += 1;
        }
        counts
    }

    /// Checks the invariants every configuration the controller produces
    /// holds; the text says which one broke.
    ///
    /// * at least one shard; the first starts at the empty key, each ends
    ///   where the next starts, the last ends at the end of the key space,
    ///   starts strictly increase;
    /// * shard ids are unique;
    /// * gid 0 is not a group; every group has at least one address;
    /// * with no group every shard is unowned, otherwise every shard is
    ///   owned by a group of this configuration.
    pub fn check(&self) -> Result<(), String> {
        let first = self.shards.first().ok_or("a configuration has no shard")?;
        if !first.start.is_empty() {
            return Err("the first shard does not start at the empty key".to_string());
        }
        let mut ids = std::collections::BTreeSet::new();
        for (i, shard) in self.shards.iter().enumerate() {
            if !ids.insert(shard.id) {
                return Err(format!("shard id {} appears twice", shard.id));
            }
            match self.shards.get(i + 1) {
                Some(next) => {
                    if shard.end.as_ref() != Some(&next.start) {
                        return Err(format!(
                            "shard {} does not end where the next starts",
                            shard.id
                        ));
                    }
                    if next.start <= shard.start {
                        return Err(format!(
                            "shard {} does not start after shard {}",
                            next.id, shard.id
                        ));
                    }
                }
                None => {
                    if shard.end.is_some() {
                        return Err(
                            "the last shard does not reach the end of the key space".to_string()
                        );
                    }
                }
            }
            match shard.gid {
                None if !self.groups.is_empty() => {
                    return Err(format!(
                        "shard {} is unowned although groups exist",
                        shard.id
                    ));
                }
                Some(gid) if !self.groups.contains_key(&gid) => {
                    return Err(format!(
                        "shard {} is owned by unknown group {gid}",
                        shard.id
                    ));
                }
                _ => {}
            }
        }
        if self.groups.contains_key(&0) {
            return Err("gid 0 is reserved".to_string());
        }
        if let Some((gid, _)) = self
            .groups
            .iter()
            .find(|(_, addresses)| addresses.is_empty())
        {
            return Err(format!("group {gid} has no address"));
        }
        Ok(())
    }
}

/// The `shards - 1` boundaries of the pre-split rule (see the module docs),
/// strictly increasing and all non-empty.
pub fn presplit_boundaries(shards: u32) -> Result<Vec<Vec<u8>>, ControllerError> {
    if !(1..=MAX_INITIAL_SHARDS).contains(&shards) {
        return Err(ControllerError::InvalidInitialShards {
            count: shards,
            max: MAX_INITIAL_SHARDS,
        });
    }
    let (digits, points) = if shards <= PRESPLIT_RADIX {
        (1, PRESPLIT_RADIX)
    } else {
        (2, PRESPLIT_RADIX * PRESPLIT_RADIX)
    };
    let boundaries = (1..shards)
        .map(|i| {
            // i < shards ≤ 1024 and points ≤ 9,025: the product fits in u32.
            let mut point = i * points / shards;
            let mut key = vec![PRESPLIT_FIRST_BYTE; digits];
            for byte in key.iter_mut().rev() {
                let digit = u8::try_from(point % PRESPLIT_RADIX).unwrap_or(0);
                *byte = PRESPLIT_FIRST_BYTE + digit;
                point /= PRESPLIT_RADIX;
            }
            key
        })
        .collect();
    Ok(boundaries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eight_shards_use_the_documented_boundaries() {
        let boundaries = presplit_boundaries(8).unwrap();
        let text: Vec<&str> = boundaries
            .iter()
            .map(|b| std::str::from_utf8(b).unwrap())
            .collect();
        assert_eq!(text, ["+", "7", "C", "O", "[", "g", "s"]);
    }

    #[test]
    fn past_95_shards_boundaries_take_two_bytes() {
        let boundaries = presplit_boundaries(96).unwrap();
        assert!(boundaries.iter().all(|b| b.len() == 2));
        assert_eq!(boundaries[0], vec![0x20, 0x20 + 94]);
    }

    #[test]
    fn shard_counts_outside_the_range_are_refused() {
        for count in [0, MAX_INITIAL_SHARDS + 1, u32::MAX] {
            assert_eq!(
                presplit_boundaries(count),
                Err(ControllerError::InvalidInitialShards {
                    count,
                    max: MAX_INITIAL_SHARDS
                })
            );
        }
    }
}
