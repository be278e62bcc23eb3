//! Fuzz targets, as proptest suites, for the decoders of untrusted files in
//! the tools crate: the `kvctl snapshot` export file reader
//! ([`SnapshotFileReader`] and [`snapshot_file::verify`]) and the WAL
//! inspection behind `kvctl wal verify` / `kvctl wal dump`
//! ([`wal_inspect::verify`], [`wal_inspect::dump`], and the record and
//! command decoders and renderers they use).
//!
//! Why: `kvctl` reads files that an operator copied around, a disk damaged,
//! or a crash cut short. Whatever the bytes, it must never panic or
//! allocate what a damaged length field claims, and its errors must name
//! the file, the byte offset and the problem.
//!
//! Properties:
//!
//! * Snapshot files, written with the real [`SnapshotFileWriter`] (random
//!   shards and items) and read back: exactly the entries written and the
//!   writer's summary. Mutated (bit flips, truncation, bytes overwritten,
//!   inserted, removed or appended, length and count fields set huge) or
//!   arbitrary: any change is `Damaged`, naming the file, an offset inside
//!   it and what is wrong; the entries read before the error are a prefix
//!   of those written; no panic; the process's peak virtual memory does not
//!   grow by anything like a claimed length. The file-based `verify`
//!   agrees with the streaming reader.
//! * WAL inspection, on a WAL written by the real `storage` WAL (acceptor
//!   records holding shardkv, controller and opaque commands) with one
//!   segment mutated: `verify` reports exactly what `storage`'s own
//!   `WalReader` plus the acceptor record decoder find: the same corruption
//!   (file and offset), the same undecodable record (LSN), or the same
//!   records and torn tail. `dump` (text and JSON lines) never panics,
//!   fails only on that same corruption, and writes one valid JSON object
//!   per record, in LSN order. A segment given alone never panics either.
//! * `decode_command`, `record_text`, `record_json`, `text_bytes` on
//!   arbitrary bytes: no panic, and the rendering says what the bytes are.
//!
//! Failing seeds are saved to `fuzz_decoders.proptest-regressions` beside
//! this file and replayed first; a crash found here becomes a named
//! `#[test]` with its exact bytes.
//!
//! Cases default to a few seconds per target on a slow 2-core machine in a
//! dev build; to fuzz longer, set `PROPTEST_CASES`, e.g.
//! `PROPTEST_CASES=100000 cargo nextest run -p tools --test fuzz_decoders`.

use std::path::{Path, PathBuf};

use fuzz_support::{
    bounded, config, huge_u64, mutated, mutations_with, put_field, FieldMutations, Mutation,
};
use paxos_log::store::wal::{decode_acceptor_record, ACCEPTOR_RECORD_VERSION};
use paxos_log::{Ballot, NodeId, PersistOp, Value};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use serde_json::Value as Json;
use storage::wal::{Wal, WalOptions, WalReader};
use storage::{RealFs, SimFs, StorageError};
use tools::snapshot_file::{
    self, Entry, Header, SnapshotFileError, SnapshotFileReader, SnapshotFileWriter, Summary,
    HEADER_BYTES, RECORD_BYTES_MAX, TRAILER_MARK,
};
use tools::wal_inspect::{
    self, decode_command, record_json, record_text, text_bytes, CommandKind, DumpFormat, RecordRef,
    WalInspectError, WalSource, TEXT_BYTES_SHOWN_MAX,
};

// ---------------------------------------------------------------------------
// Mutations.
// ---------------------------------------------------------------------------

/// 4-byte values a damaged length field of a snapshot file may claim: the
/// shared huge ones, and the record limit and just past it.
fn huge_u32() -> impl Strategy<Value = u32> {
    fuzz_support::huge_u32(&[RECORD_BYTES_MAX, RECORD_BYTES_MAX + 1])
}

