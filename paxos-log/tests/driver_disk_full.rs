//! A disk that fills up, or an fsync that fails, under one replica of a
//! running group: the replica stops with a clear error, the other two go on
//! committing, and once space returns the replica restarts from its WAL,
//! cuts off the partial record, catches up, and nothing acknowledged is lost.
//!
//! Method: three drivers (`Node::start`) on a `ChannelTransport`, each with
//! a `WalAcceptorStore` on its own `SimFs`, so a fault injected into one
//! filesystem hits exactly one replica. A client proposes distinct commands
//! one at a time through whichever live replica leads, and records which
//! were acknowledged, which ended indeterminate and which were refused.
//! Once the group is idle (every replica applied the same slot) a one-shot
//! fault is injected into one replica's filesystem, a follower's or the
//! leader's: `Fault::ShortWrite` (the next write stores a prefix of its
//! bytes and fails with `StorageFull`, as a full disk does) or
//! `Fault::SyncError` (the next fdatasync fails; the machine then loses
//! power, keeping half of the bytes it never synced). The test checks that
//! the replica publishes `failed`, logs "storage failed; stopping this
//! replica" with the storage error (captured by a small tracing subscriber),
//! answers the proposal in flight `Indeterminate` with that error and later
//! requests with an error instead of waiting for a timeout; that the other
//! two keep committing, electing a new leader when the leader failed; that
//! a new `Node` started on the same directory cuts the torn record off (its
//! offset and length checked against the segment file) and catches up; and
//! that all three replicas then applied the same log, holding every
//! acknowledged command exactly once, indeterminate ones at most once and
//! refused ones not at all.
//!
//! No sleep decides an outcome: every wait is on replica metrics or on an
//! answer, bounded, and fails with a message naming what did not happen.

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::Duration;

use paxos_log::store::wal::WalAcceptorStore;
use paxos_log::{
    ChannelTransport, Config, DriverOptions, Node, NodeError, NodeHandle, NodeId, Role, Slot,
};
use storage::fs::{Fault, Fs, SimFs};
use storage::wal::WalOptions;

mod cluster;
use cluster::{assert_contains_all, assert_prefix, assert_same_logs, LogMachine};

/// Bytes of the failing write that reach the file: the 16-byte frame header
/// and 4 bytes of the payload, a record that starts and never ends.
const KEEP_BYTES: usize = 20;

/// Longest a whole scenario may take.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest a single wait on replica metrics may take.
const WAIT: Duration = Duration::from_secs(20);

fn members() -> Vec<NodeId> {
    (1..=3).map(NodeId).collect()
}

fn options() -> DriverOptions {
    DriverOptions {
        tick: Duration::from_millis(5),
        request_timeout: Duration::from_secs(2),
        ..DriverOptions::default()
    }
}

/// Elections after 150 to 300 ms of silence: well above the 10 ms between
/// heartbeats, so a busy machine does not depose a healthy leader between
/// the moment the test finds it and the moment its disk fills up.
fn config(id: NodeId) -> Config {
    Config {
        rng_seed: 23,
        election_timeout_ticks_min: 30,
        election_timeout_ticks_max: 60,
        ..Config::new(id, members())
    }
}

// ---------------------------------------------------------------------------
// Hosts: a replica, its disk, and the node running on it.
// ---------------------------------------------------------------------------

/// One machine of the group: its own simulated disk, its WAL directory on
/// it, and the node currently running there.
struct Host {
    id: NodeId,
    fs: SimFs,
    dir: PathBuf,
    node: Option<Node<LogMachine>>,
}

impl Host {
    /// A machine with an empty disk; `scenario` names the WAL directory, so
    /// error messages (and captured log lines) say which test they are from.
    fn new(scenario: &str, id: NodeId) -> Host {
        Host {
            id,
            fs: SimFs::new(),
            dir: PathBuf::from(format!("/{scenario}/n{}/wal", id.0)),
            node: None,
        }
    }

    fn open_store(&self) -> WalAcceptorStore {
        WalAcceptorStore::open(self.fs.shared(), &self.dir, WalOptions::default())
            .unwrap_or_else(|error| panic!("{}: the WAL does not open: {error}", self.id))
    }

    /// Starts a node on `store` with an empty state machine and puts it on
    /// the network.
    fn start(&mut self, store: WalAcceptorStore, network: &Arc<ChannelTransport>) {
        let node = Node::start(
            config(self.id),
            store,
            LogMachine::default(),
            Arc::clone(network),
            options(),
        )
        .unwrap_or_else(|error| panic!("{} does not start: {error}", self.id));
        network.register(self.id, node.handle());
        self.node = Some(node);
    }

