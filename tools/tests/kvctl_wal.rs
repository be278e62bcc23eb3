//! `kvctl wal dump|verify` as a person uses them, with the real binary: the
//! decoded records of a real WAL in text and JSON lines, a flipped byte
//! reported with its segment file and the byte offset of the damaged
//! record, a torn tail reported as a note with exit 0, a running node's WAL
//! read without changing a byte of it, and bad paths refused clearly.
//!
//! Method: most tests write a WAL with paxos-log's own WAL-backed acceptor
//! store (the code a node runs) into a temporary directory, with small
//! segments so the log spans several files, then damage copies of it. The
//! expected byte offsets are computed here from the format in
//! `docs/disk-format.md` (32-byte segment header, then frames of a 16-byte
//! header and `len` payload bytes), independently of the code under test.
//! One test starts a real one-controller, one-replica cluster with
//! [`common::TestCluster`] and reads its nodes' WALs while they run and
//! after they stop.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::SystemTime;

use common::{ok, run_kvctl, stderr, stdout, TestCluster};
use controller::wire::{ControllerCommand, ControllerOp};
use paxos_log::{AcceptorStore, Ballot, NodeId, PersistOp, Value, WalAcceptorStore};
use serde_json::Value as Json;
use shardkv::wire::{Command as KvCommand, WriteOp};
use storage::wal::WalOptions;
use storage::RealFs;
use tempfile::TempDir;

const SEGMENT_HEADER_LEN: u64 = 32;
const FRAME_HEADER_LEN: u64 = 16;

fn kvctl(args: &[&str]) -> Output {
    run_kvctl(args, None, None)
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn ballot(round: u64, node: u64) -> Ballot {
    Ballot {
        round,
        node_id: NodeId(node),
    }
}

/// `command` behind the 16-byte tag the paxos-log driver puts before every
/// command it proposes (proposer id, sequence number).
fn tagged(command: &[u8]) -> Vec<u8> {
    let mut bytes = 0x1234u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes.extend_from_slice(command);
    bytes
}

fn put(key: &str, value: &str) -> Vec<u8> {
    tagged(&shardkv::wire::encode(&KvCommand::Write {
        client_id: 42,
        seq: 3,
        stamp_ms: 1_700_000_000_000,
        limits: shardkv::Limits::default().apply_limits(),
        op: WriteOp::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        },
    }))
}

/// Writes a WAL the way a node does: a promise, accepts of client writes,
/// a controller command, a membership change, a chosen no-op and a
/// compaction checkpoint in the first segment, then more accepts, two per
/// segment (segments of at most 400 bytes after a restart).
fn build_wal(dir: &Path) {
    let mut store = WalAcceptorStore::open(RealFs::shared(), dir, WalOptions::default()).unwrap();
    store
        .persist(&[PersistOp::Promise {
            ballot: ballot(1, 1),
        }])
        .unwrap();
    let join = tagged(&controller::wire::encode(&ControllerCommand::Change {
        client_id: 5,
        seq: 1,
        op: ControllerOp::Join {
            groups: BTreeMap::from([(1, vec!["127.0.0.1:7401".to_string()])]),
        },
    }));
    store
        .persist(&[
            PersistOp::Accept {
                slot: 1,
                ballot: ballot(1, 1),
                value: Value::Commands(vec![put("wal-key", "wal-value")]),
            },
            PersistOp::Accept {
                slot: 2,
                ballot: ballot(1, 1),
                value: Value::Commands(vec![join]),
            },
            PersistOp::Accept {
                slot: 3,
                ballot: ballot(1, 1),
                value: Value::Reconfigure(vec![NodeId(1), NodeId(2), NodeId(3)]),
            },
            PersistOp::Chosen {
                slot: 4,
                value: Value::Noop,
            },
        ])
        .unwrap();
    store.compact(1).unwrap();
    drop(store);
    let options = WalOptions {
        segment_size_bytes_max: 400,
        ..WalOptions::default()
    };
    let mut store = WalAcceptorStore::open(RealFs::shared(), dir, options).unwrap();
    for slot in 5..=14u64 {
        store
            .persist(&[PersistOp::Accept {
                slot,
                ballot: ballot(2, 1),
                value: Value::Commands(vec![put(&format!("key-{slot}"), &format!("v{slot}"))]),
            }])
            .unwrap();
    }
}

/// The segment files of a WAL directory, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .collect();
    files.sort();
    files
}

