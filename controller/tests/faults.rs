//! The replicated controller under message loss, rotating partitions and
//! replica restarts, in one process.
//!
//! Method: `ControllerStateMachine` replicas run on real `paxos-log` drivers
//! (`Node::start`, one thread each) over a [`FaultyTransport`]: an in-process
//! `ChannelTransport` that drops each envelope with a fixed probability and
//! cuts every envelope between two sides of the current partition. A nemesis
//! (the test body) changes the partition every 150-250 ms: heal, isolate the
//! leader, isolate a random replica, cut a random minority off, or leave every
//! replica alone (no quorum at all); in the WAL variant, every third step,
//! it also stops a replica (the leader half the time, else a random one) and
//! restarts it one step later from its WAL directory with an empty state
//! machine, which then re-learns the whole log.
//!
//! Meanwhile several clients propose encoded `ControllerCommand::Change`
//! commands to whichever replica they believe leads. On `NotLeader`, `Busy`,
//! `Stopped` or `Indeterminate` they retry the *same* `(client_id, seq)`,
//! somewhere else if need be, until a definite reply; the session table
//! makes that safe. Each client only joins, leaves and moves shards to its
//! own gids and splits at its own keys, so every change it sends is valid
//! whatever the others do, and every definite reply must be a success.
//!
//! After the chaos the network heals, the clients finish the change they
//! were on, one more command goes through the log, and every replica's
//! state machine (returned by `Node::stop`) is checked:
//!
//! * every replica's log chose exactly the changes the clients got replies
//!   for (some more than once: retries that reached another leader; the
//!   copies are counted and must all have been absorbed by the sessions);
//! * every replica answers every historical query (and a query past the
//!   latest) with identical bytes, and holds the same controller and the
//!   same sessions;
//! * the config numbers of the successful replies are distinct and exactly
//!   `1..=latest`: one configuration per successful change, none applied
//!   twice, none applied without a success;
//! * replaying the successful changes in config-number order on a fresh
//!   pure `Controller` gives the same replies and the same configurations
//!   (so what `rebalance` guarantees, which `rebalance_props.rs` checks on
//!   the pure controller, holds here too);
//! * the state machines of replicas stopped mid-run hold a prefix of the
//!   final history.
//!
//! The WAL scenario once found that a restarted replica could answer a new
//! proposal with the reply of one of its own old commands (`paxos-log`'s
//! driver tagged proposals with a sequence number that started again at 1
//! on every start). The driver now tags them with a proposer id drawn anew
//! at every start; the WAL scenario and the last test, which reproduces the
//! bug deterministically, guard against its return.
//!
//! Randomness (drops, partitions, victims, client choices) comes from one
//! SplitMix64 seed, printed at the start and on failure and settable with
//! `CONTROLLER_FAULT_SEED`. Thread scheduling is not seeded, so a seed
//! reproduces the fault pattern, not the exact interleaving.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use controller::{
    decode, encode, ClientId, ConfigNum, Configuration, Controller, ControllerCommand,
    ControllerOp, ControllerQuery, ControllerReply, ControllerStateMachine, Gid,
};
use paxos_log::{
    ChannelTransport, Config, DriverOptions, Envelope, MemAcceptorStore, Message, Node, NodeError,
    NodeHandle, NodeId, Role, Slot, StateMachine, Transport, WalAcceptorStore,
};
use storage::wal::WalOptions;
use storage::RealFs;
use tempfile::TempDir;

mod common;
use common::{addresses, node_id, reply_num, seed_from_env, RandomOps, SeedReport, SplitMix64};

const SEED_ENV: &str = "CONTROLLER_FAULT_SEED";
const SHARDS: u32 = 10;
/// Most changes one client sends in a run.
const OPS_PER_CLIENT_MAX: u64 = 150;
/// How long one change may take to get a definite reply, retries included.
const OP_DEADLINE: Duration = Duration::from_secs(15);
/// Whole-run bound of one scenario.
const RUN_LIMIT: Duration = Duration::from_secs(25);

// ---------------------------------------------------------------------------
// The faulty network.

/// What the nemesis controls.
#[derive(Debug)]
struct Faults {
    rng: SplitMix64,
    /// Probability of dropping an envelope, in parts per million.
    drop_ppm: u64,
    /// Side of each replica; envelopes between different sides are cut.
    /// A replica not in the map is on side 0.
    sides: BTreeMap<NodeId, u8>,
    /// Cut every phase 2 message (`Accept`, `Accepted`): leaders can be
    /// elected but choose nothing. Only the reproduction test sets it.
    block_phase2: bool,
}

