//! Tests of the sled state-machine store: spaces and key encoding, the applied
//! index, checksums, export/import (including an interrupted import), reopen,
//! the on-disk layout, and a model-based property test.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;

use proptest::prelude::*;
use storage::sled_store::{
    ExportRecord, ShardBatch, ShardChecksum, ShardStatus, SledStore, Space, FORMAT_VERSION,
};
use storage::StorageError;

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn all(store: &SledStore, shard: u64, space: Space) -> Pairs {
    store.scan(shard, space, .., usize::MAX).unwrap()
}

fn pairs(items: &[(&[u8], &[u8])]) -> Pairs {
    items
        .iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect()
}

fn is_invalid<T: std::fmt::Debug>(result: storage::Result<T>) -> bool {
    matches!(result, Err(StorageError::InvalidArgument(_)))
}

/// Keys chosen to look like the store's own prefixes and internal keys.
const ODD_KEYS: &[&[u8]] = &[
    b"",
    b"\x00",
    b"\x00\x00",
    b"\x00applied_index",
    b"\x00import_in_progress",
    b"\x01",
    b"\x02",
    b"\x02\xff",
    b"\x03",
    b"applied_index",
    b"a\x00b",
    b"\xff",
    b"\xff\xff",
];

#[test]
fn spaces_round_trip_odd_keys_without_colliding_with_internal_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut batch = ShardBatch::new();
    for (i, key) in ODD_KEYS.iter().enumerate() {
        batch.put(Space::Data, key, format!("data{i}").as_bytes());
        batch.put(Space::Aux, key, format!("aux{i}").as_bytes());
    }
    store.apply(7, 3, &batch).unwrap();

    // Every key reads back from its own space, and the internal keys are intact.
    for (i, key) in ODD_KEYS.iter().enumerate() {
        let data = store.get(7, Space::Data, key).unwrap().unwrap();
        assert_eq!(&*data, format!("data{i}").as_bytes(), "data key {key:?}");
        let aux = store.get(7, Space::Aux, key).unwrap().unwrap();
        assert_eq!(&*aux, format!("aux{i}").as_bytes(), "aux key {key:?}");
    }
    assert_eq!(store.applied_index(7).unwrap(), Some(3));
    assert_eq!(
        store.shards().unwrap(),
        vec![ShardStatus {
            id: 7,
            applied_index: Some(3),
            import_incomplete: false
        }]
    );

    // Full scans are exactly the user's keys, sorted bytewise, prefix stripped.
    let mut sorted: Vec<&[u8]> = ODD_KEYS.to_vec();
    sorted.sort();
    let data = all(&store, 7, Space::Data);
    assert_eq!(
        data.iter().map(|(k, _)| k.as_slice()).collect::<Vec<_>>(),
        sorted
    );
    let aux = all(&store, 7, Space::Aux);
    assert_eq!(
        aux.iter().map(|(k, _)| k.as_slice()).collect::<Vec<_>>(),
        sorted
    );
    assert!(aux.iter().all(|(_, v)| v.starts_with(b"aux")));

    // Limit and bounds.
    assert_eq!(
        store.scan(7, Space::Data, .., 3).unwrap(),
        data[..3].to_vec()
    );
    assert!(store.scan(7, Space::Data, .., 0).unwrap().is_empty());
    let from_x01: Pairs = store
        .scan(
            7,
            Space::Data,
            (Bound::Included(&b"\x01"[..]), Bound::Excluded(&b"\x03"[..])),
            10,
        )
        .unwrap();
    assert_eq!(
        from_x01
            .iter()
            .map(|(k, _)| k.as_slice())
            .collect::<Vec<_>>(),
        vec![&b"\x01"[..], b"\x02", b"\x02\xff"]
    );
    let after_ff: Pairs = store
        .scan(
            7,
            Space::Aux,
            (Bound::Excluded(&b"\xff"[..]), Bound::Unbounded),
            10,
        )
        .unwrap();
    assert_eq!(after_ff, pairs(&[(b"\xff\xff", b"aux12")]));
    let up_to_empty: Pairs = store
        .scan(
            7,
            Space::Data,
            (Bound::Unbounded, Bound::Included(&b""[..])),
            10,
        )
        .unwrap();
    assert_eq!(up_to_empty, pairs(&[(b"", b"data0")]));
    let inverted: Pairs = store
        .scan(
            7,
            Space::Data,
            (Bound::Included(&b"b"[..]), Bound::Included(&b"a"[..])),
            10,
        )
        .unwrap();
    assert!(inverted.is_empty());

    // Deleting from one space leaves the other alone.
    let mut batch = ShardBatch::new();
    batch
        .delete(Space::Data, b"")
        .delete(Space::Data, b"\x00applied_index");
    store.apply(7, 4, &batch).unwrap();
    assert_eq!(store.get(7, Space::Data, b"").unwrap(), None);
    assert_eq!(
        store.get(7, Space::Data, b"\x00applied_index").unwrap(),
        None
    );
    assert_eq!(&*store.get(7, Space::Aux, b"").unwrap().unwrap(), b"aux0");
    assert_eq!(store.applied_index(7).unwrap(), Some(4));

    // The store reopens (open validates internal keys) with the same contents.
    drop(store);
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.applied_index(7).unwrap(), Some(4));
    assert_eq!(all(&store, 7, Space::Data).len(), ODD_KEYS.len() - 2);
    assert_eq!(all(&store, 7, Space::Aux), aux);
}

