//! `kvctl snapshot export|import|verify` against real local clusters
//! (`kvctl cluster up`, see [`common::TestCluster`]): an export of a
//! 2-group, 8-shard cluster imported into a 1-group, 3-shard one gives the
//! same full scan; importing again changes nothing; `--shard ID` exports
//! one shard; an import killed half-way and run again ends with exactly
//! the file's contents; a damaged file fails `verify` with its byte offset
//! and, like a missing file, imports nothing.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ok, stderr, stdout, TestCluster, KVCTL, KVD};
use serde_json::Value;
use storage::RealFs;
use tools::snapshot_file::{Entry, Header, SnapshotFileReader, SnapshotFileWriter};

/// A one-replica, one-group cluster with 3 shards: the import target.
const SMALL: [&str; 8] = [
    "--controllers",
    "1",
    "--groups",
    "1",
    "--replicas",
    "1",
    "--shards",
    "3",
];

fn json_line(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Every item, as `kvctl scan` prints them.
fn full_scan(cluster: &TestCluster) -> String {
    ok(&cluster.kvctl(&["scan", "--limit", "1000000"]))
}

/// The entries of a snapshot file, read with the library.
fn entries(path: &Path) -> Vec<Entry> {
    let mut reader = SnapshotFileReader::open(path).unwrap();
    let mut entries = Vec::new();
    while let Some(entry) = reader.next_entry().unwrap() {
        entries.push(entry);
    }
    entries
}

/// The items of shard `id` in a file's entries.
fn shard_items(entries: &[Entry], id: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut inside = false;
    let mut items = Vec::new();
    for entry in entries {
        match entry {
            Entry::ShardBegin { id: this, .. } => inside = *this == id,
            Entry::Item { key, value } if inside => items.push((key.clone(), value.clone())),
            _ => {}
        }
    }
    items
}

#[test]
fn an_export_imports_into_a_differently_shaped_cluster() {
    let source = TestCluster::up(&["--controllers", "1", "--groups", "2", "--shards", "8"]);
    let target = TestCluster::up(&SMALL);
    // A few hundred keys spread over the key space, through one shell.
    let alphabet: Vec<char> = ('0'..='9').chain('A'..='Z').chain('a'..='z').collect();
    let script: String = (0..400)
        .map(|i| format!("put {}{i:03} value-{i}\n", alphabet[i % alphabet.len()]))
        .collect();
    let replies = ok(&source.kvctl_with_stdin(&["shell"], Some(&script)));
    assert_eq!(
        replies.lines().filter(|line| *line == "OK").count(),
        400,
        "{replies}"
    );
    let expected = full_scan(&source);
    assert_eq!(expected.lines().count(), 400);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("all.kvs");
    let file_arg = file.to_str().unwrap();
    let text = ok(&source.kvctl(&["snapshot", "export", file_arg]));
    assert!(text.starts_with("exported 8 shards, 400 items"), "{text}");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "no temporary file is left: {names:?}");

    let verified = json_line(&ok(
        &source.kvctl(&["-o", "json", "snapshot", "verify", file_arg])
    ));
    assert_eq!(verified["ok"], true);
    assert_eq!(verified["shards"], 8);
    assert_eq!(verified["items"], 400);
    let text = ok(&source.kvctl(&["snapshot", "verify", file_arg]));
    assert!(text.contains("shards: 8\nitems: 400\n"), "{text}");

    // Routed by key into 3 shards of one group: the same data.
    let imported = json_line(&ok(
        &target.kvctl(&["-o", "json", "snapshot", "import", file_arg])
    ));
    assert_eq!(imported["ok"], true, "{imported}");
    assert_eq!(imported["items"], 400);
    assert_eq!(full_scan(&target), expected);
    // Again: puts are idempotent.
    ok(&target.kvctl(&["snapshot", "import", file_arg]));
    assert_eq!(full_scan(&target), expected);

    // --shard ID: that shard alone, the same items as in the full export.
    let all = entries(&file);
    let (id, start, end) = all
        .iter()
        .find_map(|entry| match entry {
            Entry::ShardBegin { id, start, end } if !shard_items(&all, *id).is_empty() => {
                Some((*id, start.clone(), end.clone()))
            }
            _ => None,
        })
        .expect("a shard with items");
    let one = dir.path().join("one.kvs");
    let one_arg = one.to_str().unwrap();
    let reply = json_line(&ok(&source.kvctl(&[
        "-o",
        "json",
        "snapshot",
        "export",
        one_arg,
        "--shard",
        &id.to_string(),
    ])));
    assert_eq!(reply["shards"], 1, "{reply}");
    let only = entries(&one);
    assert_eq!(
        only.first(),
        Some(&Entry::ShardBegin {
            id,
            start: start.clone(),
            end: end.clone()
        })
    );
    let items = shard_items(&only, id);
    assert_eq!(items, shard_items(&all, id));
    assert_eq!(reply["items"], items.len());
    assert!(items
        .iter()
        .all(|(key, _)| *key >= start && end.as_ref().is_none_or(|end| key < end)));
    // A shard that does not exist: exit 1, nothing written.
    let missing = dir.path().join("none.kvs");
    let absent = source.kvctl(&[
        "snapshot",
        "export",
        missing.to_str().unwrap(),
        "--shard",
        "99",
    ]);
    assert_eq!(absent.status.code(), Some(1));
    assert!(stderr(&absent).contains("shard 99"), "{}", stderr(&absent));
    assert!(!missing.exists());
}

