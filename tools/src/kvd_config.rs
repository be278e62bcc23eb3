//! `kvd.toml`: one node's configuration file, parsed and validated
//! ([`KvdConfig`]).
//!
//! ```toml
//! name = "g1-n1"                  # unique in the cluster, for logs and tools
//! role = "group"                  # "controller" or "group"
//! node_id = 1                     # the replica's id within its group (1 or more)
//! gid = 1                         # role = "group" only: the replica group (1 or more)
//! data_dir = "data"               # relative to this file's directory
//! peer_addr = "127.0.0.1:7411"    # the group's own paxos-log traffic
//! client_addr = "127.0.0.1:7412"  # clerks, admin tools, other groups
//! http_addr = "127.0.0.1:7413"    # role = "group" only, optional: HTTP API and /metrics
//! controllers = ["127.0.0.1:7402"] # role = "group" only: controller client addresses
//! initial_shards = 8              # role = "controller" only: shards of configuration 0
//! cluster_id = "kv-1f0c9d2e7a4b3c5d" # optional: with `secret`, every connection to and
//! secret = "9a3e...(64 hex digits)"  # from this node must prove it belongs to the cluster
//! tls_ca = "tls/ca.pem"           # optional, all three or none: mutual TLS on every
//! tls_cert = "tls/node.pem"       # connection (the cluster's CA, this node's certificate
//! tls_key = "tls/node-key.pem"    # and key; relative to this file's directory)
//!
//! genesis_members = [1, 2, 3]     # optional: the group's first members (default: every
//!                                 # `[[members]]` entry); set once a replica was added or removed
//!
//! [[members]]                     # every replica of this node's group, this one included
//! node_id = 1
//! peer_addr = "127.0.0.1:7411"
//! client_addr = "127.0.0.1:7412"
//!
//! [log]                           # optional: paxos-log driver timing
//! tick_ms = 10
//! request_timeout_ms = 5000
//! snapshot_every_slots = 10000
//! snapshot_every_bytes = 67108864
//!
//! [limits]                        # optional, role = "group": see shardkv::Limits
//! key_bytes_max = 4096
//! value_bytes_max = 1048576
//! ```
//!
//! Unknown keys are refused (a typo must not silently fall back to a
//! default), and every rule names the key it is about and how to fix it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use controller::{ControllerServerConfig, MemberAddrs};
use paxos_log::{DriverOptions, NetLimits, NodeId, TlsConfig};
use serde::{Deserialize, Serialize};
use shardkv::{Limits, ShardKvServerConfig};

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A replica of the shard controller.
    Controller,
    /// A replica of a replica group.
    Group,
}

/// One replica of the node's group, as `[[members]]` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// Its id within the group.
    pub node_id: u64,
    /// Its peer address.
    pub peer_addr: SocketAddr,
    /// Its client address.
    pub client_addr: SocketAddr,
}

/// The `[log]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// Length of one core tick.
    pub tick_ms: u64,
    /// How long a proposal or read waits before its outcome is unknown.
    pub request_timeout_ms: u64,
    /// Snapshot (and compact the log) every this many applied slots.
    pub snapshot_every_slots: u64,
    /// ... or after this many bytes of applied commands.
    pub snapshot_every_bytes: u64,
}

impl Default for LogSettings {
    fn default() -> Self {
        let driver = DriverOptions::default();
        LogSettings {
            tick_ms: u64::try_from(driver.tick.as_millis()).unwrap_or(10),
            request_timeout_ms: u64::try_from(driver.request_timeout.as_millis()).unwrap_or(5000),
            snapshot_every_slots: driver.snapshot_every_slots,
            snapshot_every_bytes: driver.snapshot_every_bytes,
        }
    }
}

/// A node's configuration file, as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvdConfig {
    /// The node's name.
    pub name: String,
    /// What it is.
    pub role: Role,
    /// Its id within its group.
    pub node_id: u64,
    /// Its replica group (role = "group").
    pub gid: Option<u64>,
    /// Its data directory (relative paths are relative to the file).
    pub data_dir: PathBuf,
    /// Its peer address.
    pub peer_addr: SocketAddr,
    /// Its client address.
    pub client_addr: SocketAddr,
    /// Its HTTP address (role = "group"; none: no HTTP).
    pub http_addr: Option<SocketAddr>,
    /// Controller client addresses (role = "group").
    #[serde(default)]
    pub controllers: Vec<SocketAddr>,
    /// The cluster's id (access control, with `secret`).
    pub cluster_id: Option<String>,
    /// The cluster's shared secret, in hex (access control, with
    /// `cluster_id`).
    pub secret: Option<crate::access::Secret>,
    /// The cluster's CA certificate (mutual TLS, with `tls_cert` and
    /// `tls_key`).
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate.
    pub tls_cert: Option<PathBuf>,
    /// This node's private key.
    pub tls_key: Option<PathBuf>,
    /// Shards of configuration 0 (role = "controller").
    pub initial_shards: Option<u32>,
    /// Every replica of its group.
    pub members: Vec<Member>,
    /// The group's members at its creation (default: `members`): the
    /// replicated log's genesis configuration, the same on every replica
    /// forever, whatever replicas were added or removed since.
    pub genesis_members: Option<Vec<u64>>,
    /// Driver timing.
    #[serde(default)]
    pub log: LogSettings,
    /// Size and session limits (role = "group").
    pub limits: Option<Limits>,
}

