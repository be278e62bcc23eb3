//! Snapshot files: round trips, crash and fault safety of the write protocol,
//! and detection of every damaged or truncated byte.

use std::path::{Path, PathBuf};

use storage::fs::Fault;
use storage::snapshot::{
    snapshot_file_name, verify_file, SnapshotInfo, SnapshotStore, CHUNK_BYTES_DEFAULT,
    CHUNK_BYTES_MAX, FORMAT_VERSION, META_BYTES_MAX,
};
use storage::{FsRef, RealFs, SimFs, StorageError};

const DIR: &str = "/data/snapshots";

/// Deterministic, non-repeating test bytes.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn dir() -> &'static Path {
    Path::new(DIR)
}

fn open_store(fs: &FsRef, chunk_target_bytes: usize) -> SnapshotStore {
    SnapshotStore::open(fs.clone(), dir())
        .unwrap()
        .with_chunk_target_bytes(chunk_target_bytes)
        .unwrap()
}

fn write_snapshot(
    store: &SnapshotStore,
    index: u64,
    meta: &[u8],
    pieces: &[Vec<u8>],
) -> storage::Result<SnapshotInfo> {
    let mut writer = store.begin(index, meta)?;
    for piece in pieces {
        writer.write_chunk(piece)?;
    }
    writer.finish()
}

/// Reads a snapshot back through the streaming reader; returns its meta and
/// chunks. Panics on any error.
fn read_back(store: &SnapshotStore, index: u64) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut reader = store.open_snapshot(index).unwrap();
    assert_eq!(reader.index(), index);
    assert!(
        reader.info().is_none(),
        "info is only known after the trailer validated"
    );
    let mut chunks = Vec::new();
    while let Some(chunk) = reader.next_chunk().unwrap() {
        chunks.push(chunk);
    }
    let info = reader.info().expect("trailer validated").clone();
    assert_eq!(info.chunk_count, u64::try_from(chunks.len()).unwrap());
    assert_eq!(reader.next_chunk().unwrap(), None, "the end stays the end");
    (reader.meta().to_vec(), chunks)
}

fn concat(pieces: &[Vec<u8>]) -> Vec<u8> {
    pieces.concat()
}

fn tmp_files(fs: &FsRef) -> Vec<String> {
    fs.list_dir(dir())
        .unwrap()
        .into_iter()
        .filter(|name| name.ends_with(".tmp"))
        .collect()
}

fn expect_corruption(err: StorageError, path: &Path) -> (u64, String) {
    match err {
        StorageError::Corruption {
            path: bad,
            offset,
            reason,
        } => {
            assert_eq!(bad, path, "corruption must name the file");
            (offset, reason)
        }
        other => panic!("expected Corruption in {}, got {other:?}", path.display()),
    }
}

// Snapshot A, the known-good older snapshot every failure test falls back to.
const A: u64 = 10;
// Snapshot B, the newer snapshot being written or damaged.
const B: u64 = 20;

fn a_meta() -> Vec<u8> {
    b"config-epoch=3".to_vec()
}

fn a_pieces() -> Vec<Vec<u8>> {
    vec![bytes(1, 40), bytes(2, 3), bytes(3, 70)]
}

fn b_meta() -> Vec<u8> {
    b"config-epoch=4;members=a,b,c".to_vec()
}

fn b_pieces() -> Vec<Vec<u8>> {
    vec![
        bytes(4, 30),
        Vec::new(),
        bytes(5, 1),
        bytes(6, 50),
        bytes(7, 16),
    ]
}

/// Small target so that small snapshots still have several chunks.
const SMALL_CHUNK_BYTES: usize = 16;

fn assert_a_intact(store: &SnapshotStore) {
    let info = store.verify(A).unwrap();
    assert_eq!(info.meta, a_meta());
    let (meta, chunks) = read_back(store, A);
    assert_eq!(meta, a_meta());
    assert_eq!(chunks.concat(), concat(&a_pieces()));
}

