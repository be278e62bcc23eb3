//! Example-based tests of the write-ahead log (`storage::wal`) against the
//! guarantees its documentation makes: a record acknowledged by `sync` (or by
//! `WalWriter::append`) survives any crash; recovery cuts off exactly a torn
//! tail and refuses to open on any other damage, naming the file and the
//! frame; a failed write or fsync poisons the log; segment creation and
//! compaction are crash safe; group commit hands out each LSN exactly once.
//!
//! Method: most tests run on `SimFs`, the in-memory filesystem with a
//! power-loss model, so that they can crash at every step, keep torn
//! prefixes of unsynced writes, inject faults and edit bytes on "disk".
//! Damage tests are exhaustive rather than sampled: a small reference log of
//! several segments is built once, and then every truncation length and
//! every single-byte bit flip is applied to a fresh copy of it. Expected
//! outcomes are computed from the record sizes (frame = 16-byte header plus
//! payload, segment header = 32 bytes), independently of the scanner under
//! test. The group-commit and `WalReader` tests also run on real files in a
//! temporary directory. No assertion depends on timing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use storage::fs::{Fault, Fs, FsRef, RealFs, SimFs};
use storage::wal::segment::{
    encode_frame, encode_segment_header, segment_file_name, FRAME_HEADER_LEN,
    SEGMENT_FORMAT_VERSION, SEGMENT_HEADER_LEN,
};
use storage::wal::{Lsn, RecoveryReport, Wal, WalOptions, WalReader, WalWriter, WriterOptions};
use storage::StorageError;

/// Where every `SimFs` test keeps its log.
const DIR: &str = "/node/wal";

type Records = Vec<(Lsn, Vec<u8>)>;
type Files = BTreeMap<String, Vec<u8>>;

fn dir() -> PathBuf {
    PathBuf::from(DIR)
}

fn options(segment_size_bytes_max: u64) -> WalOptions {
    WalOptions {
        segment_size_bytes_max,
        record_size_bytes_max: 1024,
        write_buffer_bytes_max: 1 << 20,
    }
}

/// A deterministic payload whose length cycles through a mix of sizes,
/// including the empty payload.
fn payload(seed: usize) -> Vec<u8> {
    const SIZES: [usize; 12] = [0, 1, 5, 17, 40, 3, 64, 9, 33, 21, 50, 2];
    let len = SIZES[seed % SIZES.len()];
    (0..len)
        .map(|i| u8::try_from((seed * 31 + i * 7 + 1) % 251).unwrap())
        .collect()
}

/// Opens with `open_replay` and returns the records it visited.
fn open_collect(
    fs: &FsRef,
    dir: &Path,
    options: &WalOptions,
) -> Result<(Wal, RecoveryReport, Records), StorageError> {
    let mut records = Vec::new();
    let (wal, report) = Wal::open_replay(fs.clone(), dir, options.clone(), |lsn, payload| {
        records.push((lsn, payload.to_vec()));
        Ok(())
    })?;
    Ok((wal, report, records))
}

fn reader_records(fs: &FsRef, dir: &Path, from: Lsn) -> Result<Records, StorageError> {
    let reader = WalReader::open(fs.clone(), dir, 1024)?;
    Ok(reader
        .read_from(from)?
        .into_iter()
        .map(|r| (r.lsn, r.payload))
        .collect())
}

fn wal_records(wal: &mut Wal, from: Lsn) -> Records {
    wal.read_from(from)
        .unwrap()
        .into_iter()
        .map(|r| (r.lsn, r.payload))
        .collect()
}

/// Every file of a directory with its current contents.
fn snapshot(fs: &dyn Fs, dir: &Path) -> Files {
    fs.list_dir(dir)
        .unwrap()
        .into_iter()
        .map(|name| {
            let bytes = fs.read(&dir.join(&name)).unwrap();
            (name, bytes)
        })
        .collect()
}

/// A fresh simulated filesystem holding exactly `files`, all durable.
fn sim_fs_with(files: &Files) -> SimFs {
    let fs = SimFs::new();
    fs.create_dir_all(&dir()).unwrap();
    for (name, bytes) in files {
        let mut file = fs.create(&dir().join(name)).unwrap();
        file.write_all(bytes).unwrap();
        file.sync_data().unwrap();
    }
    fs.sync_dir(&dir()).unwrap();
    fs
}

/// The temporary segment files in `dir` (none if `dir` does not exist yet).
fn tmp_files(fs: &dyn Fs, dir: &Path) -> Vec<PathBuf> {
    let names = fs.list_dir(dir).unwrap_or_default();
    names
        .into_iter()
        .filter(|n| n.ends_with(".wal.tmp"))
        .map(|n| dir.join(n))
        .collect()
}

fn assert_corruption<T: std::fmt::Debug>(
    result: Result<T, StorageError>,
    path: &Path,
    offset: u64,
    context: &str,
) {
    match result {
        Err(StorageError::Corruption {
            path: p,
            offset: o,
            reason,
        }) => {
            assert_eq!(
                (p.as_path(), o),
                (path, offset),
                "{context}: corruption reported at the wrong place ({reason})"
            );
        }
        other => panic!(
            "{context}: expected corruption in {} at {offset}, got {other:?}",
            path.display()
        ),
    }
}

/// `recovered` must be the first `recovered.len()` records of `expected`
/// (same LSNs, same payloads), and hold at least `at_least` of them.
fn assert_prefix(
    recovered: &[(Lsn, Vec<u8>)],
    expected: &[(Lsn, Vec<u8>)],
    at_least: usize,
    context: &str,
) {
    assert!(
        recovered.len() >= at_least,
        "{context}: {} records recovered, {at_least} were acknowledged",
        recovered.len()
    );
    assert!(
        recovered.len() <= expected.len(),
        "{context}: {} records recovered, only {} were appended",
        recovered.len(),
        expected.len()
    );
    assert_eq!(
        recovered,
        &expected[..recovered.len()],
        "{context}: recovered records differ"
    );
}

/// A WAL that reopens with `durable_lsn() == d` must still hold records up
/// to `d` after a power loss right then: checks that open does not claim
/// records durable that only the page cache holds.
fn assert_open_claims_survive_power_loss(fs: &SimFs, options: &WalOptions, context: &str) {
    let (wal, _, before) = open_collect(&fs.shared(), &dir(), options).unwrap();
    let claimed = wal.durable_lsn();
    drop(wal);
    fs.crash();
    let (wal, _, after) = open_collect(&fs.shared(), &dir(), options).unwrap();
    assert_eq!(
        wal.durable_lsn(),
        claimed,
        "{context}: durable LSN claimed at open was lost"
    );
    assert_eq!(
        after, before,
        "{context}: records claimed durable at open were lost"
    );
}

/// A small log built once and copied for every damage experiment.
struct Reference {
    options: WalOptions,
    files: Files,
    records: Records,
    /// First LSN and file name of every segment, oldest first.
    segments: Vec<(Lsn, String)>,
}

impl Reference {
    /// Appends `count` records of mixed sizes, each synced, with a small
    /// segment size so that the log rolls over several times.
    fn build(segment_size_bytes_max: u64, count: usize) -> Reference {
        let options = options(segment_size_bytes_max);
        let fs = SimFs::new();
        let (mut wal, _) = Wal::open(fs.shared(), &dir(), options.clone()).unwrap();
        let mut records = Vec::new();
        for i in 0..count {
            let payload = payload(i);
            let lsn = wal.append(&payload).unwrap();
            assert_eq!(wal.sync().unwrap(), lsn);
            records.push((lsn, payload));
        }
        drop(wal);
        let files = snapshot(&fs, &dir());
        let segments = files
            .keys()
            .map(|name| {
                (
                    name.strip_suffix(".wal").unwrap().parse().unwrap(),
                    name.clone(),
                )
            })
            .collect();
        let reference = Reference {
            options,
            files,
            records,
            segments,
        };
        for index in 0..reference.segments.len() {
            let name = &reference.segments[index].1;
            assert_eq!(
                *reference.frame_starts(index).last().unwrap(),
                reference.files[name].len(),
                "the file format is header + (16-byte frame header + payload) per record"
            );
        }
        reference
    }