/// `(start offset, payload length)` of every frame of a segment, from the
/// documented layout.
fn frames(bytes: &[u8]) -> Vec<(u64, u64)> {
    let mut frames = Vec::new();
    let mut offset = SEGMENT_HEADER_LEN;
    while offset + FRAME_HEADER_LEN <= bytes.len() as u64 {
        let at = usize::try_from(offset).unwrap();
        let len = u64::from(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()));
        frames.push((offset, len));
        offset += FRAME_HEADER_LEN + len;
    }
    frames
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Every file under `dir`: its bytes and modification time.
fn tree(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
                files.insert(path, (bytes, modified));
            }
        }
    }
    files
}

fn json_lines(text: &str) -> Vec<Json> {
    text.lines()
        .map(|line| {
            let value: Json =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert!(value.is_object(), "{line}");
            value
        })
        .collect()
}

/// Every command object of every accepted or chosen value in JSON lines.
fn commands(records: &[Json]) -> Vec<Json> {
    records
        .iter()
        .flat_map(|record| record["ops"].as_array().cloned().unwrap_or_default())
        .filter_map(|op| op["value"]["commands"].as_array().cloned())
        .flatten()
        .collect()
}

#[test]
fn dump_decodes_promises_accepts_client_operations_and_checkpoints() {
    let temp = TempDir::new().unwrap();
    let wal = temp.path().join("wal");
    build_wal(&wal);
    assert!(segments(&wal).len() >= 3, "the log spans several segments");

    let output = kvctl(&["wal", "dump", &path_arg(&wal)]);
    let text = ok(&output);
    for expected in [
        "promise ballot 1.1",
        "accept slot 1 ballot 1.1: 1 command(s)",
        "write client 42 seq 3 stamp_ms 1700000000000: put \"wal-key\" = \"wal-value\"",
        "controller change client 5 seq 1: join groups {1 [\"127.0.0.1:7401\"]}",
        "reconfigure: members [1, 2, 3]",
        "chosen slot 4: noop",
        "checkpoint promised 1.1 compacted_upto slot 1",
        "accept slot 14 ballot 2.1: 1 command(s)",
        "put \"key-14\" = \"v14\"",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    let first = segments(&wal)[0].clone();
    assert!(
        text.contains(&format!("== segment {}", first.display())),
        "{text}"
    );
    let err = stderr(&output);
    assert!(
        err.contains(&format!("read WAL directory {}", wal.display())),
        "{err}"
    );

    // The same records as JSON lines, and nothing else on stdout.
    let output = kvctl(&["wal", "dump", &path_arg(&wal), "--json"]);
    let records = json_lines(&ok(&output));
    // `-o json` is the same as `--json`.
    let global = kvctl(&["-o", "json", "wal", "dump", &path_arg(&wal)]);
    assert_eq!(ok(&global), stdout(&output));
    let text_records = text.lines().filter(|l| l.starts_with("lsn ")).count();
    assert_eq!(records.len(), text_records);
    let promise = &records[0]["ops"][0];
    assert_eq!(promise["op"], "promise");
    assert_eq!(promise["ballot"]["round"], 1);
    assert_eq!(promise["ballot"]["node_id"], 1);
    assert_eq!(records[0]["offset"], SEGMENT_HEADER_LEN);
    let accept = records
        .iter()
        .flat_map(|r| r["ops"].as_array().cloned().unwrap_or_default())
        .find(|op| op["op"] == "accept" && op["slot"] == 1)
        .expect("the accept of slot 1");
    assert_eq!(accept["ballot"]["round"], 1);
    let write = &accept["value"]["commands"][0];
    assert_eq!(write["decoder"], "shardkv");
    assert_eq!(write["command"], "write");
    assert_eq!(write["op"], "put");
    assert_eq!(write["key"], "wal-key");
    assert_eq!(write["value"], "wal-value");
    assert_eq!(write["client_id"], 42);
    let all = commands(&records);
    assert!(all
        .iter()
        .any(|c| c["decoder"] == "controller" && c["op"] == "join"));
    assert!(records.iter().any(|r| r["ops"]
        .as_array()
        .unwrap()
        .iter()
        .any(|op| op["op"] == "checkpoint" && op["compacted_upto"] == 1)));

    // Also from the data directory and a node directory, and one segment.
    let node = temp.path().join("node");
    copy_dir(&wal, &node.join("data").join("wal"));
    let output = kvctl(&["wal", "dump", &path_arg(&node.join("data"))]);
    assert_eq!(
        ok(&output),
        text.replace(&path_arg(&wal), &path_arg(&node.join("data").join("wal")))
    );
    assert!(
        stderr(&output).contains("of data directory"),
        "{}",
        stderr(&output)
    );
    let output = kvctl(&["wal", "dump", &path_arg(&node)]);
    ok(&output);
    assert!(
        stderr(&output).contains("of node directory"),
        "{}",
        stderr(&output)
    );
    let output = kvctl(&["wal", "dump", "--json", &path_arg(&first)]);
    let one = json_lines(&ok(&output));
    assert!(!one.is_empty() && one.len() < records.len());
}

#[test]
fn verify_accepts_a_good_wal_and_names_the_file_and_offset_of_a_damaged_record() {
    let temp = TempDir::new().unwrap();
    let good = temp.path().join("good");
    build_wal(&good);
    let output = kvctl(&["wal", "verify", &path_arg(&good)]);
    let text = ok(&output);
    assert!(text.starts_with("ok: "), "{text}");
    let output = kvctl(&["-o", "json", "wal", "verify", &path_arg(&good)]);
    let summary = json_lines(&ok(&output));
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0]["ok"], true);
    assert_eq!(summary[0]["torn_tail"], Json::Null);

    let files = segments(&good);
    // A record in the middle of a sealed segment, and one in the middle of
    // the last segment (followed by a valid record): both are corruption.
    let sealed = files.len() / 2;
    for (index, file) in [
        (sealed, &files[sealed]),
        (files.len() - 1, files.last().unwrap()),
    ] {
        let bytes = std::fs::read(file).unwrap();
        let frames = frames(&bytes);
        assert!(frames.len() >= 2, "segment {index} has records to damage");
        let victim = if index == files.len() - 1 {
            frames.len() - 2
        } else {
            frames.len() / 2
        };
        let (start, len) = frames[victim];
        let copy = temp.path().join(format!("damaged-{index}"));
        copy_dir(&good, &copy);
        let damaged_file = copy.join(file.file_name().unwrap());
        let mut damaged = bytes.clone();
        let flip = usize::try_from(start + FRAME_HEADER_LEN + len / 2).unwrap();
        damaged[flip] ^= 0x20;
        std::fs::write(&damaged_file, &damaged).unwrap();

        let output = kvctl(&["wal", "verify", &path_arg(&copy)]);
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        let err = stderr(&output);
        assert!(
            err.contains(&format!(
                "corruption in {} at byte offset {start}:",
                damaged_file.display()
            )),
            "segment {index}, record at {start}: {err}"
        );
        assert_eq!(stdout(&output), "");

        // JSON: the same place, as fields.
        let output = kvctl(&["-o", "json", "wal", "verify", &path_arg(&copy)]);
        assert_eq!(output.status.code(), Some(1));
        let reply = json_lines(&stdout(&output));
        assert_eq!(reply[0]["ok"], false);
        assert_eq!(reply[0]["file"], path_arg(&damaged_file));
        assert_eq!(reply[0]["offset"], start);

        // dump shows what precedes the damage, then fails the same way.
        let output = kvctl(&["wal", "dump", &path_arg(&copy)]);
        assert_eq!(output.status.code(), Some(1));
        assert!(
            stderr(&output).contains(&format!("at byte offset {start}:")),
            "{}",
            stderr(&output)
        );
        assert!(stdout(&output).contains("lsn 1 @ "), "{}", stdout(&output));
    }
}

