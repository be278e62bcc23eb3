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

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paxos_log::{
    ChannelTransport, Config, DriverOptions, Node, NodeError, NodeHandle, NodeId, Role, Slot,
};
use tokio::task::JoinHandle;

mod cluster;
use cluster::{
    assert_contains_all, assert_prefix, assert_same_logs, commit, leader_of, start_on_disk,
    wait_applied, wait_for_leader, Clients, Live, LogMachine,
};

/// α of the test group: small, so a change is in force a few slots after it
/// is chosen.
const WINDOW_SLOTS: u64 = 8;

fn ids(ids: &[u64]) -> Vec<NodeId> {
    ids.iter().copied().map(NodeId).collect()
}

/// Starts machine `id` from its directory (WAL and snapshots; a snapshot
/// every 25 applied slots, so a replica added late catches up through one).
fn start(id: NodeId, dir: &Path, network: &Arc<ChannelTransport>) -> Node<LogMachine> {
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
    start_on_disk(config, dir, 16 * 1024, options, network)
}

/// Five machines, their directories and the handles clients use.
struct Machines {
    dirs: Vec<tempfile::TempDir>,
    network: Arc<ChannelTransport>,
    nodes: BTreeMap<NodeId, Node<LogMachine>>,
    /// Handles of the running machines, shared with the clients.
    live: Live,
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
            live: Live::default(),
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
    /// acknowledged is on its disk) and returns its handle, whose metrics
    /// are the last it published.
    fn stop(&mut self, id: NodeId) -> NodeHandle {
        self.network.unregister(id);
        let node = self.nodes.remove(&id).expect("running");
        let handle = node.handle();
        node.stop();
        self.publish();
        handle
    }

    /// Restarts `id` from its own directory.
    fn restart(&mut self, id: NodeId) {
        let dir = self.dirs[usize::try_from(id.0 - 1).unwrap()].path();
        self.nodes.insert(id, start(id, dir, &self.network));
        self.publish();
    }

    /// Drops every message to `id` from now on, until `reconnect`: it still
    /// runs and sends, but hears nothing.
    fn deafen(&self, id: NodeId) {
        self.network.unregister(id);
    }

    /// Delivers messages to `id` again.
    fn reconnect(&self, id: NodeId) {
        self.network.register(id, self.nodes[&id].handle());
    }