    fn handle(&self) -> NodeHandle {
        self.node.as_ref().expect("the node runs").handle()
    }

    /// The WAL's only segment (64 MiB segments: the tests write far less).
    fn segment(&self) -> PathBuf {
        let segments: Vec<String> = self
            .fs
            .list_dir(&self.dir)
            .expect("the WAL directory exists")
            .into_iter()
            .filter(|name| name.ends_with(".wal"))
            .collect();
        assert_eq!(segments.len(), 1, "{}: WAL segments {segments:?}", self.id);
        self.dir.join(&segments[0])
    }

    /// Bytes in `path` now (what a reader sees, synced or not).
    fn file_len(&self, path: &Path) -> u64 {
        let bytes = self
            .fs
            .read(path)
            .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
        u64::try_from(bytes.len()).expect("file length fits in u64")
    }
}

fn handles(hosts: &[Host]) -> Vec<NodeHandle> {
    hosts
        .iter()
        .filter(|h| h.node.is_some())
        .map(Host::handle)
        .collect()
}

fn metrics(handles: &[NodeHandle]) -> String {
    format!(
        "{:#?}",
        handles.iter().map(NodeHandle::metrics).collect::<Vec<_>>()
    )
}

/// The replica that leads among those that did not fail (a failed leader
/// still says `Leader` in the metrics it published last).
fn live_leader(handles: &[NodeHandle]) -> Option<NodeHandle> {
    handles
        .iter()
        .find(|h| {
            let m = h.metrics();
            m.role == Some(Role::Leader) && !m.failed
        })
        .cloned()
}