/// Envelopes delivered, dropped at random and cut by a partition.
#[derive(Debug, Default)]
struct NetStats {
    delivered: AtomicU64,
    dropped: AtomicU64,
    cut: AtomicU64,
}

/// `ChannelTransport` with random loss and a partition table that can change
/// while the replicas run.
#[derive(Debug)]
struct FaultyTransport {
    inner: ChannelTransport,
    faults: Mutex<Faults>,
    stats: NetStats,
}

impl FaultyTransport {
    fn new(seed: u64, drop_ppm: u64) -> FaultyTransport {
        FaultyTransport {
            inner: ChannelTransport::new(),
            faults: Mutex::new(Faults {
                rng: SplitMix64(seed),
                drop_ppm,
                sides: BTreeMap::new(),
                block_phase2: false,
            }),
            stats: NetStats::default(),
        }
    }

    fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the partition: `sides` maps replicas to sides.
    fn partition(&self, sides: BTreeMap<NodeId, u8>) {
        self.faults().sides = sides;
    }

    /// No partition and no loss from now on.
    fn heal(&self) {
        let mut faults = self.faults();
        faults.sides.clear();
        faults.drop_ppm = 0;
    }
}

impl Transport for FaultyTransport {
    fn send(&self, envelopes: Vec<Envelope>) {
        let mut kept = Vec::with_capacity(envelopes.len());
        {
            let mut faults = self.faults();
            for envelope in envelopes {
                let from = faults.sides.get(&envelope.from).copied().unwrap_or(0);
                let to = faults.sides.get(&envelope.to).copied().unwrap_or(0);
                let phase2 = matches!(
                    envelope.message,
                    Message::Accept { .. } | Message::Accepted { .. }
                );
                if from != to || (faults.block_phase2 && phase2) {
                    self.stats.cut.fetch_add(1, Ordering::Relaxed);
                } else if faults.drop_ppm > 0 && faults.rng.below(1_000_000) < faults.drop_ppm {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                } else {
                    kept.push(envelope);
                }
            }
        }
        let count = u64::try_from(kept.len()).unwrap_or(u64::MAX);
        self.stats.delivered.fetch_add(count, Ordering::Relaxed);
        self.inner.send(kept);
    }
}

// ---------------------------------------------------------------------------
// The replicas.

/// The controller state machine, counting how many times each change of a
/// client was chosen in the log (a retry that reached another leader, or was
/// re-proposed by a new one, is chosen again and must be absorbed by the
/// session table). [`settle`]'s command is not counted.
#[derive(Debug)]
struct Counted {
    machine: ControllerStateMachine,
    chosen: BTreeMap<(ClientId, u64), u32>,
}

impl StateMachine for Counted {
    fn apply(&mut self, slot: Slot, command: &[u8]) -> Vec<u8> {
        if let Ok(ControllerCommand::Change { client_id, seq, .. }) = decode(command) {
            if client_id != SETTLE_CLIENT {
                *self.chosen.entry((client_id, seq)).or_insert(0) += 1;
            }
        }
        self.machine.apply(slot, command)
    }

    fn read(&mut self, query: &[u8]) -> Vec<u8> {
        self.machine.read(query)
    }

    fn durable_slot(&self) -> Slot {
        self.machine.durable_slot()
    }
}

fn index_of(id: NodeId) -> usize {
    usize::try_from(id.0 - 1).expect("node id fits usize")
}

/// One scenario's replicas, their network and (for the WAL variant) their
/// directories.
struct Cluster {
    replicas: usize,
    seed: u64,
    transport: Arc<FaultyTransport>,
    nodes: Vec<Option<Node<Counted>>>,
    /// The current handle of every replica (a stopped replica's handle
    /// answers `Stopped`), shared with the clients.
    handles: Arc<RwLock<Vec<NodeHandle>>>,
    dirs: Option<Vec<TempDir>>,
}

fn driver_options() -> DriverOptions {
    DriverOptions {
        tick: Duration::from_millis(5),
        // Short, so a client stuck on a cut-off leader moves on quickly.
        request_timeout: Duration::from_millis(400),
        ..DriverOptions::default()
    }
}

