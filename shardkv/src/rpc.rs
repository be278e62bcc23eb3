//! The replica group's wire contract: the [`ShardKv`] tarpc service and the
//! [`ServiceError`] it answers with.
//!
//! Clerks call `write` and `read`; other groups call `pull_shard` and
//! `delete_shard` during a migration; tools call `status`, and
//! `export_begin`, `export_chunk` and `export_end` to copy a shard (see
//! [`crate::export`]). All of it is served on each replica's *client*
//! address, apart from the replicas' own `paxos-log` peer port, with the
//! same bounded framing (see [`paxos_log::net::codec`]).
//!
//! # Errors
//!
//! [`ServiceError`] says, for every failure, whether the request certainly
//! did not take effect (`NotLeader`, `Busy`, `Stopped`, `Refused`,
//! `NotReady`) or may have (`Indeterminate`). The clerk relies on that
//! distinction to report an operation as failed or as indeterminate.

use controller::{ConfigNum, Gid, ShardId};
use serde::{Deserialize, Serialize};

use crate::error::KvError;
use crate::export::{ExportBegin, ExportChunk};
use crate::wire::{ClientId, Cursor, ReadOp, ReadReply, Record, WriteOp, WriteReply};

/// What a replica offers clerks, other groups and tools.
#[tarpc::service]
pub trait ShardKv {
    /// Applies `op` at most once for `(client_id, seq)`; a retry with the
    /// same pair gets the reply of the first application.
    async fn write(client_id: ClientId, seq: u64, op: WriteOp) -> Result<WriteReply, ServiceError>;

    /// Answers `op` linearizably, without writing the log.
    async fn read(op: ReadOp) -> Result<ReadReply, ServiceError>;

    /// Records of `shard`, which this group lost in configuration `num`,
    /// after `after`: at most `max_bytes` of them (at least one). Any
    /// replica that has installed `num` answers; the frozen copy does not
    /// change.
    async fn pull_shard(
        shard: ShardId,
        num: ConfigNum,
        after: Option<Cursor>,
        max_bytes: u64,
    ) -> Result<PullReply, ServiceError>;

    /// Deletes this group's copy of `shard`, lost in configuration `num`,
    /// whose new owner has installed it. Answers once the copy is gone (or
    /// was never there).
    async fn delete_shard(shard: ShardId, num: ConfigNum) -> Result<(), ServiceError>;

    /// What this replica knows, without going through the log (it may lag).
    async fn status() -> Result<ReplicaStatus, ServiceError>;

    /// Takes a linearizable point-in-time image of `shard` (its data only)
    /// and holds it for `export_chunk`. Only the leader of the group
    /// serving the shard answers; see [`crate::export`] for the bounds.
    async fn export_begin(shard: ShardId) -> Result<ExportBegin, ServiceError>;

    /// Items of the image `image` after key `after` (from the first if
    /// `None`), at most `max_bytes` of keys and values (at least one). Asked
    /// of the replica that took the image.
    async fn export_chunk(
        image: u64,
        after: Option<Vec<u8>>,
        max_bytes: u64,
    ) -> Result<ExportChunk, ServiceError>;

    /// Drops the image `image` (gone already is fine).
    async fn export_end(image: u64) -> Result<(), ServiceError>;

    /// From now on, sends the group's log traffic to `peers` (every replica
    /// of the group, this one included or not) and names their client
    /// addresses in leader hints: the step before and after a membership
    /// change (`kvctl admin add-replica|remove-replica`). Not persisted: a
    /// restarted replica reads its peers from its configuration file.
    async fn set_peers(peers: Vec<PeerAddrs>) -> Result<(), ServiceError>;

    /// Proposes `members` (node ids) as the group's replicas; answers, on
    /// the leader, once the change is in force, with the first slot the new
    /// members vote on. Every new member's address must be known here first
    /// (`set_peers`).
    async fn reconfigure(members: Vec<u64>) -> Result<u64, ServiceError>;
}

/// One replica's addresses, for [`ShardKv::set_peers`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddrs {
    /// The replica's id in the group.
    pub node_id: u64,
    /// Where its peer (log) listener is.
    pub peer_addr: String,
    /// Where its client listener is.
    pub client_addr: String,
}

/// A chunk of a frozen shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullReply {
    /// The records, in order.
    pub records: Vec<Record>,
    /// Whether these are the last.
    pub done: bool,
}

/// One shard in a [`ReplicaStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardReport {
    /// The shard.
    pub id: ShardId,
    /// `serving`, `serving (old copy not yet deleted)`, `pulling`, or
    /// `frozen`.
    pub state: String,
    /// The configuration in which it entered that state.
    pub num: ConfigNum,
    /// Client sessions it holds (0 if unknown).
    pub sessions: u64,
    /// Sessions it has forgotten (expired) so far.
    pub sessions_expired: u64,
}

