//! The driver: runs a [`Replica`] for real, with a durable store, a state
//! machine, a transport and a clock.
//!
//! Each replica gets one dedicated thread that owns the core, the
//! [`AcceptorStore`], the [`StateMachine`] and the [`Transport`], and runs
//! the `Ready` loop: wait for input or the next tick, take everything queued,
//! then send, persist (one fsync), send what needed the fsync, apply, answer.
//! A thread rather than a tokio task because the fsync blocks: on its own
//! thread it blocks nothing else, and whatever arrives meanwhile queues up
//! and goes into the next `Ready` together, which is where batching comes
//! from under load.
//!
//! Callers talk to it through a cloneable [`NodeHandle`]: `propose` and
//! `read` are async and resolve when the command is applied (or the read is
//! linearizable and answered). The input queue is bounded: when it is full,
//! proposals get [`NodeError::Busy`] and peer messages are dropped (the
//! protocol tolerates loss), instead of memory growing without bound.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, watch};
use tracing::{error, info_span, warn};

mod snapshots;

use storage::snapshot::SnapshotStore;

use self::snapshots::Snapshots;
use crate::config::Config;
use crate::core::{Replica, Role};
use crate::error::{ConfigError, ProposeError};
use crate::membership::Membership;
use crate::message::{Envelope, Message};
use crate::ready::Ready;
use crate::state_machine::StateMachine;
use crate::store::AcceptorStore;
use crate::transport::Transport;
use crate::types::{Ballot, NodeId, Slot, Value};

/// Timing and bounds of a driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverOptions {
    /// Length of one core tick.
    pub tick: Duration,
    /// How long `propose` and `read` wait before giving up with
    /// [`NodeError::Indeterminate`].
    pub request_timeout: Duration,
    /// Inputs (proposals, reads, peer messages) that may wait for the thread.
    pub queue_depth: usize,
    /// Most inputs taken into one `Ready`.
    pub inputs_per_ready_max: usize,
    /// With a snapshot store: take a snapshot (and compact the log below
    /// it) every time this many more slots were applied. 0: never.
    pub snapshot_every_slots: u64,
    /// With a snapshot store: also take one once this many bytes of
    /// commands were applied since the last, so that a log of large
    /// commands (a shard migration's chunks) is compacted as often as its
    /// size asks, not only its slot count. 0: never by bytes.
    pub snapshot_every_bytes: u64,
    /// Size of the chunks a snapshot is sent to a peer in.
    pub snapshot_chunk_bytes: usize,
    /// Largest snapshot accepted from a peer.
    pub snapshot_bytes_max: u64,
    /// A peer that keeps asking gets the snapshot again at most this often.
    pub snapshot_resend_after: Duration,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            tick: Duration::from_millis(10),
            request_timeout: Duration::from_secs(5),
            queue_depth: 65_536,
            inputs_per_ready_max: 16_384,
            snapshot_every_slots: 10_000,
            snapshot_every_bytes: 64 << 20,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_bytes_max: 1 << 30,
            snapshot_resend_after: Duration::from_secs(1),
        }
    }
}

/// Why a proposal or read did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// This replica does not lead; the operation certainly did not happen.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The replica believed to lead.
        leader_hint: Option<NodeId>,
    },
    /// Too much queued; the operation certainly did not happen. Retry later.
    #[error("replica busy; retry later")]
    Busy,
    /// The operation may or may not have happened (leadership changed, or
    /// no answer in time). Only an idempotent retry is safe.
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
    /// The replica has stopped.
    #[error("replica stopped")]
    Stopped,
    /// A membership change is already in progress; the new one certainly
    /// did not happen. Retry once the current one is in force.
    #[error("a membership change is already in progress; retry once it is in force")]
    Reconfiguring,
    /// The proposed members cannot form a configuration; nothing happened.
    #[error("invalid membership: {0}")]
    InvalidMembership(String),
}

impl From<ProposeError> for NodeError {
    fn from(error: ProposeError) -> Self {
        match error {
            ProposeError::NotLeader { leader_hint } => NodeError::NotLeader { leader_hint },
            ProposeError::Busy => NodeError::Busy,
            ProposeError::Reconfiguring => NodeError::Reconfiguring,
            ProposeError::InvalidMembership(reason) => NodeError::InvalidMembership(reason),
        }
    }
}

