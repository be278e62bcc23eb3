//! The sending side: [`TarpcTransport`], one bounded queue and one task per
//! peer.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tarpc::client::{self, NewClient};
use tarpc::context;
use tokio::runtime::Handle;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::task::AbortHandle;
use tracing::{debug, warn};

use crate::message::Envelope;
use crate::net::codec::{connect_framed, wire_size, REQUEST_OVERHEAD_BYTES};
use crate::net::rpc::PaxosPeerClient;
use crate::net::NetLimits;
use crate::transport::Transport;
use crate::types::NodeId;

/// Sends envelopes to peers over TCP with tarpc. See the [module
/// docs](crate::net) for the design.
///
/// The peer set follows the group's membership: [`TarpcTransport::set_peer`]
/// and [`TarpcTransport::remove_peer`] add, move and drop peers while the
/// replica runs (a replica added by `NodeHandle::reconfigure` is reachable
/// once its address is set). Dropping the transport stops every peer task
/// (queued envelopes are lost, as on any crash).
#[derive(Debug)]
pub struct TarpcTransport {
    peers: RwLock<BTreeMap<NodeId, PeerQueue>>,
    runtime: Handle,
    group: u64,
    limits: NetLimits,
    counters: Arc<Counters>,
}

/// The sending end of one peer's task.
#[derive(Debug)]
struct PeerQueue {
    addr: SocketAddr,
    queue: mpsc::Sender<Envelope>,
    task: AbortHandle,
}

impl TarpcTransport {
    /// A transport to `peers` (a replica's own id may be left out: the core
    /// never sends to itself) for the group `group`. Spawns one task per
    /// peer on `runtime`, because `send` is called from the driver's plain
    /// OS thread, which has no runtime of its own. Connections are opened
    /// lazily, on the first envelope for a peer.
    pub fn new(
        runtime: &Handle,
        peers: BTreeMap<NodeId, SocketAddr>,
        group: u64,
        limits: NetLimits,
    ) -> TarpcTransport {
        let transport = TarpcTransport {
            peers: RwLock::new(BTreeMap::new()),
            runtime: runtime.clone(),
            group,
            limits,
            counters: Arc::new(Counters::default()),
        };
        for (peer, addr) in peers {
            transport.set_peer(peer, addr);
        }
        transport
    }

    /// Sends to `peer` at `addr` from now on: a new peer gets its own task;
    /// a peer at a new address gets a fresh one (envelopes queued for the
    /// old address are dropped, as a lossy network may).
    pub fn set_peer(&self, peer: NodeId, addr: SocketAddr) {
        let mut peers = self.peers.write().unwrap_or_else(PoisonError::into_inner);
        if peers.get(&peer).is_some_and(|known| known.addr == addr) {
            return;
        }
        let (queue, receiver) = mpsc::channel(self.limits.peer_queue_depth.max(1));
        let task = self.runtime.spawn(run_peer(
            PeerLink {
                peer,
                addr,
                group: self.group,
                limits: self.limits.clone(),
                counters: Arc::clone(&self.counters),
            },
            receiver,
        ));
        let link = PeerQueue {
            addr,
            queue,
            task: task.abort_handle(),
        };
        if let Some(old) = peers.insert(peer, link) {
            old.task.abort();
        }
    }

    /// Stops sending to `peer` (a replica removed from the group).
    pub fn remove_peer(&self, peer: NodeId) {
        let mut peers = self.peers.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = peers.remove(&peer) {
            old.task.abort();
        }
    }

    /// The peers it sends to now.
    pub fn peers(&self) -> Vec<NodeId> {
        let peers = self.peers.read().unwrap_or_else(PoisonError::into_inner);
        peers.keys().copied().collect()
    }

    /// What the transport has done so far.
    pub fn stats(&self) -> TransportStats {
        self.counters.snapshot()
    }
}

impl Transport for TarpcTransport {
    fn send(&self, envelopes: Vec<Envelope>) {
        let (mut queued, mut unknown, mut full) = (0, 0, 0);
        {
            let peers = self.peers.read().unwrap_or_else(PoisonError::into_inner);
            for envelope in envelopes {
                let Some(peer) = peers.get(&envelope.to) else {
                    unknown += 1;
                    continue;
                };
                match peer.queue.try_send(envelope) {
                    Ok(()) => queued += 1,
                    Err(TrySendError::Full(_) | TrySendError::Closed(_)) => full += 1,
                }
            }
        }
        // One atomic add per counter per call, not per envelope.
        bump(&self.counters.envelopes_queued, queued);
        bump(&self.counters.envelopes_dropped_unknown_peer, unknown);
        bump(&self.counters.envelopes_dropped_queue_full, full);
    }
}

