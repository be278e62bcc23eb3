//! The fault campaign: a real cluster of `kvd` processes (three controllers,
//! two groups of three replicas) on loopback, concurrent clients doing
//! random get/put/append/cas/delete/put-hash on a small key set while an
//! admin task moves and splits shards and makes groups leave and rejoin,
//! and a nemesis that injects one fault at a time:
//!
//! * `kill`: SIGKILL of a node (leaders included: the target is drawn from
//!   every node), restarted 0.2 to 1.5 s later with `kvctl cluster up`;
//! * `pause`: SIGSTOP of a node for 0.5 to 2.5 s, then SIGCONT;
//! * `partition`: every consensus link to and from a node cut;
//! * `one-way`: one link A→B cut while B→A still carries B's messages;
//! * `torn-tail`: SIGKILL, then a partly written record appended to the
//!   node's last WAL segment before the restart (what a crash in the
//!   middle of a write leaves; see below).
//!
//! Links are cut by proxies between the nodes ([`common::links`]).
//! Every operation is recorded with its call and return times and its
//! outcome (ok, failed, indeterminate). At the end every fault is healed,
//! each key is read once more, and:
//!
//! * the whole history must be linearizable
//!   (`tests::linearizability::check`, key by key, indeterminate operations
//!   optional);
//! * on the two ledger keys, where clients only append unique items, every
//!   acknowledged append must be there exactly once and nothing else but
//!   appends whose outcome was unknown (the lost-write check);
//! * every torn tail must have been cut off by the node's recovery.
//!
//! A failure prints the seed, the faults with their times, the checker's
//! explanation (the operations around the first one that cannot be
//! placed), and the shortest prefix of the offending key's history that is
//! already not linearizable (`shortest_failing_prefix`: cut in time, so
//! it is a real state of the store, ending where it went wrong). The seed fixes the fault schedule and the clients' choices;
//! timing still varies between runs, as it does for any test of processes.
//!
//! Why a torn tail is *appended*, not cut into the file: the failure model
//! is crash-recovery with stable storage. Bytes a node fsync'd (and then
//! acknowledged) survive a crash; cutting into them is a disk losing
//! acknowledged data, which Paxos on a minority tolerates only by
//! rebuilding that replica, not by recovery. What a crash can leave is a
//! record whose write had not completed: a prefix of a frame (a header cut
//! short, or a header and part of its payload) after the last complete
//! record. That is what the nemesis writes.
//!
//! The CI test runs until each kind of fault happened at least 20 times
//! (about five minutes). The long campaign runs at least 30 minutes:
//! `cargo nextest run -p tools --test fault_campaign --run-ignored only`.
//! `SHARDKV_CAMPAIGN_SEED` replays a seed; `SHARDKV_CAMPAIGN_SECS` sets the
//! least duration.

mod common;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::links::Links;
use common::{run_kvctl, stdout, TestCluster};
use serde_json::Value;
use shardkv::{Clerk, ClerkError, ClerkOptions};
use tests::linearizability::{
    check, shortest_failing_prefix, CheckOptions, KvInput, KvOutput, Operation, Outcome, Recorder,
    Verdict,
};
use tests::paxos_sim::SimRng;

/// The kinds of fault, in the order a round tries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Kill,
    Pause,
    Partition,
    OneWay,
    TornTail,
}

const FAULTS: [Fault; 5] = [
    Fault::Kill,
    Fault::Pause,
    Fault::Partition,
    Fault::OneWay,
    Fault::TornTail,
];

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Partition => "partition",
            Fault::OneWay => "one-way",
            Fault::TornTail => "torn-tail",
        })
    }
}

/// How long a campaign runs.
struct Settings {
    seed: u64,
    /// Each kind of fault at least this many times...
    min_events_per_kind: u64,
    /// ...and at least this long...
    min_duration: Duration,
    /// ...but never longer than this.
    max_duration: Duration,
}

