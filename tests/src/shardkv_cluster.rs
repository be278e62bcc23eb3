//! A whole shardkv deployment in one test process: a controller group and
//! replica groups over loopback TCP, each replica with its own WAL,
//! snapshots and sled store in a temporary directory ([`Cluster`]).
//!
//! Every replica binds 127.0.0.1 port 0 for its peer and client addresses
//! before its group starts (so the members map is known); a restart rebinds
//! the same ports and reopens the same directory, which is what a crash and
//! restart looks like to the rest of the cluster (everything acknowledged is
//! in the WAL; unflushed sled writes are replayed from it). Tests bound
//! their own running time and call [`Cluster::shutdown`] at the end.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use controller::{
    ClerkOptions as AdminOptions, ConfigNum, Configuration, ControllerClerk, ControllerListeners,
    ControllerServer, ControllerServerConfig, Gid, MemberAddrs, ShardId,
};
use paxos_log::{DriverOptions, NetLimits, NodeId, Role};
use shardkv::faults::Faults;
use shardkv::migration::MigrationOptions;
use shardkv::{Clerk, ClerkOptions, GroupState, Limits, ShardKvServer, ShardKvServerConfig};
use storage::wal::WalOptions;
use tempfile::TempDir;

use crate::ports::restartable_addr;

/// The controller group's id on the peer transport.
const CONTROLLER_GROUP: u64 = 0;

/// How a test cluster runs.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Controller replicas.
    pub controllers: usize,
    /// Shards of configuration 0.
    pub shards: u32,
    /// Replicas per group.
    pub replicas: usize,
    /// Driver timing of every replica (controllers and groups).
    pub driver: DriverOptions,
    /// Limits of every group.
    pub limits: Limits,
    /// Migration timing of every group.
    pub migration: MigrationOptions,
    /// WAL options of every group replica.
    pub wal: WalOptions,
    /// Faults injected into every group replica (each replica's seed is
    /// this seed mixed with its gid and node id).
    pub faults: Faults,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            controllers: 1,
            shards: 10,
            replicas: 3,
            driver: DriverOptions {
                tick: Duration::from_millis(10),
                request_timeout: Duration::from_secs(2),
                snapshot_every_slots: 500,
                ..DriverOptions::default()
            },
            limits: Limits::default(),
            migration: MigrationOptions {
                poll_interval: Duration::from_millis(20),
                rpc_timeout: Duration::from_secs(1),
            },
            wal: WalOptions::default(),
            faults: Faults::default(),
        }
    }
}

/// Network limits of the tests: the defaults, except that a restarted
/// replica is reconnected to quickly.
pub fn net() -> NetLimits {
    NetLimits {
        backoff_max: Duration::from_millis(100),
        ..NetLimits::default()
    }
}

/// Clerk settings of the tests: a deadline long enough to ride out a
/// migration or a restart, short backoffs.
pub fn clerk_options(client_id: u64) -> ClerkOptions {
    ClerkOptions {
        deadline: Duration::from_secs(20),
        rpc_timeout: Duration::from_secs(3),
        backoff_max: Duration::from_millis(100),
        net: net(),
        ..ClerkOptions::new(client_id)
    }
}

/// Two loopback addresses for a new replica, below the ephemeral range so
/// that a restart can bind them again (see [`crate::ports`]).
fn loopback() -> MemberAddrs {
    MemberAddrs {
        peer: restartable_addr(),
        client: restartable_addr(),
    }
}

/// Binds `addrs` (port 0: any), retrying a port still held by a replica
/// that just stopped.
async fn bind(addrs: MemberAddrs) -> ControllerListeners {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match ControllerListeners::bind(addrs, &net()).await {
            Ok(bound) => return bound,
            Err(e) if Instant::now() < deadline => {
                eprintln!("rebinding {addrs:?}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot bind {addrs:?}: {e}"),
        }
    }
}

/// The id of replica `index` (0-based): `index + 1`.
pub fn node_id(index: usize) -> NodeId {
    NodeId(u64::try_from(index).expect("index fits u64") + 1)
}

/// One replica group of the cluster.
#[derive(Debug)]
pub struct Group {
    /// Every replica's addresses.
    pub members: BTreeMap<NodeId, MemberAddrs>,
    servers: BTreeMap<NodeId, Option<ShardKvServer>>,
}

impl Group {
    /// The client addresses, as the controller lists them.
    pub fn client_addrs(&self) -> Vec<String> {
        self.members
            .values()
            .map(|addrs| addrs.client.to_string())
            .collect()
    }

    /// The running replicas.
    pub fn running(&self) -> impl Iterator<Item = &ShardKvServer> {
        self.servers.values().flatten()
    }

    /// Replica `node`, if running.
    pub fn server(&self, node: NodeId) -> Option<&ShardKvServer> {
        self.servers.get(&node).and_then(Option::as_ref)
    }
}

/// A controller group and replica groups. See the [module docs](self).
#[derive(Debug)]
pub struct Cluster {
    root: TempDir,
    /// How it runs.
    pub options: ClusterOptions,
    controller_members: BTreeMap<NodeId, MemberAddrs>,
    controllers: Vec<Option<ControllerServer>>,
    groups: BTreeMap<Gid, Group>,
    admin: ControllerClerk,
}

