//! Shared fixtures for the tests that run real drivers (`driver.rs`,
//! `driver_membership.rs`, `net.rs`): a state machine that records what it
//! applied, replicas on disk, clients that propose under load, waits on
//! replica metrics instead of sleeps, and the checks on the logs the
//! replicas applied.

#![allow(dead_code)] // each test file uses its own subset

pub mod lone;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use paxos_log::store::wal::WalAcceptorStore;
use paxos_log::{
    ChannelTransport, Config, DriverOptions, Node, NodeError, NodeHandle, Role, Slot, StateMachine,
};
use storage::snapshot::SnapshotStore;
use storage::wal::WalOptions;
use storage::RealFs;
use tokio::task::JoinHandle;

/// Marks a command proposed by [`commit`]: this prefix, the attempt number
/// (4 bytes, little endian), then the command.
const ATTEMPT_PREFIX: &[u8] = b"\xFFattempt\xFF";

/// `command` as attempt `attempt` of [`commit`].
pub fn with_attempt(attempt: u32, command: &[u8]) -> Vec<u8> {
    [ATTEMPT_PREFIX, &attempt.to_le_bytes(), command].concat()
}

/// The attempt number and command of an attempt of [`commit`].
fn attempt_of(proposed: &[u8]) -> Option<(u32, &[u8])> {
    let rest = proposed.strip_prefix(ATTEMPT_PREFIX)?;
    let (attempt, command) = rest.split_first_chunk::<4>()?;
    Some((u32::from_le_bytes(*attempt), command))
}

/// Records every applied command; answers reads with the count applied.
/// In memory only: `durable_slot` is 0, so a restarted replica re-learns
/// the whole log, or restores its snapshot when it has a snapshot store.
///
/// Commands proposed by [`commit`] carry an attempt number; the first
/// attempt of a command to be applied is recorded (without its number),
/// a later, different attempt of the same command is not, and is answered
/// with the first one's slot (see [`commit`]).
#[derive(Debug, Default)]
pub struct LogMachine {
    /// Every applied command with its slot, in order.
    pub applied: Vec<(Slot, Vec<u8>)>,
    /// For each command proposed by [`commit`]: the attempt recorded in
    /// `applied`, and its slot.
    attempts: BTreeMap<Vec<u8>, (u32, Slot)>,
}

