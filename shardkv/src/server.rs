//! One replica of a replica group: [`ShardKvServer`].
//!
//! ```text
//!          clerks, other groups, tools
//!                  │ tarpc ShardKv (client address)
//!                  ▼
//!   ClientService: write ──Command::Write──► NodeHandle::propose
//!                  read  ──ReadOp─────────► NodeHandle::read (read-index)
//!                  pull_shard ─────────────► local frozen copy (any replica)
//!                  export_begin/_chunk/_end ► read-index, then a copy of a shard
//!                                             held in memory (crate::export)
//!                  delete_shard ─Command::DeleteShard─► propose
//!                  │
//!   paxos-log Node (own thread) ── WalAcceptorStore  data_dir/wal
//!        │                      ── SnapshotStore     data_dir/snap
//!        │  ◄── PeerListener (peer address) ◄── the group's other replicas
//!        └────► TarpcTransport
//!        │
//!   SharedMachine ── ShardMachine ── SledStore        data_dir/sm
//!        ▲
//!   migration task (acts while this replica leads): configurations,
//!   pulls, garbage collection (see crate::migration)
//! ```
//!
//! Like the controller's replicas, each replica has a *peer* address (the
//! group's `paxos-log` traffic) and a *client* address (everything else);
//! the client address is what the controller's configuration lists for the
//! group. Writes are answered once chosen and applied; reads are read-index
//! reads. A replica that does not lead answers `NotLeader` with the client
//! address of the one it believes leads.
//!
//! Durability: the acceptor WAL makes every acknowledged write survive a
//! crash; the sled store is flushed at every snapshot (and at every change
//! of the group state), and after a restart the log is replayed from the
//! last flushed slot (see [`crate::state_machine`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use controller::{ConfigNum, ControllerListeners, Gid, MemberAddrs, ShardId};
use paxos_log::net::service::{ConnectionStats, TarpcServer};
use paxos_log::net::ServerHandle;
use paxos_log::{
    Config, DriverOptions, NetLimits, Node, NodeError, NodeHandle, NodeId, NodeMetrics, Role,
    SharedStateMachine, StartError, TarpcTransport, Transport, WalAcceptorStore,
};
use storage::sled_store::SledStore;
use storage::snapshot::SnapshotStore;
use storage::wal::{WalOptions, WalStats};
use storage::{RealFs, StorageError};
use tarpc::context;
use tarpc::server::InFlightRequest;
use tokio::sync::watch;
use tracing::error;

use crate::error::KvError;
use crate::export::{ExportBegin, ExportChunk, ExportContext, ExportImages};
use crate::faults::{Dice, Faults, LossyTransport};
use crate::group::{GroupState, ShardState};
use crate::limits::Limits;
use crate::migration::{self, MigrationOptions};
use crate::rpc::{
    PeerAddrs, PullReply, ReplicaStatus, ServiceError, ShardKv, ShardKvRequest, ShardKvResponse,
    ShardReport,
};
use crate::state_machine::{GroupView, ShardMachine};
use crate::stats::{ReplicaProbe, RequestKind, RequestOutcome, RequestStats};
use crate::wire::{
    decode, encode, ClientId, Command, Cursor, Outcome, ReadOp, ReadReply, WriteOp, WriteReply,
};

/// Everything one replica needs to start.
#[derive(Debug, Clone)]
pub struct ShardKvServerConfig {
    /// This replica; must be a key of `members`.
    pub node_id: NodeId,
    /// The group.
    pub gid: Gid,
    /// Every replica of the group and its addresses (the same map on every
    /// replica). The client addresses are the ones the group joins the
    /// controller with.
    pub members: BTreeMap<NodeId, MemberAddrs>,
    /// The replica's own directory: `wal/`, `snap/` and `sm/` (sled).
    pub data_dir: PathBuf,
    /// Client addresses of the controller's replicas.
    pub controllers: Vec<SocketAddr>,
    /// Size and session limits.
    pub limits: Limits,
    /// How the leader follows configurations and moves shards.
    pub migration: MigrationOptions,
    /// Timing and bounds of the `paxos-log` driver.
    pub driver: DriverOptions,
    /// Frame size, connection and timeout limits of both listeners and of
    /// every outgoing connection.
    pub net: NetLimits,
    /// Options of the acceptor WAL.
    pub wal: WalOptions,
    /// Faults to inject (tests only; none by default).
    pub faults: Faults,
    /// The group's members at its creation, the replicated log's genesis
    /// configuration (the same on every replica, forever); `None`: the keys
    /// of `members`. Set once replicas were added or removed.
    pub genesis: Option<Vec<NodeId>>,
}