/// Mutations of the files `kvctl` reads: 4-byte little-endian fields
/// (lengths) set to [`huge_u32`], twice as often as 8-byte fields are set.
fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    mutations_with(&FieldMutations {
        u32_weight: 2,
        u32_values: huge_u32().boxed(),
        u64_weight: 1,
        ..FieldMutations::default()
    })
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn len_u64(len: usize) -> u64 {
    u64::try_from(len).expect("lengths fit in u64")
}

// ---------------------------------------------------------------------------
// Snapshot files.
// ---------------------------------------------------------------------------

/// One shard of a snapshot file to write.
#[derive(Debug, Clone)]
struct ShardSpec {
    id: u64,
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    items: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Shards with disjoint ranges `[b_i, b_i+1)` from sorted one-byte
/// boundaries (the last one open or ending at `[255, 255]`), distinct ids,
/// and items in strictly increasing key order inside their range; written
/// in generated or reversed order.
fn shard_specs() -> impl Strategy<Value = Vec<ShardSpec>> {
    (
        proptest::collection::btree_set(any::<u8>(), 1..5),
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
        vec(vec((bytes(4), bytes(12)), 0..5), 5),
    )
        .prop_map(|(boundaries, open_end, reversed, id_base, items)| {
            let boundaries: Vec<u8> = boundaries.into_iter().collect();
            let mut shards: Vec<ShardSpec> = boundaries
                .iter()
                .enumerate()
                .map(|(index, &first)| {
                    let start = vec![first];
                    let end = match boundaries.get(index + 1) {
                        Some(&next) => Some(vec![next]),
                        None if open_end => None,
                        None => Some(vec![255, 255]),
                    };
                    let mut shard_items: Vec<(Vec<u8>, Vec<u8>)> = items[index]
                        .iter()
                        .map(|(suffix, value)| ([start.as_slice(), suffix].concat(), value.clone()))
                        .filter(|(key, _)| end.as_ref().is_none_or(|end| key < end))
                        .collect();
                    shard_items.sort();
                    shard_items.dedup_by(|a, b| a.0 == b.0);
                    ShardSpec {
                        id: id_base.wrapping_add(len_u64(index) * 7),
                        start,
                        end,
                        items: shard_items,
                    }
                })
                .collect();
            if reversed {
                shards.reverse();
            }
            shards
        })
}

/// What a reader must read back from a file of `shards`.
fn expected_entries(shards: &[ShardSpec]) -> Vec<Entry> {
    let mut entries = Vec::new();
    for shard in shards {
        entries.push(Entry::ShardBegin {
            id: shard.id,
            start: shard.start.clone(),
            end: shard.end.clone(),
        });
        let mut bytes = 0;
        for (key, value) in &shard.items {
            entries.push(Entry::Item {
                key: key.clone(),
                value: value.clone(),
            });
            bytes += len_u64(key.len() + value.len());
        }
        entries.push(Entry::ShardEnd {
            items: len_u64(shard.items.len()),
            bytes,
        });
    }
    entries
}

const EXPORT: &str = "/export/cluster.kvs";

/// Writes `shards` with the real writer (on the in-memory filesystem) and
/// returns the file's bytes and the writer's summary.
fn write_snapshot_file(header: Header, shards: &[ShardSpec]) -> (Vec<u8>, Summary) {
    let sim = SimFs::new();
    let fs = sim.shared();
    fs.create_dir_all(Path::new("/export")).expect("mkdir");
    let path = Path::new(EXPORT);
    let mut writer = SnapshotFileWriter::create(fs.clone(), path, header).expect("create");
    for shard in shards {
        writer
            .begin_shard(shard.id, &shard.start, shard.end.as_deref())
            .expect("begin shard");
        for (key, value) in &shard.items {
            writer.item(key, value).expect("item");
        }
        writer.end_shard().expect("end shard");
    }
    let summary = writer.finish().expect("finish");
    (fs.read(path).expect("read"), summary)
}

/// Reads a whole file: the entries read, and how it ended.
fn read_snapshot_file(bytes: &[u8]) -> (Vec<Entry>, Result<Summary, SnapshotFileError>) {
    let mut entries = Vec::new();
    let mut reader = match SnapshotFileReader::new(bytes, Path::new(EXPORT)) {
        Ok(reader) => reader,
        Err(error) => return (entries, Err(error)),
    };
    loop {
        match reader.next_entry() {
            Ok(Some(entry)) => entries.push(entry),
            Ok(None) => return (entries, Ok(reader.summary())),
            Err(error) => return (entries, Err(error)),
        }
    }
}

/// A damaged file's error: `Damaged`, naming the file, an offset inside it
/// and the problem.
fn check_damaged(error: &SnapshotFileError, path: &Path, len: usize) -> Result<(), TestCaseError> {
    match error {
        SnapshotFileError::Damaged {
            path: named,
            offset,
            what,
        } => {
            prop_assert_eq!(named.as_path(), path);
            prop_assert!(
                *offset <= len_u64(len),
                "offset {} past the end ({})",
                offset,
                len
            );
            prop_assert!(!what.is_empty());
        }
        other => return Err(TestCaseError::fail(format!("not Damaged: {other:?}"))),
    }
    let text = error.to_string();
    prop_assert!(text.contains(&path.display().to_string()), "{}", text);
    prop_assert!(text.contains("byte offset"), "{}", text);
    Ok(())
}

/// Reads `bytes` (the file of `expected`, possibly changed): intact, exactly
/// the entries and summary written; changed, `Damaged` after a prefix of
/// the entries.
fn check_snapshot_file(
    bytes: &[u8],
    original: &[u8],
    expected: &[Entry],
    summary: &Summary,
) -> Result<(), TestCaseError> {
    let (entries, end) = bounded(|| read_snapshot_file(bytes))?;
    prop_assert!(
        entries.len() <= expected.len() && entries[..] == expected[..entries.len()],
        "entries that were never written were read"
    );
    match end {
        Ok(read) => {
            prop_assert!(bytes == original, "a changed file read as intact");
            prop_assert_eq!(&entries[..], expected);
            prop_assert_eq!(&read, summary);
        }
        Err(error) => {
            prop_assert!(bytes != original, "an intact file failed: {}", error);
            check_damaged(&error, Path::new(EXPORT), bytes.len())?;
        }
    }
    Ok(())
}

/// The offset of every record frame of a snapshot file, then the trailer's.
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = HEADER_BYTES;
    loop {
        offsets.push(at);
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        if len == TRAILER_MARK {
            return offsets;
        }
        at += 8 + usize::try_from(len).expect("fits");
    }
}