impl Drop for TarpcTransport {
    fn drop(&mut self) {
        let peers = self.peers.get_mut().unwrap_or_else(PoisonError::into_inner);
        for peer in peers.values() {
            peer.task.abort();
        }
    }
}

/// Opens a client connection to a peer server: for tools and tests that
/// talk to a server directly. The connection's dispatch task runs on the
/// current runtime until the client is dropped. Must be called within a
/// tokio runtime.
pub async fn connect(addr: SocketAddr, limits: &NetLimits) -> io::Result<PaxosPeerClient> {
    let transport = connect_framed(addr, limits).await?;
    Ok(PaxosPeerClient::new(client::Config::default(), transport).spawn())
}

/// What a transport has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Envelopes put in a peer's queue.
    pub envelopes_queued: u64,
    /// Envelopes dropped because their peer's queue was full (or, after a
    /// panic, its task had ended).
    pub envelopes_dropped_queue_full: u64,
    /// Envelopes dropped because their `to` is not a known peer.
    pub envelopes_dropped_unknown_peer: u64,
    /// Envelopes dropped because alone they exceed the frame limit.
    pub envelopes_dropped_oversize: u64,
    /// Envelopes taken from a queue but lost to a failed connect or call.
    pub envelopes_dropped_unsent: u64,
    /// Envelopes whose `deliver` call succeeded.
    pub envelopes_sent: u64,
    /// Successful `deliver` calls.
    pub batches_sent: u64,
    /// Connections opened.
    pub connects: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// `deliver` calls or connections that failed (each drops the
    /// connection).
    pub rpc_failures: u64,
}

#[derive(Debug, Default)]
struct Counters {
    envelopes_queued: AtomicU64,
    envelopes_dropped_queue_full: AtomicU64,
    envelopes_dropped_unknown_peer: AtomicU64,
    envelopes_dropped_oversize: AtomicU64,
    envelopes_dropped_unsent: AtomicU64,
    envelopes_sent: AtomicU64,
    batches_sent: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    rpc_failures: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    if by > 0 {
        counter.fetch_add(by, Ordering::Relaxed);
    }
}

fn count(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}

impl Counters {
    fn snapshot(&self) -> TransportStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportStats {
            envelopes_queued: get(&self.envelopes_queued),
            envelopes_dropped_queue_full: get(&self.envelopes_dropped_queue_full),
            envelopes_dropped_unknown_peer: get(&self.envelopes_dropped_unknown_peer),
            envelopes_dropped_oversize: get(&self.envelopes_dropped_oversize),
            envelopes_dropped_unsent: get(&self.envelopes_dropped_unsent),
            envelopes_sent: get(&self.envelopes_sent),
            batches_sent: get(&self.batches_sent),
            connects: get(&self.connects),
            connect_failures: get(&self.connect_failures),
            rpc_failures: get(&self.rpc_failures),
        }
    }
}

/// Everything a peer task knows about its peer.
#[derive(Debug)]
struct PeerLink {
    peer: NodeId,
    addr: SocketAddr,
    group: u64,
    limits: NetLimits,
    counters: Arc<Counters>,
}

/// How a connection's sending loop ended.
enum Outcome {
    /// The transport was dropped: the task ends.
    QueueClosed,
    /// A call failed: reconnect after a backoff.
    Broken,
}

