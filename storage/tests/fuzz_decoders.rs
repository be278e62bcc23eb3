//! Fuzz targets, as proptest suites, for every decoder of untrusted bytes in
//! the storage crate: the WAL segment scanner
//! ([`storage::wal::segment::scan_segment`]), recovery of a whole WAL
//! directory ([`Wal::open`] and the read-only [`WalReader`]), and snapshot
//! files ([`verify_file`] and the streaming [`SnapshotReader`] of
//! [`SnapshotStore::open_snapshot`]).
//!
//! Why: these decoders read whatever a disk hands back after a crash, bit
//! rot or an operator's copy. Whatever the bytes, they must never panic
//! and never allocate what a damaged length field claims; they must either
//! return what is provably intact or an error naming the file. The WAL
//! must also tell a torn tail (a crash, cut off silently) from damage that
//! a crash cannot explain (refused), as the module docs of
//! `storage::wal` and `storage::wal::segment` promise.
//!
//! Inputs: arbitrary bytes; segments and snapshots written by the crate's
//! own writers (the segment encoders, a `Wal` and a `SnapshotStore` on the
//! in-memory `SimFs`) and then mutated: bit flips, truncation at any
//! offset, bytes overwritten, inserted, removed or appended, and length
//! fields set huge. Properties, per target:
//!
//! * `scan_segment`: never panics; `Ok` is well formed (LSNs contiguous
//!   from the header's, frames back to back inside the bytes, `Clean` ends
//!   at the last byte, `Torn` only when allowed and right after the last
//!   record); an error is `Corruption` or `FormatVersion` naming the file.
//!   On a mutated valid segment, `Ok` only ever returns a prefix of the
//!   original records. A valid segment cut anywhere, when it may be torn,
//!   gives exactly the records wholly before the cut. A single flipped bit
//!   in a record that a valid record follows is corruption at that record
//!   (never a torn tail), even in the last segment; in the last record it
//!   is a torn tail there, or corruption in a sealed segment.
//! * A WAL directory whose last segment is mutated: `WalReader` and
//!   `Wal::open` agree; either they recover a prefix of what was written
//!   (all sealed segments included) and the repaired log keeps working, or
//!   both refuse with an error naming a segment. Any change to a sealed
//!   segment is refused.
//! * Snapshot files: any change to a valid file makes `verify_file` and the
//!   streaming reader fail with an error naming the file (the reader only
//!   ever hands out a prefix of the original data first); length fields set
//!   huge (up to `u32::MAX`, counts up to 2^40 and beyond) are refused, and
//!   the process's peak virtual memory does not grow by anything like them.
//!
//! A crash found here becomes a named `#[test]` with its exact bytes next
//! to the properties. Failing seeds are saved to
//! `fuzz_decoders.proptest-regressions` beside this file and replayed first.
//!
//! Cases default to a few seconds per target on a slow 2-core machine in a
//! dev build; to fuzz longer, set `PROPTEST_CASES`, e.g.
//! `PROPTEST_CASES=100000 cargo nextest run -p storage --test fuzz_decoders`.

use std::path::{Path, PathBuf};

use fuzz_support::{
    bounded, config, huge_u64, mutated, mutations_with, put_field, FieldMutations, Mutation,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use storage::fs::{FsRef, SimFs};
use storage::snapshot::{
    snapshot_file_name, verify_file, SnapshotStore, CHUNK_BYTES_MAX, META_BYTES_MAX,
};
use storage::wal::segment::{
    encode_frame, encode_segment_header, scan_segment, segment_file_name, Lsn, SegmentEnd,
    SegmentScan, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use storage::wal::{Wal, WalOptions, WalReader};
use storage::StorageError;

type Records = Vec<(Lsn, Vec<u8>)>;

/// The record limit of the pure scanner properties (and of the WAL
/// directories below): small, so generated length fields exceed it often.
const RECORD_MAX: u32 = 1024;

// ---------------------------------------------------------------------------
// Mutations.
// ---------------------------------------------------------------------------

/// 4-byte values a damaged length field of storage's formats may claim: the
/// shared huge ones, and storage's own limits and just past them.
fn huge_u32() -> impl Strategy<Value = u32> {
    fuzz_support::huge_u32(&[
        CHUNK_BYTES_MAX,
        CHUNK_BYTES_MAX + 1,
        META_BYTES_MAX + 1,
        RECORD_MAX + 1,
    ])
}

/// Mutations of storage's formats: 4-byte fields (lengths, checksums) set
/// to [`huge_u32`] in either byte order, twice as often as 8-byte fields
/// are set.
fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    mutations_with(&FieldMutations {
        u32_weight: 2,
        u32_values: huge_u32().boxed(),
        u32_either_endian: true,
        u64_weight: 1,
        ..FieldMutations::default()
    })
}

// ---------------------------------------------------------------------------
// WAL segments.
// ---------------------------------------------------------------------------

/// A valid segment of `payloads` from `first_lsn`, built with the segment
/// module's encoders (the bytes `Wal` writes; the directory properties
/// below check that), and the offset of each frame followed by the end.
fn encode_segment(first_lsn: Lsn, payloads: &[Vec<u8>]) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = encode_segment_header(first_lsn).to_vec();
    let mut starts = vec![bytes.len()];
    for (lsn, payload) in (first_lsn..).zip(payloads) {
        encode_frame(lsn, payload, &mut bytes);
        starts.push(bytes.len());
    }
    (bytes, starts)
}

