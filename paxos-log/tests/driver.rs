//! The driver running real replicas: threads, a channel network, and (in
//! the restart test) WALs on disk.
//!
//! Method: start three `Node`s on a `ChannelTransport`, drive concurrent
//! proposals through whichever replica leads, and check what every
//! replica's state machine applied. The restart test stops random replicas,
//! the leader included, in the middle of the load and restarts them from
//! their WAL directories; every proposal that was acknowledged must be in
//! every replica's log afterwards, in the same order everywhere.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use paxos_log::store::wal::WalAcceptorStore;
use paxos_log::{
    AcceptorStore, ChannelTransport, Config, DriverOptions, MemAcceptorStore, Node, NodeHandle,
    NodeId, Role, Slot, StateMachine,
};
use storage::wal::WalOptions;
use storage::RealFs;

mod cluster;
use cluster::{
    assert_contains_all, assert_distinct, assert_prefix, assert_same_logs, commands_of, commit,
    start_on_disk, wait_applied, wait_for_leader, with_attempt, Clients, Live, LogMachine,
};

fn options() -> DriverOptions {
    DriverOptions {
        tick: Duration::from_millis(5),
        request_timeout: Duration::from_secs(2),
        ..DriverOptions::default()
    }
}

fn members() -> Vec<NodeId> {
    (1..=3).map(NodeId).collect()
}

fn start<S: AcceptorStore + Send + 'static>(
    id: NodeId,
    store: S,
    network: &Arc<ChannelTransport>,
) -> Node<LogMachine> {
    let config = Config {
        rng_seed: 7,
        ..Config::new(id, members())
    };
    let node = Node::start(
        config,
        store,
        LogMachine::default(),
        Arc::clone(network),
        options(),
    )
    .expect("replica starts");
    network.register(id, node.handle());
    node
}

