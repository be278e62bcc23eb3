//! One replica of the controller service: [`ControllerServer`].
//!
//! ```text
//!             admin clients (ControllerClerk)
//!                        │ tarpc ShardController (client address)
//!                        ▼
//!   ClientService: change ──encode ControllerCommand::Change──► NodeHandle::propose
//!                  query  ──encode ControllerQuery──────────► NodeHandle::read (read-index)
//!                        │
//!   paxos-log Node (own thread) ── WalAcceptorStore   data_dir/wal
//!        │  ▲                    ── SnapshotStore      data_dir/snap
//!        │  └── PeerListener (peer address) ◄── other replicas' TarpcTransport
//!        └────► TarpcTransport ──► other replicas' peer addresses
//!        │
//!   SharedMachine ── ControllerStateMachine (configurations + sessions)
//! ```
//!
//! Each replica has two addresses ([`MemberAddrs`]): the *peer* address the
//! replicas of the controller group use among themselves (`paxos-log`'s
//! `PaxosPeer` service) and the *client* address admin clients call (the
//! [`ShardController`] service). Keeping them apart means an admin client
//! can never inject log messages, and the two services can be limited
//! separately. Both are served with the same [`NetLimits`].
//!
//! A change is answered only once it is chosen and applied, with the reply
//! the state machine produced (and recorded in its session table, which is
//! what makes a retry with the same `(client_id, seq)` safe). A query is a
//! `paxos-log` read-index read: linearizable without writing the log. A
//! replica that does not lead answers [`ServiceError::NotLeader`] with the
//! *client* address of the replica it believes leads, so a clerk can go
//! there directly.
//!
//! Durability comes entirely from `paxos-log`: the acceptor's WAL and the
//! snapshots. The state machine lives in memory and is rebuilt on start from
//! the newest snapshot plus the log above it, so a replica restarted from
//! its `data_dir` (even after SIGKILL) has every configuration it had
//! acknowledged.
//!
//! The state machine is shared with the server behind a mutex
//! (`SharedMachine`) so that tests and status pages can read the local,
//! possibly stale, configuration ([`ControllerServer::local_latest`])
//! without going through the log. The driver thread holds the lock only
//! for one apply, read or snapshot at a time.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use paxos_log::net::service::{ConnectionStats, TarpcServer};
use paxos_log::net::{PeerListener, ServerHandle};
use paxos_log::{
    Config, DriverOptions, NetLimits, Node, NodeError, NodeHandle, NodeId, NodeMetrics, Role,
    SharedStateMachine, StartError, TarpcTransport, WalAcceptorStore,
};
use storage::snapshot::SnapshotStore;
use storage::wal::WalOptions;
use storage::{RealFs, StorageError};
use tarpc::context;
use tarpc::server::InFlightRequest;
use tokio::net::TcpListener;
use tracing::error;

use crate::config::{ConfigNum, Configuration};
use crate::error::ControllerError;
use crate::limits::MAX_REQUEST_BYTES;
use crate::rpc::{
    ControllerStatus, ServiceError, ShardController, ShardControllerRequest,
    ShardControllerResponse,
};
use crate::session::ClientId;
use crate::state_machine::ControllerStateMachine;
use crate::wire::{
    decode, encode, ControllerCommand, ControllerOp, ControllerQuery, ControllerReply,
};

/// The two addresses of one controller replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemberAddrs {
    /// Where the other controller replicas send `paxos-log` messages.
    pub peer: SocketAddr,
    /// Where admin clients call the [`ShardController`] service.
    pub client: SocketAddr,
}

/// Everything one controller replica needs to start.
#[derive(Debug, Clone)]
pub struct ControllerServerConfig {
    /// This replica; must be a key of `members`.
    pub node_id: NodeId,
    /// Every replica of the controller group (this one included) and its
    /// addresses. Every replica must be given the same map.
    pub members: BTreeMap<NodeId, MemberAddrs>,
    /// The replica's own directory: the acceptor WAL goes to `wal/`, the
    /// snapshots to `snap/`. Created if missing.
    pub data_dir: PathBuf,
    /// Shards of configuration 0 (see [`crate::config`]); every replica
    /// must use the same count, forever.
    pub initial_shards: u32,
    /// The controller group's id on the peer transport: peers of another
    /// group (a misconfigured address) are ignored.
    pub group_id: u64,
    /// Timing and bounds of the `paxos-log` driver (tick, request timeout,
    /// snapshot frequency).
    pub driver: DriverOptions,
    /// Frame size, connection and timeout limits of both listeners and of
    /// the peer transport.
    pub net: NetLimits,
    /// Options of the acceptor WAL.
    pub wal: WalOptions,
}