/// Why a replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be read.
    #[error("reading acceptor state: {0}")]
    Storage(#[from] storage::StorageError),
    /// The thread could not be spawned.
    #[error("spawning the driver thread: {0}")]
    Spawn(std::io::Error),
    /// The state machine refused the newest snapshot.
    #[error("restoring the state machine from its snapshot: {0}")]
    Restore(String),
}

/// A snapshot of a replica's state, published after every `Ready`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeMetrics {
    /// The replica.
    pub id: NodeId,
    /// Whether it leads (`None` until started).
    pub role: Option<Role>,
    /// Who it believes leads.
    pub leader_hint: Option<NodeId>,
    /// Its promised ballot.
    pub promised: Ballot,
    /// Every slot up to here is chosen.
    pub chosen_upto: Slot,
    /// Every slot up to here is applied.
    pub applied_slot: Slot,
    /// Slots below this were compacted away under a snapshot.
    pub log_start: Slot,
    /// The members that vote on the next slot.
    pub members: Vec<NodeId>,
    /// Whether a membership change is chosen (or, on the leader, queued or
    /// in flight) and not yet in force.
    pub reconfiguring: bool,
    /// Snapshots this replica took of its own state machine.
    pub snapshots_taken: u64,
    /// Snapshots received from peers and installed.
    pub snapshots_installed: u64,
    /// Proposals waiting for their slot to be chosen.
    pub pending_proposals: usize,
    /// Batches persisted (one fsync each).
    pub persist_count: u64,
    /// Whether the replica stopped after a storage failure.
    pub failed: bool,
    /// Why it stopped, when `failed`: the storage error, naming the file.
    pub failure: Option<String>,
}

type Reply = oneshot::Sender<Result<Vec<u8>, NodeError>>;
type ReconfigureReply = oneshot::Sender<Result<Slot, NodeError>>;

enum Input {
    Propose {
        command: Vec<u8>,
        reply: Reply,
    },
    Read {
        query: Vec<u8>,
        reply: Reply,
    },
    Reconfigure {
        members: Vec<NodeId>,
        reply: ReconfigureReply,
    },
    Message(Envelope),
    Stop,
}

/// The membership change this replica proposed, waiting to be in force.
struct PendingReconfigure {
    /// Sorted, as the membership records it.
    members: Vec<NodeId>,
    reply: ReconfigureReply,
    /// Once applied: the first slot the new members vote on.
    in_force_at: Option<Slot>,
}

/// Cheap handle to a running replica.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    id: NodeId,
    inputs: SyncSender<Input>,
    metrics: watch::Receiver<NodeMetrics>,
    request_timeout: Duration,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Input::Propose { .. } => "Propose",
            Input::Read { .. } => "Read",
            Input::Reconfigure { .. } => "Reconfigure",
            Input::Message(_) => "Message",
            Input::Stop => "Stop",
        })
    }
}

impl NodeHandle {
    /// The replica's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Hands a message from a peer to the replica; dropped if its queue is
    /// full or it stopped (the protocol tolerates loss).
    pub fn deliver(&self, envelope: Envelope) {
        let _ = self.inputs.try_send(Input::Message(envelope));
    }

    /// Proposes a command; resolves with the state machine's answer once the
    /// command is chosen and applied.
    pub async fn propose(&self, command: Vec<u8>) -> Result<Vec<u8>, NodeError> {
        self.request(|reply| Input::Propose { command, reply })
            .await
    }

    /// A linearizable read: resolves with the state machine's answer to
    /// `query` once leadership is confirmed and everything chosen before the
    /// call is applied. Never writes the log.
    pub async fn read(&self, query: Vec<u8>) -> Result<Vec<u8>, NodeError> {
        self.request(|reply| Input::Read { query, reply }).await
    }

    /// Changes the group's members to `members` (add, remove or replace
    /// replicas: any new set, one change at a time). Only the leader takes
    /// it. Resolves once the new configuration is in force, with the first
    /// slot it governs. A replica being added should already run (with the
    /// group's genesis `members` in its config), so it can catch up and
    /// vote, and be reachable: over TCP, give every replica's
    /// [`crate::TarpcTransport`] its address first (`set_peer`). A leader
    /// that removes itself steps down once the change is in force.
    pub async fn reconfigure(&self, members: Vec<NodeId>) -> Result<Slot, NodeError> {
        self.request(|reply| Input::Reconfigure { members, reply })
            .await
    }

