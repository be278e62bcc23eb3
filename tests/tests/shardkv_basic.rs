//! shardkv end to end, the basics: every client operation through the
//! clerk against real replica groups (loopback tarpc, WAL, sled in
//! temporary directories), and a join that moves shards while the data
//! stays intact.

use std::future::Future;
use std::time::Duration;

use shardkv::hash::put_hash;
use shardkv::{CasResult, ClerkError, KvError};
use tests::shardkv_cluster::{Cluster, ClusterOptions};

/// Runs `body` or fails the test after `limit`.
async fn bounded<F: Future>(limit: Duration, body: F) -> F::Output {
    tokio::time::timeout(limit, body)
        .await
        .expect("test timed out")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_operation_through_the_clerk() {
    bounded(Duration::from_secs(60), async {
        let mut cluster = Cluster::start(ClusterOptions::default()).await;
        cluster.add_group(1).await;
        let num = cluster.join(&[1]).await;
        cluster
            .wait_settled(&[1], num, Duration::from_secs(20))
            .await;
        let mut clerk = cluster.clerk(1);

        assert_eq!(clerk.get(b"a").await.unwrap(), None);
        clerk.put(b"a", b"1").await.unwrap();
        clerk.append(b"a", b"2").await.unwrap();
        assert_eq!(clerk.get(b"a").await.unwrap(), Some(b"12".to_vec()));
        assert_eq!(
            clerk.cas(b"a", Some(b"xx"), b"3").await.unwrap(),
            CasResult {
                swapped: false,
                current: Some(b"12".to_vec())
            }
        );
        assert_eq!(
            clerk.cas(b"a", Some(b"12"), b"3").await.unwrap(),
            CasResult {
                swapped: true,
                current: None
            }
        );
        assert_eq!(
            clerk.cas(b"new", None, b"n").await.unwrap(),
            CasResult {
                swapped: true,
                current: None
            }
        );
        assert_eq!(clerk.put_hash(b"h", b"x").await.unwrap(), None);
        assert_eq!(
            clerk.put_hash(b"h", b"y").await.unwrap(),
            Some(put_hash(None, b"x"))
        );
        assert_eq!(
            clerk.get(b"h").await.unwrap(),
            Some(put_hash(Some(&put_hash(None, b"x")), b"y"))
        );
        clerk.delete(b"new").await.unwrap();
        assert_eq!(clerk.get(b"new").await.unwrap(), None);

        // Scans cross shard boundaries (10 pre-split shards) in key order.
        for key in ["0", "5", "A", "M", "Z", "b", "q", "z", "~"] {
            clerk.put(key.as_bytes(), key.as_bytes()).await.unwrap();
        }
        let items = clerk.scan(b"", None, 100).await.unwrap();
        let keys: Vec<String> = items
            .iter()
            .map(|(k, _)| String::from_utf8(k.clone()).unwrap())
            .collect();
        assert_eq!(
            keys,
            ["0", "5", "A", "M", "Z", "a", "b", "h", "q", "z", "~"]
        );
        let items = clerk.scan(b"5", Some(b"q"), 3).await.unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].0, b"5");
        assert_eq!(items[2].0, b"M");

        // Limits.
        let big = vec![b'v'; cluster.options.limits.value_bytes_max + 1];
        match clerk.put(b"big", &big).await {
            Err(ClerkError::Refused(KvError::ValueTooLarge { .. })) => {}
            other => panic!("oversized value: {other:?}"),
        }
        let long_key = vec![b'k'; cluster.options.limits.key_bytes_max + 1];
        match clerk.get(&long_key).await {
            Err(ClerkError::Refused(KvError::KeyTooLarge { .. })) => {}
            other => panic!("oversized key: {other:?}"),
        }
        drop(clerk);
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn join_moves_shards_and_keeps_the_data() {
    bounded(Duration::from_secs(90), async {
        let mut cluster = Cluster::start(ClusterOptions::default()).await;
        cluster.add_group(1).await;
        let num = cluster.join(&[1]).await;
        cluster
            .wait_settled(&[1], num, Duration::from_secs(20))
            .await;
        let mut clerk = cluster.clerk(1);
        // Keys starting with every third printable character: all shards.
        let keys: Vec<Vec<u8>> = (0u8..60)
            .map(|i| format!("{}{i}", char::from(b' ' + i * 3 % 94)).into_bytes())
            .collect();
        for key in &keys {
            clerk.put(key, key).await.unwrap();
        }
        cluster.add_group(2).await;
        let num = cluster.join(&[2]).await;
        cluster
            .wait_settled(&[1, 2], num, Duration::from_secs(30))
            .await;
        let config = cluster.latest().await;
        assert!(config.shards.iter().any(|s| s.gid == Some(2)));
        for key in &keys {
            assert_eq!(
                clerk.get(key).await.unwrap().as_deref(),
                Some(key.as_slice())
            );
        }
        drop(clerk);
        cluster.shutdown().await;
    })
    .await;
}
