//! Acknowledged writes survive SIGKILL of a random replica group member
//! every second while the shards migrate between groups all the time: the
//! group replicas are real processes, killed with `Child::kill()` (SIGKILL)
//! and restarted on the same ports and data directories.
//!
//! Processes: the controller group (one replica) runs inside the test
//! process, on loopback, and is never killed. Each of the [`GROUPS`] replica
//! groups has [`REPLICAS`] replicas, each a child process: this same test
//! binary, re-executed with `--exact shardkv_sigkill_replica_child
//! --ignored` and told its gid, node id, the group's members, its data
//! directory and the controller's addresses through environment variables
//! (that works under both `cargo test` and `cargo nextest run`). A replica
//! runs `ShardKvServer::start` with a small `snapshot_every_slots`, so
//! snapshots and log compaction happen between the kills, and prints
//! `ready` once serving. It runs until it is killed, its parent goes away
//! (its stdin closes) or [`CHILD_LIFETIME`] passes. Every wait of the parent
//! is bounded, and every child is killed and reaped on every path out of
//! the test, panics included ([`ChildGuard`]).
//!
//! Ports: the parent picks a free loopback port for every replica's peer
//! and client address below the kernel's ephemeral range
//! (`tests::ports`), where no client connection can take one while its
//! replica is down. Another test could still draw the same port; the child
//! then fails to bind (after retrying for 10 s) and the test fails saying
//! so.
//!
//! Load, for [`LOAD`]: [`CLERKS`] clerks (unique client ids) append unique
//! tokens (`<client>.<n>;`) to their own keys, one key in each pre-split
//! shard, recording which appends were acknowledged, which indeterminate
//! and which certainly not applied; every few operations a clerk reads one
//! of its keys back and checks it against its own record so far. A
//! reconfiguration task joins, leaves (never the last group) and moves
//! shards every 0.5-1 s, so most kills land in the middle of a migration.
//! A killer (the test's main thread) SIGKILLs one random replica every
//! second (seeded splitmix64; the seed is printed and
//! `SHARDKV_SIGKILL_SEED` replays the same choices, though not the same
//! thread scheduling) and restarts it 100-500 ms later, waiting until it
//! serves before the next kill, so a group never loses more than one
//! replica at a time.
//!
//! Checks, once the kills and reconfigurations stop and every group has
//! settled at the latest configuration (asked through each replica's
//! `status` RPC: every replica at that configuration, no shard arriving or
//! waiting for its old copy to be deleted, no storage failure; and every
//! shard served by exactly the group the configuration gives it to): each
//! key's value is exactly its client's acknowledged tokens in the order
//! they were acknowledged, with indeterminate ones at most once each and in
//! their place, and nothing else. No acknowledged token is lost, none is
//! applied twice, none appears out of order, and no write reported as not
//! applied appears.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use controller::{
    ClerkError as AdminError, ClerkOptions as AdminOptions, Configuration, ControllerClerk,
    ControllerListeners, ControllerOp, ControllerServer, ControllerServerConfig, Gid, MemberAddrs,
};
use paxos_log::{DriverOptions, NetLimits, NodeId};
use shardkv::migration::MigrationOptions;
use shardkv::rpc::ReplicaStatus;
use shardkv::server::ServerError;
use shardkv::{Clerk, ClerkError, ClerkOptions, ShardKvServer, ShardKvServerConfig};
use tempfile::TempDir;
use tests::paxos_sim::SimRng;
use tests::ports::restartable_addr;

const PARENT_TEST: &str =
    "acknowledged_writes_survive_sigkill_of_random_replicas_during_migrations";
const CHILD_TEST: &str = "shardkv_sigkill_replica_child";
const GID_ENV: &str = "SHARDKV_SIGKILL_GID";
const NODE_ENV: &str = "SHARDKV_SIGKILL_NODE_ID";
const MEMBERS_ENV: &str = "SHARDKV_SIGKILL_MEMBERS";
const DIR_ENV: &str = "SHARDKV_SIGKILL_DATA_DIR";
const CONTROLLERS_ENV: &str = "SHARDKV_SIGKILL_CONTROLLERS";
const SEED_ENV: &str = "SHARDKV_SIGKILL_SEED";

