//! The client library: [`Clerk`].
//!
//! ```text
//!   get / scan                  ──► read(op) ───────────────┐
//!   put / append / delete /     ──► write(client_id, seq) ──┤
//!   cas / put_hash                                          ▼
//!     key ─► cached configuration ─► shard ─► group ─► its leader (cached per group)
//!              ▲ WrongGroup{num}: ask the controller again        │ NotLeader hint / next replica
//!              └──────────── backoff (bounded, exponential) ◄─────┘ until the deadline
//! ```
//!
//! A clerk caches the controller's latest configuration and routes each key
//! to the group serving its shard, remembering each group's leader. A
//! `WrongGroup` answer means its configuration is stale (ask the controller
//! again) or the group is still receiving the shard (wait and retry).
//!
//! # At most once, and indeterminate outcomes
//!
//! Every write carries the clerk's `client_id` and a fresh `seq`, reused by
//! every retry, so each shard's session table applies it at most once (see
//! [`crate::session`]). A clerk runs one operation at a time (`&mut self`),
//! which keeps its seqs in order. When the deadline passes, a write that
//! may have reached a leader (a lost reply, a timeout, a leader that lost
//! its leadership with the write pending) is reported
//! [`ClerkError::Indeterminate`]: it may still take effect. One that was
//! certainly never applied is [`ClerkError::Unavailable`]. Reads change
//! nothing and are never indeterminate.
//!
//! # Scans
//!
//! A scan reads shard by shard, in key order, each piece a linearizable
//! read of one shard; the whole scan is not one atomic snapshot of several
//! shards (see `docs/shardkv.md`).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use controller::{ConfigNum, Configuration, ControllerClerk, Gid, ShardId};
use paxos_log::NetLimits;
use tarpc::client::RpcError;
use tarpc::context;
use tokio::time::Instant;
use tracing::debug;

use crate::error::KvError;
use crate::export::{ExportBegin, ExportChunk};
use crate::rpc::{context_within, parse_addrs, Connections, ServiceError, ShardKvClient};
use crate::wire::{ClientId, ReadOp, ReadReply, WriteOp, WriteReply};

/// How a clerk retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClerkOptions {
    /// This clerk's id in the session tables; unique per clerk instance and
    /// never reused (binaries use [`controller::unique_client_id`]).
    pub client_id: ClientId,
    /// How long one operation may take in all, retries included. Must stay
    /// below the groups' `request_max_age_ms`.
    pub deadline: Duration,
    /// How long one attempt may take; longer than the servers' own request
    /// timeout, so a slow write is answered (perhaps as indeterminate)
    /// rather than cut off.
    pub rpc_timeout: Duration,
    /// First wait between attempts.
    pub backoff_min: Duration,
    /// Longest wait between attempts.
    pub backoff_max: Duration,
    /// Frame size and connect timeout of connections.
    pub net: NetLimits,
}

impl ClerkOptions {
    /// Default retry settings for client `client_id`.
    pub fn new(client_id: ClientId) -> ClerkOptions {
        ClerkOptions {
            client_id,
            deadline: Duration::from_secs(30),
            rpc_timeout: Duration::from_secs(6),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(500),
            net: NetLimits::default(),
        }
    }
}

/// Why an operation did not get a definite answer, or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClerkError {
    /// The operation may or may not have taken effect.
    #[error("outcome unknown (the operation may have taken effect): {0}")]
    Indeterminate(String),
    /// The operation certainly did not take effect: no group answered in
    /// time.
    #[error("unavailable (the operation did not take effect): {0}")]
    Unavailable(String),
    /// The group refused the operation by its rules; it did not take effect.
    #[error(transparent)]
    Refused(KvError),
    /// A replica or controller refused the connection's access handshake:
    /// the clerk's cluster id or secret is not the cluster's. It did not
    /// take effect.
    #[error("access denied: {0}")]
    Denied(String),
}

impl ClerkError {
    /// Whether the operation may have taken effect.
    pub fn is_indeterminate(&self) -> bool {
        matches!(self, ClerkError::Indeterminate(_))
    }
}

/// One page of [`Clerk::scan_page`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanPage {
    /// The items, in key order.
    pub items: Vec<(Vec<u8>, Vec<u8>)>,
    /// Where to continue when the page stopped at its byte budget (`None`:
    /// the range or the item limit was reached).
    pub next: Option<Vec<u8>>,
}