    /// The running leader; fails the test if none is elected within 10 s.
    async fn leader(&self) -> NodeHandle {
        wait_for_leader(&self.handles()).await
    }
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
async fn change_to(live: &Live, members: &[NodeId]) {
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
        let Some(leader) = leader_of(&handles) else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        match leader.reconfigure(members.to_vec()).await {
            Ok(first_slot) => {
                assert!(first_slot > WINDOW_SLOTS, "in force from slot {first_slot}");
                // Metrics are published after the `Ready` that answered.
                let applied = leader
                    .wait_for(Duration::from_secs(20), |m| {
                        m.applied_slot + 1 >= first_slot
                    })
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

/// Has the leader take a change to `members` while it hears nothing: its
/// `Accept`s go out, but it learns of no acceptance, so the change cannot
/// be in force on any replica (only the leader learns what is chosen)
/// until it hears again or stops. Returns that leader, still deaf, once
/// its metrics show it took the change, and a task that sees the change
/// through with [`change_to`].
async fn leader_takes_change_deafened(
    machines: &Machines,
    members: &[NodeId],
) -> (NodeHandle, JoinHandle<()>) {
    for _ in 0..10 {
        let leader = machines.leader().await;
        machines.deafen(leader.id());
        let call = {
            let leader = leader.clone();
            let members = members.to_vec();
            tokio::spawn(async move { leader.reconfigure(members).await })
        };
        // Deaf, it steps down after an election timeout; watch for either.
        let seen = leader
            .wait_for(Duration::from_secs(20), |m| {
                m.reconfiguring || m.role != Some(Role::Leader)
            })
            .await
            .expect("a leader's metrics change within 20 s");
        if seen.reconfiguring {
            let live = Arc::clone(&machines.live);
            let members = members.to_vec();
            let finishing = tokio::spawn(async move {
                // Its outcome is unknown until the leader hears or stops;
                // `change_to` settles it.
                let _ = call.await;
                change_to(&live, &members).await;
            });
            return (leader, finishing);
        }
        // It lost the lead first: try again with the next leader.
        eprintln!("{} stopped leading before it took the change", leader.id());
        machines.reconnect(leader.id());
        let _ = call.await;
    }
    panic!("no leader took the change to {members:?} in 10 attempts");
}

/// Settles the group on `members`, stops every machine and checks: the
/// members applied the same log, which holds every acknowledged command
/// once; every other machine's log agrees with it as far as both go.
async fn check_logs(mut machines: Machines, members: &[NodeId], acked: &[Vec<u8>]) {
    let current = machines.handles_of(members);
    let last = commit(&current, b"final").await;
    wait_applied(&current, last).await;
    for handle in &current {
        assert_eq!(handle.metrics().members, members, "{}", handle.id());
    }
    let mut member_logs = Vec::new();
    let mut others = Vec::new();
    for id in machines.nodes.keys().copied().collect::<Vec<_>>() {
        let machine = machines.nodes.remove(&id).unwrap().stop().unwrap();
        if members.contains(&id) {
            member_logs.push(machine);
        } else {
            others.push((id, machine));
        }
    }
    let reference = assert_same_logs(&member_logs);
    assert_contains_all(&reference, acked);
    for (id, machine) in &others {
        assert_prefix(machine, &reference, &format!("removed replica {id}"));
    }
}

/// Commands the clients must get acknowledged between two steps of a
/// test, so every step happens under load.
const PROGRESS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_replace_and_remove_under_load_lose_nothing_acknowledged() {
    let machines = Machines::start_all();
    let clients = Clients::spawn(6, &machines.live);
    clients.progress(PROGRESS).await;

    // Add n4, replace n3 by n5, remove n1: a new set each time, while the
    // clients keep proposing.
    let steps: [&[u64]; 3] = [&[1, 2, 3, 4], &[1, 2, 4, 5], &[2, 4, 5]];
    for step in steps {
        change_to(&machines.live, &ids(step)).await;
        clients.progress(PROGRESS).await;
    }
    let acked = clients.stop().await;
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
    let clients = Clients::spawn(6, &machines.live);
    clients.progress(PROGRESS).await;

    // n4 is added while it is down: the other three are a majority of
    // {1,2,3,4}; it catches up from its disk and its peers afterwards.
    machines.stop(NodeId(4));
    change_to(&machines.live, &ids(&[1, 2, 3, 4])).await;
    clients.progress(PROGRESS).await;
    machines.restart(NodeId(4));
    clients.progress(PROGRESS).await;

    // n2 is removed, and stopped after the leader took the change and
    // before it is in force (if n2 leads, that is the leader stopped too).
    let (leader, removing) = leader_takes_change_deafened(&machines, &ids(&[1, 3, 4])).await;
    let n2 = machines.stop(NodeId(2));
    if leader.id() != NodeId(2) {
        machines.reconnect(leader.id());
    }
    assert!(
        n2.metrics().members.contains(&NodeId(2)),
        "n2 stopped after its removal was in force: {:?}",
        n2.metrics()
    );
    removing.await.unwrap();
    machines.restart(NodeId(2));
    clients.progress(PROGRESS).await;

    // The leader is stopped right after it sent a change (replace n3 by
    // n5), before it learned of any acceptance; the next leader finishes
    // it, or the retry does, while the old leader is down.
    let (leader, replacing) = leader_takes_change_deafened(&machines, &ids(&[1, 4, 5])).await;
    let stopped = machines.stop(leader.id());
    assert_eq!(
        stopped.metrics().members,
        ids(&[1, 3, 4]),
        "the leader stopped after the change was in force"
    );
    replacing.await.unwrap();
    machines.restart(leader.id());
    clients.progress(PROGRESS).await;

    let acked = clients.stop().await;
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
