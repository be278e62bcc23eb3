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
//! goes; neither ever holds more than one record in memory, and a record
//! length above [`RECORD_BYTES_MAX`] is refused before anything is
//! allocated for it.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use bincode::Options;
use serde::{Deserialize, Serialize};
use storage::{FsFile, FsRef};

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
}

/// The shard being written.
#[derive(Debug)]
struct OpenShard {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    last_key: Option<Vec<u8>>,
    items: u64,
    bytes: u64,
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
    totals: Summary,
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
            .map_err(|source| SnapshotFileError::Io {
                action: "creating",
                path: tmp_path.clone(),
                source,
            })?;
        let mut writer = SnapshotFileWriter {
            fs,
            file: Some(file),
            tmp_path,
            path: path.to_path_buf(),
            buffer: Vec::with_capacity(WRITE_BUFFER_BYTES),
            offset: 0,
            hasher: crc32fast::Hasher::new(),
            records: 0,
            shard: None,
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

    fn io_error(&self, action: &'static str) -> impl FnOnce(io::Error) -> SnapshotFileError {
        let path = self.tmp_path.clone();
        move |source| SnapshotFileError::Io {
            action,
            path,
            source,
        }
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
        let error = self.io_error("writing");
        let Some(file) = self.file.as_mut() else {
            return self.invalid("the file was already finished");
        };
        file.write_all(&self.buffer).map_err(error)?;
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
    /// A shard is already open, or writing failed.
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
        };
        self.record(&Entry::ShardBegin {
            id,
            start: start.to_vec(),
            end: end.map(<[u8]>::to_vec),
        })?;
        self.shard = Some(OpenShard {
            start: start.to_vec(),
            end: end.map(<[u8]>::to_vec),
            last_key: None,
            items: 0,
            bytes: 0,
        });
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
        let in_range = key >= shard.start.as_slice()
            && shard.end.as_deref().is_none_or(|end| key < end)
            && shard.last_key.as_deref().is_none_or(|last| key > last);
        if !in_range {
            return self.invalid(format!(
                "key {:?} is out of order or outside its shard",
                String::from_utf8_lossy(key)
            ));
        }
        self.record(&Entry::Item {
            key: key.to_vec(),
            value: value.to_vec(),
        })?;
        let bytes = len_u64(key.len() + value.len());
        if let Some(shard) = self.shard.as_mut() {
            shard.last_key = Some(key.to_vec());
            shard.items += 1;
            shard.bytes += bytes;
        }
        self.totals.items += 1;
        self.totals.bytes += bytes;
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
        let error = self.io_error("truncating");
        let Some(file) = self.file.as_mut() else {
            return self.invalid("the file was already finished");
        };
        file.truncate(mark.offset).map_err(error)?;
        self.offset = mark.offset;
        self.hasher = mark.hasher;
        self.records = mark.records;
        self.totals = mark.totals;
        self.shard = None;
        Ok(())
    }

    /// Writes the trailer, fsyncs the file, renames it to its final path
    /// and fsyncs the directory. The summary of what it holds.
    ///
    /// # Errors
    ///
    /// A shard is still open, or a write, fsync or rename failed (the
    /// temporary file is then removed).
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
        let error = self.io_error("fsyncing");
        let Some(mut file) = self.file.take() else {
            return self.invalid("the file was already finished");
        };
        let synced = file.sync_data().map_err(error);
        drop(file);
        synced?;
        self.fs
            .rename(&self.tmp_path, &self.path)
            .map_err(self.io_error("renaming into place"))?;
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        self.fs
            .sync_dir(&dir)
            .map_err(|source| SnapshotFileError::Io {
                action: "fsyncing the directory of",
                path: self.path.clone(),
                source,
            })?;
        Ok(summary)
    }
}

impl Drop for SnapshotFileWriter {
    /// An unfinished file is removed: only a complete file ever exists
    /// under the target name, and no temporary one is left behind.
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            drop(file);
            let _ = self.fs.remove_file(&self.tmp_path);
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
    shard_ids: BTreeSet<u64>,
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
        let file = File::open(path).map_err(|source| SnapshotFileError::Io {
            action: "opening",
            path: path.to_path_buf(),
            source,
        })?;
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
        let filled = read_full(&mut input, &mut bytes).map_err(|source| SnapshotFileError::Io {
            action: "reading",
            path: path.to_path_buf(),
            source,
        })?;
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
            shard_ids: BTreeSet::new(),
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

    /// Fills `buf` from the input, hashing it; `what` names the part for
    /// the truncation message.
    fn read_exact(&mut self, buf: &mut [u8], at: u64, what: &str) -> Result<()> {
        let filled = read_full(&mut self.input, buf).map_err(|source| SnapshotFileError::Io {
            action: "reading",
            path: self.path.clone(),
            source,
        })?;
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
        let filled = read_full(&mut self.input, &mut frame[..4]).map_err(|source| {
            SnapshotFileError::Io {
                action: "reading",
                path: self.path.clone(),
                source,
            }
        })?;
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
            .map_err(|source| SnapshotFileError::Io {
                action: "reading",
                path: self.path.clone(),
                source,
            })?;
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
                if !self.shard_ids.insert(*id) {
                    return self.damaged(at, format!("shard {id} appears twice"));
                }
                self.shard = Some(OpenShard {
                    start: start.clone(),
                    end: end.clone(),
                    last_key: None,
                    items: 0,
                    bytes: 0,
                });
            }
            Entry::Item { key, value } => {
                let Some(shard) = self.shard.as_mut() else {
                    return self.damaged(at, "an item outside any shard");
                };
                let in_range = key.as_slice() >= shard.start.as_slice()
                    && shard.end.as_ref().is_none_or(|end| key < end)
                    && shard.last_key.as_ref().is_none_or(|last| key > last);
                if !in_range {
                    return self.damaged(at, "an item out of key order or outside its shard");
                }
                let bytes = len_u64(key.len() + value.len());
                shard.last_key = Some(key.clone());
                shard.items += 1;
                shard.bytes += bytes;
                self.totals.items += 1;
                self.totals.bytes += bytes;
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
        let filled =
            read_full(&mut self.input, &mut crc).map_err(|source| SnapshotFileError::Io {
                action: "reading",
                path: self.path.clone(),
                source,
            })?;
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
        let filled =
            read_full(&mut self.input, &mut extra).map_err(|source| SnapshotFileError::Io {
                action: "reading",
                path: self.path.clone(),
                source,
            })?;
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