#[test]
fn round_trip_with_varied_chunks_and_meta() {
    let sim = SimFs::new();
    let fs = sim.shared();
    let store = SnapshotStore::open(fs.clone(), dir()).unwrap();
    let meta = bytes(99, 300);
    let large = bytes(8, 3 * CHUNK_BYTES_DEFAULT + 12_345);
    let pieces = vec![
        Vec::new(),
        bytes(9, 1),
        bytes(10, 1000),
        large,
        Vec::new(),
        bytes(11, 17),
    ];
    let payload = concat(&pieces);

    let info = write_snapshot(&store, 42, &meta, &pieces).unwrap();
    let path = store.snapshot_path(42);
    assert_eq!(info.index, 42);
    assert_eq!(info.meta, meta);
    assert_eq!(info.path, path);
    assert_eq!(info.payload_bytes, u64::try_from(payload.len()).unwrap());
    assert_eq!(
        info.size_bytes,
        u64::try_from(fs.read(&path).unwrap().len()).unwrap()
    );
    // Writes are coalesced into full chunks of the target size.
    let expected_chunks = payload.len().div_ceil(CHUNK_BYTES_DEFAULT);
    assert_eq!(info.chunk_count, u64::try_from(expected_chunks).unwrap());

    assert_eq!(store.list().unwrap(), vec![42]);
    assert_eq!(store.verify(42).unwrap(), info);
    assert_eq!(verify_file(&fs, &path).unwrap(), info);
    assert_eq!(store.latest_valid().unwrap(), Some(info.clone()));

    let (read_meta, chunks) = read_back(&store, 42);
    assert_eq!(read_meta, meta);
    assert_eq!(chunks.concat(), payload);
    let (last, full) = chunks.split_last().unwrap();
    assert!(full.iter().all(|chunk| chunk.len() == CHUNK_BYTES_DEFAULT));
    assert!(!last.is_empty() && last.len() <= CHUNK_BYTES_DEFAULT);

    // The Iterator interface yields the same chunks.
    let via_iter: Vec<Vec<u8>> = store
        .open_snapshot(42)
        .unwrap()
        .collect::<storage::Result<_>>()
        .unwrap();
    assert_eq!(via_iter, chunks);

    // Durable once finish returned.
    sim.crash();
    let store = SnapshotStore::open(sim.shared(), dir()).unwrap();
    assert_eq!(store.latest_valid().unwrap(), Some(info));
    assert_eq!(read_back(&store, 42).1.concat(), payload);
}

#[test]
fn round_trip_on_real_filesystem() {
    let tmp = tempfile::tempdir().unwrap();
    let snap_dir = tmp.path().join("snapshots");
    let fs = RealFs::shared();
    let store = SnapshotStore::open(fs.clone(), &snap_dir).unwrap();
    let pieces = vec![
        bytes(20, 5000),
        Vec::new(),
        bytes(21, CHUNK_BYTES_DEFAULT + 7),
    ];
    let first = write_snapshot(&store, 7, b"m7", &pieces).unwrap();
    let second = write_snapshot(&store, 9, b"m9", &[bytes(22, 10)]).unwrap();
    // An abandoned write leaves a .tmp that the next open removes.
    let mut abandoned = store.begin(11, b"never finished").unwrap();
    abandoned.write_chunk(&bytes(23, 100)).unwrap();
    drop(abandoned);
    std::fs::write(snap_dir.join("operator-notes.txt"), b"keep me").unwrap();
    drop(store);

    let store = SnapshotStore::open(fs.clone(), &snap_dir).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&snap_dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "00000000000000000007.snap".to_string(),
            "00000000000000000009.snap".to_string(),
            "operator-notes.txt".to_string(),
        ]
    );
    assert_eq!(store.list().unwrap(), vec![7, 9]);
    assert_eq!(store.latest_valid().unwrap(), Some(second));
    assert_eq!(store.verify(7).unwrap(), first);
    assert_eq!(
        first.size_bytes,
        std::fs::metadata(snap_dir.join(snapshot_file_name(7)))
            .unwrap()
            .len()
    );
    let (meta, chunks) = read_back(&store, 7);
    assert_eq!(meta, b"m7");
    assert_eq!(chunks.concat(), concat(&pieces));
    assert_eq!(store.remove_older_than(9).unwrap(), 1);
    assert_eq!(store.list().unwrap(), vec![9]);
}