/// A kvctl process, killed if the test ends while it runs.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes a file of `count` items `key{i:06}` → `value-{i}` in one shard.
fn write_file(path: &Path, count: u32) -> String {
    let mut writer = SnapshotFileWriter::create(
        RealFs::shared(),
        path,
        Header {
            num: 1,
            created_ms: 0,
        },
    )
    .unwrap();
    writer.begin_shard(0, b"", None).unwrap();
    let mut scan = String::new();
    for i in 0..count {
        let (key, value) = (format!("key{i:06}"), format!("value-{i}"));
        writer.item(key.as_bytes(), value.as_bytes()).unwrap();
        scan.push_str(&format!("{key}\t{value}\n"));
    }
    writer.end_shard().unwrap();
    writer.finish().unwrap();
    scan
}

#[test]
fn damaged_or_missing_files_import_nothing_and_an_interrupted_import_finishes_on_rerun() {
    let target = TestCluster::up(&SMALL);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("many.kvs");
    let file_arg = file.to_str().unwrap();
    let expected = write_file(&file, 20_000);

    // One flipped byte in the middle: verify names its offset, import
    // writes nothing.
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    let damaged = dir.path().join("damaged.kvs");
    std::fs::write(&damaged, &bytes).unwrap();
    let damaged_arg = damaged.to_str().unwrap();
    let verify = target.kvctl(&["snapshot", "verify", damaged_arg]);
    assert_eq!(verify.status.code(), Some(1));
    assert!(
        stderr(&verify).contains("byte offset"),
        "{}",
        stderr(&verify)
    );
    let verify = target.kvctl(&["-o", "json", "snapshot", "verify", damaged_arg]);
    assert_eq!(verify.status.code(), Some(1));
    let reply = json_line(&stdout(&verify));
    assert_eq!(reply["ok"], false);
    let offset = reply["offset"].as_u64().expect("an offset");
    assert!(
        offset <= middle as u64,
        "{offset} is not at or before {middle}"
    );
    let import = target.kvctl(&["snapshot", "import", damaged_arg]);
    assert_eq!(import.status.code(), Some(1));
    assert!(
        stderr(&import).contains("nothing was imported"),
        "{}",
        stderr(&import)
    );
    assert_eq!(full_scan(&target), "");
    let missing = dir.path().join("missing.kvs");
    let import = target.kvctl(&["snapshot", "import", missing.to_str().unwrap()]);
    assert_eq!(import.status.code(), Some(1));
    assert!(
        stderr(&import).contains("missing.kvs"),
        "{}",
        stderr(&import)
    );
    assert_eq!(full_scan(&target), "");

    // Killed once part of the file is in...
    let cluster_arg = target.file.to_str().unwrap();
    let child = Command::new(KVCTL)
        .args(["--cluster", cluster_arg, "snapshot", "import", file_arg])
        .env("KVD", KVD)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !target.kvctl(&["get", "key000300"]).status.success() {
        assert!(Instant::now() < deadline, "the import never got going");
        std::thread::sleep(Duration::from_millis(20));
    }
    running.0.kill().unwrap();
    running.0.wait().unwrap();
    let partial = full_scan(&target).lines().count();
    assert!(
        partial > 0 && partial < 20_000,
        "{partial} items after the kill"
    );
    // ... and run again: exactly the file.
    let text = ok(&target.kvctl(&["snapshot", "import", file_arg]));
    assert!(text.starts_with("imported 20000 items"), "{text}");
    assert_eq!(full_scan(&target), expected);
}

