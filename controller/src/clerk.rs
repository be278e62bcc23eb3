//! The admin client of the controller: [`ControllerClerk`].
//!
//! ```text
//!   join / leave / move_shard / split ──► change(client_id, seq, op) ─┐
//!   query                             ──► query(num) ─────────────────┤
//!                                                                     ▼
//!        cached leader ──► NotLeader hint ──► next address (round robin)
//!             ▲                                        │
//!             └──── exponential backoff (bounded) ◄────┘   until the deadline
//! ```
//!
//! A clerk knows the client addresses of the controller replicas, finds the
//! leader and retries until an overall deadline
//! ([`ClerkOptions::deadline`]):
//!
//! * It calls the replica it last saw lead; a [`ServiceError::NotLeader`]
//!   with a hint sends it straight to the hinted replica, otherwise it tries
//!   the next address in turn.
//! * Between attempts that did not just follow a fresh hint it sleeps an
//!   exponential backoff from [`ClerkOptions::backoff_min`] to
//!   [`ClerkOptions::backoff_max`].
//! * Each attempt is bounded by [`ClerkOptions::rpc_timeout`] (and by what
//!   is left of the deadline).
//!
//! # At most once, and what "indeterminate" means
//!
//! Every change carries the clerk's `client_id` and a fresh `seq`, and every
//! retry of it reuses the pair, so the controller's session table applies it
//! at most once however many copies arrive (see [`crate::session`]); the
//! retry that gets through answers with the reply of the first application.
//! A clerk sends one change at a time (the methods take `&mut self`), which
//! is what keeps its seqs in order.
//!
//! When the deadline passes, a change that never got a definite answer is
//! reported as [`ClerkError::Indeterminate`] if *any* attempt may have
//! reached a leader (a lost or late reply, a leader that lost its
//! leadership or its quorum with the change pending): it may still take
//! effect. If every attempt was certainly refused before the log (not the
//! leader, busy, stopped, connection refused), the change certainly did not
//! happen and the error is [`ClerkError::Unavailable`]. Queries change
//! nothing, so they are retried freely and never indeterminate.
//!
//! # Client ids
//!
//! The session table keys on `client_id`, so two clerks sharing an id would
//! see each other's replies. The caller chooses the id
//! ([`ClerkOptions::new`]) and must make it unique per clerk *instance*
//! (never reuse one across restarts: the seq starts again at 1). Tests pass
//! fixed distinct ids (reproducible runs); binaries use
//! [`unique_client_id`], which mixes the wall clock, the process id and a
//! per-process counter.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use paxos_log::NetLimits;
use tarpc::client::{self, NewClient, RpcError};
use tarpc::context;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::debug;

use crate::config::{ConfigNum, Configuration, Gid, ShardId};
use crate::error::ControllerError;
use crate::rpc::{ServiceError, ShardControllerClient};
use crate::session::ClientId;
use crate::wire::{ControllerOp, ControllerReply};
use paxos_log::net::codec::connect_framed;

/// How a clerk retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClerkOptions {
    /// This clerk's id in the controller's session table; unique per clerk
    /// instance (see the [module docs](self)).
    pub client_id: ClientId,
    /// How long one operation may take in all, retries included.
    pub deadline: Duration,
    /// How long one attempt (one RPC) may take. Longer than the
    /// controller's own request timeout, so that a slow change is answered
    /// by the replica (perhaps as indeterminate) rather than cut off here.
    /// It is also the deadline each request carries, so it must not exceed
    /// the replicas' [`NetLimits::max_request_deadline`] (60 s by default).
    pub rpc_timeout: Duration,
    /// First wait between attempts.
    pub backoff_min: Duration,
    /// Longest wait between attempts.
    pub backoff_max: Duration,
    /// Frame size and connect timeout (the client-side fields of
    /// [`NetLimits`]).
    pub net: NetLimits,
    /// Test hook: the replies of this many successful change attempts are
    /// thrown away as if the network had lost them, so the clerk retries a
    /// change that was in fact applied. 0 in real use.
    pub lose_replies_for_testing: u32,
}