#[test]
fn empty_snapshot_has_no_chunks() {
    let sim = SimFs::new();
    let fs = sim.shared();
    let store = SnapshotStore::open(fs.clone(), dir()).unwrap();
    let info = write_snapshot(&store, 0, b"", &[Vec::new()]).unwrap();
    assert_eq!((info.chunk_count, info.payload_bytes), (0, 0));
    assert_eq!(store.verify(0).unwrap(), info);
    let (meta, chunks) = read_back(&store, 0);
    assert!(meta.is_empty() && chunks.is_empty());
}

#[test]
fn list_is_numeric_and_ignores_foreign_files() {
    let sim = SimFs::new();
    let fs = sim.shared();
    let store = SnapshotStore::open(fs.clone(), dir()).unwrap();
    for index in [100, 3, u64::MAX, 20] {
        write_snapshot(&store, index, b"", &[bytes(index, 5)]).unwrap();
    }
    for name in ["5.snap", "notes.txt", "00000000000000000007.snap.bak"] {
        fs.create(&dir().join(name))
            .unwrap()
            .write_all(b"x")
            .unwrap();
    }
    assert_eq!(store.list().unwrap(), vec![3, 20, 100, u64::MAX]);
    assert_eq!(store.latest_valid().unwrap().unwrap().index, u64::MAX);
}

/// Writes A durably and returns the filesystem and store.
fn fs_with_a() -> (SimFs, SnapshotStore) {
    let sim = SimFs::new();
    let store = open_store(&sim.shared(), SMALL_CHUNK_BYTES);
    write_snapshot(&store, A, &a_meta(), &a_pieces()).unwrap();
    (sim, store)
}

/// After a crash at any point of writing B: A is intact, B is absent or
/// complete, no .tmp survives open.
fn check_after_crash(sim: &SimFs) {
    let fs = sim.shared();
    let store = open_store(&fs, SMALL_CHUNK_BYTES);
    assert!(
        tmp_files(&fs).is_empty(),
        "open must remove leftover .tmp files"
    );
    assert_a_intact(&store);
    let list = store.list().unwrap();
    let latest = store.latest_valid().unwrap().unwrap();
    if list.contains(&B) {
        assert_eq!(list, vec![A, B]);
        let info = store.verify(B).unwrap();
        assert_eq!(info.meta, b_meta());
        assert_eq!(read_back(&store, B).1.concat(), concat(&b_pieces()));
        assert_eq!(latest, info);
    } else {
        assert_eq!(list, vec![A]);
        assert_eq!(latest.index, A);
    }
}

fn interrupt_at_every_step(crash: impl Fn(&SimFs)) {
    let mut interrupted_steps = 0u64;
    for k in 0.. {
        let (sim, store) = fs_with_a();
        let ops_before = sim.mutating_ops();
        sim.halt_after(k);
        match write_snapshot(&store, B, &b_meta(), &b_pieces()) {
            Ok(info) => {
                assert!(!sim.halted());
                let full_write_ops = sim.mutating_ops() - ops_before;
                assert_eq!(
                    interrupted_steps, full_write_ops,
                    "every mutating step of a complete write must have been interrupted once"
                );
                // create, header, several chunks, trailer, fsync, rename, fsync dir.
                assert!(full_write_ops >= 8, "only {full_write_ops} steps");
                sim.crash();
                let store = open_store(&sim.shared(), SMALL_CHUNK_BYTES);
                assert_eq!(
                    store.verify(B).unwrap(),
                    info,
                    "finish returned Ok: B is durable"
                );
                check_after_crash(&sim);
                return;
            }
            Err(_) => {
                assert!(
                    sim.halted(),
                    "halt point {k}: the only failure should be the halt"
                );
                interrupted_steps += 1;
                drop(store);
                crash(&sim);
                check_after_crash(&sim);
            }
        }
        assert!(k < 1000, "write never completed");
    }
}

#[test]
fn interrupted_at_every_step_then_power_loss() {
    interrupt_at_every_step(SimFs::crash);
}