fn records_of(first_lsn: Lsn, payloads: &[Vec<u8>]) -> Records {
    (first_lsn..).zip(payloads.iter().cloned()).collect()
}

fn scanned_records(bytes: &[u8], scan: &SegmentScan) -> Records {
    scan.records
        .iter()
        .map(|record| (record.lsn, record.payload(bytes).to_vec()))
        .collect()
}

fn len_u64(len: usize) -> u64 {
    u64::try_from(len).expect("lengths fit in u64")
}

/// What any successful scan must look like, whatever the input.
fn check_scan_well_formed(
    bytes: &[u8],
    scan: &SegmentScan,
    may_be_torn: bool,
    record_size_bytes_max: u32,
) -> Result<(), TestCaseError> {
    prop_assert!(scan.first_lsn > 0, "a scan returned first LSN 0");
    let mut end = len_u64(SEGMENT_HEADER_LEN);
    for (lsn, record) in (scan.first_lsn..).zip(&scan.records) {
        prop_assert_eq!(record.lsn, lsn, "record LSNs are not contiguous");
        prop_assert_eq!(record.offset, end, "records are not back to back");
        prop_assert!(record.len_bytes <= record_size_bytes_max);
        end += len_u64(FRAME_HEADER_LEN) + u64::from(record.len_bytes);
        prop_assert!(end <= len_u64(bytes.len()), "a record runs past the end");
        prop_assert_eq!(
            record.payload(bytes).len(),
            usize::try_from(record.len_bytes).expect("u32 fits usize")
        );
    }
    prop_assert_eq!(
        scan.next_lsn(),
        scan.first_lsn + len_u64(scan.records.len())
    );
    match &scan.end {
        SegmentEnd::Clean => prop_assert_eq!(end, len_u64(bytes.len()), "clean but bytes left"),
        SegmentEnd::Torn { offset, reason } => {
            prop_assert!(may_be_torn, "a torn tail in a sealed segment");
            prop_assert_eq!(
                *offset,
                end,
                "the torn tail does not start after the records"
            );
            prop_assert!(*offset < len_u64(bytes.len()), "a torn tail of no bytes");
            prop_assert!(!reason.is_empty());
        }
    }
    Ok(())
}

/// Every storage error about a file's bytes must say which file.
fn check_names_file(error: &StorageError, path: &Path, len: usize) -> Result<(), TestCaseError> {
    match error {
        StorageError::Corruption {
            path: named,
            offset,
            reason,
        } => {
            prop_assert_eq!(named.as_path(), path);
            prop_assert!(*offset <= len_u64(len), "offset {} past the end", offset);
            prop_assert!(!reason.is_empty());
        }
        StorageError::FormatVersion { path: named, .. } => {
            prop_assert_eq!(named.as_path(), path);
        }
        other => {
            return Err(TestCaseError::fail(format!(
                "not a corruption or version error: {other:?}"
            )))
        }
    }
    let text = error.to_string();
    prop_assert!(
        text.contains(&path.display().to_string()),
        "the message does not name the file: {text}"
    );
    Ok(())
}

