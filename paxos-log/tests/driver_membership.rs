//! Membership change on real drivers: WALs and snapshots on disk, threads,
//! a channel network, clients proposing all along.
//!
//! Method: five machines run from the start; the group's genesis
//! configuration is n1..=n3, so n4 and n5 run as non-voters until a change
//! adds them. Clients propose unique commands through whichever replica
//! leads while the group adds, replaces and removes replicas, and (second
//! test) while the replica being added or removed, or the leader, is
//! stopped in the middle of the change and restarted from its own disk.
//! Afterwards every acknowledged command must be in the log of every member
//! of the final configuration, in the same order everywhere, and a removed
//! replica's log must be a prefix of theirs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use paxos_log::store::wal::WalAcceptorStore;
use paxos_log::{
    ChannelTransport, Config, DriverOptions, Node, NodeError, NodeHandle, NodeId, Role, Slot,
};
use storage::snapshot::SnapshotStore;
use storage::wal::WalOptions;
use storage::RealFs;
use tokio::task::JoinHandle;

mod cluster;
use cluster::{commands_of, commit, wait_applied, LogMachine};

/// α of the test group: small, so a change is in force a few slots after it
/// is chosen.
const WINDOW_SLOTS: u64 = 8;

fn ids(ids: &[u64]) -> Vec<NodeId> {
    ids.iter().copied().map(NodeId).collect()
}

/// Starts machine `id` from its directory (WAL and snapshots; a snapshot
/// every 25 applied slots, so a replica added late catches up through one).
fn start(id: NodeId, dir: &Path, network: &Arc<ChannelTransport>) -> Node<LogMachine> {
    let wal_options = WalOptions {
        segment_size_bytes_max: 16 * 1024,
        ..WalOptions::default()
    };
    let store =
        WalAcceptorStore::open(RealFs::shared(), &dir.join("wal"), wal_options).expect("WAL opens");
    let snapshots =
        SnapshotStore::open(RealFs::shared(), &dir.join("snap")).expect("snapshot store opens");
    let options = DriverOptions {
        tick: Duration::from_millis(5),
        request_timeout: Duration::from_secs(2),
        snapshot_every_slots: 25,
        snapshot_chunk_bytes: 4096,
        snapshot_resend_after: Duration::from_millis(50),
        ..DriverOptions::default()
    };
    let config = Config {
        rng_seed: 17,
        reconfig_window_slots: WINDOW_SLOTS,
        // Every machine, added later or not, knows the group by its genesis.
        ..Config::new(id, ids(&[1, 2, 3]))
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

/// Five machines, their directories and the handles clients use.
struct Machines {
    dirs: Vec<tempfile::TempDir>,
    network: Arc<ChannelTransport>,
    nodes: BTreeMap<NodeId, Node<LogMachine>>,
    /// Handles of the running machines, shared with the clients.
    live: Arc<RwLock<Vec<NodeHandle>>>,
}

impl Machines {
    fn start_all() -> Machines {
        let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
        let network = Arc::new(ChannelTransport::new());
        let nodes: BTreeMap<NodeId, Node<LogMachine>> = (1..=5)
            .zip(&dirs)
            .map(|(i, dir)| (NodeId(i), start(NodeId(i), dir.path(), &network)))
            .collect();
        let machines = Machines {
            dirs,
            network,
            nodes,
            live: Arc::new(RwLock::new(Vec::new())),
        };
        machines.publish();
        machines
    }

    fn publish(&self) {
        *self.live.write().unwrap() = self.nodes.values().map(Node::handle).collect();
    }

    fn handles(&self) -> Vec<NodeHandle> {
        self.live.read().unwrap().clone()
    }

    fn handles_of(&self, members: &[NodeId]) -> Vec<NodeHandle> {
        members.iter().map(|id| self.nodes[id].handle()).collect()
    }

    /// Stops `id` (what a crash looks like to the others: everything it
    /// acknowledged is on its disk).
    fn stop(&mut self, id: NodeId) {
        self.network.unregister(id);
        if let Some(node) = self.nodes.remove(&id) {
            node.stop();
        }
        self.publish();
    }

    /// Restarts `id` from its own directory.
    fn restart(&mut self, id: NodeId) {
        let dir = self.dirs[usize::try_from(id.0 - 1).unwrap()].path();
        self.nodes.insert(id, start(id, dir, &self.network));
        self.publish();
    }

    fn leader(&self) -> Option<NodeId> {
        self.handles()
            .iter()
            .find(|h| h.metrics().role == Some(Role::Leader))
            .map(NodeHandle::id)
    }
}

/// Clients proposing unique commands through whichever running replica
/// leads; each returns the commands acknowledged to it.
fn spawn_clients(
    live: &Arc<RwLock<Vec<NodeHandle>>>,
    stop: &Arc<AtomicBool>,
) -> Vec<JoinHandle<Vec<Vec<u8>>>> {
    (0..6u32)
        .map(|client| {
            let live = Arc::clone(live);
            let stop = Arc::clone(stop);
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut seq = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let leader = live
                        .read()
                        .unwrap()
                        .iter()
                        .find(|h| h.metrics().role == Some(Role::Leader))
                        .cloned();
                    let Some(leader) = leader else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    let command = [client.to_le_bytes(), seq.to_le_bytes()].concat();
                    seq += 1;
                    match leader.propose(command.clone()).await {
                        Ok(_) => acked.push(command),
                        Err(NodeError::Indeterminate(_)) => {}
                        Err(NodeError::NotLeader { .. } | NodeError::Busy | NodeError::Stopped) => {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        Err(error) => panic!("a proposal got {error}"),
                    }
                }
                acked
            })
        })
        .collect()
}