impl ClerkOptions {
    /// Defaults (10 s deadline, 6 s per attempt, 10-500 ms backoff) for
    /// the clerk `client_id`.
    pub fn new(client_id: ClientId) -> ClerkOptions {
        ClerkOptions {
            client_id,
            deadline: Duration::from_secs(10),
            rpc_timeout: Duration::from_secs(6),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(500),
            net: NetLimits::default(),
            lose_replies_for_testing: 0,
        }
    }
}

/// A client id for a new clerk, distinct from every other id this process
/// makes and, with overwhelming likelihood, from every other process's:
/// the wall clock in nanoseconds, the process id and a per-process counter,
/// mixed. For binaries; tests should pass fixed ids for reproducibility.
pub fn unique_client_id() -> ClientId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
        });
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = u64::from(std::process::id());
    mix(mix(nanos ^ pid.rotate_left(32)) ^ count)
}

/// splitmix64's finalizer: spreads every input bit over the output.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Why a clerk operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClerkError {
    /// The controller refused the request; nothing changed.
    #[error("the controller refused the request: {0}")]
    Refused(ControllerError),
    /// The change may or may not have taken effect (and may still).
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
    /// No replica took the request before the deadline; it certainly did
    /// not take effect.
    #[error("no controller replica took the request in time: {0}")]
    Unavailable(String),
    /// The clerk was given no address.
    #[error("the clerk knows no controller address")]
    NoAddresses,
    /// A replica refused the connection's access handshake: the clerk's
    /// cluster id or secret is not the cluster's. Nothing took effect.
    #[error("access denied: {0}")]
    Denied(String),
}

impl ClerkError {
    /// Whether the operation may have taken effect.
    pub fn is_indeterminate(&self) -> bool {
        matches!(self, ClerkError::Indeterminate(_))
    }
}

/// Opens a [`ShardControllerClient`] to one replica's client address: for
/// tools and tests that call the service directly. The connection's
/// dispatch task runs on the current runtime until the client is dropped.
pub async fn connect(addr: SocketAddr, net: &NetLimits) -> io::Result<ShardControllerClient> {
    let (client, _) = open(addr, net).await?;
    Ok(client)
}

/// Connects and spawns the dispatch task; its abort handle tells whether the
/// connection is still alive.
async fn open(
    addr: SocketAddr,
    net: &NetLimits,
) -> io::Result<(ShardControllerClient, AbortHandle)> {
    let transport = connect_framed(addr, net).await?;
    let NewClient { client, dispatch } =
        ShardControllerClient::new(client::Config::default(), transport);
    let task = tokio::spawn(async move {
        if let Err(cause) = dispatch.await {
            debug!(%addr, %cause, "controller connection ended");
        }
    });
    Ok((client, task.abort_handle()))
}

/// One open connection.
#[derive(Debug)]
struct Connection {
    client: ShardControllerClient,
    dispatch: AbortHandle,
}

/// What one attempt came to.
enum Attempt<T> {
    /// A definite answer: return it.
    Done(Result<T, ClerkError>),
    /// Try again.
    Retry {
        /// The request certainly did not take effect.
        definite: bool,
        /// Where to go next.
        next: Next,
        /// What went wrong, for the final error.
        cause: String,
    },
    /// The replica refused the connection's access handshake (another
    /// cluster, a wrong secret): no replica will answer otherwise, so stop
    /// at once. Nothing was sent on this connection.
    Denied(String),
}

/// Where the next attempt goes.
enum Next {
    /// The same replica, after a backoff.
    Same,
    /// The hinted leader, at once.
    Hint(SocketAddr),
    /// The next address in turn, after a backoff.
    Other,
}

/// Finds the controller's leader and runs admin operations against it,
/// retrying safely. See the [module docs](self).
#[derive(Debug)]
pub struct ControllerClerk {
    addrs: Vec<SocketAddr>,
    options: ClerkOptions,
    next_seq: u64,
    /// The replica that answered last, tried first.
    leader: Option<SocketAddr>,
    /// Round-robin position in `addrs`.
    next_index: usize,
    connections: BTreeMap<SocketAddr, Connection>,
    replies_to_lose: u32,
}

impl Drop for ControllerClerk {
    fn drop(&mut self) {
        for connection in self.connections.values() {
            connection.dispatch.abort();
        }
    }
}

