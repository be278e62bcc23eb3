//! shardkv under concurrent clients while the cluster changes: joins,
//! leaves, moves, whole groups stopped and restarted, and lost requests,
//! replies and peer messages (the fixture's fault injection).
//!
//! Method: real replica groups (the `tests::shardkv_cluster` fixture:
//! loopback tarpc, WAL and sled in temporary directories), several clerks
//! each running in its own task with its own client id, and a control loop
//! changing the configuration meanwhile.
//!
//! * Append workloads: every client appends unique tokens (`c{client}.{i};`)
//!   to keys only it writes, spread over every shard, and records which
//!   appends were acknowledged, which were indeterminate and which certainly
//!   failed. Once the cluster has settled, each key's value must be exactly
//!   that client's acknowledged tokens in issue order, with indeterminate
//!   ones interleaved at most once each in their place, and nothing else:
//!   a lost, duplicated, reordered or invented append fails the test.
//! * Linearizability: clients run a seeded random mix of get, put, append,
//!   cas, put_hash and delete on a few shared keys, recorded with
//!   `tests::linearizability::Recorder`, under message loss and
//!   reconfiguration; the history must be linearizable.
//! * Stuck and partial migrations: with a group stopped, the shards that
//!   must come from it are not served (short-deadline clerks fail and
//!   change nothing) while every other shard, including shards gained in
//!   the same configuration from a live group, keeps serving; once the
//!   group restarts everything arrives with its data.
//!
//! Randomness comes from a splitmix64 generator with fixed seeds, printed
//! at the start of each test.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use controller::{Configuration, Gid, ShardId};
use shardkv::faults::Faults;
use shardkv::{Clerk, ClerkError, ClerkOptions, GroupState, ShardState};
use tests::linearizability::{check, CheckOptions, KvInput, KvOutput, Recorder, Verdict};
use tests::paxos_sim::SimRng;
use tests::shardkv_cluster::{clerk_options, Cluster, ClusterOptions};

/// Runs `body` or fails the test after `limit`.
async fn bounded<F: Future>(limit: Duration, body: F) -> F::Output {
    tokio::time::timeout(limit, body)
        .await
        .expect("test timed out")
}

/// A clerk of client `client_id` whose operations give up after
/// `deadline`.
fn clerk_within(cluster: &Cluster, client_id: u64, deadline: Duration) -> Clerk {
    let defaults = clerk_options(client_id);
    Clerk::new(
        cluster.controller_addrs(),
        ClerkOptions {
            deadline,
            rpc_timeout: defaults.rpc_timeout.min(deadline),
            ..defaults
        },
    )
}

/// A key in shard `shard` of `config`: the shard's first byte (`!` for
/// the first shard, which starts at the empty key) followed by `suffix`.
/// Relies on the pre-split boundaries being single bytes.
fn key_in_shard(config: &Configuration, shard: ShardId, suffix: &str) -> Vec<u8> {
    let found = config.shard(shard).expect("shard in the configuration");
    let mut key = if found.start.is_empty() {
        b"!".to_vec()
    } else {
        found.start.clone()
    };
    key.extend_from_slice(suffix.as_bytes());
    assert_eq!(
        config.shard_for_key(&key).map(|s| s.id),
        Some(shard),
        "key {} is not in shard {shard}",
        String::from_utf8_lossy(&key)
    );
    key
}

/// The ids of the shards `gid` serves in `config`.
fn shards_of(config: &Configuration, gid: Gid) -> Vec<ShardId> {
    config
        .shards
        .iter()
        .filter(|shard| shard.gid == Some(gid))
        .map(|shard| shard.id)
        .collect()
}