impl Cluster {
    /// Starts the controller group (no replica group yet).
    pub async fn start(options: ClusterOptions) -> Cluster {
        let root = TempDir::new().expect("temporary directory");
        let mut listeners = Vec::new();
        let mut controller_members = BTreeMap::new();
        for i in 0..options.controllers {
            let bound = bind(loopback()).await;
            controller_members.insert(node_id(i), bound.addrs());
            listeners.push(bound);
        }
        let controller_addrs: Vec<SocketAddr> = controller_members
            .values()
            .map(|addrs| addrs.client)
            .collect();
        let admin = ControllerClerk::new(
            controller_addrs,
            AdminOptions {
                deadline: Duration::from_secs(20),
                net: net(),
                ..AdminOptions::new(u64::MAX - 1)
            },
        );
        let mut cluster = Cluster {
            root,
            options,
            controller_members,
            controllers: Vec::new(),
            groups: BTreeMap::new(),
            admin,
        };
        for (i, bound) in listeners.into_iter().enumerate() {
            let server =
                ControllerServer::start_with_listeners(cluster.controller_config(i), bound)
                    .await
                    .expect("controller replica starts");
            cluster.controllers.push(Some(server));
        }
        cluster
    }

    /// Starts the controller group and the groups `gids`, joins them all
    /// at once and waits until they serve every shard.
    pub async fn start_with_groups(options: ClusterOptions, gids: &[Gid]) -> Cluster {
        let mut cluster = Cluster::start(options).await;
        for &gid in gids {
            cluster.add_group(gid).await;
        }
        let num = cluster.join(gids).await;
        cluster
            .wait_settled(gids, num, Duration::from_secs(30))
            .await;
        cluster
    }

    fn controller_config(&self, i: usize) -> ControllerServerConfig {
        ControllerServerConfig {
            driver: self.options.driver.clone(),
            net: net(),
            ..ControllerServerConfig::new(
                node_id(i),
                self.controller_members.clone(),
                self.root.path().join(format!("controller-{}", i + 1)),
                self.options.shards,
                CONTROLLER_GROUP,
            )
        }
    }

    /// The controller replicas' client addresses.
    pub fn controller_addrs(&self) -> Vec<SocketAddr> {
        self.controller_members
            .values()
            .map(|addrs| addrs.client)
            .collect()
    }

    /// The directory of replica `node` of group `gid`.
    pub fn replica_dir(&self, gid: Gid, node: NodeId) -> PathBuf {
        self.root.path().join(format!("g{gid}-n{}", node.0))
    }

    fn replica_config(&self, gid: Gid, node: NodeId) -> ShardKvServerConfig {
        let group = &self.groups[&gid];
        ShardKvServerConfig {
            limits: self.options.limits.clone(),
            migration: self.options.migration.clone(),
            driver: self.options.driver.clone(),
            net: net(),
            wal: self.options.wal.clone(),
            faults: Faults {
                seed: self.options.faults.seed ^ (gid << 32) ^ node.0,
                ..self.options.faults
            },
            ..ShardKvServerConfig::new(
                node,
                gid,
                group.members.clone(),
                self.replica_dir(gid, node),
                self.controller_addrs(),
            )
        }
    }

    /// Starts group `gid` with `options.replicas` replicas (not joined).
    pub async fn add_group(&mut self, gid: Gid) {
        assert!(!self.groups.contains_key(&gid), "group {gid} exists");
        let mut listeners = Vec::new();
        let mut members = BTreeMap::new();
        for i in 0..self.options.replicas {
            let bound = bind(loopback()).await;
            members.insert(node_id(i), bound.addrs());
            listeners.push((node_id(i), bound));
        }
        self.groups.insert(
            gid,
            Group {
                members,
                servers: BTreeMap::new(),
            },
        );
        for (node, bound) in listeners {
            let server = ShardKvServer::start_with_listeners(self.replica_config(gid, node), bound)
                .await
                .expect("replica starts");
            self.group_mut(gid).servers.insert(node, Some(server));
        }
    }

    fn group_mut(&mut self, gid: Gid) -> &mut Group {
        self.groups.get_mut(&gid).expect("known group")
    }

    /// Group `gid`.
    pub fn group(&self, gid: Gid) -> &Group {
        &self.groups[&gid]
    }

    /// The groups started so far.
    pub fn gids(&self) -> Vec<Gid> {
        self.groups.keys().copied().collect()
    }

    /// Joins the groups `gids` (started with [`Cluster::add_group`]).
    pub async fn join(&mut self, gids: &[Gid]) -> ConfigNum {
        let groups = gids
            .iter()
            .map(|gid| (*gid, self.groups[gid].client_addrs()))
            .collect();
        self.admin.join(groups).await.expect("join")
    }

    /// The groups `gids` leave.
    pub async fn leave(&mut self, gids: &[Gid]) -> ConfigNum {
        self.admin.leave(gids.to_vec()).await.expect("leave")
    }