#[test]
fn a_torn_tail_is_a_note_with_exit_0_and_is_left_in_place() {
    let temp = TempDir::new().unwrap();
    let wal = temp.path().join("wal");
    build_wal(&wal);
    let last = segments(&wal).last().unwrap().clone();
    let bytes = std::fs::read(&last).unwrap();
    let (start, len) = *frames(&bytes).last().unwrap();
    let cut = start + FRAME_HEADER_LEN + len / 2;
    std::fs::write(&last, &bytes[..usize::try_from(cut).unwrap()]).unwrap();
    let before = tree(&wal);

    let output = kvctl(&["wal", "verify", &path_arg(&wal)]);
    let text = ok(&output);
    assert!(text.starts_with("ok: "), "{text}");
    let err = stderr(&output);
    assert!(
        err.contains(&format!(
            "the last segment {} ends in a partial record at byte offset {start}",
            last.display()
        )),
        "{err}"
    );
    assert!(err.contains("not corruption"), "{err}");

    let output = kvctl(&["-o", "json", "wal", "verify", &path_arg(&wal)]);
    let summary = json_lines(&ok(&output));
    assert_eq!(summary[0]["torn_tail"]["file"], path_arg(&last));
    assert_eq!(summary[0]["torn_tail"]["offset"], start);

    let output = kvctl(&["wal", "dump", &path_arg(&wal)]);
    ok(&output);
    assert!(
        stderr(&output).contains("partial record"),
        "{}",
        stderr(&output)
    );
    assert_eq!(tree(&wal), before, "verify and dump cut nothing off");
}

