//! What a replica group knows about its shards: [`GroupState`], and the pure
//! rule that moves it from one configuration to the next ([`plan`]).
//!
//! Every shard the group holds is in one of three states:
//!
//! ```text
//!            gained from nobody / split off a serving shard
//!   (none) ─────────────────────────────────────────────► Serving
//!     │ gained from group h                                 ▲   │ lost
//!     ▼                                                     │   ▼
//!   Pulling ── last chunk installed (then GC notice) ───────┘ Frozen ── new owner confirms ──► (none)
//! ```
//!
//! * `Serving`: clients read and write it. It may carry a GC notice: the
//!   previous owner still holds a frozen copy and must be told to delete it.
//! * `Pulling`: gained in this configuration from another group; its data
//!   arrives in chunks through the log. Clients get `WrongGroup` until the
//!   last chunk is installed; other shards serve meanwhile.
//! * `Frozen`: lost in configuration `num`; kept, unchanging, for the new
//!   owner to pull, and deleted once the new owner confirms it has it.
//!
//! The group installs configuration `n + 1` only when no shard is `Pulling`,
//! so each change is finished before the next starts, and every replica
//! decides that at the same place in the log. A shard is served by at most one
//! group at any moment: the old owner stops serving it at the log position of
//! the configuration that takes it away, and the new owner starts only after
//! installing data pulled from that frozen copy.

use std::collections::BTreeMap;

use controller::{ConfigNum, Configuration, Gid, Shard, ShardId};
use serde::{Deserialize, Serialize};

use crate::wire::Cursor;

/// The previous owner of a gained shard, to be told to delete its copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcNotice {
    /// The previous owner.
    pub from: Gid,
    /// Its replicas' client addresses, as the configuration before the
    /// change listed them.
    pub addrs: Vec<String>,
}

/// The state of one shard this group holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardState {
    /// Clients are served.
    Serving {
        /// The previous owner still holds a copy to delete.
        gc: Option<GcNotice>,
    },
    /// Arriving from group `from`.
    Pulling {
        /// The previous owner.
        from: Gid,
        /// Its replicas' client addresses.
        addrs: Vec<String>,
        /// The last record installed so far.
        after: Option<Cursor>,
        /// Records installed so far.
        records: u64,
        /// Key and value bytes installed so far.
        bytes: u64,
    },
    /// Lost; kept for the new owner to pull.
    Frozen {
        /// The new owner (`None` when every group left).
        to: Option<Gid>,
    },
}

/// One shard this group holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// The configuration in which the shard entered its state (gained or
    /// lost); for a shard that never moved, the one that first gave it.
    pub num: ConfigNum,
    /// Its state.
    pub state: ShardState,
}

/// Everything group-wide: the configuration the group is in and the state
/// of every shard it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// This group.
    pub gid: Gid,
    /// The configuration installed (0: none yet; every shard unowned).
    pub num: ConfigNum,
    /// Configuration `num` (`None` while `num` is 0).
    pub config: Option<Configuration>,
    /// Every shard the group holds, by id.
    pub shards: BTreeMap<ShardId, ShardEntry>,
    /// Previous owners still to be told to delete their copy of a shard
    /// this group gained (in the configuration of the key) and lost again
    /// before they confirmed. Served shards keep theirs in
    /// [`ShardState::Serving`].
    #[serde(default)]
    pub gc_pending: BTreeMap<(ShardId, ConfigNum), GcNotice>,
}

impl GroupState {
    /// A group that has installed no configuration.
    pub fn new(gid: Gid) -> GroupState {
        GroupState {
            gid,
            num: 0,
            config: None,
            shards: BTreeMap::new(),
            gc_pending: BTreeMap::new(),
        }
    }

    /// The shard of the installed configuration containing `key`.
    pub fn shard_for_key(&self, key: &[u8]) -> Option<&Shard> {
        self.config.as_ref()?.shard_for_key(key)
    }