/// Replica groups (gids 1 to `GROUPS`).
const GROUPS: u64 = 3;
/// Replicas per group.
const REPLICAS: usize = 3;
/// Pre-split shards of configuration 0.
const SHARDS: u32 = 10;
/// Clerks appending at once.
const CLERKS: u64 = 4;
/// The controller group's id on the peer transport.
const CONTROLLER_GROUP: u64 = 0;
/// How long the kills, the reconfigurations and the load go on.
const LOAD: Duration = Duration::from_secs(12);
/// One kill per this long.
const KILL_EVERY: Duration = Duration::from_secs(1);
/// A clerk reads one of its keys back every this many operations.
const GET_EVERY: u64 = 8;
/// A child that was not killed exits after this long anyway.
const CHILD_LIFETIME: Duration = Duration::from_secs(120);
/// How long a child may take to start serving.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a killed child may take to be reaped.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the clerks and the reconfiguration task may take to finish
/// once told to stop (a clerk's deadline is 15 s).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(40);
/// How long the groups may take to settle at the latest configuration.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long reading every key back after settling may take.
const FINAL_READS_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one status call may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------
// Shared by parent and child.

/// Network limits: the defaults, except that a restarted replica is
/// reconnected to quickly.
fn net() -> NetLimits {
    NetLimits {
        backoff_max: Duration::from_millis(100),
        ..NetLimits::default()
    }
}

fn driver() -> DriverOptions {
    DriverOptions {
        tick: Duration::from_millis(10),
        request_timeout: Duration::from_secs(2),
        // Snapshots (and log compaction) every couple of seconds of load, so
        // restarts also recover from snapshots, not only from the WAL.
        snapshot_every_slots: 200,
        ..DriverOptions::default()
    }
}

fn migration() -> MigrationOptions {
    MigrationOptions {
        poll_interval: Duration::from_millis(20),
        rpc_timeout: Duration::from_secs(1),
    }
}

