//! Shard export images (`export_begin`, `export_chunk`, `export_end`, the
//! server side of `kvctl snapshot export`) against a real in-process
//! cluster: an image is the shard at one moment, however long it is paged
//! through and whatever is written meanwhile; it outlives a move of the
//! shard; a replica holds a bounded number of them.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use shardkv::export::{ExportBegin, ExportImage, EXPORT_IMAGES_MAX};
use shardkv::{Clerk, ClerkError};
use tests::shardkv_cluster::{clerk_options, Cluster, ClusterOptions};

/// Runs `body` or fails the test after `limit`.
async fn bounded<F: Future>(limit: Duration, body: F) -> F::Output {
    tokio::time::timeout(limit, body)
        .await
        .expect("test timed out")
}

type Items = BTreeMap<Vec<u8>, Vec<u8>>;

/// Begins an image of the shard holding `key`.
async fn begin(cluster: &mut Cluster, clerk: &mut Clerk, key: &[u8]) -> ExportImage {
    let config = cluster.latest().await;
    let shard = config.shard_for_key(key).unwrap().clone();
    match clerk.export_begin(shard.id, &shard.start).await.unwrap() {
        ExportBegin::Image(image) => image,
        other => panic!("no image: {other:?}"),
    }
}

/// Pages through `image` in chunks of about `max_bytes`, calling `between`
/// after every chunk.
async fn page<F, Fut>(
    clerk: &mut Clerk,
    image: &ExportImage,
    max_bytes: u64,
    mut between: F,
) -> Items
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let replica: SocketAddr = image.replica.parse().unwrap();
    let mut items = Items::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let chunk = clerk
            .export_chunk(replica, image.image, after.as_deref(), max_bytes)
            .await
            .unwrap();
        for (key, value) in chunk.items {
            assert!(
                after.as_ref().is_none_or(|after| &key > after),
                "keys ascend"
            );
            after = Some(key.clone());
            items.insert(key, value);
        }
        between().await;
        if chunk.done {
            return items;
        }
    }
}

