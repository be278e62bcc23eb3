//! The bounded tarpc server every service of the system runs on: an accept
//! loop plus one task per connection, with the limits of [`NetLimits`].
//!
//! ```text
//!  TcpListener ──accept──► over max_connections? ──yes──► close, count refused
//!                                  │ no
//!                                  ▼
//!        one task per connection (JoinSet)
//!          ├── with TLS: handshake failed? ──► log, close, count unauthorized
//!          ├── with an access key: hello refused? ──► log, close, count unauthorized
//!          │   (crate::net::access)
//!          ▼
//!        framed + WireCodec::server
//!          ├── ≤ max_in_flight_per_connection requests handled at once
//!          ├── no request (and none in flight) for idle_timeout ──► close
//!          └── bad frame / deadline / I/O error ──► close this one only
//! ```
//!
//! The log's peer server ([`crate::net::PeerListener`]), the controller's
//! admin service and the shard groups' client service differ only in what
//! a request does; everything about sockets, limits and shutdown lives
//! here, once. A service plugs in a *handler*: a closure that turns one
//! decoded [`InFlightRequest`] into the future answering it, normally
//! `move |request| request.execute(service.clone().serve())`.
//!
//! Why a closure and not a generic [`tarpc::server::Serve`]: `Serve::serve`
//! is an `async fn` in a trait, and a generic bound cannot require its
//! future to be `Send` (which spawning the connection task needs). At the
//! call site the service type is concrete, so the closure's future is known
//! to be `Send` there.
//!
//! Shutdown ([`TarpcServer::shutdown`], or dropping the [`TarpcServer`], or
//! cancelling the token given to [`run_tarpc_server`]) stops accepting,
//! drops the listener (freeing the port), then aborts and joins every
//! connection task. Every connection's end is counted in
//! [`ServerCounters`], which the services embed in their own statistics.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tarpc::server::{BaseChannel, Channel, InFlightRequest};
use tarpc::tokio_util::sync::CancellationToken;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio::time::{sleep, Instant};
use tracing::{debug, error, warn};

use crate::net::access;
use crate::net::codec::{framed, WireCodec};
use crate::net::tls::NetStream;
use crate::net::NetLimits;

/// Pause after a failed `accept` (say, out of file descriptors), so the
/// loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What a server's connections have done so far (a snapshot of
/// [`ServerCounters`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Connections accepted and served.
    pub connections_accepted: u64,
    /// Connections closed on accept because `max_connections` were open.
    pub connections_refused: u64,
    /// Connections refused by the access handshake (another cluster, a
    /// wrong secret, no handshake).
    pub connections_unauthorized: u64,
    /// Connections closed on bad input (oversized, undecodable or
    /// truncated frame, deadline too far) or an I/O error (which includes
    /// a peer that stopped in the middle of a frame).
    pub connections_failed: u64,
    /// Connections closed after `idle_timeout` without a request.
    pub connections_idle: u64,
    /// Connection tasks (or the accept loop) that panicked (a bug; the
    /// server goes on).
    pub connection_panics: u64,
    /// `accept` calls that failed.
    pub accept_errors: u64,
}

/// The live counters behind [`ConnectionStats`], shared between the
/// server's tasks and whoever reports its statistics.
#[derive(Debug, Default)]
pub struct ServerCounters {
    connections_accepted: AtomicU64,
    connections_refused: AtomicU64,
    connections_unauthorized: AtomicU64,
    connections_failed: AtomicU64,
    connections_idle: AtomicU64,
    connection_panics: AtomicU64,
    accept_errors: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    // Statistics only: no ordering with anything else is needed.
    counter.fetch_add(1, Ordering::Relaxed);
}