/// The id of replica `index` (0-based): `index + 1`.
fn node_id(index: usize) -> NodeId {
    NodeId(u64::try_from(index).expect("index fits u64") + 1)
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
// The child: one replica of one group.

/// One shardkv replica on fixed addresses, until killed.
#[test]
#[ignore = "run by acknowledged_writes_survive_sigkill_of_random_replicas_during_migrations as a child process"]
fn shardkv_sigkill_replica_child() {
    let (Some(gid), Some(id), Some(members), Some(dir), Some(controllers)) = (
        std::env::var_os(GID_ENV),
        std::env::var_os(NODE_ENV),
        std::env::var_os(MEMBERS_ENV),
        std::env::var_os(DIR_ENV),
        std::env::var_os(CONTROLLERS_ENV),
    ) else {
        panic!(
            "{CHILD_TEST} is the child half of {PARENT_TEST} and needs {GID_ENV}, {NODE_ENV}, \
             {MEMBERS_ENV}, {DIR_ENV} and {CONTROLLERS_ENV}; run {PARENT_TEST} instead"
        )
    };
    let gid: Gid = gid
        .to_str()
        .and_then(|gid| gid.parse().ok())
        .expect("numeric gid");
    let id = NodeId(
        id.to_str()
            .and_then(|id| id.parse().ok())
            .expect("numeric node id"),
    );
    let members = decode_members(members.to_str().expect("members are UTF-8"));
    let controllers: Vec<SocketAddr> = controllers
        .to_str()
        .expect("controllers are UTF-8")
        .split(',')
        .map(|addr| addr.parse().expect("controller address"))
        .collect();
    let dir = PathBuf::from(dir);
    // libtest has printed "test shardkv_sigkill_replica_child ... " without
    // a newline: end that line so that ours start at the beginning of one.
    println!();

    // The parent holds our stdin open. If it goes away without killing us
    // (it was killed itself), stdin closes: stop rather than linger.
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buffer = [0u8; 64];
        while matches!(stdin.read(&mut buffer), Ok(n) if n > 0) {}
        eprintln!("g{gid}/{id}: the parent closed stdin; exiting");
        std::process::exit(0);
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let config = ShardKvServerConfig {
            migration: migration(),
            driver: driver(),
            net: net(),
            ..ShardKvServerConfig::new(id, gid, members.clone(), dir, controllers)
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let server = loop {
            match ShardKvServer::start(config.clone()).await {
                Ok(server) => break server,
                Err(ServerError::Bind(e)) if Instant::now() < deadline => {
                    eprintln!("g{gid}/{id}: binding {:?}: {e}; retrying", members[&id]);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(ServerError::Bind(e)) => panic!(
                    "g{gid}/{id} cannot bind {:?}: {e} (another process may have taken a port \
                     the parent picked and released)",
                    members[&id]
                ),
                Err(e) => panic!("g{gid}/{id} does not start: {e}"),
            }
        };
        println!("ready {gid} {}", id.0);
        tokio::time::sleep(CHILD_LIFETIME).await;
        eprintln!("g{gid}/{id}: not killed within {CHILD_LIFETIME:?}; exiting");
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
    /// SIGKILLs the child and waits (bounded) for it to exit.
    fn kill_and_reap(mut self, name: &str) -> ExitStatus {
        self.child.kill().expect("SIGKILL a replica");
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for a replica") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "replica {name} did not exit within {EXIT_TIMEOUT:?} of SIGKILL"
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
fn forward_stderr(name: String, stderr: ChildStderr) {
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("[{name}] {line}");
        }
    });
}

/// One replica group's processes, addresses and data directories.
struct GroupProcs {
    members: BTreeMap<NodeId, MemberAddrs>,
    dirs: Vec<TempDir>,
    children: Vec<Option<ChildGuard>>,
}

impl GroupProcs {
    /// The client addresses, as the controller lists them.
    fn client_addrs(&self) -> Vec<String> {
        self.members
            .values()
            .map(|addrs| addrs.client.to_string())
            .collect()
    }
}

/// Every replica process of every group.
struct Replicas {
    exe: PathBuf,
    controllers: Vec<SocketAddr>,
    groups: BTreeMap<Gid, GroupProcs>,
    starts: u64,
}

impl Replicas {
    /// Picks two free loopback ports per replica (see the module docs for
    /// the race) and a data directory each; starts nothing.
    fn new(controllers: Vec<SocketAddr>) -> Replicas {
        let per_group = 2 * REPLICAS;
        let count = usize::try_from(GROUPS).expect("fits usize") * per_group;
        // Below the ephemeral range, so that no client connection takes a
        // port while its replica is down (tests::ports).
        let ports: Vec<SocketAddr> = (0..count).map(|_| restartable_addr()).collect();
        let groups = (1..=GROUPS)
            .zip(ports.chunks(per_group))
            .map(|(gid, ports)| {
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
                let procs = GroupProcs {
                    members,
                    dirs: (0..REPLICAS)
                        .map(|_| TempDir::new().expect("temp dir"))
                        .collect(),
                    children: (0..REPLICAS).map(|_| None).collect(),
                };
                (gid, procs)
            })
            .collect();
        Replicas {
            exe: std::env::current_exe().expect("the test binary's path"),
            controllers,
            groups,
            starts: 0,
        }
    }

    /// Starts replica `i` of group `gid` (on its ports and directory)
    /// without waiting.
    fn spawn(&mut self, gid: Gid, i: usize) {
        let group = self.groups.get_mut(&gid).expect("known group");
        assert!(
            group.children[i].is_none(),
            "replica {i} of g{gid} is running"
        );
        let id = node_id(i);
        let controllers = self
            .controllers
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut child = Command::new(&self.exe)
            .args([
                "--exact",
                CHILD_TEST,
                "--nocapture",
                "--ignored",
                "--test-threads=1",
            ])
            .env(GID_ENV, gid.to_string())
            .env(NODE_ENV, id.0.to_string())
            .env(MEMBERS_ENV, encode_members(&group.members))
            .env(DIR_ENV, group.dirs[i].path())
            .env(CONTROLLERS_ENV, controllers)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn a replica");
        let lines = read_lines(child.stdout.take().expect("piped stdout"));
        forward_stderr(
            format!("g{gid}/n{}", id.0),
            child.stderr.take().expect("piped stderr"),
        );
        group.children[i] = Some(ChildGuard { child, lines });
        self.starts += 1;
    }

    /// Waits (bounded) until replica `i` of group `gid` says it serves.
    fn wait_ready(&mut self, gid: Gid, i: usize) {
        let id = node_id(i);
        let ready = format!("ready {gid} {}", id.0);
        let guard = self.groups.get_mut(&gid).expect("known group").children[i]
            .as_mut()
            .expect("replica was spawned");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match guard.lines.recv_timeout(left) {
                Ok(line) if line == ready => return,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("replica g{gid}/{id} did not start within {READY_TIMEOUT:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = guard.child.wait().expect("wait for a replica");
                    panic!(
                        "replica g{gid}/{id} exited ({status}) before serving; see its output \
                         above"
                    )
                }
            }
        }
    }

    /// Starts every replica of every group and waits until all serve.
    fn start_all(&mut self) {
        let all: Vec<(Gid, usize)> = self
            .groups
            .keys()
            .flat_map(|&gid| (0..REPLICAS).map(move |i| (gid, i)))
            .collect();
        for &(gid, i) in &all {
            self.spawn(gid, i);
        }
        for &(gid, i) in &all {
            self.wait_ready(gid, i);
        }
    }

    /// SIGKILLs replica `i` of group `gid` and reaps it.
    fn kill(&mut self, gid: Gid, i: usize) {
        let name = format!("g{gid}/{}", node_id(i));
        let guard = self.groups.get_mut(&gid).expect("known group").children[i]
            .take()
            .expect("replica is running");
        let status = guard.kill_and_reap(&name);
        assert!(
            !status.success(),
            "replica {name} exited cleanly instead of being killed: {status}"
        );
    }

    /// Every replica's client address, named.
    fn client_addrs(&self) -> Vec<(Gid, NodeId, SocketAddr)> {
        self.groups
            .iter()
            .flat_map(|(&gid, group)| {
                group
                    .members
                    .iter()
                    .map(move |(&id, addrs)| (gid, id, addrs.client))
            })
            .collect()
    }

    /// Files in every replica's snapshot directory.
    fn snapshot_files(&self) -> usize {
        self.groups
            .values()
            .flat_map(|group| &group.dirs)
            .map(|dir| {
                std::fs::read_dir(dir.path().join("snap")).map_or(0, |entries| entries.count())
            })
            .sum()
    }
}

// ---------------------------------------------------------------------------
// The controller, in this process.

/// Starts a one-replica controller group on loopback, retrying a bind that
/// fails.
async fn start_controller(dir: PathBuf) -> ControllerServer {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let deadline = Instant::now() + Duration::from_secs(5);
    let listeners = loop {
        match ControllerListeners::bind(
            MemberAddrs {
                peer: any,
                client: any,
            },
            &net(),
        )
        .await
        {
            Ok(bound) => break bound,
            Err(e) if Instant::now() < deadline => {
                eprintln!("binding the controller: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot bind the controller: {e}"),
        }
    };
    let members = BTreeMap::from([(node_id(0), listeners.addrs())]);
    let config = ControllerServerConfig {
        driver: driver(),
        net: net(),
        ..ControllerServerConfig::new(node_id(0), members, dir, SHARDS, CONTROLLER_GROUP)
    };
    ControllerServer::start_with_listeners(config, listeners)
        .await
        .expect("controller starts")
}

fn admin_options(client_id: u64) -> AdminOptions {
    AdminOptions {
        deadline: Duration::from_secs(10),
        backoff_max: Duration::from_millis(100),
        net: net(),
        ..AdminOptions::new(client_id)
    }
}

// ---------------------------------------------------------------------------
// Randomness and seeds.

/// Prints the seed again if the test panics, so that it is at the end of the
/// failure output.
struct SeedReport(u64);

impl Drop for SeedReport {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{PARENT_TEST} FAILED; rerun the same random choices with {SEED_ENV}={} (thread \
                 and process scheduling are not seeded)",
                self.0
            );
        }
    }
}

