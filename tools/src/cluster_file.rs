//! `cluster.toml`: every node of a cluster (name, role, group, addresses),
//! and the `kvd.toml` of each node derived from it ([`ClusterFile`]).
//!
//! `kvctl cluster init` writes both; every other `kvctl` command reads the
//! cluster file to find the controllers (client commands, admin), the
//! groups' addresses (`admin join`), and the nodes it starts and stops.
//!
//! ```toml
//! shards = 8                       # shards of configuration 0
//!
//! [[nodes]]
//! name = "c1"                      # also the node's directory under the cluster directory
//! role = "controller"
//! node_id = 1
//! peer_addr = "127.0.0.1:7400"
//! client_addr = "127.0.0.1:7401"
//!
//! [[nodes]]
//! name = "g1-n1"
//! role = "group"
//! gid = 1
//! node_id = 1
//! peer_addr = "127.0.0.1:7409"
//! client_addr = "127.0.0.1:7410"
//! http_addr = "127.0.0.1:7411"
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::kvd_config::Role;

/// Name of the cluster file inside a cluster directory.
pub const CLUSTER_FILE: &str = "cluster.toml";
/// Name of a node's configuration file inside its directory.
pub const KVD_FILE: &str = "kvd.toml";
/// Ports each node takes, from `base_port + 3 × index`: peer, client, HTTP.
pub const PORTS_PER_NODE: u16 = 3;

/// One node as the cluster file lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterNode {
    /// Unique in the cluster; also its directory's name.
    pub name: String,
    /// Controller replica or group replica.
    pub role: Role,
    /// Its group (role = "group").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u64>,
    /// Its id within its group.
    pub node_id: u64,
    /// Its peer address.
    pub peer_addr: SocketAddr,
    /// Its client address.
    pub client_addr: SocketAddr,
    /// Its HTTP address (role = "group").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<SocketAddr>,
}

/// The cluster file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Shards of configuration 0.
    pub shards: u32,
    /// The cluster's id: every connection names it (access control, with
    /// `secret`; a file without both has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// The shared secret (hex) every connection proves it knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<crate::access::Secret>,
    /// Mutual TLS on every connection, with the certificates under
    /// `DIR/tls` and `DIR/NODE/tls` (`kvctl cluster init --tls`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
    /// kvctl's TLS settings, read from `DIR/tls` by [`ClusterFile::load`]
    /// (not part of the file).
    #[serde(skip)]
    pub tls_config: Option<paxos_log::TlsConfig>,
    /// Each group's first members (gid as text -> node ids), recorded once
    /// `admin add-replica` or `remove-replica` changed the group: the
    /// replicated log's genesis configuration must stay what it was.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub genesis: BTreeMap<String, Vec<u64>>,
    /// Node ids removed from each group (gid as text): never given to a new
    /// replica, whose empty acceptor state must not answer for the old one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retired: BTreeMap<String, Vec<u64>>,
    /// Every node.
    pub nodes: Vec<ClusterNode>,
}

/// A cluster file that cannot be used; the text names the file and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ClusterFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong and how to fix it.
    pub reason: String,
}

/// The shape of a new cluster (`kvctl cluster init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Controller replicas.
    pub controllers: u32,
    /// Replica groups.
    pub groups: u32,
    /// Replicas per group.
    pub replicas: u32,
    /// Shards of configuration 0.
    pub shards: u32,
    /// First port.
    pub base_port: u16,
    /// Mutual TLS on every connection.
    pub tls: bool,
}