impl Cluster {
    fn start(replicas: usize, seed: u64, drop_ppm: u64, wal: bool) -> Cluster {
        let dirs = wal.then(|| {
            (0..replicas)
                .map(|_| TempDir::new().expect("temp dir"))
                .collect()
        });
        let mut cluster = Cluster {
            replicas,
            seed,
            transport: Arc::new(FaultyTransport::new(seed ^ 0x6e65_7477_6f72_6b21, drop_ppm)),
            nodes: Vec::new(),
            handles: Arc::new(RwLock::new(Vec::new())),
            dirs,
        };
        let nodes: Vec<_> = (0..replicas).map(|i| cluster.start_node(i)).collect();
        *cluster.handles.write().unwrap() = nodes.iter().map(Node::handle).collect();
        cluster.nodes = nodes.into_iter().map(Some).collect();
        cluster
    }

    /// Starts replica `i` with an empty state machine (and its WAL, if any)
    /// and connects it to the network.
    fn start_node(&self, i: usize) -> Node<Counted> {
        let id = node_id(i);
        let config = Config {
            rng_seed: self.seed ^ id.0,
            ..Config::new(id, (0..self.replicas).map(node_id).collect())
        };
        let machine = Counted {
            machine: ControllerStateMachine::new(SHARDS).expect("valid shard count"),
            chosen: BTreeMap::new(),
        };
        let transport = Arc::clone(&self.transport);
        let node = match &self.dirs {
            None => Node::start(
                config,
                MemAcceptorStore::new(),
                machine,
                transport,
                driver_options(),
            ),
            Some(dirs) => {
                let store =
                    WalAcceptorStore::open(RealFs::shared(), dirs[i].path(), WalOptions::default())
                        .expect("WAL opens");
                Node::start(config, store, machine, transport, driver_options())
            }
        }
        .expect("replica starts");
        self.transport.inner.register(id, node.handle());
        node
    }

    /// Stops replica `i` and returns its state machine.
    async fn stop_node(&mut self, i: usize) -> Counted {
        let node = self.nodes[i].take().expect("replica is running");
        self.transport.inner.unregister(node_id(i));
        tokio::task::spawn_blocking(move || node.stop())
            .await
            .expect("stop task")
            .expect("the driver thread returns its state machine")
    }

    /// Restarts replica `i` (WAL variant: from its directory).
    fn restart_node(&mut self, i: usize) {
        let node = self.start_node(i);
        self.handles.write().unwrap()[i] = node.handle();
        self.nodes[i] = Some(node);
    }

    fn running_handles(&self) -> Vec<NodeHandle> {
        self.nodes.iter().flatten().map(Node::handle).collect()
    }

    /// A running replica that believes it leads, if any.
    fn leader(&self) -> Option<NodeId> {
        self.running_handles()
            .iter()
            .find(|handle| handle.metrics().role == Some(Role::Leader))
            .map(NodeHandle::id)
    }
}

/// What the nemesis did.
#[derive(Debug, Default)]
struct NemesisStats {
    steps: u64,
    heals: u64,
    leader_isolations: u64,
    isolations: u64,
    minority_splits: u64,
    no_quorum: u64,
    restarts: u64,
    leader_restarts: u64,
}

/// Picks the next partition and installs it.
fn next_partition(
    cluster: &Cluster,
    rng: &mut SplitMix64,
    leader: Option<NodeId>,
    stats: &mut NemesisStats,
) {
    let n = cluster.replicas;
    let mut sides = BTreeMap::new();
    match rng.below(10) {
        0 | 1 => stats.heals += 1,
        2 | 3 => {
            let victim = leader.unwrap_or_else(|| node_id(rng.index(n)));
            sides.insert(victim, 1);
            stats.leader_isolations += 1;
        }
        4 | 5 => {
            sides.insert(node_id(rng.index(n)), 1);
            stats.isolations += 1;
        }
        6..=8 => {
            // A random minority of (n - 1) / 2 replicas on side 1: {1} | {2, 3}
            // with three, two against three with five.
            let mut ids: Vec<NodeId> = (0..n).map(node_id).collect();
            for _ in 0..(n - 1) / 2 {
                let picked = ids.swap_remove(rng.index(ids.len()));
                sides.insert(picked, 1);
            }
            stats.minority_splits += 1;
        }
        _ => {
            // Nobody hears anybody: no quorum anywhere for one step.
            for i in 0..n {
                sides.insert(node_id(i), u8::try_from(i + 1).expect("few replicas"));
            }
            stats.no_quorum += 1;
        }
    }
    cluster.transport.partition(sides);
}

// ---------------------------------------------------------------------------
// The clients.