/// `got` must be the first `got.len()` records of `original`.
fn check_prefix(got: &[(Lsn, Vec<u8>)], original: &[(Lsn, Vec<u8>)]) -> Result<(), TestCaseError> {
    prop_assert!(
        got.len() <= original.len(),
        "{} records recovered, {} were written",
        got.len(),
        original.len()
    );
    prop_assert_eq!(
        got,
        &original[..got.len()],
        "not a prefix of what was written"
    );
    Ok(())
}

fn payloads(max_count: usize) -> impl Strategy<Value = Vec<Vec<u8>>> {
    vec(vec(any::<u8>(), 0..48), 1..max_count)
}

/// A piece of a chaotic segment: a valid frame whose LSN may be out of
/// sequence, or junk.
#[derive(Debug, Clone)]
enum Piece {
    Frame { lsn_offset: u64, payload: Vec<u8> },
    Junk(Vec<u8>),
}

/// A valid header followed by valid frames with LSNs near the expected
/// ones (repeats, gaps, reorderings) and junk: exercises the search for a
/// later valid record behind damage.
fn chaotic_segment() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        3 => (0u64..6, vec(any::<u8>(), 0..24))
            .prop_map(|(lsn_offset, payload)| Piece::Frame { lsn_offset, payload }),
        1 => vec(any::<u8>(), 1..24).prop_map(Piece::Junk),
    ];
    (1u64..1000, vec(piece, 0..10)).prop_map(|(first_lsn, pieces)| {
        let mut bytes = encode_segment_header(first_lsn).to_vec();
        for piece in pieces {
            match piece {
                Piece::Frame {
                    lsn_offset,
                    payload,
                } => encode_frame(first_lsn + lsn_offset, &payload, &mut bytes),
                Piece::Junk(junk) => bytes.extend_from_slice(&junk),
            }
        }
        bytes
    })
}

fn arbitrary_segment_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..256),
        // A valid header, so that the frame decoder sees the junk.
        (1u64..u64::MAX, vec(any::<u8>(), 0..256)).prop_map(|(first_lsn, tail)| {
            let mut bytes = encode_segment_header(first_lsn).to_vec();
            bytes.extend_from_slice(&tail);
            bytes
        }),
        chaotic_segment(),
    ]
}

fn record_limit() -> impl Strategy<Value = u32> {
    prop_oneof![Just(RECORD_MAX), Just(0u32), Just(u32::MAX), any::<u32>()]
}