    fn path(&self, index: usize) -> PathBuf {
        dir().join(&self.segments[index].1)
    }

    fn first_lsn(&self, index: usize) -> Lsn {
        self.segments[index].0
    }

    fn next_lsn(&self) -> Lsn {
        self.records.len() as u64 + 1
    }

    /// The records stored in segment `index`.
    fn segment_records(&self, index: usize) -> &[(Lsn, Vec<u8>)] {
        let first = self.first_lsn(index);
        let end = self
            .segments
            .get(index + 1)
            .map_or(self.next_lsn(), |s| s.0);
        &self.records[usize::try_from(first - 1).unwrap()..usize::try_from(end - 1).unwrap()]
    }

    /// Byte offset of every frame of segment `index`, followed by the end of
    /// the last frame (the file length).
    fn frame_starts(&self, index: usize) -> Vec<usize> {
        let mut starts = vec![SEGMENT_HEADER_LEN];
        for (_, payload) in self.segment_records(index) {
            starts.push(starts.last().unwrap() + FRAME_HEADER_LEN + payload.len());
        }
        starts
    }

    /// Every record with an LSN below `lsn`.
    fn records_below(&self, lsn: Lsn) -> Records {
        self.records
            .iter()
            .filter(|(l, _)| *l < lsn)
            .cloned()
            .collect()
    }

    /// A fresh filesystem holding the reference log, with segment `index`
    /// edited by `edit`.
    fn fs_with(&self, index: usize, edit: impl FnOnce(&mut Vec<u8>)) -> SimFs {
        let mut files = self.files.clone();
        edit(files.get_mut(&self.segments[index].1).unwrap());
        sim_fs_with(&files)
    }
}

/// The reference used by the damage tests: 14 records in 5 segments, the
/// last holding 4 records.
fn damage_reference() -> Reference {
    let reference = Reference::build(160, 14);
    assert!(
        reference.segments.len() >= 3,
        "the damage tests need several segments"
    );
    assert!(
        reference
            .segment_records(reference.segments.len() - 1)
            .len()
            >= 2
    );
    reference
}

// ---------------------------------------------------------------------------
// 3. Truncation at every byte offset.
// ---------------------------------------------------------------------------

/// Cutting the last segment to any length >= its header opens with exactly
/// the records whose frames fit entirely, reports a torn tail iff the cut
/// fell inside a frame, repairs the file, and the log keeps working. A cut
/// inside the 32-byte header is corruption: a segment gets its final name
/// only after its header was fsync'd, so no crash can produce it.
#[test]
fn truncating_the_last_segment_at_every_offset_keeps_exactly_the_whole_records() {
    let reference = damage_reference();
    let last = reference.segments.len() - 1;
    let path = reference.path(last);
    let starts = reference.frame_starts(last);
    let file_len = *starts.last().unwrap();
    for len in 0..=file_len {
        let context = format!("last segment cut to {len} of {file_len} bytes");
        let fs = reference.fs_with(last, |bytes| bytes.truncate(len));
        if len < SEGMENT_HEADER_LEN {
            assert_corruption(
                open_collect(&fs.shared(), &dir(), &reference.options),
                &path,
                0,
                &context,
            );
            continue;
        }
        let whole_frames = starts.iter().filter(|&&s| s <= len).count() - 1;
        let valid_end = starts[whole_frames];
        let next_lsn = reference.first_lsn(last) + whole_frames as u64;
        let expected = reference.records_below(next_lsn);
        let torn = len != valid_end;

        // The read-only reader sees the same thing and changes nothing.
        let before = snapshot(&fs, &dir());
        let verify = WalReader::open(fs.shared(), &dir(), 1024)
            .unwrap()
            .verify()
            .unwrap();
        assert_eq!(
            verify.torn_tail,
            torn.then(|| (path.clone(), valid_end as u64)),
            "{context}"
        );
        assert_eq!(verify.record_count, expected.len() as u64, "{context}");
        assert_eq!(
            snapshot(&fs, &dir()),
            before,
            "{context}: verify modified files"
        );

        let (mut wal, report, recovered) =
            open_collect(&fs.shared(), &dir(), &reference.options).unwrap();
        assert_eq!(recovered, expected, "{context}");
        assert_eq!(report.record_count, expected.len() as u64, "{context}");
        assert_eq!(report.segment_count, reference.segments.len(), "{context}");
        let expected_torn =
            torn.then(|| (path.clone(), valid_end as u64, (len - valid_end) as u64));
        assert_eq!(
            report
                .torn_tail
                .as_ref()
                .map(|t| (t.path.clone(), t.offset, t.discarded_bytes)),
            expected_torn,
            "{context}"
        );
        assert_eq!(
            fs.read(&path).unwrap().len(),
            valid_end,
            "{context}: torn tail not cut off"
        );
        assert_eq!(
            (wal.next_lsn(), wal.durable_lsn()),
            (next_lsn, next_lsn - 1),
            "{context}"
        );
        assert_eq!(
            wal_records(&mut wal, 1),
            expected,
            "{context}: read_from after open"
        );

        // New records continue the LSN sequence and survive a power loss.
        let extra = b"after repair".to_vec();
        assert_eq!(wal.append(&extra).unwrap(), next_lsn, "{context}");
        assert_eq!(wal.sync().unwrap(), next_lsn, "{context}");
        drop(wal);
        fs.crash();
        let (_, report, recovered) =
            open_collect(&fs.shared(), &dir(), &reference.options).unwrap();
        let mut expected = expected;
        expected.push((next_lsn, extra));
        assert_eq!(recovered, expected, "{context}: after append and reopen");
        assert_eq!(
            report.torn_tail, None,
            "{context}: the repair was not durable"
        );
    }
}

