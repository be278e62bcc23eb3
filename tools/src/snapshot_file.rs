//! The `kvctl snapshot` file: a self-verifying copy of a cluster's data
//! (keys and values, shard by shard), written by `snapshot export`, checked
//! by `snapshot verify`, loaded by `snapshot import`.
//!
//! ```text
//!   header   magic "KVSNAPv1" | version u32 | flags u32 | configuration u64
//!            | created_ms u64 | header crc32 u32                  (36 bytes)
//!   records  len u32 | crc32(len ++ payload) u32 | payload[len]    (each)
//!            payload: bincode 1.3.3 of an Entry: ShardBegin, Item..., ShardEnd
//!   trailer  0xFFFF_FFFF u32 | record count u64 | file crc32 u32   (16 bytes)
//! ```
//!
//! Every integer is little-endian; the byte layout is documented in
//! `docs/disk-format.md` ("kvctl snapshot files"). The file crc32 covers
//! every byte before it, so a damaged byte anywhere is caught by the header
//! crc, a record crc or the file crc, and the error names its byte offset.
//!
//! [`SnapshotFileWriter`] streams records to a temporary file next to the
//! target and, on [`finish`](SnapshotFileWriter::finish), fsyncs it, renames
//! it into place and fsyncs the directory (the protocol of
//! `storage::snapshot`, through the same [`storage::Fs`] interface), so a
//! file under its final name is always complete. [`SnapshotFileReader`]
//! streams them back, checking every frame and the file's structure as it
//! goes (no shard id twice, no two shard ranges overlapping, so no key is
//! in a file twice; items in order inside their shard's range); neither ever holds more than one record in memory, and a record
//! length above [`RECORD_BYTES_MAX`] is refused before anything is
//! allocated for it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bincode::Options;
use serde::{Deserialize, Serialize};
use storage::{FsFile, FsRef};

use crate::client::lossy;

/// First 8 bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"KVSNAPv1";

/// The format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Bytes of the header.
pub const HEADER_BYTES: usize = 36;

/// Bytes before each record's payload: its length and crc32.
pub const FRAME_HEADER_BYTES: usize = 8;

/// Bytes of the trailer.
pub const TRAILER_BYTES: usize = 16;

/// The value of a record's length field that starts the trailer instead.
pub const TRAILER_MARK: u32 = u32::MAX;

/// Longest record payload accepted: an item of the largest key and value a
/// group accepts (`shardkv::limits`) fits with room to spare.
pub const RECORD_BYTES_MAX: u32 = 16 << 20;

/// Bytes the writer gathers before writing them to the file.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The configuration the export was planned from (each shard's image
    /// may come from this one or a later one).
    pub num: u64,
    /// When the export started, in milliseconds since the Unix epoch.
    pub created_ms: u64,
}

/// One record's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// The items up to the next [`Entry::ShardEnd`] are shard `id`'s, all
    /// in `[start, end)`, in strictly increasing key order.
    ShardBegin {
        /// The shard's id.
        id: u64,
        /// Its first key (inclusive).
        start: Vec<u8>,
        /// Its end (exclusive; `None`: the end of the key space).
        end: Option<Vec<u8>>,
    },
    /// One key and its value.
    Item {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// The end of the current shard, with what it held.
    ShardEnd {
        /// Items in the shard.
        items: u64,
        /// Key and value bytes in the shard.
        bytes: u64,
    },
}

/// What a whole file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    /// The configuration in the header.
    pub num: u64,
    /// Creation time from the header (ms since the Unix epoch).
    pub created_ms: u64,
    /// Shards.
    pub shards: u64,
    /// Items.
    pub items: u64,
    /// Key and value bytes of the items.
    pub bytes: u64,
    /// Records (shard begins and ends included).
    pub records: u64,
    /// The file's length.
    pub file_bytes: u64,
}

/// Why a snapshot file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    /// The filesystem failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is not a complete, intact snapshot file.
    #[error("{} is damaged at byte offset {offset}: {what}", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// Where the damage was found (the start of the field or record).
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// The writer was asked for something the format cannot hold (a
    /// caller's bug or an oversized item); nothing was written for it.
    #[error("cannot write {}: {what}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What was refused.
        what: String,
    },
}