impl Settings {
    fn from_env(min_events_per_kind: u64, min_duration: Duration, max_duration: Duration) -> Self {
        let seed = match std::env::var("SHARDKV_CAMPAIGN_SEED") {
            Ok(text) => {
                let digits = text.trim_start_matches("0x");
                u64::from_str_radix(digits, 16).expect("SHARDKV_CAMPAIGN_SEED: a hex number")
            }
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| (d.as_secs() << 30) ^ u64::from(d.subsec_nanos())),
        };
        let min_duration = match std::env::var("SHARDKV_CAMPAIGN_SECS") {
            Ok(text) => Duration::from_secs(text.parse().expect("SHARDKV_CAMPAIGN_SECS: seconds")),
            Err(_) => min_duration,
        };
        Settings {
            seed,
            min_events_per_kind,
            // A longer least duration (SHARDKV_CAMPAIGN_SECS) moves the cap.
            max_duration: max_duration.max(min_duration + Duration::from_secs(300)),
            min_duration,
        }
    }
}

/// Keys the mixed clients share: spread over the key space (so over the
/// shards and both groups).
const KEYS: [&str; 12] = [
    "1k", "4k", "8k", "Bk", "Fk", "Jk", "Nk", "Rk", "Vk", "bk", "hk", "pk",
];
/// Where the ledger clients append unique items: two key families (two
/// shards), a new key of the family every [`LEDGER_ITEMS_PER_KEY`] appends
/// of a client, so that values stay small. (A value appended to for half an
/// hour grows to hundreds of KiB; sled 0.34 keeps such values as blob files
/// and reclaims them lazily, and the campaign once filled the disk with
/// them: see docs/fault-campaign.md.)
const LEDGERS: [&str; 2] = ["3ledger", "ledger"];
/// Appends of one client to one ledger key before it moves to the next.
const LEDGER_ITEMS_PER_KEY: u64 = 400;
/// Mixed clients.
const MIXED_CLIENTS: u64 = 6;
/// Operations of the shortest failing prefix a failure report lists.
const SHOWN_PREFIX_OPS: usize = 30;
/// Operations give up after this long (then they are indeterminate, or
/// failed when they certainly did not happen).
const OP_DEADLINE: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_campaign_loses_nothing_and_stays_linearizable() {
    run_campaign(Settings::from_env(
        20,
        Duration::ZERO,
        Duration::from_secs(420),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the long campaign (30 minutes); see the module docs"]
async fn long_fault_campaign() {
    run_campaign(Settings::from_env(
        20,
        Duration::from_secs(1800),
        Duration::from_secs(2400),
    ))
    .await;
}

/// What happened during a campaign, for the report and for a failure.
#[derive(Default)]
struct Journal {
    /// Faults by kind.
    faults: BTreeMap<Fault, u64>,
    /// One line per fault or admin change, with its time.
    lines: Vec<String>,
    admin_ok: u64,
    admin_failed: u64,
    /// Successful admin changes by verb (move, split, leave, join).
    admin_ok_by_verb: BTreeMap<String, u64>,
    /// `cluster up` runs that failed to bring a node back.
    restart_failures: u64,
    /// Torn tails injected, by node.
    torn_by_node: BTreeMap<String, u64>,
}

/// The shared state of the campaign's tasks.
struct Campaign {
    cluster: TestCluster,
    links: Links,
    nodes: Vec<String>,
    started: Instant,
    journal: Mutex<Journal>,
}

impl Campaign {
    fn note(&self, line: String) {
        let at = self.started.elapsed().as_secs_f64();
        let mut journal = self.journal.lock().expect("journal");
        journal.lines.push(format!("{at:8.3}s {line}"));
    }

    fn count(&self, fault: Fault) {
        *self
            .journal
            .lock()
            .expect("journal")
            .faults
            .entry(fault)
            .or_default() += 1;
    }

    fn faults_of(&self, fault: Fault) -> u64 {
        let journal = self.journal.lock().expect("journal");
        journal.faults.get(&fault).copied().unwrap_or(0)
    }

    /// Runs kvctl against the cluster on a blocking thread.
    async fn kvctl(&self, args: &[&str]) -> std::process::Output {
        let file = self.cluster.file.to_string_lossy().into_owned();
        let mut full = vec!["--cluster".to_string(), file];
        full.extend(args.iter().map(|a| a.to_string()));
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = full.iter().map(String::as_str).collect();
            run_kvctl(&args, None, None)
        })
        .await
        .expect("kvctl task")
    }

    /// Starts every node that does not run.
    async fn restart_missing(&self) {
        let dir = self.cluster.dir.to_string_lossy().into_owned();
        let output = self.kvctl(&["cluster", "up", &dir, "--wait-s", "30"]).await;
        if !output.status.success() {
            self.journal.lock().expect("journal").restart_failures += 1;
            self.note(format!(
                "cluster up failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
    }

    fn signal(&self, node: &str, signal: &str) -> bool {
        let Some(pid) = self.cluster.pid(node) else {
            return false;
        };
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if sent && signal == "KILL" {
            let deadline = Instant::now() + Duration::from_secs(10);
            while common::is_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        sent
    }

    /// Injects one fault of kind `fault` on a node drawn by `rng`, and
    /// heals it.
    async fn inject(&self, fault: Fault, rng: &mut SimRng) {
        let node = self.nodes[rng.index(self.nodes.len())].clone();
        match fault {
            Fault::Kill | Fault::TornTail => {
                if !self.signal(&node, "KILL") {
                    return;
                }
                let mut what = String::new();
                if fault == Fault::TornTail {
                    what = tear_wal_tail(&self.cluster.dir.join(&node), rng);
                    let mut journal = self.journal.lock().expect("journal");
                    *journal.torn_by_node.entry(node.clone()).or_default() += 1;
                }
                self.count(fault);
                self.note(format!("{fault} {node} {what}"));
                tokio::time::sleep(rng.millis(200, 1500)).await;
                self.restart_missing().await;
            }
            Fault::Pause => {
                if !self.signal(&node, "STOP") {
                    return;
                }
                self.count(fault);
                self.note(format!("{fault} {node}"));
                tokio::time::sleep(rng.millis(500, 2500)).await;
                self.signal(&node, "CONT");
            }
            Fault::Partition => {
                self.links.set_node(&node, false);
                self.count(fault);
                self.note(format!("{fault} {node}"));
                tokio::time::sleep(rng.millis(500, 2500)).await;
                self.links.set_node(&node, true);
            }
            Fault::OneWay => {
                let peers = self.links.peers_of(&node);
                let to = peers[rng.index(peers.len())].clone();
                self.links.set(&node, &to, false);
                self.count(fault);
                self.note(format!("{fault} {node}->{to}"));
                tokio::time::sleep(rng.millis(500, 2500)).await;
                self.links.set(&node, &to, true);
            }
        }
        self.note(format!("healed {fault} {node}"));
    }

    /// Whether the campaign has done enough.
    fn done(&self, settings: &Settings) -> bool {
        let elapsed = self.started.elapsed();
        if elapsed >= settings.max_duration {
            return true;
        }
        elapsed >= settings.min_duration
            && FAULTS
                .iter()
                .all(|&f| self.faults_of(f) >= settings.min_events_per_kind)
    }
}

/// Appends what a write cut short by a crash leaves at the end of the last
/// segment of `node_dir`'s WAL: a frame header cut short, or a whole header
/// (whose length and checksum no complete record matches) followed by
/// fewer payload bytes than it announces. Returns what it wrote.
fn tear_wal_tail(node_dir: &Path, rng: &mut SimRng) -> String {
    let wal = node_dir.join("data").join("wal");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&wal)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "wal"))
                .collect()
        })
        .unwrap_or_default();
    segments.sort();
    let Some(last) = segments.last() else {
        return format!("(no WAL segment in {})", wal.display());
    };
    let mut torn = Vec::new();
    if rng.below(2) == 0 {
        // A header cut short: 1 to 15 of its 16 bytes.
        let len = rng.between(1, 15);
        torn.extend((0..len).map(|_| random_byte(rng)));
    } else {
        let announced = u32::try_from(rng.between(64, 4096)).expect("below 4097");
        torn.extend_from_slice(&announced.to_le_bytes());
        torn.extend_from_slice(&rng.next_u64().to_le_bytes()[..4]);
        torn.extend_from_slice(&rng.next_u64().to_le_bytes());
        let written = rng.below(u64::from(announced));
        torn.extend((0..written).map(|_| random_byte(rng)));
    }
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(last)
        .expect("open the last WAL segment");
    file.write_all(&torn).expect("append a torn record");
    format!(
        "({} torn bytes after {})",
        torn.len(),
        last.file_name().unwrap_or_default().to_string_lossy()
    )
}