/// The task of one peer: connect when there is something to send, send
/// batches until an error, back off, reconnect. Ends when the transport is
/// dropped.
async fn run_peer(link: PeerLink, mut queue: mpsc::Receiver<Envelope>) {
    let limits = &link.limits;
    let mut backoff = limits.backoff_min;
    loop {
        let Some(first) = queue.recv().await else {
            return;
        };
        match connect_framed(link.addr, limits).await {
            Ok(transport) => {
                bump(&link.counters.connects, 1);
                let NewClient { client, dispatch } =
                    PaxosPeerClient::new(client::Config::default(), transport);
                let mut dispatch = pin!(dispatch);
                let outcome = tokio::select! {
                    outcome = send_batches(&link, &client, first, &mut queue, &mut backoff) => {
                        outcome
                    }
                    ended = &mut dispatch => {
                        bump(&link.counters.rpc_failures, 1);
                        match ended {
                            Ok(()) => debug!(peer = %link.peer, "connection to peer closed"),
                            Err(cause) => {
                                debug!(peer = %link.peer, %cause, "connection to peer broke");
                            }
                        }
                        Outcome::Broken
                    }
                };
                if let Outcome::QueueClosed = outcome {
                    return;
                }
            }
            Err(cause) => {
                bump(&link.counters.connect_failures, 1);
                bump(&link.counters.envelopes_dropped_unsent, 1);
                debug!(peer = %link.peer, addr = %link.addr, %cause, "connecting to peer failed");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = backoff
            .saturating_mul(2)
            .min(limits.backoff_max)
            .max(limits.backoff_min);
    }
}

/// Sends batches over one connection until a call fails or the transport
/// is dropped. Every successful call resets `backoff`.
async fn send_batches(
    link: &PeerLink,
    client: &PaxosPeerClient,
    first: Envelope,
    queue: &mut mpsc::Receiver<Envelope>,
    backoff: &mut Duration,
) -> Outcome {
    let limits = &link.limits;
    let budget = u64::try_from(limits.max_frame_bytes)
        .unwrap_or(u64::MAX)
        .saturating_sub(REQUEST_OVERHEAD_BYTES);
    let mut next = Some(first);
    loop {
        let head = match next.take() {
            Some(envelope) => envelope,
            None => match queue.recv().await {
                Some(envelope) => envelope,
                None => return Outcome::QueueClosed,
            },
        };
        let (batch, rest) = take_batch(link, head, queue, budget);
        next = rest;
        if batch.is_empty() {
            continue;
        }
        let sent = count(batch.len());
        let mut ctx = context::current();
        ctx.deadline = std::time::Instant::now()
            .checked_add(limits.rpc_timeout)
            .unwrap_or(ctx.deadline);
        let failure =
            match tokio::time::timeout(limits.rpc_timeout, client.deliver(ctx, link.group, batch))
                .await
            {
                Ok(Ok(())) => None,
                Ok(Err(cause)) => Some(cause.to_string()),
                Err(_) => Some("no answer in time".to_string()),
            };
        match failure {
            None => {
                bump(&link.counters.batches_sent, 1);
                bump(&link.counters.envelopes_sent, sent);
                *backoff = limits.backoff_min;
            }
            Some(cause) => {
                bump(&link.counters.rpc_failures, 1);
                let lost = sent + u64::from(next.is_some());
                bump(&link.counters.envelopes_dropped_unsent, lost);
                debug!(peer = %link.peer, %cause, "deliver call failed; reconnecting");
                return Outcome::Broken;
            }
        }
    }
}

/// Takes `head` and whatever else is queued, up to the batch limits.
/// Returns the batch and, if the byte budget cut it, the envelope that
/// did not fit (it starts the next batch). Drops envelopes that alone
/// exceed the budget.
fn take_batch(
    link: &PeerLink,
    head: Envelope,
    queue: &mut mpsc::Receiver<Envelope>,
    budget: u64,
) -> (Vec<Envelope>, Option<Envelope>) {
    let most = link.limits.batch_envelopes_max.max(1);
    let mut batch = Vec::new();
    let mut bytes = 0u64;
    let mut candidate = Some(head);
    while batch.len() < most {
        let envelope = match candidate.take() {
            Some(envelope) => envelope,
            None => match queue.try_recv() {
                Ok(envelope) => envelope,
                Err(_) => break,
            },
        };
        let size = wire_size(&envelope).unwrap_or(u64::MAX);
        if size > budget {
            bump(&link.counters.envelopes_dropped_oversize, 1);
            warn!(
                peer = %link.peer,
                kind = envelope.message.kind(),
                size,
                budget,
                "dropped a message larger than the frame limit"
            );
            continue;
        }
        if bytes + size > budget {
            return (batch, Some(envelope));
        }
        bytes += size;
        batch.push(envelope);
    }
    (batch, None)
}