/// Whether `members` is in force on the running leader.
fn in_force(live: &[NodeHandle], members: &[NodeId]) -> bool {
    live.iter().any(|h| {
        let metrics = h.metrics();
        metrics.role == Some(Role::Leader) && metrics.members == members && !metrics.reconfiguring
    })
}

/// Changes the group to `members` through whichever replica leads,
/// retrying refusals and unknown outcomes, until the change is in force
/// (20 s at most).
async fn change_to(live: &Arc<RwLock<Vec<NodeHandle>>>, members: &[NodeId]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let handles = live.read().unwrap().clone();
        if in_force(&handles, members) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "membership {members:?} not in force within 20 s: {:?}",
            handles.iter().map(NodeHandle::metrics).collect::<Vec<_>>()
        );
        let leader = handles
            .iter()
            .find(|h| h.metrics().role == Some(Role::Leader))
            .cloned();
        let Some(leader) = leader else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        match leader.reconfigure(members.to_vec()).await {
            Ok(first_slot) => {
                assert!(first_slot > WINDOW_SLOTS, "in force from slot {first_slot}");
                // Metrics are published after the `Ready` that answered.
                let applied = leader
                    .wait_for(Duration::from_secs(1), |m| m.applied_slot + 1 >= first_slot)
                    .await;
                assert!(
                    applied.is_some(),
                    "answered before the change was in force (from slot {first_slot}): {:?}",
                    leader.metrics()
                );
            }
            Err(NodeError::InvalidMembership(reason)) => panic!("{members:?}: {reason}"),
            // Refused, or perhaps chosen: the check above tells.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Stops the clients and returns every command acknowledged to them.
async fn stop_clients(stop: &AtomicBool, clients: Vec<JoinHandle<Vec<Vec<u8>>>>) -> Vec<Vec<u8>> {
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for client in clients {
        acked.extend(client.await.unwrap());
    }
    acked
}

/// Settles the group on `members`, stops every machine and checks: the
/// members applied the same log, which holds every acknowledged command
/// once; every other machine's log is a prefix of it.
async fn check_logs(mut machines: Machines, members: &[NodeId], acked: &[Vec<u8>]) {
    let current = machines.handles_of(members);
    let last = commit(&current, b"final").await;
    wait_applied(&current, last).await;
    for handle in &current {
        assert_eq!(handle.metrics().members, members, "{}", handle.id());
    }
    let mut logs = BTreeMap::new();
    for id in machines.nodes.keys().copied().collect::<Vec<_>>() {
        let node = machines.nodes.remove(&id).unwrap();
        logs.insert(id, commands_of(&node.stop().unwrap()));
    }
    let reference = &logs[&members[0]];
    let distinct: BTreeSet<&Vec<u8>> = reference.iter().collect();
    assert_eq!(distinct.len(), reference.len(), "a command applied twice");
    for command in acked {
        assert!(
            distinct.contains(command),
            "acknowledged command {command:?} lost"
        );
    }
    for (id, log) in &logs {
        if members.contains(id) {
            assert_eq!(log, reference, "member {id} applied a different log");
        } else {
            assert_eq!(
                &log[..],
                &reference[..log.len().min(reference.len())],
                "removed replica {id} diverged"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_replace_and_remove_under_load_lose_nothing_acknowledged() {
    let machines = Machines::start_all();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = spawn_clients(&machines.live, &stop);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Add n4, replace n3 by n5, remove n1: a new set each time, while the
    // clients keep proposing.
    let steps: [&[u64]; 3] = [&[1, 2, 3, 4], &[1, 2, 4, 5], &[2, 4, 5]];
    for step in steps {
        change_to(&machines.live, &ids(step)).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let acked = stop_clients(&stop, clients).await;
    assert!(acked.len() > 100, "too little progress: {}", acked.len());
    // n4 and n5 joined long after the others had compacted their logs: they
    // came in through a snapshot carrying the membership.
    let installed: u64 = machines
        .handles_of(&ids(&[4, 5]))
        .iter()
        .map(|h| h.metrics().snapshots_installed)
        .sum();
    assert!(installed > 0, "the added replicas never needed a snapshot");
    check_logs(machines, &ids(&[2, 4, 5]), &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_of_the_replica_being_added_or_removed_and_of_the_leader_lose_nothing() {
    let mut machines = Machines::start_all();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = spawn_clients(&machines.live, &stop);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // n4 is added while it is down: the other three are a majority of
    // {1,2,3,4}; it catches up from its disk and its peers afterwards.
    machines.stop(NodeId(4));
    change_to(&machines.live, &ids(&[1, 2, 3, 4])).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    machines.restart(NodeId(4));
    tokio::time::sleep(Duration::from_millis(200)).await;

    // n2 is removed and stopped in the middle of the change.
    let live = Arc::clone(&machines.live);
    let removing = tokio::spawn(async move { change_to(&live, &ids(&[1, 3, 4])).await });
    tokio::time::sleep(Duration::from_millis(5)).await;
    machines.stop(NodeId(2));
    removing.await.unwrap();
    machines.restart(NodeId(2));

    // The leader is stopped right after it takes a change (replace n3 by
    // n5); the next leader finishes it, or the retry does.
    let leader = machines.leader();
    let live = Arc::clone(&machines.live);
    let replacing = tokio::spawn(async move { change_to(&live, &ids(&[1, 4, 5])).await });
    tokio::time::sleep(Duration::from_millis(5)).await;
    if let Some(leader) = leader {
        machines.stop(leader);
        tokio::time::sleep(Duration::from_millis(100)).await;
        machines.restart(leader);
    }
    replacing.await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;

    let acked = stop_clients(&stop, clients).await;
    assert!(acked.len() > 100, "too little progress: {}", acked.len());
    check_logs(machines, &ids(&[1, 4, 5]), &acked).await;
}

/// A restart of every machine after the changes: each recovers the
/// membership from its snapshot and log, and the group serves again with
/// the last configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_restarted_recovers_the_membership_from_disk() {
    let mut machines = Machines::start_all();
    let handles = machines.handles();
    for i in 0..60u16 {
        commit(&handles, &i.to_le_bytes()).await;
    }
    change_to(&machines.live, &ids(&[2, 3, 4, 5])).await;
    let current = machines.handles_of(&ids(&[2, 3, 4, 5]));
    for i in 60..120u16 {
        commit(&current, &i.to_le_bytes()).await;
    }
    let before: Slot = current[0].metrics().applied_slot;
    for id in 1..=5 {
        machines.stop(NodeId(id));
    }
    for id in 1..=5 {
        machines.restart(NodeId(id));
    }
    let current = machines.handles_of(&ids(&[2, 3, 4, 5]));
    let last = commit(&current, b"after restart").await;
    assert!(last > before, "slot {last} not after {before}");
    wait_applied(&current, last).await;
    for handle in &current {
        assert_eq!(handle.metrics().members, ids(&[2, 3, 4, 5]));
    }
    check_logs(machines, &ids(&[2, 3, 4, 5]), &[]).await;
}
