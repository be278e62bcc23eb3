//! The driver running real replicas: threads, a channel network, and (in
//! the restart test) WALs on disk.
//!
//! Method: start three `Node`s on a `ChannelTransport`, drive concurrent
//! proposals through whichever replica leads, and check what every
//! replica's state machine applied. The restart test stops random replicas,
//! the leader included, in the middle of the load and restarts them from
//! their WAL directories; every proposal that was acknowledged must be in
//! every replica's log afterwards, in the same order everywhere.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use paxos_log::store::wal::WalAcceptorStore;
use paxos_log::{
    AcceptorStore, ChannelTransport, Config, DriverOptions, MemAcceptorStore, Node, NodeError,
    NodeHandle, NodeId, Role, Slot,
};
use storage::snapshot::SnapshotStore;
use storage::wal::WalOptions;
use storage::RealFs;

mod cluster;
use cluster::{commands_of, commit, wait_applied, wait_for_leader, LogMachine};

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
    let reference = commands_of(&machines[0]);
    assert_eq!(reference.len(), 800);
    assert_eq!(
        reference.iter().collect::<BTreeSet<_>>().len(),
        800,
        "no command applied twice"
    );
    for machine in &machines[1..] {
        assert_eq!(
            commands_of(machine),
            reference,
            "replicas applied different logs"
        );
    }
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
    let handles: Vec<NodeHandle> = nodes.iter().flatten().map(Node::handle).collect();
    wait_for_leader(&handles).await;

    // Clients: propose unique commands through whoever leads, and remember
    // every one that was acknowledged.
    let stop_clients = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..8u32 {
        let handles = handles.clone();
        let stop = Arc::clone(&stop_clients);
        clients.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut seq = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let leader = handles
                    .iter()
                    .find(|h| h.metrics().role == Some(Role::Leader));
                let Some(leader) = leader else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let command = [client.to_le_bytes(), seq.to_le_bytes()].concat();
                seq += 1;
                match leader.propose(command.clone()).await {
                    Ok(_) => acked.push(command),
                    Err(NodeError::NotLeader { .. } | NodeError::Busy | NodeError::Stopped) => {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    // Unknown outcome: fine either way; not counted as acked.
                    Err(NodeError::Indeterminate(_)) => {}
                    Err(error) => panic!("a proposal got {error}"),
                }
            }
            acked
        }));
    }

    // Chaos: stop a replica (often the leader), keep the load going, then
    // restart it from its WAL directory with an empty state machine.
    let mut restarts = 0;
    let mut leader_restarts = 0;
    for round in 0..8usize {
        tokio::time::sleep(Duration::from_millis(150)).await;
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
        tokio::time::sleep(Duration::from_millis(100)).await;
        nodes[victim] = Some(start(id, open_wal(dirs[victim].path()), &network));
        restarts += 1;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_clients.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for client in clients {
        acked.extend(client.await.unwrap());
    }
    assert!(
        restarts == 8 && leader_restarts >= 2,
        "chaos did not hit leaders: {leader_restarts}"
    );
    assert!(
        acked.len() > 100,
        "too little progress under chaos: {} acked",
        acked.len()
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
        let log = commands_of(machine);
        assert_eq!(
            &log[..],
            &reference[..log.len().min(reference.len())],
            "replica {i} diverged"
        );
        let slots: Vec<Slot> = machine.applied.iter().map(|(s, _)| *s).collect();
        assert!(
            slots.windows(2).all(|w| w[0] <= w[1]),
            "replica {i} applied out of order"
        );
    }
    let applied: BTreeSet<&Vec<u8>> = reference.iter().collect();
    assert_eq!(
        applied.len(),
        reference.len(),
        "a command was applied twice"
    );
    for command in &acked {
        assert!(
            applied.contains(command),
            "acknowledged command {command:?} lost"
        );
    }
}

fn start_with_snapshots(
    id: NodeId,
    dir: &Path,
    network: &Arc<ChannelTransport>,
) -> Node<LogMachine> {
    let wal_options = WalOptions {
        segment_size_bytes_max: 4096,
        ..WalOptions::default()
    };
    let store =
        WalAcceptorStore::open(RealFs::shared(), &dir.join("wal"), wal_options).expect("WAL opens");
    let snapshots =
        SnapshotStore::open(RealFs::shared(), &dir.join("snap")).expect("snapshot store opens");
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
    let node = Node::start_with_snapshots(
        config,
        store,
        LogMachine::default(),
        Arc::clone(network),
        options,
        snapshots,
    )
    .expect("replica starts");
    network.register(id, node.handle());
    node
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
    let reference = commands_of(&machines[0]);
    assert_eq!(reference.len(), 220, "every command applied exactly once");
    for (i, machine) in machines.iter().enumerate() {
        assert_eq!(commands_of(machine), reference, "replica {} differs", i + 1);
    }
}