    /// Whether clients may use shard `shard` now.
    pub fn serves(&self, shard: ShardId) -> bool {
        matches!(
            self.shards.get(&shard),
            Some(ShardEntry {
                state: ShardState::Serving { .. },
                ..
            })
        )
    }

    /// Whether some shard is still arriving.
    pub fn pulling(&self) -> bool {
        self.shards
            .values()
            .any(|entry| matches!(entry.state, ShardState::Pulling { .. }))
    }
}

/// What installing the next configuration does to one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Gained from nobody: starts serving, empty.
    Serve {
        /// The shard.
        shard: ShardId,
    },
    /// Gained from another group: its old local copy (if any) is dropped
    /// and it starts arriving.
    Pull {
        /// The shard.
        shard: ShardId,
        /// The previous owner.
        from: Gid,
        /// Its replicas' client addresses.
        addrs: Vec<String>,
    },
    /// Lost: frozen until the new owner has it.
    Freeze {
        /// The shard.
        shard: ShardId,
        /// The new owner.
        to: Option<Gid>,
    },
    /// Split off a shard this group serves: the keys from `at` on (and a
    /// copy of the sessions) move from `parent` into the new shard `child`,
    /// which serves at once. No data crosses the network.
    Split {
        /// The shard split.
        parent: ShardId,
        /// The new upper shard.
        child: ShardId,
        /// Its first key.
        at: Vec<u8>,
    },
}

/// The changes installing `next` makes to `state`, in the order they must
/// be applied; an error (naming the rule) if `next` cannot be installed now.
pub fn plan(state: &GroupState, next: &Configuration) -> Result<Vec<Change>, String> {
    if next.num != state.num + 1 {
        return Err(format!(
            "configuration {} is not the next one after {}",
            next.num, state.num
        ));
    }
    if state.pulling() {
        return Err(format!(
            "configuration {} still has shards arriving",
            state.num
        ));
    }
    next.check()
        .map_err(|err| format!("configuration {} is invalid: {err}", next.num))?;
    if let Some(shard) = next
        .shards
        .iter()
        .find(|shard| shard.id >= crate::DURABLE_TREE)
    {
        return Err(format!("shard id {} is reserved", shard.id));
    }
    let gid = state.gid;
    let mut changes = Vec::new();
    for shard in &next.shards {
        // Where the shard was: itself, or (split) the shard it came from.
        let (before, parent) = match state.config.as_ref() {
            None => (None, None),
            Some(prev) => match prev.shard(shard.id) {
                Some(before) => (Some(before), None),
                None => (
                    prev.shard_for_key(&shard.start),
                    prev.shard_for_key(&shard.start),
                ),
            },
        };
        let was_ours = before.and_then(|before| before.gid) == Some(gid);
        let is_ours = shard.gid == Some(gid);
        match (parent, was_ours, is_ours) {
            (Some(parent), true, true) => {
                // The controller splits without moving: the parent is
                // ours and serving (nothing is pulling), so is the child.
                changes.push(Change::Split {
                    parent: parent.id,
                    child: shard.id,
                    at: shard.start.clone(),
                });
            }
            (Some(_), _, _) => {
                // Split of a shard another group serves (or a split that
                // also moved, which the controller never makes: the new
                // owner then pulls the parent's range from the old one).
                if is_ours {
                    changes.push(gained(state, next, shard.id, before.and_then(|b| b.gid))?);
                }
            }
            (None, true, true) => {}
            (None, true, false) => changes.push(Change::Freeze {
                shard: shard.id,
                to: shard.gid,
            }),
            (None, false, true) => {
                changes.push(gained(state, next, shard.id, before.and_then(|b| b.gid))?)
            }
            (None, false, false) => {}
        }
    }
    Ok(changes)
}