/// Moves `found` into `items` while `limit` items and `bytes_max` bytes of
/// keys and values allow (the first item of a page goes in even if larger).
/// Returns the key of the first item left out for lack of bytes, where the
/// caller continues; items beyond `limit` are dropped (the limit is what
/// the caller asked for).
fn take_within(
    found: Vec<(Vec<u8>, Vec<u8>)>,
    items: &mut Vec<(Vec<u8>, Vec<u8>)>,
    bytes_so_far: &mut usize,
    limit: usize,
    bytes_max: usize,
) -> Option<Vec<u8>> {
    for (key, value) in found {
        if items.len() >= limit {
            return None;
        }
        let size = key.len().saturating_add(value.len());
        if !items.is_empty() && bytes_so_far.saturating_add(size) > bytes_max {
            return Some(key);
        }
        *bytes_so_far = bytes_so_far.saturating_add(size);
        items.push((key, value));
    }
    None
}

/// The outcome of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasResult {
    /// Whether the new value was set.
    pub swapped: bool,
    /// The value found when it was not (`None`: absent).
    pub current: Option<Vec<u8>>,
}

/// What one attempt came to.
enum Attempt<T> {
    Done(Result<T, ClerkError>),
    Retry {
        /// The request certainly did not take effect.
        definite: bool,
        next: Next,
        cause: String,
    },
    /// The replica refused the connection's access handshake (another
    /// cluster, a wrong secret): stop at once. Nothing was sent on this
    /// connection.
    Denied(String),
}

/// Why [`Clerk::route`] found no replica to try.
enum Unroutable {
    /// Not now (no configuration yet, no group for the shard): retry.
    Later(String),
    /// The controller refused the clerk's access key: stop.
    Denied(String),
}

/// Where the next attempt goes.
enum Next {
    /// The same replica, after a backoff.
    Same,
    /// The hinted leader, at once.
    Hint(SocketAddr),
    /// The group's next replica, after a backoff.
    Other,
    /// Ask the controller for a newer configuration than `num`.
    Refresh(ConfigNum),
}

/// Routes operations to replica groups and retries them safely. See the
/// [module docs](self).
#[derive(Debug)]
pub struct Clerk {
    controller: ControllerClerk,
    options: ClerkOptions,
    config: Option<Configuration>,
    next_seq: u64,
    /// The replica of each group that answered last.
    leaders: BTreeMap<Gid, SocketAddr>,
    /// Round-robin position per group.
    next_index: BTreeMap<Gid, usize>,
    connections: Connections,
}

impl Clerk {
    /// A clerk that finds groups through the controller replicas at
    /// `controllers` (their client addresses). Connects lazily.
    pub fn new(controllers: Vec<SocketAddr>, options: ClerkOptions) -> Clerk {
        let mut controller_options = controller::ClerkOptions::new(options.client_id);
        controller_options.deadline = options.deadline;
        controller_options.net = options.net.clone();
        Clerk {
            controller: ControllerClerk::new(controllers, controller_options),
            options,
            config: None,
            next_seq: 1,
            leaders: BTreeMap::new(),
            next_index: BTreeMap::new(),
            connections: Connections::default(),
        }
    }

    /// This clerk's id.
    pub fn client_id(&self) -> ClientId {
        self.options.client_id
    }

    /// The configuration the clerk routes by, if it has one.
    pub fn config(&self) -> Option<&Configuration> {
        self.config.as_ref()
    }

    /// The value of `key` (`None`: absent).
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ClerkError> {
        match self.read(ReadOp::Get { key: key.to_vec() }).await? {
            ReadReply::Value(value) => Ok(value),
            other => Err(unexpected(&other)),
        }
    }