/// Waits until every running replica of group `gid` (at least one) has a
/// state satisfying `ready`; panics after `timeout` with the states seen.
async fn wait_group_states(
    cluster: &Cluster,
    gid: Gid,
    timeout: Duration,
    what: &str,
    ready: impl Fn(&GroupState) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let states = cluster.group_states(gid);
        if !states.is_empty() && states.iter().all(&ready) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "group {gid}: not {what} within {timeout:?}: {:#?}",
            states
                .iter()
                .map(|state| (state.num, &state.shards))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How one append ended, as its client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ack {
    /// Acknowledged: applied exactly once.
    Ok,
    /// Indeterminate: applied at most once.
    Maybe,
    /// Unavailable or refused: certainly not applied.
    Not(String),
}

/// Every append of one client, per key, in issue order: `(token, ack)`.
type AppendLog = BTreeMap<Vec<u8>, Vec<(String, Ack)>>;

/// What one appending client did, and its slowest append.
struct ClientRun {
    log: AppendLog,
    slowest: Duration,
}

/// One appending client: appends `c{client}.{i};` to one of `keys`
/// (chosen by `rng`) until `stop`, and returns what it did.
async fn append_client(
    mut clerk: Clerk,
    client: u64,
    keys: Vec<Vec<u8>>,
    mut rng: SimRng,
    stop: Arc<AtomicBool>,
) -> ClientRun {
    let mut log: AppendLog = keys.iter().map(|key| (key.clone(), Vec::new())).collect();
    let mut slowest = Duration::ZERO;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = &keys[rng.index(keys.len())];
        let token = format!("c{client}.{i}");
        i += 1;
        let started = Instant::now();
        let result = clerk.append(key, format!("{token};").as_bytes()).await;
        slowest = slowest.max(started.elapsed());
        let ack = match result {
            Ok(()) => Ack::Ok,
            Err(ClerkError::Indeterminate(_)) => Ack::Maybe,
            Err(
                err @ (ClerkError::Unavailable(_) | ClerkError::Refused(_) | ClerkError::Denied(_)),
            ) => Ack::Not(err.to_string()),
        };
        log.get_mut(key).expect("own key").push((token, ack));
    }
    ClientRun { log, slowest }
}

/// Checks a key's final `value` against its appends `records` (issue
/// order): every acknowledged token exactly once, indeterminate ones at
/// most once, none that certainly failed, nothing unknown, order kept.
/// Returns how many indeterminate appends took effect.
fn check_appends(value: &[u8], records: &[(String, Ack)]) -> Result<usize, String> {
    let text = std::str::from_utf8(value).map_err(|e| format!("value is not text: {e}"))?;
    let mut seen = BTreeSet::new();
    let mut next = 0;
    let mut maybes_applied = 0;
    for token in text.split_terminator(';') {
        if !seen.insert(token) {
            return Err(format!("token {token} appears twice"));
        }
        let Some(offset) = records[next..].iter().position(|(t, _)| t == token) else {
            return Err(if records.iter().any(|(t, _)| t == token) {
                format!("token {token} is out of order")
            } else {
                format!("unknown token {token}")
            });
        };
        if let Some((missing, _)) = records[next..next + offset]
            .iter()
            .find(|(_, ack)| *ack == Ack::Ok)
        {
            return Err(format!(
                "acknowledged token {missing} is missing (found {token} after where it belongs)"
            ));
        }
        match &records[next + offset].1 {
            Ack::Ok => {}
            Ack::Maybe => maybes_applied += 1,
            Ack::Not(why) => {
                return Err(format!(
                    "token {token} was applied, but its append failed definitely: {why}"
                ))
            }
        }
        next += offset + 1;
    }
    if let Some((missing, _)) = records[next..].iter().find(|(_, ack)| *ack == Ack::Ok) {
        return Err(format!(
            "acknowledged token {missing} is missing at the end"
        ));
    }
    Ok(maybes_applied)
}

