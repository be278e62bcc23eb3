//! Property tests of the write-ahead log against a model.
//!
//! Goal: whatever sequence of appends, syncs, compactions, clean reopens,
//! process restarts and power losses (plain or torn) happens, the log only
//! ever holds a prefix of what was appended, in order and unaltered; it
//! never loses a record it reported durable; LSNs continue right after what
//! was recovered; and compaction removes only whole segments below the
//! requested LSN, durably.
//!
//! Method: proptest generates a sequence of operations and runs it against
//! a `Wal` on `SimFs` (the in-memory filesystem that models power loss) and
//! against a model, a `Vec` of `(lsn, payload)` plus the durable LSN. Segments
//! are 256 bytes and records up to 300, so roll-over and compaction happen
//! all the time; the write buffer size is generated too, so that unsynced
//! records are sometimes only in memory, sometimes written to the file (and
//! then a torn crash can keep a prefix of them). After every recovery the
//! recovered records (from `open_replay`, and again from `read_from`) must
//! equal the model's records up to some LSN L with durable <= L <= last
//! appended; the model is then cut to L. A second property runs plain
//! appends and syncs on real files in a temporary directory and checks the
//! round trip across several segments and reopens.
//!
//! Cases default to 128 (model) and 64 (real files); set `PROPTEST_CASES` to
//! run more or fewer. Failures are not persisted to files; proptest prints
//! the minimal failing sequence.

use std::path::{Path, PathBuf};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use storage::fs::{Fs, RealFs, SimFs};
use storage::wal::{Lsn, Wal, WalOptions, WalReader};

type Records = Vec<(Lsn, Vec<u8>)>;

const DIR: &str = "/node/wal";

fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Append one record (buffered; durable only after a sync).
    Append(Vec<u8>),
    /// `sync`: everything appended so far becomes durable.
    Sync,
    /// Power loss: everything not fsync'd is lost.
    Crash,
    /// Power loss that keeps a random prefix of each file's unsynced bytes.
    CrashTorn(u64),
    /// `compact_below(pick % (durable + 2))`: only records already durable
    /// (up to `lsn - 1`) may be compacted away.
    Compact(u64),
    /// Clean close (sync, drop) and open.
    Reopen,
    /// The process dies (drop without sync) and restarts; the page cache
    /// keeps what was written to the files.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => vec(any::<u8>(), 0..300).prop_map(Op::Append),
        4 => Just(Op::Sync),
        1 => Just(Op::Crash),
        1 => any::<u64>().prop_map(Op::CrashTorn),
        2 => any::<u64>().prop_map(Op::Compact),
        1 => Just(Op::Reopen),
        1 => Just(Op::Restart),
    ]
}

/// What the log must hold.
#[derive(Debug)]
struct Model {
    /// LSN of the oldest record still in the log.
    first_lsn: Lsn,
    /// Records from `first_lsn` on, in LSN order.
    records: Records,
    /// Every record up to here survives any crash.
    durable_lsn: Lsn,
}

impl Model {
    fn next_lsn(&self) -> Lsn {
        self.first_lsn + self.records.len() as u64
    }
}

struct Harness {
    fs: SimFs,
    options: WalOptions,
    wal: Option<Wal>,
    model: Model,
}

fn dir() -> PathBuf {
    PathBuf::from(DIR)
}

/// First LSNs of the segment files on disk, oldest first.
fn segment_files(fs: &dyn Fs, dir: &Path) -> Vec<Lsn> {
    let names = fs.list_dir(dir).unwrap();
    names
        .iter()
        .filter_map(|n| n.strip_suffix(".wal"))
        .map(|n| n.parse().unwrap())
        .collect()
}

fn read_from(wal: &mut Wal, from: Lsn) -> Records {
    wal.read_from(from)
        .unwrap()
        .into_iter()
        .map(|r| (r.lsn, r.payload))
        .collect()
}

impl Harness {
    fn new(write_buffer_bytes_max: usize) -> Harness {
        let options = WalOptions {
            segment_size_bytes_max: 256,
            record_size_bytes_max: 300,
            write_buffer_bytes_max,
        };
        let fs = SimFs::new();
        let (wal, report) = Wal::open(fs.shared(), &dir(), options.clone()).unwrap();
        assert_eq!(report.segment_count, 0);
        let model = Model {
            first_lsn: 1,
            records: Vec::new(),
            durable_lsn: 0,
        };
        Harness {
            fs,
            options,
            wal: Some(wal),
            model,
        }
    }

