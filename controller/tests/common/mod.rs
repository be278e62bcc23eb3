//! Helpers shared by the controller's integration tests: a simulated admin
//! cluster that drives a `ControllerStateMachine` through its byte interface
//! (exactly as `paxos-log` would), and checks on configurations.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use controller::{
    decode, encode, ClientId, ConfigNum, Configuration, ControllerCommand, ControllerOp,
    ControllerQuery, ControllerReply, ControllerStateMachine, Gid, ShardId,
};
use paxos_log::StateMachine;

/// A controller state machine fed through `apply`/`read` bytes, with
/// per-client sequence numbers and increasing slots.
pub struct Admin {
    pub sm: ControllerStateMachine,
    pub slot: u64,
    next_seq: BTreeMap<ClientId, u64>,
}

impl Admin {
    pub fn new(shards: u32) -> Self {
        Admin {
            sm: ControllerStateMachine::new(shards).expect("valid shard count"),
            slot: 0,
            next_seq: BTreeMap::new(),
        }
    }

    /// Applies a raw command (any bytes) in the next slot; decodes the reply.
    pub fn apply_bytes(&mut self, bytes: &[u8]) -> ControllerReply {
        self.slot += 1;
        let reply = self.sm.apply(self.slot, bytes);
        decode(&reply).expect("replies always decode")
    }

    /// Sends `op` as request `seq` of `client_id`.
    pub fn send(&mut self, client_id: ClientId, seq: u64, op: ControllerOp) -> ControllerReply {
        self.apply_bytes(&encode(&ControllerCommand::Change { client_id, seq, op }))
    }

    /// Sends `op` as the next request of `client_id`.
    pub fn change(&mut self, client_id: ClientId, op: ControllerOp) -> ControllerReply {
        let seq = self.next_seq.entry(client_id).or_insert(0);
        *seq += 1;
        let seq = *seq;
        self.send(client_id, seq, op)
    }

    pub fn join_as(&mut self, client_id: ClientId, gids: &[Gid]) -> ConfigNum {
        let groups = gids.iter().map(|&gid| (gid, addresses(gid))).collect();
        match self.change(client_id, ControllerOp::Join { groups }) {
            ControllerReply::Changed { num } => num,
            other => panic!("join {gids:?} failed: {other:?}"),
        }
    }

    pub fn join(&mut self, gids: &[Gid]) -> ConfigNum {
        self.join_as(1, gids)
    }

    pub fn leave_as(&mut self, client_id: ClientId, gids: &[Gid]) -> ConfigNum {
        match self.change(
            client_id,
            ControllerOp::Leave {
                gids: gids.to_vec(),
            },
        ) {
            ControllerReply::Changed { num } => num,
            other => panic!("leave {gids:?} failed: {other:?}"),
        }
    }

    pub fn leave(&mut self, gids: &[Gid]) -> ConfigNum {
        self.leave_as(1, gids)
    }

    pub fn move_shard(&mut self, shard: ShardId, gid: Gid) -> ConfigNum {
        match self.change(1, ControllerOp::Move { shard, gid }) {
            ControllerReply::Changed { num } => num,
            other => panic!("move {shard} -> {gid} failed: {other:?}"),
        }
    }

    pub fn split(&mut self, key: &[u8]) -> (ConfigNum, ShardId) {
        match self.change(1, ControllerOp::Split { key: key.to_vec() }) {
            ControllerReply::Split { num, shard } => (num, shard),
            other => panic!("split at {key:?} failed: {other:?}"),
        }
    }

    /// Configuration `num` (latest if `None`), read through `read` bytes.
    pub fn query(&mut self, num: Option<ConfigNum>) -> Configuration {
        let reply = self.sm.read(&encode(&ControllerQuery::Config { num }));
        match decode(&reply).expect("replies always decode") {
            ControllerReply::Config(config) => config,
            other => panic!("query {num:?} failed: {other:?}"),
        }
    }

    pub fn latest(&mut self) -> Configuration {
        self.query(None)
    }
}

/// The replica addresses the tests give group `gid`.
pub fn addresses(gid: Gid) -> Vec<String> {
    (0..3)
        .map(|replica| format!("g{gid}-r{replica}.test:7400"))
        .collect()
}

/// Shard count per group of `config` (groups with none included).
pub fn counts(config: &Configuration) -> BTreeMap<Gid, usize> {
    config.shard_counts()
}

/// Asserts the configuration invariants and that counts differ by <= 1.
pub fn assert_balanced(config: &Configuration) {
    config
        .check()
        .unwrap_or_else(|err| panic!("config {}: {err}", config.num));
    let counts = counts(config);
    if let (Some(min), Some(max)) = (counts.values().min(), counts.values().max()) {
        assert!(
            max - min <= 1,
            "config {} unbalanced: {counts:?}",
            config.num
        );
    }
}

/// Owner of each shard id.
pub fn owners(config: &Configuration) -> BTreeMap<ShardId, Option<Gid>> {
    config
        .shards
        .iter()
        .map(|shard| (shard.id, shard.gid))
        .collect()
}

/// Shards (present in both) whose owner differs: `id -> (before, after)`.
pub fn moved(
    before: &Configuration,
    after: &Configuration,
) -> BTreeMap<ShardId, (Option<Gid>, Option<Gid>)> {
    let before = owners(before);
    owners(after)
        .into_iter()
        .filter_map(|(id, gid)| {
            let old = *before.get(&id)?;
            (old != gid).then_some((id, (old, gid)))
        })
        .collect()
}

/// The gids of a configuration.
pub fn gids(config: &Configuration) -> BTreeSet<Gid> {
    config.groups.keys().copied().collect()
}