/// Where clients find the cluster, and the key that lets them in.
#[derive(Clone)]
struct Target {
    controllers: Vec<std::net::SocketAddr>,
    net: paxos_log::NetLimits,
}

fn random_byte(rng: &mut SimRng) -> u8 {
    rng.next_u64().to_le_bytes()[0]
}

/// A clerk of `target` whose operations give up after `deadline`.
fn clerk(target: &Target, deadline: Duration) -> Clerk {
    Clerk::new(
        target.controllers.clone(),
        ClerkOptions {
            deadline,
            net: target.net.clone(),
            ..ClerkOptions::new(controller::unique_client_id())
        },
    )
}

/// Runs `input` on `key` through `clerk`, recording it in `recorder`.
async fn record(
    clerk: &mut Clerk,
    recorder: &Recorder,
    client: u64,
    key: &[u8],
    input: KvInput,
) -> Option<KvOutput> {
    let pending = recorder.call(client, key.to_vec(), input.clone());
    let result: Result<KvOutput, ClerkError> = match input {
        KvInput::Get => clerk.get(key).await.map(KvOutput::Value),
        KvInput::Put(value) => clerk.put(key, &value).await.map(|()| KvOutput::Done),
        KvInput::Append(value) => clerk.append(key, &value).await.map(|()| KvOutput::Done),
        KvInput::Delete => clerk.delete(key).await.map(|()| KvOutput::Done),
        KvInput::Cas { expected, new } => {
            clerk
                .cas(key, expected.as_deref(), &new)
                .await
                .map(|r| KvOutput::Cas {
                    swapped: r.swapped,
                    current: r.current,
                })
        }
        KvInput::PutHash(value) => clerk.put_hash(key, &value).await.map(KvOutput::Previous),
    };
    match result {
        Ok(output) => {
            pending.returned(output.clone());
            Some(output)
        }
        Err(ClerkError::Indeterminate(_)) => {
            pending.indeterminate();
            None
        }
        Err(_) => {
            pending.failed();
            None
        }
    }
}

