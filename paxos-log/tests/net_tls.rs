//! Mutual TLS on the network transport (`paxos_log::net::tls`): a server
//! with the cluster's CA serves clients whose certificates the CA signed,
//! and refuses (logs, counts, closes) a plaintext client and a client with
//! another CA's certificate, without disturbing the others. The access
//! hello runs inside TLS.

use paxos_log::net::tls::SERVER_NAME;
use paxos_log::net::{connect, AccessKey, TlsConfig};
use paxos_log::NetLimits;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

mod cluster;
use cluster::lone::{answers, lone_replica, wait_refused};

/// A certificate authority: its certificate (PEM) and what signs with it.
struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA certificate");
        Authority { cert, key }
    }

    /// TLS settings for a party whose certificate this CA signs, trusting
    /// `trusted`'s certificates.
    fn party(&self, trusted: &Authority) -> TlsConfig {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec![SERVER_NAME.to_string()]).expect("params");
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("certificate");
        TlsConfig::from_pem(
            trusted.cert.pem().as_bytes(),
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
        )
        .expect("TLS settings")
    }
}

fn net(tls: Option<TlsConfig>) -> NetLimits {
    NetLimits {
        tls,
        access: Some(AccessKey::new("kv-ours", b"the secret".to_vec()).expect("key")),
        ..NetLimits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_clients_with_a_certificate_from_the_clusters_ca_get_in() {
    let ours = Authority::new("shardkv cluster CA");
    let theirs = Authority::new("another CA");
    let (node, server) = lone_replica(&net(Some(ours.party(&ours)))).await;
    let addr = server.local_addr();

    let member = connect(addr, &net(Some(ours.party(&ours))))
        .await
        .expect("a client with the cluster's certificate gets in");
    assert!(answers(&member).await);

    // A plaintext client (right secret, no TLS): its hello is seen for what
    // it is, and answered "TLS required" before the secret is even read.
    let plaintext = connect(addr, &net(None))
        .await
        .expect_err("a plaintext client is refused");
    assert_eq!(plaintext.kind(), std::io::ErrorKind::PermissionDenied);
    assert!(
        plaintext.to_string().contains("requires TLS"),
        "{plaintext}"
    );
    let stats = wait_refused(&server, 1).await;
    assert_eq!(stats.connections.connections_unauthorized, 1, "{stats:?}");

    // A certificate from another CA: the server refuses it. (TLS 1.3 lets
    // the client finish its side first; it learns from the server's alert,
    // reading the answer to its hello.)
    let stranger = connect(addr, &net(Some(theirs.party(&ours))))
        .await
        .expect_err("another CA's certificate is refused");
    assert_eq!(stranger.kind(), std::io::ErrorKind::PermissionDenied);
    assert!(
        stranger.to_string().contains("TLS handshake failed"),
        "{stranger}"
    );
    let stats = wait_refused(&server, 2).await;
    assert_eq!(stats.connections.connections_unauthorized, 2, "{stats:?}");

    // A client that trusts another CA refuses the server.
    let doubting = connect(addr, &net(Some(ours.party(&theirs))))
        .await
        .expect_err("a client that does not trust the server's CA stops");
    assert_eq!(doubting.kind(), std::io::ErrorKind::PermissionDenied);
    assert!(
        doubting.to_string().contains("TLS handshake failed"),
        "{doubting}"
    );

    assert_eq!(server.stats().connections.connection_panics, 0);
    assert!(answers(&member).await, "the member was disturbed");
    drop(member);
    server.shutdown().await;
    node.stop().expect("replica thread ends cleanly");
}

#[test]
fn unusable_files_are_refused_with_what_is_wrong() {
    let ours = Authority::new("shardkv cluster CA");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec![SERVER_NAME.to_string()])
        .expect("params")
        .signed_by(&key, &ours.cert, &ours.key)
        .expect("certificate");
    let (ca, cert, key) = (ours.cert.pem(), cert.pem(), key.serialize_pem());
    let error = |ca: &str, cert: &str, key: &str| {
        TlsConfig::from_pem(ca.as_bytes(), cert.as_bytes(), key.as_bytes()).expect_err("refused")
    };
    assert!(error("", &cert, &key).contains("CA file holds no certificate"));
    assert!(error(&ca, "", &key).contains("certificate file holds no certificate"));
    assert!(error(&ca, &cert, "not a key").contains("private key"));
    let other = KeyPair::generate().expect("key").serialize_pem();
    assert!(error(&ca, &cert, &other).contains("do not make"));
    let missing = TlsConfig::load(
        std::path::Path::new("/nonexistent/ca.pem"),
        std::path::Path::new("/nonexistent/cert.pem"),
        std::path::Path::new("/nonexistent/key.pem"),
    )
    .expect_err("missing files");
    assert!(missing.contains("/nonexistent/ca.pem"), "{missing}");
}