/// `SHARDKV_SIGKILL_SEED` when set (to replay a failure), else one drawn
/// from the clock.
fn seed_from_env() -> u64 {
    match std::env::var(SEED_ENV) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_ENV}={text:?} is not a u64")),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos());
            SimRng::new(u64::try_from(nanos % u128::from(u64::MAX)).unwrap_or(0)).next_u64()
        }
    }
}

// ---------------------------------------------------------------------------
// The clerks.

/// What became of one append.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    /// Acknowledged: it must be in the value, once, in order.
    Acked,
    /// Indeterminate: it may be in the value, at most once, in order.
    Indeterminate,
    /// Certainly not applied (unavailable, or refused): it must not be.
    NotApplied(String),
}

/// One append of a clerk.
#[derive(Debug, Clone)]
struct Append {
    token: String,
    fate: Fate,
}

/// What one clerk did.
#[derive(Debug)]
struct ClerkLog {
    client_id: u64,
    /// The clerk's appends to each of its keys, in the order it made them.
    appends: Vec<Vec<Append>>,
    /// Reads checked during the load.
    gets_checked: u64,
    /// Reads that got no answer in time (the check was skipped).
    gets_unavailable: u64,
    /// What the reads during the load found wrong.
    violations: Vec<String>,
}

/// Key `shard` of client `client`: its first byte lies in pre-split shard
/// `shard` (boundary `i` is `0x20 + floor(i * 95 / 10)`, and consecutive
/// boundaries are at least 9 apart, so an offset below 8 stays inside).
fn key(client: u64, shard: u32) -> Vec<u8> {
    let boundary = u8::try_from(shard * 95 / SHARDS).expect("below 95");
    let offset = u8::try_from(client % 8).expect("below 8");
    let mut key = vec![0x20 + boundary + offset];
    key.extend_from_slice(format!("c{client}k{shard}").as_bytes());
    key
}

