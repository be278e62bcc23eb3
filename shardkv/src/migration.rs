//! The leader's background work: following configurations, pulling gained
//! shards, and collecting garbage ([`run`]).
//!
//! Every replica runs the task; it acts only while its replica leads, and
//! everything it does goes through the group's log, where the state machine
//! decides (so a deposed leader's late proposals, or two leaders' duplicate
//! ones, are refused as stale rather than applied twice):
//!
//! 1. **Next configuration.** When no shard is arriving, ask the controller
//!    for configuration `num + 1` and propose installing it.
//! 2. **Pull.** For each shard arriving, ask any replica of the previous
//!    owner for the records after the last one installed, in chunks of at
//!    most `migration_chunk_bytes`, and propose each chunk. The previous
//!    owner's copy is frozen, so any of its replicas that installed the
//!    configuration answers the same. Shards are pulled concurrently and
//!    independently: one whose owner is unreachable does not hold up the
//!    others, and each serves as soon as its own last chunk is installed.
//! 3. **Garbage collection.** For each shard installed whose previous owner
//!    still holds a copy, ask that owner to delete it (it does so through its
//!    own log), then propose that it is done.
//!
//! Each step resumes from the replicated state after a crash of either side
//! or a change of leader: the cursor of a pull and the pending deletions are
//! part of the group state.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use controller::{unique_client_id, ConfigNum, ControllerClerk, ShardId};
use paxos_log::{NetLimits, NodeHandle, Role};
use tarpc::client::RpcError;
use tarpc::context;
use tokio::sync::{watch, Mutex};
use tracing::{debug, info, warn};

use crate::group::{GcNotice, ShardState};
use crate::limits::Limits;
use crate::rpc::{context_within, open, parse_addrs, Connections, ServiceError, ShardKvClient};
use crate::state_machine::GroupView;
use crate::wire::{decode, encode, Command, Cursor, Outcome};

/// How the leader follows configurations and moves shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationOptions {
    /// How often the leader looks for work.
    pub poll_interval: Duration,
    /// How long one call to another group (or to the controller) may take.
    pub rpc_timeout: Duration,
}

impl Default for MigrationOptions {
    fn default() -> Self {
        MigrationOptions {
            poll_interval: Duration::from_millis(50),
            rpc_timeout: Duration::from_secs(2),
        }
    }
}

/// What the task shares between its concurrent pulls.
struct Context {
    node: NodeHandle,
    view: watch::Receiver<GroupView>,
    limits: Limits,
    options: MigrationOptions,
    net: NetLimits,
    connections: Mutex<Connections>,
}