    /// Moves shard `shard` to group `gid`.
    pub async fn move_shard(&mut self, shard: ShardId, gid: Gid) -> ConfigNum {
        self.admin.move_shard(shard, gid).await.expect("move")
    }

    /// Splits the shard containing `key` at `key`.
    pub async fn split(&mut self, key: &[u8]) -> (ConfigNum, ShardId) {
        self.admin.split(Vec::from(key)).await.expect("split")
    }

    /// The controller's latest configuration.
    pub async fn latest(&mut self) -> Configuration {
        self.admin.query(None).await.expect("query")
    }

    /// A clerk with id `client_id`.
    pub fn clerk(&self, client_id: u64) -> Clerk {
        Clerk::new(self.controller_addrs(), clerk_options(client_id))
    }

    /// Stops replica `node` of group `gid` (what a crash looks like to the
    /// others) and waits until its ports are free.
    pub async fn stop_replica(&mut self, gid: Gid, node: NodeId) {
        if let Some(server) = self
            .group_mut(gid)
            .servers
            .get_mut(&node)
            .and_then(Option::take)
        {
            server.shutdown().await;
        }
    }

    /// Starts replica `node` of group `gid` again from its directory, on
    /// the same ports.
    pub async fn restart_replica(&mut self, gid: Gid, node: NodeId) {
        assert!(
            self.groups[&gid].server(node).is_none(),
            "replica {node} of group {gid} is running"
        );
        let bound = bind(self.groups[&gid].members[&node]).await;
        let server = ShardKvServer::start_with_listeners(self.replica_config(gid, node), bound)
            .await
            .expect("replica restarts");
        self.group_mut(gid).servers.insert(node, Some(server));
    }

    /// Stops every replica of group `gid`.
    pub async fn stop_group(&mut self, gid: Gid) {
        let nodes: Vec<NodeId> = self.groups[&gid].members.keys().copied().collect();
        for node in nodes {
            self.stop_replica(gid, node).await;
        }
    }

    /// Starts every stopped replica of group `gid`.
    pub async fn restart_group(&mut self, gid: Gid) {
        let nodes: Vec<NodeId> = self.groups[&gid]
            .servers
            .iter()
            .filter(|(_, server)| server.is_none())
            .map(|(node, _)| *node)
            .collect();
        for node in nodes {
            self.restart_replica(gid, node).await;
        }
    }

    /// Stops every controller replica.
    pub async fn stop_controllers(&mut self) {
        for server in self.controllers.iter_mut().filter_map(Option::take) {
            server.shutdown().await;
        }
    }

    /// Starts every stopped controller replica again.
    pub async fn restart_controllers(&mut self) {
        for i in 0..self.controllers.len() {
            if self.controllers[i].is_none() {
                let bound = bind(self.controller_members[&node_id(i)]).await;
                let server =
                    ControllerServer::start_with_listeners(self.controller_config(i), bound)
                        .await
                        .expect("controller replica restarts");
                self.controllers[i] = Some(server);
            }
        }
    }

    /// The group state of every running replica of group `gid`.
    pub fn group_states(&self, gid: Gid) -> Vec<GroupState> {
        self.groups[&gid]
            .running()
            .map(ShardKvServer::group_state)
            .collect()
    }

    /// The running leader of group `gid`, if one claims to lead.
    pub fn leader(&self, gid: Gid) -> Option<NodeId> {
        self.groups[&gid]
            .running()
            .find(|server| server.metrics().role == Some(Role::Leader))
            .map(ShardKvServer::node_id)
    }

    /// Waits until every running replica of every group in `gids` has
    /// installed configuration `num` and holds no shard still arriving or
    /// waiting for its old copy to be deleted. Panics after `timeout`,
    /// naming what it waited for.
    pub async fn wait_settled(&self, gids: &[Gid], num: ConfigNum, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let pending: Vec<String> = gids
                .iter()
                .flat_map(|gid| {
                    self.groups[gid].running().filter_map(move |server| {
                        let state = server.group_state();
                        let busy = state.shards.values().any(|entry| {
                            !matches!(entry.state, shardkv::ShardState::Serving { gc: None })
                                && !matches!(entry.state, shardkv::ShardState::Frozen { .. })
                        });
                        let busy = busy || !state.gc_pending.is_empty();
                        (state.num < num || busy).then(|| {
                            format!(
                                "g{gid}/n{} at configuration {} {:?}",
                                server.node_id().0,
                                state.num,
                                state.shards
                            )
                        })
                    })
                })
                .collect();
            if pending.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not settled at configuration {num} within {timeout:?}: {pending:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Bytes of every file under the directories of group `gid`'s
    /// replicas.
    pub fn disk_bytes(&self, gid: Gid) -> u64 {
        self.groups[&gid]
            .members
            .keys()
            .map(|node| dir_bytes(&self.replica_dir(gid, *node)))
            .sum()
    }

    /// Stops everything.
    pub async fn shutdown(mut self) {
        let gids = self.gids();
        for gid in gids {
            self.stop_group(gid).await;
        }
        self.stop_controllers().await;
    }
}

/// Bytes of every file under `dir` (0 if it does not exist).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}