/// One mixed client: random operations on the shared keys until `stop`.
async fn mixed_client(
    target: Target,
    client: u64,
    mut rng: SimRng,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
) {
    let mut clerk = clerk(&target, OP_DEADLINE);
    // The last value this client saw per key: cas expects it, so that some
    // swaps succeed.
    let mut seen: BTreeMap<&str, Option<Vec<u8>>> = BTreeMap::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(rng.millis(20, 120)).await;
        let key = KEYS[rng.index(KEYS.len())];
        let value = format!("c{client}.{i}").into_bytes();
        i += 1;
        let input = match rng.below(100) {
            0..=29 => KvInput::Get,
            30..=44 => KvInput::Put(value),
            45..=59 => KvInput::Append(value),
            60..=79 => KvInput::Cas {
                expected: if rng.below(4) == 0 {
                    None
                } else {
                    seen.get(key).cloned().flatten()
                },
                new: value,
            },
            80..=92 => KvInput::PutHash(value),
            _ => KvInput::Delete,
        };
        match record(&mut clerk, &recorder, client, key.as_bytes(), input).await {
            Some(KvOutput::Value(v) | KvOutput::Previous(v)) => {
                seen.insert(key, v);
            }
            Some(KvOutput::Cas {
                swapped: false,
                current,
            }) => {
                seen.insert(key, current);
            }
            _ => {}
        }
    }
}