fn open_wal(dir: &Path) -> WalAcceptorStore {
    WalAcceptorStore::open(RealFs::shared(), dir, WalOptions::default()).expect("WAL opens")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_agree_under_concurrent_load() {
    let network = Arc::new(ChannelTransport::new());
    let nodes: Vec<_> = members()
        .into_iter()
        .map(|id| start(id, MemAcceptorStore::new(), &network))
        .collect();
    let handles: Vec<NodeHandle> = nodes.iter().map(Node::handle).collect();
    let leader = wait_for_leader(&handles).await;

    let mut tasks = Vec::new();
    for client in 0..16u8 {
        let leader = leader.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50u8 {
                leader
                    .propose(vec![client, i])
                    .await
                    .expect("proposal accepted");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let count = leader.read(vec![]).await.expect("linearizable read");
    assert_eq!(
        u64::from_le_bytes(count.try_into().unwrap()),
        800,
        "read sees every write"
    );

    let last = leader.metrics().applied_slot;
    wait_applied(&handles, last).await;
    let machines: Vec<LogMachine> = nodes.into_iter().map(|n| n.stop().unwrap()).collect();
    assert_eq!(assert_same_logs(&machines).len(), 800);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_proposals_survive_restarts_from_disk() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let network = Arc::new(ChannelTransport::new());
    let mut nodes: Vec<Option<Node<LogMachine>>> = members()
        .into_iter()
        .zip(&dirs)
        .map(|(id, dir)| Some(start(id, open_wal(dir.path()), &network)))
        .collect();
    let live: Live = Arc::default();
    let publish = |nodes: &[Option<Node<LogMachine>>]| {
        *live.write().unwrap() = nodes.iter().flatten().map(Node::handle).collect();
    };
    publish(&nodes);
    let handles = live.read().unwrap().clone();
    wait_for_leader(&handles).await;
    let clients = Clients::spawn(8, &live);

    // Chaos: stop a replica (often the leader) once the clients made
    // progress, keep the load going until they make more, then restart it
    // from its WAL directory with an empty state machine.
    let mut leader_restarts = 0;
    for round in 0..8usize {
        clients.progress(20).await;
        let victim = if round % 2 == 0 {
            nodes
                .iter()
                .flatten()
                .position(|n| n.handle().metrics().role == Some(Role::Leader))
                .unwrap_or(round % 3)
        } else {
            round % 3
        };
        let id = NodeId(victim as u64 + 1);
        if let Some(node) = nodes[victim].take() {
            if node.handle().metrics().role == Some(Role::Leader) {
                leader_restarts += 1;
            }
            network.unregister(id);
            node.stop();
        }
        publish(&nodes);
        clients.progress(20).await;
        nodes[victim] = Some(start(id, open_wal(dirs[victim].path()), &network));
        publish(&nodes);
    }
    clients.progress(20).await;
    let acked = clients.stop().await;
    assert!(
        leader_restarts >= 2,
        "chaos did not hit leaders: {leader_restarts}"
    );

    // Settle: one more command through the leader, then everyone applies it.
    let handles: Vec<NodeHandle> = nodes.iter().flatten().map(Node::handle).collect();
    let last = commit(&handles, b"final").await;
    wait_applied(&handles, last).await;

    let machines: Vec<LogMachine> = nodes
        .into_iter()
        .flatten()
        .map(|n| n.stop().unwrap())
        .collect();
    let reference = commands_of(&machines[0]);
    for (i, machine) in machines.iter().enumerate() {
        assert_prefix(machine, &reference, &format!("replica {}", i + 1));
    }
    assert_distinct(&reference);
    assert_contains_all(&reference, &acked);
}

/// Starts replica `id` from `dir` with snapshots: one every 25 applied
/// slots, sent in 512-byte chunks, and 4 KiB WAL segments, so compaction
/// removes whole segments.
fn start_with_snapshots(
    id: NodeId,
    dir: &Path,
    network: &Arc<ChannelTransport>,
) -> Node<LogMachine> {
    let options = DriverOptions {
        snapshot_every_slots: 25,
        snapshot_chunk_bytes: 512,
        snapshot_resend_after: Duration::from_millis(50),
        ..options()
    };
    let config = Config {
        rng_seed: 11,
        ..Config::new(id, members())
    };
    start_on_disk(config, dir, 4096, options, network)
}

/// Proposes `count` commands tagged `tag` through the current leader, one at
/// a time, retrying refused ones; returns the slot of the last.
async fn propose_all(handles: &[NodeHandle], tag: u8, count: u16) -> Slot {
    let mut last = 0;
    for i in 0..count {
        last = commit(handles, &[vec![tag], i.to_le_bytes().to_vec()].concat()).await;
    }
    last
}

/// A replica that was down while the others snapshotted and compacted their
/// logs past it comes back through a snapshot, then the log tail; a replica
/// restarted from its own snapshot and compacted WAL rebuilds the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_the_compacted_log_catches_up_from_a_snapshot() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let network = Arc::new(ChannelTransport::new());
    let mut nodes: Vec<Option<Node<LogMachine>>> = members()
        .into_iter()
        .zip(&dirs)
        .map(|(id, dir)| Some(start_with_snapshots(id, dir.path(), &network)))
        .collect();
    let all: Vec<NodeHandle> = nodes.iter().flatten().map(Node::handle).collect();
    propose_all(&all, 1, 10).await;

    // Replica 3 goes down; the other two go on far past several snapshots.
    network.unregister(NodeId(3));
    nodes[2].take().unwrap().stop();
    let two: Vec<NodeHandle> = nodes.iter().flatten().map(Node::handle).collect();
    let last = propose_all(&two, 2, 200).await;
    wait_applied(&two, last).await;
    for handle in &two {
        let metrics = handle.metrics();
        assert!(
            metrics.log_start > 100,
            "{} did not compact: {metrics:?}",
            handle.id()
        );
    }
    for dir in &dirs[..2] {
        let first_segment = dir.path().join("wal").join("00000000000000000001.wal");
        assert!(
            !first_segment.exists(),
            "compaction left the first WAL segment in place"
        );
    }

    // Replica 3 restarts from its own disk, far behind everyone's log start.
    nodes[2] = Some(start_with_snapshots(NodeId(3), dirs[2].path(), &network));
    let all: Vec<NodeHandle> = nodes.iter().flatten().map(Node::handle).collect();
    let last = propose_all(&all, 3, 5).await;
    wait_applied(&all, last).await;
    let caught_up = all[2].metrics();
    assert!(
        caught_up.snapshots_installed >= 1,
        "replica 3 did not install a snapshot: {caught_up:?}"
    );

    // Replica 1 restarts from its own snapshot and compacted WAL.
    network.unregister(NodeId(1));
    nodes[0].take().unwrap().stop();
    nodes[0] = Some(start_with_snapshots(NodeId(1), dirs[0].path(), &network));
    let all: Vec<NodeHandle> = nodes.iter().flatten().map(Node::handle).collect();
    let last = propose_all(&all, 4, 5).await;
    wait_applied(&all, last).await;

    let machines: Vec<LogMachine> = nodes
        .into_iter()
        .flatten()
        .map(|n| n.stop().unwrap())
        .collect();
    assert_eq!(
        assert_same_logs(&machines).len(),
        220,
        "every command applied exactly once"
    );
}

/// `commit` retries after unknown outcomes, so several attempts of one
/// command may be chosen: the state machine records the first, answers the
/// others with its slot, and still records one attempt chosen twice.
#[test]
fn the_log_machine_applies_one_attempt_of_a_retried_command() {
    let mut machine = LogMachine::default();
    assert_eq!(machine.apply(3, &with_attempt(1, b"x")), 3u64.to_le_bytes());
    assert_eq!(machine.apply(4, b"plain"), 4u64.to_le_bytes());
    assert_eq!(machine.apply(5, &with_attempt(0, b"x")), 3u64.to_le_bytes());
    let snapshot = machine.snapshot().expect("snapshots");
    let mut restored = LogMachine::default();
    restored.restore(5, &snapshot).expect("restores");
    for machine in [&mut machine, &mut restored] {
        assert_eq!(machine.apply(6, &with_attempt(2, b"x")), 3u64.to_le_bytes());
        assert_eq!(machine.apply(7, &with_attempt(1, b"x")), 7u64.to_le_bytes());
        assert_eq!(
            machine.applied,
            vec![
                (3, b"x".to_vec()),
                (4, b"plain".to_vec()),
                (7, b"x".to_vec())
            ],
            "attempt 1 chosen twice shows twice"
        );
    }
}

/// Snapshots are taken by bytes of applied commands as well as by slots: a
/// log of few, large commands is compacted as often as its size asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_also_taken_after_enough_bytes_of_commands() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let network = Arc::new(ChannelTransport::new());
    let options = DriverOptions {
        // Never by slot count: only the bytes can trigger one.
        snapshot_every_slots: 0,
        snapshot_every_bytes: 8 * 1024,
        ..options()
    };
    let nodes: Vec<Node<LogMachine>> = members()
        .into_iter()
        .zip(&dirs)
        .map(|(id, dir)| {
            let config = Config {
                rng_seed: 12,
                ..Config::new(id, members())
            };
            start_on_disk(config, dir.path(), 4096, options.clone(), &network)
        })
        .collect();
    let handles: Vec<NodeHandle> = nodes.iter().map(Node::handle).collect();
    let mut last = 0;
    for i in 0..20u8 {
        // 1 KiB commands: 20 KiB in all, past the 8 KiB threshold twice.
        last = commit(&handles, &[vec![5, i], vec![i; 1022]].concat()).await;
    }
    wait_applied(&handles, last).await;
    for handle in &handles {
        let metrics = handle.metrics();
        assert!(
            metrics.snapshots_taken >= 1 && metrics.log_start > 1,
            "{} took no snapshot by bytes: {metrics:?}",
            handle.id()
        );
    }
    for node in nodes {
        node.stop();
    }
}
