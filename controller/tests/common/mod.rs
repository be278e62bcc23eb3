//! Helpers shared by the controller's integration tests: a simulated admin
//! cluster that drives a `ControllerStateMachine` through its byte interface
//! (exactly as `paxos-log` would), checks on configurations, and the
//! randomness, node ids, network limits and random changes of the fault and
//! SIGKILL tests.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use controller::{
    decode, encode, ClientId, ConfigNum, Configuration, ControllerCommand, ControllerOp,
    ControllerQuery, ControllerReply, ControllerStateMachine, Gid, ShardId,
};
use paxos_log::{NetLimits, NodeId, StateMachine};

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

/// Asserts the configuration invariants (which include: with no group
/// every shard is unowned, otherwise every shard is owned by a group) and
/// that the groups' shard counts differ by at most one.
pub fn assert_balanced(config: &Configuration) {
    config
        .check()
        .unwrap_or_else(|err| panic!("config {}: {err}", config.num));
    let counts = config.shard_counts();
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

/// The configuration a successful change created; `None` for a refusal
/// (or a query's answer).
pub fn reply_num(reply: &ControllerReply) -> Option<ConfigNum> {
    match reply {
        ControllerReply::Changed { num } | ControllerReply::Split { num, .. } => Some(*num),
        _ => None,
    }
}

/// The id of replica `index` (0-based) of a test cluster: `index + 1`.
pub fn node_id(index: usize) -> NodeId {
    NodeId(u64::try_from(index).expect("index fits u64") + 1)
}

/// Network limits of the service tests: the defaults, except that a
/// restarted replica is reconnected to quickly.
pub fn net() -> NetLimits {
    NetLimits {
        backoff_max: Duration::from_millis(100),
        ..NetLimits::default()
    }
}

/// Random changes of one client that are valid whatever other clients do
/// and whatever became of the client's own earlier changes: it joins fresh
/// gids, leaves and moves shards only to gids the caller says it has
/// joined, and splits only at keys the caller makes unique. Updating the
/// joined set after each reply is the caller's business.
#[derive(Debug, Clone)]
pub struct RandomOps {
    /// The first gid of the next Join.
    pub next_gid: Gid,
    /// Most gids the client keeps joined at once.
    pub max_joined: usize,
    /// Shards of configuration 0: a Move picks a shard id below this.
    pub shards: u32,
}

impl RandomOps {
    /// The next change: a Join of one or two fresh gids (always when
    /// `joined` is empty, else in 4 of 10 draws while fewer than
    /// `max_joined` are joined), a Leave of one gid of `joined`, a Move of a
    /// random pre-split shard to one of them, or a Split at `split_key`
    /// (unique, and never a pre-split boundary, e.g. longer than one byte).
    pub fn next(
        &mut self,
        rng: &mut SplitMix64,
        joined: &BTreeSet<Gid>,
        split_key: Vec<u8>,
    ) -> ControllerOp {
        let roll = rng.below(10);
        if joined.is_empty() || (roll < 4 && joined.len() < self.max_joined) {
            let count = 1 + rng.below(2);
            let groups = (self.next_gid..self.next_gid + count)
                .map(|gid| (gid, addresses(gid)))
                .collect();
            self.next_gid += count;
            return ControllerOp::Join { groups };
        }
        let gids: Vec<Gid> = joined.iter().copied().collect();
        if roll < 6 {
            ControllerOp::Leave {
                gids: vec![gids[rng.index(gids.len())]],
            }
        } else if roll < 8 {
            ControllerOp::Move {
                shard: rng.below(u64::from(self.shards)),
                gid: gids[rng.index(gids.len())],
            }
        } else {
            ControllerOp::Split { key: split_key }
        }
    }
}

/// SplitMix64: a tiny seedable generator for fault schedules and client
/// choices in the fault tests (not for anything that needs quality).
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform index into a collection of `len > 0` items.
    pub fn index(&mut self, len: usize) -> usize {
        let len = u64::try_from(len).expect("len fits u64");
        usize::try_from(self.below(len)).expect("index fits usize")
    }

    /// Uniform duration in `[low, high)` milliseconds.
    pub fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low))
    }
}

/// Prints the seed again if the test panics, so that it is at the end of the
/// failure output.
pub struct SeedReport {
    /// What failed, e.g. the test or scenario name.
    pub name: String,
    /// The environment variable that replays the seed.
    pub env: &'static str,
    /// The seed the test ran with.
    pub seed: u64,
}

impl Drop for SeedReport {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{} FAILED; rerun the same random choices with {}={} (thread scheduling is not \
                 seeded)",
                self.name, self.env, self.seed
            );
        }
    }
}

/// The seed a fault test runs with: the environment variable `var` when set
/// (to replay a failure), else one drawn from the clock.
pub fn seed_from_env(var: &str) -> u64 {
    match std::env::var(var) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{var}={text:?} is not a u64")),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos());
            SplitMix64(u64::try_from(nanos % u128::from(u64::MAX)).unwrap_or(0)).next_u64()
        }
    }
}