#[test]
fn interrupted_at_every_step_then_torn_power_loss() {
    for seed in [1, 7, 0xDEAD_BEEF, 12_345_678_901] {
        interrupt_at_every_step(|sim| sim.crash_torn(seed));
    }
}

#[test]
fn faults_fail_the_write_and_keep_the_older_snapshot() {
    let faults = [
        Fault::SyncError,
        Fault::WriteError,
        Fault::ShortWrite { keep_bytes: 5 },
    ];
    let pieces = b_pieces();
    for fault in faults {
        // Inject before step `at`: 0 = begin, 1..=n = the pieces, n+1 = finish.
        for at in 0..=pieces.len() + 1 {
            let (sim, store) = fs_with_a();
            let mut failed = false;
            let mut writer = None;
            if at == 0 {
                sim.inject(fault);
            }
            match store.begin(B, &b_meta()) {
                Ok(w) => writer = Some(w),
                Err(_) => failed = true,
            }
            if let Some(mut w) = writer {
                for (i, piece) in pieces.iter().enumerate() {
                    if i + 1 == at {
                        sim.inject(fault);
                    }
                    if failed {
                        assert!(
                            w.write_chunk(piece).is_err(),
                            "a failed writer refuses work"
                        );
                    } else if w.write_chunk(piece).is_err() {
                        failed = true;
                    }
                }
                if at == pieces.len() + 1 {
                    sim.inject(fault);
                }
                failed |= w.finish().is_err();
            }
            assert!(failed, "{fault:?} before step {at} must fail the write");
            // Not visible under the complete name even before a crash.
            assert_eq!(store.list().unwrap(), vec![A], "{fault:?} at {at}");
            assert_eq!(store.latest_valid().unwrap().unwrap().index, A);
            drop(store);
            sim.crash();
            let store = open_store(&sim.shared(), SMALL_CHUNK_BYTES);
            assert_eq!(store.list().unwrap(), vec![A]);
            assert_eq!(store.latest_valid().unwrap().unwrap().index, A);
            assert_a_intact(&store);
            assert!(tmp_files(&sim.shared()).is_empty());
        }
    }
}

/// A and a small B with several chunks; returns B's structure start offsets:
/// header at 0, then each chunk, then the trailer, then the file length.
/// Computed from the documented format, independently of the code.
fn fs_with_a_and_small_b() -> (SimFs, SnapshotStore, PathBuf, Vec<u64>) {
    let (sim, store) = fs_with_a();
    write_snapshot(&store, B, &b_meta(), &b_pieces()).unwrap();
    let path = store.snapshot_path(B);
    let payload_bytes = concat(&b_pieces()).len();
    let mut starts = vec![0u64];
    let mut at = 28 + b_meta().len();
    let mut left = payload_bytes;
    while left > 0 {
        starts.push(u64::try_from(at).unwrap());
        let len = left.min(SMALL_CHUNK_BYTES);
        at += 8 + len;
        left -= len;
    }
    starts.push(u64::try_from(at).unwrap());
    starts.push(u64::try_from(at + 28).unwrap());
    assert_eq!(
        u64::try_from(sim.shared().read(&path).unwrap().len()).unwrap(),
        *starts.last().unwrap(),
        "file layout differs from the documented format"
    );
    assert!(starts.len() >= 6, "B should have several chunks");
    (sim, store, path, starts)
}

/// Start of the structure (header, chunk or trailer) containing byte `offset`.
fn structure_start(starts: &[u64], offset: u64) -> u64 {
    *starts.iter().rev().find(|start| **start <= offset).unwrap()
}