#[test]
fn later_operation_on_same_key_wins_within_a_batch() {
    let store = SledStore::temporary().unwrap();
    let mut batch = ShardBatch::new();
    batch
        .put(Space::Data, b"k", b"1")
        .delete(Space::Data, b"k")
        .put(Space::Data, b"j", b"1");
    batch
        .put(Space::Data, b"j", b"2")
        .put(Space::Aux, b"k", b"aux");
    assert_eq!(batch.len(), 5);
    store.apply(1, 1, &batch).unwrap();
    assert_eq!(all(&store, 1, Space::Data), pairs(&[(b"j", b"2")]));
    assert_eq!(all(&store, 1, Space::Aux), pairs(&[(b"k", b"aux")]));

    // A reused batch carries nothing over; an empty batch still advances the index.
    batch.clear();
    assert!(batch.is_empty());
    store.apply(1, 2, &batch).unwrap();
    assert_eq!(store.applied_index(1).unwrap(), Some(2));
    assert_eq!(all(&store, 1, Space::Data), pairs(&[(b"j", b"2")]));
}

#[test]
fn stale_applied_index_is_refused_and_writes_nothing() {
    let store = SledStore::temporary().unwrap();
    let mut batch = ShardBatch::new();
    batch.put(Space::Data, b"a", b"1");
    store.apply(1, 5, &batch).unwrap();

    for stale in [5, 4, 0] {
        let mut batch = ShardBatch::new();
        batch
            .put(Space::Data, b"a", b"stale")
            .put(Space::Aux, b"s", b"stale");
        batch.delete(Space::Data, b"a");
        assert!(is_invalid(store.apply(1, stale, &batch)), "index {stale}");
    }
    assert_eq!(store.applied_index(1).unwrap(), Some(5));
    assert_eq!(all(&store, 1, Space::Data), pairs(&[(b"a", b"1")]));
    assert!(all(&store, 1, Space::Aux).is_empty());

    // Moving forward by any amount works; the old index is refused again afterwards.
    store.apply(1, 9, &ShardBatch::new()).unwrap();
    assert!(is_invalid(store.apply(1, 6, &ShardBatch::new())));
    assert_eq!(store.applied_index(1).unwrap(), Some(9));
}

#[test]
fn unknown_shard_is_refused_by_readers_and_created_by_apply() {
    fn shareable<T: Send + Sync>() {}
    shareable::<SledStore>();
    let store = SledStore::temporary().unwrap();
    assert_eq!(store.applied_index(3).unwrap(), None);
    assert!(is_invalid(store.get(3, Space::Data, b"a")));
    assert!(is_invalid(store.scan(3, Space::Data, .., 10)));
    assert!(is_invalid(store.checksum(3)));
    assert!(is_invalid(store.export(3).map(|_| ())));
    store.drop_shard(3).unwrap(); // idempotent
    assert!(store.shards().unwrap().is_empty());

    store.apply(3, 1, &ShardBatch::new()).unwrap();
    assert_eq!(store.get(3, Space::Data, b"a").unwrap(), None);
    assert_eq!(store.shards().unwrap().len(), 1);
}

fn checksum_of(records: &[(Space, &[u8], &[u8])]) -> u32 {
    let mut sum = ShardChecksum::new();
    for (space, key, value) in records {
        sum.update(*space, key, value);
    }
    sum.finish()
}

