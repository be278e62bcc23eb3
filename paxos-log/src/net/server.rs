//! The receiving side: accepts peer connections and hands each request's
//! envelopes to the local replica.

use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tarpc::context;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_util::sync::CancellationToken;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio::time::{sleep, Instant};
use tracing::{debug, error, warn};

use crate::driver::NodeHandle;
use crate::message::Envelope;
use crate::net::codec::{framed, WireCodec};
use crate::net::rpc::PaxosPeer;
use crate::net::NetLimits;

/// Pause after a failed `accept` (say, out of file descriptors), so the
/// loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// A bound listening socket, not yet serving. Binding first lets a caller
/// learn every replica's address (port 0 in tests) before any replica
/// starts; connections that arrive before [`PeerListener::start`] wait in
/// the kernel's backlog.
#[derive(Debug)]
pub struct PeerListener {
    listener: TcpListener,
    local_addr: SocketAddr,
    limits: NetLimits,
}

impl PeerListener {
    /// Binds `addr` (port 0 picks a free port). Must be called within a
    /// tokio runtime.
    pub async fn bind(addr: SocketAddr, limits: NetLimits) -> io::Result<PeerListener> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(PeerListener {
            listener,
            local_addr,
            limits,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Starts serving: requests for `group` are handed to `handle`. Spawns
    /// the accept loop on the current tokio runtime.
    pub fn start(self, handle: NodeHandle, group: u64) -> ServerHandle {
        let counters = Arc::new(Counters::default());
        let shutdown = CancellationToken::new();
        let service = PeerService {
            handle,
            group,
            counters: Arc::clone(&counters),
        };
        let task = tokio::spawn(accept_loop(
            self.listener,
            service,
            self.limits,
            shutdown.clone(),
        ));
        ServerHandle {
            local_addr: self.local_addr,
            shutdown,
            task: Some(task),
            counters,
        }
    }
}

/// Binds `addr` and serves `handle`'s replica of `group` on it: returns the
/// bound address and the handle that stops the server. Must be called
/// within a tokio runtime.
pub async fn serve(
    addr: SocketAddr,
    handle: NodeHandle,
    group: u64,
    limits: NetLimits,
) -> io::Result<(SocketAddr, ServerHandle)> {
    let listener = PeerListener::bind(addr, limits).await?;
    let bound = listener.local_addr();
    Ok((bound, listener.start(handle, group)))
}

/// What a server has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted and served.
    pub connections_accepted: u64,
    /// Connections closed on accept because `max_connections` were open.
    pub connections_refused: u64,
    /// Connections closed on bad input (oversized, undecodable or
    /// truncated frame, deadline too far) or an I/O error (which includes
    /// a peer that stopped in the middle of a frame).
    pub connections_failed: u64,
    /// Connections closed after `idle_timeout` without a request.
    pub connections_idle: u64,
    /// Connection tasks that panicked (a bug; the server goes on).
    pub connection_panics: u64,
    /// `accept` calls that failed.
    pub accept_errors: u64,
    /// Requests whose group matched.
    pub batches_received: u64,
    /// Requests dropped whole because their group did not match.
    pub batches_wrong_group: u64,
    /// Envelopes handed to the replica.
    pub envelopes_delivered: u64,
    /// Envelopes dropped because they were addressed to another replica.
    pub envelopes_wrong_node: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections_accepted: AtomicU64,
    connections_refused: AtomicU64,
    connections_failed: AtomicU64,
    connections_idle: AtomicU64,
    connection_panics: AtomicU64,
    accept_errors: AtomicU64,
    batches_received: AtomicU64,
    batches_wrong_group: AtomicU64,
    envelopes_delivered: AtomicU64,
    envelopes_wrong_node: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> ServerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ServerStats {
            connections_accepted: get(&self.connections_accepted),
            connections_refused: get(&self.connections_refused),
            connections_failed: get(&self.connections_failed),
            connections_idle: get(&self.connections_idle),
            connection_panics: get(&self.connection_panics),
            accept_errors: get(&self.accept_errors),
            batches_received: get(&self.batches_received),
            batches_wrong_group: get(&self.batches_wrong_group),
            envelopes_delivered: get(&self.envelopes_delivered),
            envelopes_wrong_node: get(&self.envelopes_wrong_node),
        }
    }
}

/// A running server. [`ServerHandle::shutdown`] stops it and waits; dropping
/// the handle stops it without waiting.
#[derive(Debug)]
#[must_use = "dropping the handle stops the server"]
pub struct ServerHandle {
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl ServerHandle {
    /// The address served.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What the server has done so far.
    pub fn stats(&self) -> ServerStats {
        self.counters.snapshot()
    }

    /// Stops accepting, closes every connection, and waits until every
    /// task of the server has ended and the port is released. Returns the
    /// final statistics.
    pub async fn shutdown(mut self) -> ServerStats {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            if let Err(cause) = task.await {
                record_join_error(&self.counters, &cause);
            }
        }
        self.stats()
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            // Dropping the accept loop's `JoinSet` aborts every connection.
            task.abort();
        }
    }
}