/// Cutting a sealed (non-last) segment at any length below its size never
/// opens. A cut inside the header or inside a frame is reported in that file,
/// at 0 or at the start of the cut frame. A cut exactly at a frame boundary
/// leaves a segment that is valid on its own, so the damage shows as missing
/// LSNs and is reported at offset 0 of the *next* segment ("records are
/// missing"); the test pins that down as well.
#[test]
fn truncating_a_sealed_segment_at_any_offset_is_corruption() {
    let reference = damage_reference();
    for index in 0..reference.segments.len() - 1 {
        let starts = reference.frame_starts(index);
        let file_len = *starts.last().unwrap();
        for len in 0..file_len {
            let context = format!("segment {index} cut to {len} of {file_len} bytes");
            let fs = reference.fs_with(index, |bytes| bytes.truncate(len));
            let (path, offset) = if len < SEGMENT_HEADER_LEN {
                (reference.path(index), 0)
            } else if starts.contains(&len) {
                (reference.path(index + 1), 0)
            } else {
                (
                    reference.path(index),
                    *starts.iter().rev().find(|&&s| s <= len).unwrap() as u64,
                )
            };
            let before = snapshot(&fs, &dir());
            let verify = WalReader::open(fs.shared(), &dir(), 1024).unwrap().verify();
            assert_corruption(verify, &path, offset, &format!("{context} (verify)"));
            assert_corruption(
                open_collect(&fs.shared(), &dir(), &reference.options),
                &path,
                offset,
                &context,
            );
            assert_eq!(
                snapshot(&fs, &dir()),
                before,
                "{context}: a failed open modified files"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 4. A bit flip in every byte.
// ---------------------------------------------------------------------------

/// Flips one bit in every byte of every segment (headers included), each on
/// a fresh copy. Either the flip hit the final record of the last segment and
/// the log opens with exactly the records before it (a torn write looks the
/// same), or open fails with `Corruption` naming the flipped file and the
/// start of the flipped frame (0 for a header). `WalReader::verify` reports
/// the same outcome without touching any file, and no wrong payload is ever
/// returned.
#[test]
fn a_bit_flip_anywhere_is_cut_as_a_torn_tail_or_reported_where_it_is() {
    let reference = damage_reference();
    let last = reference.segments.len() - 1;
    for index in 0..reference.segments.len() {
        let path = reference.path(index);
        let starts = reference.frame_starts(index);
        let file_len = *starts.last().unwrap();
        let final_frame = starts[starts.len() - 2];
        for at in 0..file_len {
            let bit = 1u8 << (at % 8);
            let context = format!("segment {index}, byte {at} xor {bit:#04x}");
            let fs = reference.fs_with(index, |bytes| bytes[at] ^= bit);
            let frame = if at < SEGMENT_HEADER_LEN {
                None
            } else {
                Some(*starts.iter().rev().find(|&&s| s <= at).unwrap())
            };
            let before = snapshot(&fs, &dir());
            let verify = WalReader::open(fs.shared(), &dir(), 1024).unwrap().verify();
            let read = reader_records(&fs.shared(), &dir(), 1);
            assert_eq!(
                snapshot(&fs, &dir()),
                before,
                "{context}: the reader modified files"
            );
            let opened = open_collect(&fs.shared(), &dir(), &reference.options);

            if index == last && frame == Some(final_frame) {
                let torn_lsn = reference.records.last().unwrap().0;
                let expected = reference.records_below(torn_lsn);
                let verify = verify.unwrap();
                assert_eq!(
                    verify.torn_tail,
                    Some((path.clone(), final_frame as u64)),
                    "{context}"
                );
                assert_eq!(read.unwrap(), expected, "{context}: reader");
                let (wal, report, recovered) = opened.unwrap();
                assert_eq!(recovered, expected, "{context}");
                let torn = report.torn_tail.unwrap();
                assert_eq!(
                    (torn.path, torn.offset),
                    (path.clone(), final_frame as u64),
                    "{context}"
                );
                assert_eq!(wal.next_lsn(), torn_lsn, "{context}");
            } else {
                let offset = frame.unwrap_or(0) as u64;
                assert_corruption(verify, &path, offset, &format!("{context} (verify)"));
                assert_corruption(read, &path, offset, &format!("{context} (read_from)"));
                assert_corruption(opened, &path, offset, &context);
                assert_eq!(
                    snapshot(&fs, &dir()),
                    before,
                    "{context}: a failed open modified files"
                );
            }
        }
    }
}

/// A frame whose checksum is valid but whose LSN is out of sequence (a
/// duplicated or stale record) is corruption at that frame, in a sealed
/// segment and before a later valid record in the last one; it is never
/// returned under the LSN it was expected to have.
#[test]
fn a_valid_frame_out_of_lsn_sequence_is_corruption() {
    let segment = |first: Lsn, lsns: &[Lsn]| {
        let mut bytes = encode_segment_header(first).to_vec();
        for &lsn in lsns {
            encode_frame(lsn, format!("record {lsn}").as_bytes(), &mut bytes);
        }
        bytes
    };
    let frame_len = (FRAME_HEADER_LEN + "record 1".len()) as u64;
    // (segments as (first LSN, frame LSNs), index of the damaged segment,
    // index of the damaged frame in it)
    type Case = (Vec<(Lsn, Vec<Lsn>)>, usize, u64);
    let cases: [Case; 3] = [
        // Sealed segment: 1, 2, then a valid frame carrying LSN 7.
        (vec![(1, vec![1, 2, 7]), (4, vec![4, 5])], 0, 2),
        // Last segment: 1, then 1 again, then 2.
        (vec![(1, vec![1, 1, 2])], 0, 1),
        // Last segment after a sealed one: 4, then 3, then 5.
        (vec![(1, vec![1, 2, 3]), (4, vec![4, 3, 5])], 1, 1),
    ];
    for (segments, bad_segment, bad_frame) in cases {
        let context = format!("{segments:?}");
        let files: Files = segments
            .iter()
            .map(|(first, lsns)| (segment_file_name(*first), segment(*first, lsns)))
            .collect();
        let fs = sim_fs_with(&files);
        let path = dir().join(segment_file_name(segments[bad_segment].0));
        let offset = SEGMENT_HEADER_LEN as u64 + bad_frame * frame_len;
        assert_corruption(
            open_collect(&fs.shared(), &dir(), &options(4096)),
            &path,
            offset,
            &context,
        );
        let verify = WalReader::open(fs.shared(), &dir(), 1024).unwrap().verify();
        assert_corruption(verify, &path, offset, &context);
    }
}

// ---------------------------------------------------------------------------
// 5. Fault injection.
// ---------------------------------------------------------------------------

/// How the node comes back after a failure.
#[derive(Debug, Clone, Copy)]
enum Comeback {
    /// Power loss: everything not fsync'd is gone.
    PowerLoss,
    /// Power loss after the disk happened to write every unsynced byte.
    PowerLossKeepingWrites,
    /// The process is restarted; the page cache keeps what was written.
    ProcessRestart,
}

impl Comeback {
    const ALL: [Comeback; 3] = [
        Comeback::PowerLoss,
        Comeback::PowerLossKeepingWrites,
        Comeback::ProcessRestart,
    ];

    fn apply(self, fs: &SimFs) {
        match self {
            Comeback::PowerLoss => fs.crash(),
            Comeback::PowerLossKeepingWrites => fs.crash_keeping(|_, unsynced| unsynced),
            Comeback::ProcessRestart => {}
        }
    }
}

fn assert_poisoned<T: std::fmt::Debug>(result: Result<T, StorageError>, context: &str) {
    assert!(
        matches!(result, Err(StorageError::Poisoned { .. })),
        "{context}: expected Poisoned, got {result:?}"
    );
}

/// Five acknowledged records, then a batch of four whose `sync` meets
/// `fault`. Returns the filesystem, the acknowledged records and the failed
/// batch.
fn fail_a_sync(fault: Fault) -> (SimFs, Records, Records) {
    let options = options(4096);
    let fs = SimFs::new();
    let (mut wal, _) = Wal::open(fs.shared(), &dir(), options).unwrap();
    let mut acked = Vec::new();
    for i in 0..5 {
        let payload = payload(i + 3);
        acked.push((wal.append(&payload).unwrap(), payload));
    }
    assert_eq!(wal.sync().unwrap(), 5);
    let mut failed = Vec::new();
    for i in 0..4 {
        let payload = payload(i + 8);
        failed.push((wal.append(&payload).unwrap(), payload));
    }
    fs.inject(fault);
    let error = wal.sync().unwrap_err();
    assert!(
        matches!(error, StorageError::Io { .. }),
        "{fault:?}: {error:?}"
    );
    assert_eq!(
        wal.durable_lsn(),
        5,
        "{fault:?}: the failed batch was reported durable"
    );
    assert_poisoned(wal.append(b"more"), "append after a failed sync");
    assert_poisoned(wal.sync(), "sync after a failed sync");
    assert_poisoned(wal.read_from(1), "read_from after a failed sync");
    assert_poisoned(wal.compact_below(3), "compact_below after a failed sync");
    assert_eq!(
        wal.durable_lsn(),
        5,
        "{fault:?}: a retried sync reported the failed batch durable"
    );
    assert_eq!(
        wal.next_lsn(),
        10,
        "{fault:?}: a poisoned append consumed an LSN"
    );
    (fs, acked, failed)
}

/// Checks the log after a failed batch and a comeback: the acknowledged
/// records are all there, then possibly a prefix of the failed batch, and
/// new appends continue the sequence. Returns the records recovered.
fn check_after_failure(
    fs: &SimFs,
    acked: &Records,
    failed: &Records,
    context: &str,
) -> (RecoveryReport, Records) {
    let options = options(4096);
    let all: Records = acked.iter().chain(failed).cloned().collect();
    let (mut wal, report, recovered) = open_collect(&fs.shared(), &dir(), &options).unwrap();
    assert_prefix(&recovered, &all, acked.len(), context);
    let next = recovered.len() as u64 + 1;
    assert_eq!(
        (wal.next_lsn(), wal.durable_lsn()),
        (next, next - 1),
        "{context}"
    );
    assert_eq!(wal_records(&mut wal, 1), recovered, "{context}: read_from");
    drop(wal);
    assert_open_claims_survive_power_loss(fs, &options, context);

    let (mut wal, _, _) = open_collect(&fs.shared(), &dir(), &options).unwrap();
    assert_eq!(wal.append(b"after the failure").unwrap(), next, "{context}");
    assert_eq!(wal.sync().unwrap(), next, "{context}");
    drop(wal);
    fs.crash();
    let (_, _, after) = open_collect(&fs.shared(), &dir(), &options).unwrap();
    let mut expected = recovered.clone();
    expected.push((next, b"after the failure".to_vec()));
    assert_eq!(after, expected, "{context}: append after recovery");
    (report, recovered)
}

/// A failed fsync: `sync` errs, the batch is never reported durable, the log
/// is poisoned, and after any comeback the acknowledged records are present
/// (the failed batch may survive, whole or as a prefix).
#[test]
fn a_failed_fsync_poisons_the_log_and_keeps_every_acknowledged_record() {
    for comeback in Comeback::ALL {
        let (fs, acked, failed) = fail_a_sync(Fault::SyncError);
        comeback.apply(&fs);
        let context = format!("SyncError, {comeback:?}");
        let (report, recovered) = check_after_failure(&fs, &acked, &failed, &context);
        assert_eq!(report.torn_tail, None, "{context}");
        if matches!(comeback, Comeback::PowerLoss) {
            assert_eq!(
                recovered, acked,
                "{context}: the failed batch was never durable"
            );
        }
    }
}

/// A failed write: nothing of the batch reaches the file, the log is
/// poisoned, and the acknowledged records survive every comeback.
#[test]
fn a_failed_write_poisons_the_log_and_keeps_every_acknowledged_record() {
    for comeback in Comeback::ALL {
        let (fs, acked, failed) = fail_a_sync(Fault::WriteError);
        comeback.apply(&fs);
        let context = format!("WriteError, {comeback:?}");
        let (report, recovered) = check_after_failure(&fs, &acked, &failed, &context);
        assert_eq!(report.torn_tail, None, "{context}");
        assert_eq!(recovered, acked, "{context}: a failed write stored records");
    }
}

/// A short write at every possible length of the batch: the log is poisoned;
/// when the partial bytes survive (process restart, or a power loss after
/// the disk wrote them) reopen keeps the whole frames and cuts the partial
/// one off as a torn tail; the acknowledged records are always present.
#[test]
fn a_short_write_leaves_a_torn_tail_that_reopen_cuts_off() {
    let (_, _, failed) = fail_a_sync(Fault::WriteError);
    let mut frame_ends = vec![0usize];
    for (_, payload) in &failed {
        frame_ends.push(frame_ends.last().unwrap() + FRAME_HEADER_LEN + payload.len());
    }
    let batch_len = *frame_ends.last().unwrap();
    for keep_bytes in 0..=batch_len {
        for comeback in Comeback::ALL {
            let context =
                format!("ShortWrite keeping {keep_bytes} of {batch_len} bytes, {comeback:?}");
            let (fs, acked, failed) = fail_a_sync(Fault::ShortWrite { keep_bytes });
            comeback.apply(&fs);
            let (report, recovered) = check_after_failure(&fs, &acked, &failed, &context);
            if matches!(comeback, Comeback::PowerLoss) {
                assert_eq!(recovered, acked, "{context}");
                assert_eq!(report.torn_tail, None, "{context}");
                continue;
            }
            let whole = frame_ends.iter().filter(|&&e| e <= keep_bytes).count() - 1;
            assert_eq!(recovered.len(), acked.len() + whole, "{context}");
            let partial = keep_bytes - frame_ends[whole];
            assert_eq!(
                report.torn_tail.map(|t| t.discarded_bytes),
                (partial > 0).then_some(partial as u64),
                "{context}"
            );
        }
    }
}

/// A fault while sealing a full segment (the write or fsync that `append`
/// does before rolling over) fails that `append`, poisons the log, and
/// never reports the unsynced records durable.
#[test]
fn a_fault_while_sealing_a_segment_poisons_the_log() {
    for fault in [
        Fault::SyncError,
        Fault::WriteError,
        Fault::ShortWrite { keep_bytes: 20 },
    ] {
        for comeback in Comeback::ALL {
            let context = format!("{fault:?} at roll-over, {comeback:?}");
            let options = options(200);
            let fs = SimFs::new();
            let (mut wal, _) = Wal::open(fs.shared(), &dir(), options.clone()).unwrap();
            let acked: Records = (0..2)
                .map(|i| (wal.append(&[i; 10]).unwrap(), vec![i; 10]))
                .collect();
            assert_eq!(wal.sync().unwrap(), 2);
            fs.inject(fault);
            let mut appended = acked.clone();
            let error = loop {
                let payload = vec![7; 30];
                match wal.append(&payload) {
                    Ok(lsn) => appended.push((lsn, payload)),
                    Err(error) => break error,
                }
                assert!(appended.len() < 20, "{context}: no roll-over happened");
            };
            assert!(
                matches!(error, StorageError::Io { .. }),
                "{context}: {error:?}"
            );
            assert_eq!(wal.durable_lsn(), 2, "{context}");
            assert_poisoned(wal.append(b"x"), &context);
            assert_poisoned(wal.sync(), &context);
            assert_eq!(
                wal.segment_count(),
                1,
                "{context}: rolled over after a failed seal"
            );
            drop(wal);
            comeback.apply(&fs);
            let (_, _, recovered) = open_collect(&fs.shared(), &dir(), &options).unwrap();
            assert_prefix(&recovered, &appended, acked.len(), &context);
            assert_open_claims_survive_power_loss(&fs, &options, &context);
        }
    }
}

/// Outcome of one concurrent appender in the writer fault test.
struct AppenderLog {
    acked: Vec<(Lsn, Vec<u8>)>,
    errors_after_failure: usize,
}

/// Eight tokio tasks append through one `WalWriter` while a fault is
/// injected after the 100th acknowledgement. Every append acknowledged `Ok`
/// is present after the comeback with its payload at its LSN; once an
/// appender sees an error, every later append fails with `Poisoned`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writer_appenders_see_poisoned_after_a_fault_and_acknowledged_records_survive() {
    let faults = [
        Fault::SyncError,
        Fault::WriteError,
        Fault::ShortWrite { keep_bytes: 23 },
    ];
    for fault in faults {
        for comeback in [Comeback::PowerLoss, Comeback::PowerLossKeepingWrites] {
            let context = format!("{fault:?}, {comeback:?}");
            let options = options(4096);
            let fs = SimFs::new();
            let (wal, _) = Wal::open(fs.shared(), &dir(), options.clone()).unwrap();
            let writer = WalWriter::spawn(wal, WriterOptions::default()).unwrap();
            let acks = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for task in 0..8u32 {
                let (writer, acks, fs) = (writer.clone(), Arc::clone(&acks), fs.clone());
                tasks.push(tokio::spawn(async move {
                    let mut log = AppenderLog {
                        acked: Vec::new(),
                        errors_after_failure: 0,
                    };
                    for seq in 0..100_000u32 {
                        let payload = format!("task {task} seq {seq}").into_bytes();
                        match writer.append(payload.clone()).await {
                            Ok(lsn) => {
                                assert_eq!(log.errors_after_failure, 0, "Ok after an error");
                                log.acked.push((lsn, payload));
                                if acks.fetch_add(1, Ordering::SeqCst) + 1 == 100 {
                                    fs.inject(fault);
                                }
                            }
                            Err(error) => {
                                assert!(
                                    matches!(error, StorageError::Poisoned { .. }),
                                    "{error:?}"
                                );
                                log.errors_after_failure += 1;
                                if log.errors_after_failure == 3 {
                                    break;
                                }
                            }
                        }
                    }
                    log
                }));
            }
            let mut acked = BTreeMap::new();
            for task in tasks {
                let log = task.await.unwrap();
                assert_eq!(
                    log.errors_after_failure, 3,
                    "{context}: an appender never saw the failure"
                );
                for (lsn, payload) in log.acked {
                    assert!(
                        acked.insert(lsn, payload).is_none(),
                        "{context}: LSN {lsn} given twice"
                    );
                }
            }
            assert!(acked.len() >= 100, "{context}");
            let batch = writer.append_batch(vec![b"late".to_vec()]).await;
            assert_poisoned(batch, &context);
            assert_poisoned(writer.compact_below(2).await, &context);
            drop(writer.close().await.unwrap());
            comeback.apply(&fs);

            let (_, _, recovered) = open_collect(&fs.shared(), &dir(), &options).unwrap();
            for (i, (lsn, _)) in recovered.iter().enumerate() {
                assert_eq!(
                    *lsn,
                    i as u64 + 1,
                    "{context}: recovered LSNs are not contiguous"
                );
            }
            let recovered: BTreeMap<Lsn, Vec<u8>> = recovered.into_iter().collect();
            for (lsn, payload) in &acked {
                assert_eq!(
                    recovered.get(lsn),
                    Some(payload),
                    "{context}: acknowledged LSN {lsn}"
                );
            }
            let distinct: BTreeSet<&Vec<u8>> = recovered.values().collect();
            assert_eq!(
                distinct.len(),
                recovered.len(),
                "{context}: a payload was stored twice"
            );
            assert_open_claims_survive_power_loss(&fs, &options, &context);
        }
    }
}

/// Records a killed process left in the page cache (written, never
/// fsync'd) are durable once `open` has counted them in `durable_lsn`: a
/// power loss right after the restart must not lose them.
#[test]
fn records_recovered_from_the_page_cache_are_made_durable_by_open() {
    let options = WalOptions {
        write_buffer_bytes_max: 1,
        ..options(4096)
    };
    let fs = SimFs::new();
    let (mut wal, _) = Wal::open(fs.shared(), &dir(), options.clone()).unwrap();
    for i in 0..5 {
        wal.append(&payload(i)).unwrap();
    }
    assert_eq!(wal.durable_lsn(), 0);
    drop(wal); // killed: the five records were written but never fsync'd
    let (wal, _, recovered) = open_collect(&fs.shared(), &dir(), &options).unwrap();
    assert_eq!(recovered.len(), 5);
    assert_eq!(wal.durable_lsn(), 5);
    drop(wal);
    assert_open_claims_survive_power_loss(&fs, &options, "after a process restart");
    fs.crash();
    let (_, _, recovered) = open_collect(&fs.shared(), &dir(), &options).unwrap();
    assert_eq!(
        recovered.len(),
        5,
        "records claimed durable at open were lost by a power loss"
    );
}

/// A process killed between the rename of a new segment and the directory
/// fsync leaves a segment whose name is visible but not durable. Records
/// appended to it after the restart and acknowledged must survive a power
/// loss, so open has to make the directory durable.
#[test]
fn a_segment_renamed_but_not_dir_synced_before_a_kill_is_made_durable_by_open() {
    let reference = Reference::build(160, 14);
    let fs = sim_fs_with(&reference.files);
    let next = reference.next_lsn();
    let tmp = dir().join(format!("{next:020}.wal.tmp"));
    let mut file = fs.create(&tmp).unwrap();
    file.write_all(&encode_segment_header(next)).unwrap();
    file.sync_data().unwrap();
    fs.rename(&tmp, &dir().join(segment_file_name(next)))
        .unwrap();
    drop(file); // killed before the directory fsync

    let (mut wal, report, _) = open_collect(&fs.shared(), &dir(), &reference.options).unwrap();
    assert_eq!(report.segment_count, reference.segments.len() + 1);
    assert_eq!(wal.append(b"acknowledged").unwrap(), next);
    assert_eq!(wal.sync().unwrap(), next);
    drop(wal);
    fs.crash();
    let (_, _, recovered) = open_collect(&fs.shared(), &dir(), &reference.options).unwrap();
    assert_eq!(
        recovered.last(),
        Some(&(next, b"acknowledged".to_vec())),
        "an acknowledged record was lost"
    );
}

// ---------------------------------------------------------------------------
// 6. Interrupted segment roll-over.
// ---------------------------------------------------------------------------

/// What a run up to a halt achieved.
struct HaltedRun {
    appended: Records,
    /// Highest LSN the log ever reported durable.
    acked: Lsn,
}

/// Opens a fresh log and appends 24 records of mixed sizes with a sync
/// after every third, on 128-byte segments (so about ten roll-overs), until
/// the first error.
fn run_until_halt(fs: &SimFs, options: &WalOptions) -> HaltedRun {
    let mut run = HaltedRun {
        appended: Vec::new(),
        acked: 0,
    };
    let Ok((mut wal, _)) = Wal::open(fs.shared(), &dir(), options.clone()) else {
        return run;
    };
    for i in 0..24 {
        let payload = payload(i);
        match wal.append(&payload) {
            Ok(lsn) => run.appended.push((lsn, payload)),
            Err(_) => break,
        }
        run.acked = run.acked.max(wal.durable_lsn());
        if i % 3 == 2 {
            match wal.sync() {
                Ok(lsn) => run.acked = lsn,
                Err(_) => break,
            }
        }
    }
    run.acked = run.acked.max(wal.durable_lsn());
    run
}

/// Halts the filesystem after every possible number k of mutating calls of a
/// run that creates a log and rolls it over about ten times (segment
/// creation = create tmp, write header, fsync, rename, fsync dir), then
/// crashes (plainly, and keeping a torn prefix): the log must open cleanly,
/// with any leftover `.wal.tmp` removed and reported, every record ever
/// reported durable present, and no record that was not appended.
///
/// (With `SimFs`'s power-loss model a temporary file never outlives the crash,
/// because its directory entry is never fsync'd; the removal itself is
/// tested with a hand-made leftover in the next test.)
#[test]
fn a_crash_at_every_step_of_segment_roll_over_recovers_every_acknowledged_record() {
    let options = options(128);
    let full = SimFs::new();
    let run = run_until_halt(&full, &options);
    assert_eq!(run.appended.len(), 24);
    let (wal, _) = Wal::open(full.shared(), &dir(), options.clone()).unwrap();
    assert!(
        wal.segment_count() >= 8,
        "the run must roll over many times"
    );
    drop(wal);
    let total_ops = SimFs::new();
    run_until_halt(&total_ops, &options);
    let total_ops = total_ops.mutating_ops();

    for k in 0..=total_ops {
        for torn in [false, true] {
            let context = format!("halt after {k} of {total_ops} calls, torn crash {torn}");
            let fs = SimFs::new();
            fs.halt_after(k);
            let run = run_until_halt(&fs, &options);
            assert_eq!(fs.halted(), k < total_ops, "{context}");
            if torn {
                fs.crash_torn(k * 2 + 1);
            } else {
                fs.crash();
            }
            let leftovers = tmp_files(&fs, &dir());
            let (mut wal, report, recovered) =
                open_collect(&fs.shared(), &dir(), &options).unwrap();
            assert_eq!(report.removed_tmp_files, leftovers, "{context}");
            assert!(
                tmp_files(&fs, &dir()).is_empty(),
                "{context}: a temporary file remains"
            );
            assert_prefix(
                &recovered,
                &run.appended,
                usize::try_from(run.acked).unwrap(),
                &context,
            );
            let next = recovered.len() as u64 + 1;
            assert_eq!(wal.next_lsn(), next, "{context}");
            assert_eq!(wal_records(&mut wal, 1), recovered, "{context}");
            assert_eq!(wal.append(b"next").unwrap(), next, "{context}");
            assert_eq!(wal.sync().unwrap(), next, "{context}");
            drop(wal);
            fs.crash();
            let (_, _, after) = open_collect(&fs.shared(), &dir(), &options).unwrap();
            assert_eq!(after.len() as u64, next, "{context}: append after recovery");
        }
    }
}

/// Leftover temporary segments (a full header, a partial header, an empty
/// file) are removed at open, reported, the removal is durable, and the log
/// is untouched. Checked on `SimFs` and on real files.
#[test]
fn leftover_temporary_segments_are_removed_and_reported() {
    let reference = Reference::build(160, 14);
    let next = reference.next_lsn();
    let header = encode_segment_header(next);
    let leftovers: Vec<(String, Vec<u8>)> = vec![
        (format!("{next:020}.wal.tmp"), header.to_vec()),
        (format!("{:020}.wal.tmp", next + 1), header[..7].to_vec()),
        (format!("{:020}.wal.tmp", next + 2), Vec::new()),
    ];
    let mut files = reference.files.clone();
    files.extend(leftovers.iter().cloned());

    let fs = sim_fs_with(&files);
    let (_, report, recovered) = open_collect(&fs.shared(), &dir(), &reference.options).unwrap();
    let expected: Vec<PathBuf> = leftovers.iter().map(|(name, _)| dir().join(name)).collect();
    assert_eq!(report.removed_tmp_files, expected);
    assert_eq!(recovered, reference.records);
    fs.crash();
    assert!(
        tmp_files(&fs, &dir()).is_empty(),
        "the removal was not durable"
    );
    assert_eq!(snapshot(&fs, &dir()), reference.files);

    let temp = tempfile::tempdir().unwrap();
    let real = RealFs::shared();
    for (name, bytes) in &files {
        std::fs::write(temp.path().join(name), bytes).unwrap();
    }
    let (_, report, recovered) = open_collect(&real, temp.path(), &reference.options).unwrap();
    let expected: Vec<PathBuf> = leftovers
        .iter()
        .map(|(name, _)| temp.path().join(name))
        .collect();
    assert_eq!(report.removed_tmp_files, expected);
    assert_eq!(recovered, reference.records);
    assert_eq!(snapshot(&*real, temp.path()), reference.files);
}

// ---------------------------------------------------------------------------
// 7. Compaction.
// ---------------------------------------------------------------------------

fn compaction_reference() -> Reference {
    let reference = Reference::build(128, 24);
    assert!(reference.segments.len() >= 8);
    reference
}

/// For every LSN from 0 to past the end, `compact_below(lsn)` removes
/// exactly the segments all of whose records are below `lsn` (never the
/// active one), returns how many, keeps the rest readable, and the result is
/// durable across a power loss.
#[test]
fn compact_below_removes_exactly_the_whole_segments_below_the_lsn() {
    let reference = compaction_reference();
    let count = reference.segments.len();
    for lsn in 0..=reference.next_lsn() + 2 {
        let context = format!("compact_below({lsn})");
        let fs = sim_fs_with(&reference.files);
        let (mut wal, _) = Wal::open(fs.shared(), &dir(), reference.options.clone()).unwrap();
        // Segment i can go iff the next segment starts at or below `lsn`.
        let removable = (0..count - 1)
            .take_while(|&i| reference.first_lsn(i + 1) <= lsn)
            .count();
        assert_eq!(wal.compact_below(lsn).unwrap(), removable, "{context}");
        let kept: Vec<String> = reference.segments[removable..]
            .iter()
            .map(|s| s.1.clone())
            .collect();
        assert_eq!(fs.list_dir(&dir()).unwrap(), kept, "{context}");
        let first = reference.first_lsn(removable);
        assert_eq!(
            (wal.first_lsn(), wal.segment_count()),
            (first, count - removable),
            "{context}"
        );
        assert!(
            first <= lsn.max(1),
            "{context}: a record at or above {lsn} was removed"
        );
        let remaining: Records = reference
            .records
            .iter()
            .filter(|(l, _)| *l >= first)
            .cloned()
            .collect();
        assert_eq!(wal_records(&mut wal, first), remaining, "{context}");
        // Asking for records that were compacted away returns what exists.
        assert_eq!(
            wal_records(&mut wal, 1),
            remaining,
            "{context}: read_from(1)"
        );
        assert_eq!(
            wal_records(&mut wal, 0),
            remaining,
            "{context}: read_from(0)"
        );
        assert_eq!(
            wal.compact_below(lsn).unwrap(),
            0,
            "{context}: compaction is idempotent"
        );
        assert_eq!(wal.next_lsn(), reference.next_lsn(), "{context}");
        drop(wal);

        fs.crash();
        assert_eq!(fs.list_dir(&dir()).unwrap(), kept, "{context}: not durable");
        let (mut wal, _, recovered) =
            open_collect(&fs.shared(), &dir(), &reference.options).unwrap();
        assert_eq!(recovered, remaining, "{context}: after a power loss");
        assert_eq!(
            (wal.first_lsn(), wal.next_lsn()),
            (first, reference.next_lsn()),
            "{context}"
        );
        assert_eq!(wal.append(b"z").unwrap(), reference.next_lsn(), "{context}");
        wal.sync().unwrap();
    }
}

/// `read_from` below `first_lsn` returns the records that still exist, from
/// `first_lsn` on (it is not an error); from `next_lsn` on it returns
/// nothing. Same for `WalReader`, which also reports the remaining range.
#[test]
fn read_from_below_the_compacted_range_returns_only_what_exists() {
    let reference = compaction_reference();
    let fs = sim_fs_with(&reference.files);
    let (mut wal, _) = Wal::open(fs.shared(), &dir(), reference.options.clone()).unwrap();
    let below = reference.first_lsn(3) + 1;
    assert_eq!(wal.compact_below(below).unwrap(), 3);
    let first = wal.first_lsn();
    assert_eq!(first, reference.first_lsn(3));
    let remaining: Records = reference
        .records
        .iter()
        .filter(|(l, _)| *l >= first)
        .cloned()
        .collect();
    for from in 0..=first {
        assert_eq!(wal_records(&mut wal, from), remaining, "read_from({from})");
        assert_eq!(
            reader_records(&fs.shared(), &dir(), from).unwrap(),
            remaining,
            "reader from {from}"
        );
    }
    let next = wal.next_lsn();
    assert!(wal_records(&mut wal, next).is_empty());
    assert!(wal_records(&mut wal, next + 10).is_empty());
    let verify = WalReader::open(fs.shared(), &dir(), 1024)
        .unwrap()
        .verify()
        .unwrap();
    assert_eq!(verify.lsn_range, Some((first, next - 1)));
    assert_eq!(verify.segment_count, reference.segments.len() - 3);
}

/// A halt at every step of a compaction (each removal, the directory
/// fsync), followed by a power loss, leaves a contiguous suffix of the
/// segments that opens cleanly with every record from its first LSN on.
#[test]
fn a_crash_during_compaction_leaves_a_contiguous_suffix_that_opens() {
    let reference = compaction_reference();
    let below = reference.next_lsn();
    let probe = sim_fs_with(&reference.files);
    let (mut wal, _) = Wal::open(probe.shared(), &dir(), reference.options.clone()).unwrap();
    let before = probe.mutating_ops();
    assert_eq!(
        wal.compact_below(below).unwrap(),
        reference.segments.len() - 1
    );
    let compaction_ops = probe.mutating_ops() - before;
    drop(wal);

    for k in 0..=compaction_ops {
        for torn in [false, true] {
            let context =
                format!("halt after {k} of {compaction_ops} compaction calls, torn {torn}");
            let fs = sim_fs_with(&reference.files);
            let (mut wal, _) = Wal::open(fs.shared(), &dir(), reference.options.clone()).unwrap();
            fs.halt_after(k);
            let result = wal.compact_below(below);
            assert_eq!(result.is_ok(), k == compaction_ops, "{context}: {result:?}");
            drop(wal);
            if torn {
                fs.crash_torn(k);
            } else {
                fs.crash();
            }
            let names = fs.list_dir(&dir()).unwrap();
            let all: Vec<String> = reference.segments.iter().map(|s| s.1.clone()).collect();
            assert!(
                all.ends_with(&names) && !names.is_empty(),
                "{context}: {names:?} is not a suffix"
            );
            let (wal, _, recovered) =
                open_collect(&fs.shared(), &dir(), &reference.options).unwrap();
            let first = wal.first_lsn();
            let remaining: Records = reference
                .records
                .iter()
                .filter(|(l, _)| *l >= first)
                .cloned()
                .collect();
            assert_eq!(recovered, remaining, "{context}");
            assert_eq!(wal.next_lsn(), reference.next_lsn(), "{context}");
        }
    }
}

/// `WalWriter::compact_below` runs after the appends queued before it are
/// durable and removes the same segments as `Wal::compact_below`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_compaction_removes_whole_segments_below_the_lsn() {
    let reference = compaction_reference();
    let fs = sim_fs_with(&reference.files);
    let (wal, _) = Wal::open(fs.shared(), &dir(), reference.options.clone()).unwrap();
    let writer = WalWriter::spawn(wal, WriterOptions::default()).unwrap();
    let lsn = writer.append(b"one more".to_vec()).await.unwrap();
    assert_eq!(lsn, reference.next_lsn());
    let below = reference.first_lsn(4);
    assert_eq!(writer.compact_below(below).await.unwrap(), 4);
    let wal = writer.close().await.unwrap();
    assert_eq!(wal.first_lsn(), below);
    drop(wal);
    fs.crash();
    let (_, _, recovered) = open_collect(&fs.shared(), &dir(), &reference.options).unwrap();
    assert_eq!(recovered.first().map(|r| r.0), Some(below));
    assert_eq!(recovered.last(), Some(&(lsn, b"one more".to_vec())));
}

// ---------------------------------------------------------------------------
// 8. Group commit.
// ---------------------------------------------------------------------------

fn task_payload(task: usize, seq: usize) -> Vec<u8> {
    let mut payload = format!("task {task:02} record {seq:03} ").into_bytes();
    payload.resize(payload.len() + (task * 7 + seq) % 50, b'.');
    payload
}

/// 64 tokio tasks append 200 records each through one `WalWriter` on real
/// files: every append gets a distinct LSN, LSNs 1..=12800 are all used,
/// each task's LSNs increase, and after `close` and reopen the payload at
/// each LSN is the one whose append returned it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_gives_every_append_its_own_lsn_and_keeps_its_payload() {
    const TASKS: usize = 64;
    const PER_TASK: usize = 200;
    let temp = tempfile::tempdir().unwrap();
    let options = WalOptions {
        segment_size_bytes_max: 64 << 10,
        ..options(0)
    };
    let (wal, _) = Wal::open(RealFs::shared(), temp.path(), options.clone()).unwrap();
    let writer = WalWriter::spawn(wal, WriterOptions::default()).unwrap();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            let mut lsns = Vec::new();
            for seq in 0..PER_TASK {
                lsns.push(writer.append(task_payload(task, seq)).await.unwrap());
            }
            lsns
        }));
    }
    let mut by_lsn = BTreeMap::new();
    for (task, handle) in tasks.into_iter().enumerate() {
        let lsns = handle.await.unwrap();
        assert!(
            lsns.windows(2).all(|w| w[0] < w[1]),
            "task {task}: LSNs not increasing"
        );
        for (seq, lsn) in lsns.into_iter().enumerate() {
            assert!(
                by_lsn.insert(lsn, task_payload(task, seq)).is_none(),
                "LSN {lsn} given twice"
            );
        }
    }
    let total = (TASKS * PER_TASK) as u64;
    assert_eq!(
        by_lsn.keys().copied().collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );

    let wal = writer.close().await.unwrap();
    assert_eq!((wal.durable_lsn(), wal.next_lsn()), (total, total + 1));
    assert!(wal.segment_count() > 1);
    drop(wal);
    let (_, report, recovered) = open_collect(&RealFs::shared(), temp.path(), &options).unwrap();
    assert_eq!(report.torn_tail, None);
    assert_eq!(recovered, by_lsn.into_iter().collect::<Records>());
}