#[test]
fn bad_paths_exit_1_with_a_clear_message() {
    let temp = TempDir::new().unwrap();
    let missing = temp.path().join("no-such-node");
    let output = kvctl(&["wal", "verify", &path_arg(&missing)]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains(&path_arg(&missing)) && err.contains("no such file or directory"),
        "{err}"
    );

    let text_file = temp.path().join("notes.txt");
    std::fs::write(&text_file, "these are notes, not a write-ahead log\n").unwrap();
    for command in ["verify", "dump"] {
        let output = kvctl(&["wal", command, &path_arg(&text_file)]);
        assert_eq!(output.status.code(), Some(1), "{command}");
        let err = stderr(&output);
        assert!(
            err.contains("not a WAL") && err.contains("SHARDWAL"),
            "{err}"
        );
        assert_eq!(stdout(&output), "");
    }

    let empty = temp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let output = kvctl(&["wal", "dump", &path_arg(&empty)]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("no wal/"), "{}", stderr(&output));

    // A file named like a segment that is not one: damage at its header.
    let fake = temp.path().join("fake");
    std::fs::create_dir(&fake).unwrap();
    let segment = fake.join("00000000000000000001.wal");
    std::fs::write(&segment, vec![0u8; 100]).unwrap();
    let output = kvctl(&["wal", "verify", &path_arg(&fake)]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains(&format!(
            "corruption in {} at byte offset 0",
            segment.display()
        )),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_running_nodes_wal_is_read_without_changing_it() {
    let cluster = TestCluster::up(&[
        "--controllers",
        "1",
        "--groups",
        "1",
        "--replicas",
        "1",
        "--shards",
        "2",
    ]);
    ok(&cluster.kvctl(&["put", "live-key", "live-value"]));
    let group = cluster.dir.join("g1-n1");
    let controller = cluster.dir.join("c1");
    let wal = group.join("data").join("wal");
    assert!(wal.is_dir(), "{}", wal.display());

    // While the nodes run (and hold their data-directory locks).
    assert!(cluster.pid("g1-n1").is_some() && cluster.pid("c1").is_some());
    let before = tree(&wal);
    let output = kvctl(&["wal", "dump", &path_arg(&group)]);
    let text = ok(&output);
    assert!(text.contains("put \"live-key\" = \"live-value\""), "{text}");
    assert!(text.contains("promise ballot"), "{text}");
    assert!(
        stderr(&output).contains(&format!("read WAL directory {}", wal.display())),
        "{}",
        stderr(&output)
    );
    let records = json_lines(&ok(&kvctl(&["wal", "dump", "--json", &path_arg(&group)])));
    assert!(commands(&records)
        .iter()
        .any(|c| c["key"] == "live-key" && c["value"] == "live-value"));
    assert!(commands(&records)
        .iter()
        .any(|c| c["command"] == "install_config"));
    ok(&kvctl(&["wal", "verify", &path_arg(&group.join("data"))]));
    let controller_dump = ok(&kvctl(&["wal", "dump", &path_arg(&controller)]));
    assert!(
        controller_dump.contains("controller change") && controller_dump.contains("join groups"),
        "{controller_dump}"
    );
    assert!(cluster.pid("g1-n1").is_some(), "the node ran throughout");
    // The node may append meanwhile, never kvctl: every file that was there
    // still starts with the bytes it had, and only segments are new.
    let after = tree(&wal);
    for (path, (bytes, _)) in &before {
        if let Some((now, _)) = after.get(path) {
            assert!(now.starts_with(bytes), "{} changed", path.display());
        }
    }
    for path in after.keys().filter(|path| !before.contains_key(*path)) {
        assert!(
            path.extension().is_some_and(|e| e == "wal"),
            "{}",
            path.display()
        );
    }

    // Stopped: not one byte, file or modification time changes.
    ok(&cluster.kvctl(&["cluster", "down"]));
    let node_before = tree(&group);
    ok(&kvctl(&["wal", "dump", &path_arg(&group)]));
    ok(&kvctl(&["wal", "dump", "--json", &path_arg(&wal)]));
    ok(&kvctl(&["wal", "verify", &path_arg(&group)]));
    assert_eq!(tree(&group), node_before);
}