/// A change and its definite reply.
#[derive(Debug, Clone)]
struct Record {
    client: ClientId,
    seq: u64,
    op: ControllerOp,
    reply: ControllerReply,
    /// When the definite reply came.
    done: Instant,
}

/// Why clients had to retry.
#[derive(Debug, Default)]
struct ClientStats {
    not_leader: AtomicU64,
    busy: AtomicU64,
    stopped: AtomicU64,
    indeterminate: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Proposes `Change { client, seq, op }` until a definite reply, always with
/// the same `(client, seq)`, following leader hints and moving on from
/// replicas that fail.
async fn submit(
    handles: &RwLock<Vec<NodeHandle>>,
    guess: &mut usize,
    rng: &mut SplitMix64,
    stats: &ClientStats,
    client: ClientId,
    seq: u64,
    op: &ControllerOp,
) -> ControllerReply {
    let command = encode(&ControllerCommand::Change {
        client_id: client,
        seq,
        op: op.clone(),
    });
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < OP_DEADLINE,
            "client {client} seq {seq} ({op:?}): no definite reply within {OP_DEADLINE:?}"
        );
        let (handle, count) = {
            let handles = handles.read().unwrap();
            (handles[*guess].clone(), handles.len())
        };
        let rotate = |guess: &mut usize, rng: &mut SplitMix64| {
            *guess = (*guess + 1 + rng.index(count - 1)) % count;
        };
        match handle.propose(command.clone()).await {
            Ok(bytes) => return decode(&bytes).expect("replies always decode"),
            Err(NodeError::NotLeader { leader_hint }) => {
                bump(&stats.not_leader);
                match leader_hint {
                    Some(hint) if hint != handle.id() => *guess = index_of(hint),
                    _ => rotate(guess, rng),
                }
                // Hints can point back and forth during an election.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(NodeError::Busy) => {
                bump(&stats.busy);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(NodeError::Stopped) => {
                bump(&stats.stopped);
                rotate(guess, rng);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(NodeError::Indeterminate(_)) => {
                // Perhaps applied, perhaps not: the same seq again, from
                // another replica in case this one is cut off.
                bump(&stats.indeterminate);
                rotate(guess, rng);
            }
            Err(error @ (NodeError::Reconfiguring | NodeError::InvalidMembership(_))) => {
                panic!("a proposal got a membership error: {error}")
            }
        }
    }
}

/// One client: joins, leaves and moves shards to its own gids, splits at
/// its own keys, until `stop` or `OPS_PER_CLIENT_MAX` changes.
async fn run_client(
    client: ClientId,
    seed: u64,
    handles: Arc<RwLock<Vec<NodeHandle>>>,
    stop: Arc<AtomicBool>,
    stats: Arc<ClientStats>,
) -> Vec<Record> {
    let mut rng = SplitMix64(seed);
    let mut guess = rng.index(handles.read().unwrap().len());
    let mut joined: BTreeSet<Gid> = BTreeSet::new();
    let mut ops = RandomOps {
        next_gid: client * 1000 + 1,
        max_joined: 4,
        shards: SHARDS,
    };
    let mut records = Vec::new();
    for seq in 1..=OPS_PER_CLIENT_MAX {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // Several bytes: never a pre-split boundary (one byte), and unique
        // per (client, seq).
        let split_key = format!("k{client:02}-{seq:03}").into_bytes();
        let op = ops.next(&mut rng, &joined, split_key);
        let reply = submit(&handles, &mut guess, &mut rng, &stats, client, seq, &op).await;
        if matches!(reply, ControllerReply::Changed { .. }) {
            match &op {
                ControllerOp::Join { groups } => joined.extend(groups.keys()),
                ControllerOp::Leave { gids } => gids.iter().for_each(|gid| {
                    joined.remove(gid);
                }),
                _ => {}
            }
        }
        records.push(Record {
            client,
            seq,
            op,
            reply,
            done: Instant::now(),
        });
        tokio::time::sleep(rng.millis(0, 30)).await;
    }
    records
}

// ---------------------------------------------------------------------------
// Checks.

fn query_bytes(machine: &mut ControllerStateMachine, num: Option<ConfigNum>) -> Vec<u8> {
    machine.read(&encode(&ControllerQuery::Config { num }))
}

/// Everything the module docs promise, on the final state machines.
/// Returns how many extra copies of changes the log chose (and the session
/// table absorbed), as replica 1 counted them.
fn verify(
    name: &str,
    replicas: Vec<Counted>,
    stopped_mid_run: &[Counted],
    records: &[Record],
) -> u32 {
    // Every change with a definite reply was chosen, on every replica, and
    // nothing else was (every client finished with a definite reply).
    let sent: BTreeSet<(ClientId, u64)> = records.iter().map(|r| (r.client, r.seq)).collect();
    for (i, replica) in replicas.iter().enumerate() {
        let chosen: BTreeSet<(ClientId, u64)> = replica.chosen.keys().copied().collect();
        assert_eq!(
            chosen,
            sent,
            "{name}: replica {} chose other changes than the clients got replies for",
            i + 1
        );
    }
    let copies = replicas[0].chosen.values().map(|count| count - 1).sum();
    let mut machines: Vec<ControllerStateMachine> = replicas
        .into_iter()
        .map(|replica| replica.machine)
        .collect();

    // Every replica answers every historical query identically.
    let latest = machines[0].controller().latest_num();
    for num in (0..=latest + 1).map(Some).chain([None]) {
        let answers: Vec<Vec<u8>> = machines
            .iter_mut()
            .map(|machine| query_bytes(machine, num))
            .collect();
        for (i, answer) in answers.iter().enumerate().skip(1) {
            assert_eq!(
                answer,
                &answers[0],
                "{name}: replica {} answers query {num:?} differently from replica 1",
                i + 1
            );
        }
    }
    for (i, machine) in machines.iter().enumerate().skip(1) {
        assert_eq!(
            machine.controller(),
            machines[0].controller(),
            "{name}: replica {} holds another history",
            i + 1
        );
        for record in records {
            let session = |m: &ControllerStateMachine| {
                m.sessions()
                    .get(record.client)
                    .map(|s| (s.seq, s.reply.clone()))
            };
            assert_eq!(
                session(machine),
                session(&machines[0]),
                "{name}: replica {} has another session for client {}",
                i + 1,
                record.client
            );
        }
    }
    let reference = machines[0].controller();

    // Each client's session holds its last change.
    let mut last_seq: BTreeMap<ClientId, &Record> = BTreeMap::new();
    for record in records {
        last_seq.insert(record.client, record);
    }
    for (client, record) in &last_seq {
        let session = machines[0].sessions().get(*client).expect("client session");
        assert_eq!(
            (session.seq, &session.reply),
            (record.seq, &record.reply),
            "{name}: client {client}'s session"
        );
    }

    // Every definite reply is a success (each client sends only valid
    // changes), and their config numbers are exactly 1..=latest.
    let mut by_num: BTreeMap<ConfigNum, &Record> = BTreeMap::new();
    for record in records {
        let num = reply_num(&record.reply).unwrap_or_else(|| {
            panic!(
                "{name}: client {} seq {} ({:?}) was refused: {:?}",
                record.client, record.seq, record.op, record.reply
            )
        });
        if let Some(other) = by_num.insert(num, record) {
            panic!(
                "{name}: configuration {num} reported for two changes: client {} seq {} and \
                 client {} seq {}",
                other.client, other.seq, record.client, record.seq
            );
        }
    }
    let nums: Vec<ConfigNum> = by_num.keys().copied().collect();
    let expected: Vec<ConfigNum> = (1..=latest).collect();
    assert_eq!(
        nums, expected,
        "{name}: successful changes do not account for configurations 1..={latest}"
    );

    // The history is exactly the successful changes, in reply order.
    let mut model = Controller::new(SHARDS).expect("valid shard count");
    for (num, record) in &by_num {
        let reply = model.apply(&record.op);
        assert_eq!(
            &reply, &record.reply,
            "{name}: replaying configuration {num} ({:?}) on a pure controller",
            record.op
        );
        assert_eq!(
            reference.config(*num),
            model.config(*num),
            "{name}: configuration {num}"
        );
    }

    // Replicas stopped mid-run held a prefix of the final history.
    for (k, earlier) in stopped_mid_run.iter().enumerate() {
        let controller = earlier.machine.controller();
        for num in 0..=controller.latest_num() {
            assert_eq!(
                controller.config(num),
                reference.config(num),
                "{name}: a replica stopped mid-run (stop #{k}) had another configuration {num}"
            );
        }
    }
    copies
}

// ---------------------------------------------------------------------------
// Scenarios.

struct Scenario {
    name: &'static str,
    /// Mixed into the base seed so scenarios differ.
    salt: u64,
    replicas: usize,
    drop_ppm: u64,
    wal_with_restarts: bool,
    clients: u64,
    chaos: Duration,
}

/// The client id of [`settle`]'s command; no test client has it.
const SETTLE_CLIENT: ClientId = u64::MAX;

/// Proposes one more command through the healed log and waits until every
/// replica applied everything up to it. The command is a change the
/// controller refuses (a Leave of no group) from a client of its own: it
/// creates no configuration, and the client's session is not one the checks
/// compare (nor is the command one [`Counted`] counts).
async fn settle(cluster: &Cluster) {
    let handles = cluster.running_handles();
    let command = encode(&ControllerCommand::Change {
        client_id: SETTLE_CLIENT,
        seq: 1,
        op: ControllerOp::Leave { gids: Vec::new() },
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let applied = loop {
        assert!(
            Instant::now() < deadline,
            "the healed cluster did not take a command within 10 s: {:?}",
            handles.iter().map(NodeHandle::metrics).collect::<Vec<_>>()
        );
        let leader = handles
            .iter()
            .find(|handle| handle.metrics().role == Some(Role::Leader));
        if let Some(leader) = leader {
            if leader.propose(command.clone()).await.is_ok() {
                break leader.metrics().applied_slot;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    for handle in &handles {
        let caught_up = handle
            .wait_for(Duration::from_secs(10), |m| m.applied_slot >= applied)
            .await;
        assert!(
            caught_up.is_some(),
            "replica {} did not apply slot {applied}: {:?}",
            handle.id(),
            handle.metrics()
        );
    }
}

/// A linearizable read of the latest configuration through the leader.
async fn read_latest(cluster: &Cluster) -> Configuration {
    let query = encode(&ControllerQuery::Config { num: None });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no linearizable read in 10 s");
        for handle in cluster.running_handles() {
            if let Ok(bytes) = handle.read(query.clone()).await {
                match decode(&bytes).expect("replies always decode") {
                    ControllerReply::Config(config) => return config,
                    other => panic!("a query was answered with {other:?}"),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn run(scenario: Scenario) {
    let base = seed_from_env(SEED_ENV);
    let _report = SeedReport {
        name: format!("faults[{}]", scenario.name),
        env: SEED_ENV,
        seed: base,
    };
    let seed = SplitMix64(base ^ scenario.salt).next_u64();
    eprintln!(
        "faults[{}]: {SEED_ENV}={base}, {} replicas, drop {} ppm, {}",
        scenario.name,
        scenario.replicas,
        scenario.drop_ppm,
        if scenario.wal_with_restarts {
            "WAL stores, restarts"
        } else {
            "in-memory stores"
        }
    );
    tokio::time::timeout(RUN_LIMIT, run_inner(&scenario, seed))
        .await
        .unwrap_or_else(|_| panic!("faults[{}]: run exceeded {RUN_LIMIT:?}", scenario.name));
}

async fn run_inner(scenario: &Scenario, seed: u64) {
    let started = Instant::now();
    let mut rng = SplitMix64(seed);
    let mut cluster = Cluster::start(
        scenario.replicas,
        seed,
        scenario.drop_ppm,
        scenario.wal_with_restarts,
    );

    let stop = Arc::new(AtomicBool::new(false));
    let client_stats = Arc::new(ClientStats::default());
    let clients: Vec<_> = (1..=scenario.clients)
        .map(|client| {
            tokio::spawn(run_client(
                client,
                seed ^ client.wrapping_mul(0x0123_4567_89ab_cdef),
                Arc::clone(&cluster.handles),
                Arc::clone(&stop),
                Arc::clone(&client_stats),
            ))
        })
        .collect();

    // The nemesis.
    let mut nemesis = NemesisStats::default();
    let mut stopped_mid_run = Vec::new();
    let mut down: Option<usize> = None;
    while started.elapsed() < scenario.chaos {
        tokio::time::sleep(rng.millis(150, 250)).await;
        nemesis.steps += 1;
        if let Some(i) = down.take() {
            cluster.restart_node(i);
            nemesis.restarts += 1;
        }
        let leader = cluster.leader();
        next_partition(&cluster, &mut rng, leader, &mut nemesis);
        if scenario.wal_with_restarts && nemesis.steps % 3 == 2 {
            let victim = match leader {
                Some(leader) if rng.below(2) == 0 => {
                    nemesis.leader_restarts += 1;
                    index_of(leader)
                }
                _ => rng.index(scenario.replicas),
            };
            stopped_mid_run.push(cluster.stop_node(victim).await);
            down = Some(victim);
        }
    }
    if let Some(i) = down.take() {
        cluster.restart_node(i);
        nemesis.restarts += 1;
    }
    let chaos_took = started.elapsed();
    let net = &cluster.transport.stats;
    let (delivered, dropped, cut) = (
        net.delivered.load(Ordering::Relaxed),
        net.dropped.load(Ordering::Relaxed),
        net.cut.load(Ordering::Relaxed),
    );

    // Heal; clients finish the change they are on.
    stop.store(true, Ordering::Relaxed);
    cluster.transport.heal();
    let mut records = Vec::new();
    for client in clients {
        records.extend(client.await.expect("client task"));
    }
    settle(&cluster).await;
    let latest = read_latest(&cluster).await;

    let mut machines = Vec::new();
    for i in 0..scenario.replicas {
        machines.push(cluster.stop_node(i).await);
    }
    assert_eq!(
        latest.num,
        machines[0].machine.controller().latest_num(),
        "{}: linearizable read after healing",
        scenario.name
    );
    let copies = verify(scenario.name, machines, &stopped_mid_run, &records);

    let chaos_end = started + chaos_took;
    let late_half = records
        .iter()
        .filter(|r| r.done > started + chaos_took / 2 && r.done <= chaos_end)
        .count();
    let after_heal = records.iter().filter(|r| r.done > chaos_end).count();
    let stats = &client_stats;
    eprintln!(
        "faults[{}]: {} changes applied once each ({} configurations) in {:?} (chaos {:?}; \
         {late_half} changes done in its second half, {after_heal} after healing; {copies} duplicate copies chosen and absorbed); network: {delivered} delivered, {dropped} dropped, {cut} cut; nemesis: {nemesis:?}; \
         client retries: {} not-leader, {} indeterminate, {} busy, {} stopped",
        scenario.name,
        records.len(),
        latest.num + 1,
        started.elapsed(),
        chaos_took,
        stats.not_leader.load(Ordering::Relaxed),
        stats.indeterminate.load(Ordering::Relaxed),
        stats.busy.load(Ordering::Relaxed),
        stats.stopped.load(Ordering::Relaxed),
    );
    assert!(
        dropped > 0 && cut > 0,
        "{}: no fault was injected",
        scenario.name
    );
    if scenario.wal_with_restarts {
        assert!(
            nemesis.restarts > 0,
            "{}: no replica restarted",
            scenario.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_under_loss_and_rotating_partitions_apply_each_change_once() {
    run(Scenario {
        name: "3 replicas, memory",
        salt: 3,
        replicas: 3,
        drop_ppm: 50_000,
        wal_with_restarts: false,
        clients: 4,
        chaos: Duration::from_secs(3),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_replicas_under_loss_and_rotating_partitions_apply_each_change_once() {
    run(Scenario {
        name: "5 replicas, memory",
        salt: 5,
        replicas: 5,
        drop_ppm: 100_000,
        wal_with_restarts: false,
        clients: 4,
        chaos: Duration::from_secs(3),
    })
    .await;
}

/// Replicas with WALs are stopped and restarted (the leader half the time)
/// under loss and partitions. Regression test: before proposal tags carried
/// a per-start proposer id, about one run in ten failed (e.g.
/// `CONTROLLER_FAULT_SEED=897422760013150223`: client 3's Split was answered
/// `Changed { num: 1 }` while the replicas recorded `Split { num: 311, .. }`),
/// because a restarted replica answered a new proposal with the reply of one
/// of its own old commands; see
/// `a_restarted_leader_answers_each_new_proposal_with_its_own_reply`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_replicas_restarted_under_loss_and_partitions_keep_every_change_once() {
    run(Scenario {
        name: "3 replicas, WAL, restarts",
        salt: 7,
        replicas: 3,
        drop_ppm: 50_000,
        wal_with_restarts: true,
        clients: 3,
        chaos: Duration::from_secs(3),
    })
    .await;
}

// ---------------------------------------------------------------------------
// A deterministic reproduction of the bug the WAL scenario finds.

fn join(gid: Gid) -> ControllerOp {
    ControllerOp::Join {
        groups: BTreeMap::from([(gid, addresses(gid))]),
    }
}

fn change(client: ClientId, seq: u64, op: ControllerOp) -> Vec<u8> {
    encode(&ControllerCommand::Change {
        client_id: client,
        seq,
        op,
    })
}

/// Starts replica `id` of three on its WAL in `dir`; replica 1 times out
/// (and so leads) first.
fn start_repro_node(
    id: NodeId,
    dir: &TempDir,
    transport: &Arc<FaultyTransport>,
) -> Node<ControllerStateMachine> {
    let (min, max) = if id == NodeId(1) {
        (10, 12)
    } else {
        (300, 400)
    };
    let config = Config {
        election_timeout_ticks_min: min,
        election_timeout_ticks_max: max,
        ..Config::new(id, (0..3).map(node_id).collect())
    };
    let store = WalAcceptorStore::open(RealFs::shared(), dir.path(), WalOptions::default())
        .expect("WAL opens");
    let machine = ControllerStateMachine::new(SHARDS).expect("valid shard count");
    let node = Node::start(
        config,
        store,
        machine,
        Arc::clone(transport),
        driver_options(),
    )
    .expect("replica starts");
    transport.inner.register(id, node.handle());
    node
}

async fn wait_until_leads(handle: &NodeHandle) {
    let led = handle
        .wait_for(Duration::from_secs(10), |m| m.role == Some(Role::Leader))
        .await;
    assert!(
        led.is_some(),
        "{} did not lead: {:?}",
        handle.id(),
        handle.metrics()
    );
}

/// Regression test. The driver matches a chosen command to its waiting
/// proposer by a tag, which was (origin replica, per-start sequence number)
/// with the sequence starting at 1 again on every start: a replica restarted
/// with an empty state machine re-applied its own old commands, and a new
/// proposal with the same seq was answered with the old command's output.
/// Tags now carry a proposer id drawn anew at every start.
///
/// Here replica 1 leads and proposes Join 1, 2, 3 (configurations 1-3); all
/// three replicas restart from their WALs; replica 1 leads again while
/// phase 2 is cut, takes a new Join 99, then phase 2 resumes. Join 99
/// creates configuration 4, and its proposer must be told so (before the
/// fix it was told `Changed { num: 1 }`, the reply of Join 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_answers_each_new_proposal_with_its_own_reply() {
    let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new().expect("temp dir")).collect();
    let transport = Arc::new(FaultyTransport::new(1, 0));
    let start_all = || -> Vec<Node<ControllerStateMachine>> {
        (0..3)
            .map(|i| start_repro_node(node_id(i), &dirs[i], &transport))
            .collect()
    };

    let nodes = start_all();
    let leader = nodes[0].handle();
    wait_until_leads(&leader).await;
    for gid in 1..=3 {
        let reply = leader
            .propose(change(1, gid, join(gid)))
            .await
            .expect("chosen");
        assert_eq!(
            decode::<ControllerReply>(&reply).expect("reply decodes"),
            ControllerReply::Changed { num: gid }
        );
    }
    let applied = leader.metrics().applied_slot;
    for node in &nodes {
        let caught_up = node
            .handle()
            .wait_for(Duration::from_secs(10), |m| m.applied_slot >= applied)
            .await;
        assert!(caught_up.is_some(), "replicas did not apply slot {applied}");
    }
    for (i, node) in nodes.into_iter().enumerate() {
        transport.inner.unregister(node_id(i));
        tokio::task::spawn_blocking(move || node.stop())
            .await
            .expect("stop task");
    }

    // Everyone restarts; replica 1 leads again but can choose nothing yet.
    transport.faults().block_phase2 = true;
    let nodes = start_all();
    let leader = nodes[0].handle();
    wait_until_leads(&leader).await;
    let proposal = {
        let leader = leader.clone();
        tokio::spawn(async move { leader.propose(change(2, 1, join(99))).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    transport.faults().block_phase2 = false;
    let reply = proposal
        .await
        .expect("proposal task")
        .expect("the proposal is chosen once phase 2 resumes");
    let reply: ControllerReply = decode(&reply).expect("reply decodes");

    let mut machines = Vec::new();
    for (i, node) in nodes.into_iter().enumerate() {
        transport.inner.unregister(node_id(i));
        let machine = tokio::task::spawn_blocking(move || node.stop())
            .await
            .expect("stop task")
            .expect("state machine");
        machines.push(machine);
    }
    let latest = machines[0].controller().latest();
    assert_eq!(
        latest.num, 4,
        "Join 99 applied once after the three old joins"
    );
    assert!(latest.groups.contains_key(&99));
    assert_eq!(
        reply,
        ControllerReply::Changed { num: 4 },
        "the proposer of Join 99 was answered with another command's reply"
    );
}