impl StateMachine for LogMachine {
    fn apply(&mut self, slot: Slot, command: &[u8]) -> Vec<u8> {
        let Some((attempt, command)) = attempt_of(command) else {
            self.applied.push((slot, command.to_vec()));
            return slot.to_le_bytes().to_vec();
        };
        match self.attempts.get(command) {
            // Another attempt already applied it.
            Some(&(first, first_slot)) if first != attempt => first_slot.to_le_bytes().to_vec(),
            // The first attempt, or the same attempt again: recorded, so
            // the log applying one proposal twice still shows.
            _ => {
                self.attempts.insert(command.to_vec(), (attempt, slot));
                self.applied.push((slot, command.to_vec()));
                slot.to_le_bytes().to_vec()
            }
        }
    }
    fn read(&mut self, _query: &[u8]) -> Vec<u8> {
        (self.applied.len() as u64).to_le_bytes().to_vec()
    }
    fn durable_slot(&self) -> Slot {
        0
    }
    fn snapshot(&mut self) -> Option<Vec<u8>> {
        Some(bincode::serialize(&(&self.applied, &self.attempts)).expect("byte vectors encode"))
    }
    fn restore(&mut self, _slot: Slot, snapshot: &[u8]) -> Result<(), String> {
        (self.applied, self.attempts) =
            bincode::deserialize(snapshot).map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// The commands a replica applied, in order.
pub fn commands_of(machine: &LogMachine) -> Vec<Vec<u8>> {
    machine.applied.iter().map(|(_, c)| c.clone()).collect()
}

/// Starts replica `config.node_id` from `dir` (its WAL in `dir/wal`, in
/// segments of `segment_bytes`, its snapshots in `dir/snap`) with an empty
/// state machine, and registers it on `network`.
pub fn start_on_disk(
    config: Config,
    dir: &Path,
    segment_bytes: u64,
    options: DriverOptions,
    network: &Arc<ChannelTransport>,
) -> Node<LogMachine> {
    let id = config.node_id;
    let wal_options = WalOptions {
        segment_size_bytes_max: segment_bytes,
        ..WalOptions::default()
    };
    let store =
        WalAcceptorStore::open(RealFs::shared(), &dir.join("wal"), wal_options).expect("WAL opens");
    let snapshots =
        SnapshotStore::open(RealFs::shared(), &dir.join("snap")).expect("snapshot store opens");
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

/// The replica in `handles` that believes it leads, if any.
pub fn leader_of(handles: &[NodeHandle]) -> Option<NodeHandle> {
    handles
        .iter()
        .find(|h| h.metrics().role == Some(Role::Leader))
        .cloned()
}

/// Waits (10 s at most) until one of `handles` leads, and returns it.
pub async fn wait_for_leader(handles: &[NodeHandle]) -> NodeHandle {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(leader) = leader_of(handles) {
            return leader;
        }
        assert!(
            Instant::now() < deadline,
            "no leader elected within 10 s: {:?}",
            handles.iter().map(NodeHandle::metrics).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits (20 s at most per replica) until every replica applied `slot`.
pub async fn wait_applied(handles: &[NodeHandle], slot: Slot) {
    for handle in handles {
        let caught_up = handle
            .wait_for(Duration::from_secs(20), |m| m.applied_slot >= slot)
            .await;
        assert!(
            caught_up.is_some(),
            "{} did not apply slot {slot}: {:?}",
            handle.id(),
            handle.metrics()
        );
    }
}

/// Proposes `command` through whichever replica leads, retrying up to 100
/// times 20 ms apart, and returns the slot it was applied in. The command
/// is applied once: callers may count applied commands exactly.
///
/// It retries after a refusal (`NotLeader`, `Busy`, `Stopped`: certainly
/// not proposed) and after an unknown outcome (`Indeterminate`). A command
/// whose outcome is unknown may still be chosen after any number of
/// retries: queued at a leader that still runs, or accepted by a minority
/// and re-proposed by a later leader. So asking the state machine whether
/// it was applied (a linearizable read) cannot tell whether a retry is
/// safe: "not yet" is not "never". Instead each attempt carries its
/// number, and the [`LogMachine`] applies the first attempt chosen and
/// skips the others, like a server that deduplicates a client's retries.
/// The same attempt chosen twice is still recorded twice, so the log
/// applying one proposal twice still fails the callers' exact checks.
pub async fn commit(handles: &[NodeHandle], command: &[u8]) -> Slot {
    for attempt in 0..100u32 {
        let leader = wait_for_leader(handles).await;
        match leader.propose(with_attempt(attempt, command)).await {
            Ok(slot) => {
                return u64::from_le_bytes(slot.try_into().expect("LogMachine answers a slot"))
            }
            Err(
                NodeError::NotLeader { .. }
                | NodeError::Busy
                | NodeError::Stopped
                | NodeError::Indeterminate(_),
            ) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(error) => panic!("proposing {command:?} got {error}"),
        }
    }
    panic!("the cluster did not commit {command:?} in 100 attempts");
}

/// Handles of the running replicas, shared with [`Clients`]: a test
/// replaces a replica's handle when it restarts it.
pub type Live = Arc<RwLock<Vec<NodeHandle>>>;

/// Clients proposing unique commands (client number, sequence number)
/// through whichever replica in [`Live`] leads, until stopped; each
/// remembers the commands acknowledged to it.
pub struct Clients {
    live: Live,
    stop: Arc<AtomicBool>,
    /// Commands acknowledged so far, over all clients.
    acked: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<Vec<Vec<u8>>>>,
}

impl Clients {
    /// Starts `count` clients. A command with an unknown outcome is not
    /// retried (nor counted as acknowledged): it may or may not be applied.
    pub fn spawn(count: u32, live: &Live) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let tasks = (0..count)
            .map(|client| {
                let live = Arc::clone(live);
                let stop = Arc::clone(&stop);
                let acked_count = Arc::clone(&acked);
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    let mut seq = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        let leader = leader_of(&live.read().unwrap());
                        let Some(leader) = leader else {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue;
                        };
                        let command = [client.to_le_bytes(), seq.to_le_bytes()].concat();
                        seq += 1;
                        match leader.propose(command.clone()).await {
                            Ok(_) => {
                                acked.push(command);
                                acked_count.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(
                                NodeError::NotLeader { .. } | NodeError::Busy | NodeError::Stopped,
                            ) => tokio::time::sleep(Duration::from_millis(2)).await,
                            Err(NodeError::Indeterminate(_)) => {}
                            Err(error) => panic!("a proposal got {error}"),
                        }
                    }
                    acked
                })
            })
            .collect();
        Clients {
            live: Arc::clone(live),
            stop,
            acked,
            tasks,
        }
    }

    /// Waits until `more` commands more than now are acknowledged; fails
    /// the test after 30 s.
    pub async fn progress(&self, more: usize) {
        let target = self.acked.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.acked.load(Ordering::Relaxed) < target {
            if Instant::now() >= deadline {
                let metrics: Vec<_> = self
                    .live
                    .read()
                    .unwrap()
                    .iter()
                    .map(NodeHandle::metrics)
                    .collect();
                panic!(
                    "the clients got {} of {target} acknowledgements within 30 s: {metrics:?}",
                    self.acked.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the clients and returns every command acknowledged to them.
    pub async fn stop(self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut acked = Vec::new();
        for task in self.tasks {
            acked.extend(task.await.expect("client task"));
        }
        acked
    }
}

/// The commands `machine` applied, after checking it applied them in slot
/// order (several share a slot when batched).
fn log_of(machine: &LogMachine, who: &str) -> Vec<Vec<u8>> {
    assert!(
        machine.applied.windows(2).all(|w| w[0].0 <= w[1].0),
        "{who} applied out of slot order"
    );
    commands_of(machine)
}

/// Asserts `machines` applied the same log, in slot order, with no command
/// in it twice; returns that log.
#[track_caller]
pub fn assert_same_logs(machines: &[LogMachine]) -> Vec<Vec<u8>> {
    let reference = log_of(&machines[0], "replica 0");
    assert_distinct(&reference);
    for (i, machine) in machines.iter().enumerate().skip(1) {
        let who = format!("replica {i}");
        assert_eq!(
            log_of(machine, &who),
            reference,
            "{who} applied a different log than replica 0"
        );
    }
    reference
}

/// Asserts `machine` applied, in slot order, a log that agrees with
/// `reference` as far as both go (one is a prefix of the other): a replica
/// stopped, removed or not yet caught up applied no other commands.
#[track_caller]
pub fn assert_prefix(machine: &LogMachine, reference: &[Vec<u8>], who: &str) {
    let log = log_of(machine, who);
    let common = log.len().min(reference.len());
    assert_eq!(log[..common], reference[..common], "{who} diverged");
}

/// Asserts no command is in `log` twice.
#[track_caller]
pub fn assert_distinct(log: &[Vec<u8>]) {
    let distinct: BTreeSet<&Vec<u8>> = log.iter().collect();
    assert_eq!(distinct.len(), log.len(), "a command was applied twice");
}

/// Asserts every command in `acked` is in `log`.
#[track_caller]
pub fn assert_contains_all(log: &[Vec<u8>], acked: &[Vec<u8>]) {
    let applied: BTreeSet<&Vec<u8>> = log.iter().collect();
    for command in acked {
        assert!(
            applied.contains(command),
            "acknowledged command {command:?} lost"
        );
    }
}
