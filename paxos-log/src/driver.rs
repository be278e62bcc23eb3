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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use tracing::{error, info_span, warn};

use crate::config::Config;
use crate::core::{Replica, Role};
use crate::error::{ConfigError, ProposeError};
use crate::message::Envelope;
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
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            tick: Duration::from_millis(10),
            request_timeout: Duration::from_secs(5),
            queue_depth: 65_536,
            inputs_per_ready_max: 16_384,
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
}

impl From<ProposeError> for NodeError {
    fn from(error: ProposeError) -> Self {
        match error {
            ProposeError::NotLeader { leader_hint } => NodeError::NotLeader { leader_hint },
            ProposeError::Busy => NodeError::Busy,
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
    /// Proposals waiting for their slot to be chosen.
    pub pending_proposals: usize,
    /// Batches persisted (one fsync each).
    pub persist_count: u64,
    /// Whether the replica stopped after a storage failure.
    pub failed: bool,
}

type Reply = oneshot::Sender<Result<Vec<u8>, NodeError>>;

enum Input {
    Propose { command: Vec<u8>, reply: Reply },
    Read { query: Vec<u8>, reply: Reply },
    Message(Envelope),
    Stop,
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

    async fn request(&self, input: impl FnOnce(Reply) -> Input) -> Result<Vec<u8>, NodeError> {
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
        mut store: S,
        state_machine: M,
        transport: Arc<T>,
        options: DriverOptions,
    ) -> Result<Node<M>, StartError>
    where
        S: AcceptorStore + Send + 'static,
        T: Transport + ?Sized,
    {
        let id = config.node_id;
        let recovered = store.recover()?;
        let applied = state_machine.durable_slot();
        let replica = Replica::new(config, recovered, applied)?;
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
            next_seq: 1,
            proposals: BTreeMap::new(),
            next_read_id: 1,
            reads: BTreeMap::new(),
            waiting_reads: Vec::new(),
            persist_count: 0,
            metrics: metrics_tx,
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
    next_seq: u64,
    /// Proposals of this replica waiting for their command to be applied.
    proposals: BTreeMap<u64, Reply>,
    next_read_id: u64,
    /// Reads waiting for their leadership check.
    reads: BTreeMap<u64, (Vec<u8>, Reply)>,
    /// Reads confirmed, waiting for `applied` to reach their slot.
    waiting_reads: Vec<(Slot, Vec<u8>, Reply)>,
    persist_count: u64,
    metrics: watch::Sender<NodeMetrics>,
}

/// Bytes before the command in a proposed value: origin node and sequence
/// number, so the origin can answer its waiting proposer.
const TAG_BYTES: usize = 16;

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
                self.publish(true);
                break;
            }
            if self.replica.role() != Role::Leader {
                self.fail_proposals("leadership lost before the command was chosen");
            }
            self.publish(false);
        }
        self.fail_proposals("replica stopped");
        self.state_machine
    }

    fn take(&mut self, input: Input) {
        match input {
            Input::Message(envelope) => self.replica.step(envelope),
            Input::Propose { command, reply } => {
                let seq = self.next_seq;
                let mut tagged = Vec::with_capacity(TAG_BYTES + command.len());
                tagged.extend_from_slice(&self.replica.id().0.to_le_bytes());
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
            Input::Stop => {}
        }
    }

    /// Carries out every `Ready` the core has.
    fn process_ready(&mut self) -> Result<(), String> {
        while self.replica.has_ready() {
            let Ready {
                messages,
                persist,
                persisted_messages,
                chosen,
                reads,
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
            for read in reads {
                if let Some((query, reply)) = self.reads.remove(&read.read_id) {
                    self.waiting_reads.push((read.slot, query, reply));
                }
            }
            self.answer_reads();
            self.replica.advance();
        }
        Ok(())
    }

    fn apply(&mut self, slot: Slot, value: &Value) {
        debug_assert_eq!(slot, self.applied + 1, "chosen entries arrive in order");
        if let Value::Commands(commands) = value {
            let me = self.replica.id().0;
            for tagged in commands {
                let Some((tag, command)) = tagged.split_at_checked(TAG_BYTES) else {
                    // Every replica sees the same bytes, so skipping is
                    // deterministic; only a bug can put such a value here.
                    warn!(slot, "skipped a command without its tag");
                    continue;
                };
                let output = self.state_machine.apply(slot, command);
                let origin = u64::from_le_bytes(tag[..8].try_into().unwrap_or([0; 8]));
                if origin == me {
                    let seq = u64::from_le_bytes(tag[8..].try_into().unwrap_or([0; 8]));
                    if let Some(reply) = self.proposals.remove(&seq) {
                        let _ = reply.send(Ok(output));
                    }
                }
            }
        }
        self.applied = slot;
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
        let leader_hint = self.replica.leader_hint();
        for (_, (_, reply)) in std::mem::take(&mut self.reads) {
            let _ = reply.send(Err(NodeError::NotLeader { leader_hint }));
        }
        for (_, _, reply) in std::mem::take(&mut self.waiting_reads) {
            let _ = reply.send(Err(NodeError::NotLeader { leader_hint }));
        }
    }

    fn publish(&self, failed: bool) {
        let metrics = NodeMetrics {
            id: self.replica.id(),
            role: Some(self.replica.role()),
            leader_hint: self.replica.leader_hint(),
            promised: self.replica.promised(),
            chosen_upto: self.replica.chosen_upto(),
            applied_slot: self.applied,
            pending_proposals: self.proposals.len(),
            persist_count: self.persist_count,
            failed,
        };
        self.metrics.send_if_modified(|current| {
            let changed = *current != metrics;
            *current = metrics;
            changed
        });
    }
}
