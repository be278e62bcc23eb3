//! Snapshot files: a large opaque state-machine image taken at an applied
//! index, written atomically and validated end to end before it is trusted.
//!
//! The paxos log and the state machine persist their state here at an applied
//! index so that the WAL below that index can be compacted: once a snapshot at
//! index `i` is durable (its [`SnapshotWriter::finish`] returned `Ok`), every
//! WAL entry up to `i` is redundant. Export files for backups reuse the same
//! format, so [`verify_file`] works on a file outside any store directory.
//!
//! # Files
//!
//! A store owns one directory. Complete snapshots are named
//! `{index:020}.snap` (zero padded so lexical order is numeric order); a write
//! in progress uses `{index:020}.snap.tmp` and becomes visible only through an
//! atomic rename after the data is fsynced. A crash therefore leaves either
//! the old set of complete snapshots or the old set plus the new one, never a
//! half-written file under a complete name. Leftover `.snap.tmp` files are
//! removed by [`SnapshotStore::open`].
//!
//! # Format (version 1, little-endian)
//!
//! ```text
//! header   magic "SHARDSNP" | version u32 | index u64 | meta_len u32 | meta | header_crc u32
//! chunk*   len u32 | crc u32 | payload (len bytes, 1..=CHUNK_BYTES_MAX)
//! trailer  magic "SNAPEND1" | chunk_count u64 | payload_bytes u64 | file_crc u32
//! ```
//!
//! `header_crc` covers every header byte before it. A chunk's crc covers its
//! `len` bytes, its sequence number (1-based, not stored) and the header crc
//! (binding it to this file), then the payload, so a damaged, reordered,
//! duplicated or foreign chunk fails on its own. `file_crc` covers every byte
//! before the trailer, and the trailer's counts must match what was read, so a
//! truncated or spliced file is always detected. `docs/disk-format.md` has the
//! byte-by-byte description.
//!
//! Memory stays bounded on both sides: the writer buffers at most one chunk,
//! and readers hold at most one chunk (plus the meta blob) at a time.

use std::collections::BTreeSet;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Result, StorageError};
use crate::fs::{FsFile, FsRef};

/// First bytes of every snapshot file.
pub const HEADER_MAGIC: [u8; 8] = *b"SHARDSNP";
/// First bytes of the trailer that ends every complete snapshot file.
pub const TRAILER_MAGIC: [u8; 8] = *b"SNAPEND1";
/// The snapshot format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Largest chunk payload a snapshot file may contain. Readers reject a larger
/// length field before allocating anything for it.
pub const CHUNK_BYTES_MAX: u32 = 16 << 20;
/// Chunk payload size a [`SnapshotWriter`] aims for unless configured with
/// [`SnapshotStore::with_chunk_target_bytes`]. Bounds the writer's buffer and
/// the size of each chunk a [`SnapshotReader`] returns.
pub const CHUNK_BYTES_DEFAULT: usize = 1 << 20;
/// Largest caller meta blob a snapshot may carry (it is held in memory whole).
pub const META_BYTES_MAX: u32 = 1 << 20;

/// Extension of complete snapshot files.
const SNAP_SUFFIX: &str = ".snap";
/// Extension of snapshot files still being written.
const TMP_SUFFIX: &str = ".snap.tmp";
/// Digits in the zero-padded index of a file name (enough for `u64::MAX`).
const INDEX_DIGITS: usize = 20;

/// magic + version + index + meta_len.
const HEADER_FIXED_BYTES: usize = 8 + 4 + 8 + 4;
/// len + crc.
const CHUNK_FRAME_BYTES: usize = 4 + 4;
/// magic + chunk_count + payload_bytes + file_crc.
const TRAILER_BYTES: usize = 8 + 8 + 8 + 4;
/// Read buffer for validation; bounds I/O calls, not chunk sizes.
const READ_BUFFER_BYTES: usize = 64 << 10;

/// What a complete, validated snapshot file contains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Applied index the snapshot was taken at.
    pub index: u64,
    /// The caller's opaque meta blob from [`SnapshotStore::begin`].
    pub meta: Vec<u8>,
    /// Number of chunks in the file.
    pub chunk_count: u64,
    /// Sum of all chunk payload lengths.
    pub payload_bytes: u64,
    /// Length of the whole file, header and trailer included.
    pub size_bytes: u64,
    /// The file.
    pub path: PathBuf,
}

/// File name of the complete snapshot at `index`: `{index:020}.snap`.
pub fn snapshot_file_name(index: u64) -> String {
    format!("{index:0width$}{SNAP_SUFFIX}", width = INDEX_DIGITS)
}

