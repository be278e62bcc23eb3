//! The segmented write-ahead log: the record of everything a replica has
//! promised and accepted, made durable before the replica says so.
//!
//! A WAL is a directory of segment files, each named by the LSN of its first
//! record (see [`segment`] for the bytes). Records are opaque payloads; the
//! paxos-log crate decides what they mean.
//!
//! ```text
//!   append(payload) ──► in-memory buffer ──► sync(): one write + one fdatasync
//!                                                   │
//!   00000000000000000001.wal  00000000000000004097.wal  ...  (active segment)
//!   └─ sealed: fsync'd whole before the next segment was created
//! ```
//!
//! * [`Wal`] is the synchronous engine, owned by one thread. `append` only
//!   buffers; `sync` makes everything appended so far durable with a single
//!   fdatasync, which is what lets one fsync cover many records.
//! * [`WalWriter`] runs a `Wal` on a dedicated thread and gives many
//!   concurrent tokio tasks an `append` that resolves once its record is
//!   durable (group commit).
//! * [`WalReader`] reads a WAL directory without changing it: for inspecting
//!   a running node or a stopped one.
//!
//! Recovery ([`Wal::open`]) validates every segment. A partly written record
//! at the end of the last segment is what a crash leaves behind: it is cut
//! off, fsync'd and reported. Any other bad byte is
//! [`StorageError::Corruption`], naming the file and offset, and the WAL
//! refuses to open.
//!
//! A failed write or fsync poisons the `Wal`: after a failed fsync the kernel
//! may have dropped the dirty pages, and a retry could report success for
//! data that is gone. The only safe continuation is to restart and recover
//! from what is really on disk.

mod reader;
pub mod segment;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

pub use self::reader::{VerifyReport, WalReader, WalRecord};
pub use self::segment::Lsn;
use self::segment::{
    encode_frame, encode_segment_header, parse_segment_file_name, scan_segment, segment_file_name,
    SegmentEnd, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN, SEGMENT_TMP_SUFFIX,
};
pub use self::writer::{WalWriter, WriterOptions};
use crate::error::{Result, StorageError};
use crate::fs::{FsFile, FsRef};

/// Tuning and limits of a WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalOptions {
    /// A segment is sealed and a new one started once appending a record
    /// would grow it past this size (a segment always holds at least one
    /// record, so a single large record may exceed it).
    pub segment_size_bytes_max: u64,
    /// Largest payload accepted by `append`; larger frames on disk are
    /// treated as damage, so this also bounds what recovery allocates.
    pub record_size_bytes_max: u32,
    /// Appended bytes buffered in memory before they are written to the
    /// file (still without fsync), bounding memory between syncs.
    pub write_buffer_bytes_max: usize,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size_bytes_max: 64 << 20,
            record_size_bytes_max: 16 << 20,
            write_buffer_bytes_max: 1 << 20,
        }
    }
}