/// `append_batch` gives its records consecutive LSNs even with concurrent
/// single appends, returns the last one, and stores them in order; an empty
/// batch is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn append_batch_gives_consecutive_lsns() {
    let options = options(512);
    let fs = SimFs::new();
    let (wal, _) = Wal::open(fs.shared(), &dir(), options.clone()).unwrap();
    let writer = WalWriter::spawn(wal, WriterOptions::default()).unwrap();
    let mut tasks = Vec::new();
    for task in 0..8usize {
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            let mut placed = Vec::new();
            for seq in 0..20usize {
                if seq % 2 == 0 {
                    let payload = task_payload(task, seq);
                    placed.push((writer.append(payload.clone()).await.unwrap(), payload));
                } else {
                    let batch: Vec<Vec<u8>> = (0..1 + (task + seq) % 5)
                        .map(|i| task_payload(task, seq * 10 + i))
                        .collect();
                    let last = writer.append_batch(batch.clone()).await.unwrap();
                    let first = last + 1 - batch.len() as u64;
                    placed.extend((first..=last).zip(batch));
                }
            }
            placed
        }));
    }
    let mut expected = BTreeMap::new();
    for task in tasks {
        for (lsn, payload) in task.await.unwrap() {
            assert!(
                expected.insert(lsn, payload).is_none(),
                "LSN {lsn} given twice"
            );
        }
    }
    assert!(matches!(
        writer.append_batch(Vec::new()).await,
        Err(StorageError::InvalidArgument(_))
    ));
    drop(writer.close().await.unwrap());
    fs.crash();
    let (_, _, recovered) = open_collect(&fs.shared(), &dir(), &options).unwrap();
    assert_eq!(recovered, expected.into_iter().collect::<Records>());
}