fn header() -> impl Strategy<Value = Header> {
    (any::<u64>(), any::<u64>()).prop_map(|(num, created_ms)| Header { num, created_ms })
}

proptest! {
    #![proptest_config(config(4096))]

    /// Written, then read back whole, or mutated: exact, or `Damaged`
    /// after a prefix.
    #[test]
    fn snapshot_file_mutated_is_damaged_after_a_prefix(
        header in header(),
        shards in shard_specs(),
        mutations in mutations(),
    ) {
        let (original, summary) = write_snapshot_file(header, &shards);
        let expected = expected_entries(&shards);
        check_snapshot_file(&original, &original, &expected, &summary)?;
        let bytes = mutated(&original, &mutations);
        check_snapshot_file(&bytes, &original, &expected, &summary)?;
    }

    /// Arbitrary bytes, raw or behind the magic: always `Damaged`.
    #[test]
    fn snapshot_file_of_arbitrary_bytes_is_damaged(
        tail in bytes(256),
        with_magic in any::<bool>(),
    ) {
        let mut bytes = if with_magic { snapshot_file::MAGIC.to_vec() } else { Vec::new() };
        bytes.extend(tail);
        let (entries, end) = bounded(|| read_snapshot_file(&bytes))?;
        prop_assert!(entries.is_empty());
        match end {
            Ok(summary) => return Err(TestCaseError::fail(format!("random bytes read: {summary:?}"))),
            Err(error) => check_damaged(&error, Path::new(EXPORT), bytes.len())?,
        }
    }

    /// A record length set huge or past the end, or the trailer's count set
    /// huge: `Damaged`, without allocating what they claim.
    #[test]
    fn snapshot_file_with_huge_length_fields_is_damaged_without_allocating(
        header in header(),
        shards in shard_specs(),
        which in any::<Index>(),
        len in huge_u32(),
        count in huge_u64(),
    ) {
        let (original, summary) = write_snapshot_file(header, &shards);
        let expected = expected_entries(&shards);
        let offsets = record_offsets(&original);
        let at = offsets[which.index(offsets.len())];
        let mut bytes = original.clone();
        if at == *offsets.last().expect("a trailer") {
            put_field(&mut bytes, at + 4, &count.to_le_bytes());
        } else {
            put_field(&mut bytes, at, &len.to_le_bytes());
        }
        check_snapshot_file(&bytes, &original, &expected, &summary)?;
    }
}