impl ServerCounters {
    /// The counts so far.
    pub fn snapshot(&self) -> ConnectionStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ConnectionStats {
            connections_accepted: get(&self.connections_accepted),
            connections_refused: get(&self.connections_refused),
            connections_unauthorized: get(&self.connections_unauthorized),
            connections_failed: get(&self.connections_failed),
            connections_idle: get(&self.connections_idle),
            connection_panics: get(&self.connection_panics),
            accept_errors: get(&self.accept_errors),
        }
    }

    /// Counts a task that ended with `cause`: a panic is a bug worth
    /// reporting; a cancellation is just shutdown.
    fn record_join_error(&self, name: &str, cause: &JoinError) {
        if cause.is_panic() {
            bump(&self.connection_panics);
            error!(server = name, %cause, "a server task panicked");
        }
    }

    fn record_joined(&self, name: &str, joined: Result<ConnectionEnd, JoinError>) {
        match joined {
            Ok(ConnectionEnd::Closed) => {}
            Ok(ConnectionEnd::Idle) => bump(&self.connections_idle),
            Ok(ConnectionEnd::Failed) => bump(&self.connections_failed),
            Ok(ConnectionEnd::Unauthorized) => bump(&self.connections_unauthorized),
            Err(cause) => self.record_join_error(name, &cause),
        }
    }
}

/// A running [`run_tarpc_server`] on its own task.
/// [`TarpcServer::shutdown`] stops it and waits; dropping it stops it
/// without waiting.
#[derive(Debug)]
#[must_use = "dropping the server stops it"]
pub struct TarpcServer {
    name: &'static str,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
    counters: Arc<ServerCounters>,
}

impl TarpcServer {
    /// Spawns [`run_tarpc_server`] on the current tokio runtime, serving
    /// `listener` with `handler`. `name` only labels log lines.
    pub fn spawn<Req, Resp, H, Fut>(
        name: &'static str,
        listener: TcpListener,
        handler: H,
        limits: NetLimits,
    ) -> TarpcServer
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        H: Fn(InFlightRequest<Req, Resp>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let shutdown = CancellationToken::new();
        let counters = Arc::new(ServerCounters::default());
        let task = tokio::spawn(run_tarpc_server(
            name,
            listener,
            handler,
            limits,
            shutdown.clone(),
            Arc::clone(&counters),
        ));
        TarpcServer {
            name,
            shutdown,
            task: Some(task),
            counters,
        }
    }

    /// What the server's connections have done so far.
    pub fn stats(&self) -> ConnectionStats {
        self.counters.snapshot()
    }

    /// Stops accepting, closes every connection, and waits until every
    /// task of the server has ended and the port is released. Returns the
    /// final statistics.
    pub async fn shutdown(mut self) -> ConnectionStats {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            if let Err(cause) = task.await {
                self.counters.record_join_error(self.name, &cause);
            }
        }
        self.stats()
    }
}

impl Drop for TarpcServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            // Dropping the accept loop's `JoinSet` aborts every connection.
            task.abort();
        }
    }
}

/// Serves `listener` until `shutdown` is cancelled: accepts up to
/// `limits.max_connections` connections at once (closing and counting the
/// excess), and serves each on its own task, where every request is handed
/// to `handler`. Returns once the listener is closed and every connection
/// task has ended. `name` only labels log lines.
pub async fn run_tarpc_server<Req, Resp, H, Fut>(
    name: &'static str,
    listener: TcpListener,
    handler: H,
    limits: NetLimits,
    shutdown: CancellationToken,
    counters: Arc<ServerCounters>,
) where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    H: Fn(InFlightRequest<Req, Resp>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections: JoinSet<ConnectionEnd> = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                counters.record_joined(name, joined);
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if connections.len() >= limits.max_connections {
                        bump(&counters.connections_refused);
                        debug!(server = name, %peer, "too many connections; closed a new one");
                        drop(stream);
                        continue;
                    }
                    bump(&counters.connections_accepted);
                    connections.spawn(serve_connection(
                        name,
                        stream,
                        peer,
                        handler.clone(),
                        limits.clone(),
                        shutdown.clone(),
                    ));
                }
                Err(cause) => {
                    bump(&counters.accept_errors);
                    warn!(server = name, %cause, "accepting a connection failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = sleep(ACCEPT_ERROR_PAUSE) => {}
                    }
                }
            }
        }
    }
    // Stop listening (free the port) before waiting for the connections.
    drop(listener);
    connections.abort_all();
    while let Some(joined) = connections.join_next().await {
        counters.record_joined(name, joined);
    }
}