    fn wal(&mut self) -> &mut Wal {
        self.wal
            .as_mut()
            .expect("the log is open between operations")
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Append(payload) => {
                let lsn = self.wal().append(payload).unwrap();
                prop_assert_eq!(lsn, self.model.next_lsn(), "append returned a wrong LSN");
                self.model.records.push((lsn, payload.clone()));
                // Rolling over seals (fsyncs) the previous segment, so the
                // durable LSN may advance, but never past earlier appends.
                let durable = self.wal().durable_lsn();
                prop_assert!(durable >= self.model.durable_lsn && durable < lsn);
                self.model.durable_lsn = durable;
            }
            Op::Sync => {
                let durable = self.wal().sync().unwrap();
                prop_assert_eq!(
                    durable,
                    self.model.next_lsn() - 1,
                    "sync left records behind"
                );
                self.model.durable_lsn = durable;
            }
            Op::Crash => {
                self.wal = None;
                self.fs.crash();
                self.recover(false)?;
            }
            Op::CrashTorn(seed) => {
                self.wal = None;
                self.fs.crash_torn(*seed);
                self.recover(false)?;
            }
            Op::Restart => {
                self.wal = None;
                self.recover(false)?;
            }
            Op::Reopen => {
                let durable = self.wal().sync().unwrap();
                prop_assert_eq!(durable, self.model.next_lsn() - 1);
                self.model.durable_lsn = durable;
                self.wal = None;
                self.recover(true)?;
            }
            Op::Compact(pick) => self.compact(pick % (self.model.durable_lsn + 2))?,
        }
        self.check_invariants()
    }

    /// Opens the log and checks it holds a prefix of the model's records
    /// that covers everything durable (all of them if `exact`).
    fn recover(&mut self, exact: bool) -> Result<(), TestCaseError> {
        let mut recovered = Vec::new();
        let (mut wal, report) = Wal::open_replay(
            self.fs.shared(),
            &dir(),
            self.options.clone(),
            |lsn, payload| {
                recovered.push((lsn, payload.to_vec()));
                Ok(())
            },
        )
        .unwrap();
        let model = &mut self.model;
        prop_assert_eq!(
            wal.first_lsn(),
            model.first_lsn,
            "compaction was undone or went further"
        );
        let kept = recovered.len();
        prop_assert!(
            kept <= model.records.len(),
            "recovered records that were never appended"
        );
        prop_assert_eq!(
            &recovered[..],
            &model.records[..kept],
            "recovered wrong or reordered records"
        );
        let last = model.first_lsn + kept as u64 - 1;
        prop_assert!(
            last >= model.durable_lsn,
            "lost durable records: recovered up to {}, durable was {}",
            last,
            model.durable_lsn
        );
        if exact {
            prop_assert_eq!(kept, model.records.len(), "a clean reopen lost records");
        }
        prop_assert_eq!(
            wal.next_lsn(),
            last + 1,
            "LSNs do not continue after the recovered ones"
        );
        prop_assert_eq!(wal.durable_lsn(), last);
        prop_assert_eq!(report.record_count, kept as u64);
        prop_assert_eq!(
            read_from(&mut wal, model.first_lsn),
            recovered.clone(),
            "read_from(first_lsn)"
        );
        prop_assert_eq!(read_from(&mut wal, 0), recovered, "read_from(0)");
        model.records.truncate(kept);
        model.durable_lsn = last;
        self.wal = Some(wal);
        Ok(())
    }

    /// Compacts below `lsn` and checks that exactly the whole segments below
    /// it went, never the active one.
    fn compact(&mut self, lsn: Lsn) -> Result<(), TestCaseError> {
        let before = segment_files(&self.fs, &dir());
        let removable = (0..before.len() - 1)
            .take_while(|&i| before[i + 1] <= lsn)
            .count();
        let removed = self.wal().compact_below(lsn).unwrap();
        prop_assert_eq!(
            removed,
            removable,
            "compact_below({}) on segments {:?}",
            lsn,
            before
        );
        prop_assert_eq!(segment_files(&self.fs, &dir()), before[removed..].to_vec());
        let first = self.wal().first_lsn();
        prop_assert_eq!(first, before[removed]);
        prop_assert!(first >= self.model.first_lsn);
        prop_assert!(
            first <= lsn.max(self.model.first_lsn),
            "a record at or above {} was removed",
            lsn
        );
        let dropped = usize::try_from(first - self.model.first_lsn).unwrap();
        self.model.records.drain(..dropped);
        self.model.first_lsn = first;
        let expected = self.model.records.clone();
        prop_assert_eq!(read_from(self.wal(), first), expected);
        Ok(())
    }

    fn check_invariants(&mut self) -> Result<(), TestCaseError> {
        let (next, first, durable) = (
            self.model.next_lsn(),
            self.model.first_lsn,
            self.model.durable_lsn,
        );
        let files = segment_files(&self.fs, &dir()).len();
        let wal = self.wal();
        prop_assert_eq!(wal.next_lsn(), next);
        prop_assert_eq!(wal.first_lsn(), first);
        prop_assert_eq!(wal.durable_lsn(), durable);
        prop_assert_eq!(wal.segment_count(), files);
        Ok(())
    }
}