proptest! {
    #![proptest_config(config(1024))]

    /// The file-based `verify` (what `kvctl snapshot verify` runs) agrees
    /// with the streaming reader on real files.
    #[test]
    fn snapshot_file_verify_agrees_with_the_reader(
        header in header(),
        shards in shard_specs(),
        mutations in mutations(),
    ) {
        let (original, summary) = write_snapshot_file(header, &shards);
        let bytes = mutated(&original, &mutations);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("copy.kvs");
        std::fs::write(&path, &bytes).expect("write");
        let (_, streamed) = read_snapshot_file(&bytes);
        match (bounded(|| snapshot_file::verify(&path))?, streamed) {
            (Ok(verified), Ok(read)) => {
                prop_assert_eq!(verified, read);
                prop_assert_eq!(verified, summary);
            }
            (Err(error), Err(streamed)) => {
                check_damaged(&error, &path, bytes.len())?;
                prop_assert_eq!(error.offset(), streamed.offset());
            }
            (verified, streamed) => {
                return Err(TestCaseError::fail(format!("verify {verified:?}, reader {streamed:?}")));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// WAL inspection.
// ---------------------------------------------------------------------------

/// `command` behind the 16-byte tag the paxos-log driver puts before every
/// command it proposes.
fn tagged(proposer: u64, seq: u64, command: &[u8]) -> Vec<u8> {
    let mut bytes = proposer.to_le_bytes().to_vec();
    bytes.extend_from_slice(&seq.to_le_bytes());
    bytes.extend_from_slice(command);
    bytes
}

/// A command as a replica proposes it: a shardkv or a controller command,
/// or opaque bytes, behind the tag; or fewer bytes than a tag.
fn proposed_command() -> impl Strategy<Value = Vec<u8>> {
    let kv = (any::<u64>(), bytes(8), bytes(8)).prop_map(|(client_id, key, value)| {
        shardkv::wire::encode(&shardkv::wire::Command::Write {
            client_id,
            seq: 1,
            stamp_ms: 2,
            limits: shardkv::Limits::default().apply_limits(),
            op: shardkv::wire::WriteOp::Put { key, value },
        })
    });
    let control = (any::<u64>(), bytes(8)).prop_map(|(client_id, key)| {
        controller::wire::encode(&controller::wire::ControllerCommand::Change {
            client_id,
            seq: 1,
            op: controller::wire::ControllerOp::Split { key },
        })
    });
    prop_oneof![
        (
            any::<u64>(),
            any::<u64>(),
            prop_oneof![kv, control, bytes(24)]
        )
            .prop_map(|(proposer, seq, command)| tagged(proposer, seq, &command)),
        bytes(16),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Noop),
        vec(proposed_command(), 0..3).prop_map(Value::Commands),
        vec(any::<u64>().prop_map(NodeId), 1..4).prop_map(Value::Reconfigure),
    ]
}

fn ballot() -> impl Strategy<Value = Ballot> {
    (0u64..8, 0u64..4).prop_map(|(round, node)| Ballot {
        round,
        node_id: NodeId(node),
    })
}

fn persist_op() -> impl Strategy<Value = PersistOp> {
    prop_oneof![
        ballot().prop_map(|ballot| PersistOp::Promise { ballot }),
        (0u64..32, ballot(), value()).prop_map(|(slot, ballot, value)| PersistOp::Accept {
            slot,
            ballot,
            value
        }),
        (0u64..32, value()).prop_map(|(slot, value)| PersistOp::Chosen { slot, value }),
        (ballot(), 0u64..32).prop_map(|(promised, compacted_upto)| PersistOp::Checkpoint {
            promised,
            compacted_upto
        }),
    ]
}

/// The acceptor record format: the version byte, then bincode of the ops.
fn acceptor_record(ops: &[PersistOp]) -> Vec<u8> {
    let mut record = vec![ACCEPTOR_RECORD_VERSION];
    record.extend(bincode::serialize(ops).expect("ops encode"));
    record
}

/// A WAL record's payload: an acceptor record, mostly.
fn wal_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => vec(persist_op(), 1..3).prop_map(|ops| acceptor_record(&ops)),
        1 => bytes(24),
    ]
}

/// The segment files of a WAL directory, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .collect();
    files.sort();
    files
}