/// What a ledger client knows about its appends.
#[derive(Default)]
struct LedgerLog {
    acked: Vec<String>,
    unknown: Vec<String>,
}

/// One ledger client: appends unique items to the keys of the ledger
/// family `family` until `stop`; what it knows, per key.
async fn ledger_client(
    target: Target,
    client: u64,
    family: &'static str,
    stop: Arc<AtomicBool>,
) -> BTreeMap<String, LedgerLog> {
    let mut clerk = clerk(&target, OP_DEADLINE);
    let mut logs: BTreeMap<String, LedgerLog> = BTreeMap::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("{family}.{}", i / LEDGER_ITEMS_PER_KEY);
        let item = format!("L{client}.{i}");
        i += 1;
        let log = logs.entry(key.clone()).or_default();
        match clerk
            .append(key.as_bytes(), format!("{item},").as_bytes())
            .await
        {
            Ok(()) => log.acked.push(item),
            Err(ClerkError::Indeterminate(_)) => log.unknown.push(item),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    logs
}

/// Moves, splits, and makes a group leave and rejoin, until `stop`.
async fn admin_task(campaign: Arc<Campaign>, mut rng: SimRng, stop: Arc<AtomicBool>) {
    let mut left: Option<u64> = None;
    let mut splits = 0;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(rng.millis(1500, 3500)).await;
        let roll = rng.below(100);
        let args: Vec<String> = if let Some(gid) = left.filter(|_| roll < 50) {
            left = None;
            vec!["join".into(), gid.to_string()]
        } else if roll < 15 && left.is_none() {
            let gid = rng.between(1, 2);
            left = Some(gid);
            vec!["leave".into(), gid.to_string()]
        } else if roll < 30 && splits < 8 {
            splits += 1;
            // A split key from the printable range the keys live in.
            const FIRST: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
            let at = format!(
                "{}{}",
                char::from(FIRST[rng.index(FIRST.len())]),
                char::from(FIRST[10 + rng.index(FIRST.len() - 10)])
            );
            vec!["split".into(), at]
        } else {
            let config = campaign.kvctl(&["-o", "json", "admin", "config"]).await;
            let Ok(config) = serde_json::from_str::<Value>(stdout(&config).trim()) else {
                continue;
            };
            let shards = config["shards"].as_array().cloned().unwrap_or_default();
            if shards.is_empty() {
                continue;
            }
            let shard = &shards[rng.index(shards.len())];
            let to = if shard["gid"] == 1 { 2 } else { 1 };
            if left == Some(to) {
                continue;
            }
            vec!["move".into(), shard["id"].to_string(), to.to_string()]
        };
        let mut full = vec!["--timeout-ms", "10000", "admin"];
        full.extend(args.iter().map(String::as_str));
        let output = campaign.kvctl(&full).await;
        let mut journal = campaign.journal.lock().expect("journal");
        if output.status.success() {
            journal.admin_ok += 1;
            *journal.admin_ok_by_verb.entry(args[0].clone()).or_default() += 1;
        } else {
            journal.admin_failed += 1;
        }
        drop(journal);
        campaign.note(format!(
            "admin {} -> {}",
            args.join(" "),
            if output.status.success() {
                "ok"
            } else {
                "failed"
            }
        ));
    }
}