    /// The latest published metrics.
    pub fn metrics(&self) -> NodeMetrics {
        self.metrics.borrow().clone()
    }

    /// Waits until `condition` holds for the metrics, or `timeout` passes.
    /// Returns the metrics that satisfied it.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        condition: impl Fn(&NodeMetrics) -> bool,
    ) -> Option<NodeMetrics> {
        let mut metrics = self.metrics.clone();
        let waited = tokio::time::timeout(timeout, metrics.wait_for(|m| condition(m))).await;
        match waited {
            Ok(Ok(m)) => Some(m.clone()),
            _ => None,
        }
    }

    async fn request<T>(
        &self,
        input: impl FnOnce(oneshot::Sender<Result<T, NodeError>>) -> Input,
    ) -> Result<T, NodeError> {
        let (reply, answer) = oneshot::channel();
        match self.inputs.try_send(input(reply)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(NodeError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(NodeError::Stopped),
        }
        match tokio::time::timeout(self.request_timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NodeError::Indeterminate(
                "replica stopped before answering".into(),
            )),
            Err(_) => Err(NodeError::Indeterminate(format!(
                "no answer within {} ms",
                self.request_timeout.as_millis()
            ))),
        }
    }
}

/// A running replica: its thread and a handle to it.
#[derive(Debug)]
pub struct Node<M> {
    handle: NodeHandle,
    thread: Option<JoinHandle<M>>,
    /// Checked by the thread at least once per tick, so a stop gets through
    /// even when the input queue is full.
    stop: Arc<AtomicBool>,
}

impl<M: StateMachine> Node<M> {
    /// Recovers the replica from `store` and `state_machine` and starts its
    /// thread.
    pub fn start<S, T>(
        config: Config,
        store: S,
        state_machine: M,
        transport: Arc<T>,
        options: DriverOptions,
    ) -> Result<Node<M>, StartError>
    where
        S: AcceptorStore + Send + 'static,
        T: Transport + ?Sized,
    {
        Node::start_inner(config, store, state_machine, transport, options, None)
    }

    /// Like [`Node::start`], with snapshots: the state machine is restored
    /// from the newest valid snapshot in `snapshots` (if it is ahead of the
    /// state machine's own durable slot), a snapshot is taken every
    /// `snapshot_every_slots` applied slots (or `snapshot_every_bytes` of
    /// applied commands) and the log compacted below it,
    /// and peers that fell behind the compacted log are sent the snapshot.
    pub fn start_with_snapshots<S, T>(
        config: Config,
        store: S,
        state_machine: M,
        transport: Arc<T>,
        options: DriverOptions,
        snapshots: SnapshotStore,
    ) -> Result<Node<M>, StartError>
    where
        S: AcceptorStore + Send + 'static,
        T: Transport + ?Sized,
    {
        Node::start_inner(
            config,
            store,
            state_machine,
            transport,
            options,
            Some(snapshots),
        )
    }