#[test]
fn checksum_ignores_applied_index_and_detects_one_changed_value() {
    let a = SledStore::temporary().unwrap();
    let b = SledStore::temporary().unwrap();
    // Same resulting contents, reached by different entries and indexes.
    let mut batch = ShardBatch::new();
    batch
        .put(Space::Data, b"x", b"1")
        .put(Space::Data, b"y", b"2");
    a.apply(1, 1, &batch).unwrap();
    let mut batch = ShardBatch::new();
    batch
        .put(Space::Aux, b"session", b"s1")
        .delete(Space::Data, b"y");
    a.apply(1, 2, &batch).unwrap();

    let mut batch = ShardBatch::new();
    batch
        .put(Space::Aux, b"session", b"s1")
        .put(Space::Data, b"x", b"1");
    b.apply(1, 40, &batch).unwrap();

    let expected = checksum_of(&[(Space::Data, b"x", b"1"), (Space::Aux, b"session", b"s1")]);
    assert_eq!(a.checksum(1).unwrap(), expected);
    assert_eq!(b.checksum(1).unwrap(), expected);
    assert_ne!(a.applied_index(1).unwrap(), b.applied_index(1).unwrap());

    // One different value.
    let mut batch = ShardBatch::new();
    batch.put(Space::Data, b"x", b"2");
    b.apply(1, 41, &batch).unwrap();
    assert_ne!(b.checksum(1).unwrap(), expected);
    // Put back: equal again.
    let mut batch = ShardBatch::new();
    batch.put(Space::Data, b"x", b"1");
    b.apply(1, 42, &batch).unwrap();
    assert_eq!(b.checksum(1).unwrap(), expected);

    // The same key and value in the other space, or bytes moved between key
    // and value, give a different checksum.
    let mut batch = ShardBatch::new();
    batch.delete(Space::Data, b"x").put(Space::Aux, b"x", b"1");
    b.apply(1, 43, &batch).unwrap();
    assert_ne!(b.checksum(1).unwrap(), expected);
    assert_ne!(
        checksum_of(&[(Space::Data, b"ab", b"c")]),
        checksum_of(&[(Space::Data, b"a", b"bc")])
    );
    // An empty shard has the checksum of no records.
    let c = SledStore::temporary().unwrap();
    c.apply(9, 1, &ShardBatch::new()).unwrap();
    assert_eq!(c.checksum(9).unwrap(), ShardChecksum::new().finish());
}

/// Fills `shard` with `n` data records (some large, so that imports also cut
/// batches by bytes) and a few aux records.
fn fill(store: &SledStore, shard: u64, n: usize, index: u64) {
    let mut batch = ShardBatch::new();
    for i in 0..n {
        let value = if i % 100 == 0 {
            vec![b'v'; 40_000]
        } else {
            format!("v{i}").into_bytes()
        };
        batch.put(Space::Data, format!("key{i:06}").as_bytes(), &value);
    }
    for i in 0..5 {
        batch.put(Space::Aux, format!("session{i}").as_bytes(), b"s");
    }
    store.apply(shard, index, &batch).unwrap();
}

fn export_all(store: &SledStore, shard: u64) -> Vec<ExportRecord> {
    store
        .export(shard)
        .unwrap()
        .collect::<storage::Result<Vec<_>>>()
        .unwrap()
}