fn tmp_file_name(index: u64) -> String {
    format!("{index:0width$}{TMP_SUFFIX}", width = INDEX_DIGITS)
}

/// Parses a name made of exactly [`INDEX_DIGITS`] ASCII digits and `suffix`.
/// Deliberately strict, so that files we did not create are never touched.
fn parse_index_name(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != INDEX_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The index a snapshot file's name claims, for either a complete or a
/// temporary name; `None` for any other name (e.g. a backup export).
fn index_from_path(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    parse_index_name(name, SNAP_SUFFIX).or_else(|| parse_index_name(name, TMP_SUFFIX))
}

fn encode_header(index: u64, meta: &[u8]) -> Result<Vec<u8>> {
    let meta_len = u32::try_from(meta.len())
        .ok()
        .filter(|len| *len <= META_BYTES_MAX)
        .ok_or(StorageError::RecordTooLarge {
            size_bytes: u64::try_from(meta.len()).unwrap_or(u64::MAX),
            max_bytes: u64::from(META_BYTES_MAX),
        })?;
    let mut header = Vec::with_capacity(HEADER_FIXED_BYTES + meta.len() + 4);
    header.extend_from_slice(&HEADER_MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&index.to_le_bytes());
    header.extend_from_slice(&meta_len.to_le_bytes());
    header.extend_from_slice(meta);
    let crc = crc32fast::hash(&header);
    header.extend_from_slice(&crc.to_le_bytes());
    Ok(header)
}

/// A chunk's checksum. The sequence number is not stored: a chunk moved to
/// another position fails. The header crc ties the chunk to its file's header
/// (index and meta), so a chunk copied from another snapshot fails too.
fn chunk_crc(len: u32, seq: u64, header_crc: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(&seq.to_le_bytes());
    hasher.update(&header_crc.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// What the 8 bytes at a chunk boundary announce.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Trailer,
    Chunk { len: u32, crc: u32 },
}

/// Classifies the 8 bytes at a chunk boundary. Pure, so that the properties
/// that make the format unambiguous are unit-tested directly:
///
/// * A zero length is rejected: the writer never emits an empty chunk, so a
///   zero-filled region (a preallocated or torn tail) can never pass as one.
/// * The trailer magic read as a length is `0x50414E53`, far above
///   [`CHUNK_BYTES_MAX`], so a trailer and a valid chunk frame never collide.
/// * A length above [`CHUNK_BYTES_MAX`] is rejected here, before the caller
///   allocates anything for the payload.
fn classify_frame(bytes: &[u8; CHUNK_FRAME_BYTES]) -> std::result::Result<Frame, String> {
    if *bytes == TRAILER_MAGIC {
        return Ok(Frame::Trailer);
    }
    let len = read_u32(bytes, 0);
    let crc = read_u32(bytes, 4);
    if len == 0 {
        return Err(
            "zero-length chunk frame (chunks are never empty: zeroed or damaged data)".to_string(),
        );
    }
    if len > CHUNK_BYTES_MAX {
        return Err(format!(
            "neither the trailer nor a chunk: length {len} exceeds the maximum chunk size of \
             {CHUNK_BYTES_MAX} bytes"
        ));
    }
    Ok(Frame::Chunk { len, crc })
}

/// Locks a mutex that only guards a set of indexes; a panic elsewhere cannot
/// leave that set in a state worse than stale, so poisoning is ignored.
fn lock_set(set: &Mutex<BTreeSet<u64>>) -> MutexGuard<'_, BTreeSet<u64>> {
    set.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A directory of snapshot files.
///
/// One store (one process) owns a directory. Writers of different indexes may
/// run concurrently; two writers of the same index are refused.
#[derive(Debug)]
pub struct SnapshotStore {
    fs: FsRef,
    dir: PathBuf,
    chunk_target_bytes: usize,
    /// Indexes with a live [`SnapshotWriter`]: they share one `.tmp` name.
    writing: Arc<Mutex<BTreeSet<u64>>>,
}

impl SnapshotStore {
    /// Opens (creating if missing) the snapshot directory `dir`.
    ///
    /// Removes `.snap.tmp` files left by writes that never finished, durably,
    /// logging each. Files whose names are not snapshot names are ignored.
    pub fn open(fs: FsRef, dir: &Path) -> Result<SnapshotStore> {
        crate::fs::create_dir_all_durable(fs.as_ref(), dir)
            .map_err(StorageError::io("create snapshot directory", dir))?;
        let names = fs
            .list_dir(dir)
            .map_err(StorageError::io("list snapshot directory", dir))?;
        let mut removed_any = false;
        for name in names {
            if parse_index_name(&name, TMP_SUFFIX).is_none() {
                continue;
            }
            let path = dir.join(&name);
            tracing::warn!(
                path = %path.display(),
                "removing unfinished snapshot file left by an interrupted write"
            );
            fs.remove_file(&path)
                .map_err(StorageError::io("remove unfinished snapshot", &path))?;
            removed_any = true;
        }
        if removed_any {
            fs.sync_dir(dir)
                .map_err(StorageError::io("fsync snapshot directory", dir))?;
        }
        Ok(SnapshotStore {
            fs,
            dir: dir.to_path_buf(),
            chunk_target_bytes: CHUNK_BYTES_DEFAULT,
            writing: Arc::new(Mutex::new(BTreeSet::new())),
        })
    }

    /// Sets the chunk payload size new writers aim for (default
    /// [`CHUNK_BYTES_DEFAULT`]); must be in `1..=CHUNK_BYTES_MAX`. Existing
    /// files are unaffected: readers accept any valid chunk size.
    pub fn with_chunk_target_bytes(mut self, chunk_target_bytes: usize) -> Result<SnapshotStore> {
        let max = usize::try_from(CHUNK_BYTES_MAX).unwrap_or(usize::MAX);
        if chunk_target_bytes == 0 || chunk_target_bytes > max {
            return Err(StorageError::InvalidArgument(format!(
                "snapshot chunk target of {chunk_target_bytes} bytes is outside 1..={max}"
            )));
        }
        self.chunk_target_bytes = chunk_target_bytes;
        Ok(self)
    }

    /// The directory this store owns.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the complete snapshot file at `index` (which may not exist).
    pub fn snapshot_path(&self, index: u64) -> PathBuf {
        self.dir.join(snapshot_file_name(index))
    }

    /// Starts writing the snapshot at `index`, with the caller's opaque `meta`
    /// blob (at most [`META_BYTES_MAX`] bytes) stored in the header.
    ///
    /// Nothing is visible under the complete name until
    /// [`SnapshotWriter::finish`] returns `Ok`. A complete snapshot already at
    /// `index` is replaced atomically by that `finish`.
    pub fn begin(&self, index: u64, meta: &[u8]) -> Result<SnapshotWriter> {
        let header = encode_header(index, meta)?;
        let guard = WritingGuard::acquire(&self.writing, index)?;
        let tmp_path = self.dir.join(tmp_file_name(index));
        let mut file = self
            .fs
            .create(&tmp_path)
            .map_err(StorageError::io("create snapshot", &tmp_path))?;
        file.write_all(&header)
            .map_err(StorageError::io("write snapshot header", &tmp_path))?;
        let mut file_crc = crc32fast::Hasher::new();
        file_crc.update(&header);
        let header_crc = read_u32(&header, header.len() - 4);
        let mut buf = Vec::with_capacity(CHUNK_FRAME_BYTES + self.chunk_target_bytes);
        buf.resize(CHUNK_FRAME_BYTES, 0);
        Ok(SnapshotWriter {
            fs: Arc::clone(&self.fs),
            dir: self.dir.clone(),
            final_path: self.snapshot_path(index),
            tmp_path,
            file,
            index,
            meta: meta.to_vec(),
            header_crc,
            file_crc,
            size_bytes: u64::try_from(header.len()).unwrap_or(u64::MAX),
            chunk_count: 0,
            payload_bytes: 0,
            chunk_target_bytes: self.chunk_target_bytes,
            buf,
            failed: None,
            _guard: guard,
        })
    }

    /// Indexes of the complete-named snapshot files, ascending. Says nothing
    /// about their validity: see [`SnapshotStore::latest_valid`].
    pub fn list(&self) -> Result<Vec<u64>> {
        let names = self
            .fs
            .list_dir(&self.dir)
            .map_err(StorageError::io("list snapshot directory", &self.dir))?;
        let mut indexes: Vec<u64> = names
            .iter()
            .filter_map(|name| parse_index_name(name, SNAP_SUFFIX))
            .collect();
        indexes.sort_unstable();
        Ok(indexes)
    }

    /// Reads the whole snapshot at `index` and checks every checksum; see
    /// [`verify_file`].
    pub fn verify(&self, index: u64) -> Result<SnapshotInfo> {
        verify_file(&self.fs, &self.snapshot_path(index))
    }

    /// The newest snapshot that verifies completely, if any.
    ///
    /// Newer snapshots that fail validation are skipped with a warning but
    /// never deleted: an operator may want to inspect them. An I/O error is
    /// returned rather than skipped, since it says nothing about the file.
    ///
    /// A caller that compacted its WAL up to a snapshot that has since gone
    /// bad must notice the gap between the returned index and its WAL's
    /// first entry; this store cannot.
    pub fn latest_valid(&self) -> Result<Option<SnapshotInfo>> {
        for index in self.list()?.into_iter().rev() {
            match self.verify(index) {
                Ok(info) => return Ok(Some(info)),
                Err(
                    err @ (StorageError::Corruption { .. } | StorageError::FormatVersion { .. }),
                ) => {
                    tracing::warn!(
                        path = %self.snapshot_path(index).display(),
                        reason = %err,
                        "skipping invalid snapshot; it is kept for inspection"
                    );
                }
                Err(err) => return Err(err),
            }
        }
        Ok(None)
    }

    /// Opens the snapshot at `index` for streaming. The header is validated
    /// now, each chunk as it is read, the trailer when the chunks end.
    pub fn open_snapshot(&self, index: u64) -> Result<SnapshotReader> {
        open_snapshot_file(&self.fs, &self.snapshot_path(index))
    }

    /// Deletes every complete snapshot with an index below `index`, durably,
    /// and returns how many were deleted. `.tmp` files are left alone (they
    /// may belong to a live writer).
    ///
    /// Pass the index of a snapshot that [`SnapshotStore::latest_valid`]
    /// returned, so that a valid snapshot always remains.
    pub fn remove_older_than(&self, index: u64) -> Result<usize> {
        let mut removed = 0usize;
        for older in self.list()?.into_iter().filter(|older| *older < index) {
            let path = self.snapshot_path(older);
            self.fs
                .remove_file(&path)
                .map_err(StorageError::io("remove snapshot", &path))?;
            removed += 1;
        }
        if removed > 0 {
            self.fs
                .sync_dir(&self.dir)
                .map_err(StorageError::io("fsync snapshot directory", &self.dir))?;
        }
        Ok(removed)
    }
}

/// Marks an index as being written for as long as its writer lives.
#[derive(Debug)]
struct WritingGuard {
    set: Arc<Mutex<BTreeSet<u64>>>,
    index: u64,
}

impl WritingGuard {
    fn acquire(set: &Arc<Mutex<BTreeSet<u64>>>, index: u64) -> Result<WritingGuard> {
        if !lock_set(set).insert(index) {
            return Err(StorageError::InvalidArgument(format!(
                "a snapshot at index {index} is already being written"
            )));
        }
        Ok(WritingGuard {
            set: Arc::clone(set),
            index,
        })
    }
}

impl Drop for WritingGuard {
    fn drop(&mut self) {
        lock_set(&self.set).remove(&self.index);
    }
}

/// Writes one snapshot; see [`SnapshotStore::begin`].
///
/// Dropping a writer without calling [`SnapshotWriter::finish`] abandons the
/// snapshot: its `.tmp` file stays until the next [`SnapshotStore::open`].
/// After any error the writer refuses further work (what reached the file is
/// unknown); drop it and begin again.
#[derive(Debug)]
pub struct SnapshotWriter {
    fs: FsRef,
    dir: PathBuf,
    tmp_path: PathBuf,
    final_path: PathBuf,
    file: Box<dyn FsFile>,
    index: u64,
    meta: Vec<u8>,
    header_crc: u32,
    /// Running crc of every byte written so far (all of it precedes the trailer).
    file_crc: crc32fast::Hasher,
    size_bytes: u64,
    chunk_count: u64,
    payload_bytes: u64,
    chunk_target_bytes: usize,
    /// A frame-header placeholder followed by the pending payload, so that a
    /// chunk goes out in one write.
    buf: Vec<u8>,
    /// The first error, once one happened.
    failed: Option<String>,
    _guard: WritingGuard,
}

impl SnapshotWriter {
    /// The index this snapshot is taken at.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Appends `data` to the snapshot's body. Small writes are coalesced into
    /// chunks of the store's target size, large ones split, so the in-memory
    /// buffer never exceeds one chunk.
    pub fn write_chunk(&mut self, data: &[u8]) -> Result<()> {
        self.check_not_failed()?;
        let mut rest = data;
        while !rest.is_empty() {
            let room = self.chunk_target_bytes - self.pending_bytes();
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.buf.extend_from_slice(now);
            rest = later;
            if self.pending_bytes() == self.chunk_target_bytes {
                self.flush_chunk()?;
            }
        }
        Ok(())
    }

    /// Writes the trailer, fsyncs the file, renames it to its complete name
    /// and fsyncs the directory. The snapshot is durable only once this
    /// returns `Ok`; after an `Err` it may or may not survive a crash.
    pub fn finish(mut self) -> Result<SnapshotInfo> {
        self.check_not_failed()?;
        if self.pending_bytes() > 0 {
            self.flush_chunk()?;
        }
        let file_crc = self.file_crc.clone().finalize();
        let mut trailer = Vec::with_capacity(TRAILER_BYTES);
        trailer.extend_from_slice(&TRAILER_MAGIC);
        trailer.extend_from_slice(&self.chunk_count.to_le_bytes());
        trailer.extend_from_slice(&self.payload_bytes.to_le_bytes());
        trailer.extend_from_slice(&file_crc.to_le_bytes());
        let tmp = &self.tmp_path;
        self.file
            .write_all(&trailer)
            .map_err(StorageError::io("write snapshot trailer", tmp))?;
        self.file
            .sync_data()
            .map_err(StorageError::io("fsync snapshot", tmp))?;
        self.fs
            .rename(tmp, &self.final_path)
            .map_err(StorageError::io("rename snapshot into place", tmp))?;
        self.fs
            .sync_dir(&self.dir)
            .map_err(StorageError::io("fsync snapshot directory", &self.dir))?;
        Ok(SnapshotInfo {
            index: self.index,
            meta: std::mem::take(&mut self.meta),
            chunk_count: self.chunk_count,
            payload_bytes: self.payload_bytes,
            size_bytes: self.size_bytes + u64::try_from(TRAILER_BYTES).unwrap_or(u64::MAX),
            path: self.final_path.clone(),
        })
    }

    fn pending_bytes(&self) -> usize {
        self.buf.len() - CHUNK_FRAME_BYTES
    }

    fn check_not_failed(&self) -> Result<()> {
        match &self.failed {
            None => Ok(()),
            Some(cause) => Err(StorageError::InvalidArgument(format!(
                "snapshot writer for {} failed earlier ({cause}); begin a new snapshot",
                self.tmp_path.display()
            ))),
        }
    }

    /// Frames the pending payload as the next chunk and writes it.
    fn flush_chunk(&mut self) -> Result<()> {
        let (frame, payload) = self.buf.split_at_mut(CHUNK_FRAME_BYTES);
        // The target is at most CHUNK_BYTES_MAX (checked when it was set), so
        // the pending payload always fits a u32 length.
        let len = u32::try_from(payload.len()).expect("pending chunk bounded by CHUNK_BYTES_MAX");
        let seq = self.chunk_count + 1;
        let crc = chunk_crc(len, seq, self.header_crc, payload);
        frame[..4].copy_from_slice(&len.to_le_bytes());
        frame[4..].copy_from_slice(&crc.to_le_bytes());
        if let Err(source) = self.file.write_all(&self.buf) {
            let err = StorageError::Io {
                op: "write snapshot chunk",
                path: self.tmp_path.clone(),
                source,
            };
            self.failed = Some(err.to_string());
            return Err(err);
        }
        self.file_crc.update(&self.buf);
        self.size_bytes += u64::try_from(self.buf.len()).unwrap_or(u64::MAX);
        self.chunk_count = seq;
        self.payload_bytes += u64::from(len);
        self.buf.truncate(CHUNK_FRAME_BYTES);
        Ok(())
    }
}

/// Reads and fully validates a snapshot file anywhere (a store's file or a
/// backup export), streaming with bounded memory.
///
/// Checks the header, every chunk's checksum and sequence, the trailer, that
/// nothing follows the trailer, and, when the file is named like a snapshot
/// (`{index:020}.snap` or `.snap.tmp`), that the name's index matches the
/// header's. Errors: [`StorageError::Corruption`] whose offset is the start of
/// the first bad structure (0 for the header, a chunk's frame, the trailer),
/// or [`StorageError::FormatVersion`] for a version this build cannot read.
pub fn verify_file(fs: &FsRef, path: &Path) -> Result<SnapshotInfo> {
    let mut reader = open_snapshot_file(fs, path)?;
    let mut buf = Vec::new();
    loop {
        if let Some(info) = reader.next_into(&mut buf)? {
            return Ok(info);
        }
    }
}

fn open_snapshot_file(fs: &FsRef, path: &Path) -> Result<SnapshotReader> {
    let file = fs
        .open_read(path)
        .map_err(StorageError::io("open snapshot", path))?;
    let file_len_bytes = file
        .len_bytes()
        .map_err(StorageError::io("stat snapshot", path))?;
    let mut reader = SnapshotReader {
        file: BufReader::with_capacity(READ_BUFFER_BYTES, file),
        path: path.to_path_buf(),
        file_len_bytes,
        pos: 0,
        file_crc: crc32fast::Hasher::new(),
        index: 0,
        meta: Vec::new(),
        header_crc: 0,
        chunk_count: 0,
        payload_bytes: 0,
        state: ReadState::Chunks,
    };
    reader.read_header()?;
    if let Some(name_index) = index_from_path(path) {
        if name_index != reader.index {
            return Err(StorageError::corruption(
                path,
                0,
                format!(
                    "header says index {} but the file name says index {name_index}",
                    reader.index
                ),
            ));
        }
    }
    Ok(reader)
}

#[derive(Debug)]
enum ReadState {
    Chunks,
    Done(SnapshotInfo),
    Failed,
}

/// Streams the chunks of one snapshot, validating as it goes; see
/// [`SnapshotStore::open_snapshot`].
///
/// Every chunk returned has passed its checksum, but the snapshot as a whole
/// is known complete and unspliced only when [`SnapshotReader::next_chunk`]
/// returns `Ok(None)`: install the state only then.
#[derive(Debug)]
pub struct SnapshotReader {
    file: BufReader<Box<dyn FsFile>>,
    path: PathBuf,
    file_len_bytes: u64,
    /// Offset of the next unread byte.
    pos: u64,
    /// Running crc of every byte consumed before the trailer.
    file_crc: crc32fast::Hasher,
    index: u64,
    meta: Vec<u8>,
    header_crc: u32,
    chunk_count: u64,
    payload_bytes: u64,
    state: ReadState,
}

impl SnapshotReader {
    /// Applied index from the (validated) header.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The caller's meta blob from the (validated) header.
    pub fn meta(&self) -> &[u8] {
        &self.meta
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole file's details, once [`SnapshotReader::next_chunk`] has
    /// returned `Ok(None)` (the trailer validated); `None` before.
    pub fn info(&self) -> Option<&SnapshotInfo> {
        match &self.state {
            ReadState::Done(info) => Some(info),
            ReadState::Chunks | ReadState::Failed => None,
        }
    }

    /// The next chunk's payload, or `Ok(None)` once the trailer has been read
    /// and validated. A chunk that fails validation is never returned; after
    /// an error the reader refuses further reads.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        let mut buf = Vec::new();
        match self.next_into(&mut buf)? {
            Some(_) => Ok(None),
            None => Ok(Some(buf)),
        }
    }

    /// Reads the next chunk into `buf` (returning `None`), or validates the
    /// trailer and returns the file's info. Lets [`verify_file`] reuse one
    /// buffer for every chunk.
    fn next_into(&mut self, buf: &mut Vec<u8>) -> Result<Option<SnapshotInfo>> {
        match &self.state {
            ReadState::Chunks => {}
            ReadState::Done(info) => return Ok(Some(info.clone())),
            ReadState::Failed => {
                return Err(StorageError::InvalidArgument(format!(
                    "snapshot reader for {} already failed",
                    self.path.display()
                )))
            }
        }
        let result = self.read_structure(buf);
        match &result {
            Ok(Some(info)) => self.state = ReadState::Done(info.clone()),
            Ok(None) => {}
            Err(_) => self.state = ReadState::Failed,
        }
        result
    }

    fn read_header(&mut self) -> Result<()> {
        let mut fixed = [0u8; HEADER_FIXED_BYTES];
        let got = self.fill(&mut fixed)?;
        if got >= 8 && fixed[..8] != HEADER_MAGIC {
            return Err(self.corrupt(0, "not a snapshot file: bad header magic"));
        }
        if got >= 12 {
            let version = read_u32(&fixed, 8);
            if version != FORMAT_VERSION {
                return Err(StorageError::FormatVersion {
                    path: self.path.clone(),
                    found: version,
                    supported: FORMAT_VERSION,
                });
            }
        }
        if got < HEADER_FIXED_BYTES {
            return Err(self.corrupt(0, format!("file ends inside the header ({got} bytes)")));
        }
        let meta_len = read_u32(&fixed, 20);
        if meta_len > META_BYTES_MAX {
            return Err(self.corrupt(
                0,
                format!("meta length {meta_len} exceeds the maximum of {META_BYTES_MAX} bytes"),
            ));
        }
        let header_bytes = u64::try_from(HEADER_FIXED_BYTES + 4).unwrap_or(u64::MAX);
        if header_bytes + u64::from(meta_len) > self.file_len_bytes {
            return Err(self.corrupt(0, "file ends inside the header"));
        }
        let mut meta = Vec::new();
        self.read_exactly(&mut meta, u64::from(meta_len), 0, "the header")?;
        let mut crc_bytes = [0u8; 4];
        if self.fill(&mut crc_bytes)? < crc_bytes.len() {
            return Err(self.corrupt(0, "file ends inside the header"));
        }
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&fixed);
        hasher.update(&meta);
        let header_crc = hasher.finalize();
        if header_crc != u32::from_le_bytes(crc_bytes) {
            return Err(self.corrupt(0, "header checksum mismatch"));
        }
        self.file_crc.update(&fixed);
        self.file_crc.update(&meta);
        self.file_crc.update(&crc_bytes);
        self.index = read_u64(&fixed, 12);
        self.meta = meta;
        self.header_crc = header_crc;
        Ok(())
    }

    /// Reads the chunk or trailer at the current position.
    fn read_structure(&mut self, buf: &mut Vec<u8>) -> Result<Option<SnapshotInfo>> {
        let start = self.pos;
        let mut frame = [0u8; CHUNK_FRAME_BYTES];
        let got = self.fill(&mut frame)?;
        if got == 0 {
            return Err(self.corrupt(
                start,
                format!(
                    "file ends after {} chunks without a trailer",
                    self.chunk_count
                ),
            ));
        }
        if got < frame.len() {
            return Err(self.corrupt(start, "file ends inside a chunk frame or the trailer"));
        }
        let (len, stored_crc) = match classify_frame(&frame) {
            Ok(Frame::Trailer) => return self.read_trailer(start).map(Some),
            Ok(Frame::Chunk { len, crc }) => (len, crc),
            Err(reason) => return Err(self.corrupt(start, reason)),
        };
        if self.pos + u64::from(len) > self.file_len_bytes {
            return Err(self.corrupt(
                start,
                format!("chunk of {len} bytes runs past the end of the file (truncated)"),
            ));
        }
        buf.clear();
        self.read_exactly(buf, u64::from(len), start, "a chunk")?;
        let seq = self.chunk_count + 1;
        if chunk_crc(len, seq, self.header_crc, buf) != stored_crc {
            return Err(self.corrupt(
                start,
                format!(
                    "chunk {seq} checksum mismatch (damaged, out of order or from another \
                     snapshot)"
                ),
            ));
        }
        self.file_crc.update(&frame);
        self.file_crc.update(buf);
        self.chunk_count = seq;
        self.payload_bytes += u64::from(len);
        Ok(None)
    }

    fn read_trailer(&mut self, start: u64) -> Result<SnapshotInfo> {
        let mut rest = [0u8; TRAILER_BYTES - 8];
        if self.fill(&mut rest)? < rest.len() {
            return Err(self.corrupt(start, "file ends inside the trailer"));
        }
        let chunk_count = read_u64(&rest, 0);
        let payload_bytes = read_u64(&rest, 8);
        let file_crc = read_u32(&rest, 16);
        if file_crc != self.file_crc.clone().finalize() {
            return Err(self.corrupt(start, "whole-file checksum in the trailer does not match"));
        }
        if chunk_count != self.chunk_count {
            return Err(self.corrupt(
                start,
                format!(
                    "trailer says {chunk_count} chunks, the file has {}",
                    self.chunk_count
                ),
            ));
        }
        if payload_bytes != self.payload_bytes {
            return Err(self.corrupt(
                start,
                format!(
                    "trailer says {payload_bytes} payload bytes, the file has {}",
                    self.payload_bytes
                ),
            ));
        }
        let end = self.pos;
        let mut extra = [0u8; 1];
        if self.fill(&mut extra)? > 0 {
            return Err(self.corrupt(end, "unexpected bytes after the trailer"));
        }
        Ok(SnapshotInfo {
            index: self.index,
            meta: self.meta.clone(),
            chunk_count,
            payload_bytes,
            size_bytes: end,
            path: self.path.clone(),
        })
    }

    /// Reads until `buf` is full or the file ends; returns the bytes read.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.file.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(StorageError::io("read snapshot", &self.path)(err)),
            }
        }
        self.pos += u64::try_from(got).unwrap_or(u64::MAX);
        Ok(got)
    }

    /// Appends exactly `len_bytes` to `buf`, or reports the structure at
    /// `start` as truncated. Callers bound `len_bytes` first.
    fn read_exactly(
        &mut self,
        buf: &mut Vec<u8>,
        len_bytes: u64,
        start: u64,
        what: &str,
    ) -> Result<()> {
        let got = (&mut self.file)
            .take(len_bytes)
            .read_to_end(buf)
            .map_err(StorageError::io("read snapshot", &self.path))?;
        let got = u64::try_from(got).unwrap_or(u64::MAX);
        self.pos += got;
        if got < len_bytes {
            return Err(self.corrupt(start, format!("file ends inside {what}")));
        }
        Ok(())
    }

    fn corrupt(&self, offset: u64, reason: impl Into<String>) -> StorageError {
        StorageError::corruption(&self.path, offset, reason)
    }
}