fn record_join_error(counters: &Counters, cause: &JoinError) {
    if cause.is_panic() {
        bump(&counters.connection_panics, 1);
        error!(%cause, "a paxos peer server task panicked");
    }
}

/// The service behind every connection of one server.
#[derive(Debug, Clone)]
struct PeerService {
    handle: NodeHandle,
    group: u64,
    counters: Arc<Counters>,
}

impl PaxosPeer for PeerService {
    async fn deliver(self, _: context::Context, group: u64, batch: Vec<Envelope>) {
        let count = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        if group != self.group {
            bump(&self.counters.batches_wrong_group, 1);
            debug!(
                group,
                expected = self.group,
                envelopes = count,
                "dropped a batch for another group"
            );
            return;
        }
        bump(&self.counters.batches_received, 1);
        let me = self.handle.id();
        let mut delivered = 0;
        for envelope in batch {
            if envelope.to == me {
                self.handle.deliver(envelope);
                delivered += 1;
            }
        }
        bump(&self.counters.envelopes_delivered, delivered);
        bump(&self.counters.envelopes_wrong_node, count - delivered);
    }
}

async fn accept_loop(
    listener: TcpListener,
    service: PeerService,
    limits: NetLimits,
    shutdown: CancellationToken,
) {
    let counters = Arc::clone(&service.counters);
    let mut connections: JoinSet<ConnectionEnd> = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                match joined {
                    Ok(end) => record_end(&counters, &end),
                    Err(cause) => record_join_error(&counters, &cause),
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if connections.len() >= limits.max_connections {
                        bump(&counters.connections_refused, 1);
                        debug!(%peer, "too many connections; closed a new one");
                        drop(stream);
                        continue;
                    }
                    bump(&counters.connections_accepted, 1);
                    connections.spawn(serve_connection(
                        stream,
                        peer,
                        service.clone(),
                        limits.clone(),
                        shutdown.clone(),
                    ));
                }
                Err(cause) => {
                    bump(&counters.accept_errors, 1);
                    warn!(%cause, "accepting a paxos peer connection failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = sleep(ACCEPT_ERROR_PAUSE) => {}
                    }
                }
            }
        }
    }
    // Stop listening before waiting for the connections.
    drop(listener);
    connections.abort_all();
    while let Some(joined) = connections.join_next().await {
        match joined {
            Ok(end) => record_end(&counters, &end),
            Err(cause) => record_join_error(&counters, &cause),
        }
    }
}

/// Why a connection ended.
#[derive(Debug)]
enum ConnectionEnd {
    /// The peer closed it.
    Closed,
    /// The server is stopping.
    Shutdown,
    /// No request for `idle_timeout`.
    Idle,
    /// Bad input or an I/O error.
    Failed(String),
}

fn record_end(counters: &Counters, end: &ConnectionEnd) {
    match end {
        ConnectionEnd::Closed | ConnectionEnd::Shutdown => {}
        ConnectionEnd::Idle => bump(&counters.connections_idle, 1),
        ConnectionEnd::Failed(_) => bump(&counters.connections_failed, 1),
    }
}

/// Serves one connection until the peer closes it, it fails, it idles out,
/// or the server stops. Returning drops (closes) the socket.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    service: PeerService,
    limits: NetLimits,
    shutdown: CancellationToken,
) -> ConnectionEnd {
    // Latency matters more than packet count for small protocol messages.
    let _ = stream.set_nodelay(true);
    let transport = framed(stream, &limits, WireCodec::server(&limits));
    let mut requests = pin!(BaseChannel::with_defaults(transport).requests());
    let mut in_flight = FuturesUnordered::new();
    let in_flight_max = limits.max_in_flight_per_connection.max(1);
    let mut idle = pin!(sleep(limits.idle_timeout));
    let end = loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break ConnectionEnd::Shutdown,
            () = &mut idle => break ConnectionEnd::Idle,
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            request = requests.next(), if in_flight.len() < in_flight_max => match request {
                Some(Ok(request)) => {
                    idle.as_mut().reset(Instant::now() + limits.idle_timeout);
                    in_flight.push(request.execute(service.clone().serve()));
                }
                Some(Err(cause)) => break ConnectionEnd::Failed(cause.to_string()),
                None => break ConnectionEnd::Closed,
            },
        }
    };
    if let ConnectionEnd::Failed(cause) = &end {
        debug!(%peer, %cause, "closed a paxos peer connection");
    }
    end
}