#[test]
fn export_import_round_trip_replaces_existing_shard() {
    let src = SledStore::temporary().unwrap();
    fill(&src, 4, 2_500, 10);
    let exported = export_all(&src, 4);
    assert_eq!(exported.len(), 2_505);
    // Data first, then aux, each in key order, prefixes stripped.
    assert_eq!(exported[0].space, Space::Data);
    assert_eq!(exported[0].key, b"key000000");
    assert_eq!(exported[2_500].space, Space::Aux);
    assert_eq!(exported[2_500].key, b"session0");

    let dir = tempfile::tempdir().unwrap();
    let dst = SledStore::open(dir.path()).unwrap();
    // Existing contents of the same shard that the import must replace.
    let mut batch = ShardBatch::new();
    batch
        .put(Space::Data, b"leftover", b"x")
        .put(Space::Aux, b"leftover", b"x");
    batch.put(Space::Data, b"key000001", b"old");
    dst.apply(4, 500, &batch).unwrap();
    // Another shard that must not be touched.
    fill(&dst, 5, 3, 1);
    let other = dst.checksum(5).unwrap();

    let report = dst.import(4, 77, src.export(4).unwrap()).unwrap();
    assert_eq!(report.records, 2_505);
    assert!(
        report.batches >= 3,
        "2,505 records need at least 3 batches: {report:?}"
    );
    assert_eq!(report.checksum, src.checksum(4).unwrap());
    assert_eq!(dst.checksum(4).unwrap(), src.checksum(4).unwrap());
    assert_eq!(dst.applied_index(4).unwrap(), Some(77));
    assert_eq!(all(&dst, 4, Space::Data), all(&src, 4, Space::Data));
    assert_eq!(all(&dst, 4, Space::Aux), all(&src, 4, Space::Aux));
    assert_eq!(dst.get(4, Space::Data, b"leftover").unwrap(), None);
    assert_eq!(dst.checksum(5).unwrap(), other);
    assert_eq!(
        dst.shards().unwrap(),
        vec![
            ShardStatus {
                id: 4,
                applied_index: Some(77),
                import_incomplete: false
            },
            ShardStatus {
                id: 5,
                applied_index: Some(1),
                import_incomplete: false
            },
        ]
    );

    // A second, smaller import replaces everything: no leftovers. The import
    // index may be lower than the current one: an import is a replacement.
    let small = vec![
        ExportRecord {
            space: Space::Data,
            key: b"only".to_vec(),
            value: b"1".to_vec(),
        },
        ExportRecord {
            space: Space::Aux,
            key: b"".to_vec(),
            value: b"2".to_vec(),
        },
    ];
    let report = dst
        .import(4, 60, small.clone().into_iter().map(Ok))
        .unwrap();
    assert_eq!((report.records, report.bytes, report.batches), (2, 6, 1));
    assert_eq!(export_all(&dst, 4), small);
    assert_eq!(dst.applied_index(4).unwrap(), Some(60));

    // Import is durable when it returns and survives a reopen.
    drop(dst);
    let dst = SledStore::open(dir.path()).unwrap();
    assert_eq!(export_all(&dst, 4), small);
    assert_eq!(dst.applied_index(4).unwrap(), Some(60));

    // Importing an empty stream yields an empty, complete shard.
    let report = dst.import(4, 61, std::iter::empty()).unwrap();
    assert_eq!(report.records, 0);
    assert!(export_all(&dst, 4).is_empty());
    assert_eq!(dst.applied_index(4).unwrap(), Some(61));
}

