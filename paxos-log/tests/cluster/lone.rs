//! One replica serving on loopback, for the tests of what its server lets
//! in (`net_access.rs`, `net_tls.rs`): its own messages go nowhere, and the
//! tests only care whether a client is served or refused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use paxos_log::net::rpc::PaxosPeerClient;
use paxos_log::net::{PeerListener, ServerHandle, ServerStats};
use paxos_log::{
    ChannelTransport, Config, DriverOptions, MemAcceptorStore, NetLimits, Node, NodeId,
};

use super::LogMachine;

/// The group id the lone replica serves.
pub const GROUP: u64 = 42;

/// Replica n1 of {n1, n2, n3}, alone, serving on loopback with `net`.
pub async fn lone_replica(net: &NetLimits) -> (Node<LogMachine>, ServerHandle) {
    let node = Node::start(
        Config::new(NodeId(1), (1..=3).map(NodeId).collect()),
        MemAcceptorStore::new(),
        LogMachine::default(),
        Arc::new(ChannelTransport::new()),
        DriverOptions::default(),
    )
    .expect("replica starts");
    let listener = PeerListener::bind(([127, 0, 0, 1], 0).into(), net.clone())
        .await
        .expect("bind");
    let server = listener.start(node.handle(), GROUP);
    (node, server)
}

/// Whether an empty `deliver` on `client`'s connection is answered.
pub async fn answers(client: &PaxosPeerClient) -> bool {
    let mut context = tarpc::context::current();
    context.deadline = Instant::now() + Duration::from_secs(5);
    client.deliver(context, GROUP, Vec::new()).await.is_ok()
}

/// Waits (up to 10 s) until the server has refused `count` connections;
/// the statistics then.
pub async fn wait_refused(server: &ServerHandle, count: u64) -> ServerStats {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = server.stats();
        if stats.connections.connections_unauthorized >= count || Instant::now() >= deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