/// An oversize payload is refused with `RecordTooLarge` by `Wal::append`,
/// `WalWriter::append` and `WalWriter::append_batch` (even when only one of
/// the batch is too large), consumes no LSN and stores nothing; a payload of
/// exactly the limit is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_records_are_refused_and_nothing_is_appended() {
    let options = WalOptions {
        record_size_bytes_max: 100,
        ..options(4096)
    };
    let fs = SimFs::new();
    let (mut wal, _) = Wal::open(fs.shared(), &dir(), options.clone()).unwrap();
    assert_eq!(wal.append(b"first").unwrap(), 1);
    let too_large = |result: Result<Lsn, StorageError>| {
        assert!(
            matches!(
                result,
                Err(StorageError::RecordTooLarge {
                    size_bytes: 101,
                    max_bytes: 100
                })
            ),
            "{result:?}"
        );
    };
    too_large(wal.append(&[1; 101]));
    assert_eq!(wal.next_lsn(), 2);
    assert_eq!(
        wal.append(&[2; 100]).unwrap(),
        2,
        "a payload of exactly the limit is accepted"
    );
    let writer = WalWriter::spawn(wal, WriterOptions::default()).unwrap();
    too_large(writer.append(vec![3; 101]).await);
    too_large(
        writer
            .append_batch(vec![vec![4; 10], vec![5; 101], vec![6; 10]])
            .await,
    );
    assert_eq!(writer.append(b"last".to_vec()).await.unwrap(), 3);
    drop(writer.close().await.unwrap());
    fs.crash();
    let (_, _, recovered) = open_collect(&fs.shared(), &dir(), &options).unwrap();
    let expected: Records = vec![
        (1, b"first".to_vec()),
        (2, vec![2; 100]),
        (3, b"last".to_vec()),
    ];
    assert_eq!(recovered, expected);
}