impl ControllerServerConfig {
    /// A configuration with default driver, network and WAL options.
    pub fn new(
        node_id: NodeId,
        members: BTreeMap<NodeId, MemberAddrs>,
        data_dir: PathBuf,
        initial_shards: u32,
        group_id: u64,
    ) -> ControllerServerConfig {
        ControllerServerConfig {
            node_id,
            members,
            data_dir,
            initial_shards,
            group_id,
            driver: DriverOptions::default(),
            net: NetLimits::default(),
            wal: WalOptions::default(),
        }
    }
}

/// Why a controller replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration cannot work.
    #[error("invalid controller server configuration: {0}")]
    Config(String),
    /// `initial_shards` is out of range.
    #[error("invalid initial configuration: {0}")]
    InitialShards(#[from] ControllerError),
    /// A listener could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The WAL or the snapshot directory could not be opened.
    #[error("opening the replica's storage: {0}")]
    Storage(#[from] StorageError),
    /// The `paxos-log` node could not start (bad log configuration, or a
    /// snapshot the state machine refused).
    #[error("starting the replicated log: {0}")]
    Start(#[from] StartError),
    /// The blocking start-up task failed (a panic: a bug).
    #[error("start-up task failed: {0}")]
    Task(String),
}

/// Both listening sockets of a replica, bound but not yet serving.
///
/// Binding first lets a caller learn every replica's addresses (port 0 in
/// tests) before building the members map; connections that arrive before
/// the server starts wait in the kernel's backlog.
#[derive(Debug)]
pub struct ControllerListeners {
    peer: PeerListener,
    client: TcpListener,
    client_addr: SocketAddr,
}

impl ControllerListeners {
    /// Binds `addrs.peer` and `addrs.client` (port 0 picks a free port).
    /// Must be called within a tokio runtime.
    pub async fn bind(addrs: MemberAddrs, net: &NetLimits) -> Result<Self, ServerError> {
        let peer = PeerListener::bind(addrs.peer, net.clone())
            .await
            .map_err(|source| ServerError::Bind {
                addr: addrs.peer,
                source,
            })?;
        let client = TcpListener::bind(addrs.client)
            .await
            .map_err(|source| ServerError::Bind {
                addr: addrs.client,
                source,
            })?;
        let client_addr = client.local_addr().map_err(|source| ServerError::Bind {
            addr: addrs.client,
            source,
        })?;
        Ok(ControllerListeners {
            peer,
            client,
            client_addr,
        })
    }

    /// The two listeners, for a service other than the controller that
    /// runs a replica the same way (a shardkv replica group member).
    pub fn into_parts(self) -> (PeerListener, TcpListener) {
        (self.peer, self.client)
    }

    /// The bound addresses.
    pub fn addrs(&self) -> MemberAddrs {
        MemberAddrs {
            peer: self.peer.local_addr(),
            client: self.client_addr,
        }
    }
}

/// The controller state machine, shared between the driver thread and the
/// server (which reads the local state for status and tests).
type SharedMachine = SharedStateMachine<ControllerStateMachine>;

/// A running controller replica. [`ControllerServer::shutdown`] stops it
/// and frees its ports; dropping it stops it without waiting.
#[derive(Debug)]
pub struct ControllerServer {
    node_id: NodeId,
    client_addr: SocketAddr,
    node: Option<Node<SharedMachine>>,
    handle: NodeHandle,
    machine: SharedMachine,
    peer_server: Option<ServerHandle>,
    /// The shared bounded tarpc server (see [`paxos_log::net::service`])
    /// serving [`ClientService`] on the client address.
    client_server: Option<TarpcServer>,
    transport: Option<Arc<TarpcTransport>>,
}

impl ControllerServer {
    /// Binds this replica's addresses from `config.members` and starts it.
    /// Must be called within a tokio runtime.
    pub async fn start(config: ControllerServerConfig) -> Result<ControllerServer, ServerError> {
        let addrs = *config.members.get(&config.node_id).ok_or_else(|| {
            ServerError::Config(format!("members do not include {}", config.node_id))
        })?;
        let listeners = ControllerListeners::bind(addrs, &config.net).await?;
        ControllerServer::start_with_listeners(config, listeners).await
    }

    /// Starts the replica on listeners bound beforehand (see
    /// [`ControllerListeners`]); their addresses should be this replica's
    /// entry of `config.members`. Opens `data_dir/wal` and
    /// `data_dir/snap`, recovers the state machine from them, starts the
    /// `paxos-log` node and serves both listeners. Must be called within a
    /// tokio runtime, which then runs the servers and the peer transport.
    pub async fn start_with_listeners(
        config: ControllerServerConfig,
        listeners: ControllerListeners,
    ) -> Result<ControllerServer, ServerError> {
        let ControllerServerConfig {
            node_id,
            members,
            data_dir,
            initial_shards,
            group_id,
            driver,
            net,
            wal,
        } = config;
        if !members.contains_key(&node_id) {
            return Err(ServerError::Config(format!(
                "members do not include {node_id}"
            )));
        }
        let machine = SharedMachine::new(ControllerStateMachine::new(initial_shards)?);
        let peers: BTreeMap<NodeId, SocketAddr> = members
            .iter()
            .filter(|(id, _)| **id != node_id)
            .map(|(id, addrs)| (*id, addrs.peer))
            .collect();
        let transport = Arc::new(TarpcTransport::new(
            &tokio::runtime::Handle::current(),
            peers,
            group_id,
            net.clone(),
        ));
        let log_config = Config::new(node_id, members.keys().copied().collect());
        // Opening the WAL replays it and restoring a snapshot decodes it:
        // blocking work that must not stall the runtime's workers.
        let node = {
            let machine = machine.clone();
            let transport = Arc::clone(&transport);
            tokio::task::spawn_blocking(move || -> Result<Node<SharedMachine>, ServerError> {
                let fs = RealFs::shared();
                let store = WalAcceptorStore::open(fs.clone(), &data_dir.join("wal"), wal)?;
                let snapshots = SnapshotStore::open(fs, &data_dir.join("snap"))?;
                Ok(Node::start_with_snapshots(
                    log_config, store, machine, transport, driver, snapshots,
                )?)
            })
            .await
            .map_err(|cause| ServerError::Task(cause.to_string()))??
        };
        let handle = node.handle();
        let client_addr = listeners.client_addr;
        let peer_server = listeners.peer.start(handle.clone(), group_id);
        let service = ClientService {
            node: handle.clone(),
            machine: machine.clone(),
            client_addrs: Arc::new(
                members
                    .iter()
                    .map(|(id, addrs)| (*id, addrs.client))
                    .collect(),
            ),
        };
        let client_server = TarpcServer::spawn(
            "controller admin",
            listeners.client,
            move |request: InFlightRequest<ShardControllerRequest, ShardControllerResponse>| {
                request.execute(service.clone().serve())
            },
            net,
        );
        Ok(ControllerServer {
            node_id,
            client_addr,
            node: Some(node),
            handle,
            machine,
            peer_server: Some(peer_server),
            client_server: Some(client_server),
            transport: Some(transport),
        })
    }

    /// This replica's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The address admin clients call (the real port when bound to
    /// port 0).
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The `paxos-log` node's latest metrics (role, applied slot,
    /// `log_start`, snapshots).
    pub fn metrics(&self) -> NodeMetrics {
        self.handle.metrics()
    }

    /// A handle to the `paxos-log` node, e.g. to wait for metrics.
    pub fn node_handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// What the client listener has done with connections so far.
    pub fn client_stats(&self) -> ConnectionStats {
        self.client_server
            .as_ref()
            .map(TarpcServer::stats)
            .unwrap_or_default()
    }

    /// The latest configuration *this replica* has applied. Not
    /// linearizable: a follower (or a partitioned leader) may lag. For
    /// status pages and tests; clients use the `query` RPC.
    pub fn local_latest(&self) -> Configuration {
        self.machine.lock().controller().latest()
    }

    /// Configuration `num` as this replica has it, if it has applied it
    /// (same caveat as [`ControllerServer::local_latest`]).
    pub fn local_config(&self, num: ConfigNum) -> Option<Configuration> {
        self.machine.lock().controller().config(num)
    }

    /// Stops the replica: the client listener (closing every admin
    /// connection), the peer listener, the `paxos-log` node (waiting for its
    /// thread, so everything it acknowledged is on disk and its WAL is
    /// closed), and the peer transport. Returns once both ports are free
    /// and every task of the replica has ended.
    pub async fn shutdown(mut self) {
        if let Some(client_server) = self.client_server.take() {
            client_server.shutdown().await;
        }
        if let Some(peer_server) = self.peer_server.take() {
            peer_server.shutdown().await;
        }
        if let Some(node) = self.node.take() {
            // Joining the driver thread blocks until its current `Ready`
            // (at most one fsync) is done.
            if let Err(cause) = tokio::task::spawn_blocking(move || node.stop()).await {
                error!(%cause, "stopping the controller's log node failed");
            }
        }
        // Dropping the last reference aborts the peer tasks. The node held
        // the other one and has stopped.
        self.transport.take();
    }
}

/// The [`ShardController`] service of one replica, cloned per request.
#[derive(Debug, Clone)]
struct ClientService {
    node: NodeHandle,
    machine: SharedMachine,
    /// Client address of every replica, to turn a leader hint (a node id)
    /// into an address a clerk can call.
    client_addrs: Arc<BTreeMap<NodeId, SocketAddr>>,
}

impl ClientService {
    fn service_error(&self, error: NodeError) -> ServiceError {
        match error {
            NodeError::NotLeader { leader_hint } => ServiceError::NotLeader {
                leader_hint: leader_hint
                    .and_then(|id| self.client_addrs.get(&id))
                    .map(SocketAddr::to_string),
            },
            // Membership changes of the controller's own group are an
            // admin operation of their own; a change or query never gets
            // these, and if it did, it certainly did not take effect.
            NodeError::Busy | NodeError::Reconfiguring | NodeError::InvalidMembership(_) => {
                ServiceError::Busy
            }
            NodeError::Indeterminate(cause) => ServiceError::Indeterminate(cause),
            NodeError::Stopped => ServiceError::Stopped,
        }
    }
}

impl ShardController for ClientService {
    async fn change(
        self,
        _: context::Context,
        client_id: ClientId,
        seq: u64,
        op: ControllerOp,
    ) -> Result<ControllerReply, ServiceError> {
        let command = encode(&ControllerCommand::Change { client_id, seq, op });
        if command.len() > MAX_REQUEST_BYTES {
            // The state machine would refuse it after it was chosen; refuse
            // it before it takes a slot (and a WAL record) on every replica.
            return Ok(ControllerReply::Error(ControllerError::RequestTooLarge {
                len_bytes: command.len(),
                max_bytes: MAX_REQUEST_BYTES,
            }));
        }
        let reply = self
            .node
            .propose(command)
            .await
            .map_err(|error| self.service_error(error))?;
        // The change was applied; only its answer is unreadable (a bug or
        // a version mismatch), so its effect is unknown to the caller.
        decode::<ControllerReply>(&reply)
            .map_err(|error| ServiceError::Indeterminate(format!("undecodable reply: {error}")))
    }

    async fn query(
        self,
        _: context::Context,
        num: Option<ConfigNum>,
    ) -> Result<Configuration, ServiceError> {
        let answer = self
            .node
            .read(encode(&ControllerQuery::Config { num }))
            .await
            .map_err(|error| self.service_error(error))?;
        match decode::<ControllerReply>(&answer).map_err(ServiceError::Controller)? {
            ControllerReply::Config(config) => Ok(config),
            ControllerReply::Error(error) => Err(ServiceError::Controller(error)),
            other => Err(ServiceError::Controller(ControllerError::Malformed {
                reason: format!("a query was answered with {other:?}"),
            })),
        }
    }

    async fn status(self, _: context::Context) -> ControllerStatus {
        let metrics = self.node.metrics();
        ControllerStatus {
            node_id: metrics.id.0,
            role: metrics.role.unwrap_or(Role::Follower).name().to_string(),
            leader_hint: metrics.leader_hint.map(|id| id.0),
            applied_slot: metrics.applied_slot,
            num: self.machine.lock().controller().latest_num(),
        }
    }
}