    fn start_inner<S, T>(
        config: Config,
        mut store: S,
        mut state_machine: M,
        transport: Arc<T>,
        options: DriverOptions,
        snapshot_store: Option<SnapshotStore>,
    ) -> Result<Node<M>, StartError>
    where
        S: AcceptorStore + Send + 'static,
        T: Transport + ?Sized,
    {
        let id = config.node_id;
        let mut applied = state_machine.durable_slot();
        let mut membership = None;
        let snapshots = match snapshot_store {
            Some(snapshot_store) => {
                let (snapshots, latest) = Snapshots::open(
                    snapshot_store,
                    options.snapshot_every_slots,
                    options.snapshot_every_bytes,
                    options.snapshot_chunk_bytes,
                    options.snapshot_bytes_max,
                    options.snapshot_resend_after,
                )?;
                if let Some(latest) = latest {
                    let slot = latest.slot;
                    // The core takes every slot between the store's
                    // compaction point and `applied` from the store, which
                    // holds the chosen values only for slots applied through
                    // this replica's log. Slots covered by a snapshot may
                    // not be (a crash between saving a received snapshot and
                    // compacting below it), so compact below it first.
                    store.compact(slot)?;
                    if slot > applied {
                        state_machine
                            .restore(slot, &latest.data)
                            .map_err(StartError::Restore)?;
                        applied = slot;
                    }
                    // The log below the snapshot is gone, and with it the
                    // membership changes chosen there.
                    membership = latest.membership;
                }
                Some(snapshots)
            }
            None => None,
        };
        let recovered = store.recover()?;
        let replica = Replica::recover(config, recovered, applied, membership)?;
        let (inputs, receiver) = mpsc::sync_channel(options.queue_depth);
        let (metrics_tx, metrics) = watch::channel(NodeMetrics {
            id,
            ..NodeMetrics::default()
        });
        let handle = NodeHandle {
            id,
            inputs,
            metrics,
            request_timeout: options.request_timeout,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let driver = Driver {
            stop: Arc::clone(&stop),
            replica,
            store,
            state_machine,
            transport,
            options,
            applied,
            proposer_id: new_proposer_id(id),
            next_seq: 1,
            proposals: BTreeMap::new(),
            next_read_id: 1,
            reconfigure: None,
            reads: BTreeMap::new(),
            waiting_reads: Vec::new(),
            persist_count: 0,
            metrics: metrics_tx,
            snapshots,
            fatal: None,
            snapshots_taken: 0,
            snapshots_installed: 0,
        };
        let thread = thread::Builder::new()
            .name(format!("paxos-{}", id.0))
            .spawn(move || driver.run(receiver))
            .map_err(StartError::Spawn)?;
        Ok(Node {
            handle,
            thread: Some(thread),
            stop,
        })
    }

    /// A handle for proposing, reading and delivering messages.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Stops the thread after the `Ready` in progress and returns the state
    /// machine. Everything acknowledged is already durable, so this is also
    /// what a crash looks like to the rest of the group.
    pub fn stop(mut self) -> Option<M> {
        self.signal_stop();
        let thread = self.thread.take()?;
        thread.join().ok()
    }
}

impl<M> Node<M> {
    fn signal_stop(&self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the thread now if there is room; otherwise it sees the flag
        // within a tick.
        let _ = self.handle.inputs.try_send(Input::Stop);
    }
}

impl<M> Drop for Node<M> {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.signal_stop();
        }
    }
}

/// The thread's state.
struct Driver<S, M, T: ?Sized> {
    stop: Arc<AtomicBool>,
    replica: Replica,
    store: S,
    state_machine: M,
    transport: Arc<T>,
    options: DriverOptions,
    applied: Slot,
    /// Identifies this start's proposals in the log (see `new_proposer_id`).
    proposer_id: u64,
    next_seq: u64,
    /// Proposals of this replica waiting for their command to be applied.
    proposals: BTreeMap<u64, Reply>,
    next_read_id: u64,
    /// The membership change proposed here, until it is in force.
    reconfigure: Option<PendingReconfigure>,
    /// Reads waiting for their leadership check.
    reads: BTreeMap<u64, (Vec<u8>, Reply)>,
    /// Reads confirmed, waiting for `applied` to reach their slot.
    waiting_reads: Vec<(Slot, Vec<u8>, Reply)>,
    persist_count: u64,
    metrics: watch::Sender<NodeMetrics>,
    /// Snapshot taking, sending and receiving, if configured.
    snapshots: Option<Snapshots>,
    /// A failure found outside `process_ready` that must stop the replica.
    fatal: Option<String>,
    snapshots_taken: u64,
    snapshots_installed: u64,
}

/// Bytes before the command in a proposed value: the proposer id of the
/// driver start that proposed it, and a sequence number, so that start can
/// answer its waiting proposer.
pub const TAG_BYTES: usize = 16;

/// Splits one command of a chosen [`Value::Commands`], as this driver
/// proposed it, into `(proposer id, sequence number, the application's
/// command)`: every proposed command is prefixed with a [`TAG_BYTES`]-byte
/// tag, two little-endian u64s. `None` if `tagged` is shorter than the tag.
/// Read-only tools (`kvctl wal dump`) use it to find the application's
/// command in a WAL record without duplicating the format.
pub fn split_command_tag(tagged: &[u8]) -> Option<(u64, u64, &[u8])> {
    let (tag, command) = tagged.split_at_checked(TAG_BYTES)?;
    let (proposer, seq) = tag.split_at(8);
    Some((
        u64::from_le_bytes(proposer.try_into().ok()?),
        u64::from_le_bytes(seq.try_into().ok()?),
        command,
    ))
}