// ---------------------------------------------------------------------------
// 9. WalReader on a live log.
// ---------------------------------------------------------------------------

/// A `WalReader` on the directory of a log that is still open sees the
/// synced records and those written but not yet fsync'd, not those still
/// in the writer's buffer; a torn-looking tail written by hand marks the
/// end. It never changes a byte, on `SimFs` and on real files.
#[test]
fn reader_on_a_live_log_reads_what_is_valid_and_changes_nothing() {
    // A buffer of 200 bytes: a 300-byte record is written at once, a 10-byte
    // one stays buffered.
    let options = WalOptions {
        write_buffer_bytes_max: 200,
        ..options(100_000)
    };
    let temp = tempfile::tempdir().unwrap();
    let sim = SimFs::new();
    let setups: [(FsRef, PathBuf); 2] = [
        (sim.shared(), dir()),
        (RealFs::shared(), temp.path().to_path_buf()),
    ];
    for (fs, dir) in setups {
        let (mut wal, _) = Wal::open(fs.clone(), &dir, options.clone()).unwrap();
        let mut visible: Records = (0..3)
            .map(|i| (wal.append(&payload(i + 3)).unwrap(), payload(i + 3)))
            .collect();
        wal.sync().unwrap();
        visible.push((wal.append(&[9; 300]).unwrap(), vec![9; 300]));
        wal.append(&[8; 10]).unwrap(); // still in the buffer

        let check = |torn_at: Option<u64>| {
            let before = snapshot(&*fs, &dir);
            let reader = WalReader::open(fs.clone(), &dir, 1024).unwrap();
            assert_eq!(reader.read_from(1).unwrap().len(), visible.len());
            assert_eq!(reader_records(&fs, &dir, 1).unwrap(), visible);
            assert_eq!(reader_records(&fs, &dir, 3).unwrap(), visible[2..].to_vec());
            let verify = reader.verify().unwrap();
            assert_eq!(verify.lsn_range, Some((1, 4)));
            let segment = dir.join(segment_file_name(1));
            assert_eq!(verify.torn_tail, torn_at.map(|offset| (segment, offset)));
            assert_eq!(snapshot(&*fs, &dir), before, "the reader modified files");
        };
        check(None);

        // Half of the frame of record 5, as a writer caught mid-write leaves it.
        let segment = dir.join(segment_file_name(1));
        let end = fs.read(&segment).unwrap().len() as u64;
        let mut frame = Vec::new();
        encode_frame(5, &[7; 40], &mut frame);
        fs.open_append(&segment)
            .unwrap()
            .write_all(&frame[..30])
            .unwrap();
        check(Some(end));
        drop(wal);
    }
}