/// Waits until a replica of `handles` that did not fail leads.
async fn wait_for_live_leader(handles: &[NodeHandle]) -> NodeHandle {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(leader) = live_leader(handles) {
            return leader;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no live leader within {WAIT:?}: {}",
            metrics(handles)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until every replica of `handles` applied `acked_slot` (the slot
/// of the last acknowledged command) and the highest slot any of them
/// published, and returns that slot. With no proposal in flight the group
/// is then idle: nothing more is written to any disk until the next one.
///
/// `acked_slot` is needed: a driver answers a proposal while it applies the
/// command, before it publishes its metrics, so right after an answer even
/// the leader's `applied_slot` may still be one slot behind.
async fn settle(handles: &[NodeHandle], acked_slot: Slot) -> Slot {
    let target = handles
        .iter()
        .map(|h| h.metrics().applied_slot)
        .max()
        .expect("at least one replica")
        .max(acked_slot);
    for handle in handles {
        let reached = handle
            .wait_for(WAIT, |m| m.applied_slot >= target && !m.failed)
            .await;
        assert!(
            reached.is_some(),
            "{} did not apply slot {target} within {WAIT:?}: {}",
            handle.id(),
            metrics(handles)
        );
    }
    target
}

/// Stops `node` and returns its state machine; fails if the driver thread
/// panicked or does not end within 10 s. The join runs on a thread of its
/// own, so a driver thread that never ends fails the test instead of
/// hanging it.
async fn stop(node: Node<LogMachine>, who: &str) -> LogMachine {
    let (sender, stopped) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = sender.send(node.stop());
    });
    match tokio::time::timeout(Duration::from_secs(10), stopped).await {
        Ok(Ok(Some(machine))) => machine,
        Ok(Ok(None)) | Ok(Err(_)) => panic!("{who}: the driver thread panicked"),
        Err(_) => panic!("{who}: the driver thread did not stop within 10 s"),
    }
}

// ---------------------------------------------------------------------------
// The client.
// ---------------------------------------------------------------------------

/// Proposes distinct commands, one at a time, and remembers what became of
/// each.
#[derive(Debug, Default)]
struct Client {
    next: u32,
    /// Answered `Ok`: must be applied, exactly once, everywhere.
    acked: Vec<Vec<u8>>,
    /// Answered `Indeterminate`: may be applied, at most once.
    indeterminate: Vec<Vec<u8>>,
    /// Refused (`Stopped`, `NotLeader`, `Busy`) and never retried: certainly
    /// not applied.
    refused: Vec<Vec<u8>>,
    /// The highest slot an acknowledged command was applied in (the
    /// `LogMachine` answers a command with its slot).
    last_slot: Slot,
}

impl Client {
    fn acknowledged(&mut self, command: Vec<u8>, answer: &[u8]) {
        let slot = answer
            .try_into()
            .map(u64::from_le_bytes)
            .expect("the LogMachine answers with a slot");
        self.last_slot = self.last_slot.max(slot);
        self.acked.push(command);
    }

    fn fresh(&mut self) -> Vec<u8> {
        let command = format!("cmd-{:05}", self.next).into_bytes();
        self.next += 1;
        command
    }

    /// Proposes `command` to `handle` once and records the outcome.
    async fn propose_to(
        &mut self,
        handle: &NodeHandle,
        command: Vec<u8>,
    ) -> Result<Vec<u8>, NodeError> {
        let result = handle.propose(command.clone()).await;
        match &result {
            Ok(answer) => self.acknowledged(command, answer),
            Err(NodeError::Indeterminate(_)) => self.indeterminate.push(command),
            Err(NodeError::Stopped | NodeError::NotLeader { .. } | NodeError::Busy) => {
                self.refused.push(command);
            }
            Err(error) => panic!("proposing {command:?} to {} got {error}", handle.id()),
        }
        result
    }

    /// Proposes one new command through whichever live replica leads,
    /// retrying it while it was certainly not proposed (refused); returns
    /// whether it was acknowledged (`Err` with the cause if indeterminate).
    async fn propose(&mut self, handles: &[NodeHandle]) -> Result<(), String> {
        let command = self.fresh();
        for _ in 0..200 {
            let leader = wait_for_live_leader(handles).await;
            match leader.propose(command.clone()).await {
                Ok(answer) => {
                    self.acknowledged(command, &answer);
                    return Ok(());
                }
                Err(NodeError::Indeterminate(cause)) => {
                    self.indeterminate.push(command);
                    return Err(cause);
                }
                Err(NodeError::NotLeader { .. } | NodeError::Busy | NodeError::Stopped) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(error) => panic!("proposing {command:?} got {error}"),
            }
        }
        panic!("{command:?} was refused 200 times: {}", metrics(handles));
    }

    /// Proposes new commands until `count` more are acknowledged.
    async fn commit_more(&mut self, handles: &[NodeHandle], count: usize) {
        let target = self.acked.len() + count;
        let mut proposals = 0;
        while self.acked.len() < target {
            proposals += 1;
            assert!(
                proposals <= 5 * count + 20,
                "only {} of {count} proposals acknowledged in {proposals} attempts: {}",
                count + self.acked.len() - target,
                metrics(handles)
            );
            let _ = self.propose(handles).await;
        }
    }
}

/// A request to a replica that stopped after a storage failure: it must
/// fail at once (the replica's queue is closed, or closes under it), never
/// wait for the request timeout.
#[track_caller]
fn assert_stopped_answer(result: &Result<Vec<u8>, NodeError>, what: &str) {
    match result {
        Err(NodeError::Stopped) => {}
        Err(NodeError::Indeterminate(cause)) if cause == "replica stopped before answering" => {}
        other => panic!("{what} on the failed replica: expected it stopped, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Log capture: what the driver logs when its store fails.
// ---------------------------------------------------------------------------

/// Warnings and errors logged so far, one line each: the thread's name,
/// the level, then `field=value` for every field.
static LOGGED: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn logged() -> MutexGuard<'static, Vec<String>> {
    LOGGED.lock().unwrap_or_else(|e| e.into_inner())
}

/// A tracing subscriber that keeps warnings and errors in [`LOGGED`]; spans
/// are not tracked (the driver thread's name says which replica logged).
struct Capture;

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= tracing::Level::WARN
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let thread = std::thread::current();
        let mut line = Fields(format!(
            "[{}] {}",
            thread.name().unwrap_or("?"),
            event.metadata().level()
        ));
        event.record(&mut line);
        logged().push(line.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn capture_logs() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        tracing::subscriber::set_global_default(Capture)
            .expect("no other global tracing subscriber in this test binary");
    });
}

// ---------------------------------------------------------------------------
// The scenario.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    Follower,
    Leader,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restart {
    /// The process stops and starts again; the machine keeps running, so
    /// what reached the page cache (the partial record) is still there.
    Process,
    /// The machine loses power after the failure and keeps the first half
    /// of the bytes that were never synced: a torn record on disk.
    PowerLossKeepingHalf,
}

struct Scenario {
    /// Names the WAL directories, so it shows in every storage error.
    name: &'static str,
    victim: Victim,
    fault: Fault,
    /// What the storage error must say (besides the segment's path).
    error_says: &'static [&'static str],
    restart: Restart,
}

/// Runs `scenario` within [`SCENARIO_TIMEOUT`].
async fn bounded(name: &str, scenario: impl Future<Output = ()>) {
    if tokio::time::timeout(SCENARIO_TIMEOUT, scenario)
        .await
        .is_err()
    {
        panic!("{name}: did not finish within {SCENARIO_TIMEOUT:?}");
    }
}

