//! The receiving side: accepts peer connections and hands each request's
//! envelopes to the local replica.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tarpc::context;
use tarpc::server::InFlightRequest;
use tokio::net::TcpListener;
use tracing::debug;

use crate::driver::NodeHandle;
use crate::message::Envelope;
use crate::net::rpc::{PaxosPeer, PaxosPeerRequest, PaxosPeerResponse};
use crate::net::service::{ConnectionStats, TarpcServer};
use crate::net::NetLimits;

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
        let service = PeerService {
            handle,
            group,
            counters: Arc::clone(&counters),
        };
        let server = TarpcServer::spawn(
            "paxos peer",
            self.listener,
            move |request: InFlightRequest<PaxosPeerRequest, PaxosPeerResponse>| {
                request.execute(service.clone().serve())
            },
            self.limits,
        );
        ServerHandle {
            local_addr: self.local_addr,
            server,
            counters,
        }
    }
}

/// What a server has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// What the shared server did with connections.
    pub connections: ConnectionStats,
    /// Requests whose group matched.
    pub batches_received: u64,
    /// Requests dropped whole because their group did not match.
    pub batches_wrong_group: u64,
    /// Envelopes handed to the replica.
    pub envelopes_delivered: u64,
    /// Envelopes dropped because they were addressed to another replica.
    pub envelopes_wrong_node: u64,
}

/// The peer service's own counters; the connection counters live in the
/// shared [`TarpcServer`].
#[derive(Debug, Default)]
struct Counters {
    batches_received: AtomicU64,
    batches_wrong_group: AtomicU64,
    envelopes_delivered: AtomicU64,
    envelopes_wrong_node: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self, connections: ConnectionStats) -> ServerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ServerStats {
            connections,
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
    server: TarpcServer,
    counters: Arc<Counters>,
}

impl ServerHandle {
    /// The address served.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What the server has done so far.
    pub fn stats(&self) -> ServerStats {
        self.counters.snapshot(self.server.stats())
    }

    /// Stops accepting, closes every connection, and waits until every
    /// task of the server has ended and the port is released. Returns the
    /// final statistics.
    pub async fn shutdown(self) -> ServerStats {
        let connections = self.server.shutdown().await;
        self.counters.snapshot(connections)
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