// ---------------------------------------------------------------------------
// 10. Bad options and foreign segments.
// ---------------------------------------------------------------------------

/// `WalOptions::validate` (and so `Wal::open`) rejects a segment too small
/// for a header and one frame header, a zero record limit and a zero write
/// buffer; the smallest valid segment size is accepted. `WalWriter::spawn`
/// rejects zero bounds.
#[test]
fn bad_options_are_rejected() {
    let min_segment = (SEGMENT_HEADER_LEN + FRAME_HEADER_LEN) as u64;
    assert!(WalOptions::default().validate().is_ok());
    assert!(options(min_segment).validate().is_ok());
    let bad = [
        options(min_segment - 1),
        options(0),
        WalOptions {
            record_size_bytes_max: 0,
            ..options(4096)
        },
        WalOptions {
            write_buffer_bytes_max: 0,
            ..options(4096)
        },
    ];
    for options in bad {
        assert!(
            matches!(options.validate(), Err(StorageError::InvalidArgument(_))),
            "{options:?}"
        );
        let fs = SimFs::new();
        let opened = Wal::open(fs.shared(), &dir(), options.clone());
        assert!(
            matches!(opened, Err(StorageError::InvalidArgument(_))),
            "{options:?}"
        );
    }
    let fs = SimFs::new();
    for writer_options in [
        WriterOptions {
            queue_depth: 0,
            ..WriterOptions::default()
        },
        WriterOptions {
            batch_records_max: 0,
            ..WriterOptions::default()
        },
        WriterOptions {
            batch_bytes_max: 0,
            ..WriterOptions::default()
        },
    ] {
        let (wal, _) = Wal::open(fs.shared(), &dir(), options(4096)).unwrap();
        let spawned = WalWriter::spawn(wal, writer_options);
        assert!(matches!(spawned, Err(StorageError::InvalidArgument(_))));
    }
}