impl ControllerClerk {
    /// A clerk for the replicas at `client_addrs` (their client
    /// addresses). Connects lazily, on the first operation.
    pub fn new(client_addrs: Vec<SocketAddr>, options: ClerkOptions) -> ControllerClerk {
        let replies_to_lose = options.lose_replies_for_testing;
        ControllerClerk {
            addrs: client_addrs,
            options,
            next_seq: 1,
            leader: None,
            next_index: 0,
            connections: BTreeMap::new(),
            replies_to_lose,
        }
    }

    /// This clerk's id in the controller's session table.
    pub fn client_id(&self) -> ClientId {
        self.options.client_id
    }

    /// The replica that answered last, if any.
    pub fn leader(&self) -> Option<SocketAddr> {
        self.leader
    }

    /// Adds `groups` (gid -> replica addresses); returns the configuration
    /// created.
    pub async fn join(
        &mut self,
        groups: BTreeMap<Gid, Vec<String>>,
    ) -> Result<ConfigNum, ClerkError> {
        changed(self.change(ControllerOp::Join { groups }).await?)
    }

    /// Removes the groups `gids`; returns the configuration created.
    pub async fn leave(&mut self, gids: Vec<Gid>) -> Result<ConfigNum, ClerkError> {
        changed(self.change(ControllerOp::Leave { gids }).await?)
    }

    /// Gives shard `shard` to group `gid`; returns the configuration
    /// created.
    pub async fn move_shard(&mut self, shard: ShardId, gid: Gid) -> Result<ConfigNum, ClerkError> {
        changed(self.change(ControllerOp::Move { shard, gid }).await?)
    }

    /// Replaces group `gid`'s replica addresses; returns the configuration
    /// created.
    pub async fn set_addresses(
        &mut self,
        gid: Gid,
        addresses: Vec<String>,
    ) -> Result<ConfigNum, ClerkError> {
        changed(
            self.change(ControllerOp::SetAddresses { gid, addresses })
                .await?,
        )
    }

    /// Splits the shard containing `key` at `key`; returns the
    /// configuration created and the new shard's id.
    pub async fn split(&mut self, key: Vec<u8>) -> Result<(ConfigNum, ShardId), ClerkError> {
        match self.change(ControllerOp::Split { key }).await? {
            ControllerReply::Split { num, shard } => Ok((num, shard)),
            other => Err(unexpected(&other)),
        }
    }

    /// Applies `op` at most once. Returns [`ControllerReply::Changed`] or
    /// [`ControllerReply::Split`]; a refusal is [`ClerkError::Refused`].
    pub async fn change(&mut self, op: ControllerOp) -> Result<ControllerReply, ClerkError> {
        let client_id = self.options.client_id;
        let seq = self.next_seq;
        self.next_seq += 1;
        let call = |client: ShardControllerClient, ctx| {
            let op = op.clone();
            async move { client.change(ctx, client_id, seq, op).await }
        };
        match self.run(Kind::Change, call).await? {
            Definite {
                answer: ControllerReply::Error(error),
                may_have_applied,
            } => Err(refusal(error, may_have_applied)),
            Definite { answer, .. } => Ok(answer),
        }
    }

    /// Configuration `num`, or the latest if `num` is `None` or beyond it.
    /// Linearizable: it reflects every change acknowledged before the call.
    pub async fn query(&mut self, num: Option<ConfigNum>) -> Result<Configuration, ClerkError> {
        let call = |client: ShardControllerClient, ctx| async move { client.query(ctx, num).await };
        Ok(self.run(Kind::Query, call).await?.answer)
    }