/// Why a connection ended.
#[derive(Debug)]
enum ConnectionEnd {
    /// The peer closed it, or the server is stopping.
    Closed,
    /// No request for `idle_timeout`.
    Idle,
    /// Bad input or an I/O error.
    Failed,
    /// Refused by the access handshake.
    Unauthorized,
}

/// Serves one connection until the peer closes it, it fails, it idles out,
/// or the server stops. Returning drops (closes) the socket.
async fn serve_connection<Req, Resp, H, Fut>(
    name: &'static str,
    mut stream: TcpStream,
    peer: SocketAddr,
    handler: H,
    limits: NetLimits,
    shutdown: CancellationToken,
) -> ConnectionEnd
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    H: Fn(InFlightRequest<Req, Resp>) -> Fut,
    Fut: Future<Output = ()>,
{
    // Latency matters more than packet count for small protocol messages.
    let _ = stream.set_nodelay(true);
    let mut stream = match &limits.tls {
        None => NetStream::Plain(stream),
        Some(tls) => {
            // A client without TLS that opens with the access hello is told
            // so in its own language before the connection closes.
            if access::is_plaintext_hello(&stream).await {
                access::refuse_plaintext(&mut stream).await;
                warn!(server = name, %peer, "refused a connection: plaintext, and this cluster requires TLS");
                return ConnectionEnd::Unauthorized;
            }
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return ConnectionEnd::Closed,
                accepted = tokio::time::timeout(access::HANDSHAKE_TIMEOUT, tls.accept(stream)) => accepted,
            };
            match accepted {
                Ok(Ok(stream)) => stream,
                Ok(Err(cause)) => {
                    warn!(server = name, %peer, %cause, "refused a connection: TLS handshake failed");
                    return ConnectionEnd::Unauthorized;
                }
                Err(_) => {
                    warn!(server = name, %peer, "refused a connection: no TLS handshake in time");
                    return ConnectionEnd::Unauthorized;
                }
            }
        }
    };
    if let Some(key) = &limits.access {
        let checked = tokio::select! {
            () = shutdown.cancelled() => return ConnectionEnd::Closed,
            checked = access::check(&mut stream, key) => checked,
        };
        if let Err(refusal) = checked {
            warn!(server = name, %peer, %refusal, "refused a connection");
            return ConnectionEnd::Unauthorized;
        }
    }
    let transport = framed(stream, &limits, WireCodec::server(&limits));
    let mut requests = pin!(BaseChannel::with_defaults(transport).requests());
    let mut in_flight = FuturesUnordered::new();
    let in_flight_max = limits.max_in_flight_per_connection.max(1);
    let mut idle = pin!(sleep(limits.idle_timeout));
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return ConnectionEnd::Closed,
            // A connection waiting on a slow request is busy, not idle.
            () = &mut idle, if in_flight.is_empty() => return ConnectionEnd::Idle,
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {
                idle.as_mut().reset(Instant::now() + limits.idle_timeout);
            }
            // Not reading past `in_flight_max` pushes back on the peer
            // through TCP instead of queueing without bound.
            request = requests.next(), if in_flight.len() < in_flight_max => match request {
                Some(Ok(request)) => {
                    idle.as_mut().reset(Instant::now() + limits.idle_timeout);
                    in_flight.push(handler(request));
                }
                Some(Err(cause)) => {
                    debug!(server = name, %peer, %cause, "closed a connection");
                    return ConnectionEnd::Failed;
                }
                None => return ConnectionEnd::Closed,
            },
        }
    }
}