/// What a starting node would find, from `storage`'s own reader and the
/// acceptor record decoder: `Ok((records, torn tail))`, the first
/// undecodable record's LSN, or the storage error.
enum Reference {
    Read(u64, Option<(PathBuf, u64)>),
    Undecodable(u64),
    Refused(StorageError),
}

fn reference(dir: &Path) -> Reference {
    let reader = WalReader::open(
        RealFs::shared(),
        dir,
        WalOptions::default().record_size_bytes_max,
    )
    .expect("list the WAL");
    let mut undecodable = None;
    let result = reader.for_each_from(0, |lsn, payload| match decode_acceptor_record(payload) {
        Ok(_) => Ok(()),
        Err(_) => {
            undecodable = Some(lsn);
            Err(StorageError::InvalidArgument(format!(
                "record {lsn} does not decode"
            )))
        }
    });
    match (result, undecodable) {
        (Err(_), Some(lsn)) => Reference::Undecodable(lsn),
        (Err(error), None) => Reference::Refused(error),
        (Ok(report), _) => Reference::Read(report.record_count, report.torn_tail),
    }
}

/// The JSON lines of a dump: each one an object with an `lsn`, the LSNs
/// consecutive.
fn check_json_lines(output: &[u8]) -> Result<u64, TestCaseError> {
    let text = std::str::from_utf8(output).expect("JSON lines are UTF-8");
    let mut previous: Option<u64> = None;
    let mut count = 0;
    for line in text.lines() {
        let record: Json = serde_json::from_str(line).expect("each line is JSON");
        let lsn = record["lsn"].as_u64().expect("an lsn");
        if let Some(previous) = previous {
            prop_assert_eq!(lsn, previous + 1, "LSNs out of order in the dump");
        }
        prop_assert!(record["segment"].is_string() && record["offset"].is_u64());
        previous = Some(lsn);
        count += 1;
    }
    Ok(count)
}