/// A segment with a well-formed header of an unknown format version is
/// `FormatVersion` (not corruption), from `open` and from the reader.
#[test]
fn a_segment_of_an_unknown_format_version_is_refused() {
    let reference = Reference::build(160, 14);
    let index = 2;
    let fs = reference.fs_with(index, |bytes| {
        bytes[8..12].copy_from_slice(&(SEGMENT_FORMAT_VERSION + 1).to_le_bytes());
        let crc = crc_of(&bytes[0..28]);
        bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    });
    let path = reference.path(index);
    let expected = |result: &Result<_, StorageError>| {
        matches!(result, Err(StorageError::FormatVersion { path: p, found, supported })
            if *p == path && *found == SEGMENT_FORMAT_VERSION + 1 && *supported == SEGMENT_FORMAT_VERSION)
    };
    let opened = open_collect(&fs.shared(), &dir(), &reference.options).map(|_| ());
    assert!(expected(&opened), "{opened:?}");
    let verified = WalReader::open(fs.shared(), &dir(), 1024)
        .unwrap()
        .verify()
        .map(|_| ());
    assert!(expected(&verified), "{verified:?}");
}

/// A segment whose file name disagrees with the first LSN in its (valid)
/// header is corruption at offset 16, the header's LSN field: the file is
/// renamed here, so header and records agree with each other. If instead
/// the header is rewritten, the records disagree with it as well and the
/// first of them may be reported; either way the segment is refused.
#[test]
fn a_segment_whose_header_disagrees_with_its_name_is_corruption() {
    let reference = Reference::build(160, 14);
    let last = reference.segments.len() - 1;
    for (index, wrong_name) in [
        (0, 2),
        (2, reference.first_lsn(2) - 1),
        (last, reference.first_lsn(last) + 1),
    ] {
        let context = format!("segment {index} renamed to {wrong_name}");
        let mut files = reference.files.clone();
        let bytes = files.remove(&reference.segments[index].1).unwrap();
        files.insert(segment_file_name(wrong_name), bytes);
        let fs = sim_fs_with(&files);
        let path = dir().join(segment_file_name(wrong_name));
        assert_corruption(
            open_collect(&fs.shared(), &dir(), &reference.options),
            &path,
            16,
            &context,
        );
        let verify = WalReader::open(fs.shared(), &dir(), 1024).unwrap().verify();
        assert_corruption(verify, &path, 16, &context);
    }
    for index in [0, 2, last] {
        let fs = reference.fs_with(index, |bytes| {
            let first = reference.first_lsn(index) + 1;
            bytes[..SEGMENT_HEADER_LEN].copy_from_slice(&encode_segment_header(first));
        });
        let opened = open_collect(&fs.shared(), &dir(), &reference.options);
        assert!(
            matches!(&opened, Err(StorageError::Corruption { path, .. }) if *path == reference.path(index)),
            "segment {index} with a rewritten header: {opened:?}"
        );
    }
}

/// A missing middle segment (LSNs missing between two segments) is
/// corruption reported at the start of the segment after the gap.
#[test]
fn a_missing_segment_is_corruption() {
    let reference = Reference::build(160, 14);
    let mut files = reference.files.clone();
    files.remove(&reference.segments[2].1);
    let fs = sim_fs_with(&files);
    assert_corruption(
        open_collect(&fs.shared(), &dir(), &reference.options),
        &reference.path(3),
        0,
        "gap",
    );
}

/// crc32 (IEEE), for crafting a header of another version.
fn crc_of(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The CRC used above matches the format's: a header this test encodes
/// itself validates.
#[test]
fn crafted_headers_use_the_format_checksum() {
    let header = encode_segment_header(42);
    assert_eq!(crc_of(&header[0..28]).to_le_bytes(), header[28..32]);
}