#[test]
fn interrupted_import_is_incomplete_after_reopen_and_rerun_fixes_it() {
    let src = SledStore::temporary().unwrap();
    fill(&src, 2, 3_000, 10);
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    fill(&store, 2, 10, 100);
    fill(&store, 3, 10, 100);

    // The stream fails after 2,200 records (several batches already written).
    let failing = src
        .export(2)
        .unwrap()
        .take(2_200)
        .chain(std::iter::once(Err(StorageError::InvalidArgument(
            "peer went away".into(),
        ))));
    let err = store.import(2, 50, failing).unwrap_err();
    assert!(err.to_string().contains("peer went away"), "{err}");

    let check_incomplete = |store: &SledStore| {
        let shards = store.shards().unwrap();
        assert_eq!(
            shards[0],
            ShardStatus {
                id: 2,
                applied_index: None,
                import_incomplete: true
            }
        );
        assert_eq!(shards.len(), 2);
        assert_eq!((shards[1].id, shards[1].import_incomplete), (3, false));
        assert_eq!(store.applied_index(2).unwrap(), None);
        let mut batch = ShardBatch::new();
        batch.put(Space::Data, b"late", b"write");
        assert!(is_invalid(store.apply(2, 1_000, &batch)));
        assert!(is_invalid(store.get(2, Space::Data, b"key000000")));
        assert!(is_invalid(store.scan(2, Space::Data, .., 1)));
        assert!(is_invalid(store.checksum(2)));
        assert!(is_invalid(store.export(2).map(|_| ())));
        // The other shard is unaffected.
        let next = shards[1].applied_index.unwrap() + 1;
        store.apply(3, next, &ShardBatch::new()).unwrap();
    };
    check_incomplete(&store);

    // The marker is durable: the shard is still incomplete after a reopen.
    drop(store);
    {
        // The partial records really are in the tree: only the marker protects them.
        let db = raw_sled(dir.path());
        let tree = db.open_tree("shard/0000000000000002").unwrap();
        assert!(tree.scan_prefix([0x01]).count() >= 2_000);
        assert_eq!(
            &*tree.get(b"\x00import_in_progress").unwrap().unwrap(),
            &50u64.to_be_bytes()
        );
        assert_eq!(tree.get(b"\x00applied_index").unwrap(), None);
    }
    let store = SledStore::open(dir.path()).unwrap();
    check_incomplete(&store);

    // Out-of-order records stop an import too, leaving the shard incomplete.
    let reversed: Vec<_> = export_all(&src, 2).into_iter().rev().map(Ok).collect();
    assert!(is_invalid(store.import(2, 50, reversed)));
    let duplicated: Vec<_> = export_all(&src, 2)[..2]
        .iter()
        .cycle()
        .take(3)
        .cloned()
        .map(Ok)
        .collect();
    assert!(is_invalid(store.import(2, 50, duplicated)));
    assert!(store.shards().unwrap()[0].import_incomplete);

    // Re-running the import completes it cleanly.
    let report = store.import(2, 50, src.export(2).unwrap()).unwrap();
    assert_eq!(report.records, 3_005);
    assert_eq!(store.checksum(2).unwrap(), src.checksum(2).unwrap());
    assert_eq!(store.applied_index(2).unwrap(), Some(50));
    let mut batch = ShardBatch::new();
    batch.put(Space::Data, b"late", b"write");
    store.apply(2, 51, &batch).unwrap();

    // Dropping an incomplete shard is the other way out.
    let failing = std::iter::once(Err(StorageError::InvalidArgument("gone".into())));
    assert!(store.import(3, 7, failing).is_err());
    assert!(store.shards().unwrap()[1].import_incomplete);
    store.drop_shard(3).unwrap();
    store.flush().unwrap();
    drop(store);
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(
        store.shards().unwrap(),
        vec![ShardStatus {
            id: 2,
            applied_index: Some(51),
            import_incomplete: false
        }]
    );
}

#[test]
fn reopen_after_flush_keeps_shards_and_drops() {
    let dir = tempfile::tempdir().unwrap();
    let (sums, data);
    {
        let store = SledStore::open(dir.path()).unwrap();
        fill(&store, 1, 50, 11);
        fill(&store, 2, 50, 12);
        fill(&store, u64::MAX, 5, 13);
        store.drop_shard(2).unwrap();
        // Re-created after the drop: starts empty, any applied index.
        let mut batch = ShardBatch::new();
        batch.put(Space::Data, b"new", b"1");
        store.apply(2, 3, &batch).unwrap();
        sums = (
            store.checksum(1).unwrap(),
            store.checksum(u64::MAX).unwrap(),
        );
        data = all(&store, 1, Space::Data);
        store.flush().unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(
        store.shards().unwrap(),
        vec![
            ShardStatus {
                id: 1,
                applied_index: Some(11),
                import_incomplete: false
            },
            ShardStatus {
                id: 2,
                applied_index: Some(3),
                import_incomplete: false
            },
            ShardStatus {
                id: u64::MAX,
                applied_index: Some(13),
                import_incomplete: false
            },
        ]
    );
    assert_eq!(store.checksum(1).unwrap(), sums.0);
    assert_eq!(store.checksum(u64::MAX).unwrap(), sums.1);
    assert_eq!(all(&store, 1, Space::Data), data);
    assert_eq!(all(&store, 2, Space::Data), pairs(&[(b"new", b"1")]));
    assert!(all(&store, 2, Space::Aux).is_empty());

    store.drop_shard(1).unwrap();
    store.flush().unwrap();
    drop(store);
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.applied_index(1).unwrap(), None);
    assert_eq!(store.shards().unwrap().len(), 2);
}