fn shown(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

fn clerk_options(client_id: u64) -> ClerkOptions {
    ClerkOptions {
        deadline: Duration::from_secs(15),
        rpc_timeout: Duration::from_secs(3),
        backoff_max: Duration::from_millis(100),
        net: net(),
        ..ClerkOptions::new(client_id)
    }
}

/// Checks `value` (the tokens of one key, concatenated) against the appends
/// made to it: every acknowledged token once, in order; indeterminate ones
/// at most once, in order; nothing else. Returns how many indeterminate
/// appends took effect.
fn check_value(appends: &[Append], value: &[u8]) -> Result<usize, String> {
    let text = std::str::from_utf8(value).map_err(|e| format!("value is not UTF-8: {e}"))?;
    let Some(body) = text.strip_suffix(';').or(text.is_empty().then_some("")) else {
        return Err(format!("value {text:?} does not end with a token"));
    };
    let mut next = 0;
    let mut indeterminate_applied = 0;
    for token in body.split(';').filter(|_| !body.is_empty()) {
        let token = format!("{token};");
        let Some(found) = appends[next..].iter().position(|a| a.token == token) else {
            let why = if appends[..next].iter().any(|a| a.token == token) {
                "applied twice or out of order"
            } else {
                "never appended by this clerk"
            };
            return Err(format!("token {token} is {why}; value {text:?}"));
        };
        if let Some(lost) = appends[next..next + found]
            .iter()
            .find(|a| a.fate == Fate::Acked)
        {
            return Err(format!(
                "acknowledged token {} is missing before {token}; value {text:?}",
                lost.token
            ));
        }
        let append = &appends[next + found];
        match &append.fate {
            Fate::Acked => {}
            Fate::Indeterminate => indeterminate_applied += 1,
            Fate::NotApplied(why) => {
                return Err(format!(
                    "token {token} is in the value although its append was reported as not \
                     applied ({why}); value {text:?}"
                ))
            }
        }
        next += found + 1;
    }
    if let Some(lost) = appends[next..].iter().find(|a| a.fate == Fate::Acked) {
        return Err(format!(
            "acknowledged token {} is missing at the end; value {text:?}",
            lost.token
        ));
    }
    Ok(indeterminate_applied)
}

/// Appends unique tokens to the clerk's keys (one per shard) until told to
/// stop, reading one back every [`GET_EVERY`] operations.
async fn run_clerk(
    controllers: Vec<SocketAddr>,
    client_id: u64,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> ClerkLog {
    let mut rng = SimRng::new(seed);
    let mut clerk = Clerk::new(controllers, clerk_options(client_id));
    let keys: Vec<Vec<u8>> = (0..SHARDS).map(|shard| key(client_id, shard)).collect();
    let mut log = ClerkLog {
        client_id,
        appends: vec![Vec::new(); keys.len()],
        gets_checked: 0,
        gets_unavailable: 0,
        violations: Vec::new(),
    };
    let mut reported = BTreeSet::new();
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let k = rng.index(keys.len());
        if n.is_multiple_of(GET_EVERY) {
            match clerk.get(&keys[k]).await {
                Ok(value) => {
                    log.gets_checked += 1;
                    let checked = check_value(&log.appends[k], &value.unwrap_or_default());
                    // One report per key: a lost token shows in every later read.
                    match checked {
                        Err(e) if reported.insert(k) => log.violations.push(format!(
                            "client {client_id}, read of key {} during the load: {e}",
                            shown(&keys[k])
                        )),
                        _ => {}
                    }
                }
                Err(ClerkError::Unavailable(_)) => log.gets_unavailable += 1,
                Err(e) => log.violations.push(format!(
                    "client {client_id}, read of key {}: {e}",
                    shown(&keys[k])
                )),
            }
            continue;
        }
        let token = format!("{client_id}.{n};");
        let fate = match clerk.append(&keys[k], token.as_bytes()).await {
            Ok(()) => Fate::Acked,
            Err(ClerkError::Indeterminate(_)) => Fate::Indeterminate,
            Err(e @ ClerkError::Unavailable(_)) => Fate::NotApplied(e.to_string()),
            Err(e @ (ClerkError::Refused(_) | ClerkError::Denied(_))) => {
                log.violations.push(format!(
                    "client {client_id}, append {token} to key {}: refused: {e}",
                    shown(&keys[k])
                ));
                Fate::NotApplied(e.to_string())
            }
        };
        log.appends[k].push(Append { token, fate });
    }
    log
}

// ---------------------------------------------------------------------------
// Reconfigurations.

/// What the reconfiguration task did.
#[derive(Debug, Default)]
struct ReconfigLog {
    joins: u64,
    leaves: u64,
    moves: u64,
    indeterminate: u64,
    unavailable: u64,
}

/// Joins, leaves and moves every 0.5-1 s until told to stop, always keeping
/// a group joined. Only this task changes the configuration, so the latest
/// one (asked before each change) says exactly which groups are joined.
async fn reconfigure(
    mut admin: ControllerClerk,
    groups: BTreeMap<Gid, Vec<String>>,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> ReconfigLog {
    let mut rng = SimRng::new(seed);
    let mut log = ReconfigLog::default();
    loop {
        let pause = rng.millis(500, 1000);
        tokio::time::sleep(pause).await;
        if stop.load(Ordering::Relaxed) {
            return log;
        }
        let latest = match admin.query(None).await {
            Ok(latest) => latest,
            Err(e) => panic!("the in-process controller did not answer a query: {e}"),
        };
        let joined: Vec<Gid> = latest.groups.keys().copied().collect();
        let absent: Vec<Gid> = groups
            .keys()
            .copied()
            .filter(|gid| !latest.groups.contains_key(gid))
            .collect();
        let roll = rng.below(10);
        let op = if joined.is_empty() || (!absent.is_empty() && roll < 3) {
            let gid = absent[rng.index(absent.len())];
            log.joins += 1;
            ControllerOp::Join {
                groups: BTreeMap::from([(gid, groups[&gid].clone())]),
            }
        } else if joined.len() > 1 && roll < 6 {
            log.leaves += 1;
            ControllerOp::Leave {
                gids: vec![joined[rng.index(joined.len())]],
            }
        } else {
            log.moves += 1;
            let shard = latest.shards[rng.index(latest.shards.len())].id;
            ControllerOp::Move {
                shard,
                gid: joined[rng.index(joined.len())],
            }
        };
        match admin.change(op.clone()).await {
            Ok(_) => {}
            Err(AdminError::Indeterminate(_)) => log.indeterminate += 1,
            Err(AdminError::Unavailable(_)) => log.unavailable += 1,
            Err(e) => panic!("the controller refused the valid change {op:?}: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Settling, through the replicas' status RPC.

/// Replica `addr`'s status.
async fn replica_status(addr: SocketAddr) -> Result<ReplicaStatus, String> {
    let client = tokio::time::timeout(STATUS_TIMEOUT, shardkv::rpc::connect(addr, &net()))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let ctx = shardkv::rpc::context_within(STATUS_TIMEOUT);
    match tokio::time::timeout(STATUS_TIMEOUT, client.status(ctx)).await {
        Ok(Ok(Ok(status))) => Ok(status),
        Ok(Ok(Err(e))) => Err(format!("status refused: {e}")),
        Ok(Err(e)) => Err(format!("status call: {e}")),
        Err(_) => Err("status timed out".to_string()),
    }
}

/// Waits (bounded) until every replica has installed configuration
/// `latest.num`, with no shard arriving or waiting for its old copy to be
/// deleted; returns every replica's status. Panics on a replica whose
/// storage failed.
async fn wait_settled(
    replicas: &[(Gid, NodeId, SocketAddr)],
    latest: &Configuration,
) -> Vec<(Gid, NodeId, ReplicaStatus)> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let mut pending = Vec::new();
        let mut statuses = Vec::new();
        for &(gid, id, addr) in replicas {
            match replica_status(addr).await {
                Ok(status) => {
                    if let Some(failed) = &status.failed {
                        panic!("replica g{gid}/{id} stopped serving: its storage failed: {failed}");
                    }
                    let busy: Vec<String> = status
                        .shards
                        .iter()
                        .filter(|shard| shard.state != "serving" && shard.state != "frozen")
                        .map(|shard| format!("shard {} {}", shard.id, shard.state))
                        .collect();
                    if status.num != latest.num || !busy.is_empty() {
                        pending.push(format!(
                            "g{gid}/{id} at configuration {} of {}: {busy:?}",
                            status.num, latest.num
                        ));
                    }
                    statuses.push((gid, id, status));
                }
                Err(e) => pending.push(format!("g{gid}/{id}: {e}")),
            }
        }
        if pending.is_empty() {
            return statuses;
        }
        assert!(
            Instant::now() < deadline,
            "not settled at configuration {} within {SETTLE_TIMEOUT:?}: {pending:#?}",
            latest.num
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every shard of `latest` is served by every replica of its owner and by
/// no replica of another group.
fn check_owners(latest: &Configuration, statuses: &[(Gid, NodeId, ReplicaStatus)]) {
    for shard in &latest.shards {
        let owner = shard.gid.expect("a group is always joined");
        for (gid, id, status) in statuses {
            let state = status
                .shards
                .iter()
                .find(|report| report.id == shard.id)
                .map(|report| report.state.as_str());
            if *gid == owner {
                assert_eq!(
                    state,
                    Some("serving"),
                    "g{gid}/{id} owns shard {} in configuration {} but does not serve it",
                    shard.id,
                    latest.num
                );
            } else {
                assert_ne!(
                    state,
                    Some("serving"),
                    "g{gid}/{id} serves shard {}, which configuration {} gives to g{owner}",
                    shard.id,
                    latest.num
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The parent.

#[test]
fn acknowledged_writes_survive_sigkill_of_random_replicas_during_migrations() {
    let started = Instant::now();
    let seed = seed_from_env();
    let _report = SeedReport(seed);
    eprintln!("{PARENT_TEST}: {SEED_ENV}={seed}");
    let mut rng = SimRng::new(seed);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let controller_dir = TempDir::new().expect("temp dir");
    let controller = runtime.block_on(start_controller(controller_dir.path().join("controller-1")));
    let controllers = vec![controller.client_addr()];

    let mut replicas = Replicas::new(controllers.clone());
    replicas.start_all();
    let group_addrs: BTreeMap<Gid, Vec<String>> = replicas
        .groups
        .iter()
        .map(|(&gid, group)| (gid, group.client_addrs()))
        .collect();

    // Two groups to begin with; every key of a clerk in its own shard.
    let mut admin = ControllerClerk::new(controllers.clone(), admin_options(1_000));
    let first = runtime
        .block_on(
            admin.join(
                group_addrs
                    .iter()
                    .take(2)
                    .map(|(g, a)| (*g, a.clone()))
                    .collect(),
            ),
        )
        .expect("the first join");
    let mut reader = ControllerClerk::new(controllers.clone(), admin_options(1_001));
    let latest = runtime
        .block_on(reader.query(None))
        .expect("query the controller");
    assert_eq!(latest.num, first);
    for client in 1..=CLERKS {
        let shards: BTreeSet<u64> = (0..SHARDS)
            .filter_map(|shard| latest.shard_for_key(&key(client, shard)).map(|s| s.id))
            .collect();
        assert_eq!(
            shards.len(),
            latest.shards.len(),
            "client {client}'s keys do not cover every shard"
        );
    }

    // The load and the reconfigurations.
    let stop = Arc::new(AtomicBool::new(false));
    let clerks: Vec<_> = (1..=CLERKS)
        .map(|client| {
            runtime.spawn(run_clerk(
                controllers.clone(),
                client,
                rng.next_u64(),
                Arc::clone(&stop),
            ))
        })
        .collect();
    let reconfig = runtime.spawn(reconfigure(
        admin,
        group_addrs.clone(),
        rng.next_u64(),
        Arc::clone(&stop),
    ));

    // The killer: one random replica a second, restarted before the next.
    let gids: Vec<Gid> = replicas.groups.keys().copied().collect();
    let load_end = Instant::now() + LOAD;
    let mut next_kill = Instant::now() + KILL_EVERY;
    let mut kills: BTreeMap<Gid, u64> = BTreeMap::new();
    let mut leader_kills = 0;
    loop {
        std::thread::sleep(next_kill.saturating_duration_since(Instant::now()));
        if Instant::now() >= load_end {
            break;
        }
        assert!(
            !reconfig.is_finished() && !clerks.iter().any(|clerk| clerk.is_finished()),
            "a load task ended before it was told to stop"
        );
        let gid = gids[rng.index(gids.len())];
        let i = rng.index(REPLICAS);
        let victim = replicas.groups[&gid].members[&node_id(i)].client;
        if runtime
            .block_on(replica_status(victim))
            .is_ok_and(|status| status.role == "leader")
        {
            leader_kills += 1;
        }
        replicas.kill(gid, i);
        *kills.entry(gid).or_default() += 1;
        std::thread::sleep(rng.millis(100, 500));
        replicas.spawn(gid, i);
        replicas.wait_ready(gid, i);
        next_kill = (next_kill + KILL_EVERY).max(Instant::now());
    }
    stop.store(true, Ordering::Relaxed);
    let (logs, reconfig) = runtime
        .block_on(async {
            tokio::time::timeout(DRAIN_TIMEOUT, async {
                let mut logs = Vec::new();
                for clerk in clerks {
                    logs.push(clerk.await.expect("clerk task"));
                }
                (logs, reconfig.await.expect("reconfiguration task"))
            })
            .await
        })
        .unwrap_or_else(|_| panic!("the load did not stop within {DRAIN_TIMEOUT:?}"));
    let load_done = started.elapsed();

    // Settle, then read everything back.
    let latest = runtime
        .block_on(reader.query(None))
        .expect("query the controller");
    let statuses = runtime.block_on(wait_settled(&replicas.client_addrs(), &latest));
    check_owners(&latest, &statuses);
    let settled = started.elapsed();
    // Frozen copies left behind (garbage, not an error here): g<gid>/n<node>
    // shard <id> (lost in configuration <num>).
    let frozen: Vec<String> = statuses
        .iter()
        .flat_map(|(gid, id, status)| {
            status
                .shards
                .iter()
                .filter(|shard| shard.state == "frozen")
                .map(move |shard| format!("g{gid}/n{} s{}@{}", id.0, shard.id, shard.num))
        })
        .collect();

    let mut violations = Vec::new();
    let mut indeterminate_applied = 0;
    let mut lost = 0;
    let mut final_clerk = Clerk::new(
        controllers.clone(),
        ClerkOptions {
            deadline: Duration::from_secs(5),
            ..clerk_options(2_000)
        },
    );
    let reads_deadline = Instant::now() + FINAL_READS_TIMEOUT;
    for log in &logs {
        for (shard, appends) in (0..SHARDS).zip(&log.appends) {
            let k = key(log.client_id, shard);
            assert!(
                Instant::now() < reads_deadline,
                "the final reads took longer than {FINAL_READS_TIMEOUT:?}"
            );
            let value = runtime
                .block_on(final_clerk.get(&k))
                .unwrap_or_else(|e| panic!("final read of key {}: {e}", shown(&k)))
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&value);
            let found: BTreeSet<&str> = text.split_inclusive(';').collect();
            lost += appends
                .iter()
                .filter(|append| append.fate == Fate::Acked)
                .filter(|append| !found.contains(append.token.as_str()))
                .count();
            match check_value(appends, &value) {
                Ok(applied) => indeterminate_applied += applied,
                Err(e) => violations.push(format!(
                    "client {}, key {}, after settling: {e}",
                    log.client_id,
                    shown(&k)
                )),
            }
        }
    }
    violations.extend(logs.iter().flat_map(|log| log.violations.iter().cloned()));

    let count = |fate: fn(&Fate) -> bool| -> usize {
        logs.iter()
            .flat_map(|log| log.appends.iter().flatten())
            .filter(|append| fate(&append.fate))
            .count()
    };
    let acked = count(|fate| *fate == Fate::Acked);
    let indeterminate = count(|fate| *fate == Fate::Indeterminate);
    let not_applied = count(|fate| matches!(fate, Fate::NotApplied(_)));
    let gets: u64 = logs.iter().map(|log| log.gets_checked).sum();
    let gets_unavailable: u64 = logs.iter().map(|log| log.gets_unavailable).sum();
    let total_kills: u64 = kills.values().sum();
    eprintln!(
        "{PARENT_TEST}: {total_kills} SIGKILLs (per group {kills:?}; {leader_kills} of a \
         leader), {} replica starts \
         ({} restarts); configuration changes: {} joins, {} leaves, {} moves ({} \
         indeterminate, {} unavailable), latest configuration {}; appends: {acked} \
         acknowledged, {indeterminate} indeterminate ({indeterminate_applied} of them took \
         effect), {not_applied} not applied, {lost} acknowledged but missing at the end; {gets} reads checked during the load \
         ({gets_unavailable} unavailable); {} files in the snapshot directories; {} frozen \
         shard copies left {frozen:?}; load over at {load_done:?}, settled at {settled:?}, \
         done at {:?}",
        replicas.starts,
        replicas.starts - GROUPS * u64::try_from(REPLICAS).expect("fits u64"),
        reconfig.joins,
        reconfig.leaves,
        reconfig.moves,
        reconfig.indeterminate,
        reconfig.unavailable,
        latest.num,
        replicas.snapshot_files(),
        frozen.len(),
        started.elapsed()
    );
    let shown_violations: Vec<String> = violations
        .iter()
        .take(12)
        .map(|violation| {
            let mut line: String = violation.chars().take(400).collect();
            if line.len() < violation.len() {
                line.push_str(" [...]");
            }
            line
        })
        .collect();
    assert!(
        violations.is_empty(),
        "{} violations (seed {seed}), the first {}:\n{}",
        violations.len(),
        shown_violations.len(),
        shown_violations.join("\n")
    );
    // Not vacuous: writes were acknowledged, shards moved, replicas died.
    assert!(acked > 0, "no append was acknowledged");
    assert!(
        latest.num > first,
        "no configuration change after the first join"
    );
    assert!(total_kills > 0, "no replica was killed");

    drop(final_clerk);
    drop(reader);
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), controller.shutdown())
            .await
            .expect("the controller stopped within 10 s");
    });
    drop(replicas);
}