/// Runs the leader's background work until aborted.
pub(crate) async fn run(
    node: NodeHandle,
    view: watch::Receiver<GroupView>,
    controllers: Vec<SocketAddr>,
    limits: Limits,
    options: MigrationOptions,
    net: NetLimits,
) {
    let mut clerk_options = controller::ClerkOptions::new(unique_client_id());
    clerk_options.deadline = options.rpc_timeout;
    clerk_options.rpc_timeout = options.rpc_timeout;
    clerk_options.net = net.clone();
    let mut controller = ControllerClerk::new(controllers, clerk_options);
    // Dropping the set (when this task is aborted) aborts every piece.
    let mut work = tokio::task::JoinSet::new();
    let mut running: BTreeMap<ShardId, tokio::task::AbortHandle> = BTreeMap::new();
    let mut ticks = tokio::time::interval(options.poll_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let cx = Arc::new(Context {
        node,
        view,
        limits,
        options,
        net,
        connections: Mutex::new(Connections::default()),
    });
    loop {
        ticks.tick().await;
        if cx.node.metrics().role != Some(Role::Leader) {
            continue;
        }
        let group = {
            let view = cx.view.borrow();
            if view.failed.is_some() {
                continue;
            }
            Arc::clone(&view.group)
        };
        if !group.pulling() {
            match controller.query(Some(group.num + 1)).await {
                Ok(config) if config.num == group.num + 1 => {
                    let num = config.num;
                    match propose(&cx, Command::InstallConfig { config }).await {
                        Some(true) => debug!(num, "proposed and installed configuration"),
                        other => debug!(num, ?other, "configuration not installed this time"),
                    }
                    continue;
                }
                Ok(_) => {}
                Err(err) => debug!(%err, "asking the controller for the next configuration"),
            }
        }
        // Reap finished pieces of work; start one for every shard that
        // needs work and has none running. Pieces run on their own, so a
        // previous owner that does not answer holds up neither the other
        // shards nor the next configuration.
        while let Some(finished) = work.try_join_next() {
            if let Err(cause) = finished {
                warn!(%cause, "a migration step failed");
            }
        }
        running.retain(|_, handle: &mut tokio::task::AbortHandle| !handle.is_finished());
        for (&shard, entry) in &group.shards {
            if running.contains_key(&shard) {
                continue;
            }
            let handle = match &entry.state {
                ShardState::Pulling { addrs, after, .. } => {
                    let cx = Arc::clone(&cx);
                    let (addrs, after, num) = (parse_addrs(addrs), after.clone(), entry.num);
                    work.spawn(async move {
                        pull(&cx, shard, num, addrs, after).await;
                    })
                }
                ShardState::Serving { gc: Some(notice) } => {
                    let cx = Arc::clone(&cx);
                    let (notice, num) = (notice.clone(), entry.num);
                    work.spawn(async move {
                        collect(&cx, shard, num, &notice).await;
                    })
                }
                _ => continue,
            };
            running.insert(shard, handle);
        }
        for (&(shard, num), notice) in &group.gc_pending {
            if running.contains_key(&shard) {
                continue;
            }
            let cx = Arc::clone(&cx);
            let notice = notice.clone();
            let handle = work.spawn(async move {
                collect(&cx, shard, num, &notice).await;
            });
            running.insert(shard, handle);
        }
    }
}

/// Pulls `shard` (gained in `num`) chunk by chunk from `addrs` while this
/// replica leads and the chunks are accepted.
async fn pull(
    cx: &Context,
    shard: ShardId,
    num: ConfigNum,
    addrs: Vec<SocketAddr>,
    mut after: Option<Cursor>,
) {
    let max_bytes = u64::try_from(cx.limits.migration_chunk_bytes).unwrap_or(u64::MAX);
    loop {
        let request_after = after.clone();
        let reply = call_any(cx, &addrs, |client, ctx| {
            let after = request_after.clone();
            async move { client.pull_shard(ctx, shard, num, after, max_bytes).await }
        })
        .await;
        let Some(reply) = reply else {
            return;
        };
        let next = reply
            .records
            .last()
            .map(|record| record.cursor())
            .or(after.clone());
        let done = reply.done;
        let records = reply.records.len();
        let command = Command::InstallChunk {
            shard,
            num,
            after: after.clone(),
            records: reply.records,
            done,
        };
        if propose(cx, command).await != Some(true) {
            return;
        }
        debug!(shard, num, records, done, "installed a migration chunk");
        if done {
            info!(shard, num, "pulled shard");
            return;
        }
        after = next;
    }
}

/// Tells the previous owner of `shard` to delete its copy, then records
/// that it did.
async fn collect(cx: &Context, shard: ShardId, num: ConfigNum, notice: &GcNotice) {
    let addrs = parse_addrs(&notice.addrs);
    let deleted = call_any(cx, &addrs, |client, ctx| async move {
        client.delete_shard(ctx, shard, num).await
    })
    .await;
    if deleted.is_some() && propose(cx, Command::GcDone { shard, num }).await == Some(true) {
        info!(
            shard,
            num,
            from = notice.from,
            "previous owner deleted its copy"
        );
    }
}

/// Proposes a bookkeeping command; whether the state machine applied it
/// (`None`: no answer).
async fn propose(cx: &Context, command: Command) -> Option<bool> {
    match cx.node.propose(encode(&command)).await {
        Ok(reply) => match decode::<Outcome<bool>>(&reply) {
            Ok(Outcome::Ok(applied)) => Some(applied),
            other => {
                warn!(?other, "unexpected answer to a group command");
                None
            }
        },
        Err(err) => {
            debug!(%err, "proposing a group command");
            None
        }
    }
}

/// Calls the replicas at `addrs` in turn (following a leader hint at
/// once) until one answers `Ok`.
async fn call_any<T, F, Fut>(cx: &Context, addrs: &[SocketAddr], call: F) -> Option<T>
where
    F: Fn(ShardKvClient, context::Context) -> Fut,
    Fut: Future<Output = Result<Result<T, ServiceError>, RpcError>>,
{
    let mut queue: Vec<SocketAddr> = addrs.to_vec();
    let mut tried = 0;
    while let Some(addr) = queue.first().copied() {
        queue.remove(0);
        tried += 1;
        if tried > addrs.len() * 2 {
            break;
        }
        let timeout = cx.options.rpc_timeout;
        // Connect without holding the cache: a slow connect to one owner
        // must not hold up pulls from the others.
        let cached = cx.connections.lock().await.cached(addr);
        let client = match cached {
            Some(client) => client,
            None => match tokio::time::timeout(timeout, open(addr, &cx.net)).await {
                Ok(Ok((client, dispatch))) => {
                    cx.connections
                        .lock()
                        .await
                        .insert(addr, client.clone(), dispatch);
                    client
                }
                _ => continue,
            },
        };
        match tokio::time::timeout(timeout, call(client, context_within(timeout))).await {
            Ok(Ok(Ok(answer))) => return Some(answer),
            Ok(Ok(Err(ServiceError::NotLeader {
                leader_hint: Some(hint),
            }))) => {
                if let Ok(hint) = hint.parse::<SocketAddr>() {
                    queue.insert(0, hint);
                }
            }
            Ok(Ok(Err(err))) => debug!(%addr, %err, "migration call refused"),
            Ok(Err(_)) | Err(_) => cx.connections.lock().await.forget(addr),
        }
    }
    None
}