impl SnapshotFileError {
    /// The byte offset of the damage, if the file is damaged.
    pub fn offset(&self) -> Option<u64> {
        match self {
            SnapshotFileError::Damaged { offset, .. } => Some(*offset),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, SnapshotFileError>;

/// The error for an I/O failure while doing `action` on `path`, for
/// `map_err`. Borrows `path` (not the reader or writer holding it), so it
/// can be used while another field of theirs is borrowed mutably.
fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> SnapshotFileError + 'a {
    move |source| SnapshotFileError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before
/// it): what [`Header::created_ms`] holds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The bincode dialect of record payloads: fixed-width little-endian
/// integers, no trailing bytes, and (reading) no more bytes than the
/// payload holds.
fn payload_options(limit_bytes: u64) -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .reject_trailing_bytes()
        .with_limit(limit_bytes)
}

fn encode_header(header: &Header) -> [u8; HEADER_BYTES] {
    let mut bytes = [0u8; HEADER_BYTES];
    bytes[..8].copy_from_slice(&MAGIC);
    bytes[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    // 12..16: flags, none defined.
    bytes[16..24].copy_from_slice(&header.num.to_le_bytes());
    bytes[24..32].copy_from_slice(&header.created_ms.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..32]);
    bytes[32..36].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn frame_crc(len: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

fn len_u64(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}

/// Where a shard began in a file being written: [`SnapshotFileWriter::rewind`]
/// cuts the file back to it.
#[derive(Debug, Clone)]
pub struct ShardMark {
    offset: u64,
    hasher: crc32fast::Hasher,
    records: u64,
    totals: Summary,
    /// Shards the file held before this one.
    shards_before: usize,
}

/// The shard being written or read: the rules for its items, and what
/// they added up to.
#[derive(Debug)]
struct OpenShard {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    last_key: Option<Vec<u8>>,
    items: u64,
    bytes: u64,
}

impl OpenShard {
    fn new(start: &[u8], end: Option<&[u8]>) -> OpenShard {
        OpenShard {
            start: start.to_vec(),
            end: end.map(<[u8]>::to_vec),
            last_key: None,
            items: 0,
            bytes: 0,
        }
    }

    /// Whether `key` may come next: inside the shard's range and above
    /// the previous item's key (so no key appears twice in a shard).
    fn admits(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice()
            && self.end.as_deref().is_none_or(|end| key < end)
            && self.last_key.as_deref().is_none_or(|last| key > last)
    }

    /// Counts an item [`admits`](Self::admits) accepted; its key and value
    /// bytes.
    fn add(&mut self, key: &[u8], value: &[u8]) -> u64 {
        debug_assert!(self.admits(key), "an item the shard does not admit");
        let bytes = len_u64(key.len()).saturating_add(len_u64(value.len()));
        self.last_key = Some(key.to_vec());
        self.items += 1;
        self.bytes = self.bytes.saturating_add(bytes);
        bytes
    }
}

/// `["start", "end")` for messages (`end` when the range is open).
fn range_text(start: &[u8], end: Option<&[u8]>) -> String {
    match end {
        Some(end) => format!("[{:?}, {:?})", lossy(start), lossy(end)),
        None => format!("[{:?}, end)", lossy(start)),
    }
}

/// The shards of a file so far. Each id may appear once and no two ranges
/// may overlap: otherwise a key could be in the file twice, and the
/// concurrent import would put its values in no fixed order.
#[derive(Debug, Default)]
struct ShardRanges {
    /// Each shard's end and id, by its first key.
    by_start: BTreeMap<Vec<u8>, (Option<Vec<u8>>, u64)>,
    ids: BTreeSet<u64>,
    /// Id and first key of each shard in file order, so the writer's
    /// rewind can drop the latest.
    order: Vec<(u64, Vec<u8>)>,
}

impl ShardRanges {
    /// Adds shard `id` covering `[start, end)` (not empty); why not if its
    /// id was seen or its range overlaps another shard's.
    fn insert(
        &mut self,
        id: u64,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> std::result::Result<(), String> {
        if self.ids.contains(&id) {
            return Err(format!("shard {id} appears twice"));
        }
        let overlapping = |other_start: &[u8], other_end: Option<&[u8]>, other_id: u64| {
            format!(
                "shard {id} {} overlaps shard {other_id} {}",
                range_text(start, end),
                range_text(other_start, other_end)
            )
        };
        // The shard starting at or before `start` overlaps unless it ends
        // by `start`; the first one starting after it, unless it starts at
        // or after `end`. Ranges are never empty, so no other can overlap.
        if let Some((before_start, (before_end, before_id))) = self
            .by_start
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(start)))
            .next_back()
        {
            if before_end
                .as_deref()
                .is_none_or(|before_end| before_end > start)
            {
                return Err(overlapping(before_start, before_end.as_deref(), *before_id));
            }
        }
        if let Some((after_start, (after_end, after_id))) = self
            .by_start
            .range::<[u8], _>((Bound::Excluded(start), Bound::Unbounded))
            .next()
        {
            if end.is_none_or(|end| after_start.as_slice() < end) {
                return Err(overlapping(after_start, after_end.as_deref(), *after_id));
            }
        }
        self.by_start
            .insert(start.to_vec(), (end.map(<[u8]>::to_vec), id));
        self.ids.insert(id);
        self.order.push((id, start.to_vec()));
        Ok(())
    }

    fn len(&self) -> usize {
        self.order.len()
    }

    /// Forgets every shard but the first `len`.
    fn truncate(&mut self, len: usize) {
        for (id, start) in self.order.drain(len.min(self.order.len())..) {
            self.by_start.remove(&start);
            self.ids.remove(&id);
        }
    }
}

/// Writes a snapshot file. See the [module docs](self).
#[derive(Debug)]
pub struct SnapshotFileWriter {
    fs: FsRef,
    file: Option<Box<dyn FsFile>>,
    tmp_path: PathBuf,
    path: PathBuf,
    buffer: Vec<u8>,
    /// Bytes written so far, buffered ones included.
    offset: u64,
    hasher: crc32fast::Hasher,
    records: u64,
    shard: Option<OpenShard>,
    ranges: ShardRanges,
    totals: Summary,
    /// What [`Drop`] removes: the temporary file until `finish` succeeds
    /// (`None` from then on), so no error path can leave a file behind.
    remove_on_drop: Option<PathBuf>,
}

impl SnapshotFileWriter {
    /// Starts writing `path` (through a temporary file beside it, which
    /// replaces `path` only at [`finish`](Self::finish)) with `header`.
    ///
    /// # Errors
    ///
    /// The temporary file cannot be created or written.
    pub fn create(fs: FsRef, path: &Path, header: Header) -> Result<SnapshotFileWriter> {
        let name = path.file_name().ok_or_else(|| SnapshotFileError::Invalid {
            path: path.to_path_buf(),
            what: "the path names no file".to_string(),
        })?;
        let mut tmp_name = name.to_os_string();
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp_path = path.with_file_name(tmp_name);
        let file = fs
            .create(&tmp_path)
            .map_err(io_error("creating", &tmp_path))?;
        let mut writer = SnapshotFileWriter {
            fs,
            file: Some(file),
            remove_on_drop: Some(tmp_path.clone()),
            tmp_path,
            path: path.to_path_buf(),
            buffer: Vec::with_capacity(WRITE_BUFFER_BYTES),
            offset: 0,
            hasher: crc32fast::Hasher::new(),
            records: 0,
            shard: None,
            ranges: ShardRanges::default(),
            totals: Summary {
                num: header.num,
                created_ms: header.created_ms,
                ..Summary::default()
            },
        };
        writer.put(&encode_header(&header))?;
        Ok(writer)
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What has been written so far.
    pub fn summary(&self) -> Summary {
        Summary {
            records: self.records,
            file_bytes: self.offset,
            ..self.totals
        }
    }

    fn invalid<T>(&self, what: impl Into<String>) -> Result<T> {
        Err(SnapshotFileError::Invalid {
            path: self.path.clone(),
            what: what.into(),
        })
    }

    /// Appends `bytes` to the file (through the buffer) and the file crc.
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.buffer.extend_from_slice(bytes);
        self.offset += len_u64(bytes.len());
        if self.buffer.len() >= WRITE_BUFFER_BYTES {
            self.flush_buffer()?;
        }
        Ok(())
    }

    fn flush_buffer(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let Some(file) = self.file.as_mut() else {
            return self.invalid("the file was already finished");
        };
        file.write_all(&self.buffer)
            .map_err(io_error("writing", &self.tmp_path))?;
        self.buffer.clear();
        Ok(())
    }

    fn record(&mut self, entry: &Entry) -> Result<()> {
        let payload = match payload_options(u64::MAX).serialize(entry) {
            Ok(payload) => payload,
            Err(err) => return self.invalid(format!("encoding a record: {err}")),
        };
        let len = match u32::try_from(payload.len()) {
            Ok(len) if len <= RECORD_BYTES_MAX => len,
            _ => {
                return self.invalid(format!(
                    "a record of {} bytes is longer than the format's {RECORD_BYTES_MAX}",
                    payload.len()
                ))
            }
        };
        self.put(&len.to_le_bytes())?;
        self.put(&frame_crc(len, &payload).to_le_bytes())?;
        self.put(&payload)?;
        self.records += 1;
        Ok(())
    }

    /// Starts shard `id` covering `[start, end)`; the returned mark can
    /// [`rewind`](Self::rewind) the file to before it.
    ///
    /// # Errors
    ///
    /// A shard is already open, its range is empty, its id was written
    /// already or its range overlaps a written shard's (all of which the
    /// reader calls damage), or writing failed.
    pub fn begin_shard(&mut self, id: u64, start: &[u8], end: Option<&[u8]>) -> Result<ShardMark> {
        if self.shard.is_some() {
            return self.invalid("a shard begins before the previous one ended");
        }
        if end.is_some_and(|end| end <= start) {
            return self.invalid(format!("shard {id} has an empty range"));
        }
        let mark = ShardMark {
            offset: self.offset,
            hasher: self.hasher.clone(),
            records: self.records,
            totals: self.totals,
            shards_before: self.ranges.len(),
        };
        if let Err(what) = self.ranges.insert(id, start, end) {
            return self.invalid(what);
        }
        if let Err(err) = self.record(&Entry::ShardBegin {
            id,
            start: start.to_vec(),
            end: end.map(<[u8]>::to_vec),
        }) {
            self.ranges.truncate(mark.shards_before);
            return Err(err);
        }
        self.shard = Some(OpenShard::new(start, end));
        Ok(mark)
    }

    /// Appends one item of the open shard; keys must rise strictly and lie
    /// in the shard's range.
    ///
    /// # Errors
    ///
    /// No shard is open, the key is out of order or range, the item is
    /// too large for a record, or writing failed.
    pub fn item(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let Some(shard) = &self.shard else {
            return self.invalid("an item outside a shard");
        };
        if !shard.admits(key) {
            return self.invalid(format!(
                "key {:?} is out of order or outside its shard",
                lossy(key)
            ));
        }
        self.record(&Entry::Item {
            key: key.to_vec(),
            value: value.to_vec(),
        })?;
        if let Some(shard) = self.shard.as_mut() {
            let bytes = shard.add(key, value);
            self.totals.items += 1;
            self.totals.bytes = self.totals.bytes.saturating_add(bytes);
        }
        Ok(())
    }

    /// Ends the open shard.
    ///
    /// # Errors
    ///
    /// No shard is open, or writing failed.
    pub fn end_shard(&mut self) -> Result<()> {
        let Some(shard) = self.shard.take() else {
            return self.invalid("a shard end without a shard");
        };
        self.record(&Entry::ShardEnd {
            items: shard.items,
            bytes: shard.bytes,
        })?;
        self.totals.shards += 1;
        Ok(())
    }

    /// Cuts the file back to `mark` (taken by [`begin_shard`](Self::begin_shard)
    /// of this writer), dropping that shard and everything after it.
    ///
    /// # Errors
    ///
    /// Writing or truncating failed.
    pub fn rewind(&mut self, mark: ShardMark) -> Result<()> {
        self.flush_buffer()?;
        let Some(file) = self.file.as_mut() else {
            return self.invalid("the file was already finished");
        };
        file.truncate(mark.offset)
            .map_err(io_error("truncating", &self.tmp_path))?;
        self.offset = mark.offset;
        self.hasher = mark.hasher;
        self.records = mark.records;
        self.totals = mark.totals;
        self.ranges.truncate(mark.shards_before);
        self.shard = None;
        Ok(())
    }

    /// Writes the trailer, fsyncs the file, renames it to its final path
    /// and fsyncs the directory. The summary of what it holds.
    ///
    /// # Errors
    ///
    /// A shard is still open, or a write, fsync, rename or the directory's
    /// fsync failed. The file is then removed: the temporary one, or, if
    /// only the directory's fsync failed, the renamed one (its name might
    /// not survive a crash), so an error always means no file was written.
    pub fn finish(mut self) -> Result<Summary> {
        if self.shard.is_some() {
            return self.invalid("the last shard was not ended");
        }
        self.put(&TRAILER_MARK.to_le_bytes())?;
        self.put(&self.records.to_le_bytes())?;
        let crc = self.hasher.clone().finalize();
        self.buffer.extend_from_slice(&crc.to_le_bytes());
        self.offset += 4;
        self.flush_buffer()?;
        let summary = self.summary();
        // Every error below returns through `Drop`, which removes whatever
        // `remove_on_drop` names.
        let Some(mut file) = self.file.take() else {
            return self.invalid("the file was already finished");
        };
        let synced = file
            .sync_data()
            .map_err(io_error("fsyncing", &self.tmp_path));
        drop(file);
        synced?;
        self.fs
            .rename(&self.tmp_path, &self.path)
            .map_err(io_error("renaming into place", &self.tmp_path))?;
        self.remove_on_drop = Some(self.path.clone());
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        self.fs
            .sync_dir(&dir)
            .map_err(io_error("fsyncing the directory of", &self.path))?;
        self.remove_on_drop = None;
        Ok(summary)
    }
}

impl Drop for SnapshotFileWriter {
    /// An unfinished file is removed: only a complete file ever exists
    /// under the target name, and no temporary one is left behind.
    fn drop(&mut self) {
        // Closed first: the file is removed by name.
        drop(self.file.take());
        if let Some(path) = self.remove_on_drop.take() {
            // Best effort: there is no one left to tell of a failure.
            let _ = self.fs.remove_file(&path);
        }
    }
}

/// Reads a snapshot file, checking it as it goes. See the
/// [module docs](self).
#[derive(Debug)]
pub struct SnapshotFileReader<R: Read> {
    input: R,
    path: PathBuf,
    header: Header,
    offset: u64,
    hasher: crc32fast::Hasher,
    records: u64,
    shard: Option<OpenShard>,
    ranges: ShardRanges,
    totals: Summary,
    done: bool,
}

impl SnapshotFileReader<BufReader<File>> {
    /// Opens `path` and checks its header.
    ///
    /// # Errors
    ///
    /// The file cannot be opened or its header is damaged.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(io_error("opening", path))?;
        SnapshotFileReader::new(BufReader::with_capacity(1 << 16, file), path)
    }
}

/// Reads until `buf` is full or the input ends; how many bytes were read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

impl<R: Read> SnapshotFileReader<R> {
    /// Reads the header from `input`; `path` names the file in errors.
    ///
    /// # Errors
    ///
    /// Reading failed, or the header is not a valid version-1 header.
    pub fn new(mut input: R, path: &Path) -> Result<Self> {
        let mut bytes = [0u8; HEADER_BYTES];
        let filled = read_full(&mut input, &mut bytes).map_err(io_error("reading", path))?;
        let damaged = |offset: u64, what: String| SnapshotFileError::Damaged {
            path: path.to_path_buf(),
            offset,
            what,
        };
        if bytes[..filled.min(8)] != MAGIC[..filled.min(8)] {
            return Err(damaged(
                0,
                "not a kvctl snapshot file (wrong magic bytes)".to_string(),
            ));
        }
        if filled < HEADER_BYTES {
            return Err(damaged(
                len_u64(filled),
                format!("the file ends inside its {HEADER_BYTES}-byte header (truncated)"),
            ));
        }
        let crc = le_u32(&bytes, 32);
        if crc32fast::hash(&bytes[..32]) != crc {
            return Err(damaged(
                0,
                "header checksum mismatch (the header is corrupt)".to_string(),
            ));
        }
        let version = le_u32(&bytes, 8);
        if version != FORMAT_VERSION {
            return Err(damaged(
                8,
                format!(
                    "format version {version} is not supported (this kvctl reads version \
                     {FORMAT_VERSION}); use a matching kvctl"
                ),
            ));
        }
        let flags = le_u32(&bytes, 12);
        if flags != 0 {
            return Err(damaged(
                12,
                format!("unknown header flags {flags:#x}; use a matching kvctl"),
            ));
        }
        let header = Header {
            num: le_u64(&bytes, 16),
            created_ms: le_u64(&bytes, 24),
        };
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&bytes);
        Ok(SnapshotFileReader {
            input,
            path: path.to_path_buf(),
            header,
            offset: len_u64(HEADER_BYTES),
            hasher,
            records: 0,
            shard: None,
            ranges: ShardRanges::default(),
            totals: Summary {
                num: header.num,
                created_ms: header.created_ms,
                ..Summary::default()
            },
            done: false,
        })
    }

    /// The header.
    pub fn header(&self) -> Header {
        self.header
    }

    /// What has been read so far (all of the file once
    /// [`next_entry`](Self::next_entry) returned `None`).
    pub fn summary(&self) -> Summary {
        Summary {
            records: self.records,
            file_bytes: self.offset,
            ..self.totals
        }
    }

    fn damaged<T>(&self, offset: u64, what: impl Into<String>) -> Result<T> {
        Err(SnapshotFileError::Damaged {
            path: self.path.clone(),
            offset,
            what: what.into(),
        })
    }

    /// [`read_full`] from the input, with errors naming the file.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize> {
        read_full(&mut self.input, buf).map_err(io_error("reading", &self.path))
    }