impl ClusterFile {
    /// A new cluster of `shape` on 127.0.0.1: controllers `c1..`, group
    /// replicas `g{gid}-n{id}`, ports from `base_port` up.
    pub fn generate(shape: Shape) -> Result<ClusterFile, String> {
        for (what, count) in [
            ("--controllers", shape.controllers),
            ("--replicas", shape.replicas),
        ] {
            if !(1..=7).contains(&count) {
                return Err(format!(
                    "{what} {count}: a replicated service needs 1 to 7 replicas (3 or 5 \
                     tolerate failures)"
                ));
            }
        }
        if !(1..=100).contains(&shape.groups) {
            return Err(format!("--groups {}: use 1 to 100", shape.groups));
        }
        let max_shards = controller::limits::MAX_INITIAL_SHARDS;
        if !(1..=max_shards).contains(&shape.shards) {
            return Err(format!("--shards {}: use 1 to {max_shards}", shape.shards));
        }
        let count = shape.controllers + shape.groups * shape.replicas;
        let last = u32::from(shape.base_port) + count * u32::from(PORTS_PER_NODE);
        if shape.base_port < 1024 || last > u32::from(u16::MAX) {
            return Err(format!(
                "--base-port {}: {count} nodes need {} ports from there, between 1024 and 65535",
                shape.base_port,
                count * u32::from(PORTS_PER_NODE)
            ));
        }
        let mut next_port = shape.base_port;
        let mut take = || {
            let port = next_port;
            next_port += 1;
            SocketAddr::from((Ipv4Addr::LOCALHOST, port))
        };
        let mut nodes = Vec::new();
        for id in 1..=u64::from(shape.controllers) {
            let (peer_addr, client_addr, _unused) = (take(), take(), take());
            nodes.push(ClusterNode {
                name: format!("c{id}"),
                role: Role::Controller,
                gid: None,
                node_id: id,
                peer_addr,
                client_addr,
                http_addr: None,
            });
        }
        for gid in 1..=u64::from(shape.groups) {
            for id in 1..=u64::from(shape.replicas) {
                let (peer_addr, client_addr, http_addr) = (take(), take(), take());
                nodes.push(ClusterNode {
                    name: format!("g{gid}-n{id}"),
                    role: Role::Group,
                    gid: Some(gid),
                    node_id: id,
                    peer_addr,
                    client_addr,
                    http_addr: Some(http_addr),
                });
            }
        }
        let (cluster_id, secret) = crate::access::generate()?;
        let file = ClusterFile {
            shards: shape.shards,
            cluster_id: Some(cluster_id),
            secret: Some(secret),
            tls: shape.tls,
            tls_config: None,
            genesis: BTreeMap::new(),
            retired: BTreeMap::new(),
            nodes,
        };
        file.check()?;
        Ok(file)
    }

    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<ClusterFile, ClusterFileError> {
        let error = |reason: String| ClusterFileError {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            error(format!(
                "cannot read the cluster file: {e} (create a cluster with `kvctl cluster init`, \
                 or point at one with --cluster FILE or KV_CLUSTER)"
            ))
        })?;
        let mut file: ClusterFile =
            toml::from_str(&text).map_err(|e| error(e.to_string().trim_end().to_string()))?;
        file.check().map_err(error)?;
        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        file.load_tls(dir).map_err(error)?;
        Ok(file)
    }

    /// Reads kvctl's TLS settings from `dir/tls` if the cluster has TLS.
    pub fn load_tls(&mut self, dir: &Path) -> Result<(), String> {
        if self.tls {
            let tls = dir.join("tls");
            self.tls_config = Some(paxos_log::TlsConfig::load(
                &tls.join("ca.pem"),
                &tls.join("client.pem"),
                &tls.join("client-key.pem"),
            )?);
        }
        Ok(())
    }

    /// The file's text (with a header comment).
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!(
            "# A shardkv cluster: every node's name, role, group and addresses.\n\
             # Written by `kvctl cluster init`; each node's own settings are in NODE/kvd.toml.\n\n\
             {body}"
        )
    }

    /// Network settings for talking to the cluster's nodes: the defaults,
    /// with the cluster's access key.
    pub fn net(&self) -> paxos_log::NetLimits {
        paxos_log::NetLimits {
            // `check` refused a file whose key does not parse.
            access: crate::access::access_key(self.cluster_id.as_deref(), self.secret.as_ref())
                .ok()
                .flatten(),
            tls: self.tls_config.clone(),
            ..paxos_log::NetLimits::default()
        }
    }

    /// Every rule a usable file follows.
    pub fn check(&self) -> Result<(), String> {
        crate::access::access_key(self.cluster_id.as_deref(), self.secret.as_ref())?;
        let mut names = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        let mut ids = BTreeSet::new();
        if self.shards == 0 {
            return Err("`shards` is 0: configuration 0 needs at least one shard".into());
        }
        for node in &self.nodes {
            let valid_name = !node.name.is_empty()
                && node
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid_name {
                return Err(format!(
                    "node name {:?}: use letters, digits, '-' and '_' (it names a directory)",
                    node.name
                ));
            }
            if !names.insert(node.name.as_str()) {
                return Err(format!("node name {:?} appears twice", node.name));
            }
            for addr in [Some(node.peer_addr), Some(node.client_addr), node.http_addr]
                .into_iter()
                .flatten()
            {
                if !addrs.insert(addr) {
                    return Err(format!(
                        "address {addr} appears twice: every node needs its own ports"
                    ));
                }
            }
            let group = match (node.role, node.gid) {
                (Role::Controller, None) => 0,
                (Role::Group, Some(gid)) if gid > 0 => gid,
                (Role::Controller, Some(_)) => {
                    return Err(format!("node {}: a controller has no `gid`", node.name))
                }
                (Role::Group, _) => {
                    return Err(format!(
                        "node {}: a group replica needs `gid` (1 or more)",
                        node.name
                    ))
                }
            };
            if node.node_id == 0 || !ids.insert((group, node.node_id)) {
                return Err(format!(
                    "node {}: `node_id` {} is 0 or used twice in its group",
                    node.name, node.node_id
                ));
            }
        }
        if self.controllers().next().is_none() {
            return Err("no node has role = \"controller\"".into());
        }
        Ok(())
    }

    /// The controller replicas.
    pub fn controllers(&self) -> impl Iterator<Item = &ClusterNode> {
        self.nodes.iter().filter(|n| n.role == Role::Controller)
    }

    /// The controllers' client addresses.
    pub fn controller_addrs(&self) -> Vec<SocketAddr> {
        self.controllers().map(|n| n.client_addr).collect()
    }

    /// The replicas of each group, by gid.
    pub fn groups(&self) -> BTreeMap<u64, Vec<&ClusterNode>> {
        let mut groups: BTreeMap<u64, Vec<&ClusterNode>> = BTreeMap::new();
        for node in &self.nodes {
            if let Some(gid) = node.gid {
                groups.entry(gid).or_default().push(node);
            }
        }
        groups
    }

    /// The first port above every port the file uses.
    pub fn next_port(&self) -> u32 {
        self.nodes
            .iter()
            .flat_map(|n| [Some(n.peer_addr), Some(n.client_addr), n.http_addr])
            .flatten()
            .map(|a| u32::from(a.port()) + 1)
            .max()
            .unwrap_or(1024)
    }

    /// Adds group `max gid + 1` with `replicas` replicas on the next free
    /// ports (by the file); returns its gid.
    pub fn add_group(&mut self, replicas: u32) -> Result<u64, String> {
        if !(1..=7).contains(&replicas) {
            return Err(format!(
                "--replicas {replicas}: use 1 to 7 (3 or 5 tolerate failures)"
            ));
        }
        let gid = self.groups().keys().max().map_or(1, |g| g + 1);
        for id in 1..=replicas {
            self.add_group_node(gid, &format!("g{gid}-n{id}"))?;
        }
        Ok(gid)
    }

    /// Adds a replica named `name` to group `gid`, with a node id the group
    /// never used (above its members', genesis members' and retired ids)
    /// and the next three free ports (by the file); the new node. On error
    /// the file is unchanged.
    pub fn add_group_node(&mut self, gid: u64, name: &str) -> Result<ClusterNode, String> {
        let key = gid.to_string();
        let past = [self.genesis.get(&key), self.retired.get(&key)]
            .into_iter()
            .flatten()
            .flatten()
            .copied();
        let node_id = self
            .nodes
            .iter()
            .filter(|n| n.gid == Some(gid))
            .map(|n| n.node_id)
            .chain(past)
            .max()
            .unwrap_or(0)
            + 1;
        let first = self.next_port();
        let host = self
            .nodes
            .first()
            .map_or(Ipv4Addr::LOCALHOST.into(), |n| n.client_addr.ip());
        let port = |k: u32| -> Result<SocketAddr, String> {
            u16::try_from(first + k)
                .map(|p| SocketAddr::new(host, p))
                .map_err(|_| format!("no {PORTS_PER_NODE} free ports left above {first}"))
        };
        let node = ClusterNode {
            name: name.to_string(),
            role: Role::Group,
            gid: Some(gid),
            node_id,
            peer_addr: port(0)?,
            client_addr: port(1)?,
            http_addr: Some(port(2)?),
        };
        self.nodes.push(node.clone());
        if let Err(reason) = self.check() {
            self.nodes.pop();
            return Err(reason);
        }
        Ok(node)
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&ClusterNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The `kvd.toml` of `node`: its group's members are every node of the
    /// file with the same role and gid.
    pub fn kvd_toml(&self, node: &ClusterNode) -> String {
        let mut text = format!(
            "# kvd configuration of node {name}, written by `kvctl cluster init`.\n\
             # Every key is documented in the tools crate (kvd_config.rs).\n\n\
             name = \"{name}\"\nrole = \"{role}\"\nnode_id = {id}\n",
            name = node.name,
            role = match node.role {
                Role::Controller => "controller",
                Role::Group => "group",
            },
            id = node.node_id,
        );
        if let Some(gid) = node.gid {
            let _ = writeln!(text, "gid = {gid}");
        }
        let _ = writeln!(text, "data_dir = \"data\"");
        let _ = writeln!(text, "peer_addr = \"{}\"", node.peer_addr);
        let _ = writeln!(text, "client_addr = \"{}\"", node.client_addr);
        if let (Some(id), Some(secret)) = (&self.cluster_id, &self.secret) {
            // As TOML strings: a hand-edited value cannot break the file.
            let quoted = |v: &str| toml::Value::String(v.to_string()).to_string();
            let _ = writeln!(
                text,
                "cluster_id = {}\nsecret = {}",
                quoted(id),
                quoted(secret.expose())
            );
        }
        if self.tls {
            let _ = writeln!(
                text,
                "tls_ca = \"tls/ca.pem\"\ntls_cert = \"tls/node.pem\"\ntls_key = \"tls/node-key.pem\""
            );
        }
        match node.role {
            Role::Controller => {
                let _ = writeln!(text, "initial_shards = {}", self.shards);
            }
            Role::Group => {
                if let Some(http) = node.http_addr {
                    let _ = writeln!(text, "http_addr = \"{http}\"");
                }
                let controllers: Vec<String> = self
                    .controller_addrs()
                    .iter()
                    .map(|a| format!("\"{a}\""))
                    .collect();
                let _ = writeln!(text, "controllers = [{}]", controllers.join(", "));
                let genesis = node.gid.and_then(|gid| self.genesis.get(&gid.to_string()));
                if let Some(ids) = genesis {
                    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
                    let _ = writeln!(text, "genesis_members = [{}]", ids.join(", "));
                }
            }
        }
        for member in self
            .nodes
            .iter()
            .filter(|m| m.role == node.role && m.gid == node.gid)
        {
            let _ = write!(
                text,
                "\n[[members]]\nnode_id = {}\npeer_addr = \"{}\"\nclient_addr = \"{}\"\n",
                member.node_id, member.peer_addr, member.client_addr
            );
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvd_config::{KvdConfig, NodeConfig};

    fn shape() -> Shape {
        Shape {
            controllers: 3,
            groups: 2,
            replicas: 3,
            shards: 8,
            base_port: 7400,
            tls: false,
        }
    }

    #[test]
    fn a_generated_cluster_round_trips_and_every_kvd_toml_validates() {
        let file = ClusterFile::generate(shape()).unwrap();
        assert_eq!(file.nodes.len(), 9);
        let again: ClusterFile = toml::from_str(&file.to_toml()).unwrap();
        assert_eq!(again, file);
        for node in &file.nodes {
            let config: KvdConfig = toml::from_str(&file.kvd_toml(node)).unwrap();
            let path = PathBuf::from(format!("/c/{}/kvd.toml", node.name));
            match config.validate(&path).unwrap() {
                NodeConfig::Controller(c) => {
                    assert_eq!(c.members.len(), 3);
                    assert_eq!(c.initial_shards, 8);
                }
                NodeConfig::Group(g) => {
                    assert_eq!(g.server.members.len(), 3);
                    assert_eq!(Some(g.server.gid), node.gid);
                    assert_eq!(g.http_addr, node.http_addr);
                }
            }
        }
    }

    #[test]
    fn bad_shapes_and_files_are_refused_with_the_reason() {
        let too_high = Shape {
            base_port: 65530,
            ..shape()
        };
        assert!(ClusterFile::generate(too_high)
            .unwrap_err()
            .contains("--base-port"));
        let no_shards = Shape {
            shards: 0,
            ..shape()
        };
        assert!(ClusterFile::generate(no_shards)
            .unwrap_err()
            .contains("--shards"));
        let mut file = ClusterFile::generate(shape()).unwrap();
        file.nodes[4].client_addr = file.nodes[3].peer_addr;
        assert!(file.check().unwrap_err().contains("appears twice"));
        let mut file = ClusterFile::generate(shape()).unwrap();
        file.nodes[1].name = "../x".into();
        assert!(file.check().unwrap_err().contains("names a directory"));
    }

    #[test]
    fn a_new_replica_never_reuses_a_node_id_and_takes_fresh_ports() {
        let mut file = ClusterFile::generate(shape()).unwrap();
        let before = file.next_port();
        let node = file.add_group_node(1, "g1-n4").unwrap();
        assert_eq!(node.node_id, 4);
        assert_eq!(node.peer_addr.port(), u16::try_from(before).unwrap());
        assert_eq!(file.next_port(), before + u32::from(PORTS_PER_NODE));
        // Node 4 removed (retired), node 1 a genesis member: the next is 5.
        file.nodes.retain(|n| n.name != "g1-n4");
        file.retired.insert("1".into(), vec![4]);
        file.genesis.insert("1".into(), vec![1, 2, 3]);
        assert_eq!(file.add_group_node(1, "g1-n5").unwrap().node_id, 5);
        // A bad name changes nothing.
        let count = file.nodes.len();
        assert!(file.add_group_node(1, "g1/n6").is_err());
        assert_eq!(file.nodes.len(), count);
        let again: ClusterFile = toml::from_str(&file.to_toml()).unwrap();
        assert_eq!(again, file);
    }
}