#[test]
fn on_disk_layout_matches_documentation() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        let mut batch = ShardBatch::new();
        batch
            .put(Space::Data, b"k", b"v")
            .put(Space::Aux, b"a", b"w");
        store.apply(0x2a, 0x0102_0304_0506_0708, &batch).unwrap();
        store.flush().unwrap();
    }
    let db = raw_sled(dir.path());
    let mut names: Vec<Vec<u8>> = db.tree_names().into_iter().map(|n| n.to_vec()).collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            b"__sled__default".to_vec(),
            b"meta".to_vec(),
            b"shard/000000000000002a".to_vec()
        ]
    );
    let meta = db.open_tree("meta").unwrap();
    let meta_entries: Vec<_> = meta.iter().map(|e| e.unwrap()).collect();
    assert_eq!(meta_entries.len(), 1);
    assert_eq!(&*meta_entries[0].0, b"format_version");
    assert_eq!(&*meta_entries[0].1, &FORMAT_VERSION.to_be_bytes());
    assert_eq!(FORMAT_VERSION, 1);
    let tree = db.open_tree("shard/000000000000002a").unwrap();
    let entries: Vec<(Vec<u8>, Vec<u8>)> = tree
        .iter()
        .map(|e| e.unwrap())
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    assert_eq!(
        entries,
        pairs(&[
            (b"\x00applied_index", &[1, 2, 3, 4, 5, 6, 7, 8]),
            (b"\x01k", b"v"),
            (b"\x02a", b"w"),
        ])
    );
}

