//! Access control on the network transport (`paxos_log::net::access`): a
//! server with a cluster key lets in only clients that prove the same
//! cluster id and secret, refuses the rest (logged and counted) and closes
//! only their connections; the others go on.

use fuzz_support::cases;
use paxos_log::net::{connect, AccessKey};
use paxos_log::NetLimits;
use tokio::io::AsyncWriteExt;

mod cluster;
use cluster::lone::{answers, lone_replica, wait_refused};

fn net(key: Option<AccessKey>) -> NetLimits {
    NetLimits {
        access: key,
        ..NetLimits::default()
    }
}

fn key(cluster_id: &str, secret: &[u8]) -> Option<AccessKey> {
    Some(AccessKey::new(cluster_id, secret.to_vec()).expect("a valid key"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_clients_with_the_clusters_id_and_secret_get_in() {
    let ours = key("kv-ours", b"the secret");
    let (node, server) = lone_replica(&net(ours.clone())).await;
    let addr = server.local_addr();

    // The right key: in, and served.
    let member = connect(addr, &net(ours))
        .await
        .expect("the right key gets in");
    assert!(answers(&member).await);

    // A wrong secret, another cluster: refused, with a message naming what
    // to fix, each counted.
    let wrong_secret = connect(addr, &net(key("kv-ours", b"a guess")))
        .await
        .expect_err("a wrong secret is refused");
    assert_eq!(wrong_secret.kind(), std::io::ErrorKind::PermissionDenied);
    assert!(
        wrong_secret.to_string().contains("wrong cluster secret"),
        "{wrong_secret}"
    );
    let stats = wait_refused(&server, 1).await;
    assert_eq!(stats.connections.connections_unauthorized, 1, "{stats:?}");

    let other_cluster = connect(addr, &net(key("kv-theirs", b"the secret")))
        .await
        .expect_err("another cluster's key is refused");
    assert_eq!(other_cluster.kind(), std::io::ErrorKind::PermissionDenied);
    assert!(
        other_cluster.to_string().contains("another cluster"),
        "{other_cluster}"
    );
    wait_refused(&server, 2).await;

    // No key at all: the client's first frame is not a hello; the server
    // closes the connection and the call fails.
    let stranger = connect(addr, &net(None))
        .await
        .expect("a plain TCP connect succeeds");
    assert!(
        !answers(&stranger).await,
        "a client without the key was served"
    );
    wait_refused(&server, 3).await;

    // Raw bytes that start like a hello but stop: refused once the
    // handshake times out or the stream ends, nothing else disturbed.
    let mut raw = tokio::net::TcpStream::connect(addr).await.expect("connect");
    raw.write_all(b"SKVA\x01\x07kv-o").await.expect("write");
    raw.shutdown().await.expect("half-close");
    let stats = wait_refused(&server, 4).await;
    assert_eq!(stats.connections.connections_unauthorized, 4, "{stats:?}");
    assert_eq!(stats.connections.connection_panics, 0, "{stats:?}");

    // The member's connection was never disturbed.
    assert!(answers(&member).await);
    drop(member);
    server.shutdown().await;
    node.stop().expect("replica thread ends cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_just_ends_is_retryable_not_a_refusal() {
    // A server without access control closes on the hello (it is not a
    // frame); so does a server over its connection limit, or one stopping.
    // None of them refused the key: clients must try elsewhere, not stop.
    let (node, server) = lone_replica(&net(None)).await;
    let closed = connect(server.local_addr(), &net(key("kv-ours", b"s")))
        .await
        .expect_err("a server without access control cannot answer the hello");
    assert_eq!(closed.kind(), std::io::ErrorKind::ConnectionAborted);
    assert!(closed.to_string().contains("access handshake"), "{closed}");
    server.shutdown().await;
    node.stop().expect("replica thread ends cleanly");

    let full = NetLimits {
        max_connections: 0,
        ..net(key("kv-ours", b"s"))
    };
    let (node, server) = lone_replica(&full).await;
    let busy = connect(server.local_addr(), &net(key("kv-ours", b"s")))
        .await
        .expect_err("no connection is served");
    assert_ne!(busy.kind(), std::io::ErrorKind::PermissionDenied, "{busy}");
    server.shutdown().await;
    node.stop().expect("replica thread ends cleanly");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        // For longer runs: `PROPTEST_CASES=5000 cargo nextest run -p
        // paxos-log --test net_access`.
        cases: cases(64),
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// Fuzz target for the server's side of the handshake: whatever bytes
    /// a stranger sends first (a mangled hello, a hello with a guessed
    /// secret, junk), the connection is refused and counted, nothing
    /// panics, and a member's connection is still served.
    #[test]
    fn whatever_a_stranger_sends_first_is_refused(
        junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        prefix_hello in proptest::prelude::any::<bool>(),
        cut in proptest::prelude::any::<proptest::sample::Index>(),
    ) {
        // Half the time the bytes start like a real hello of this cluster,
        // cut somewhere, with junk after.
        let hello = b"SKVA\x01\x07kv-ours\x0athe secret";
        let mut bytes = Vec::new();
        if prefix_hello {
            bytes.extend_from_slice(&hello[..cut.index(hello.len())]);
        }
        bytes.extend_from_slice(&junk);
        // The junk may complete the hello (a right guess): not a stranger.
        proptest::prop_assume!(!bytes.starts_with(hello));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let ours = key("kv-ours", b"the secret");
            let (node, server) = lone_replica(&net(ours.clone())).await;
            let addr = server.local_addr();
            let member = connect(addr, &net(ours)).await.expect("the right key gets in");
            let mut raw = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let _ = raw.write_all(&bytes).await;
            let _ = raw.shutdown().await;
            let stats = wait_refused(&server, 1).await;
            assert_eq!(stats.connections.connections_unauthorized, 1, "{bytes:?}: {stats:?}");
            assert_eq!(stats.connections.connection_panics, 0, "{stats:?}");
            assert!(answers(&member).await, "the member is still served after {bytes:?}");
            drop(member);
            server.shutdown().await;
            node.stop().expect("replica thread ends cleanly");
        });
    }
}