async fn run_campaign(settings: Settings) {
    let seed = settings.seed;
    eprintln!(
        "fault campaign, seed {seed:#x} (replay: SHARDKV_CAMPAIGN_SEED={seed:#x} cargo nextest \
         run -p tools --test fault_campaign)"
    );
    let mut rng = SimRng::new(seed);
    let cluster = TestCluster::init(&["--controllers", "3", "--groups", "2"]);
    let nodes = cluster.nodes();
    let links = Links::interpose(&cluster.dir, &nodes).await;
    cluster.start();
    let target = {
        let file = tools::cluster_file::ClusterFile::load(&cluster.file).expect("cluster file");
        Target {
            controllers: file.controller_addrs(),
            net: file.net(),
        }
    };
    let campaign = Arc::new(Campaign {
        cluster,
        links,
        nodes,
        started: Instant::now(),
        journal: Mutex::new(Journal::default()),
    });

    let recorder = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mixed: Vec<_> = (0..MIXED_CLIENTS)
        .map(|c| {
            tokio::spawn(mixed_client(
                target.clone(),
                c,
                SimRng::new(seed ^ (c + 1).wrapping_mul(0x0fed_cba9_8765_4321)),
                recorder.clone(),
                Arc::clone(&stop),
            ))
        })
        .collect();
    let ledgers: Vec<_> = (0..4u64)
        .map(|c| {
            let key = LEDGERS[(c % 2) as usize];
            tokio::spawn(ledger_client(
                target.clone(),
                100 + c,
                key,
                Arc::clone(&stop),
            ))
        })
        .collect();
    let admin = tokio::spawn(admin_task(
        Arc::clone(&campaign),
        SimRng::new(seed ^ 0xad_0000),
        Arc::clone(&stop),
    ));

    // The nemesis: one fault at a time, rounds of every kind in a random
    // order.
    'campaign: loop {
        let mut round = FAULTS;
        for i in (1..round.len()).rev() {
            round.swap(i, rng.index(i + 1));
        }
        for fault in round {
            if campaign.done(&settings) {
                break 'campaign;
            }
            tokio::time::sleep(rng.millis(200, 1000)).await;
            campaign.inject(fault, &mut rng).await;
        }
    }

    // Heal everything and let the clients see a calm cluster, then stop.
    campaign.links.heal();
    for node in &campaign.nodes {
        campaign.signal(node, "CONT");
    }
    campaign.restart_missing().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for client in mixed {
        client.await.expect("mixed client");
    }
    let mut ledger_logs: BTreeMap<String, LedgerLog> = BTreeMap::new();
    for client in ledgers {
        for (key, log) in client.await.expect("ledger client") {
            let entry = ledger_logs.entry(key).or_default();
            entry.acked.extend(log.acked);
            entry.unknown.extend(log.unknown);
        }
    }
    admin.await.expect("admin task");

    // Final reads, part of the history: the calm cluster must answer.
    let mut reader = clerk(&target, Duration::from_secs(30));
    let mut unavailable: Vec<String> = Vec::new();
    for key in KEYS {
        if record(&mut reader, &recorder, 999, key.as_bytes(), KvInput::Get)
            .await
            .is_none()
        {
            unavailable.push(key.to_string());
        }
    }
    let mut violations = Vec::new();
    for (key, log) in &ledger_logs {
        match reader.get(key.as_bytes()).await {
            Ok(value) => {
                violations.extend(check_ledger(key, log, value.unwrap_or_default()));
            }
            Err(_) => unavailable.push(key.clone()),
        }
    }
    for family in LEDGERS {
        let acked: usize = ledger_logs
            .iter()
            .filter(|(key, _)| key.starts_with(&format!("{family}.")))
            .map(|(_, log)| log.acked.len())
            .sum();
        if acked == 0 {
            violations.push(format!("no append to ledger {family} was acknowledged"));
        }
    }
    if !unavailable.is_empty() {
        violations.push(format!(
            "keys {unavailable:?} could not be read after every fault was healed"
        ));
    }

    let history = recorder.history();
    let checked = tokio::task::spawn_blocking(move || {
        let options = CheckOptions {
            hash: shardkv::hash::hash_bytes,
            max_steps_per_key: 20_000_000,
        };
        let verdict = check(&history, &options);
        let mut report = None;
        if let Verdict::NotLinearizable { key, .. } = &verdict {
            // Where the key's history first went wrong, for the report.
            let of_key: Vec<Operation> = history
                .iter()
                .filter(|op| &op.key == key)
                .cloned()
                .collect();
            report = shortest_failing_prefix(&of_key, &options).map(|prefix| {
                let shown = prefix.len().min(SHOWN_PREFIX_OPS);
                let ops: Vec<String> = prefix[prefix.len() - shown..]
                    .iter()
                    .map(|op| format!("  {op}"))
                    .collect();
                format!(
                    "the shortest failing prefix of key {}'s history: {} of its {} operations; \
                     the last {shown}:\n{}\nits verdict: {}",
                    String::from_utf8_lossy(key),
                    prefix.len(),
                    of_key.len(),
                    ops.join("\n"),
                    check(&prefix, &options)
                )
            });
        }
        (verdict, report, history)
    })
    .await
    .expect("checker");
    let (verdict, prefix_report, history) = checked;
    if !verdict.is_linearizable() {
        violations.push(verdict.to_string());
        violations.extend(prefix_report);
    }
    let torn_repairs = count_in_logs(&campaign, "cut off a torn record");
    let elections = count_in_logs(&campaign, "proposer: leader node=");
    let carried = campaign.links.carried();
    if carried == 0 {
        violations.push("no connection went through the link proxies".to_string());
    }
    let torn_by_node = campaign
        .journal
        .lock()
        .expect("journal")
        .torn_by_node
        .clone();
    for (node, injected) in &torn_by_node {
        let repaired = count_in_log(&campaign, node, "cut off a torn record");
        if repaired < *injected {
            violations.push(format!(
                "{node}: {injected} torn tails injected, only {repaired} cut off by recovery"
            ));
        }
    }
    violations.extend(every_replica_caught_up(&campaign).await);
    {
        let journal = campaign.journal.lock().expect("journal");
        if journal.restart_failures > 0 {
            violations.push(format!(
                "`cluster up` failed to bring nodes back {} times",
                journal.restart_failures
            ));
        }
        for verb in ["move", "split", "leave", "join"] {
            if journal.admin_ok_by_verb.get(verb).copied().unwrap_or(0) == 0 {
                violations.push(format!("no `admin {verb}` succeeded during the campaign"));
            }
        }
        for fault in FAULTS {
            let n = journal.faults.get(&fault).copied().unwrap_or(0);
            if n < settings.min_events_per_kind {
                violations.push(format!(
                    "only {n} {fault} faults in {:.0} s (at least {} wanted)",
                    campaign.started.elapsed().as_secs_f64(),
                    settings.min_events_per_kind
                ));
            }
        }
    }

    // The report.
    let ok = history
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Returned { .. }))
        .count();
    let indeterminate = history
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Indeterminate))
        .count();
    let journal = campaign.journal.lock().expect("journal");
    let faults: Vec<String> = FAULTS
        .iter()
        .map(|f| format!("{f}={}", journal.faults.get(f).copied().unwrap_or(0)))
        .collect();
    let appends: usize = ledger_logs.values().map(|l| l.acked.len()).sum();
    eprintln!(
        "campaign report: seed {seed:#x}, {:.0} s; operations: {ok} ok, {indeterminate} \
         indeterminate ({} recorded, failed ones dropped); ledger appends acknowledged: \
         {appends}; admin changes: {} ok, {} failed; faults: {}; torn tails cut off: \
         {torn_repairs}; leaders elected: {elections}; connections through the link \
         proxies: {carried}; violations: {}",
        campaign.started.elapsed().as_secs_f64(),
        history.len(),
        journal.admin_ok,
        journal.admin_failed,
        faults.join(" "),
        violations.len()
    );
    if !violations.is_empty() {
        eprintln!("faults and changes, in order:");
        for line in &journal.lines {
            eprintln!("  {line}");
        }
        panic!(
            "seed {seed:#x}: {} violation(s):\n{}",
            violations.len(),
            violations.join("\n")
        );
    }
    assert!(ok > 500, "too little load got through: {ok} operations");
}