/// A configuration file that cannot be used: the text names the file, the
/// key and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong and how to fix it.
    pub reason: String,
}

/// What a validated configuration starts.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // built once per process
pub enum NodeConfig {
    /// A controller replica.
    Controller(ControllerServerConfig),
    /// A group replica.
    Group(GroupNode),
}

/// A group replica's validated configuration.
#[derive(Debug, Clone)]
pub struct GroupNode {
    /// The replica.
    pub server: ShardKvServerConfig,
    /// Where it serves HTTP, if anywhere.
    pub http_addr: Option<SocketAddr>,
}

/// The controller group's id on the peer transport (group ids start at 1).
pub const CONTROLLER_GROUP_ID: u64 = 0;

impl KvdConfig {
    /// Reads and parses `path` (not yet validated).
    pub fn load(path: &Path) -> Result<KvdConfig, ConfigError> {
        let error = |reason: String| ConfigError {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read: {e}")))?;
        toml::from_str(&text).map_err(|e| error(e.to_string().trim_end().to_string()))
    }

    /// Checks every rule and builds the server configuration; relative
    /// paths are resolved against `base` (the file's directory).
    pub fn validate(&self, path: &Path) -> Result<NodeConfig, ConfigError> {
        let fail = |reason: String| {
            Err(ConfigError {
                path: path.to_path_buf(),
                reason,
            })
        };
        if self.name.trim().is_empty() {
            return fail("`name` is empty: give the node a name unique in the cluster".into());
        }
        if self.node_id == 0 {
            return fail("`node_id` is 0: replica ids start at 1".into());
        }
        let mut members = BTreeMap::new();
        let mut addrs = BTreeSet::new();
        for member in &self.members {
            if member.node_id == 0 {
                return fail("a `[[members]]` entry has node_id 0: replica ids start at 1".into());
            }
            for addr in [member.peer_addr, member.client_addr] {
                if !addrs.insert(addr) {
                    return fail(format!(
                        "address {addr} appears twice in `[[members]]`: every replica needs its \
                         own peer and client address"
                    ));
                }
            }
            let entry = MemberAddrs {
                peer: member.peer_addr,
                client: member.client_addr,
            };
            if members.insert(NodeId(member.node_id), entry).is_some() {
                return fail(format!(
                    "node_id {} appears twice in `[[members]]`",
                    member.node_id
                ));
            }
        }
        match members.get(&NodeId(self.node_id)) {
            None => {
                return fail(format!(
                    "`[[members]]` has no entry for this node (node_id {}): list every replica \
                     of the group, this one included",
                    self.node_id
                ))
            }
            Some(own) if own.peer != self.peer_addr || own.client != self.client_addr => {
                return fail(format!(
                    "the `[[members]]` entry of node_id {} does not match `peer_addr` / \
                     `client_addr`",
                    self.node_id
                ))
            }
            Some(_) => {}
        }
        if self.log.tick_ms == 0 || self.log.request_timeout_ms < self.log.tick_ms {
            return fail(
                "`log.tick_ms` must be at least 1 and `log.request_timeout_ms` at least one tick"
                    .into(),
            );
        }
        let driver = DriverOptions {
            tick: Duration::from_millis(self.log.tick_ms),
            request_timeout: Duration::from_millis(self.log.request_timeout_ms),
            snapshot_every_slots: self.log.snapshot_every_slots,
            snapshot_every_bytes: self.log.snapshot_every_bytes,
            ..DriverOptions::default()
        };
        let genesis = match &self.genesis_members {
            None => None,
            Some(ids) => {
                let unique: BTreeSet<u64> = ids.iter().copied().collect();
                if ids.is_empty() || unique.len() != ids.len() || unique.contains(&0) {
                    return fail(
                        "`genesis_members` must list the group's first replica ids, each once, \
                         none 0 (or be left out)"
                            .into(),
                    );
                }
                Some(ids.iter().map(|&id| NodeId(id)).collect::<Vec<_>>())
            }
        };
        let access = crate::access::access_key(self.cluster_id.as_deref(), self.secret.as_ref())
            .map_err(|reason| ConfigError {
                path: path.to_path_buf(),
                reason,
            })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let tls = match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (None, None, None) => None,
            (Some(ca), Some(cert), Some(key)) => Some(
                TlsConfig::load(&base.join(ca), &base.join(cert), &base.join(key)).map_err(
                    |reason| ConfigError {
                        path: path.to_path_buf(),
                        reason,
                    },
                )?,
            ),
            _ => {
                return fail(
                    "`tls_ca`, `tls_cert` and `tls_key` go together: set all three or none".into(),
                )
            }
        };
        let net = NetLimits {
            access,
            tls,
            ..NetLimits::default()
        };
        let data_dir = base.join(&self.data_dir);
        match self.role {
            Role::Controller => {
                if self.gid.is_some()
                    || genesis.is_some()
                    || !self.controllers.is_empty()
                    || self.limits.is_some()
                    || self.http_addr.is_some()
                {
                    return fail(
                        "`gid`, `controllers`, `genesis_members`, `http_addr` and `[limits]` \
                         belong to role = \"group\"; remove them from a controller's file"
                            .into(),
                    );
                }
                let Some(initial_shards) = self.initial_shards else {
                    return fail(
                        "`initial_shards` is missing: a controller needs the shard count of \
                         configuration 0 (the same on every controller replica)"
                            .into(),
                    );
                };
                let limit = controller::limits::MAX_INITIAL_SHARDS;
                if !(1..=limit).contains(&initial_shards) {
                    return fail(format!(
                        "`initial_shards` is {initial_shards}: it must be 1 to {limit}"
                    ));
                }
                Ok(NodeConfig::Controller(ControllerServerConfig {
                    driver,
                    net,
                    ..ControllerServerConfig::new(
                        NodeId(self.node_id),
                        members,
                        data_dir,
                        initial_shards,
                        CONTROLLER_GROUP_ID,
                    )
                }))
            }
            Role::Group => {
                let Some(gid) = self.gid.filter(|gid| *gid > 0) else {
                    return fail(
                        "`gid` is missing or 0: a group replica needs its group id (1 or more)"
                            .into(),
                    );
                };
                if self.initial_shards.is_some() {
                    return fail(
                        "`initial_shards` belongs to role = \"controller\"; remove it".into(),
                    );
                }
                if self.controllers.is_empty() {
                    return fail(
                        "`controllers` is empty: list the controller replicas' client addresses"
                            .into(),
                    );
                }
                let limits = self.limits.clone().unwrap_or_default();
                if let Err(reason) = limits.validate() {
                    return fail(format!("[limits]: {reason}"));
                }
                if let Some(http) = self.http_addr {
                    if addrs.contains(&http) {
                        return fail(format!(
                            "`http_addr` {http} is also a peer or client address: give HTTP its \
                             own port"
                        ));
                    }
                }
                Ok(NodeConfig::Group(GroupNode {
                    server: ShardKvServerConfig {
                        limits,
                        driver,
                        genesis,
                        net,
                        ..ShardKvServerConfig::new(
                            NodeId(self.node_id),
                            gid,
                            members,
                            data_dir,
                            self.controllers.clone(),
                        )
                    },
                    http_addr: self.http_addr,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: &str = r#"
name = "g1-n1"
role = "group"
node_id = 1
gid = 1
data_dir = "data"
peer_addr = "127.0.0.1:7411"
client_addr = "127.0.0.1:7412"
controllers = ["127.0.0.1:7402"]

[[members]]
node_id = 1
peer_addr = "127.0.0.1:7411"
client_addr = "127.0.0.1:7412"
"#;

    fn check(text: &str) -> Result<NodeConfig, String> {
        let config: KvdConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config
            .validate(Path::new("/cluster/g1-n1/kvd.toml"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_good_group_file_resolves_its_data_dir_next_to_the_file() {
        match check(GROUP).unwrap() {
            NodeConfig::Group(node) => {
                assert_eq!(node.server.gid, 1);
                assert_eq!(node.server.data_dir, Path::new("/cluster/g1-n1/data"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mistakes_name_the_key() {
        let cases = [
            (GROUP.replace("gid = 1\n", "gid = 0\n"), "`gid`"),
            (
                GROUP.replace("node_id = 1\ngid", "node_id = 2\ngid"),
                "[[members]]",
            ),
            (
                GROUP.replace("controllers = [\"127.0.0.1:7402\"]", "controllers = []"),
                "`controllers`",
            ),
            (GROUP.replace("role = \"group\"", "role = \"grup\""), "role"),
            (format!("{GROUP}\nsnapshot_every = 3\n"), "snapshot_every"),
            (
                GROUP.replace("127.0.0.1:7411\"\nclient", "nonsense\"\nclient"),
                "peer_addr",
            ),
            (
                format!("{GROUP}\n[limits]\nkey_bytes_max = 0\n"),
                "key_bytes_max",
            ),
            (
                GROUP.replace("gid = 1\n", "gid = 1\ngenesis_members = [1, 1]\n"),
                "genesis_members",
            ),
        ];
        for (text, key) in cases {
            let err = check(&text).expect_err(key);
            assert!(err.contains(key), "{key}: {err}");
        }
    }
}