/// Writes a file of `items` (keys rising) in one shard.
fn write_items(path: &Path, items: &[(Vec<u8>, Vec<u8>)]) {
    let mut writer = SnapshotFileWriter::create(
        RealFs::shared(),
        path,
        Header {
            num: 1,
            created_ms: 0,
        },
    )
    .unwrap();
    writer.begin_shard(0, b"", None).unwrap();
    for (key, value) in items {
        writer.item(key, value).unwrap();
    }
    writer.end_shard().unwrap();
    writer.finish().unwrap();
}

#[test]
fn a_failed_import_says_how_far_it_got_and_whether_the_cluster_changed() {
    let target = TestCluster::up(&SMALL);
    let dir = tempfile::tempdir().unwrap();
    // Above the group's default value_bytes_max (1 MiB): refused, so the
    // failing put itself certainly did nothing.
    let too_large = vec![b'x'; 2 << 20];

    // Refused before anything was in: a definite failure.
    let first = dir.path().join("first.kvs");
    write_items(&first, &[(b"big".to_vec(), too_large.clone())]);
    let failed = target.kvctl(&["-o", "json", "snapshot", "import", first.to_str().unwrap()]);
    assert_eq!(failed.status.code(), Some(1));
    let reply = json_line(&stdout(&failed));
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["indeterminate"], false, "{reply}");
    assert_eq!(reply["items"], 0, "{reply}");
    let error = reply["error"].as_str().unwrap();
    assert!(error.contains("after 0 of 1 items"), "{error}");
    assert!(
        error.contains("put \"big\"") && error.contains("at most"),
        "{error}"
    );
    assert!(error.contains("running the same import again"), "{error}");
    assert_eq!(full_scan(&target), "");

    // Refused after 500 items: every one before it was taken off the queue
    // first, and each worker finishes its put, so exactly 500 are in and
    // the reply must not claim the cluster is unchanged.
    let mut items: Vec<(Vec<u8>, Vec<u8>)> = (0..500)
        .map(|i| {
            (
                format!("key{i:06}").into_bytes(),
                format!("value-{i}").into_bytes(),
            )
        })
        .collect();
    items.push((b"key000500".to_vec(), too_large));
    let last = dir.path().join("last.kvs");
    let last_arg = last.to_str().unwrap();
    write_items(&last, &items);
    let failed = target.kvctl(&["-o", "json", "snapshot", "import", last_arg]);
    assert_eq!(failed.status.code(), Some(1));
    let reply = json_line(&stdout(&failed));
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["indeterminate"], true, "{reply}");
    assert_eq!(reply["items"], 500, "{reply}");
    assert_eq!(full_scan(&target).lines().count(), 500);
    let failed = target.kvctl(&["snapshot", "import", last_arg]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(
        stderr(&failed).contains("after 500 of 501 items were imported"),
        "{}",
        stderr(&failed)
    );
}