#[test]
fn every_flipped_bit_is_detected_at_its_structure() {
    let (sim, store, path, starts) = fs_with_a_and_small_b();
    let size_bytes = *starts.last().unwrap();
    let trailer_start = starts[starts.len() - 2];
    let original_chunks = read_back(&store, B).1;
    for offset in 0..size_bytes {
        for bit in 0..8 {
            let at = usize::try_from(offset).unwrap();
            sim.corrupt_byte(&path, at, 1 << bit).unwrap();
            let err = store.verify(B).unwrap_err();
            if (8..12).contains(&offset) {
                match err {
                    StorageError::FormatVersion {
                        path: bad,
                        found,
                        supported,
                    } => {
                        assert_eq!(bad, path);
                        assert_ne!(found, FORMAT_VERSION);
                        assert_eq!(supported, FORMAT_VERSION);
                    }
                    other => panic!("version byte {offset}: {other:?}"),
                }
            } else {
                let (reported, reason) = expect_corruption(err, &path);
                assert_eq!(
                    reported,
                    structure_start(&starts, offset),
                    "flipped bit {bit} of byte {offset}: {reason}"
                );
            }
            assert_eq!(store.latest_valid().unwrap().unwrap().index, A);

            // Streaming never hands out a damaged chunk, and always ends in an error.
            if let Ok(mut reader) = store.open_snapshot(B) {
                let mut returned = 0;
                let err = loop {
                    match reader.next_chunk() {
                        Ok(Some(chunk)) => {
                            assert_eq!(chunk, original_chunks[returned]);
                            returned += 1;
                        }
                        Ok(None) => panic!("byte {offset} bit {bit}: damaged file read to the end"),
                        Err(err) => break err,
                    }
                };
                let (reported, _) = expect_corruption(err, &path);
                assert_eq!(reported, structure_start(&starts, offset));
                if offset >= trailer_start {
                    assert_eq!(returned, original_chunks.len());
                }
                assert!(reader.next_chunk().is_err(), "a failed reader stays failed");
            } else {
                assert!(offset < starts[1], "only header damage fails open_snapshot");
            }
            sim.corrupt_byte(&path, at, 1 << bit).unwrap();
        }
    }
    // Invalid newer snapshots are skipped, never deleted.
    assert_eq!(store.list().unwrap(), vec![A, B]);
    assert!(store.verify(B).is_ok(), "flips were undone");
}

#[test]
fn every_truncation_is_detected() {
    let (_, _, _, starts) = fs_with_a_and_small_b();
    let size_bytes = *starts.last().unwrap();
    for len in 0..size_bytes {
        let (sim, store, path, _) = fs_with_a_and_small_b();
        sim.truncate_durably(&path, usize::try_from(len).unwrap())
            .unwrap();
        let (reported, reason) = expect_corruption(store.verify(B).unwrap_err(), &path);
        assert_eq!(
            reported,
            structure_start(&starts, len),
            "cut at {len}: {reason}"
        );
        let mut reader_failed = store.open_snapshot(B).is_err();
        if let Ok(reader) = store.open_snapshot(B) {
            reader_failed = reader.into_iter().any(|chunk| chunk.is_err());
        }
        assert!(reader_failed, "cut at {len}: the reader must report it");
        assert_eq!(store.latest_valid().unwrap().unwrap().index, A);
        assert_eq!(store.list().unwrap(), vec![A, B]);
    }
}

#[test]
fn bytes_after_the_trailer_are_rejected() {
    let (sim, store, path, starts) = fs_with_a_and_small_b();
    let fs = sim.shared();
    let mut file = fs.open_append(&path).unwrap();
    file.write_all(&[0]).unwrap();
    let (offset, _) = expect_corruption(store.verify(B).unwrap_err(), &path);
    assert_eq!(offset, *starts.last().unwrap());
    assert_eq!(store.latest_valid().unwrap().unwrap().index, A);
}

/// Writes `contents` durably at `path`.
fn put_file(fs: &FsRef, path: &Path, contents: &[u8]) {
    let mut file = fs.create(path).unwrap();
    file.write_all(contents).unwrap();
    file.sync_data().unwrap();
    fs.sync_dir(path.parent().unwrap()).unwrap();
}