/// The change for a shard gained from `from` (`None`: nobody).
fn gained(
    state: &GroupState,
    next: &Configuration,
    shard: ShardId,
    from: Option<Gid>,
) -> Result<Change, String> {
    let Some(from) = from else {
        return Ok(Change::Serve { shard });
    };
    let addrs = state
        .config
        .as_ref()
        .and_then(|prev| prev.groups.get(&from))
        .cloned()
        .ok_or_else(|| {
            format!(
                "configuration {} gives shard {shard} from group {from}, which configuration {} \
                 does not list",
                next.num, state.num
            )
        })?;
    Ok(Change::Pull { shard, from, addrs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(num: ConfigNum, owners: &[(ShardId, &str, Option<Gid>)]) -> Configuration {
        let mut shards: Vec<Shard> = owners
            .iter()
            .map(|&(id, start, gid)| Shard {
                id,
                start: start.as_bytes().to_vec(),
                end: None,
                gid,
            })
            .collect();
        for i in 1..shards.len() {
            shards[i - 1].end = Some(shards[i].start.clone());
        }
        let groups = owners
            .iter()
            .filter_map(|&(_, _, gid)| gid)
            .map(|gid| (gid, vec![format!("127.0.0.1:{}", 7000 + gid)]))
            .collect();
        Configuration {
            num,
            groups,
            shards,
        }
    }

    fn installed(gid: Gid, config: Configuration, changes: &[Change]) -> GroupState {
        let mut state = GroupState::new(gid);
        state.num = config.num;
        for change in changes {
            if let Change::Serve { shard } = change {
                state.shards.insert(
                    *shard,
                    ShardEntry {
                        num: config.num,
                        state: ShardState::Serving { gc: None },
                    },
                );
            }
        }
        state.config = Some(config);
        state
    }

    #[test]
    fn first_configuration_serves_what_it_gives_at_once() {
        let next = config(1, &[(0, "", Some(1)), (1, "m", Some(2))]);
        let changes = plan(&GroupState::new(1), &next).unwrap();
        assert_eq!(changes, vec![Change::Serve { shard: 0 }]);
    }

    #[test]
    fn moves_pull_freeze_and_split_locally() {
        let first = config(1, &[(0, "", Some(1)), (1, "m", Some(1))]);
        let changes = plan(&GroupState::new(1), &first).unwrap();
        let state = installed(1, first, &changes);

        // Shard 1 moves to group 2: group 1 freezes it.
        let moved = config(2, &[(0, "", Some(1)), (1, "m", Some(2))]);
        assert_eq!(
            plan(&state, &moved).unwrap(),
            vec![Change::Freeze {
                shard: 1,
                to: Some(2)
            }]
        );
        // Group 2 (had nothing) pulls it from group 1.
        let mut other = state.clone();
        other.gid = 2;
        other.shards.clear();
        assert_eq!(
            plan(&other, &moved).unwrap(),
            vec![Change::Pull {
                shard: 1,
                from: 1,
                addrs: vec!["127.0.0.1:7001".to_string()]
            }]
        );

        // A split of shard 0 at "f" stays local.
        let split = config(2, &[(0, "", Some(1)), (2, "f", Some(1)), (1, "m", Some(1))]);
        assert_eq!(
            plan(&state, &split).unwrap(),
            vec![Change::Split {
                parent: 0,
                child: 2,
                at: b"f".to_vec()
            }]
        );
    }

    #[test]
    fn refuses_a_skipped_configuration_and_one_while_pulling() {
        let first = config(1, &[(0, "", Some(1))]);
        let changes = plan(&GroupState::new(1), &first).unwrap();
        let mut state = installed(1, first, &changes);
        let err = plan(&state, &config(3, &[(0, "", Some(1))])).unwrap_err();
        assert!(err.contains("not the next"), "{err}");
        state.shards.insert(
            9,
            ShardEntry {
                num: 1,
                state: ShardState::Pulling {
                    from: 2,
                    addrs: vec![],
                    after: None,
                    records: 0,
                    bytes: 0,
                },
            },
        );
        let err = plan(&state, &config(2, &[(0, "", Some(1))])).unwrap_err();
        assert!(err.contains("arriving"), "{err}");
    }
}