impl Iterator for SnapshotReader {
    type Item = Result<Vec<u8>>;

    /// Like [`SnapshotReader::next_chunk`]; ends after the trailer validates
    /// or after the first error.
    fn next(&mut self) -> Option<Self::Item> {
        if matches!(self.state, ReadState::Failed) {
            return None;
        }
        self.next_chunk().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::SimFs;

    #[test]
    fn zero_frame_is_never_a_chunk_or_trailer() {
        assert!(classify_frame(&[0u8; CHUNK_FRAME_BYTES]).is_err());
    }

    #[test]
    fn trailer_magic_cannot_be_a_valid_chunk_length() {
        assert!(read_u32(&TRAILER_MAGIC, 0) > CHUNK_BYTES_MAX);
        assert_eq!(classify_frame(&TRAILER_MAGIC), Ok(Frame::Trailer));
    }

    #[test]
    fn length_above_max_is_rejected_and_max_accepted() {
        let mut frame = [0u8; CHUNK_FRAME_BYTES];
        frame[..4].copy_from_slice(&(CHUNK_BYTES_MAX + 1).to_le_bytes());
        assert!(classify_frame(&frame).unwrap_err().contains("exceeds"));
        frame[..4].copy_from_slice(&CHUNK_BYTES_MAX.to_le_bytes());
        assert_eq!(
            classify_frame(&frame),
            Ok(Frame::Chunk {
                len: CHUNK_BYTES_MAX,
                crc: 0
            })
        );
    }

    #[test]
    fn all_zero_files_never_validate() {
        let sim = SimFs::new();
        let fs = sim.shared();
        fs.create_dir_all(Path::new("/s")).unwrap();
        let path = Path::new("/s/00000000000000000000.snap");
        for len in [0usize, 1, 8, 24, 28, 36, 64, 200] {
            let mut file = fs.create(path).unwrap();
            file.write_all(&vec![0u8; len]).unwrap();
            let err = verify_file(&fs, path).unwrap_err();
            assert!(
                matches!(err, StorageError::Corruption { offset: 0, .. }),
                "{len} zero bytes: {err:?}"
            );
        }
    }

    #[test]
    fn zeroed_tail_after_a_valid_header_is_not_a_chunk() {
        let sim = SimFs::new();
        let fs = sim.shared();
        fs.create_dir_all(Path::new("/s")).unwrap();
        let path = Path::new("/s/00000000000000000007.snap");
        let header = encode_header(7, b"m").unwrap();
        let mut file = fs.create(path).unwrap();
        file.write_all(&header).unwrap();
        file.write_all(&[0u8; 64]).unwrap();
        let err = verify_file(&fs, path).unwrap_err();
        let header_len = u64::try_from(header.len()).unwrap();
        match err {
            StorageError::Corruption { offset, reason, .. } => {
                assert_eq!(offset, header_len);
                assert!(reason.contains("zero-length"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_are_strict() {
        assert_eq!(snapshot_file_name(42), "00000000000000000042.snap");
        assert_eq!(snapshot_file_name(u64::MAX), "18446744073709551615.snap");
        assert_eq!(
            parse_index_name("00000000000000000042.snap", SNAP_SUFFIX),
            Some(42)
        );
        assert_eq!(
            parse_index_name("00000000000000000042.snap.tmp", TMP_SUFFIX),
            Some(42)
        );
        assert_eq!(
            parse_index_name("00000000000000000042.snap.tmp", SNAP_SUFFIX),
            None
        );
        assert_eq!(parse_index_name("42.snap", SNAP_SUFFIX), None);
        assert_eq!(
            parse_index_name("+0000000000000000042.snap", SNAP_SUFFIX),
            None
        );
        assert_eq!(
            parse_index_name("99999999999999999999.snap", SNAP_SUFFIX),
            None
        );
    }

    #[test]
    fn chunk_crc_depends_on_sequence_and_header() {
        let base = chunk_crc(3, 1, 7, b"abc");
        assert_ne!(base, chunk_crc(3, 2, 7, b"abc"));
        assert_ne!(base, chunk_crc(3, 1, 8, b"abc"));
    }
}
