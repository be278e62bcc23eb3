//! Configurations survive SIGKILL of any replica, of the leader, and of all
//! three replicas at once: three real `ControllerServer` processes on
//! loopback, killed with `Child::kill()` (SIGKILL) while a `ControllerClerk`
//! runs a series of changes, and restarted on the same ports and data
//! directories.
//!
//! The replicas are this same test binary, re-executed with `--exact
//! sigkill_replica_child --ignored` and told their node id, the members'
//! addresses and their data directory through environment variables; that
//! works under both `cargo test` and `cargo nextest run`. A replica runs
//! until it is killed, its parent goes away (its stdin closes), or 60 s
//! pass. Every wait of the parent is bounded, and every child is killed and
//! reaped on every path out of the test, panics included ([`ChildGuard`]).
//!
//! Ports: the parent binds six `127.0.0.1:0` listeners, reads their ports and
//! closes them before the children bind the same ports. Another process
//! could take one of them in between; a child then fails to bind (after
//! retrying for 10 s) and the test fails saying so. Loopback ephemeral ports
//! are rarely reused that fast, so the race is accepted.
//!
//! What is checked, after the series and one more kill of all three: the
//! history read back through linearizable queries is exactly what the
//! clerk's replies said. Replaying, on a pure `Controller`, the changes the
//! clerk reported as successful (in order, at the config numbers their
//! replies named) gives every configuration of the history, groups, shards
//! and owners included, with nothing left over: no acknowledged change was
//! lost and none was applied twice. A change the clerk reported as
//! indeterminate (rare: its deadline is longer than any outage here) may
//! account for at most one configuration, right where the history shows it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use controller::{
    ClerkError, ClerkOptions, ConfigNum, Configuration, Controller, ControllerClerk,
    ControllerListeners, ControllerOp, ControllerReply, ControllerServer, ControllerServerConfig,
    Gid, MemberAddrs,
};
use paxos_log::{DriverOptions, NodeId};
use tempfile::TempDir;

mod common;
use common::{net, node_id, reply_num, seed_from_env, RandomOps, SeedReport, SplitMix64};

const PARENT_TEST: &str = "configurations_survive_sigkill_of_any_or_all_replicas";
const CHILD_TEST: &str = "sigkill_replica_child";
const NODE_ENV: &str = "CONTROLLER_SIGKILL_NODE_ID";
const MEMBERS_ENV: &str = "CONTROLLER_SIGKILL_MEMBERS";
const DIR_ENV: &str = "CONTROLLER_SIGKILL_DATA_DIR";
const SEED_ENV: &str = "CONTROLLER_SIGKILL_SEED";

const REPLICAS: usize = 3;
const GROUP: u64 = 0x51_6b;
const SHARDS: u32 = 10;
/// A child that was not killed exits after this long anyway.
const CHILD_LIFETIME: Duration = Duration::from_secs(60);
/// How long a child may take to start serving.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a killed child may take to be reaped.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the clerk may take for its next few changes.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(20);
/// Kill rounds while the clerk runs; one of them kills all three.
const ROUNDS: usize = 12;
const ALL_AT_ONCE_ROUND: usize = 6;
/// Changes the clerk must complete between two kills.
const CHANGES_BETWEEN_KILLS: u64 = 3;
/// A bound on the clerk's changes; pacing keeps it well below.
const CHANGES_MAX: u64 = 1000;

// ---------------------------------------------------------------------------
// Shared by parent and child.

fn driver() -> DriverOptions {
    DriverOptions {
        tick: Duration::from_millis(10),
        request_timeout: Duration::from_secs(2),
        // Snapshots (and log compaction) every few changes, so restarts
        // also recover from snapshots, not only from the WAL.
        snapshot_every_slots: 16,
        ..DriverOptions::default()
    }
}

/// `1=peer/client;2=peer/client;...`
fn encode_members(members: &BTreeMap<NodeId, MemberAddrs>) -> String {
    members
        .iter()
        .map(|(id, addrs)| format!("{}={}/{}", id.0, addrs.peer, addrs.client))
        .collect::<Vec<_>>()
        .join(";")
}