async fn run(s: Scenario) {
    capture_logs();
    let network = Arc::new(ChannelTransport::new());
    let mut hosts: Vec<Host> = members()
        .into_iter()
        .map(|id| Host::new(s.name, id))
        .collect();
    for host in &mut hosts {
        let store = host.open_store();
        host.start(store, &network);
    }
    let mut client = Client::default();

    // A healthy group commits; then it is idle.
    client.commit_more(&handles(&hosts), 20).await;
    settle(&handles(&hosts), client.last_slot).await;
    let leader = live_leader(&handles(&hosts)).expect("a leader");
    let v = match s.victim {
        Victim::Leader => hosts.iter().position(|h| h.id == leader.id()),
        Victim::Follower => hosts.iter().position(|h| h.id != leader.id()),
    }
    .expect("the victim is one of the hosts");
    let victim = hosts[v].handle();
    let victim_id = victim.id();
    let segment = hosts[v].segment();
    let len_before = hosts[v].file_len(&segment);

    // The disk fills up (or its fsync fails) under the victim, at its next
    // write or fsync: that of the next command's accept.
    hosts[v].fs.inject(s.fault);
    let mut says: Vec<String> = s.error_says.iter().map(|&text| text.to_string()).collect();
    says.push(segment.display().to_string());
    match s.victim {
        Victim::Leader => {
            let command = client.fresh();
            match client.propose_to(&victim, command).await {
                Err(NodeError::Indeterminate(cause)) => assert!(
                    says.iter().all(|needle| cause.contains(needle.as_str())),
                    "the proposal in flight at the failed leader is indeterminate, but its \
                     cause {cause:?} does not say all of {says:?}"
                ),
                other => panic!(
                    "the proposal in flight when the leader's store failed: expected \
                     Indeterminate with the storage error, got {other:?}"
                ),
            }
        }
        Victim::Follower => {
            // The leader and the other follower are a majority: the command
            // is chosen while the victim fails to write its accept.
            client.commit_more(&handles(&hosts), 1).await;
        }
    }
    let failed = victim.wait_for(WAIT, |m| m.failed).await;
    assert!(
        failed.is_some(),
        "{victim_id} did not stop after its store failed: {}",
        metrics(&handles(&hosts))
    );

    // The error is clear: the driver logs it, with the storage error.
    let thread = format!("[paxos-{}] ERROR", victim_id.0);
    {
        let lines = logged();
        assert!(
            lines.iter().any(|line| {
                line.starts_with(&thread)
                    && line.contains("storage failed; stopping this replica")
                    && says.iter().all(|needle| line.contains(needle.as_str()))
            }),
            "{victim_id} logged no \"storage failed; stopping this replica\" error saying \
             {says:?}; warnings and errors logged: {lines:#?}"
        );
    }

    // What the failed write or fsync left in the file.
    let len_failed = hosts[v].file_len(&segment);
    match s.fault {
        Fault::ShortWrite { keep_bytes } => assert_eq!(
            len_failed,
            len_before + u64::try_from(keep_bytes).expect("fits"),
            "the short write leaves exactly its first {keep_bytes} bytes in the segment"
        ),
        Fault::SyncError | Fault::WriteError => assert!(
            len_failed > len_before,
            "the record whose fsync failed is in the page cache"
        ),
    }

    // It answers at once, with an error: it does not hang until a timeout.
    let probe = client.fresh();
    let proposed = client.propose_to(&victim, probe).await;
    assert_stopped_answer(&proposed, "a proposal");
    assert_stopped_answer(&victim.read(Vec::new()).await, "a read");

    // The other two go on committing (after electing a new leader if the
    // leader failed).
    let survivors: Vec<NodeHandle> = handles(&hosts)
        .into_iter()
        .filter(|h| h.id() != victim_id)
        .collect();
    wait_for_live_leader(&survivors).await;
    client.commit_more(&survivors, 20).await;
    assert!(
        victim.metrics().failed,
        "{victim_id} stays stopped until it is restarted"
    );

    // Space returns: the node is stopped and started again on its disk.
    network.unregister(victim_id);
    let node = hosts[v].node.take().expect("the victim's node");
    let before_restart = stop(node, "the failed replica").await;
    if s.restart == Restart::PowerLossKeepingHalf {
        hosts[v].fs.crash_keeping(|_, unsynced| unsynced / 2);
    }
    let len_on_disk = hosts[v].file_len(&segment);
    assert!(
        len_on_disk > len_before,
        "test setup: the segment holds part of the failed record ({len_on_disk} bytes, \
         {len_before} before it)"
    );
    let store = hosts[v].open_store();
    let report = store.recovery_report();
    let Some(torn) = report.torn_tail.clone() else {
        panic!("reopening {victim_id}'s WAL did not cut the partial record off: {report:?}");
    };
    assert_eq!(torn.path, segment, "the torn tail is in the active segment");
    assert_eq!(
        (torn.offset, torn.discarded_bytes),
        (len_before, len_on_disk - len_before),
        "the whole partial record, and only it, is cut off"
    );
    assert_eq!(
        hosts[v].file_len(&segment),
        len_before,
        "the segment ends where the last complete record ends"
    );
    hosts[v].start(store, &network);
    let restarted = hosts[v].handle();
    let target = settle(&survivors, client.last_slot).await;
    let caught_up = restarted
        .wait_for(WAIT, |m| m.applied_slot >= target || m.failed)
        .await;
    assert!(
        caught_up.is_some_and(|m| !m.failed),
        "the restarted {victim_id} did not catch up to slot {target} within {WAIT:?}: {}",
        metrics(&handles(&hosts))
    );

    // All three in service again.
    client.commit_more(&handles(&hosts), 5).await;
    let last = settle(&handles(&hosts), client.last_slot).await;

    // Nothing acknowledged lost; nothing refused applied; the same log
    // everywhere, no command in it twice.
    let mut machines = Vec::new();
    for host in &mut hosts {
        let node = host.node.take().expect("every node runs");
        machines.push(stop(node, &format!("{}", host.id)).await);
    }
    let log = assert_same_logs(&machines);
    assert_contains_all(&log, &client.acked);
    let maybe: BTreeSet<&Vec<u8>> = client.acked.iter().chain(&client.indeterminate).collect();
    for command in &log {
        assert!(
            maybe.contains(command),
            "applied {:?}, which was refused",
            String::from_utf8_lossy(command)
        );
    }
    assert_prefix(
        &before_restart,
        &log,
        "the failed replica, as it was when it stopped",
    );
    println!(
        "{}: {} acknowledged, {} indeterminate ({} of them applied), {} refused; \
         {} commands in {last} slots; {victim_id} ({:?}) had applied up to slot {} when it \
         failed",
        s.name,
        client.acked.len(),
        client.indeterminate.len(),
        client
            .indeterminate
            .iter()
            .filter(|c| log.contains(c))
            .count(),
        client.refused.len(),
        log.len(),
        s.victim,
        before_restart.applied.last().map_or(0, |(slot, _)| *slot),
    );
}