#[test]
fn reordered_duplicated_or_foreign_chunks_are_caught() {
    let (sim, store, path, starts) = fs_with_a_and_small_b();
    let fs = sim.shared();
    let original = fs.read(&path).unwrap();
    let span =
        |i: usize| usize::try_from(starts[i]).unwrap()..usize::try_from(starts[i + 1]).unwrap();
    // Chunks 1 and 2 both hold SMALL_CHUNK_BYTES, so they can swap places.
    let (c1, c2) = (span(1), span(2));
    assert_eq!(c1.len(), c2.len());

    let mut swapped = original.clone();
    swapped[c1.clone()].copy_from_slice(&original[c2.clone()]);
    swapped[c2.clone()].copy_from_slice(&original[c1.clone()]);
    put_file(&fs, &path, &swapped);
    assert_eq!(
        expect_corruption(store.verify(B).unwrap_err(), &path).0,
        starts[1]
    );

    let mut duplicated = original.clone();
    duplicated[c2.clone()].copy_from_slice(&original[c1.clone()]);
    put_file(&fs, &path, &duplicated);
    assert_eq!(
        expect_corruption(store.verify(B).unwrap_err(), &path).0,
        starts[2]
    );

    // Same index, same payload, different meta: its chunks do not belong here.
    let other_dir = Path::new("/elsewhere");
    let other = SnapshotStore::open(fs.clone(), other_dir)
        .unwrap()
        .with_chunk_target_bytes(SMALL_CHUNK_BYTES)
        .unwrap();
    let mut other_meta = b_meta();
    other_meta[0] ^= 1;
    write_snapshot(&other, B, &other_meta, &b_pieces()).unwrap();
    let foreign = fs.read(&other.snapshot_path(B)).unwrap();
    assert_eq!(foreign.len(), original.len());
    let mut spliced = original.clone();
    spliced[c1.clone()].copy_from_slice(&foreign[c1.clone()]);
    put_file(&fs, &path, &spliced);
    assert_eq!(
        expect_corruption(store.verify(B).unwrap_err(), &path).0,
        starts[1]
    );

    put_file(&fs, &path, &original);
    assert!(store.verify(B).is_ok());
}

#[test]
fn file_name_must_match_header_index() {
    let (sim, store) = fs_with_a();
    let fs = sim.shared();
    fs.rename(&store.snapshot_path(A), &store.snapshot_path(B))
        .unwrap();
    let path = store.snapshot_path(B);
    let (offset, reason) = expect_corruption(store.verify(B).unwrap_err(), &path);
    assert_eq!(offset, 0);
    assert!(reason.contains("index"), "{reason}");
    assert!(store.open_snapshot(B).is_err());
    assert_eq!(store.latest_valid().unwrap(), None);

    // A backup export under a free-form name is checked on its contents alone.
    let export = Path::new("/backups/shard-7-export.snap");
    fs.create_dir_all(export.parent().unwrap()).unwrap();
    fs.rename(&path, export).unwrap();
    assert_eq!(verify_file(&fs, export).unwrap().index, A);
}

/// The bytes of a snapshot file built by hand from the documented format.
fn hand_built(index: u64, meta: &[u8], chunks: &[&[u8]]) -> (Vec<u8>, u32) {
    let mut file = Vec::new();
    file.extend_from_slice(b"SHARDSNP");
    file.extend_from_slice(&1u32.to_le_bytes());
    file.extend_from_slice(&index.to_le_bytes());
    file.extend_from_slice(&u32::try_from(meta.len()).unwrap().to_le_bytes());
    file.extend_from_slice(meta);
    let header_crc = crc32fast::hash(&file);
    file.extend_from_slice(&header_crc.to_le_bytes());
    for (i, payload) in chunks.iter().enumerate() {
        let seq = u64::try_from(i + 1).unwrap();
        let len = u32::try_from(payload.len()).unwrap();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&len.to_le_bytes());
        crc.update(&seq.to_le_bytes());
        crc.update(&header_crc.to_le_bytes());
        crc.update(payload);
        file.extend_from_slice(&len.to_le_bytes());
        file.extend_from_slice(&crc.finalize().to_le_bytes());
        file.extend_from_slice(payload);
    }
    let file_crc = crc32fast::hash(&file);
    let payload_bytes: usize = chunks.iter().map(|chunk| chunk.len()).sum();
    file.extend_from_slice(b"SNAPEND1");
    file.extend_from_slice(&u64::try_from(chunks.len()).unwrap().to_le_bytes());
    file.extend_from_slice(&u64::try_from(payload_bytes).unwrap().to_le_bytes());
    file.extend_from_slice(&file_crc.to_le_bytes());
    (file, header_crc)
}