/// Every node runs again and each replica set agrees on its applied slot
/// (the load has stopped): no node was left behind by the faults. The
/// problems found, if any, after waiting up to 60 s.
async fn every_replica_caught_up(campaign: &Campaign) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut problems = Vec::new();
        let output = campaign.kvctl(&["-o", "json", "cluster", "status"]).await;
        let status: Value = serde_json::from_str(stdout(&output).trim()).unwrap_or(Value::Null);
        let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
        if nodes.len() != campaign.nodes.len() {
            problems.push(format!("cluster status lists {} nodes", nodes.len()));
        }
        let mut slots: BTreeMap<String, Vec<(String, Option<u64>)>> = BTreeMap::new();
        for node in &nodes {
            let name = node["name"].as_str().unwrap_or("?").to_string();
            if !node["pid"].is_u64() {
                problems.push(format!("{name} is not running"));
            }
            let set = node["gid"]
                .as_u64()
                .map_or("controllers".to_string(), |g| g.to_string());
            slots
                .entry(set)
                .or_default()
                .push((name, node["applied_slot"].as_u64()));
        }
        for (set, replicas) in &slots {
            let highest = replicas.iter().filter_map(|(_, s)| *s).max();
            for (name, slot) in replicas {
                if *slot != highest {
                    problems.push(format!(
                        "{name} (of {set}) applied {slot:?}, its peers {highest:?}"
                    ));
                }
            }
        }
        if problems.is_empty() || Instant::now() >= deadline {
            return problems;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The lost-write check of one ledger key: every acknowledged append
/// there exactly once, nothing but acknowledged or unknown ones.
fn check_ledger(key: &str, log: &LedgerLog, value: Vec<u8>) -> Vec<String> {
    let text = String::from_utf8_lossy(&value).into_owned();
    let items: Vec<&str> = text.split_terminator(',').collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for item in &items {
        *counts.entry(item).or_default() += 1;
    }
    let mut violations = Vec::new();
    for item in &log.acked {
        match counts.get(item.as_str()) {
            None => violations.push(format!("{key}: acknowledged append {item} lost")),
            Some(&n) if n > 1 => {
                violations.push(format!("{key}: append {item} applied {n} times"));
            }
            _ => {}
        }
    }
    for (item, n) in &counts {
        let known = log.acked.iter().any(|a| a == item) || log.unknown.iter().any(|u| u == item);
        if !known {
            violations.push(format!("{key}: {item} was never appended"));
        } else if *n > 1 && !log.acked.iter().any(|a| a == item) {
            violations.push(format!("{key}: append {item} applied {n} times"));
        }
    }
    violations
}

/// How many lines of `node`'s log contain `needle`.
fn count_in_log(campaign: &Campaign, node: &str, needle: &str) -> u64 {
    let log = std::fs::read_to_string(campaign.cluster.dir.join(node).join("kvd.log"))
        .unwrap_or_default();
    log.lines().filter(|l| l.contains(needle)).count() as u64
}

/// How many lines of the nodes' logs contain `needle`.
fn count_in_logs(campaign: &Campaign, needle: &str) -> u64 {
    campaign
        .nodes
        .iter()
        .map(|node| {
            let log = std::fs::read_to_string(campaign.cluster.dir.join(node).join("kvd.log"))
                .unwrap_or_default();
            log.lines().filter(|l| l.contains(needle)).count() as u64
        })
        .sum()
}