/// Starts `clients` appending clients (ids `100 + c`), each with
/// `keys_per_client` keys of its own spread round-robin over every shard
/// of `config`. Every third client gives up after 1 s instead of 6 s, so
/// that some appends end indeterminate or unavailable while a group is
/// down or a shard is on its way.
fn start_append_clients(
    cluster: &Cluster,
    config: &Configuration,
    clients: u64,
    keys_per_client: u64,
    seed: u64,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<ClientRun>> {
    let shard_ids: Vec<ShardId> = config.shards.iter().map(|shard| shard.id).collect();
    let shard_count = u64::try_from(shard_ids.len()).expect("fits u64");
    (0..clients)
        .map(|c| {
            let keys: Vec<Vec<u8>> = (0..keys_per_client)
                .map(|j| {
                    let slot = usize::try_from((c * keys_per_client + j) % shard_count)
                        .expect("fits usize");
                    key_in_shard(config, shard_ids[slot], &format!("a{c}-{j}"))
                })
                .collect();
            let deadline = if c % 3 == 2 {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(6)
            };
            let clerk = clerk_within(cluster, 100 + c, deadline);
            tokio::spawn(append_client(
                clerk,
                c,
                keys,
                SimRng::new(seed ^ (c + 1).wrapping_mul(0x1234_5678_9abc_def1)),
                Arc::clone(stop),
            ))
        })
        .collect()
}

/// Stops the clients, waits for the cluster to settle at its latest
/// configuration, reads every key and checks it against its appends.
async fn finish_append_run(
    cluster: &mut Cluster,
    stop: &AtomicBool,
    handles: Vec<tokio::task::JoinHandle<ClientRun>>,
) {
    stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    let mut slowest = Duration::ZERO;
    for handle in handles {
        let run = handle.await.expect("client task");
        slowest = slowest.max(run.slowest);
        logs.push(run.log);
    }
    let latest = cluster.latest().await;
    let started = Instant::now();
    cluster
        .wait_settled(&cluster.gids(), latest.num, Duration::from_secs(30))
        .await;
    eprintln!(
        "settled at configuration {} in {:?}",
        latest.num,
        started.elapsed()
    );
    let mut reader = cluster.clerk(999);
    let (mut acked, mut maybe, mut failed, mut maybe_applied) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for log in &logs {
        for (key, records) in log {
            acked += records.iter().filter(|(_, a)| *a == Ack::Ok).count();
            maybe += records.iter().filter(|(_, a)| *a == Ack::Maybe).count();
            failed += records
                .iter()
                .filter(|(_, a)| matches!(a, Ack::Not(_)))
                .count();
            let value = reader
                .get(key)
                .await
                .unwrap_or_else(|e| panic!("reading {}: {e}", String::from_utf8_lossy(key)))
                .unwrap_or_default();
            match check_appends(&value, records) {
                Ok(applied) => maybe_applied += applied,
                Err(why) => failures.push(format!(
                    "key {}: {why}\n  value: {}\n  appends: {records:?}",
                    String::from_utf8_lossy(key),
                    String::from_utf8_lossy(&value)
                )),
            }
        }
    }
    eprintln!(
        "appends: {acked} acknowledged, {maybe} indeterminate ({maybe_applied} of them applied), \
         {failed} failed definitely; slowest append {slowest:?}"
    );
    assert!(acked > 0, "no append was acknowledged");
    assert!(
        failures.is_empty(),
        "{} keys do not match their appends (the first 3 shown):\n{}",
        failures.len(),
        failures[..failures.len().min(3)].join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_during_joins_leaves_and_group_restarts_are_each_applied_once() {
    bounded(Duration::from_secs(120), async {
        let seed = 0x5eed_0001;
        eprintln!("seed {seed:#x}");
        let mut rng = SimRng::new(seed);
        let mut cluster = Cluster::start(ClusterOptions::default()).await;
        for gid in [1, 2, 3] {
            cluster.add_group(gid).await;
        }
        let num = cluster.join(&[1]).await;
        cluster
            .wait_settled(&[1], num, Duration::from_secs(20))
            .await;
        let config = cluster.latest().await;
        let stop = Arc::new(AtomicBool::new(false));
        let handles = start_append_clients(&cluster, &config, 6, 3, seed, &stop);
        let run = Instant::now();

        tokio::time::sleep(rng.millis(300, 600)).await;
        cluster.join(&[2]).await;
        tokio::time::sleep(rng.millis(300, 600)).await;
        cluster.join(&[3]).await;
        tokio::time::sleep(rng.millis(300, 600)).await;
        cluster.leave(&[1]).await;
        tokio::time::sleep(rng.millis(300, 600)).await;
        cluster.join(&[1]).await;
        tokio::time::sleep(rng.millis(300, 600)).await;
        cluster.leave(&[2]).await;
        tokio::time::sleep(rng.millis(200, 400)).await;
        // Stop a whole group that serves shards now, for a while.
        let latest = cluster.latest().await;
        let victim = *[1, 3]
            .iter()
            .max_by_key(|gid| shards_of(&latest, **gid).len())
            .expect("a group");
        assert!(!shards_of(&latest, victim).is_empty());
        eprintln!(
            "stopping group {victim} (shards {:?} at configuration {})",
            shards_of(&latest, victim),
            latest.num
        );
        cluster.stop_group(victim).await;
        tokio::time::sleep(rng.millis(1000, 1800)).await;
        cluster.restart_group(victim).await;
        tokio::time::sleep(rng.millis(600, 1000)).await;
        eprintln!("load ran for {:?}", run.elapsed());

        finish_append_run(&mut cluster, &stop, handles).await;
        cluster.shutdown().await;
    })
    .await;
}

/// A cluster that loses 10% of client requests and replies and 5% of the
/// groups' peer messages, with groups 1, 2 and 3 started and group 1
/// joined (and serving every shard).
async fn lossy_cluster_with_group_1_joined(seed: u64) -> Cluster {
    let mut cluster = Cluster::start(ClusterOptions {
        faults: Faults {
            lose_request_per_mille: 100,
            lose_reply_per_mille: 100,
            lose_peer_message_per_mille: 50,
            seed,
        },
        ..ClusterOptions::default()
    })
    .await;
    for gid in [1, 2, 3] {
        cluster.add_group(gid).await;
    }
    let num = cluster.join(&[1]).await;
    cluster
        .wait_settled(&[1], num, Duration::from_secs(20))
        .await;
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_under_message_loss_are_each_applied_once() {
    bounded(Duration::from_secs(120), async {
        let seed = 0x5eed_0002;
        eprintln!("seed {seed:#x}");
        let mut rng = SimRng::new(seed);
        let mut cluster = lossy_cluster_with_group_1_joined(seed).await;
        let config = cluster.latest().await;
        let stop = Arc::new(AtomicBool::new(false));
        let handles = start_append_clients(&cluster, &config, 6, 3, seed, &stop);
        let run = Instant::now();

        tokio::time::sleep(rng.millis(500, 900)).await;
        cluster.join(&[2]).await;
        tokio::time::sleep(rng.millis(800, 1200)).await;
        cluster.join(&[3]).await;
        tokio::time::sleep(rng.millis(800, 1200)).await;
        cluster.leave(&[1]).await;
        tokio::time::sleep(rng.millis(1000, 1500)).await;
        eprintln!("load ran for {:?}", run.elapsed());

        finish_append_run(&mut cluster, &stop, handles).await;
        cluster.shutdown().await;
    })
    .await;
}

/// One client of the linearizability test: a seeded random mix of every
/// operation on `keys`, at most `max_ops` of them, until `stop`.
async fn mixed_client(
    mut clerk: Clerk,
    client: u64,
    keys: Vec<Vec<u8>>,
    mut rng: SimRng,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
    max_ops: u64,
) {
    // The last value this client saw per key: cas expects it, so that
    // some swaps succeed.
    let mut seen: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    for i in 0..max_ops {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // Think time, so that the history spans the reconfigurations.
        tokio::time::sleep(rng.millis(0, 12)).await;
        let key = keys[rng.index(keys.len())].clone();
        let value = format!("c{client}.{i}").into_bytes();
        let roll = rng.below(100);
        let input = match roll {
            0..=24 => KvInput::Get,
            25..=39 => KvInput::Put(value),
            40..=54 => KvInput::Append(value),
            55..=74 => KvInput::Cas {
                expected: if rng.below(3) == 0 {
                    None
                } else {
                    seen.get(&key).cloned().flatten()
                },
                new: value,
            },
            75..=89 => KvInput::PutHash(value),
            _ => KvInput::Delete,
        };
        let pending = recorder.call(client, key.clone(), input.clone());
        let result: Result<KvOutput, ClerkError> = match input {
            KvInput::Get => clerk.get(&key).await.map(KvOutput::Value),
            KvInput::Put(value) => clerk.put(&key, &value).await.map(|()| KvOutput::Done),
            KvInput::Append(value) => clerk.append(&key, &value).await.map(|()| KvOutput::Done),
            KvInput::Delete => clerk.delete(&key).await.map(|()| KvOutput::Done),
            KvInput::Cas { expected, new } => {
                clerk
                    .cas(&key, expected.as_deref(), &new)
                    .await
                    .map(|r| KvOutput::Cas {
                        swapped: r.swapped,
                        current: r.current,
                    })
            }
            KvInput::PutHash(value) => clerk.put_hash(&key, &value).await.map(KvOutput::Previous),
        };
        match result {
            Ok(output) => {
                match &output {
                    KvOutput::Value(v) | KvOutput::Previous(v) => {
                        seen.insert(key.clone(), v.clone());
                    }
                    KvOutput::Cas {
                        swapped: false,
                        current,
                    } => {
                        seen.insert(key.clone(), current.clone());
                    }
                    _ => {}
                }
                pending.returned(output);
            }
            Err(ClerkError::Indeterminate(_)) => pending.indeterminate(),
            Err(ClerkError::Unavailable(_) | ClerkError::Refused(_) | ClerkError::Denied(_)) => {
                pending.failed()
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_under_message_loss_and_reconfiguration_is_linearizable() {
    bounded(Duration::from_secs(120), async {
        let seed = 0x5eed_0003;
        eprintln!("seed {seed:#x}");
        let mut rng = SimRng::new(seed);
        let mut cluster = lossy_cluster_with_group_1_joined(seed).await;
        let config = cluster.latest().await;
        // A few keys shared by every client, two per shard, at both ends
        // of the key space.
        let keys: Vec<Vec<u8>> = [(0, "lin0"), (0, "lin1"), (9, "lin0"), (9, "lin1")]
            .iter()
            .map(|&(shard, suffix)| key_in_shard(&config, shard, suffix))
            .collect();
        let recorder = Recorder::new();
        let stop = Arc::new(AtomicBool::new(false));
        let clients: u64 = 6;
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                tokio::spawn(mixed_client(
                    clerk_within(&cluster, 200 + c, Duration::from_secs(6)),
                    c,
                    keys.clone(),
                    SimRng::new(seed ^ (c + 1).wrapping_mul(0x0fed_cba9_8765_4321)),
                    recorder.clone(),
                    Arc::clone(&stop),
                    100,
                ))
            })
            .collect();
        let run = Instant::now();
        for step in 0..4 {
            tokio::time::sleep(rng.millis(250, 400)).await;
            match step {
                0 => cluster.join(&[2]).await,
                1 => cluster.join(&[3]).await,
                2 => cluster.leave(&[1]).await,
                _ => cluster.join(&[1]).await,
            };
            let latest = cluster.latest().await;
            let owner = |shard| latest.shard(shard).and_then(|s| s.gid);
            eprintln!(
                "{:?}: configuration {}: shard 0 on group {:?}, shard 9 on group {:?}",
                run.elapsed(),
                latest.num,
                owner(0),
                owner(9)
            );
        }
        tokio::time::sleep(rng.millis(250, 400)).await;
        stop.store(true, Ordering::Relaxed);
        for handle in handles {
            handle.await.expect("client task");
        }
        eprintln!("load ran for {:?}", run.elapsed());
        cluster.shutdown().await;

        let history = recorder.history();
        let indeterminate = history
            .iter()
            .filter(|op| matches!(op.outcome, tests::linearizability::Outcome::Indeterminate))
            .count();
        let last_call_ms = history.iter().map(|op| op.call_ns).max().unwrap_or(0) / 1_000_000;
        eprintln!(
            "history: {} operations ({indeterminate} indeterminate) on {} keys, the last \
             called at {last_call_ms} ms",
            history.len(),
            keys.len()
        );
        assert!(history.len() >= 50, "too few operations recorded");
        let started = Instant::now();
        let verdict = check(
            &history,
            &CheckOptions {
                hash: shardkv::hash::hash_bytes,
                max_steps_per_key: 2_000_000,
            },
        );
        eprintln!("checked in {:?}: {verdict}", started.elapsed());
        assert_eq!(verdict, Verdict::Linearizable, "seed {seed:#x}: {verdict}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shards_unaffected_by_a_stuck_migration_keep_serving() {
    bounded(Duration::from_secs(90), async {
        let mut cluster = Cluster::start(ClusterOptions::default()).await;
        for gid in [1, 2] {
            cluster.add_group(gid).await;
        }
        let num = cluster.join(&[1, 2]).await;
        cluster
            .wait_settled(&[1, 2], num, Duration::from_secs(20))
            .await;
        let before = cluster.latest().await;
        let mut clerk = cluster.clerk(1);
        // Two keys in every shard.
        let mut data: BTreeMap<Vec<u8>, (ShardId, Vec<u8>)> = BTreeMap::new();
        for shard in &before.shards {
            for j in 0..2 {
                let key = key_in_shard(&before, shard.id, &format!("d{j}"));
                let value = format!("v-{}", String::from_utf8_lossy(&key)).into_bytes();
                clerk.put(&key, &value).await.unwrap();
                data.insert(key, (shard.id, value));
            }
        }
        drop(clerk);

        cluster.stop_group(1).await;
        let moved = shards_of(&before, 1)[0];
        let num = cluster.move_shard(moved, 2).await;
        eprintln!("shard {moved} moves from stopped group 1 to group 2 at configuration {num}");
        wait_group_states(
            &cluster,
            2,
            Duration::from_secs(20),
            "pulling the moved shard",
            |state| {
                state.num == num
                    && matches!(
                        state.shards.get(&moved).map(|e| &e.state),
                        Some(ShardState::Pulling { from: 1, .. })
                    )
            },
        )
        .await;

        // Group 2's own shards keep serving, reads and writes.
        let mut quick = clerk_within(&cluster, 2, Duration::from_secs(4));
        let started = Instant::now();
        let mut served = 0;
        for (key, (shard, value)) in &mut data {
            if before.shard(*shard).and_then(|s| s.gid) != Some(2) {
                continue;
            }
            assert_eq!(quick.get(key).await.unwrap().as_ref(), Some(&*value));
            let new = format!("w-{}", String::from_utf8_lossy(key)).into_bytes();
            quick.put(key, &new).await.unwrap();
            quick.append(key, b"+").await.unwrap();
            *value = [new.as_slice(), b"+"].concat();
            assert_eq!(quick.get(key).await.unwrap().as_ref(), Some(&*value));
            served += 1;
        }
        assert!(served > 0);
        eprintln!(
            "{served} keys of group 2's shards read and written in {:?} while the migration \
             is stuck",
            started.elapsed()
        );

        // The moved shard is served by nobody yet.
        let stuck_key = data
            .iter()
            .find(|(_, (shard, _))| *shard == moved)
            .map(|(key, _)| key.clone())
            .expect("a key of the moved shard");
        let mut short = clerk_within(&cluster, 3, Duration::from_millis(800));
        match short.get(&stuck_key).await {
            Err(ClerkError::Unavailable(_)) => {}
            other => panic!("read of the stuck shard: {other:?}"),
        }
        let put = short.put(&stuck_key, b"must-not-apply").await;
        assert!(
            matches!(
                put,
                Err(ClerkError::Unavailable(_) | ClerkError::Indeterminate(_))
            ),
            "write to the stuck shard: {put:?}"
        );
        let put_certainly_failed = matches!(put, Err(ClerkError::Unavailable(_)));
        drop(short);
        assert!(cluster
            .group_states(2)
            .iter()
            .all(|state| !state.serves(moved)));

        cluster.restart_group(1).await;
        cluster
            .wait_settled(&[1, 2], num, Duration::from_secs(30))
            .await;
        for state in cluster.group_states(2) {
            assert!(state.serves(moved), "group 2 does not serve shard {moved}");
        }
        // The old copy is deleted once group 2 has it (every replica of
        // group 1 applies the deletion, some perhaps a little later).
        wait_group_states(
            &cluster,
            1,
            Duration::from_secs(10),
            "rid of the moved shard",
            |state| !state.shards.contains_key(&moved),
        )
        .await;
        let mut clerk = cluster.clerk(4);
        for (key, (shard, value)) in &data {
            let got = clerk.get(key).await.unwrap();
            if *shard == moved && *key == stuck_key && !put_certainly_failed {
                assert!(
                    got.as_deref() == Some(value.as_slice())
                        || got.as_deref() == Some(b"must-not-apply".as_slice()),
                    "{got:?}"
                );
            } else {
                assert_eq!(
                    got.as_ref(),
                    Some(value),
                    "{}",
                    String::from_utf8_lossy(key)
                );
            }
        }
        clerk.append(&stuck_key, b"!").await.unwrap();
        drop(clerk);
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partially_received_migration_serves_what_has_arrived() {
    bounded(Duration::from_secs(90), async {
        let mut cluster = Cluster::start(ClusterOptions::default()).await;
        for gid in [1, 2, 3] {
            cluster.add_group(gid).await;
        }
        let num = cluster.join(&[1, 2, 3]).await;
        cluster
            .wait_settled(&[1, 2, 3], num, Duration::from_secs(20))
            .await;
        let before = cluster.latest().await;
        for gid in [1, 2, 3] {
            assert!(!shards_of(&before, gid).is_empty(), "{before:?}");
        }
        let mut clerk = cluster.clerk(1);
        let mut data: BTreeMap<Vec<u8>, (ShardId, Vec<u8>)> = BTreeMap::new();
        for shard in &before.shards {
            for j in 0..3 {
                let key = key_in_shard(&before, shard.id, &format!("p{j}"));
                let value = format!("v-{}", String::from_utf8_lossy(&key)).into_bytes();
                clerk.put(&key, &value).await.unwrap();
                data.insert(key, (shard.id, value));
            }
        }
        drop(clerk);

        cluster.stop_group(1).await;
        // One configuration takes every shard of groups 1 and 2 to group 3.
        let num = cluster.leave(&[1, 2]).await;
        let after = cluster.latest().await;
        assert_eq!(after.num, num);
        let from1 = shards_of(&before, 1);
        let from2 = shards_of(&before, 2);
        let own = shards_of(&before, 3);
        for shard in from1.iter().chain(&from2) {
            assert_eq!(after.shard(*shard).and_then(|s| s.gid), Some(3));
        }
        eprintln!(
            "configuration {num}: group 3 gains {from1:?} from stopped group 1 and {from2:?} \
             from group 2"
        );
        wait_group_states(
            &cluster,
            3,
            Duration::from_secs(20),
            "serving group 2's shards",
            |state| state.num == num && from2.iter().chain(&own).all(|shard| state.serves(*shard)),
        )
        .await;
        for state in cluster.group_states(3) {
            for shard in &from1 {
                assert!(
                    matches!(
                        state.shards.get(shard).map(|e| &e.state),
                        Some(ShardState::Pulling { from: 1, .. })
                    ),
                    "shard {shard} from group 1: {:?}",
                    state.shards.get(shard)
                );
            }
            for shard in from2.iter().chain(&own) {
                assert!(
                    matches!(
                        state.shards.get(shard).map(|e| &e.state),
                        Some(ShardState::Serving { .. })
                    ),
                    "shard {shard}: {:?}",
                    state.shards.get(shard)
                );
            }
        }

        // What arrived is served with its data; the rest is not served.
        let mut quick = clerk_within(&cluster, 2, Duration::from_secs(4));
        let mut short = clerk_within(&cluster, 3, Duration::from_millis(500));
        for shard in &from1 {
            let key = key_in_shard(&before, *shard, "p0");
            match short.get(&key).await {
                Err(ClerkError::Unavailable(_)) => {}
                other => panic!("read of shard {shard} still arriving: {other:?}"),
            }
        }
        for (key, (shard, value)) in &mut data {
            if !from1.contains(shard) {
                assert_eq!(
                    quick.get(key).await.unwrap().as_ref(),
                    Some(&*value),
                    "{}",
                    String::from_utf8_lossy(key)
                );
                quick.append(key, b"+").await.unwrap();
                value.push(b'+');
            }
        }
        drop((quick, short));

        cluster.restart_group(1).await;
        cluster
            .wait_settled(&[1, 2, 3], num, Duration::from_secs(30))
            .await;
        for state in cluster.group_states(3) {
            for shard in &after.shards {
                assert!(
                    state.serves(shard.id),
                    "group 3 does not serve {}",
                    shard.id
                );
            }
        }
        let mut clerk = cluster.clerk(4);
        for (key, (_, value)) in &data {
            assert_eq!(
                clerk.get(key).await.unwrap().as_ref(),
                Some(value),
                "{}",
                String::from_utf8_lossy(key)
            );
        }
        drop(clerk);
        cluster.shutdown().await;
    })
    .await;
}