impl WalOptions {
    /// Checks that the options make sense together.
    pub fn validate(&self) -> Result<()> {
        let min_segment = (SEGMENT_HEADER_LEN + FRAME_HEADER_LEN) as u64;
        if self.segment_size_bytes_max < min_segment {
            return Err(StorageError::InvalidArgument(format!(
                "segment_size_bytes_max must be at least {min_segment}"
            )));
        }
        if self.record_size_bytes_max == 0 || self.write_buffer_bytes_max == 0 {
            return Err(StorageError::InvalidArgument(
                "record_size_bytes_max and write_buffer_bytes_max must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// What [`Wal::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments found.
    pub segment_count: usize,
    /// Valid records found (before compaction-aware filtering by the caller).
    pub record_count: u64,
    /// A torn tail that was cut off, if any.
    pub torn_tail: Option<TornTail>,
    /// Leftover temporary files of an interrupted segment creation, removed.
    pub removed_tmp_files: Vec<PathBuf>,
}

/// A partly written record removed from the end of the log at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment that was truncated.
    pub path: PathBuf,
    /// Its new length: where the torn record started.
    pub offset: u64,
    /// How many bytes were cut off.
    pub discarded_bytes: u64,
    /// Why the bytes at `offset` were not a valid record.
    pub reason: String,
}

/// Counters of the durable write path, shared with whoever reports metrics.
/// Relaxed atomics: they are statistics, never used for synchronisation.
#[derive(Debug, Default)]
pub struct WalStats {
    /// Successful fdatasync calls on segments (group commits and seals).
    pub fsync_count: AtomicU64,
    /// Total time spent in those calls.
    pub fsync_micros_total: AtomicU64,
    /// Longest single fdatasync.
    pub fsync_micros_max: AtomicU64,
    /// Records made durable.
    pub records_synced: AtomicU64,
    /// Frame bytes written to segment files.
    pub bytes_written: AtomicU64,
}

impl WalStats {
    fn record_fsync(&self, micros: u64, records: u64) {
        self.fsync_count.fetch_add(1, Ordering::Relaxed);
        self.fsync_micros_total.fetch_add(micros, Ordering::Relaxed);
        self.fsync_micros_max.fetch_max(micros, Ordering::Relaxed);
        self.records_synced.fetch_add(records, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone)]
struct SegmentMeta {
    first_lsn: Lsn,
    path: PathBuf,
}

/// The write-ahead log engine. Single-threaded: wrap it in a [`WalWriter`]
/// for concurrent appenders.
#[derive(Debug)]
pub struct Wal {
    fs: FsRef,
    dir: PathBuf,
    options: WalOptions,
    /// Every segment, oldest first; the last one is the active one.
    segments: Vec<SegmentMeta>,
    /// Open handle to the last segment.
    active: Box<dyn FsFile>,
    /// Size of the active segment including bytes still in `buffer`.
    active_size_bytes: u64,
    /// Frames appended but not yet handed to the file.
    buffer: Vec<u8>,
    /// LSN the next append gets.
    next_lsn: Lsn,
    /// Every record up to and including this LSN is durable (0: none).
    durable_lsn: Lsn,
    /// Set by the first failed write or fsync; see the module docs.
    poisoned: Option<String>,
    stats: Arc<WalStats>,
}

impl Wal {
    /// Opens (or creates) the WAL in `dir`, validating every segment and
    /// cutting off a torn tail. Fails with [`StorageError::Corruption`] on any
    /// damage a crash cannot explain.
    pub fn open(fs: FsRef, dir: &Path, options: WalOptions) -> Result<(Wal, RecoveryReport)> {
        Wal::open_replay(fs, dir, options, |_, _| Ok(()))
    }

    /// Like [`Wal::open`], and hands every valid record to `visit` in LSN
    /// order, so the caller rebuilds its state from one read of the log.
    /// Records of a segment are visited only after the whole segment
    /// validated; if open fails later, the caller must discard what it built.
    pub fn open_replay(
        fs: FsRef,
        dir: &Path,
        options: WalOptions,
        mut visit: impl FnMut(Lsn, &[u8]) -> Result<()>,
    ) -> Result<(Wal, RecoveryReport)> {
        options.validate()?;
        crate::fs::create_dir_all_durable(fs.as_ref(), dir)
            .map_err(StorageError::io("create WAL directory", dir))?;
        let mut report = RecoveryReport::default();

        let mut segments = Vec::new();
        for name in fs
            .list_dir(dir)
            .map_err(StorageError::io("list WAL directory", dir))?
        {
            let path = dir.join(&name);
            if name.ends_with(SEGMENT_TMP_SUFFIX) {
                fs.remove_file(&path)
                    .map_err(StorageError::io("remove temporary segment", &path))?;
                warn!(path = %path.display(), "removed a segment whose creation a crash interrupted");
                report.removed_tmp_files.push(path);
            } else if let Some(first_lsn) = parse_segment_file_name(&name) {
                segments.push(SegmentMeta { first_lsn, path });
            }
        }
        if !report.removed_tmp_files.is_empty() {
            fs.sync_dir(dir)
                .map_err(StorageError::io("fsync WAL directory", dir))?;
        }
        segments.sort_by_key(|s| s.first_lsn);
        report.segment_count = segments.len();

        if segments.is_empty() {
            return Ok((Wal::create_new(fs, dir, options)?, report));
        }

        let mut next_lsn = segments[0].first_lsn;
        let mut active_size_bytes = 0;
        let last_index = segments.len() - 1;
        for (index, meta) in segments.iter().enumerate() {
            let bytes = fs
                .read(&meta.path)
                .map_err(StorageError::io("read segment", &meta.path))?;
            let is_last = index == last_index;
            let scan = scan_segment(&bytes, &meta.path, is_last, options.record_size_bytes_max)?;
            if scan.first_lsn != meta.first_lsn {
                return Err(StorageError::corruption(
                    &meta.path,
                    16,
                    format!(
                        "header says first LSN {}, file name says {}",
                        scan.first_lsn, meta.first_lsn
                    ),
                ));
            }
            if scan.first_lsn != next_lsn {
                return Err(StorageError::corruption(
                    &meta.path,
                    0,
                    format!(
                        "segment starts at LSN {} but the previous one ends at {}: records are missing",
                        scan.first_lsn,
                        next_lsn - 1
                    ),
                ));
            }
            for record in &scan.records {
                visit(record.lsn, record.payload(&bytes))?;
            }
            report.record_count += scan.records.len() as u64;
            next_lsn = scan.next_lsn();
            active_size_bytes = bytes.len() as u64;
            if let SegmentEnd::Torn { offset, reason } = scan.end {
                debug_assert!(is_last, "the scanner reports torn tails only where allowed");
                let mut file = fs
                    .open_append(&meta.path)
                    .map_err(StorageError::io("open segment for repair", &meta.path))?;
                file.truncate(offset)
                    .map_err(StorageError::io("truncate torn tail", &meta.path))?;
                file.sync_data()
                    .map_err(StorageError::io("fsync truncated segment", &meta.path))?;
                let discarded_bytes = bytes.len() as u64 - offset;
                warn!(
                    path = %meta.path.display(), offset, discarded_bytes, %reason,
                    "cut off a torn record at the end of the WAL (a crash interrupted its write)"
                );
                report.torn_tail = Some(TornTail {
                    path: meta.path.clone(),
                    offset,
                    discarded_bytes,
                    reason,
                });
                active_size_bytes = offset;
            }
        }

        let last = &segments[last_index];
        let mut active = fs
            .open_append(&last.path)
            .map_err(StorageError::io("open active segment", &last.path))?;
        // `durable_lsn` below counts every record read above as durable, but
        // after a process restart (not a power loss) what we read may exist
        // only in the page cache: records written but never fsync'd (a killed
        // writer, a failed fsync), and the name of a segment renamed just
        // before the kill, before its directory fsync. Make both durable
        // before claiming so. Sealed segments need nothing: each was fsync'd
        // before its successor was created.
        active
            .sync_data()
            .map_err(StorageError::io("fsync active segment", &last.path))?;
        fs.sync_dir(dir)
            .map_err(StorageError::io("fsync WAL directory", dir))?;
        info!(
            dir = %dir.display(), segments = segments.len(), first_lsn = segments[0].first_lsn,
            last_lsn = next_lsn - 1, "opened WAL"
        );
        let wal = Wal {
            fs,
            dir: dir.to_path_buf(),
            options,
            segments,
            active,
            active_size_bytes,
            buffer: Vec::new(),
            next_lsn,
            durable_lsn: next_lsn - 1,
            poisoned: None,
            stats: Arc::default(),
        };
        Ok((wal, report))
    }

    /// A new, empty log whose first record will be LSN 1.
    fn create_new(fs: FsRef, dir: &Path, options: WalOptions) -> Result<Wal> {
        let path = dir.join(segment_file_name(1));
        let active = write_new_segment(&fs, dir, &path, 1)?;
        info!(dir = %dir.display(), "created WAL");
        Ok(Wal {
            fs,
            dir: dir.to_path_buf(),
            options,
            segments: vec![SegmentMeta { first_lsn: 1, path }],
            active,
            active_size_bytes: SEGMENT_HEADER_LEN as u64,
            buffer: Vec::new(),
            next_lsn: 1,
            durable_lsn: 0,
            poisoned: None,
            stats: Arc::default(),
        })
    }

    /// Buffers one record and returns its LSN. The record is durable only
    /// after a later [`Wal::sync`] returns `Ok`.
    pub fn append(&mut self, payload: &[u8]) -> Result<Lsn> {
        self.check_poisoned()?;
        if payload.len() > self.options.record_size_bytes_max as usize {
            return Err(StorageError::RecordTooLarge {
                size_bytes: payload.len() as u64,
                max_bytes: u64::from(self.options.record_size_bytes_max),
            });
        }
        let frame_bytes = (FRAME_HEADER_LEN + payload.len()) as u64;
        let has_records = self.active_size_bytes > SEGMENT_HEADER_LEN as u64;
        if has_records && self.active_size_bytes + frame_bytes > self.options.segment_size_bytes_max
        {
            self.roll()?;
        }
        let lsn = self.next_lsn;
        encode_frame(lsn, payload, &mut self.buffer);
        self.next_lsn += 1;
        self.active_size_bytes += frame_bytes;
        if self.buffer.len() >= self.options.write_buffer_bytes_max {
            self.write_buffer()?;
        }
        Ok(lsn)
    }

    /// Makes every record appended so far durable with one write and one
    /// fdatasync, and returns the highest durable LSN (0 if the log is empty).
    pub fn sync(&mut self) -> Result<Lsn> {
        self.check_poisoned()?;
        if self.durable_lsn + 1 == self.next_lsn {
            return Ok(self.durable_lsn);
        }
        self.write_buffer()?;
        self.sync_active("fsync segment")?;
        Ok(self.durable_lsn)
    }

    /// fdatasyncs the active segment; everything appended is then durable.
    fn sync_active(&mut self, op: &'static str) -> Result<()> {
        let started = Instant::now();
        let result = self.active.sync_data();
        self.poison_on_error(result, op)?;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.stats
            .record_fsync(micros, self.next_lsn - 1 - self.durable_lsn);
        self.durable_lsn = self.next_lsn - 1;
        Ok(())
    }

    /// Counters of the write path; the handle stays valid while the `Wal`
    /// moves between threads.
    pub fn stats(&self) -> Arc<WalStats> {
        Arc::clone(&self.stats)
    }

    /// Deletes every whole segment all of whose records have LSNs below
    /// `lsn`, oldest first, then fsyncs the directory. The active segment is
    /// never deleted. Returns how many segments were removed.
    ///
    /// # Correctness
    ///
    /// The caller must have made durable, elsewhere, everything those records
    /// carried (a snapshot or a flushed state machine at or above `lsn - 1`).
    /// Deleting oldest first keeps the remaining segments contiguous if a
    /// crash interrupts the deletions.
    pub fn compact_below(&mut self, lsn: Lsn) -> Result<usize> {
        self.check_poisoned()?;
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[1].first_lsn <= lsn {
            let path = self.segments[0].path.clone();
            self.fs
                .remove_file(&path)
                .map_err(StorageError::io("remove compacted segment", &path))?;
            self.segments.remove(0);
            removed += 1;
        }
        if removed > 0 {
            self.fs
                .sync_dir(&self.dir)
                .map_err(StorageError::io("fsync WAL directory", &self.dir))?;
            info!(removed, first_lsn = self.first_lsn(), "compacted WAL");
        }
        Ok(removed)
    }

    /// LSN of the oldest record still in the log (after compaction), or the
    /// LSN the next record will get if the log holds none.
    pub fn first_lsn(&self) -> Lsn {
        self.segments.first().map_or(self.next_lsn, |s| s.first_lsn)
    }

    /// LSN the next appended record gets.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// Highest LSN known durable (0 if none).
    pub fn durable_lsn(&self) -> Lsn {
        self.durable_lsn
    }

    /// Number of segment files, the active one included.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The WAL directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the records from `from` (inclusive) to the last appended one, in
    /// order. Buffered records are written to the file first (not fsync'd).
    pub fn read_from(&mut self, from: Lsn) -> Result<Vec<WalRecord>> {
        self.check_poisoned()?;
        self.write_buffer()?;
        let reader = WalReader::open(
            self.fs.clone(),
            &self.dir,
            self.options.record_size_bytes_max,
        )?;
        reader.read_from(from)
    }

    fn check_poisoned(&self) -> Result<()> {
        match &self.poisoned {
            Some(cause) => Err(StorageError::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// The error every caller sees once the WAL is poisoned.
    pub(crate) fn poison_error(&self) -> StorageError {
        StorageError::Poisoned {
            cause: self
                .poisoned
                .clone()
                .unwrap_or_else(|| "unknown failure".to_string()),
        }
    }

    fn poison_on_error<T>(&mut self, result: std::io::Result<T>, op: &'static str) -> Result<T> {
        result.map_err(|source| {
            let path = self
                .segments
                .last()
                .map(|s| s.path.clone())
                .unwrap_or_default();
            let error = StorageError::Io { op, path, source };
            warn!(%error, "WAL write failed; refusing all further writes until restart");
            self.poisoned = Some(error.to_string());
            error
        })
    }

    fn write_buffer(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let result = self.active.write_all(&self.buffer);
        self.poison_on_error(result, "write segment")?;
        self.stats
            .bytes_written
            .fetch_add(self.buffer.len() as u64, Ordering::Relaxed);
        self.buffer.clear();
        Ok(())
    }

    /// Seals the active segment (everything in it durable) and starts the next.
    fn roll(&mut self) -> Result<()> {
        self.write_buffer()?;
        self.sync_active("fsync sealed segment")?;
        self.create_segment(self.next_lsn)
    }

    /// Creates the segment starting at `first_lsn` and makes it the active one.
    fn create_segment(&mut self, first_lsn: Lsn) -> Result<()> {
        let path = self.dir.join(segment_file_name(first_lsn));
        let active = match write_new_segment(&self.fs, &self.dir, &path, first_lsn) {
            Ok(file) => file,
            Err(error) => {
                self.poisoned = Some(error.to_string());
                return Err(error);
            }
        };
        self.active = active;
        self.active_size_bytes = SEGMENT_HEADER_LEN as u64;
        self.segments.push(SegmentMeta { first_lsn, path });
        Ok(())
    }
}

/// Writes a segment header under a temporary name, fsyncs it, renames it into
/// place and fsyncs the directory, so a segment file that exists always has a
/// complete header.
fn write_new_segment(
    fs: &FsRef,
    dir: &Path,
    path: &Path,
    first_lsn: Lsn,
) -> Result<Box<dyn FsFile>> {
    let tmp_path = &dir.join(format!("{first_lsn:020}{SEGMENT_TMP_SUFFIX}"));
    let mut file = fs
        .create(tmp_path)
        .map_err(StorageError::io("create segment", tmp_path))?;
    file.write_all(&encode_segment_header(first_lsn))
        .map_err(StorageError::io("write segment header", tmp_path))?;
    file.sync_data()
        .map_err(StorageError::io("fsync new segment", tmp_path))?;
    fs.rename(tmp_path, path)
        .map_err(StorageError::io("rename new segment", path))?;
    fs.sync_dir(dir)
        .map_err(StorageError::io("fsync WAL directory", dir))?;
    Ok(file)
}