/// Opens `dir` with sled itself. Retries while the lock file is still held:
/// sled 0.34 releases it a moment after the last `Db` handle is dropped.
fn raw_sled(dir: &Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::open(dir) {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() < deadline => {
                assert!(e.to_string().contains("could not acquire lock"), "{e}");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Opens raw sled on `dir`, lets `f` damage it, then returns what
/// `SledStore::open` says.
fn open_after(dir: &Path, f: impl FnOnce(&sled::Db)) -> storage::Result<SledStore> {
    {
        let db = raw_sled(dir);
        f(&db);
        db.flush().unwrap();
    }
    SledStore::open(dir)
}

type Damage = Box<dyn FnOnce(&sled::Db)>;

#[test]
fn open_refuses_other_format_versions_and_damaged_internal_keys() {
    let dir = tempfile::tempdir().unwrap();
    drop(SledStore::open(dir.path()).unwrap());
    let err = open_after(dir.path(), |db| {
        db.open_tree("meta")
            .unwrap()
            .insert("format_version", &2u32.to_be_bytes())
            .unwrap();
    })
    .unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::FormatVersion {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{err:?}"
    );

    let cases: Vec<(&str, Damage)> = vec![
        (
            "short applied index",
            Box::new(|db: &sled::Db| {
                let t = db.open_tree("shard/0000000000000001").unwrap();
                t.insert(b"\x00applied_index", &[0, 1, 2]).unwrap();
            }),
        ),
        (
            "unknown internal key",
            Box::new(|db: &sled::Db| {
                let t = db.open_tree("shard/0000000000000001").unwrap();
                t.insert(b"\x00applied_index", &1u64.to_be_bytes()).unwrap();
                t.insert(b"\x00what", b"").unwrap();
            }),
        ),
        (
            "unknown space",
            Box::new(|db: &sled::Db| {
                let t = db.open_tree("shard/0000000000000001").unwrap();
                t.insert(b"\x00applied_index", &1u64.to_be_bytes()).unwrap();
                t.insert(b"\x03k", b"").unwrap();
            }),
        ),
        (
            "data without applied index",
            Box::new(|db: &sled::Db| {
                db.open_tree("shard/0000000000000001")
                    .unwrap()
                    .insert(b"\x01k", b"")
                    .unwrap();
            }),
        ),
        (
            "bad tree name",
            Box::new(|db: &sled::Db| {
                db.open_tree("shard/1")
                    .unwrap()
                    .insert(b"\x00applied_index", &[0; 8])
                    .unwrap();
            }),
        ),
        (
            "missing format version",
            Box::new(|db: &sled::Db| {
                db.open_tree("meta").unwrap().clear().unwrap();
                let t = db.open_tree("shard/0000000000000001").unwrap();
                t.insert(b"\x00applied_index", &1u64.to_be_bytes()).unwrap();
            }),
        ),
    ];
    for (what, damage) in cases {
        let dir = tempfile::tempdir().unwrap();
        drop(SledStore::open(dir.path()).unwrap());
        let err = open_after(dir.path(), damage).unwrap_err();
        assert!(
            matches!(err, StorageError::Corruption { .. }),
            "{what}: {err:?}"
        );
    }

    // An empty shard tree (the process died between creating the tree and its
    // first batch) is not an error and not a shard.
    let dir = tempfile::tempdir().unwrap();
    drop(SledStore::open(dir.path()).unwrap());
    let store = open_after(dir.path(), |db| {
        db.open_tree("shard/0000000000000001").unwrap();
    })
    .unwrap();
    assert!(store.shards().unwrap().is_empty());
    store.apply(1, 1, &ShardBatch::new()).unwrap();
    assert_eq!(store.applied_index(1).unwrap(), Some(1));
}

// ---------------------------------------------------------------------------
// Model-based property test.

#[derive(Debug, Clone)]
enum Op {
    /// Apply `writes` to `shard` with an applied index `gap` above the current one.
    Apply {
        shard: u64,
        gap: u64,
        writes: Vec<(Space, Vec<u8>, Option<Vec<u8>>)>,
    },
    /// Apply with the current applied index: must be refused.
    Stale {
        shard: u64,
    },
    Drop {
        shard: u64,
    },
    Flush,
    Reopen,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop::sample::select(vec![0x00u8, 0x01, 0x02, b'a', 0xFF]),
        0..4,
    )
}

fn op() -> impl Strategy<Value = Op> {
    let write = (
        prop::sample::select(vec![Space::Data, Space::Aux]),
        key(),
        prop::option::weighted(0.7, prop::collection::vec(any::<u8>(), 0..6)),
    );
    prop_oneof![
        8 => (1u64..3, 1u64..4, prop::collection::vec(write, 0..6))
            .prop_map(|(shard, gap, writes)| Op::Apply { shard, gap, writes }),
        1 => (1u64..3).prop_map(|shard| Op::Stale { shard }),
        1 => (1u64..3).prop_map(|shard| Op::Drop { shard }),
        1 => Just(Op::Flush),
        2 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Default, Clone, PartialEq)]
struct ShardModel {
    applied: u64,
    records: BTreeMap<(Space, Vec<u8>), Vec<u8>>,
}

fn assert_matches_model(store: &SledStore, model: &BTreeMap<u64, ShardModel>) {
    let expected: Vec<ShardStatus> = model
        .iter()
        .map(|(&id, m)| ShardStatus {
            id,
            applied_index: Some(m.applied),
            import_incomplete: false,
        })
        .collect();
    assert_eq!(store.shards().unwrap(), expected);
    for (&id, m) in model {
        for space in [Space::Data, Space::Aux] {
            let want: Pairs = m
                .records
                .iter()
                .filter(|((s, _), _)| *s == space)
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(all(store, id, space), want, "shard {id} {space:?}");
        }
        let mut sum = ShardChecksum::new();
        for ((space, k), v) in &m.records {
            sum.update(*space, k, v);
        }
        assert_eq!(store.checksum(id).unwrap(), sum.finish(), "shard {id}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model_across_reopens(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Some(SledStore::open(dir.path()).unwrap());
        let mut model: BTreeMap<u64, ShardModel> = BTreeMap::new();
        for op in ops {
            let s = store.as_ref().unwrap();
            match op {
                Op::Apply { shard, gap, writes } => {
                    let m = model.entry(shard).or_default();
                    let mut batch = ShardBatch::new();
                    for (space, key, value) in writes {
                        match value {
                            Some(v) => {
                                batch.put(space, &key, &v);
                                m.records.insert((space, key), v);
                            }
                            None => {
                                batch.delete(space, &key);
                                m.records.remove(&(space, key));
                            }
                        }
                    }
                    m.applied += gap;
                    s.apply(shard, m.applied, &batch).unwrap();
                }
                Op::Stale { shard } => {
                    if let Some(m) = model.get(&shard) {
                        let mut batch = ShardBatch::new();
                        batch.put(Space::Data, b"stale", b"x");
                        prop_assert!(is_invalid(s.apply(shard, m.applied, &batch)));
                    }
                }
                Op::Drop { shard } => {
                    s.drop_shard(shard).unwrap();
                    model.remove(&shard);
                }
                Op::Flush => s.flush().unwrap(),
                Op::Reopen => {
                    drop(store.take());
                    let s = SledStore::open(dir.path()).unwrap();
                    assert_matches_model(&s, &model);
                    store = Some(s);
                }
            }
        }
        let s = store.take().unwrap();
        assert_matches_model(&s, &model);
        drop(s);
        assert_matches_model(&SledStore::open(dir.path()).unwrap(), &model);
    }
}