/// A follower's disk fills up: the write of its next accept keeps 20 bytes
/// and fails with `StorageFull`. The follower stops with the error, the
/// leader and the other follower keep committing under the same leader,
/// and the follower, restarted on its disk, cuts the 20 bytes off and
/// catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_disk_fills_up_stops_and_recovers_once_space_returns() {
    let scenario = Scenario {
        name: "follower-short-write",
        victim: Victim::Follower,
        fault: Fault::ShortWrite {
            keep_bytes: KEEP_BYTES,
        },
        error_says: &["write segment", "injected short write"],
        restart: Restart::Process,
    };
    bounded(scenario.name, run(scenario)).await;
}

/// The leader's disk fills up while it persists its own accept of a
/// command: the command's proposer gets `Indeterminate` with the storage
/// error, the leader stops, the other two elect a new leader and commit,
/// and the old leader, restarted on its disk, cuts the partial record off
/// and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_disk_fills_up_stops_and_recovers_once_space_returns() {
    let scenario = Scenario {
        name: "leader-short-write",
        victim: Victim::Leader,
        fault: Fault::ShortWrite {
            keep_bytes: KEEP_BYTES,
        },
        error_says: &["write segment", "injected short write"],
        restart: Restart::Process,
    };
    bounded(scenario.name, run(scenario)).await;
}

/// The leader's fsync fails: whatever it wrote may be gone, so it stops
/// (the proposer gets `Indeterminate` with the fsync error). The machine
/// then loses power, keeping half of the unsynced record; restarted, the
/// replica cuts that torn record off and catches up, and the other two
/// committed meanwhile under a new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_fsync_fails_stops_and_recovers_after_a_power_loss() {
    let scenario = Scenario {
        name: "leader-sync-error",
        victim: Victim::Leader,
        fault: Fault::SyncError,
        error_says: &["fsync segment", "injected fsync error"],
        restart: Restart::PowerLossKeepingHalf,
    };
    bounded(scenario.name, run(scenario)).await;
}