fn decode_members(text: &str) -> BTreeMap<NodeId, MemberAddrs> {
    text.split(';')
        .map(|member| {
            let (id, addrs) = member.split_once('=').expect("id=peer/client");
            let (peer, client) = addrs.split_once('/').expect("peer/client");
            (
                NodeId(id.parse().expect("node id")),
                MemberAddrs {
                    peer: peer.parse().expect("peer address"),
                    client: client.parse().expect("client address"),
                },
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The child: one replica.

/// One controller replica on fixed addresses, until killed.
#[test]
#[ignore = "run by configurations_survive_sigkill_of_any_or_all_replicas as a child process"]
fn sigkill_replica_child() {
    let (Some(id), Some(members), Some(dir)) = (
        std::env::var_os(NODE_ENV),
        std::env::var_os(MEMBERS_ENV),
        std::env::var_os(DIR_ENV),
    ) else {
        panic!(
            "{CHILD_TEST} is the child half of {PARENT_TEST} and needs {NODE_ENV}, \
             {MEMBERS_ENV} and {DIR_ENV}; run {PARENT_TEST} instead"
        )
    };
    let id = NodeId(
        id.to_str()
            .and_then(|id| id.parse().ok())
            .expect("numeric node id"),
    );
    let members = decode_members(members.to_str().expect("members are UTF-8"));
    let dir = PathBuf::from(dir);
    // libtest has printed "test sigkill_replica_child ... " without a
    // newline: end that line so that ours start at the beginning of one.
    println!();

    // The parent holds our stdin open. If it goes away without killing us
    // (it was killed itself), stdin closes: stop rather than linger.
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buffer = [0u8; 64];
        while matches!(stdin.read(&mut buffer), Ok(n) if n > 0) {}
        eprintln!("replica {id}: the parent closed stdin; exiting");
        std::process::exit(0);
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let addrs = members[&id];
        let config = ControllerServerConfig {
            driver: driver(),
            net: net(),
            ..ControllerServerConfig::new(id, members, dir, SHARDS, GROUP)
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let listeners = loop {
            match ControllerListeners::bind(addrs, &net()).await {
                Ok(listeners) => break listeners,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("replica {id}: binding {addrs:?}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!(
                    "replica {id} cannot bind {addrs:?}: {e} (another process may have taken a \
                     port the parent picked and released)"
                ),
            }
        };
        let server = ControllerServer::start_with_listeners(config, listeners)
            .await
            .expect("replica starts");
        println!("ready {}", id.0);
        tokio::time::sleep(CHILD_LIFETIME).await;
        eprintln!("replica {id}: not killed within {CHILD_LIFETIME:?}; exiting");
        server.shutdown().await;
    });
}

// ---------------------------------------------------------------------------
// The parent's side of the children.

/// A running child; killed and reaped when dropped, on every path out of the
/// parent, panics included.
struct ChildGuard {
    child: Child,
    /// The child's stdout, line by line.
    lines: mpsc::Receiver<String>,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChildGuard {
    /// SIGKILLs the child without waiting.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL a replica");
    }

    /// Waits (bounded) for the killed child to exit.
    fn reap(mut self, id: NodeId) -> ExitStatus {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for a replica") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "replica {id} did not exit within {EXIT_TIMEOUT:?} of SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Sends each stdout line of a child to the returned receiver; the thread
/// ends when the child dies (EOF) or the receiver is gone.
fn read_lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Copies a child's stderr into the parent's (captured) test output.
fn forward_stderr(id: NodeId, stderr: ChildStderr) {
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("[replica {id}] {line}");
        }
    });
}

/// The three replica processes, their addresses and data directories.
struct Replicas {
    exe: PathBuf,
    members: BTreeMap<NodeId, MemberAddrs>,
    dirs: Vec<TempDir>,
    children: Vec<Option<ChildGuard>>,
    starts: u64,
}

impl Replicas {
    /// Picks six free loopback ports (see the module docs for the race) and
    /// three data directories; starts nothing.
    fn new() -> Replicas {
        let listeners: Vec<TcpListener> = (0..2 * REPLICAS)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
            .collect();
        let ports: Vec<SocketAddr> = listeners
            .iter()
            .map(|listener| listener.local_addr().expect("local address"))
            .collect();
        drop(listeners);
        let members = (0..REPLICAS)
            .map(|i| {
                (
                    node_id(i),
                    MemberAddrs {
                        peer: ports[2 * i],
                        client: ports[2 * i + 1],
                    },
                )
            })
            .collect();
        Replicas {
            exe: std::env::current_exe().expect("the test binary's path"),
            members,
            dirs: (0..REPLICAS)
                .map(|_| TempDir::new().expect("temp dir"))
                .collect(),
            children: (0..REPLICAS).map(|_| None).collect(),
            starts: 0,
        }
    }

    fn client_addrs(&self) -> Vec<SocketAddr> {
        self.members.values().map(|addrs| addrs.client).collect()
    }

    fn index_of_client(&self, addr: SocketAddr) -> Option<usize> {
        self.members.values().position(|addrs| addrs.client == addr)
    }

    /// Starts replica `i` (on its ports and directory) without waiting.
    fn spawn(&mut self, i: usize) {
        assert!(self.children[i].is_none(), "replica {i} is running");
        let id = node_id(i);
        let mut child = Command::new(&self.exe)
            .args([
                "--exact",
                CHILD_TEST,
                "--nocapture",
                "--ignored",
                "--test-threads=1",
            ])
            .env(NODE_ENV, id.0.to_string())
            .env(MEMBERS_ENV, encode_members(&self.members))
            .env(DIR_ENV, self.dirs[i].path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn a replica");
        let lines = read_lines(child.stdout.take().expect("piped stdout"));
        forward_stderr(id, child.stderr.take().expect("piped stderr"));
        self.children[i] = Some(ChildGuard { child, lines });
        self.starts += 1;
    }

    /// Waits (bounded) until replica `i` says it serves.
    fn wait_ready(&mut self, i: usize) {
        let id = node_id(i);
        let ready = format!("ready {}", id.0);
        let guard = self.children[i].as_mut().expect("replica was spawned");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match guard.lines.recv_timeout(left) {
                Ok(line) if line == ready => return,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("replica {id} did not start within {READY_TIMEOUT:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = guard.child.wait().expect("wait for a replica");
                    panic!("replica {id} exited ({status}) before serving; see its output above")
                }
            }
        }
    }

    /// SIGKILLs every replica in `victims` at once, then reaps them all.
    fn kill(&mut self, victims: &[usize]) {
        let mut killed = Vec::new();
        for &i in victims {
            let mut guard = self.children[i].take().expect("replica is running");
            guard.kill();
            killed.push((i, guard));
        }
        for (i, guard) in killed {
            let status = guard.reap(node_id(i));
            assert!(
                !status.success(),
                "replica {} exited cleanly instead of being killed: {status}",
                node_id(i)
            );
        }
    }

    /// Starts every replica in `which` and waits until all serve.
    fn restart(&mut self, which: &[usize]) {
        for &i in which {
            self.spawn(i);
        }
        for &i in which {
            self.wait_ready(i);
        }
    }
}

// ---------------------------------------------------------------------------
// The clerk.

/// One change the clerk sent and what it said.
#[derive(Debug)]
struct Entry {
    op: ControllerOp,
    result: Result<ControllerReply, ClerkError>,
    /// How long the clerk took (a change that spanned a kill takes longer).
    took: Duration,
}

/// What the clerk task shares with the kill loop.
#[derive(Debug, Default)]
struct Progress {
    /// Changes finished (whatever the outcome).
    done: AtomicU64,
    /// Set when the kills are over: finish soon.
    stop: AtomicBool,
    /// The replica that answered the clerk last (the leader, then).
    leader: Mutex<Option<SocketAddr>>,
}

fn clerk_options(client_id: u64) -> ClerkOptions {
    ClerkOptions {
        // Longer than any outage here (a restart of all three replicas), so
        // changes get a definite answer rather than an indeterminate one.
        deadline: Duration::from_secs(30),
        rpc_timeout: Duration::from_secs(3),
        backoff_max: Duration::from_millis(200),
        net: net(),
        ..ClerkOptions::new(client_id)
    }
}

/// Joins, leaves, splits and moves, one at a time, until told to stop.
/// Only gids whose Join certainly took effect (and whose Leave was not
/// attempted) are used later, so every change is valid whatever happened to
/// an indeterminate one.
async fn run_clerk(addrs: Vec<SocketAddr>, seed: u64, progress: Arc<Progress>) -> Vec<Entry> {
    let mut rng = SplitMix64(seed);
    let mut clerk = ControllerClerk::new(addrs, clerk_options(1));
    let mut joined: BTreeSet<Gid> = BTreeSet::new();
    let mut ops = RandomOps {
        next_gid: 1,
        max_joined: 5,
        shards: SHARDS,
    };
    let mut entries = Vec::new();
    for n in 0..CHANGES_MAX {
        if progress.stop.load(Ordering::Relaxed) {
            break;
        }
        let op = ops.next(&mut rng, &joined, format!("key-{n:04}").into_bytes());
        let sent = Instant::now();
        let result = clerk.change(op.clone()).await;
        let took = sent.elapsed();
        match &op {
            ControllerOp::Join { groups } if result.is_ok() => joined.extend(groups.keys()),
            // Gone, or perhaps gone: not used again either way.
            ControllerOp::Leave { gids } => gids.iter().for_each(|gid| {
                joined.remove(gid);
            }),
            _ => {}
        }
        entries.push(Entry { op, result, took });
        *progress.leader.lock().unwrap() = clerk.leader();
        progress.done.fetch_add(1, Ordering::Relaxed);
        // Paced, so the changes spread over the whole kill schedule.
        tokio::time::sleep(rng.millis(5, 40)).await;
    }
    entries
}

/// Every configuration, 0 to the latest, through linearizable queries of a
/// fresh clerk.
async fn read_history(addrs: Vec<SocketAddr>) -> Vec<Configuration> {
    let mut clerk = ControllerClerk::new(addrs, clerk_options(2));
    let latest = clerk.query(None).await.expect("query the latest").num;
    let mut history = Vec::new();
    for num in 0..=latest {
        let config = clerk.query(Some(num)).await.expect("historical query");
        assert_eq!(
            config.num, num,
            "query {num} answered another configuration"
        );
        history.push(config);
    }
    history
}

// ---------------------------------------------------------------------------
// Checks.

/// Brings `model` up to configuration `upto` with indeterminate changes
/// from `pending` (in order): exactly `upto - latest` of them took effect,
/// each matching the next configuration of `history`. The rest never will
/// (a later change of the same clerk was applied, or none follows).
fn resolve(
    model: &mut Controller,
    pending: &mut Vec<ControllerOp>,
    history: &[Configuration],
    upto: ConfigNum,
) -> u64 {
    let mut need = upto.checked_sub(model.latest_num()).unwrap_or_else(|| {
        panic!(
            "a change was acknowledged as configuration {} although {} already existed",
            upto + 1,
            model.latest_num()
        )
    });
    let mut applied = 0;
    let ops = std::mem::take(pending);
    let mut left = u64::try_from(ops.len()).expect("count fits u64");
    for op in ops {
        if need == 0 {
            break;
        }
        let next = usize::try_from(model.latest_num() + 1).expect("fits usize");
        let took_effect = need == left || {
            let mut trial = model.clone();
            reply_num(&trial.apply(&op)).is_some() && history.get(next) == Some(&trial.latest())
        };
        if took_effect {
            let reply = model.apply(&op);
            assert!(
                reply_num(&reply).is_some(),
                "indeterminate change {op:?} would have been refused: {reply:?}"
            );
            applied += 1;
            need -= 1;
        }
        left -= 1;
    }
    assert_eq!(
        need, 0,
        "configurations up to {upto} hold changes nobody acknowledged (applied twice?)"
    );
    applied
}

/// What [`verify`] found.
#[derive(Debug, Default)]
struct Outcome {
    succeeded: u64,
    indeterminate: u64,
    indeterminate_applied: u64,
    unavailable: u64,
}

/// The history is exactly the clerk's acknowledged changes (see the module
/// docs).
fn verify(entries: &[Entry], history: &[Configuration]) -> Outcome {
    let mut outcome = Outcome::default();
    let mut model = Controller::new(SHARDS).expect("valid shard count");
    let mut pending = Vec::new();
    let mut last_num = 0;
    for entry in entries {
        match &entry.result {
            Ok(reply) => {
                let num =
                    reply_num(reply).unwrap_or_else(|| panic!("{:?} answered {reply:?}", entry.op));
                assert!(
                    num > last_num,
                    "{:?} acknowledged as configuration {num} after {last_num}",
                    entry.op
                );
                last_num = num;
                outcome.indeterminate_applied +=
                    resolve(&mut model, &mut pending, history, num - 1);
                let replayed = model.apply(&entry.op);
                assert_eq!(
                    &replayed, reply,
                    "replaying {:?} on a pure controller",
                    entry.op
                );
                outcome.succeeded += 1;
            }
            Err(ClerkError::Indeterminate(cause)) => {
                eprintln!("indeterminate change {:?}: {cause}", entry.op);
                pending.push(entry.op.clone());
                outcome.indeterminate += 1;
            }
            // Certainly not applied.
            Err(ClerkError::Unavailable(cause)) => {
                eprintln!("unavailable for change {:?}: {cause}", entry.op);
                outcome.unavailable += 1;
            }
            Err(error) => panic!("the clerk's valid change {:?} failed: {error}", entry.op),
        }
    }
    let latest = history.last().expect("configuration 0 at least").num;
    outcome.indeterminate_applied += resolve(&mut model, &mut pending, history, latest);
    assert_eq!(
        model.latest_num(),
        latest,
        "configurations after the last change"
    );
    for config in history {
        assert_eq!(
            model.config(config.num).as_ref(),
            Some(config),
            "configuration {} differs from the clerk's acknowledged changes",
            config.num
        );
    }
    outcome
}

// ---------------------------------------------------------------------------
// The parent.

/// Waits (bounded) until the clerk finished `target` changes; surfaces a
/// clerk task that ended early.
fn wait_for_changes(progress: &Progress, clerk: &tokio::task::JoinHandle<Vec<Entry>>, target: u64) {
    let deadline = Instant::now() + PROGRESS_TIMEOUT;
    while progress.done.load(Ordering::Relaxed) < target {
        assert!(
            !clerk.is_finished(),
            "the clerk task ended after {} changes",
            progress.done.load(Ordering::Relaxed)
        );
        assert!(
            Instant::now() < deadline,
            "the clerk finished only {} of {target} changes within {PROGRESS_TIMEOUT:?}",
            progress.done.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn configurations_survive_sigkill_of_any_or_all_replicas() {
    let started = Instant::now();
    let seed = seed_from_env(SEED_ENV);
    let _report = SeedReport {
        name: PARENT_TEST.to_string(),
        env: SEED_ENV,
        seed,
    };
    eprintln!("{PARENT_TEST}: {SEED_ENV}={seed}");
    let mut rng = SplitMix64(seed);
    let mut replicas = Replicas::new();
    let all: Vec<usize> = (0..REPLICAS).collect();
    replicas.restart(&all);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let progress = Arc::new(Progress::default());
    let clerk = runtime.spawn(run_clerk(
        replicas.client_addrs(),
        rng.next_u64(),
        Arc::clone(&progress),
    ));

    let (mut kills, mut leader_kills) = (0, 0);
    for round in 0..ROUNDS {
        let done = progress.done.load(Ordering::Relaxed);
        wait_for_changes(&progress, &clerk, done + CHANGES_BETWEEN_KILLS);
        std::thread::sleep(rng.millis(0, 200));
        let leader = progress
            .leader
            .lock()
            .unwrap()
            .and_then(|addr| replicas.index_of_client(addr));
        let victims = if round == ALL_AT_ONCE_ROUND {
            all.clone()
        } else if round % 2 == 0 {
            vec![leader.unwrap_or_else(|| rng.index(REPLICAS))]
        } else {
            vec![rng.index(REPLICAS)]
        };
        if leader.is_some_and(|leader| victims.contains(&leader)) {
            leader_kills += 1;
        }
        kills += victims.len();
        replicas.kill(&victims);
        std::thread::sleep(rng.millis(0, 300));
        replicas.restart(&victims);
    }
    let done = progress.done.load(Ordering::Relaxed);
    wait_for_changes(&progress, &clerk, done + CHANGES_BETWEEN_KILLS);
    progress.stop.store(true, Ordering::Relaxed);
    let entries = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(40), clerk).await })
        .expect("the clerk finished within 40 s of being told to stop")
        .expect("clerk task");

    // All three die once more after the last change; then read back.
    replicas.kill(&all);
    kills += REPLICAS;
    replicas.restart(&all);
    let history = runtime
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(40),
                read_history(replicas.client_addrs()),
            )
            .await
        })
        .expect("the history was read within 40 s");
    let outcome = verify(&entries, &history);
    let slow = entries
        .iter()
        .filter(|entry| entry.took >= Duration::from_millis(100))
        .count();
    let slowest = entries
        .iter()
        .map(|entry| entry.took)
        .max()
        .unwrap_or_default();
    let snapshots: usize = replicas
        .dirs
        .iter()
        .map(|dir| std::fs::read_dir(dir.path().join("snap")).map_or(0, |entries| entries.count()))
        .sum();
    eprintln!(
        "{PARENT_TEST}: {} changes sent, {outcome:?}, {} configurations; {slow} changes took \
         100 ms or more (slowest {slowest:?}); {kills} SIGKILLs ({leader_kills} rounds hit the \
         leader, one round and the end killed all three), {} replica starts, {snapshots} files \
         in the snapshot directories, {:?}",
        entries.len(),
        history.len(),
        replicas.starts,
        started.elapsed()
    );
    assert!(
        outcome.succeeded >= CHANGES_BETWEEN_KILLS * u64::try_from(ROUNDS).unwrap(),
        "too few changes succeeded: {outcome:?}"
    );
    assert!(leader_kills >= 1, "no round killed the leader");
}
