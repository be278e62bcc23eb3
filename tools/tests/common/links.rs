//! Fault-injecting TCP proxies on the links between the nodes of a test
//! cluster, for partitions and one-way link loss between real processes.
//!
//! Every replica reaches each peer at the address its `kvd.toml` gives for
//! that member. [`Links::interpose`] rewrites those addresses so that node A
//! reaches node B through a proxy of its own, the link A→B. A link that is
//! up forwards bytes both ways. Cutting it closes every connection it
//! carries, and while it is down a new connection is accepted and then
//! ignored (no byte is forwarded, nothing is answered), as a network that
//! drops packets would: the sender learns of it only from its timeouts.
//! Cutting A→B alone is one-way loss: A's messages to B vanish while B's
//! messages to A (over the link B→A) still arrive. Cutting every link to
//! and from A isolates it.
//!
//! Only the consensus links are proxied. Clients, the controller's queries
//! and shard transfers between groups use the nodes' client addresses,
//! which stay direct.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

/// How long a proxy waits to connect to its target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// One proxied link: the node `from` reaches the node `to` through it.
struct Link {
    up: watch::Sender<bool>,
    task: AbortHandle,
}

/// The proxies of a cluster, by (from, to) node name. Dropping it stops
/// every proxy and closes every connection they carry.
#[derive(Default)]
pub struct Links {
    links: BTreeMap<(String, String), Link>,
    /// Connections forwarded, over every link: evidence the nodes talk
    /// through the proxies at all.
    carried: Arc<AtomicU64>,
}

impl Links {
    /// Puts a proxy on every link between members of the same replica set
    /// (the controllers; each group) of the cluster in `dir`, and rewrites
    /// each node's `kvd.toml` to reach its peers through them. Must run
    /// before the nodes start, within a tokio runtime.
    pub async fn interpose(dir: &Path, nodes: &[String]) -> Links {
        let mut links = Links::default();
        for node in nodes {
            let path = dir.join(node).join("kvd.toml");
            let text = std::fs::read_to_string(&path).expect("read kvd.toml");
            let mut config: toml::Table = text.parse().expect("parse kvd.toml");
            let me = config["node_id"].as_integer().expect("node_id");
            let peers: Vec<(i64, String)> = config["members"]
                .as_array()
                .expect("members")
                .iter()
                .map(|m| {
                    let id = m["node_id"].as_integer().expect("member node_id");
                    let addr = m["peer_addr"].as_str().expect("member peer_addr");
                    (id, addr.to_string())
                })
                .filter(|(id, _)| *id != me)
                .collect();
            let mut proxied = BTreeMap::new();
            for (id, target) in peers {
                let to = peer_name(nodes, node, id);
                let target: SocketAddr = target.parse().expect("peer address");
                let (listen, link) = Link::start(target, Arc::clone(&links.carried)).await;
                proxied.insert(id, listen);
                links.links.insert((node.clone(), to), link);
            }
            for member in config
                .get_mut("members")
                .and_then(toml::Value::as_array_mut)
                .expect("members")
            {
                let id = member["node_id"].as_integer().expect("member node_id");
                if let Some(listen) = proxied.get(&id) {
                    member["peer_addr"] = toml::Value::String(listen.to_string());
                }
            }
            std::fs::write(&path, toml::to_string(&config).expect("write kvd.toml"))
                .expect("write kvd.toml");
        }
        links
    }

    /// Every proxied link, as (from, to).
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.links.keys().cloned().collect()
    }

    /// The nodes `node` has a link to.
    pub fn peers_of(&self, node: &str) -> Vec<String> {
        self.links
            .keys()
            .filter(|(from, _)| from == node)
            .map(|(_, to)| to.clone())
            .collect()
    }

    /// Cuts (`up == false`) or restores the link `from`→`to`.
    pub fn set(&self, from: &str, to: &str, up: bool) {
        if let Some(link) = self.links.get(&(from.to_string(), to.to_string())) {
            link.up.send_replace(up);
        }
    }

    /// Cuts or restores every link to and from `node`.
    pub fn set_node(&self, node: &str, up: bool) {
        for ((from, to), link) in &self.links {
            if from == node || to == node {
                link.up.send_replace(up);
            }
        }
    }

    /// Connections forwarded so far, over every link.
    pub fn carried(&self) -> u64 {
        self.carried.load(Ordering::Relaxed)
    }

    /// Restores every link.
    pub fn heal(&self) {
        for link in self.links.values() {
            link.up.send_replace(true);
        }
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        for link in self.links.values() {
            link.task.abort();
        }
    }
}

/// The name of `peer_id` among `nodes` in the same replica set as `node`:
/// a group node is `g{gid}-n{id}`, a controller `c{id}`.
fn peer_name(nodes: &[String], node: &str, peer_id: i64) -> String {
    let name = match node.split_once("-n") {
        Some((group, _)) => format!("{group}-n{peer_id}"),
        None => format!("c{peer_id}"),
    };
    assert!(
        nodes.contains(&name),
        "{node}'s peer {peer_id} is not a node"
    );
    name
}

impl Link {
    /// A proxy to `target` on a port the OS picks, up.
    async fn start(target: SocketAddr, carried: Arc<AtomicU64>) -> (SocketAddr, Link) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let listen = listener.local_addr().expect("proxy address");
        let (up, _) = watch::channel(true);
        let state = up.clone();
        let task = tokio::spawn(async move {
            // Dropping the set (the task aborted) aborts every connection.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((inbound, _)) = accepted {
                            let carried = Arc::clone(&carried);
                            connections.spawn(carry(inbound, target, state.subscribe(), carried));
                        }
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        let link = Link {
            up,
            task: task.abort_handle(),
        };
        (listen, link)
    }
}

/// Serves one connection of a link: forwards while the link is up, closes
/// it when the link is cut; accepted while down, it is ignored until the
/// link comes back, then closed (the sender reconnects).
async fn carry(
    mut inbound: TcpStream,
    target: SocketAddr,
    mut up: watch::Receiver<bool>,
    carried: Arc<AtomicU64>,
) {
    if !*up.borrow_and_update() {
        tokio::select! {
            _ = up.wait_for(|up| *up) => {}
            () = discard(&mut inbound) => {}
        }
        return;
    }
    let Ok(Ok(mut outbound)) =
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await
    else {
        return;
    };
    carried.fetch_add(1, Ordering::Relaxed);
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = up.wait_for(|up| !*up) => {}
    }
}

/// Reads and drops everything until the peer closes.
async fn discard(stream: &mut TcpStream) {
    let mut buffer = vec![0u8; 64 << 10];
    while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {}
}