proptest! {
    #![proptest_config(config(128))]

    /// The model test described in the file comment.
    #[test]
    fn wal_matches_the_model_through_crashes_and_compaction(
        write_buffer_bytes_max in 1usize..=400,
        ops in vec(op(), 1..150),
    ) {
        let mut harness = Harness::new(write_buffer_bytes_max);
        for op in &ops {
            harness.apply(op)?;
        }
        harness.apply(&Op::Reopen)?;
        harness.apply(&Op::Crash)?;
        let expected = harness.model.records.clone();
        let first = harness.model.first_lsn;
        prop_assert_eq!(read_from(harness.wal(), first), expected);
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// On real files: random payloads appended with syncs at random points
    /// read back identically, across many 512-byte segments, after a reopen,
    /// and again after more appends and a second reopen.
    #[test]
    fn real_files_round_trip_across_segments_and_reopens(
        first in vec((vec(any::<u8>(), 0..400), any::<bool>()), 1..40),
        second in vec((vec(any::<u8>(), 0..400), any::<bool>()), 0..20),
        write_buffer_bytes_max in 1usize..2048,
    ) {
        let temp = tempfile::tempdir().unwrap();
        let options = WalOptions {
            segment_size_bytes_max: 512,
            record_size_bytes_max: 512,
            write_buffer_bytes_max,
        };
        let mut expected: Records = Vec::new();
        for batch in [&first, &second] {
            let (mut wal, report) = Wal::open(RealFs::shared(), temp.path(), options.clone()).unwrap();
            prop_assert_eq!(report.torn_tail, None);
            prop_assert_eq!(wal.next_lsn(), expected.len() as u64 + 1);
            for (payload, sync) in batch {
                let lsn = wal.append(payload).unwrap();
                prop_assert_eq!(lsn, expected.len() as u64 + 1);
                expected.push((lsn, payload.clone()));
                if *sync {
                    prop_assert_eq!(wal.sync().unwrap(), lsn);
                }
            }
            prop_assert_eq!(wal.sync().unwrap(), expected.len() as u64);
            prop_assert_eq!(segment_files(&*RealFs::shared(), temp.path()).len(), wal.segment_count());
            drop(wal);

            let mut recovered = Vec::new();
            let (mut wal, report) =
                Wal::open_replay(RealFs::shared(), temp.path(), options.clone(), |lsn, payload| {
                    recovered.push((lsn, payload.to_vec()));
                    Ok(())
                })
                .unwrap();
            prop_assert_eq!(&recovered, &expected);
            prop_assert_eq!(report.torn_tail, None);
            prop_assert_eq!(read_from(&mut wal, 1), expected.clone());
            let reader = WalReader::open(RealFs::shared(), temp.path(), 512).unwrap();
            let read: Records = reader.read_from(1).unwrap().into_iter().map(|r| (r.lsn, r.payload)).collect();
            prop_assert_eq!(&read, &expected);
            // Every frame is 16 bytes plus its payload; a segment is 32 bytes
            // of header plus at most 512 bytes unless it holds one record.
            let bytes: usize = expected.iter().map(|(_, p)| 16 + p.len()).sum();
            prop_assert!(wal.segment_count() >= bytes / 512, "segments did not roll over");
        }
    }
}