    /// Sets `key` to `value`.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), ClerkError> {
        self.write_done(WriteOp::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        })
        .await
    }

    /// Appends `value` to the value of `key`.
    pub async fn append(&mut self, key: &[u8], value: &[u8]) -> Result<(), ClerkError> {
        self.write_done(WriteOp::Append {
            key: key.to_vec(),
            value: value.to_vec(),
        })
        .await
    }

    /// Removes `key`.
    pub async fn delete(&mut self, key: &[u8]) -> Result<(), ClerkError> {
        self.write_done(WriteOp::Delete { key: key.to_vec() }).await
    }

    /// Sets `key` to `new` if its value is `expected` (`None`: absent).
    pub async fn cas(
        &mut self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<CasResult, ClerkError> {
        let op = WriteOp::Cas {
            key: key.to_vec(),
            expected: expected.map(<[u8]>::to_vec),
            new: new.to_vec(),
        };
        match self.write(op).await? {
            WriteReply::Cas { swapped, current } => Ok(CasResult { swapped, current }),
            other => Err(unexpected_write(&other)),
        }
    }

    /// Sets `key` to [`put_hash`](crate::hash::put_hash)`(previous, value)`;
    /// returns the previous value.
    pub async fn put_hash(
        &mut self,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<Vec<u8>>, ClerkError> {
        let op = WriteOp::PutHash {
            key: key.to_vec(),
            value: value.to_vec(),
        };
        match self.write(op).await? {
            WriteReply::Previous(previous) => Ok(previous),
            other => Err(unexpected_write(&other)),
        }
    }

    /// Up to `limit` items with keys in `[start, end)` (`end: None`: to the
    /// end of the key space), in key order, across shards.
    pub async fn scan(
        &mut self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ClerkError> {
        Ok(self.scan_page(start, end, limit, usize::MAX).await?.items)
    }

    /// Like [`scan`](Self::scan), but stops once the items hold
    /// `bytes_max` bytes of keys and values (the first item goes out even
    /// if it is larger); the page then says where to continue.
    pub async fn scan_page(
        &mut self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        bytes_max: usize,
    ) -> Result<ScanPage, ClerkError> {
        let mut page = ScanPage {
            items: Vec::new(),
            next: None,
        };
        if end.is_some_and(|end| end <= start) {
            return Ok(page);
        }
        let mut bytes_so_far = 0usize;
        let mut position = start.to_vec();
        while page.items.len() < limit {
            let want = u32::try_from(limit - page.items.len()).unwrap_or(u32::MAX);
            let op = ReadOp::Scan {
                start: position.clone(),
                end: end.map(<[u8]>::to_vec),
                limit: want,
            };
            match self.read(op).await? {
                ReadReply::Items {
                    items: found,
                    resume,
                } => {
                    page.next =
                        take_within(found, &mut page.items, &mut bytes_so_far, limit, bytes_max);
                    if page.next.is_some() {
                        break;
                    }
                    match resume {
                        Some(next) if end.is_none_or(|end| next.as_slice() < end) => {
                            position = next;
                        }
                        _ => break,
                    }
                }
                other => return Err(unexpected(&other)),
            }
        }
        Ok(page)
    }

    async fn write_done(&mut self, op: WriteOp) -> Result<(), ClerkError> {
        match self.write(op).await? {
            WriteReply::Done => Ok(()),
            other => Err(unexpected_write(&other)),
        }
    }

    /// Applies `op` at most once.
    pub async fn write(&mut self, op: WriteOp) -> Result<WriteReply, ClerkError> {
        let client_id = self.options.client_id;
        let seq = self.next_seq;
        self.next_seq += 1;
        let key = op.key().to_vec();
        let call = |client: ShardKvClient, ctx| {
            let op = op.clone();
            async move { client.write(ctx, client_id, seq, op).await }
        };
        self.run(true, &key, call).await
    }

    /// Answers `op` linearizably.
    pub async fn read(&mut self, op: ReadOp) -> Result<ReadReply, ClerkError> {
        let key = match &op {
            ReadOp::Get { key } => key.clone(),
            ReadOp::Scan { start, .. } => start.clone(),
        };
        let call = |client: ShardKvClient, ctx| {
            let op = op.clone();
            async move { client.read(ctx, op).await }
        };
        self.run(false, &key, call).await
    }

    /// Runs `call` against the group serving `key` until a definite answer
    /// or the deadline.
    async fn run<T, F, Fut>(&mut self, write: bool, key: &[u8], call: F) -> Result<T, ClerkError>
    where
        F: Fn(ShardKvClient, context::Context) -> Fut,
        Fut: Future<Output = Result<Result<T, ServiceError>, RpcError>>,
    {
        let deadline = Instant::now() + self.options.deadline;
        let mut backoff = self.options.backoff_min;
        let mut may_have_applied = false;
        let mut hint: Option<SocketAddr> = None;
        // Replicas of the current group that failed one after another.
        let mut unreachable_in_group = 0usize;
        let mut last_cause = String::from("no attempt finished before the deadline");
        while Instant::now() < deadline {
            let (gid, target) = match self.route(key, hint.take()).await {
                Ok(route) => route,
                Err(Unroutable::Denied(cause)) if write && may_have_applied => {
                    return Err(ClerkError::Indeterminate(format!(
                        "an earlier attempt may have taken effect; then: {cause}"
                    )));
                }
                Err(Unroutable::Denied(cause)) => return Err(ClerkError::Denied(cause)),
                Err(Unroutable::Later(cause)) => {
                    last_cause = cause;
                    self.pause(&mut backoff, deadline).await;
                    continue;
                }
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let timeout = remaining.min(self.options.rpc_timeout);
            let (definite, next, cause) = match self.attempt(&call, target, timeout).await {
                Attempt::Done(result) => {
                    if result.is_ok() {
                        self.leaders.insert(gid, target);
                    }
                    return result.map_err(|err| refusal(err, may_have_applied));
                }
                Attempt::Retry {
                    definite,
                    next,
                    cause,
                } => (definite, next, cause),
                Attempt::Denied(cause) if write && may_have_applied => {
                    return Err(ClerkError::Indeterminate(format!(
                        "an earlier attempt may have taken effect; then: {cause}"
                    )));
                }
                Attempt::Denied(cause) => return Err(ClerkError::Denied(cause)),
            };
            debug!(%target, gid, %cause, definite, "attempt failed; retrying");
            may_have_applied |= write && !definite;
            last_cause = cause;
            if !matches!(next, Next::Other) {
                unreachable_in_group = 0;
            }
            match next {
                Next::Same => {
                    self.leaders.insert(gid, target);
                    self.pause(&mut backoff, deadline).await;
                }
                Next::Hint(leader) => {
                    self.leaders.insert(gid, leader);
                    hint = Some(leader);
                }
                Next::Other => {
                    self.leaders.remove(&gid);
                    *self.next_index.entry(gid).or_insert(0) += 1;
                    unreachable_in_group += 1;
                    let replicas = self
                        .config
                        .as_ref()
                        .and_then(|config| config.groups.get(&gid));
                    if unreachable_in_group >= replicas.map_or(1, Vec::len) {
                        // No replica of the group answers: the group may
                        // have left and shut down since the configuration
                        // was cached. Ask the controller again.
                        self.config = None;
                        unreachable_in_group = 0;
                    }
                    self.pause(&mut backoff, deadline).await;
                }
                Next::Refresh(num) => {
                    let known = self.config.as_ref().map_or(0, |config| config.num);
                    if num >= known {
                        self.config = None;
                    }
                    self.pause(&mut backoff, deadline).await;
                }
            }
        }
        Err(if may_have_applied {
            ClerkError::Indeterminate(format!(
                "no definite answer within {} ms; the write may have taken effect: {last_cause}",
                self.options.deadline.as_millis()
            ))
        } else {
            ClerkError::Unavailable(format!(
                "no answer within {} ms: {last_cause}",
                self.options.deadline.as_millis()
            ))
        })
    }

    async fn pause(&self, backoff: &mut Duration, deadline: Instant) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep((*backoff).min(remaining)).await;
        *backoff = backoff
            .saturating_mul(2)
            .min(self.options.backoff_max)
            .max(self.options.backoff_min);
    }

    /// The group serving `key` and the replica to try: `hint` if given,
    /// else the group's last leader, else its next replica in turn.
    async fn route(
        &mut self,
        key: &[u8],
        hint: Option<SocketAddr>,
    ) -> Result<(Gid, SocketAddr), Unroutable> {
        if self.config.is_none() {
            let config = self.controller.query(None).await.map_err(|err| match err {
                controller::ClerkError::Denied(cause) => Unroutable::Denied(cause),
                err => Unroutable::Later(format!(
                    "asking the controller for the configuration: {err}"
                )),
            })?;
            self.config = Some(config);
        }
        let config = self
            .config
            .as_ref()
            .ok_or_else(|| Unroutable::Later("no configuration".into()))?;
        let shard = config.shard_for_key(key).ok_or_else(|| {
            Unroutable::Later(format!(
                "configuration {} has no shard for the key",
                config.num
            ))
        })?;
        let Some(gid) = shard.gid else {
            let cause = format!(
                "no group serves shard {} in configuration {}",
                shard.id, config.num
            );
            // Ask again next time: a group may join meanwhile.
            self.config = None;
            return Err(Unroutable::Later(cause));
        };
        let addrs = parse_addrs(config.groups.get(&gid).map_or(&[][..], Vec::as_slice));
        if addrs.is_empty() {
            return Err(Unroutable::Later(format!(
                "group {gid} has no usable address"
            )));
        }
        if let Some(hint) = hint {
            return Ok((gid, hint));
        }
        if let Some(leader) = self.leaders.get(&gid) {
            if addrs.contains(leader) {
                return Ok((gid, *leader));
            }
        }
        let index = self.next_index.entry(gid).or_insert(0);
        *index %= addrs.len();
        Ok((gid, addrs[*index]))
    }

    /// One RPC to `target`, classified.
    async fn attempt<T, F, Fut>(
        &mut self,
        call: &F,
        target: SocketAddr,
        timeout: Duration,
    ) -> Attempt<T>
    where
        F: Fn(ShardKvClient, context::Context) -> Fut,
        Fut: Future<Output = Result<Result<T, ServiceError>, RpcError>>,
    {
        let client =
            match tokio::time::timeout(timeout, self.connections.get(target, &self.options.net))
                .await
            {
                Ok(Ok(client)) => client,
                Ok(Err(cause)) if cause.kind() == std::io::ErrorKind::PermissionDenied => {
                    return Attempt::Denied(cause.to_string());
                }
                Ok(Err(cause)) => return retry(true, Next::Other, target, cause),
                Err(_) => return retry(true, Next::Other, target, "connect timed out"),
            };
        let answer =
            match tokio::time::timeout(timeout, call(client, context_within(timeout))).await {
                Ok(Ok(answer)) => answer,
                // The request may have reached the server.
                Ok(Err(cause)) => {
                    self.connections.forget(target);
                    return retry(false, Next::Other, target, cause);
                }
                Err(_) => {
                    self.connections.forget(target);
                    let cause = format!("no answer within {} ms", timeout.as_millis());
                    return retry(false, Next::Other, target, cause);
                }
            };
        match answer {
            Ok(answer) => Attempt::Done(Ok(answer)),
            Err(ServiceError::NotLeader { leader_hint }) => {
                let next = leader_hint
                    .as_deref()
                    .and_then(|hint| hint.parse::<SocketAddr>().ok())
                    .filter(|hint| *hint != target)
                    .map_or(Next::Other, Next::Hint);
                retry(true, next, target, "not the leader")
            }
            Err(ServiceError::Busy) => retry(true, Next::Same, target, "busy"),
            Err(ServiceError::Stopped(cause)) => retry(true, Next::Other, target, cause),
            Err(ServiceError::NotReady(cause)) => retry(true, Next::Same, target, cause),
            Err(ServiceError::Indeterminate(cause)) => retry(false, Next::Same, target, cause),
            Err(ServiceError::Refused(KvError::WrongGroup { num })) => retry(
                true,
                Next::Refresh(num),
                target,
                format!("wrong group at configuration {num}"),
            ),
            Err(ServiceError::Refused(error)) => Attempt::Done(Err(ClerkError::Refused(error))),
        }
    }
}

fn retry<T>(definite: bool, next: Next, target: SocketAddr, cause: impl ToString) -> Attempt<T> {
    Attempt::Retry {
        definite,
        next,
        cause: format!("{target}: {}", cause.to_string()),
    }
}

/// A refusal after an attempt that may have been applied: a late copy
/// (stale, or its session forgotten) says nothing about the earlier one.
fn refusal(error: ClerkError, may_have_applied: bool) -> ClerkError {
    match error {
        ClerkError::Refused(
            error @ (KvError::StaleRequest { .. } | KvError::SessionExpired { .. }),
        ) if may_have_applied => ClerkError::Indeterminate(format!(
            "the group no longer remembers this request: {error}"
        )),
        other => other,
    }
}

fn unexpected(reply: &ReadReply) -> ClerkError {
    ClerkError::Unavailable(format!("unexpected answer {reply:?}"))
}

/// A write was applied but answered with the wrong kind of reply (a version
/// mismatch): it took effect, but the caller cannot tell how.
fn unexpected_write(reply: &WriteReply) -> ClerkError {
    ClerkError::Indeterminate(format!("unexpected reply {reply:?}"))
}

/// Shard images, for `kvctl snapshot export` (see [`crate::export`]).
impl Clerk {
    /// Takes a point-in-time image of `shard` at the leader of the group
    /// serving it, routed by `start` (the shard's first key in the caller's
    /// configuration). Follows leader hints and configuration changes
    /// until the deadline, like every operation.
    pub async fn export_begin(
        &mut self,
        shard: ShardId,
        start: &[u8],
    ) -> Result<ExportBegin, ClerkError> {
        let call =
            |client: ShardKvClient, ctx| async move { client.export_begin(ctx, shard).await };
        self.run(false, start, call).await
    }

    /// Items of `image` held by `replica` after key `after`, at most about
    /// `max_bytes`. Retries the same replica until the deadline while it is
    /// unreachable; an image it no longer holds is an error (begin again).
    pub async fn export_chunk(
        &mut self,
        replica: SocketAddr,
        image: u64,
        after: Option<&[u8]>,
        max_bytes: u64,
    ) -> Result<ExportChunk, ClerkError> {
        let after = after.map(<[u8]>::to_vec);
        let deadline = Instant::now() + self.options.deadline;
        let mut backoff = self.options.backoff_min;
        let mut last_cause = String::from("no attempt finished before the deadline");
        while Instant::now() < deadline {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let timeout = remaining.min(self.options.rpc_timeout);
            let client = match tokio::time::timeout(
                timeout,
                self.connections.get(replica, &self.options.net),
            )
            .await
            {
                Ok(Ok(client)) => client,
                Ok(Err(cause)) => {
                    last_cause = format!("{replica}: {cause}");
                    self.pause(&mut backoff, deadline).await;
                    continue;
                }
                Err(_) => {
                    last_cause = format!("{replica}: connect timed out");
                    self.pause(&mut backoff, deadline).await;
                    continue;
                }
            };
            let call =
                client.export_chunk(context_within(timeout), image, after.clone(), max_bytes);
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok(Ok(chunk))) => return Ok(chunk),
                Ok(Ok(Err(ServiceError::Busy))) => last_cause = format!("{replica}: busy"),
                Ok(Ok(Err(err))) => {
                    return Err(ClerkError::Unavailable(format!("{replica}: {err}")));
                }
                Ok(Err(cause)) => {
                    self.connections.forget(replica);
                    last_cause = format!("{replica}: {cause}");
                }
                Err(_) => {
                    self.connections.forget(replica);
                    last_cause = format!("{replica}: no answer within {} ms", timeout.as_millis());
                }
            }
            self.pause(&mut backoff, deadline).await;
        }
        Err(ClerkError::Unavailable(format!(
            "no answer within {} ms: {last_cause}",
            self.options.deadline.as_millis()
        )))
    }

    /// Tells `replica` to drop `image` now rather than when it idles out;
    /// one attempt, failures ignored (the replica drops it anyway).
    pub async fn export_end(&mut self, replica: SocketAddr, image: u64) {
        let timeout = self.options.rpc_timeout.min(self.options.deadline);
        if let Ok(Ok(client)) =
            tokio::time::timeout(timeout, self.connections.get(replica, &self.options.net)).await
        {
            let _ =
                tokio::time::timeout(timeout, client.export_end(context_within(timeout), image))
                    .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_stops_at_its_byte_budget_and_says_where_to_go_on() {
        let item = |key: &str, value_len: usize| (key.as_bytes().to_vec(), vec![b'v'; value_len]);
        let (mut items, mut bytes) = (Vec::new(), 0);
        let found = vec![item("a", 99), item("b", 99), item("c", 99)];
        assert_eq!(
            take_within(found, &mut items, &mut bytes, 10, 250),
            Some(b"c".to_vec())
        );
        assert_eq!(items.len(), 2);
        assert_eq!(bytes, 200);
        // An item larger than the whole budget still goes out alone.
        let (mut items, mut bytes) = (Vec::new(), 0);
        let found = vec![item("big", 1000), item("next", 1)];
        assert_eq!(
            take_within(found, &mut items, &mut bytes, 10, 250),
            Some(b"next".to_vec())
        );
        assert_eq!(items.len(), 1);
        // The item limit cuts without a continuation key.
        let (mut items, mut bytes) = (Vec::new(), 0);
        let found = vec![item("a", 1), item("b", 1), item("c", 1)];
        assert_eq!(take_within(found, &mut items, &mut bytes, 2, 1 << 20), None);
        assert_eq!(items.len(), 2);
    }
}