impl ShardKvServerConfig {
    /// A configuration with default limits and options.
    pub fn new(
        node_id: NodeId,
        gid: Gid,
        members: BTreeMap<NodeId, MemberAddrs>,
        data_dir: PathBuf,
        controllers: Vec<SocketAddr>,
    ) -> ShardKvServerConfig {
        ShardKvServerConfig {
            node_id,
            gid,
            members,
            data_dir,
            controllers,
            limits: Limits::default(),
            migration: MigrationOptions::default(),
            driver: DriverOptions::default(),
            net: NetLimits::default(),
            wal: WalOptions::default(),
            faults: Faults::default(),
            genesis: None,
        }
    }
}

/// Why a replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration cannot work.
    #[error("invalid shardkv server configuration: {0}")]
    Config(String),
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] controller::ServerError),
    /// The WAL, snapshots or state machine store could not be opened.
    #[error("opening the replica's storage: {0}")]
    Storage(#[from] StorageError),
    /// The `paxos-log` node could not start.
    #[error("starting the replicated log: {0}")]
    Start(#[from] StartError),
    /// The blocking start-up task failed (a panic: a bug).
    #[error("start-up task failed: {0}")]
    Task(String),
}

/// The state machine, shared between the driver thread (apply, read,
/// snapshot) and the server (status, pulls, the migration task's view).
pub(crate) type SharedMachine = SharedStateMachine<ShardMachine>;

/// A running replica. [`ShardKvServer::shutdown`] stops it and frees its
/// ports.
#[derive(Debug)]
pub struct ShardKvServer {
    node_id: NodeId,
    gid: Gid,
    client_addr: SocketAddr,
    node: Option<Node<SharedMachine>>,
    handle: NodeHandle,
    machine: SharedMachine,
    view: watch::Receiver<GroupView>,
    peer_server: Option<ServerHandle>,
    client_server: Option<TarpcServer>,
    migration: Option<tokio::task::JoinHandle<()>>,
    transport: Option<Arc<TarpcTransport>>,
    requests: Arc<RequestStats>,
    wal_stats: Arc<WalStats>,
}

impl ShardKvServer {
    /// Binds this replica's addresses from `config.members` and starts it.
    /// Must be called within a tokio runtime.
    pub async fn start(config: ShardKvServerConfig) -> Result<ShardKvServer, ServerError> {
        let addrs = *config.members.get(&config.node_id).ok_or_else(|| {
            ServerError::Config(format!("members do not include {}", config.node_id))
        })?;
        let listeners = ControllerListeners::bind(addrs, &config.net).await?;
        ShardKvServer::start_with_listeners(config, listeners).await
    }

    /// Starts the replica on listeners bound beforehand (their addresses
    /// should be this replica's entry of `config.members`): opens its
    /// storage, recovers, starts the `paxos-log` node, serves both
    /// listeners and starts the migration task.
    pub async fn start_with_listeners(
        config: ShardKvServerConfig,
        listeners: ControllerListeners,
    ) -> Result<ShardKvServer, ServerError> {
        let ShardKvServerConfig {
            node_id,
            gid,
            members,
            data_dir,
            controllers,
            limits,
            migration,
            driver,
            net,
            wal,
            faults,
            genesis,
        } = config;
        if !members.contains_key(&node_id) {
            return Err(ServerError::Config(format!(
                "members do not include {node_id}"
            )));
        }
        if gid == 0 {
            return Err(ServerError::Config("gid 0 is reserved".to_string()));
        }
        limits.validate().map_err(ServerError::Config)?;
        let addrs = listeners.addrs();
        let peers: BTreeMap<NodeId, SocketAddr> = members
            .iter()
            .filter(|(id, _)| **id != node_id)
            .map(|(id, addrs)| (*id, addrs.peer))
            .collect();
        let transport = Arc::new(TarpcTransport::new(
            &tokio::runtime::Handle::current(),
            peers,
            gid,
            net.clone(),
        ));
        let log_transport: Arc<dyn Transport> = if faults.lose_peer_message_per_mille > 0 {
            Arc::new(LossyTransport {
                inner: Arc::clone(&transport),
                dice: Dice::new(faults.seed ^ 0x5eed),
                per_mille: faults.lose_peer_message_per_mille,
            })
        } else {
            Arc::clone(&transport) as Arc<dyn Transport>
        };
        let genesis = genesis.unwrap_or_else(|| members.keys().copied().collect());
        let log_config = Config::new(node_id, genesis);
        // Opening the WAL replays it, opening sled recovers it, restoring a
        // snapshot imports it: blocking work kept off the runtime's workers.
        let (node, machine, wal_stats) = {
            let transport = log_transport;
            let limits = limits.clone();
            tokio::task::spawn_blocking(
                move || -> Result<(Node<SharedMachine>, SharedMachine, Arc<WalStats>), ServerError> {
                    let fs = RealFs::shared();
                    let store = Arc::new(SledStore::open(&data_dir.join("sm"))?);
                    let machine = SharedMachine::new(ShardMachine::open(store, gid, limits)?);
                    let wal = WalAcceptorStore::open(fs.clone(), &data_dir.join("wal"), wal)?;
                    let wal_stats = wal.stats();
                    let snapshots = SnapshotStore::open(fs, &data_dir.join("snap"))?;
                    let node = Node::start_with_snapshots(
                        log_config,
                        wal,
                        machine.clone(),
                        transport,
                        driver,
                        snapshots,
                    )?;
                    Ok((node, machine, wal_stats))
                },
            )
            .await
            .map_err(|cause| ServerError::Task(cause.to_string()))??
        };
        let handle = node.handle();
        let view = machine.lock().subscribe();
        let (peer_listener, client_listener) = listeners.into_parts();
        let peer_server = peer_listener.start(handle.clone(), gid);
        let requests = Arc::new(RequestStats::default());
        let service = ClientService {
            exports: ExportImages::new(),
            requests: Arc::clone(&requests),
            node: handle.clone(),
            machine: machine.clone(),
            view: view.clone(),
            gid,
            limits: Arc::new(limits.clone()),
            faults,
            dice: Arc::new(Dice::new(faults.seed)),
            client_addrs: Arc::new(ClientAddrs(RwLock::new(
                members
                    .iter()
                    .map(|(id, addrs)| (*id, addrs.client))
                    .collect(),
            ))),
            transport: Arc::clone(&transport),
        };
        let client_server = TarpcServer::spawn(
            "shardkv client",
            client_listener,
            move |request: InFlightRequest<ShardKvRequest, ShardKvResponse>| {
                request.execute(service.clone().serve())
            },
            net.clone(),
        );
        let migration = tokio::spawn(migration::run(
            handle.clone(),
            view.clone(),
            controllers,
            limits,
            migration,
            net,
        ));
        Ok(ShardKvServer {
            node_id,
            gid,
            client_addr: addrs.client,
            node: Some(node),
            handle,
            machine,
            view,
            peer_server: Some(peer_server),
            client_server: Some(client_server),
            migration: Some(migration),
            transport: Some(transport),
            requests,
            wal_stats,
        })
    }

    /// This replica's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The group.
    pub fn gid(&self) -> Gid {
        self.gid
    }

    /// The address clerks call.
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The `paxos-log` node's latest metrics.
    pub fn metrics(&self) -> NodeMetrics {
        self.handle.metrics()
    }

    /// A handle to the `paxos-log` node.
    pub fn node_handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// The group state as this replica has applied it (may lag).
    pub fn group_state(&self) -> GroupState {
        GroupState::clone(&self.view.borrow().group)
    }

    /// What this replica knows, as the `status` RPC answers it.
    pub fn status(&self) -> ReplicaStatus {
        status(&self.machine, &self.handle, self.gid)
    }

    /// The `ShardKv` requests this replica served so far.
    pub fn request_stats(&self) -> Arc<RequestStats> {
        Arc::clone(&self.requests)
    }

    /// The acceptor WAL's write-path counters (fsyncs and their time).
    pub fn wal_stats(&self) -> Arc<WalStats> {
        Arc::clone(&self.wal_stats)
    }

    /// A cheap view of this replica for status pages and metrics (see
    /// [`crate::stats`]).
    pub fn probe(&self) -> ReplicaProbe {
        ReplicaProbe {
            machine: self.machine.clone(),
            node: self.handle.clone(),
            view: self.view.clone(),
            gid: self.gid,
            requests: Arc::clone(&self.requests),
            wal: Arc::clone(&self.wal_stats),
        }
    }

    /// What the client listener has done with connections so far.
    pub fn client_stats(&self) -> ConnectionStats {
        self.client_server
            .as_ref()
            .map(TarpcServer::stats)
            .unwrap_or_default()
    }

    /// Stops the replica: the migration task, both listeners, the
    /// `paxos-log` node (waiting for its thread, so everything it
    /// acknowledged is on disk), the peer transport, and flushes the store.
    pub async fn shutdown(mut self) {
        if let Some(migration) = self.migration.take() {
            migration.abort();
            let _ = migration.await;
        }
        if let Some(client_server) = self.client_server.take() {
            client_server.shutdown().await;
        }
        if let Some(peer_server) = self.peer_server.take() {
            peer_server.shutdown().await;
        }
        if let Some(node) = self.node.take() {
            let machine = self.machine.clone();
            let stopped = tokio::task::spawn_blocking(move || {
                node.stop();
                // Not needed for durability (the log has everything), but
                // it shortens the replay at the next start.
                if let Err(err) = machine.lock().store().flush() {
                    error!(%err, "flushing the state machine store at shutdown");
                }
            })
            .await;
            if let Err(cause) = stopped {
                error!(%cause, "stopping the replica's log node failed");
            }
        }
        self.transport.take();
    }
}

impl Drop for ShardKvServer {
    fn drop(&mut self) {
        if let Some(migration) = self.migration.take() {
            migration.abort();
        }
    }
}

/// The replica's status from its local state.
pub(crate) fn status(machine: &SharedMachine, node: &NodeHandle, gid: Gid) -> ReplicaStatus {
    let metrics = node.metrics();
    let machine = machine.lock();
    let group = machine.group();
    let shards = group
        .shards
        .iter()
        .map(|(&id, entry)| {
            let meta = machine.shard_meta(id).unwrap_or_default();
            ShardReport {
                id,
                state: match &entry.state {
                    ShardState::Serving { gc: None } => "serving".to_string(),
                    ShardState::Serving { gc: Some(_) } => {
                        "serving (old copy not yet deleted)".to_string()
                    }
                    ShardState::Pulling { records, bytes, .. } => {
                        format!("pulling ({records} records, {bytes} bytes so far)")
                    }
                    ShardState::Frozen { .. } => "frozen".to_string(),
                },
                num: entry.num,
                sessions: meta.sessions,
                sessions_expired: meta.expired,
            }
        })
        .collect();
    ReplicaStatus {
        gid,
        node_id: metrics.id.0,
        role: metrics.role.unwrap_or(Role::Follower).name().to_string(),
        leader_hint: metrics.leader_hint.map(|id| id.0),
        num: group.num,
        applied_slot: metrics.applied_slot,
        shards,
        failed: machine.failed().map(str::to_string),
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before
/// it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The client address of every replica of the group, to turn a leader
/// hint (a node id) into an address a clerk can call. Starts from the
/// configured members; `set_peers` replaces it after a membership change.
#[derive(Debug, Default)]
pub(crate) struct ClientAddrs(RwLock<BTreeMap<NodeId, SocketAddr>>);

impl ClientAddrs {
    /// Replica `id`'s client address, if known.
    pub(crate) fn get(&self, id: NodeId) -> Option<SocketAddr> {
        let addrs = self.0.read().unwrap_or_else(PoisonError::into_inner);
        addrs.get(&id).copied()
    }

    fn replace(&self, addrs: BTreeMap<NodeId, SocketAddr>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = addrs;
    }
}

/// Maps a driver error to what the caller can conclude.
pub(crate) fn service_error(error: NodeError, client_addrs: &ClientAddrs) -> ServiceError {
    match error {
        NodeError::NotLeader { leader_hint } => ServiceError::NotLeader {
            leader_hint: leader_hint
                .and_then(|id| client_addrs.get(id))
                .map(|addr| addr.to_string()),
        },
        NodeError::Busy | NodeError::Reconfiguring | NodeError::InvalidMembership(_) => {
            ServiceError::Busy
        }
        NodeError::Indeterminate(cause) => ServiceError::Indeterminate(cause),
        NodeError::Stopped => ServiceError::Stopped("the replica stopped".to_string()),
    }
}

/// The [`ShardKv`] service of one replica, cloned per request.
#[derive(Debug, Clone)]
struct ClientService {
    node: NodeHandle,
    machine: SharedMachine,
    /// The published group state: what requests are checked against,
    /// without the state machine's lock.
    view: watch::Receiver<GroupView>,
    gid: Gid,
    limits: Arc<Limits>,
    faults: Faults,
    dice: Arc<Dice>,
    client_addrs: Arc<ClientAddrs>,
    /// The peer transport, whose peers `set_peers` changes.
    transport: Arc<TarpcTransport>,
    /// Shard images held for `kvctl snapshot export`.
    exports: Arc<ExportImages>,
    requests: Arc<RequestStats>,
}

impl ClientService {
    /// Runs `handle` unless fault injection loses the request; loses its
    /// reply if told to.
    async fn faulty<T>(
        &self,
        handle: impl std::future::Future<Output = Result<T, ServiceError>>,
    ) -> Result<T, ServiceError> {
        if self.dice.roll(self.faults.lose_request_per_mille) {
            return Err(ServiceError::Indeterminate(
                "request lost (fault injection)".to_string(),
            ));
        }
        let result = handle.await;
        if self.dice.roll(self.faults.lose_reply_per_mille) {
            return Err(ServiceError::Indeterminate(
                "reply lost (fault injection)".to_string(),
            ));
        }
        result
    }

    /// Counts a served request in the replica's [`RequestStats`].
    fn count<T>(&self, kind: RequestKind, result: &Result<T, ServiceError>, started: Instant) {
        self.requests
            .record(kind, RequestOutcome::of(result), started.elapsed());
    }

    fn check_key(&self, key: &[u8]) -> Result<(), ServiceError> {
        if key.len() > self.limits.key_bytes_max {
            return Err(ServiceError::Refused(KvError::KeyTooLarge {
                len_bytes: key.len(),
                max_bytes: self.limits.key_bytes_max,
            }));
        }
        Ok(())
    }

    /// Refuses at once what the local state says this group does not
    /// serve, when this replica leads (a follower sends the client to the
    /// leader instead, whose state is the one that counts).
    fn check_serving(&self, key: &[u8]) -> Result<(), ServiceError> {
        if self.node.metrics().role != Some(Role::Leader) {
            return Ok(());
        }
        let view = self.view.borrow();
        if let Some(reason) = &view.failed {
            return Err(ServiceError::Stopped(reason.clone()));
        }
        let group = &view.group;
        match group.shard_for_key(key) {
            Some(shard) if group.serves(shard.id) => Ok(()),
            _ => Err(ServiceError::Refused(KvError::WrongGroup {
                num: group.num,
            })),
        }
    }
}

impl ShardKv for ClientService {
    async fn write(
        self,
        _: context::Context,
        client_id: ClientId,
        seq: u64,
        op: WriteOp,
    ) -> Result<WriteReply, ServiceError> {
        let (kind, started) = (RequestKind::of_write(&op), Instant::now());
        let this = self.clone();
        let result = self.faulty(this.write_inner(client_id, seq, op)).await;
        self.count(kind, &result, started);
        result
    }

    async fn read(self, _: context::Context, op: ReadOp) -> Result<ReadReply, ServiceError> {
        let (kind, started) = (RequestKind::of_read(&op), Instant::now());
        let this = self.clone();
        let result = self.faulty(this.read_inner(op)).await;
        self.count(kind, &result, started);
        result
    }

    async fn pull_shard(
        self,
        _: context::Context,
        shard: ShardId,
        num: ConfigNum,
        after: Option<Cursor>,
        max_bytes: u64,
    ) -> Result<PullReply, ServiceError> {
        let started = Instant::now();
        let this = self.clone();
        let result = self
            .faulty(this.pull_shard_inner(shard, num, after, max_bytes))
            .await;
        self.count(RequestKind::PullShard, &result, started);
        result
    }

    async fn delete_shard(
        self,
        _: context::Context,
        shard: ShardId,
        num: ConfigNum,
    ) -> Result<(), ServiceError> {
        let started = Instant::now();
        let this = self.clone();
        let result = self.faulty(this.delete_shard_inner(shard, num)).await;
        self.count(RequestKind::DeleteShard, &result, started);
        result
    }

    async fn status(self, _: context::Context) -> Result<ReplicaStatus, ServiceError> {
        Ok(status(&self.machine, &self.node, self.gid))
    }

    async fn export_begin(
        self,
        _: context::Context,
        shard: ShardId,
    ) -> Result<ExportBegin, ServiceError> {
        let context = ExportContext {
            images: &self.exports,
            node: &self.node,
            machine: &self.machine,
            client_addrs: &self.client_addrs,
        };
        crate::export::begin(context, shard).await
    }

    async fn export_chunk(
        self,
        _: context::Context,
        image: u64,
        after: Option<Vec<u8>>,
        max_bytes: u64,
    ) -> Result<ExportChunk, ServiceError> {
        let max_bytes = usize::try_from(max_bytes)
            .unwrap_or(usize::MAX)
            .min(self.limits.migration_chunk_bytes);
        crate::export::chunk(&self.exports, image, after.as_deref(), max_bytes)
    }

    async fn export_end(self, _: context::Context, image: u64) -> Result<(), ServiceError> {
        crate::export::end(&self.exports, image);
        Ok(())
    }

    async fn set_peers(
        self,
        _: context::Context,
        peers: Vec<PeerAddrs>,
    ) -> Result<(), ServiceError> {
        let refuse = |reason: String| ServiceError::Refused(KvError::Malformed { reason });
        if peers.len() > MAX_PEERS {
            return Err(refuse(format!(
                "{} peers: at most {MAX_PEERS}",
                peers.len()
            )));
        }
        let mut peer_addrs = BTreeMap::new();
        let mut client_addrs = BTreeMap::new();
        for entry in &peers {
            let parse = |text: &str| {
                text.parse::<SocketAddr>().map_err(|e| {
                    refuse(format!("replica {}: address {text:?}: {e}", entry.node_id))
                })
            };
            let id = NodeId(entry.node_id);
            peer_addrs.insert(id, parse(&entry.peer_addr)?);
            client_addrs.insert(id, parse(&entry.client_addr)?);
        }
        let me = self.node.id();
        for (&id, &addr) in &peer_addrs {
            if id != me {
                self.transport.set_peer(id, addr);
            }
        }
        let known: Vec<NodeId> = self.transport.peers();
        for id in known {
            if !peer_addrs.contains_key(&id) {
                self.transport.remove_peer(id);
            }
        }
        self.client_addrs.replace(client_addrs);
        Ok(())
    }

    async fn reconfigure(
        self,
        _: context::Context,
        members: Vec<u64>,
    ) -> Result<u64, ServiceError> {
        let members: Vec<NodeId> = members.into_iter().map(NodeId).collect();
        match self.node.reconfigure(members).await {
            Ok(slot) => Ok(slot),
            // The caller must hear why, not a generic "busy".
            Err(NodeError::InvalidMembership(reason)) => {
                Err(ServiceError::Refused(KvError::Malformed { reason }))
            }
            Err(error) => Err(service_error(error, &self.client_addrs)),
        }
    }
}

/// Most replicas `set_peers` accepts (a group has 3 or 5; this bounds the
/// request, not the design).
const MAX_PEERS: usize = 64;

impl ClientService {
    async fn write_inner(
        self,
        client_id: ClientId,
        seq: u64,
        op: WriteOp,
    ) -> Result<WriteReply, ServiceError> {
        self.check_key(op.key())?;
        if op.value_len() > self.limits.value_bytes_max {
            return Err(ServiceError::Refused(KvError::ValueTooLarge {
                len_bytes: u64::try_from(op.value_len()).unwrap_or(u64::MAX),
                max_bytes: u64::try_from(self.limits.value_bytes_max).unwrap_or(u64::MAX),
            }));
        }
        self.check_serving(op.key())?;
        let command = encode(&Command::Write {
            client_id,
            seq,
            stamp_ms: now_ms(),
            limits: self.limits.apply_limits(),
            op,
        });
        let reply = self
            .node
            .propose(command)
            .await
            .map_err(|error| service_error(error, &self.client_addrs))?;
        match decode::<Outcome<WriteReply>>(&reply) {
            Ok(Outcome::Ok(reply)) => Ok(reply),
            Ok(Outcome::Refused(error)) => Err(ServiceError::Refused(error)),
            // The entry is in the log; other replicas applied it.
            Ok(Outcome::Failed(reason)) => Err(ServiceError::Indeterminate(reason)),
            Err(error) => Err(ServiceError::Indeterminate(format!(
                "undecodable reply: {error}"
            ))),
        }
    }

    async fn read_inner(self, op: ReadOp) -> Result<ReadReply, ServiceError> {
        let key = match &op {
            ReadOp::Get { key } => key,
            ReadOp::Scan { start, end, .. } => {
                if let Some(end) = end {
                    self.check_key(end)?;
                }
                start
            }
        };
        self.check_key(key)?;
        self.check_serving(key)?;
        let answer = self
            .node
            .read(encode(&op))
            .await
            .map_err(|error| service_error(error, &self.client_addrs))?;
        match decode::<Outcome<ReadReply>>(&answer) {
            Ok(Outcome::Ok(reply)) => Ok(reply),
            Ok(Outcome::Refused(error)) => Err(ServiceError::Refused(error)),
            Ok(Outcome::Failed(reason)) => Err(ServiceError::Stopped(reason)),
            Err(error) => Err(ServiceError::Stopped(format!(
                "undecodable answer: {error}"
            ))),
        }
    }

    async fn pull_shard_inner(
        self,
        shard: ShardId,
        num: ConfigNum,
        after: Option<Cursor>,
        max_bytes: u64,
    ) -> Result<PullReply, ServiceError> {
        let max_bytes = usize::try_from(max_bytes)
            .unwrap_or(usize::MAX)
            .min(self.limits.migration_chunk_bytes);
        let machine = self.machine.clone();
        // Reading a chunk reads sled: keep it off the runtime's workers.
        tokio::task::spawn_blocking(move || {
            let machine = machine.lock();
            let group = machine.group();
            if group.num < num {
                return Err(ServiceError::NotReady(format!(
                    "this replica is at configuration {}, before {num}",
                    group.num
                )));
            }
            match group.shards.get(&shard) {
                Some(entry)
                    if entry.num == num && matches!(entry.state, ShardState::Frozen { .. }) =>
                {
                    machine
                        .chunk(shard, after.as_ref(), max_bytes)
                        .map(|(records, done)| PullReply { records, done })
                        .map_err(|err| ServiceError::Stopped(err.to_string()))
                }
                _ => Err(ServiceError::NotReady(format!(
                    "shard {shard} lost in configuration {num} is not held here"
                ))),
            }
        })
        .await
        .map_err(|cause| ServiceError::Stopped(format!("pull task failed: {cause}")))?
    }

    async fn delete_shard_inner(self, shard: ShardId, num: ConfigNum) -> Result<(), ServiceError> {
        let at = self.view.borrow().group.num;
        if at < num {
            return Err(ServiceError::NotReady(format!(
                "this replica is at configuration {at}, before {num}"
            )));
        }
        let reply = self
            .node
            .propose(encode(&Command::DeleteShard { shard, num }))
            .await
            .map_err(|error| service_error(error, &self.client_addrs))?;
        match decode::<Outcome<bool>>(&reply) {
            // Deleted now, or gone already: either way, gone.
            Ok(Outcome::Ok(_)) => Ok(()),
            Ok(Outcome::Refused(error)) => Err(ServiceError::Refused(error)),
            Ok(Outcome::Failed(reason)) => Err(ServiceError::Indeterminate(reason)),
            Err(error) => Err(ServiceError::Indeterminate(format!(
                "undecodable reply: {error}"
            ))),
        }
    }
}