    /// Runs `call` until a definite answer or the deadline. Every attempt
    /// makes the same call, so a change keeps its `(client_id, seq)`.
    async fn run<T, F, Fut>(&mut self, kind: Kind, call: F) -> Result<Definite<T>, ClerkError>
    where
        F: Fn(ShardControllerClient, context::Context) -> Fut,
        Fut: Future<Output = Result<Result<T, ServiceError>, RpcError>>,
    {
        if self.addrs.is_empty() {
            return Err(ClerkError::NoAddresses);
        }
        let deadline = Instant::now() + self.options.deadline;
        let mut backoff = self.options.backoff_min;
        let mut may_have_applied = false;
        let mut hops = 0;
        let mut last_cause = String::from("no attempt finished before the deadline");
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let target = self.target();
            let attempt = self
                .attempt(kind, &call, target, remaining.min(self.options.rpc_timeout))
                .await;
            let (definite, next, cause) = match attempt {
                Attempt::Done(result) => {
                    return result.map(|answer| Definite {
                        answer,
                        may_have_applied,
                    });
                }
                Attempt::Retry {
                    definite,
                    next,
                    cause,
                } => (definite, next, cause),
                Attempt::Denied(cause) if kind == Kind::Change && may_have_applied => {
                    return Err(ClerkError::Indeterminate(format!(
                        "an earlier attempt may have taken effect; then: {cause}"
                    )));
                }
                Attempt::Denied(cause) => return Err(ClerkError::Denied(cause)),
            };
            debug!(%target, %cause, definite, "controller attempt failed; retrying");
            may_have_applied |= !definite;
            last_cause = cause;
            let follow_at_once = match next {
                Next::Same => {
                    self.leader = Some(target);
                    false
                }
                Next::Hint(leader) => {
                    self.leader = Some(leader);
                    // Follow hints at once, but not around a loop of stale
                    // hints forever.
                    hops += 1;
                    hops <= self.addrs.len()
                }
                Next::Other => {
                    self.leader = None;
                    if let Some(position) = self.addrs.iter().position(|addr| *addr == target) {
                        self.next_index = position + 1;
                    }
                    false
                }
            };
            if !follow_at_once {
                hops = 0;
                let remaining = deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(backoff.min(remaining)).await;
                backoff = backoff
                    .saturating_mul(2)
                    .min(self.options.backoff_max)
                    .max(self.options.backoff_min);
            }
        }
        Err(if kind == Kind::Change && may_have_applied {
            ClerkError::Indeterminate(format!(
                "no definite answer within {} ms; the change may have taken effect: {last_cause}",
                self.options.deadline.as_millis()
            ))
        } else {
            ClerkError::Unavailable(format!(
                "no answer within {} ms: {last_cause}",
                self.options.deadline.as_millis()
            ))
        })
    }

    /// The replica to try next: the last one seen leading, else the next
    /// in turn.
    fn target(&mut self) -> SocketAddr {
        if let Some(leader) = self.leader {
            return leader;
        }
        self.next_index %= self.addrs.len();
        self.addrs[self.next_index]
    }

    /// A live connection to `addr`, reusing the cached one unless its
    /// dispatch task ended (the server closed it).
    async fn connection(&mut self, addr: SocketAddr) -> io::Result<ShardControllerClient> {
        if let Some(connection) = self.connections.get(&addr) {
            if !connection.dispatch.is_finished() {
                return Ok(connection.client.clone());
            }
            self.forget(addr);
        }
        let (client, dispatch) = open(addr, &self.options.net).await?;
        self.connections.insert(
            addr,
            Connection {
                client: client.clone(),
                dispatch,
            },
        );
        Ok(client)
    }

    fn forget(&mut self, addr: SocketAddr) {
        if let Some(connection) = self.connections.remove(&addr) {
            connection.dispatch.abort();
        }
    }

    /// One RPC to `target`, classified.
    async fn attempt<T, F, Fut>(
        &mut self,
        kind: Kind,
        call: &F,
        target: SocketAddr,
        timeout: Duration,
    ) -> Attempt<T>
    where
        F: Fn(ShardControllerClient, context::Context) -> Fut,
        Fut: Future<Output = Result<Result<T, ServiceError>, RpcError>>,
    {
        let client = match tokio::time::timeout(timeout, self.connection(target)).await {
            Ok(Ok(client)) => client,
            Ok(Err(cause)) if cause.kind() == io::ErrorKind::PermissionDenied => {
                return Attempt::Denied(cause.to_string());
            }
            // Nothing was sent.
            Ok(Err(cause)) => return Attempt::retry(true, Next::Other, target, cause),
            Err(_) => return Attempt::retry(true, Next::Other, target, "connect timed out"),
        };
        let mut ctx = context::current();
        ctx.deadline = std::time::Instant::now()
            .checked_add(timeout)
            .unwrap_or(ctx.deadline);
        let answer = match tokio::time::timeout(timeout, call(client, ctx)).await {
            Ok(Ok(answer)) => answer,
            // The request may have reached the server (a reply lost with
            // the connection, or a slow leader): the outcome is unknown.
            // The connection may be broken; open a new one next time.
            Ok(Err(cause)) => {
                self.forget(target);
                return Attempt::retry(false, Next::Other, target, rpc_cause(&cause));
            }
            Err(_) => {
                self.forget(target);
                let cause = format!("no answer within {} ms", timeout.as_millis());
                return Attempt::retry(false, Next::Other, target, cause);
            }
        };
        match answer {
            Ok(answer) => {
                if kind == Kind::Change && self.replies_to_lose > 0 {
                    self.replies_to_lose -= 1;
                    return Attempt::retry(false, Next::Same, target, "reply lost (test hook)");
                }
                self.leader = Some(target);
                Attempt::Done(Ok(answer))
            }
            Err(ServiceError::NotLeader { leader_hint }) => {
                let next = leader_hint
                    .as_deref()
                    .and_then(|hint| hint.parse::<SocketAddr>().ok())
                    .filter(|hint| *hint != target)
                    .map_or(Next::Other, Next::Hint);
                Attempt::retry(true, next, target, "not the leader")
            }
            Err(ServiceError::Busy) => Attempt::retry(true, Next::Same, target, "busy"),
            Err(ServiceError::Stopped) => Attempt::retry(true, Next::Other, target, "stopped"),
            Err(ServiceError::Indeterminate(cause)) => {
                Attempt::retry(false, Next::Same, target, cause)
            }
            Err(ServiceError::Controller(error)) => Attempt::Done(Err(ClerkError::Refused(error))),
        }
    }
}