#[test]
fn writer_output_matches_the_documented_format_byte_for_byte() {
    let sim = SimFs::new();
    let fs = sim.shared();
    let store = open_store(&fs, 4);
    write_snapshot(&store, 77, b"meta", &[b"abcdefghij".to_vec()]).unwrap();
    let (expected, _) = hand_built(77, b"meta", &[b"abcd", b"efgh", b"ij"]);
    assert_eq!(fs.read(&store.snapshot_path(77)).unwrap(), expected);
}

#[test]
fn chunk_length_above_max_is_rejected_before_reading_it() {
    let sim = SimFs::new();
    let fs = sim.shared();
    let store = SnapshotStore::open(fs.clone(), dir()).unwrap();
    let path = store.snapshot_path(5);
    let (empty, header_crc) = hand_built(5, b"m", &[]);
    let header_len = 28 + 1;
    let chunk_start = u64::try_from(header_len).unwrap();

    // Oversized lengths on a short file: the limit must be what trips, not the
    // end of file, proving the length is judged before the payload is read.
    for len in [CHUNK_BYTES_MAX + 1, u32::MAX - 1, u32::MAX] {
        let mut crafted = empty[..header_len].to_vec();
        crafted.extend_from_slice(&len.to_le_bytes());
        crafted.extend_from_slice(&[0xAB; 4]);
        crafted.extend_from_slice(&[0; 32]);
        put_file(&fs, &path, &crafted);
        let (offset, reason) = expect_corruption(store.verify(5).unwrap_err(), &path);
        assert_eq!(offset, chunk_start);
        assert!(reason.contains("exceeds"), "{reason}");
        let mut reader = store.open_snapshot(5).unwrap();
        assert!(reader.next_chunk().is_err());
    }

    // A complete, correctly checksummed file whose chunk is one byte too big
    // is still rejected; exactly the maximum is accepted.
    let max = usize::try_from(CHUNK_BYTES_MAX).unwrap();
    let big = vec![0x5A; max + 1];
    let (crafted, crafted_header_crc) = hand_built(5, b"m", &[&big]);
    assert_eq!(crafted_header_crc, header_crc);
    put_file(&fs, &path, &crafted);
    let (offset, reason) = expect_corruption(store.verify(5).unwrap_err(), &path);
    assert_eq!(offset, chunk_start);
    assert!(reason.contains("exceeds"), "{reason}");

    let (crafted, _) = hand_built(5, b"m", &[&big[..max]]);
    put_file(&fs, &path, &crafted);
    let info = store.verify(5).unwrap();
    assert_eq!(
        (info.chunk_count, info.payload_bytes),
        (1, u64::from(CHUNK_BYTES_MAX))
    );
}