proptest! {
    #![proptest_config(config(512))]

    /// A WAL written by the real `storage` WAL, one segment mutated:
    /// `verify` says exactly what a starting node would find; `dump` never
    /// panics, fails only on that corruption, and renders every record it
    /// reads; a segment given alone never panics.
    #[test]
    fn wal_inspect_of_a_mutated_wal_agrees_with_storage(
        payloads in vec(wal_payload(), 1..10),
        segment_size in 128u64..512,
        which in any::<Index>(),
        last in any::<bool>(),
        mutations in mutations(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal_dir = dir.path().join("wal");
        let options = WalOptions { segment_size_bytes_max: segment_size, ..WalOptions::default() };
        let (mut wal, _) = Wal::open(RealFs::shared(), &wal_dir, options).expect("create");
        for payload in &payloads {
            wal.append(payload).expect("append");
        }
        wal.sync().expect("sync");
        drop(wal);
        let files = segments(&wal_dir);
        let index = if last { files.len() - 1 } else { which.index(files.len()) };
        let original = std::fs::read(&files[index]).expect("read");
        std::fs::write(&files[index], mutated(&original, &mutations)).expect("write");

        let source = WalSource::WalDir(wal_dir.clone());
        let verified = wal_inspect::verify(&source);
        match (reference(&wal_dir), &verified) {
            (Reference::Read(count, torn), Ok(summary)) => {
                prop_assert_eq!(summary.record_count, count);
                prop_assert_eq!(summary.segment_count, files.len());
                if count > 0 {
                    prop_assert_eq!(summary.lsn_range, Some((1, count)));
                }
                let torn_found = summary.torn_tail.as_ref().map(|t| (t.path.clone(), t.offset));
                prop_assert_eq!(torn_found, torn);
            }
            (Reference::Undecodable(lsn), Err(WalInspectError::Undecodable { lsn: found, path, reason, .. })) => {
                prop_assert_eq!(*found, lsn);
                prop_assert!(files.contains(path) && !reason.is_empty());
            }
            (
                Reference::Refused(StorageError::Corruption { path, offset, .. }),
                Err(WalInspectError::Corruption { path: found, offset: found_offset, .. }),
            ) => {
                prop_assert_eq!((found, *found_offset), (&path, offset));
            }
            (
                Reference::Refused(StorageError::FormatVersion { path, .. }),
                Err(WalInspectError::FormatVersion { path: found, .. }),
            ) => {
                prop_assert_eq!(found, &path);
            }
            (_, other) => {
                return Err(TestCaseError::fail(format!("verify disagrees with storage: {other:?}")));
            }
        }
        if let Err(error) = &verified {
            let (path, _) = error.location().expect("the error names a place");
            prop_assert!(error.to_string().contains(&path.display().to_string()));
        }

        // Dumps: JSON lines and text, on the same bytes.
        let mut json = Vec::new();
        let dumped = wal_inspect::dump(&source, DumpFormat::JsonLines, &mut json);
        let lines = check_json_lines(&json)?;
        let mut text = Vec::new();
        let dumped_text = wal_inspect::dump(&source, DumpFormat::Text, &mut text);
        prop_assert!(std::str::from_utf8(&text).is_ok());
        // A dump shows undecodable records instead of failing on them, so
        // it fails exactly on what the storage reader alone refuses.
        let plain = WalReader::open(RealFs::shared(), &wal_dir, WalOptions::default().record_size_bytes_max)
            .expect("list the WAL")
            .for_each_from(0, |_, _| Ok(()));
        match (&plain, &dumped, &dumped_text) {
            (Ok(report), Ok(summary), Ok(_)) => {
                prop_assert_eq!(summary.record_count, report.record_count);
                prop_assert_eq!(lines, report.record_count);
            }
            (Err(StorageError::Corruption { path, offset, .. }), Err(error), Err(text_error)) => {
                prop_assert_eq!(error.location(), Some((path.as_path(), *offset)));
                prop_assert_eq!(text_error.location(), Some((path.as_path(), *offset)));
            }
            (Err(StorageError::FormatVersion { path, .. }), Err(error), Err(text_error)) => {
                prop_assert_eq!(error.location(), Some((path.as_path(), 8)));
                prop_assert_eq!(text_error.location(), Some((path.as_path(), 8)));
            }
            other => {
                return Err(TestCaseError::fail(format!("dump disagrees with storage: {other:?}")));
            }
        }

        // The mutated segment given alone: no panic, an error that says
        // what it is, or what it holds.
        let alone = WalSource::Segment(files[index].clone());
        if let Err(error) = wal_inspect::verify(&alone) {
            prop_assert!(!error.to_string().is_empty());
        }
    }
}

proptest! {
    #![proptest_config(config(4096))]

    /// `decode_command` on any bytes: the tag iff there are 16 bytes, and a
    /// kind consistent with the two decoders.
    #[test]
    fn wal_inspect_decodes_any_command(command in prop_oneof![proposed_command(), bytes(64)]) {
        let view = decode_command(&command);
        if command.len() < 16 {
            prop_assert_eq!(view.tag, None);
            prop_assert_eq!(view.bytes, &command[..]);
            prop_assert_eq!(view.kind, CommandKind::Opaque);
            return Ok(());
        }
        let proposer = u64::from_le_bytes(command[..8].try_into().expect("8 bytes"));
        let seq = u64::from_le_bytes(command[8..16].try_into().expect("8 bytes"));
        prop_assert_eq!(view.tag, Some((proposer, seq)));
        prop_assert_eq!(view.bytes, &command[16..]);
        let kv = shardkv::wire::decode::<shardkv::wire::Command>(view.bytes);
        let control = controller::wire::decode::<controller::wire::ControllerCommand>(view.bytes);
        match view.kind {
            CommandKind::Shardkv(decoded) => prop_assert_eq!(kv, Ok(decoded)),
            CommandKind::Controller(decoded) => {
                prop_assert!(kv.is_err());
                prop_assert_eq!(control, Ok(decoded));
            }
            CommandKind::Opaque => prop_assert!(kv.is_err() && control.is_err()),
        }
    }

    /// A record payload, rendered as text and JSON: no panic; a payload that
    /// does not decode is shown with the reason and in full (hex).
    #[test]
    fn wal_inspect_renders_any_record(
        payload in prop_oneof![
            bytes(96),
            vec(persist_op(), 0..3).prop_map(|ops| acceptor_record(&ops)),
            (vec(persist_op(), 1..3), mutations())
                .prop_map(|(ops, mutations)| mutated(&acceptor_record(&ops), &mutations)),
        ],
        lsn in any::<u64>(),
        offset in any::<u64>(),
    ) {
        let record = RecordRef { lsn, path: Path::new("/wal/00000000000000000001.wal"), offset, payload: &payload };
        let mut text = String::new();
        record_text(&record, &mut text);
        prop_assert!(text.starts_with(&format!("lsn {lsn} @ 00000000000000000001.wal:{offset}")), "{}", text);
        let json = record_json(&record);
        prop_assert_eq!(json["lsn"].as_u64(), Some(lsn));
        prop_assert_eq!(json["payload_bytes"].as_u64(), Some(len_u64(payload.len())));
        match decode_acceptor_record(&payload) {
            Ok(ops) => {
                prop_assert_eq!(json["ops"].as_array().map(Vec::len), Some(ops.len()));
                prop_assert!(text.contains(&format!("{} op(s)", ops.len())), "{}", text);
            }
            Err(reason) => {
                prop_assert!(json["ops"].is_null());
                prop_assert_eq!(json["error"].as_str(), Some(reason.as_str()));
                let hex: String = payload.iter().map(|byte| format!("{byte:02x}")).collect();
                prop_assert_eq!(json["payload_hex"].as_str(), Some(hex.as_str()));
                prop_assert!(text.contains("not an acceptor record"), "{}", text);
            }
        }
    }

    /// Bytes for a person: cut at the limit (on a character boundary) with
    /// how much was left out.
    #[test]
    fn wal_inspect_text_bytes_of_anything(
        bytes in prop_oneof![bytes(160), ".{0,100}".prop_map(String::into_bytes)],
    ) {
        let text = text_bytes(&bytes);
        if bytes.len() > TEXT_BYTES_SHOWN_MAX {
            prop_assert!(text.ends_with(" bytes)"), "{}", text);
        } else {
            prop_assert!(!text.contains("... (+"), "{}", text);
        }
        match std::str::from_utf8(&bytes) {
            Ok(_) => prop_assert!(text.starts_with('"'), "{}", text),
            Err(_) => prop_assert!(text.starts_with("0x"), "{}", text),
        }
    }
}