    /// Fills `buf` from the input, hashing it; `what` names the part for
    /// the truncation message.
    fn read_exact(&mut self, buf: &mut [u8], at: u64, what: &str) -> Result<()> {
        let filled = self.read_full(buf)?;
        self.hasher.update(&buf[..filled]);
        self.offset += len_u64(filled);
        if filled < buf.len() {
            return self.damaged(
                at,
                format!(
                    "the file ends {} bytes into {what} of {} bytes (truncated)",
                    filled,
                    buf.len()
                ),
            );
        }
        Ok(())
    }

    /// The next record, checked; `None` once the trailer has been read and
    /// checked (the whole file is then intact).
    ///
    /// # Errors
    ///
    /// Reading failed, or the file is damaged here (the error names the
    /// byte offset).
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.done {
            return Ok(None);
        }
        let at = self.offset;
        let mut frame = [0u8; FRAME_HEADER_BYTES];
        let filled = self.read_full(&mut frame[..4])?;
        if filled == 0 {
            return self.damaged(at, "the file ends without its trailer (truncated)");
        }
        self.hasher.update(&frame[..filled]);
        self.offset += len_u64(filled);
        if filled < 4 {
            return self.damaged(at, "the file ends inside a record header (truncated)");
        }
        let len = le_u32(&frame, 0);
        if len == TRAILER_MARK {
            self.read_trailer(at)?;
            return Ok(None);
        }
        if len > RECORD_BYTES_MAX {
            return self.damaged(
                at,
                format!("record length {len} is above the format's limit of {RECORD_BYTES_MAX}"),
            );
        }
        self.read_exact(&mut frame[4..], at, "a record header")?;
        let crc = le_u32(&frame, 4);
        // Read through `take`, so the buffer grows with the bytes that are
        // really there, never to a length a damaged field claims.
        let mut payload = Vec::new();
        (&mut self.input)
            .take(u64::from(len))
            .read_to_end(&mut payload)
            .map_err(io_error("reading", &self.path))?;
        self.hasher.update(&payload);
        self.offset += len_u64(payload.len());
        if payload.len() < len as usize {
            return self.damaged(
                at,
                format!(
                    "the file ends {} bytes into a record of {len} bytes (truncated)",
                    payload.len()
                ),
            );
        }
        if frame_crc(len, &payload) != crc {
            return self.damaged(
                at,
                format!("record checksum mismatch (record of {len} bytes)"),
            );
        }
        let entry: Entry = match payload_options(u64::from(len)).deserialize(&payload) {
            Ok(entry) => entry,
            Err(err) => return self.damaged(at, format!("record does not decode: {err}")),
        };
        self.records += 1;
        self.check_structure(at, &entry)?;
        Ok(Some(entry))
    }

    /// Checks that `entry` may come here: items inside a shard, in order
    /// and in range; shard ends that match what came before.
    fn check_structure(&mut self, at: u64, entry: &Entry) -> Result<()> {
        match entry {
            Entry::ShardBegin { id, start, end } => {
                if self.shard.is_some() {
                    return self.damaged(at, "a shard begins before the previous one ended");
                }
                if end.as_ref().is_some_and(|end| end <= start) {
                    return self.damaged(at, format!("shard {id} has an empty range"));
                }
                if let Err(what) = self.ranges.insert(*id, start, end.as_deref()) {
                    return self.damaged(at, what);
                }
                self.shard = Some(OpenShard::new(start, end.as_deref()));
            }
            Entry::Item { key, value } => {
                let Some(shard) = self.shard.as_mut() else {
                    return self.damaged(at, "an item outside any shard");
                };
                if !shard.admits(key) {
                    return self.damaged(at, "an item out of key order or outside its shard");
                }
                let bytes = shard.add(key, value);
                self.totals.items += 1;
                self.totals.bytes = self.totals.bytes.saturating_add(bytes);
            }
            Entry::ShardEnd { items, bytes } => {
                let Some(shard) = self.shard.take() else {
                    return self.damaged(at, "a shard end without a shard");
                };
                if (shard.items, shard.bytes) != (*items, *bytes) {
                    return self.damaged(
                        at,
                        format!(
                            "the shard end says {items} items ({bytes} bytes) but the shard \
                             held {} ({} bytes)",
                            shard.items, shard.bytes
                        ),
                    );
                }
                self.totals.shards += 1;
            }
        }
        Ok(())
    }

    /// Reads and checks the trailer whose mark (already read) is at `at`.
    fn read_trailer(&mut self, at: u64) -> Result<()> {
        let mut count = [0u8; 8];
        self.read_exact(&mut count, at, "the trailer")?;
        let expected_crc = self.hasher.clone().finalize();
        let mut crc = [0u8; 4];
        let filled = self.read_full(&mut crc)?;
        self.offset += len_u64(filled);
        if filled < crc.len() {
            return self.damaged(at, "the file ends inside its trailer (truncated)");
        }
        if u32::from_le_bytes(crc) != expected_crc {
            return self.damaged(
                at + 12,
                "whole-file checksum mismatch (a byte before it is corrupt)",
            );
        }
        let count = u64::from_le_bytes(count);
        if count != self.records {
            return self.damaged(
                at + 4,
                format!(
                    "the trailer counts {count} records but the file holds {}",
                    self.records
                ),
            );
        }
        if self.shard.is_some() {
            return self.damaged(at, "the file ends inside a shard");
        }
        let mut extra = [0u8; 1];
        let filled = self.read_full(&mut extra)?;
        if filled > 0 {
            return self.damaged(self.offset, "bytes follow the trailer");
        }
        self.done = true;
        Ok(())
    }
}