/// What a call run by [`ControllerClerk::run`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A change: may take effect, so an unknown outcome is indeterminate.
    Change,
    /// A query: changes nothing, so it is retried freely.
    Query,
}

/// The controller's definite answer to a call.
#[derive(Debug)]
struct Definite<T> {
    answer: T,
    /// Whether an earlier attempt may have reached a leader (the answer
    /// may then be to a copy applied before).
    may_have_applied: bool,
}

impl<T> Attempt<T> {
    fn retry(definite: bool, next: Next, target: SocketAddr, cause: impl ToString) -> Self {
        Attempt::Retry {
            definite,
            next,
            cause: format!("{target}: {}", cause.to_string()),
        }
    }
}

fn rpc_cause(error: &RpcError) -> String {
    match error {
        RpcError::Server(server) => format!("{error}: {}", server.detail),
        other => other.to_string(),
    }
}

/// The error for a change the controller answered with a refusal.
fn refusal(error: ControllerError, may_have_applied: bool) -> ClerkError {
    match error {
        // A later seq of this client was applied first. This copy was not
        // applied, but an earlier copy of the same request may have been
        // (its reply is gone): unknown.
        ControllerError::StaleSeq { .. } if may_have_applied => ClerkError::Indeterminate(format!(
            "the controller no longer remembers this request: {error}"
        )),
        error => ClerkError::Refused(error),
    }
}

/// The configuration a Join, Leave or Move created.
fn changed(reply: ControllerReply) -> Result<ConfigNum, ClerkError> {
    match reply {
        ControllerReply::Changed { num } => Ok(num),
        other => Err(unexpected(&other)),
    }
}

/// A change was applied but answered with the wrong kind of reply (a
/// version mismatch): it took effect, but the caller cannot tell how.
fn unexpected(reply: &ControllerReply) -> ClerkError {
    ClerkError::Indeterminate(format!("unexpected reply {reply:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_client_ids_differ_within_a_process() {
        let ids: std::collections::BTreeSet<ClientId> =
            (0..1000).map(|_| unique_client_id()).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[tokio::test]
    async fn a_clerk_without_addresses_says_so() {
        let mut clerk = ControllerClerk::new(Vec::new(), ClerkOptions::new(1));
        assert_eq!(clerk.query(None).await, Err(ClerkError::NoAddresses));
        assert_eq!(clerk.leave(vec![1]).await, Err(ClerkError::NoAddresses));
    }
}