proptest! {
    #![proptest_config(config(32768))]

    /// Arbitrary bytes: no panic, a well-formed scan or an error naming
    /// the file.
    #[test]
    fn wal_scan_of_arbitrary_bytes_is_well_formed_or_names_the_file(
        bytes in arbitrary_segment_bytes(),
        may_be_torn in any::<bool>(),
        limit in record_limit(),
    ) {
        let path = Path::new("/fuzz/00000000000000000001.wal");
        match scan_segment(&bytes, path, may_be_torn, limit) {
            Ok(scan) => check_scan_well_formed(&bytes, &scan, may_be_torn, limit)?,
            Err(error) => check_names_file(&error, path, bytes.len())?,
        }
    }

    /// Mutated valid segments: as above, and whatever `Ok` returns is a
    /// prefix of the records that were written.
    #[test]
    fn wal_scan_of_a_mutated_segment_returns_a_prefix_or_names_the_file(
        first_lsn in 1u64..1 << 40,
        payloads in payloads(8),
        mutations in mutations(),
        may_be_torn in any::<bool>(),
    ) {
        let (original, _) = encode_segment(first_lsn, &payloads);
        let bytes = mutated(&original, &mutations);
        let path = Path::new("/fuzz/mutated.wal");
        match scan_segment(&bytes, path, may_be_torn, RECORD_MAX) {
            Ok(scan) => {
                check_scan_well_formed(&bytes, &scan, may_be_torn, RECORD_MAX)?;
                prop_assert_eq!(scan.first_lsn, first_lsn);
                check_prefix(&scanned_records(&bytes, &scan), &records_of(first_lsn, &payloads))?;
            }
            Err(error) => check_names_file(&error, path, bytes.len())?,
        }
    }

    /// A valid segment cut at any offset: in the last segment, exactly the
    /// records wholly before the cut, and a torn tail iff the cut is inside
    /// a frame; in a sealed segment, corruption at the cut frame. A cut
    /// inside the header is corruption at offset 0 either way.
    #[test]
    fn wal_scan_of_a_truncated_segment_keeps_exactly_the_whole_records(
        first_lsn in 1u64..1 << 40,
        payloads in payloads(8),
        cut in any::<Index>(),
        may_be_torn in any::<bool>(),
    ) {
        let (original, starts) = encode_segment(first_lsn, &payloads);
        let cut = cut.index(original.len() + 1);
        let bytes = &original[..cut];
        let path = Path::new("/fuzz/truncated.wal");
        let result = scan_segment(bytes, path, may_be_torn, RECORD_MAX);
        if cut < SEGMENT_HEADER_LEN {
            prop_assert!(
                matches!(&result, Err(StorageError::Corruption { offset: 0, .. })),
                "cut at {} inside the header: {:?}", cut, result
            );
            return Ok(());
        }
        // Frames wholly before the cut, and where the last of them ends.
        let whole = starts.iter().skip(1).take_while(|end| **end <= cut).count();
        let boundary = starts[whole];
        if may_be_torn || boundary == cut {
            let scan = match result {
                Ok(scan) => scan,
                Err(error) => return Err(TestCaseError::fail(format!("cut at {cut}: {error}"))),
            };
            check_scan_well_formed(bytes, &scan, may_be_torn, RECORD_MAX)?;
            prop_assert_eq!(
                scanned_records(bytes, &scan),
                records_of(first_lsn, &payloads[..whole])
            );
            if boundary == cut {
                prop_assert_eq!(scan.end, SegmentEnd::Clean);
            } else {
                prop_assert!(
                    matches!(scan.end, SegmentEnd::Torn { offset, .. } if offset == len_u64(boundary)),
                    "cut at {}: {:?}", cut, scan.end
                );
            }
        } else {
            prop_assert!(
                matches!(&result, Err(StorageError::Corruption { offset, .. }) if *offset == len_u64(boundary)),
                "sealed segment cut at {}: {:?}", cut, result
            );
        }
    }

    /// One flipped bit: in the header, corruption at 0; in a record that a
    /// valid record follows, corruption at that record even in the last
    /// segment (acknowledged records follow, so it is not a torn tail); in
    /// the last record, a torn tail there in the last segment and
    /// corruption there in a sealed one.
    #[test]
    fn wal_scan_reports_a_flipped_bit_where_it_is(
        first_lsn in 1u64..1 << 40,
        payloads in payloads(8),
        at in any::<Index>(),
        bit in 0u8..8,
        may_be_torn in any::<bool>(),
    ) {
        let (mut bytes, starts) = encode_segment(first_lsn, &payloads);
        let at = at.index(bytes.len());
        bytes[at] ^= 1 << bit;
        let path = Path::new("/fuzz/flipped.wal");
        let result = scan_segment(&bytes, path, may_be_torn, RECORD_MAX);
        if at < SEGMENT_HEADER_LEN {
            prop_assert!(
                matches!(&result, Err(StorageError::Corruption { offset: 0, .. })),
                "flip at {} in the header: {:?}", at, result
            );
            return Ok(());
        }
        // The record holding the flipped bit, and its frame's offset.
        let damaged = starts.iter().skip(1).take_while(|end| **end <= at).count();
        let frame = len_u64(starts[damaged]);
        let is_last_record = damaged + 1 == payloads.len();
        if is_last_record && may_be_torn {
            let scan = match result {
                Ok(scan) => scan,
                Err(error) => return Err(TestCaseError::fail(format!("flip at {at}: {error}"))),
            };
            prop_assert_eq!(
                scanned_records(&bytes, &scan),
                records_of(first_lsn, &payloads[..damaged])
            );
            prop_assert!(
                matches!(scan.end, SegmentEnd::Torn { offset, .. } if offset == frame),
                "flip at {}: {:?}", at, scan.end
            );
        } else {
            match &result {
                Err(StorageError::Corruption { offset, reason, .. }) if *offset == frame => {
                    if !is_last_record {
                        // Says that acknowledged records follow.
                        let follows = format!("valid record {} follows", first_lsn + len_u64(damaged) + 1);
                        prop_assert!(reason.contains(&follows), "{}", reason);
                    }
                }
                other => return Err(TestCaseError::fail(format!("flip at {at} (frame at {frame}): {other:?}"))),
            }
        }
    }

    /// A record's length field set to any huge value: never read past the
    /// bytes, never allocated; the record and everything after it are
    /// refused (torn in the last segment only if nothing valid follows).
    #[test]
    fn wal_scan_refuses_huge_record_lengths(
        first_lsn in 1u64..1 << 40,
        payloads in payloads(8),
        which in any::<Index>(),
        len in prop_oneof![Just(u32::MAX), (RECORD_MAX + 1)..=u32::MAX, any::<u32>()],
        may_be_torn in any::<bool>(),
    ) {
        let (mut bytes, starts) = encode_segment(first_lsn, &payloads);
        let damaged = which.index(payloads.len());
        let frame = starts[damaged];
        let original_len = u32::try_from(payloads[damaged].len()).expect("small payload");
        prop_assume!(len != original_len);
        bytes[frame..frame + 4].copy_from_slice(&len.to_le_bytes());
        let path = Path::new("/fuzz/huge.wal");
        let result = bounded(|| scan_segment(&bytes, path, may_be_torn, RECORD_MAX))?;
        let is_last_record = damaged + 1 == payloads.len();
        match result {
            Ok(scan) => {
                prop_assert!(may_be_torn && is_last_record, "accepted a damaged record: {:?}", scan);
                check_scan_well_formed(&bytes, &scan, may_be_torn, RECORD_MAX)?;
                prop_assert_eq!(
                    scanned_records(&bytes, &scan),
                    records_of(first_lsn, &payloads[..damaged])
                );
            }
            Err(error) => {
                check_names_file(&error, path, bytes.len())?;
                prop_assert!(
                    matches!(error, StorageError::Corruption { offset, .. } if offset == len_u64(frame)),
                    "{}", error
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// WAL directories.
// ---------------------------------------------------------------------------

const WAL_DIR: &str = "/node/wal";

fn wal_options(segment_size_bytes_max: u64) -> WalOptions {
    WalOptions {
        segment_size_bytes_max,
        record_size_bytes_max: RECORD_MAX,
        write_buffer_bytes_max: 1 << 20,
    }
}

/// Replaces a file's contents (durably).
fn replace_file(fs: &FsRef, path: &Path, bytes: &[u8]) {
    let mut file = fs.create(path).expect("create");
    file.write_all(bytes).expect("write");
    file.sync_data().expect("fsync");
    fs.sync_dir(path.parent().expect("a parent"))
        .expect("fsync dir");
}

/// The segment files of the WAL, oldest first.
fn segment_paths(fs: &FsRef, dir: &Path) -> Vec<PathBuf> {
    let mut names: Vec<String> = fs
        .list_dir(dir)
        .expect("list")
        .into_iter()
        .filter(|name| name.ends_with(".wal"))
        .collect();
    names.sort();
    names.into_iter().map(|name| dir.join(name)).collect()
}

/// Writes `payloads` with the real `Wal`, synced, and returns the records.
fn write_wal(fs: &FsRef, dir: &Path, options: &WalOptions, payloads: &[Vec<u8>]) -> Records {
    let (mut wal, _) = Wal::open(fs.clone(), dir, options.clone()).expect("create WAL");
    let mut records = Vec::new();
    for payload in payloads {
        let lsn = wal.append(payload).expect("append");
        records.push((lsn, payload.clone()));
    }
    wal.sync().expect("sync");
    records
}

fn open_collect(
    fs: &FsRef,
    dir: &Path,
    options: &WalOptions,
) -> Result<(Wal, Records), StorageError> {
    let mut records = Vec::new();
    let (wal, _) = Wal::open_replay(fs.clone(), dir, options.clone(), |lsn, payload| {
        records.push((lsn, payload.to_vec()));
        Ok(())
    })?;
    Ok((wal, records))
}

fn reader_collect(fs: &FsRef, dir: &Path) -> Result<Records, StorageError> {
    let reader = WalReader::open(fs.clone(), dir, RECORD_MAX)?;
    Ok(reader
        .read_from(0)?
        .into_iter()
        .map(|record| (record.lsn, record.payload))
        .collect())
}

/// The error must be about the bytes of one of `segments`.
fn check_names_a_segment(error: &StorageError, segments: &[PathBuf]) -> Result<(), TestCaseError> {
    let named = match error {
        StorageError::Corruption { path, .. } | StorageError::FormatVersion { path, .. } => path,
        other => {
            return Err(TestCaseError::fail(format!(
                "not a corruption error: {other:?}"
            )))
        }
    };
    prop_assert!(
        segments.contains(named),
        "names {} , not a segment",
        named.display()
    );
    let text = error.to_string();
    prop_assert!(text.contains(&named.display().to_string()), "{}", text);
    Ok(())
}

proptest! {
    #![proptest_config(config(8192))]

    /// A WAL written by the real `Wal`, then one of its segments mutated.
    /// The reader and recovery agree. Mutating the last segment: either a
    /// prefix of what was written, with every record of the sealed
    /// segments, is recovered (and the repaired log keeps appending), or
    /// both refuse with an error naming a segment. Any change to a sealed
    /// segment is refused.
    #[test]
    fn wal_open_of_a_mutated_directory_recovers_a_prefix_or_refuses(
        payloads in payloads(24),
        segment_size in 64u64..256,
        which in any::<Index>(),
        last in any::<bool>(),
        mutations in mutations(),
    ) {
        let sim = SimFs::new();
        let fs = sim.shared();
        let dir = Path::new(WAL_DIR);
        let options = wal_options(segment_size);
        let written = write_wal(&fs, dir, &options, &payloads);
        let segments = segment_paths(&fs, dir);
        // The real writer's segments are what the encoders produce.
        let mut next = 0;
        for path in &segments {
            let bytes = fs.read(path).expect("read");
            let scan = scan_segment(&bytes, path, false, RECORD_MAX).expect("valid segment");
            let count = scan.records.len();
            let (encoded, _) = encode_segment(scan.first_lsn, &payloads[next..next + count]);
            prop_assert_eq!(&bytes, &encoded, "Wal and the encoders disagree");
            prop_assert!(path.ends_with(segment_file_name(scan.first_lsn)), "{}", path.display());
            next += count;
        }
        prop_assert_eq!(next, payloads.len());

        let index = if last { segments.len() - 1 } else { which.index(segments.len()) };
        let is_last = index + 1 == segments.len();
        let path = &segments[index];
        let original = fs.read(path).expect("read");
        let bytes = mutated(&original, &mutations);
        replace_file(&fs, path, &bytes);
        // Records of the segments before the mutated one: always intact.
        let sealed_records = usize::try_from(
            scan_segment(&original, path, false, RECORD_MAX).expect("valid").first_lsn - 1,
        ).expect("small");

        let read = reader_collect(&fs, dir);
        let opened = open_collect(&fs, dir, &options);
        match (read, opened) {
            (Ok(read), Ok((mut wal, recovered))) => {
                prop_assert_eq!(&read, &recovered, "the reader and recovery disagree");
                prop_assert!(is_last || bytes == original, "a changed sealed segment was accepted");
                check_prefix(&recovered, &written)?;
                prop_assert!(recovered.len() >= sealed_records, "lost records of sealed segments");
                // The repaired log takes new records after what it kept.
                let lsn = wal.append(b"after").expect("append after recovery");
                prop_assert_eq!(lsn, len_u64(recovered.len()) + 1);
                wal.sync().expect("sync after recovery");
                drop(wal);
                let (_, again) = open_collect(&fs, dir, &options).expect("reopen after repair");
                let mut expected = recovered;
                expected.push((lsn, b"after".to_vec()));
                prop_assert_eq!(again, expected);
            }
            (Err(read), Err(opened)) => {
                check_names_a_segment(&read, &segments)?;
                check_names_a_segment(&opened, &segments)?;
                prop_assert!(bytes != original, "an intact WAL was refused: {}", opened);
            }
            (read, opened) => {
                let opened = opened.map(|(_, records)| records);
                return Err(TestCaseError::fail(format!("the reader and recovery disagree: {read:?} vs {opened:?}")));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Snapshot files.
// ---------------------------------------------------------------------------

const SNAP_DIR: &str = "/node/snapshots";

/// Header bytes before the meta blob: magic, version, index, meta length.
const SNAP_HEADER_FIXED: usize = 8 + 4 + 8 + 4;
/// Trailer bytes: magic, chunk count, payload bytes, file crc.
const SNAP_TRAILER: usize = 8 + 8 + 8 + 4;

/// A snapshot written with the real writer.
#[derive(Debug, Clone)]
struct Snapshot {
    index: u64,
    meta: Vec<u8>,
    data: Vec<u8>,
    chunk_target: usize,
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    (
        0u64..1 << 40,
        vec(any::<u8>(), 0..32),
        vec(any::<u8>(), 0..256),
        1usize..64,
    )
        .prop_map(|(index, meta, data, chunk_target)| Snapshot {
            index,
            meta,
            data,
            chunk_target,
        })
}

fn open_store(fs: &FsRef, chunk_target: usize) -> SnapshotStore {
    SnapshotStore::open(fs.clone(), Path::new(SNAP_DIR))
        .expect("open store")
        .with_chunk_target_bytes(chunk_target)
        .expect("chunk target")
}

/// Writes `snapshot` into the store and returns its path and bytes.
fn write_snapshot(fs: &FsRef, store: &SnapshotStore, snapshot: &Snapshot) -> (PathBuf, Vec<u8>) {
    let mut writer = store.begin(snapshot.index, &snapshot.meta).expect("begin");
    // Written in two pieces, so the writer's coalescing is exercised too.
    let (first, second) = snapshot.data.split_at(snapshot.data.len() / 2);
    writer.write_chunk(first).expect("write");
    writer.write_chunk(second).expect("write");
    let info = writer.finish().expect("finish");
    let bytes = fs.read(&info.path).expect("read");
    (info.path, bytes)
}

/// Verifies the file at `path` (holding `bytes`, written from `snapshot`
/// and then possibly changed) with `verify_file` and the streaming reader.
fn check_snapshot_file(
    fs: &FsRef,
    store: &SnapshotStore,
    snapshot: &Snapshot,
    path: &Path,
    bytes: &[u8],
    intact: bool,
) -> Result<(), TestCaseError> {
    match verify_file(fs, path) {
        Ok(info) => {
            prop_assert!(intact, "a changed snapshot file verified: {:?}", info);
            prop_assert_eq!(info.index, snapshot.index);
            prop_assert_eq!(&info.meta, &snapshot.meta);
            prop_assert_eq!(info.payload_bytes, len_u64(snapshot.data.len()));
            prop_assert_eq!(info.size_bytes, len_u64(bytes.len()));
        }
        Err(error) => {
            prop_assert!(!intact, "an intact snapshot failed: {}", error);
            check_names_file(&error, path, bytes.len())?;
        }
    }
    // The streaming reader: chunks that pass are a prefix of the data; the
    // end (the trailer) validates only for the intact file.
    let mut reader = match store.open_snapshot(snapshot.index) {
        Ok(reader) => reader,
        Err(error) => {
            prop_assert!(!intact, "an intact snapshot failed to open: {}", error);
            return check_names_file(&error, path, bytes.len());
        }
    };
    prop_assert_eq!(reader.meta(), snapshot.meta.as_slice());
    let mut data = Vec::new();
    loop {
        match reader.next_chunk() {
            Ok(Some(chunk)) => {
                prop_assert!(!chunk.is_empty() && chunk.len() <= snapshot.chunk_target);
                data.extend_from_slice(&chunk);
                prop_assert!(
                    snapshot.data.starts_with(&data),
                    "the reader returned data that was never written"
                );
            }
            Ok(None) => {
                prop_assert!(intact, "a changed snapshot streamed to its end");
                prop_assert_eq!(&data, &snapshot.data);
                prop_assert!(reader.info().is_some());
                break;
            }
            Err(error) => {
                prop_assert!(
                    !intact,
                    "an intact snapshot failed while streaming: {}",
                    error
                );
                check_names_file(&error, path, bytes.len())?;
                prop_assert!(reader.info().is_none());
                prop_assert!(
                    reader.next_chunk().is_err(),
                    "the reader goes on after an error"
                );
                break;
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(8192))]

    /// Arbitrary bytes under a snapshot name: an error naming the file, and
    /// no allocation of what the bytes claim.
    #[test]
    fn snapshot_of_arbitrary_bytes_is_refused(
        bytes in prop_oneof![
            vec(any::<u8>(), 0..256),
            // A plausible start (magic, version), then anything.
            vec(any::<u8>(), 0..256).prop_map(|tail| {
                let mut bytes = b"SHARDSNP".to_vec();
                bytes.extend_from_slice(&1u32.to_le_bytes());
                bytes.extend_from_slice(&tail);
                bytes
            }),
        ],
    ) {
        let sim = SimFs::new();
        let fs = sim.shared();
        fs.create_dir_all(Path::new(SNAP_DIR)).expect("mkdir");
        let path = Path::new(SNAP_DIR).join("backup.snap");
        replace_file(&fs, &path, &bytes);
        let result = bounded(|| verify_file(&fs, &path))?;
        match result {
            Ok(info) => return Err(TestCaseError::fail(format!("random bytes verified as a snapshot: {info:?}"))),
            Err(error) => check_names_file(&error, &path, bytes.len())?,
        }
    }

    /// A valid snapshot, mutated: any change is an error naming the file,
    /// from `verify_file` and from the streaming reader (which hands out
    /// only a prefix of the data first); no change verifies.
    #[test]
    fn snapshot_mutated_is_refused_and_names_the_file(
        snapshot in snapshot(),
        mutations in mutations(),
    ) {
        let sim = SimFs::new();
        let fs = sim.shared();
        let store = open_store(&fs, snapshot.chunk_target);
        let (path, original) = write_snapshot(&fs, &store, &snapshot);
        prop_assert!(path.ends_with(snapshot_file_name(snapshot.index)), "{}", path.display());
        let bytes = mutated(&original, &mutations);
        replace_file(&fs, &path, &bytes);
        bounded(|| {
            check_snapshot_file(&fs, &store, &snapshot, &path, &bytes, bytes == original)
        })??;
    }

    /// Length and count fields set huge (the meta length, a chunk length,
    /// the trailer's counts): refused without allocating what they claim.
    #[test]
    fn snapshot_with_huge_length_fields_is_refused_without_allocating(
        snapshot in snapshot(),
        field in 0usize..4,
        len in huge_u32(),
        count in huge_u64(),
        which_chunk in any::<Index>(),
    ) {
        let sim = SimFs::new();
        let fs = sim.shared();
        let store = open_store(&fs, snapshot.chunk_target);
        let (path, original) = write_snapshot(&fs, &store, &snapshot);
        let mut bytes = original.clone();
        let header_len = SNAP_HEADER_FIXED + snapshot.meta.len() + 4;
        let trailer = bytes.len() - SNAP_TRAILER;
        // Offsets of the chunk frames (their length fields).
        let mut chunks = Vec::new();
        let mut at = header_len;
        while at < trailer {
            chunks.push(at);
            let chunk_len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
            at += 8 + usize::try_from(chunk_len).expect("fits");
        }
        prop_assert_eq!(at, trailer, "the file layout is header, chunks, trailer");
        match field {
            0 => put_field(&mut bytes, SNAP_HEADER_FIXED - 4, &len.to_le_bytes()),
            1 if !chunks.is_empty() => {
                let frame = chunks[which_chunk.index(chunks.len())];
                put_field(&mut bytes, frame, &len.to_le_bytes());
            }
            2 => put_field(&mut bytes, trailer + 8, &count.to_le_bytes()),
            _ => put_field(&mut bytes, trailer + 16, &count.to_le_bytes()),
        }
        replace_file(&fs, &path, &bytes);
        bounded(|| {
            check_snapshot_file(&fs, &store, &snapshot, &path, &bytes, bytes == original)
        })??;
    }

    /// A damaged newest snapshot never hides an older valid one:
    /// `latest_valid` skips it (and keeps it for inspection).
    #[test]
    fn snapshot_latest_valid_skips_a_mutated_newest_file(
        snapshot in snapshot(),
        mutations in mutations(),
    ) {
        let sim = SimFs::new();
        let fs = sim.shared();
        let store = open_store(&fs, snapshot.chunk_target);
        let older = Snapshot { index: snapshot.index, ..snapshot.clone() };
        let newer = Snapshot { index: snapshot.index + 1, ..snapshot };
        write_snapshot(&fs, &store, &older);
        let (path, original) = write_snapshot(&fs, &store, &newer);
        let bytes = mutated(&original, &mutations);
        replace_file(&fs, &path, &bytes);
        let latest = store.latest_valid().expect("no I/O error");
        let expected = if bytes == original { newer.index } else { older.index };
        prop_assert_eq!(latest.map(|info| info.index), Some(expected));
        prop_assert_eq!(store.list().expect("list"), vec![older.index, newer.index]);
    }
}