/// What one replica knows, for `kvctl cluster status` and tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The group.
    pub gid: Gid,
    /// This replica.
    pub node_id: u64,
    /// `leader`, `candidate` or `follower`.
    pub role: String,
    /// The replica it believes leads.
    pub leader_hint: Option<u64>,
    /// The configuration it has installed.
    pub num: ConfigNum,
    /// Every slot up to here is applied.
    pub applied_slot: u64,
    /// Every shard it holds.
    pub shards: Vec<ShardReport>,
    /// Why it stopped serving, if its storage failed.
    pub failed: Option<String>,
}

/// Why a call did not get the group's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ServiceError {
    /// This replica does not lead; the request certainly did not take
    /// effect. `leader_hint` is the client address of the replica it
    /// believes leads.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// Client address (`host:port`) of the believed leader.
        leader_hint: Option<String>,
    },
    /// The replica's queue is full; the request certainly did not take
    /// effect. Retry after a backoff.
    #[error("replica busy; retry later")]
    Busy,
    /// The request may or may not have taken effect. Retrying with the same
    /// `(client_id, seq)` is safe.
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
    /// The replica is stopping or its storage failed; the request certainly
    /// did not take effect here.
    #[error("replica stopped: {0}")]
    Stopped(String),
    /// The group refused the request by its rules; nothing changed.
    #[error(transparent)]
    Refused(KvError),
    /// A migration call came before this replica reached the configuration
    /// it names; retry later (or at another replica).
    #[error("not ready: {0}")]
    NotReady(String),
}

/// Cached tarpc connections to replicas' client addresses, shared by the
/// clerk and by the migration task (one multiplexed connection per
/// address, reopened when its dispatch task ended).
#[derive(Debug, Default)]
pub(crate) struct Connections {
    open:
        std::collections::BTreeMap<std::net::SocketAddr, (ShardKvClient, tokio::task::AbortHandle)>,
}

impl Connections {
    /// A live client for `addr`.
    pub(crate) async fn get(
        &mut self,
        addr: std::net::SocketAddr,
        net: &paxos_log::NetLimits,
    ) -> std::io::Result<ShardKvClient> {
        if let Some(client) = self.cached(addr) {
            return Ok(client);
        }
        let (client, dispatch) = open(addr, net).await?;
        self.insert(addr, client.clone(), dispatch);
        Ok(client)
    }

    /// The cached client for `addr`, if its connection is still up.
    pub(crate) fn cached(&mut self, addr: std::net::SocketAddr) -> Option<ShardKvClient> {
        match self.open.get(&addr) {
            Some((client, dispatch)) if !dispatch.is_finished() => Some(client.clone()),
            Some(_) => {
                self.forget(addr);
                None
            }
            None => None,
        }
    }

    /// Caches a client opened with [`open`] (replacing any other).
    pub(crate) fn insert(
        &mut self,
        addr: std::net::SocketAddr,
        client: ShardKvClient,
        dispatch: tokio::task::AbortHandle,
    ) {
        if let Some((_, old)) = self.open.insert(addr, (client, dispatch)) {
            old.abort();
        }
    }

    /// Closes the connection to `addr` (after an error: the next call
    /// reconnects).
    pub(crate) fn forget(&mut self, addr: std::net::SocketAddr) {
        if let Some((_, dispatch)) = self.open.remove(&addr) {
            dispatch.abort();
        }
    }
}

impl Drop for Connections {
    fn drop(&mut self) {
        for (_, dispatch) in self.open.values() {
            dispatch.abort();
        }
    }
}

/// A tarpc context whose deadline is `timeout` from now, for calls through
/// a [`ShardKvClient`].
pub fn context_within(timeout: std::time::Duration) -> tarpc::context::Context {
    let mut ctx = tarpc::context::current();
    ctx.deadline = std::time::Instant::now()
        .checked_add(timeout)
        .unwrap_or(ctx.deadline);
    ctx
}

/// The socket addresses among `addrs` (configuration strings); the ones
/// that do not parse are skipped.
pub(crate) fn parse_addrs(addrs: &[String]) -> Vec<std::net::SocketAddr> {
    addrs
        .iter()
        .filter_map(|addr| match addr.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                tracing::warn!(%addr, "a group address in the configuration is not host:port");
                None
            }
        })
        .collect()
}

/// Opens a client connection to the [`ShardKv`] service at `addr` (for
/// tools and tests; the clerk manages its own). The connection's dispatch
/// task runs on the current runtime until the client is dropped.
pub async fn connect(
    addr: std::net::SocketAddr,
    net: &paxos_log::NetLimits,
) -> std::io::Result<ShardKvClient> {
    Ok(open(addr, net).await?.0)
}

/// Opens a connection: the client, and the handle of its dispatch task.
pub(crate) async fn open(
    addr: std::net::SocketAddr,
    net: &paxos_log::NetLimits,
) -> std::io::Result<(ShardKvClient, tokio::task::AbortHandle)> {
    let transport = paxos_log::net::codec::connect_framed(addr, net).await?;
    let tarpc::client::NewClient { client, dispatch } =
        ShardKvClient::new(tarpc::client::Config::default(), transport);
    let task = tokio::spawn(async move {
        if let Err(cause) = dispatch.await {
            tracing::debug!(%addr, %cause, "shardkv connection ended");
        }
    });
    Ok((client, task.abort_handle()))
}