/// The shard's contents through ordinary (linearizable) scans.
async fn scan_shard(clerk: &mut Clerk, image: &ExportImage) -> Items {
    clerk
        .scan(&image.start, image.end.as_deref(), usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_does_not_change_while_writes_continue() {
    bounded(Duration::from_secs(60), async {
        let mut cluster = Cluster::start(ClusterOptions::default()).await;
        cluster.add_group(1).await;
        let num = cluster.join(&[1]).await;
        cluster
            .wait_settled(&[1], num, Duration::from_secs(20))
            .await;
        let mut writer = cluster.clerk(1);
        let mut reader = cluster.clerk(2);

        // 300 keys in the shard holding "k" (the pre-split shards cut at
        // single characters, so every "k..." key is in one shard).
        let mut expected = Items::new();
        for i in 0..300 {
            let (key, value) = (format!("k{i:04}"), format!("v0-{i}"));
            writer.put(key.as_bytes(), value.as_bytes()).await.unwrap();
            expected.insert(key.into_bytes(), value.into_bytes());
        }
        let image = begin(&mut cluster, &mut reader, b"k").await;
        assert_eq!(image.items, 300);
        assert!(image.bytes > 0);

        // Page through it in small chunks while overwriting, deleting and
        // adding keys of the same shard after every chunk.
        let writes = &std::cell::Cell::new(0u32);
        let writer_cell = &tokio::sync::Mutex::new(writer);
        let imaged = page(&mut reader, &image, 200, move || async move {
            let n = writes.get();
            writes.set(n + 1);
            let mut writer = writer_cell.lock().await;
            let key = format!("k{:04}", n % 300);
            writer.put(key.as_bytes(), b"changed").await.unwrap();
            writer
                .delete(format!("k{:04}", (n + 150) % 300).as_bytes())
                .await
                .unwrap();
            writer
                .put(format!("k{n:04}-new").as_bytes(), b"new")
                .await
                .unwrap();
        })
        .await;
        assert!(writes.get() > 5, "the image was read in several chunks");
        assert_eq!(imaged, expected, "the image is the shard when it was taken");

        // The shard did change, and a new image sees it.
        let now = scan_shard(&mut reader, &image).await;
        assert_ne!(now, expected);
        let again = begin(&mut cluster, &mut reader, b"k").await;
        let reimaged = page(&mut reader, &again, 1 << 20, || async {}).await;
        assert_eq!(reimaged, now);
        assert!(
            reimaged.keys().all(|key| key.starts_with(b"k")),
            "only the shard's data"
        );

        let replica: SocketAddr = again.replica.parse().unwrap();
        reader.export_end(replica, again.image).await;
        let gone = reader
            .export_chunk(replica, again.image, None, 1 << 20)
            .await;
        assert!(matches!(gone, Err(ClerkError::Unavailable(_))), "{gone:?}");
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_outlives_a_move_and_a_new_one_comes_from_the_new_owner() {
    bounded(Duration::from_secs(60), async {
        let mut cluster = Cluster::start(ClusterOptions::default()).await;
        cluster.add_group(1).await;
        cluster.add_group(2).await;
        let num = cluster.join(&[1]).await;
        cluster
            .wait_settled(&[1], num, Duration::from_secs(20))
            .await;
        let mut clerk = cluster.clerk(1);
        let mut expected = Items::new();
        for i in 0..50 {
            let key = format!("m{i:03}");
            clerk.put(key.as_bytes(), b"before").await.unwrap();
            expected.insert(key.into_bytes(), b"before".to_vec());
        }
        let image = begin(&mut cluster, &mut clerk, b"m").await;
        let old_owner = image.replica.clone();

        let mut num = cluster.join(&[2]).await;
        if cluster.latest().await.shard(image.shard).unwrap().gid != Some(2) {
            num = cluster.move_shard(image.shard, 2).await;
        }
        cluster
            .wait_settled(&[1, 2], num, Duration::from_secs(20))
            .await;
        clerk.put(b"m000", b"after").await.unwrap();

        let imaged = page(&mut clerk, &image, 100, || async {}).await;
        assert_eq!(
            imaged, expected,
            "the image still holds the moment it was taken"
        );

        let moved = begin(&mut cluster, &mut clerk, b"m").await;
        let new_owners = cluster.group(2).client_addrs();
        assert!(
            new_owners.contains(&moved.replica),
            "{} not in {new_owners:?}",
            moved.replica
        );
        assert_ne!(moved.replica, old_owner);
        assert!(moved.num >= num);
        let imaged = page(&mut clerk, &moved, 1 << 20, || async {}).await;
        assert_eq!(
            imaged.get(&b"m000"[..]).map(Vec::as_slice),
            Some(&b"after"[..])
        );
        assert_eq!(imaged.len(), 50);
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_holds_a_bounded_number_of_images() {
    bounded(Duration::from_secs(60), async {
        let mut cluster = Cluster::start(ClusterOptions::default()).await;
        cluster.add_group(1).await;
        let num = cluster.join(&[1]).await;
        cluster
            .wait_settled(&[1], num, Duration::from_secs(20))
            .await;
        let mut clerk = cluster.clerk(1);
        clerk.put(b"a", b"1").await.unwrap();

        let mut held = Vec::new();
        for _ in 0..EXPORT_IMAGES_MAX {
            held.push(begin(&mut cluster, &mut clerk, b"a").await);
        }
        let mut impatient = Clerk::new(
            cluster.controller_addrs(),
            shardkv::ClerkOptions {
                deadline: Duration::from_millis(500),
                ..clerk_options(3)
            },
        );
        let config = cluster.latest().await;
        let shard = config.shard_for_key(b"a").unwrap().clone();
        let refused = impatient.export_begin(shard.id, &shard.start).await;
        match refused {
            Err(ClerkError::Unavailable(cause)) => {
                assert!(cause.contains("export images"), "{cause}");
            }
            other => panic!("a third image was not refused: {other:?}"),
        }

        let first = held.remove(0);
        clerk
            .export_end(first.replica.parse().unwrap(), first.image)
            .await;
        let again = begin(&mut cluster, &mut clerk, b"a").await;
        let items = page(&mut clerk, &again, 1 << 20, || async {}).await;
        assert_eq!(items.get(&b"a"[..]).map(Vec::as_slice), Some(&b"1"[..]));
        cluster.shutdown().await;
    })
    .await;
}