#[test]
fn unknown_format_version_is_reported_as_such() {
    let sim = SimFs::new();
    let fs = sim.shared();
    let store = SnapshotStore::open(fs.clone(), dir()).unwrap();
    let (mut crafted, _) = hand_built(3, b"", &[b"x"]);
    crafted[8..12].copy_from_slice(&2u32.to_le_bytes());
    put_file(&fs, &store.snapshot_path(3), &crafted);
    match store.verify(3).unwrap_err() {
        StorageError::FormatVersion {
            found: 2,
            supported: 1,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(store.latest_valid().unwrap(), None);
}

#[test]
fn remove_older_than_is_durable() {
    let sim = SimFs::new();
    let fs = sim.shared();
    let store = open_store(&fs, SMALL_CHUNK_BYTES);
    for index in [10, 20, 30] {
        write_snapshot(&store, index, b"", &[bytes(index, 40)]).unwrap();
    }
    // A live writer's .tmp below the cut is not a complete snapshot: untouched.
    let mut live = store.begin(5, b"").unwrap();
    live.write_chunk(b"in progress").unwrap();
    assert_eq!(store.remove_older_than(30).unwrap(), 2);
    assert_eq!(store.list().unwrap(), vec![30]);
    assert_eq!(
        tmp_files(&fs),
        vec!["00000000000000000005.snap.tmp".to_string()]
    );
    assert_eq!(store.remove_older_than(30).unwrap(), 0);
    live.finish().unwrap();

    sim.crash();
    let store = open_store(&sim.shared(), SMALL_CHUNK_BYTES);
    assert_eq!(store.list().unwrap(), vec![5, 30]);
    assert_eq!(store.latest_valid().unwrap().unwrap().index, 30);
    assert_eq!(store.remove_older_than(u64::MAX).unwrap(), 2);
    sim.crash();
    let store = open_store(&sim.shared(), SMALL_CHUNK_BYTES);
    assert!(store.list().unwrap().is_empty());
    assert_eq!(store.latest_valid().unwrap(), None);
}

#[test]
fn open_removes_leftover_tmp_files_durably_and_ignores_others() {
    let (sim, store) = fs_with_a();
    let fs = sim.shared();
    let mut abandoned = store.begin(B, &b_meta()).unwrap();
    abandoned.write_chunk(&bytes(1, 100)).unwrap();
    drop(abandoned);
    // Make the leftover and the foreign files durable, as after a real crash.
    for name in ["notes.txt", "7.snap.tmp"] {
        put_file(&fs, &dir().join(name), b"not ours");
    }
    fs.sync_dir(dir()).unwrap();
    drop(store);
    let store = open_store(&fs, SMALL_CHUNK_BYTES);
    let names = fs.list_dir(dir()).unwrap();
    assert_eq!(
        names,
        vec![
            "00000000000000000010.snap".to_string(),
            "7.snap.tmp".to_string(),
            "notes.txt".to_string(),
        ]
    );
    assert_eq!(store.list().unwrap(), vec![A]);
    // The removal was made durable by open.
    sim.crash();
    assert_eq!(fs.list_dir(dir()).unwrap(), names);
}

#[test]
fn unfinished_writes_are_invisible() {
    let (sim, store) = fs_with_a();
    let mut writer = store.begin(B, &b_meta()).unwrap();
    for piece in b_pieces() {
        writer.write_chunk(&piece).unwrap();
    }
    assert_eq!(store.list().unwrap(), vec![A]);
    assert_eq!(store.latest_valid().unwrap().unwrap().index, A);
    assert!(store.verify(B).is_err());
    drop(writer);
    assert_eq!(store.list().unwrap(), vec![A]);
    drop(sim);
}

#[test]
fn invalid_requests_are_refused() {
    let (_sim, store) = fs_with_a();
    let first = store.begin(B, b"").unwrap();
    assert!(matches!(
        store.begin(B, b""),
        Err(StorageError::InvalidArgument(_))
    ));
    drop(first);
    drop(store.begin(B, b"").unwrap());

    let too_big = vec![0; usize::try_from(META_BYTES_MAX).unwrap() + 1];
    assert!(matches!(
        store.begin(B, &too_big),
        Err(StorageError::RecordTooLarge { .. })
    ));
    // The failed begin did not leave the index marked as in progress.
    drop(store.begin(B, b"").unwrap());

    let max = usize::try_from(CHUNK_BYTES_MAX).unwrap();
    let sim = SimFs::new();
    let open = || SnapshotStore::open(sim.shared(), dir()).unwrap();
    assert!(matches!(
        open().with_chunk_target_bytes(0),
        Err(StorageError::InvalidArgument(_))
    ));
    assert!(open().with_chunk_target_bytes(max + 1).is_err());
    assert!(open().with_chunk_target_bytes(max).is_ok());
}

#[test]
fn replacing_a_snapshot_at_the_same_index_is_atomic() {
    let (sim, store) = fs_with_a();
    let replacement = vec![bytes(50, 33)];
    write_snapshot(&store, A, b"second take", &replacement).unwrap();
    sim.crash();
    let store = open_store(&sim.shared(), SMALL_CHUNK_BYTES);
    let (meta, chunks) = read_back(&store, A);
    assert_eq!(meta, b"second take");
    assert_eq!(chunks.concat(), concat(&replacement));
}