/// A proposer id for one start of one replica's driver. It must differ from
/// every earlier start's: sequence numbers restart at 1, and a restarted
/// replica replays its own old entries, which must not answer its new
/// proposals. Wall clock, process id and a per-process counter, mixed with
/// the node id, make a collision as unlikely as a 64-bit random match.
fn new_proposer_id(node: NodeId) -> u64 {
    static STARTS: AtomicU64 = AtomicU64::new(0);
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut x = node.0
        ^ since_epoch.as_secs().rotate_left(32)
        ^ u64::from(since_epoch.subsec_nanos())
        ^ u64::from(std::process::id()).rotate_left(48)
        ^ STARTS.fetch_add(1, Ordering::Relaxed).rotate_left(16);
    // SplitMix64 finaliser: spreads the inputs over all 64 bits.
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl<S, M, T> Driver<S, M, T>
where
    S: AcceptorStore,
    M: StateMachine,
    T: Transport + ?Sized,
{
    fn run(mut self, inputs: Receiver<Input>) -> M {
        let span = info_span!("node", node_id = self.replica.id().0);
        let _entered = span.enter();
        let tick = self.options.tick;
        let mut next_tick = Instant::now() + tick;
        'run: while !self.stop.load(Ordering::Acquire) {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let first = match inputs.recv_timeout(wait) {
                Ok(input) => Some(input),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut taken = 0;
            let mut next = first;
            while let Some(input) = next.take() {
                if matches!(input, Input::Stop) {
                    break 'run;
                }
                self.take(input);
                taken += 1;
                if taken < self.options.inputs_per_ready_max {
                    next = inputs.try_recv().ok();
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                self.replica.tick();
                // After a stall, resume the rhythm instead of replaying
                // every missed tick in a burst.
                next_tick = (next_tick + tick).max(now);
            }
            if let Err(cause) = self.process_ready() {
                error!(%cause, "storage failed; stopping this replica");
                self.fail_proposals(&cause);
                self.publish(Some(&cause));
                break;
            }
            if self.replica.role() != Role::Leader {
                self.fail_proposals("leadership lost before the command was chosen");
            }
            self.publish(None);
        }
        self.fail_proposals("replica stopped");
        self.state_machine
    }

    fn take(&mut self, input: Input) {
        match input {
            Input::Message(Envelope {
                from,
                message:
                    Message::Snapshot {
                        slot,
                        offset,
                        total_bytes,
                        membership,
                        data,
                    },
                ..
            }) => self.receive_snapshot(from, slot, offset, total_bytes, membership, data),
            Input::Message(envelope) => self.replica.step(envelope),
            Input::Propose { command, reply } => {
                let seq = self.next_seq;
                let mut tagged = Vec::with_capacity(TAG_BYTES + command.len());
                tagged.extend_from_slice(&self.proposer_id.to_le_bytes());
                tagged.extend_from_slice(&seq.to_le_bytes());
                tagged.extend_from_slice(&command);
                match self.replica.propose(tagged) {
                    Ok(()) => {
                        self.next_seq += 1;
                        self.proposals.insert(seq, reply);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error.into()));
                    }
                }
            }
            Input::Read { query, reply } => {
                let read_id = self.next_read_id;
                match self.replica.read_index(read_id) {
                    Ok(()) => {
                        self.next_read_id += 1;
                        self.reads.insert(read_id, (query, reply));
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error.into()));
                    }
                }
            }
            Input::Reconfigure { members, reply } => {
                if self.reconfigure.is_some() {
                    let _ = reply.send(Err(NodeError::Reconfiguring));
                    return;
                }
                match self.replica.reconfigure(members.clone()) {
                    Ok(()) => {
                        let mut members = members;
                        members.sort_unstable();
                        self.reconfigure = Some(PendingReconfigure {
                            members,
                            reply,
                            in_force_at: None,
                        });
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error.into()));
                    }
                }
            }
            Input::Stop => {}
        }
    }

    /// Carries out every `Ready` the core has.
    fn process_ready(&mut self) -> Result<(), String> {
        if let Some(cause) = self.fatal.take() {
            return Err(cause);
        }
        while self.replica.has_ready() {
            let Ready {
                messages,
                persist,
                persisted_messages,
                chosen,
                reads,
                snapshot_requests,
            } = self.replica.ready();
            if !messages.is_empty() {
                self.transport.send(messages);
            }
            if !persist.is_empty() {
                self.store.persist(&persist).map_err(|e| e.to_string())?;
                self.persist_count += 1;
            }
            if !persisted_messages.is_empty() {
                self.transport.send(persisted_messages);
            }
            for entry in chosen {
                self.apply(entry.slot, &entry.value);
            }
            self.answer_reconfigure();
            for read in reads {
                if let Some((query, reply)) = self.reads.remove(&read.read_id) {
                    self.waiting_reads.push((read.slot, query, reply));
                }
            }
            self.answer_reads();
            for peer in snapshot_requests {
                self.send_snapshot(peer);
            }
            self.replica.advance();
        }
        self.maybe_take_snapshot()
    }

    /// Takes a snapshot when enough was applied since the last one, then
    /// compacts the core's log and the acceptor store below it.
    fn maybe_take_snapshot(&mut self) -> Result<(), String> {
        let applied = self.applied;
        let Some(snapshots) = self.snapshots.as_mut() else {
            return Ok(());
        };
        if !snapshots.due(applied) {
            return Ok(());
        }
        let Some(data) = self.state_machine.snapshot() else {
            return Ok(());
        };
        let membership = self.replica.membership_for_snapshot(applied);
        if let Err(error) = snapshots.save(applied, Some(&membership), &data) {
            // Not fatal: the log is simply not compacted this time.
            warn!(%error, slot = applied, "could not write a snapshot; log not compacted");
            return Ok(());
        }
        self.snapshots_taken += 1;
        self.replica.compact(applied);
        self.store
            .compact(applied)
            .map_err(|e| format!("compacting the acceptor log: {e}"))
    }

    /// Sends the newest snapshot to a peer that needs compacted slots.
    fn send_snapshot(&mut self, peer: NodeId) {
        let me = self.replica.id();
        let Some(snapshots) = self.snapshots.as_mut() else {
            return;
        };
        match snapshots.chunks_for(me, peer, Instant::now()) {
            Ok(envelopes) if !envelopes.is_empty() => self.transport.send(envelopes),
            Ok(_) => {}
            Err(error) => warn!(%error, %peer, "could not read the snapshot to send"),
        }
    }

    /// One chunk of a peer's snapshot arrived; installs it once complete.
    fn receive_snapshot(
        &mut self,
        from: NodeId,
        slot: Slot,
        offset: u64,
        total_bytes: u64,
        membership: Option<Membership>,
        data: Vec<u8>,
    ) {
        let Some(snapshots) = self.snapshots.as_mut() else {
            return;
        };
        let Some(received) = snapshots.receive(from, slot, offset, total_bytes, membership, data)
        else {
            return;
        };
        let (slot, data) = (received.slot, received.data);
        if slot <= self.applied {
            return;
        }
        if slot == Slot::MAX {
            // Installing it would compact the log past its last slot (no
            // next slot exists); no replica ever takes such a snapshot.
            warn!(%from, "a snapshot at the last possible slot ignored");
            return;
        }
        // Checked before the state machine moves (the core would refuse it
        // only after). `None`: from a group that never had a change.
        let membership = received.membership;
        if let Some(Err(error)) = membership.as_ref().map(Membership::validate) {
            warn!(%from, slot, %error, "snapshot with an invalid membership ignored");
            return;
        }
        // Saved before the state machine moves: a state machine whose
        // restore is durable at once must never be ahead of the snapshot
        // file, which is what a restart compacts the store below.
        if let Err(error) = snapshots.save(slot, membership.as_ref(), &data) {
            self.fatal = Some(format!("saving a received snapshot: {error}"));
            return;
        }
        if let Err(error) = self.state_machine.restore(slot, &data) {
            // The saved file is now ahead of the state machine; a restart
            // would restore from it and fail the same way, loudly.
            self.fatal = Some(format!(
                "state machine refused a snapshot from {from}: {error}"
            ));
            return;
        }
        self.applied = slot;
        self.snapshots_installed += 1;
        self.replica.install_snapshot(slot, membership);
        if let Err(error) = self.store.compact(slot) {
            self.fatal = Some(format!("compacting the acceptor log: {error}"));
        }
        self.answer_reads();
    }

    fn apply(&mut self, slot: Slot, value: &Value) {
        debug_assert_eq!(slot, self.applied + 1, "chosen entries arrive in order");
        if let (Value::Reconfigure(members), Some(pending)) = (value, self.reconfigure.as_mut()) {
            // One change at a time per group, so the same member set chosen
            // after this replica proposed it is its change.
            let mut members = members.clone();
            members.sort_unstable();
            if pending.in_force_at.is_none() && members == pending.members {
                pending.in_force_at = Some(slot + self.replica.config().reconfig_window_slots);
            }
        }
        if let Value::Commands(commands) = value {
            let me = self.proposer_id;
            for tagged in commands {
                let Some((proposer, seq, command)) = split_command_tag(tagged) else {
                    // Every replica sees the same bytes, so skipping is
                    // deterministic; only a bug can put such a value here.
                    warn!(slot, "skipped a command without its tag");
                    continue;
                };
                let output = self.state_machine.apply(slot, command);
                if let Some(snapshots) = self.snapshots.as_mut() {
                    snapshots.note_applied(command.len());
                }
                if proposer == me {
                    if let Some(reply) = self.proposals.remove(&seq) {
                        let _ = reply.send(Ok(output));
                    }
                }
            }
        }
        self.applied = slot;
    }

    /// Answers the membership change proposed here once it is in force:
    /// every slot before its first one is applied.
    fn answer_reconfigure(&mut self) {
        let in_force = self
            .reconfigure
            .as_ref()
            .and_then(|p| p.in_force_at)
            .is_some_and(|first| self.applied + 1 >= first);
        if in_force {
            if let Some(PendingReconfigure {
                reply,
                in_force_at: Some(first),
                ..
            }) = self.reconfigure.take()
            {
                let _ = reply.send(Ok(first));
            }
        }
    }

    fn answer_reads(&mut self) {
        let applied = self.applied;
        let mut still_waiting = Vec::new();
        for (slot, query, reply) in std::mem::take(&mut self.waiting_reads) {
            if slot <= applied {
                let _ = reply.send(Ok(self.state_machine.read(&query)));
            } else {
                still_waiting.push((slot, query, reply));
            }
        }
        self.waiting_reads = still_waiting;
    }

    fn fail_proposals(&mut self, cause: &str) {
        for (_, reply) in std::mem::take(&mut self.proposals) {
            let _ = reply.send(Err(NodeError::Indeterminate(cause.to_string())));
        }
        // A change chosen before leadership was lost still takes effect.
        let chosen = self
            .reconfigure
            .as_ref()
            .is_some_and(|p| p.in_force_at.is_some());
        if !chosen {
            if let Some(pending) = self.reconfigure.take() {
                let _ = pending
                    .reply
                    .send(Err(NodeError::Indeterminate(cause.to_string())));
            }
        }
        let leader_hint = self.replica.leader_hint();
        for (_, (_, reply)) in std::mem::take(&mut self.reads) {
            let _ = reply.send(Err(NodeError::NotLeader { leader_hint }));
        }
        for (_, _, reply) in std::mem::take(&mut self.waiting_reads) {
            let _ = reply.send(Err(NodeError::NotLeader { leader_hint }));
        }
    }

    fn publish(&self, failure: Option<&str>) {
        let metrics = NodeMetrics {
            id: self.replica.id(),
            role: Some(self.replica.role()),
            leader_hint: self.replica.leader_hint(),
            promised: self.replica.promised(),
            chosen_upto: self.replica.chosen_upto(),
            applied_slot: self.applied,
            log_start: self.replica.log_start(),
            members: self.replica.current_members().to_vec(),
            reconfiguring: self.replica.reconfiguring(),
            snapshots_taken: self.snapshots_taken,
            snapshots_installed: self.snapshots_installed,
            pending_proposals: self.proposals.len(),
            persist_count: self.persist_count,
            failed: failure.is_some(),
            failure: failure.map(str::to_string),
        };
        self.metrics.send_if_modified(|current| {
            let changed = *current != metrics;
            *current = metrics;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_command_tag_reads_the_tag_the_driver_writes() {
        let mut tagged = 7u64.to_le_bytes().to_vec();
        tagged.extend_from_slice(&9u64.to_le_bytes());
        tagged.extend_from_slice(b"cmd");
        assert_eq!(split_command_tag(&tagged), Some((7, 9, &b"cmd"[..])));
        assert_eq!(
            split_command_tag(&tagged[..TAG_BYTES]),
            Some((7, 9, &b""[..]))
        );
        assert_eq!(split_command_tag(&tagged[..TAG_BYTES - 1]), None);
    }
}