/// Checks all of `path`: header, every record, the structure, the trailer
/// and the whole-file checksum. What it holds.
///
/// # Errors
///
/// The file cannot be read, or is damaged (the error names the byte
/// offset).
pub fn verify(path: &Path) -> Result<Summary> {
    let mut reader = SnapshotFileReader::open(path)?;
    while reader.next_entry()?.is_some() {}
    Ok(reader.summary())
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::RealFs;

    fn sample(dir: &Path) -> (PathBuf, Vec<Entry>) {
        let path = dir.join("data.kvs");
        let mut writer = SnapshotFileWriter::create(
            RealFs::shared(),
            &path,
            Header {
                num: 7,
                created_ms: 1_700_000_000_000,
            },
        )
        .unwrap();
        let mut entries = Vec::new();
        writer.begin_shard(0, b"", Some(b"m")).unwrap();
        entries.push(Entry::ShardBegin {
            id: 0,
            start: Vec::new(),
            end: Some(b"m".to_vec()),
        });
        for (key, value) in [("a", "1"), ("b", "22")] {
            writer.item(key.as_bytes(), value.as_bytes()).unwrap();
            entries.push(Entry::Item {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
            });
        }
        writer.end_shard().unwrap();
        entries.push(Entry::ShardEnd { items: 2, bytes: 5 });
        writer.begin_shard(3, b"m", None).unwrap();
        writer.end_shard().unwrap();
        entries.push(Entry::ShardBegin {
            id: 3,
            start: b"m".to_vec(),
            end: None,
        });
        entries.push(Entry::ShardEnd { items: 0, bytes: 0 });
        let summary = writer.finish().unwrap();
        assert_eq!(summary.file_bytes, std::fs::metadata(&path).unwrap().len());
        (path, entries)
    }

    fn read_all(bytes: &[u8]) -> Result<(Vec<Entry>, Summary)> {
        let mut reader = SnapshotFileReader::new(bytes, Path::new("test.kvs"))?;
        let mut entries = Vec::new();
        while let Some(entry) = reader.next_entry()? {
            entries.push(entry);
        }
        Ok((entries, reader.summary()))
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (path, expected) = sample(dir.path());
        let mut reader = SnapshotFileReader::open(&path).unwrap();
        assert_eq!(
            reader.header(),
            Header {
                num: 7,
                created_ms: 1_700_000_000_000
            }
        );
        let mut entries = Vec::new();
        while let Some(entry) = reader.next_entry().unwrap() {
            entries.push(entry);
        }
        assert_eq!(entries, expected);
        let summary = verify(&path).unwrap();
        assert_eq!(
            (summary.num, summary.shards, summary.items, summary.bytes),
            (7, 2, 2, 5)
        );
        assert_eq!(summary.records, 6);
        // Only the final file is left: no temporary one.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("data.kvs")]);
    }

    #[test]
    fn every_single_byte_flip_is_detected_with_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = sample(dir.path());
        let good = std::fs::read(&path).unwrap();
        for at in 0..good.len() {
            for xor in [0x01u8, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[at] ^= xor;
                match read_all(&bad) {
                    Err(err @ SnapshotFileError::Damaged { offset, .. }) => {
                        assert!(
                            offset <= len_u64(good.len()),
                            "offset {offset} beyond the file: {err}"
                        );
                        assert!(err.to_string().contains("byte offset"), "{err}");
                    }
                    other => panic!("flip {xor:#x} at {at} not detected: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn truncation_at_every_offset_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = sample(dir.path());
        let good = std::fs::read(&path).unwrap();
        for len in 0..good.len() {
            match read_all(&good[..len]) {
                Err(SnapshotFileError::Damaged { offset, .. }) => {
                    assert!(
                        offset <= len_u64(len),
                        "offset {offset} beyond the cut {len}"
                    );
                }
                other => panic!("truncation at {len} not detected: {other:?}"),
            }
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(matches!(
            read_all(&longer),
            Err(SnapshotFileError::Damaged { .. })
        ));
    }

    /// Counts the bytes read through it.
    struct Counting<R> {
        inner: R,
        read: u64,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += len_u64(n);
            Ok(n)
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_reading_or_allocating() {
        let mut file = encode_header(&Header {
            num: 1,
            created_ms: 0,
        })
        .to_vec();
        file.extend_from_slice(&(RECORD_BYTES_MAX + 1).to_le_bytes());
        file.extend_from_slice(&0u32.to_le_bytes());
        // Endless zeros after it: reading the claimed length would take
        // them, and a buffer of that length would be allocated.
        let mut input = Counting {
            inner: Read::chain(&file[..], io::repeat(0)),
            read: 0,
        };
        let mut reader = SnapshotFileReader::new(&mut input, Path::new("big.kvs")).unwrap();
        match reader.next_entry() {
            Err(SnapshotFileError::Damaged { offset, what, .. }) => {
                assert_eq!(offset, len_u64(HEADER_BYTES));
                assert!(what.contains("limit"), "{what}");
            }
            other => panic!("not refused: {other:?}"),
        }
        drop(reader);
        assert_eq!(
            input.read,
            len_u64(HEADER_BYTES) + 4,
            "nothing past the length"
        );
    }

    #[test]
    fn a_claimed_length_within_the_cap_allocates_only_what_is_there() {
        // A length at the cap followed by 10 bytes: truncation, found
        // without a 16 MiB buffer (read_to_end through `take` grows with
        // the data).
        let mut file = encode_header(&Header {
            num: 1,
            created_ms: 0,
        })
        .to_vec();
        file.extend_from_slice(&RECORD_BYTES_MAX.to_le_bytes());
        file.extend_from_slice(&0u32.to_le_bytes());
        file.extend_from_slice(&[0u8; 10]);
        let err = read_all(&file).unwrap_err();
        assert_eq!(err.offset(), Some(len_u64(HEADER_BYTES)));
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn rewind_drops_a_shard_and_the_file_still_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.kvs");
        let mut writer = SnapshotFileWriter::create(
            RealFs::shared(),
            &path,
            Header {
                num: 2,
                created_ms: 5,
            },
        )
        .unwrap();
        writer.begin_shard(0, b"", Some(b"k")).unwrap();
        writer.item(b"a", b"1").unwrap();
        writer.end_shard().unwrap();
        let mark = writer.begin_shard(1, b"k", None).unwrap();
        // Enough to spill the write buffer to the file before the rewind.
        let big = vec![7u8; WRITE_BUFFER_BYTES];
        writer.item(b"k1", &big).unwrap();
        writer.item(b"k2", &big).unwrap();
        writer.rewind(mark).unwrap();
        writer.begin_shard(1, b"k", None).unwrap();
        writer.item(b"k3", b"3").unwrap();
        writer.end_shard().unwrap();
        let summary = writer.finish().unwrap();
        assert_eq!(verify(&path).unwrap(), summary);
        assert_eq!((summary.shards, summary.items, summary.bytes), (2, 2, 5));
    }

    #[test]
    fn the_writer_refuses_what_the_reader_would_call_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.kvs");
        let header = Header {
            num: 1,
            created_ms: 0,
        };
        let mut writer = SnapshotFileWriter::create(RealFs::shared(), &path, header).unwrap();
        assert!(writer.item(b"a", b"1").is_err(), "no shard open");
        writer.begin_shard(0, b"b", Some(b"d")).unwrap();
        assert!(writer.item(b"a", b"1").is_err(), "below the range");
        assert!(writer.item(b"d", b"1").is_err(), "at the end");
        writer.item(b"c", b"1").unwrap();
        assert!(writer.item(b"c", b"1").is_err(), "not increasing");
        assert!(writer.begin_shard(1, b"d", None).is_err(), "still open");
        // An unfinished writer leaves no file behind.
        drop(writer);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A file of `entries` with valid checksums and trailer, whatever its
    /// structure: what a crafted or buggy writer could produce.
    fn craft(entries: &[Entry]) -> Vec<u8> {
        let mut file = encode_header(&Header {
            num: 1,
            created_ms: 0,
        })
        .to_vec();
        for entry in entries {
            let payload = payload_options(u64::MAX).serialize(entry).unwrap();
            let len = u32::try_from(payload.len()).unwrap();
            file.extend_from_slice(&len.to_le_bytes());
            file.extend_from_slice(&frame_crc(len, &payload).to_le_bytes());
            file.extend_from_slice(&payload);
        }
        file.extend_from_slice(&TRAILER_MARK.to_le_bytes());
        file.extend_from_slice(&len_u64(entries.len()).to_le_bytes());
        let crc = crc32fast::hash(&file);
        file.extend_from_slice(&crc.to_le_bytes());
        file
    }

    /// An empty shard's two entries.
    fn shard(id: u64, start: &str, end: Option<&str>) -> [Entry; 2] {
        [
            Entry::ShardBegin {
                id,
                start: start.as_bytes().to_vec(),
                end: end.map(|end| end.as_bytes().to_vec()),
            },
            Entry::ShardEnd { items: 0, bytes: 0 },
        ]
    }

    #[test]
    fn overlapping_shard_ranges_are_damage_naming_the_offset_and_both_ids() {
        // Disjoint and touching ranges, in any order, are fine.
        let fine: Vec<Entry> = [
            shard(5, "m", None),
            shard(1, "", Some("c")),
            shard(2, "c", Some("m")),
        ]
        .concat();
        let (_, summary) = read_all(&craft(&fine)).unwrap();
        assert_eq!(summary.shards, 3);
        let cases = [
            // Same start.
            (shard(7, "a", Some("b")), shard(8, "a", Some("c"))),
            // Starts inside an earlier one.
            (shard(7, "a", Some("k")), shard(8, "c", Some("z"))),
            // Inside an open-ended earlier one.
            (shard(7, "k", None), shard(8, "x", Some("y"))),
            // An earlier one starts inside it.
            (shard(7, "k", Some("m")), shard(8, "a", Some("l"))),
            // Open-ended, over a later-starting earlier one.
            (shard(7, "k", Some("m")), shard(8, "b", None)),
            // Covers an earlier one.
            (shard(7, "k", Some("m")), shard(8, "", None)),
        ];
        for (first, second) in cases {
            let entries = [first, second].concat();
            let file = craft(&entries);
            let err = read_all(&file).unwrap_err();
            // The second shard's begin: after the header and two records.
            let records: usize = entries[..2]
                .iter()
                .map(|entry| {
                    FRAME_HEADER_BYTES + payload_options(u64::MAX).serialize(entry).unwrap().len()
                })
                .sum();
            assert_eq!(err.offset(), Some(len_u64(HEADER_BYTES + records)), "{err}");
            let text = err.to_string();
            assert!(
                text.contains("shard 8") && text.contains("shard 7") && text.contains("overlaps"),
                "{text}"
            );
        }
        // A repeated id is still named as such.
        let twice = [shard(4, "a", Some("b")), shard(4, "c", Some("d"))].concat();
        let err = read_all(&craft(&twice)).unwrap_err();
        assert!(err.to_string().contains("shard 4 appears twice"), "{err}");
    }

    #[test]
    fn the_writer_refuses_overlapping_shards_and_a_rewind_frees_a_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.kvs");
        let header = Header {
            num: 1,
            created_ms: 0,
        };
        let mut writer = SnapshotFileWriter::create(RealFs::shared(), &path, header).unwrap();
        writer.begin_shard(0, b"c", Some(b"m")).unwrap();
        writer.end_shard().unwrap();
        let err = writer.begin_shard(1, b"a", Some(b"d")).unwrap_err();
        assert!(err.to_string().contains("overlaps shard 0"), "{err}");
        assert!(writer.begin_shard(0, b"x", None).is_err(), "id 0 again");
        // A rewound shard's id and range may be written again.
        let mark = writer.begin_shard(2, b"m", None).unwrap();
        writer.item(b"n", b"1").unwrap();
        writer.rewind(mark).unwrap();
        writer.begin_shard(2, b"m", None).unwrap();
        writer.end_shard().unwrap();
        let summary = writer.finish().unwrap();
        assert_eq!(verify(&path).unwrap(), summary);
        assert_eq!((summary.shards, summary.items), (2, 0));
    }

    /// Which step of [`FailingFs`] fails.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Fail {
        SyncData,
        Rename,
        SyncDir,
    }

    /// The real filesystem, with one step of `finish` failing.
    #[derive(Debug)]
    struct FailingFs {
        fail: Fail,
    }

    fn injected() -> io::Error {
        io::Error::other("injected failure")
    }

    /// A real file whose `sync_data` fails when asked to.
    #[derive(Debug)]
    struct FailingFile {
        inner: Box<dyn FsFile>,
        fail_sync: bool,
    }

    impl Read for FailingFile {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.inner.read(buf)
        }
    }

    impl FsFile for FailingFile {
        fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
            self.inner.write_all(buf)
        }
        fn sync_data(&mut self) -> io::Result<()> {
            if self.fail_sync {
                return Err(injected());
            }
            self.inner.sync_data()
        }
        fn truncate(&mut self, len_bytes: u64) -> io::Result<()> {
            self.inner.truncate(len_bytes)
        }
        fn len_bytes(&self) -> io::Result<u64> {
            self.inner.len_bytes()
        }
    }

    impl storage::Fs for FailingFs {
        fn create_dir_all(&self, path: &Path) -> io::Result<()> {
            RealFs.create_dir_all(path)
        }
        fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
            RealFs.list_dir(path)
        }
        fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
            Ok(Box::new(FailingFile {
                inner: RealFs.create(path)?,
                fail_sync: self.fail == Fail::SyncData,
            }))
        }
        fn open_append(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
            RealFs.open_append(path)
        }
        fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
            RealFs.open_read(path)
        }
        fn remove_file(&self, path: &Path) -> io::Result<()> {
            RealFs.remove_file(path)
        }
        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            if self.fail == Fail::Rename {
                return Err(injected());
            }
            RealFs.rename(from, to)
        }
        fn sync_dir(&self, path: &Path) -> io::Result<()> {
            if self.fail == Fail::SyncDir {
                return Err(injected());
            }
            RealFs.sync_dir(path)
        }
    }

    #[test]
    fn a_failed_finish_leaves_no_file_behind() {
        for (fail, action) in [
            (Fail::SyncData, "fsyncing"),
            (Fail::Rename, "renaming into place"),
            (Fail::SyncDir, "fsyncing the directory of"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f.kvs");
            let fs: FsRef = std::sync::Arc::new(FailingFs { fail });
            let header = Header {
                num: 1,
                created_ms: 0,
            };
            let mut writer = SnapshotFileWriter::create(fs, &path, header).unwrap();
            writer.begin_shard(0, b"", None).unwrap();
            writer.item(b"a", b"1").unwrap();
            writer.end_shard().unwrap();
            match writer.finish() {
                Err(SnapshotFileError::Io {
                    action: found,
                    source,
                    ..
                }) => {
                    assert_eq!(found, action, "{fail:?}");
                    assert_eq!(source.to_string(), "injected failure");
                }
                other => panic!("{fail:?}: {other:?}"),
            }
            let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
            assert!(names.is_empty(), "{fail:?} left {names:?}");
        }
    }

    #[test]
    fn a_wrong_magic_or_version_is_named() {
        let err = read_all(b"PK\x03\x04 not a snapshot").unwrap_err();
        assert!(err.to_string().contains("not a kvctl snapshot"), "{err}");
        let mut header = encode_header(&Header {
            num: 1,
            created_ms: 0,
        });
        header[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32fast::hash(&header[..32]);
        header[32..36].copy_from_slice(&crc.to_le_bytes());
        let err = read_all(&header).unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
        assert_eq!(err.offset(), Some(8));
    }
}
