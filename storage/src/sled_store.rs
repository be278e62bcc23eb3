//! The state-machine store: per-shard key/value data kept in sled 0.34.
//!
//! A replica group's state machine applies committed log entries to the data
//! of the shards it owns. This module is where that data lives. It knows
//! nothing of Paxos or of client operations: it offers two key spaces per
//! shard ([`Space::Data`] for client data, [`Space::Aux`] for bookkeeping that
//! moves with the shard, such as the session table), atomic batches, and one
//! *applied index* per shard.
//!
//! # The applied index travels with the data
//!
//! [`SledStore::apply`] writes every put and delete of a batch *and* the new
//! applied index in one sled batch on one tree, which sled recovers all or
//! nothing after a crash. After a restart the node replays its log from each
//! shard's [`SledStore::applied_index`] `+ 1`: an operation is never applied
//! twice (its effects and the index that covers it appear together) and never
//! lost (without its index it is replayed). This is why the index is refused
//! if it does not move forward.
//!
//! # Durability and WAL compaction
//!
//! sled only makes writes durable on [`SledStore::flush`] (and on its own
//! timer, which no one may rely on). The log below a shard's applied index may
//! be compacted only after a `flush` that started after that index was
//! applied has returned; until then the log is the only durable copy of those
//! operations.
//!
//! # Why one sled tree per shard
//!
//! A shard is the unit that moves between groups. With one tree per shard,
//! dropping a shard is one `drop_tree`, exporting it is one scan of one tree,
//! and a sled batch (atomic for one tree only) covers exactly one shard's data
//! and applied index. Store-wide facts (the format version) live in a separate
//! `meta` tree. Inside a shard tree every key starts with a one-byte space
//! prefix so that client keys can never collide with the store's own keys;
//! see `docs/disk-format.md` for the byte layout.
//!
//! # Moving shards
//!
//! [`SledStore::export`] streams a shard's records in key order;
//! [`SledStore::import`] replaces a shard with such a stream. An import writes
//! a durable "import in progress" marker before touching the shard and removes
//! it in the same batch that writes the applied index, so a crash mid-import
//! leaves a shard that [`SledStore::shards`] reports as incomplete and that
//! [`SledStore::apply`] and the readers refuse until the import is re-run (or
//! the shard dropped).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use sled::{Batch, Db, IVec, Tree};

use crate::error::{Result, StorageError};

/// Identifier of a shard.
pub type ShardId = u64;

/// On-disk format version written into the `meta` tree at creation and
/// checked at every open.
pub const FORMAT_VERSION: u32 = 1;

/// Name of the tree holding store-wide facts.
const META_TREE: &[u8] = b"meta";
/// Key (in the `meta` tree) of the format version, a `u32` big-endian.
const FORMAT_VERSION_KEY: &[u8] = b"format_version";
/// Shard trees are named `shard/` followed by the id as 16 lowercase hex digits.
const SHARD_TREE_PREFIX: &str = "shard/";

/// First byte of the store's own keys inside a shard tree; never exported.
const INTERNAL_PREFIX: u8 = 0x00;
/// First byte of [`Space::Data`] keys.
const DATA_PREFIX: u8 = 0x01;
/// First byte of [`Space::Aux`] keys.
const AUX_PREFIX: u8 = 0x02;
/// Value: the shard's applied index, `u64` big-endian.
const APPLIED_INDEX_KEY: &[u8] = b"\x00applied_index";
/// Value: the applied index the interrupted import was going to set, `u64`
/// big-endian. Its presence means the shard's contents are partial.
const IMPORT_MARKER_KEY: &[u8] = b"\x00import_in_progress";

/// An import writes at most this many records per sled batch, so that a huge
/// shard never needs one huge in-memory batch.
const IMPORT_BATCH_MAX_RECORDS: usize = 1_000;
/// An import writes at most about this many key and value bytes per sled batch.
const IMPORT_BATCH_MAX_BYTES: usize = 1 << 20;

/// How long [`SledStore::open`] waits for sled's lock file to be released.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// One of the two key spaces of a shard that belong to the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Space {
    /// The clients' key/value data. Scans over it are in key order.
    Data,
    /// The application's per-shard bookkeeping that moves with the shard to
    /// another group (for example the client session table).
    Aux,
}

impl Space {
    /// The byte that starts every key of this space inside a shard tree.
    pub const fn prefix(self) -> u8 {
        match self {
            Space::Data => DATA_PREFIX,
            Space::Aux => AUX_PREFIX,
        }
    }

    /// The space whose keys start with `prefix`, if any.
    pub const fn from_prefix(prefix: u8) -> Option<Space> {
        match prefix {
            DATA_PREFIX => Some(Space::Data),
            AUX_PREFIX => Some(Space::Aux),
            _ => None,
        }
    }
}

/// What the store knows about one shard, as reported by [`SledStore::shards`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardStatus {
    /// The shard.
    pub id: ShardId,
    /// Index of the last log entry whose effects are in the store; `None` while
    /// an import is incomplete.
    pub applied_index: Option<u64>,
    /// An import was started and did not finish (the process died or the
    /// record stream failed): the contents are partial, reads and applies are
    /// refused until the import is re-run or the shard dropped.
    pub import_incomplete: bool,
}

/// The puts and deletes of one [`SledStore::apply`], in order (a later
/// operation on the same key wins).
///
/// All keys and values are copied into one buffer, so a batch costs two
/// allocations however many operations it holds, and none when reused after
/// [`ShardBatch::clear`].
#[derive(Debug, Clone, Default)]
pub struct ShardBatch {
    /// Every operation's prefixed key followed by its value (if a put).
    bytes: Vec<u8>,
    ops: Vec<BatchOp>,
}

/// One operation of a [`ShardBatch`]: byte ranges into its buffer.
#[derive(Debug, Clone, Copy)]
struct BatchOp {
    start: usize,
    key_end: usize,
    /// End of the value for a put, `None` for a delete.
    value_end: Option<usize>,
}

impl ShardBatch {
    /// An empty batch.
    pub fn new() -> ShardBatch {
        ShardBatch::default()
    }

    /// An empty batch with room for `ops` operations totalling `bytes` bytes of
    /// keys and values.
    pub fn with_capacity(ops: usize, bytes: usize) -> ShardBatch {
        ShardBatch {
            bytes: Vec::with_capacity(bytes + ops),
            ops: Vec::with_capacity(ops),
        }
    }

    /// Sets `key` in `space` to `value`.
    pub fn put(&mut self, space: Space, key: &[u8], value: &[u8]) -> &mut ShardBatch {
        let start = self.push_key(space, key);
        let key_end = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.ops.push(BatchOp {
            start,
            key_end,
            value_end: Some(self.bytes.len()),
        });
        self
    }

    /// Removes `key` from `space` (nothing happens if it is absent).
    pub fn delete(&mut self, space: Space, key: &[u8]) -> &mut ShardBatch {
        let start = self.push_key(space, key);
        self.ops.push(BatchOp {
            start,
            key_end: self.bytes.len(),
            value_end: None,
        });
        self
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// `true` if the batch holds no operation. An empty batch is still useful:
    /// applying it advances the applied index.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Removes every operation, keeping the allocated memory for reuse.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ops.clear();
    }

    fn push_key(&mut self, space: Space, key: &[u8]) -> usize {
        let start = self.bytes.len();
        self.bytes.push(space.prefix());
        self.bytes.extend_from_slice(key);
        start
    }

    /// Adds every operation to a sled batch (sled keeps the last write per key).
    fn fill(&self, batch: &mut Batch) {
        for op in &self.ops {
            let key = &self.bytes[op.start..op.key_end];
            match op.value_end {
                Some(end) => batch.insert(key, &self.bytes[op.key_end..end]),
                None => batch.remove(key),
            }
        }
    }
}

/// One record of a shard export: a key and value of [`Space::Data`] or
/// [`Space::Aux`]. The store's own keys (applied index, import marker) are
/// never exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRecord {
    /// The key space.
    pub space: Space,
    /// The key, without the space prefix.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
}

/// What [`SledStore::import`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportReport {
    /// Records written.
    pub records: u64,
    /// Key and value bytes written (without space prefixes).
    pub bytes: u64,
    /// sled batches used for the records.
    pub batches: u64,
    /// [`ShardChecksum`] of the imported records; equal to the source's
    /// [`SledStore::checksum`] if nothing was lost or changed on the way.
    pub checksum: u32,
}

/// The checksum of a shard's contents, as computed by [`SledStore::checksum`]:
/// CRC-32 (IEEE) over, for every record of [`Space::Data`] then
/// [`Space::Aux`] in key order, the space prefix byte, the key length as a
/// `u64` big-endian, the key, the value length as a `u64` big-endian and the
/// value.
///
/// Lengths are included so that moving bytes between a key and its value
/// changes the checksum. Exposed so that a receiver can check a stream as it
/// arrives.
#[derive(Debug, Clone, Default)]
pub struct ShardChecksum {
    hasher: crc32fast::Hasher,
}

impl ShardChecksum {
    /// A checksum over no records.
    pub fn new() -> ShardChecksum {
        ShardChecksum::default()
    }

    /// Adds one record. Records must be added in the order of
    /// [`SledStore::export`] for the result to match [`SledStore::checksum`].
    pub fn update(&mut self, space: Space, key: &[u8], value: &[u8]) {
        self.hasher.update(&[space.prefix()]);
        self.update_field(key);
        self.update_field(value);
    }

    /// The checksum of the records added so far.
    pub fn finish(&self) -> u32 {
        self.hasher.clone().finalize()
    }

    fn update_prefixed(&mut self, prefixed_key: &[u8], value: &[u8]) {
        // Callers only pass keys read from a Data or Aux range, which are never empty.
        let (prefix, key) = prefixed_key.split_first().unwrap_or((&0, &[]));
        self.hasher.update(&[*prefix]);
        self.update_field(key);
        self.update_field(value);
    }

    fn update_field(&mut self, bytes: &[u8]) {
        self.hasher.update(&len_u64(bytes.len()).to_be_bytes());
        self.hasher.update(bytes);
    }
}

/// Where a shard stands, from its two internal keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShardState {
    /// Neither key: the tree exists but was never written (for example, the
    /// process died between creating the tree and the first batch).
    Absent,
    /// An import was started and did not finish.
    Importing {
        /// The applied index the import was going to set.
        target: u64,
    },
    /// Normal.
    Ready {
        /// The applied index.
        applied: u64,
    },
}

/// An open shard tree and the lock that serialises its writers.
struct ShardHandle {
    tree: Tree,
    /// Held by apply, import and drop for the whole of their read-check-write,
    /// so that the applied-index check and the write cannot interleave with
    /// another writer's.
    writer: Mutex<WriterState>,
}

struct WriterState {
    /// The tree was dropped: a writer that waited for the lock must look the
    /// shard up again (sled trees must not be used after `drop_tree`).
    dropped: bool,
}

/// The state-machine store: one sled database, one tree per shard.
///
/// All methods take `&self`; the store may be shared between threads. Writers
/// to one shard ([`apply`](Self::apply), [`import`](Self::import),
/// [`drop_shard`](Self::drop_shard)) are serialised. A [`get`](Self::get)
/// sees a key as it was before or after each batch, but the multi-key readers
/// ([`scan`](Self::scan), [`checksum`](Self::checksum),
/// [`export`](Self::export)) do not read a snapshot: callers that need a
/// consistent view of a whole shard must stop applying to it first, which
/// shardkv does by freezing a shard before it moves.
pub struct SledStore {
    db: Db,
    /// For error messages.
    path: PathBuf,
    shards: RwLock<BTreeMap<ShardId, Arc<ShardHandle>>>,
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not derived: sled's `Debug` for a tree dumps its whole contents.
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (or creates) the store in directory `path`.
    ///
    /// Checks the format version and every shard tree's internal keys, so that
    /// a damaged store is refused here rather than misread later.
    ///
    /// # Errors
    ///
    /// [`StorageError::FormatVersion`] if the store was written by a build with
    /// another format, [`StorageError::Corruption`] if its internal keys are
    /// malformed, [`StorageError::Sled`] if sled cannot open it (for example,
    /// another process has held it open for longer than a few seconds).
    pub fn open(path: &Path) -> Result<SledStore> {
        // sled 0.34 releases its lock file only when its last internal handle
        // goes, and its global IO thread pool can hold one for a moment after
        // the `Db` is dropped (sled's own tests block on the lock for this
        // reason). Reopening in the same process right after a close would
        // then fail spuriously, so a lock conflict is retried for a while.
        let deadline = Instant::now() + LOCK_WAIT;
        let mut pause = Duration::from_millis(1);
        let db = loop {
            match sled::Config::new().path(path).open() {
                Ok(db) => break db,
                Err(e) if is_lock_conflict(&e) && Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(e) => return Err(StorageError::sled("open")(e)),
            }
        };
        SledStore::init(db, path.to_path_buf())
    }

    /// Opens a store in a fresh temporary directory that sled removes when the
    /// store is dropped. For tests.
    ///
    /// # Errors
    ///
    /// [`StorageError::Sled`] if sled cannot create it.
    pub fn temporary() -> Result<SledStore> {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .map_err(StorageError::sled("open temporary"))?;
        SledStore::init(db, PathBuf::from("<temporary sled store>"))
    }

    fn init(db: Db, path: PathBuf) -> Result<SledStore> {
        let meta = db
            .open_tree(META_TREE)
            .map_err(StorageError::sled("open meta tree"))?;

        let mut shards = BTreeMap::new();
        for name in db.tree_names() {
            let Some(suffix) = name.strip_prefix(SHARD_TREE_PREFIX.as_bytes()) else {
                if &*name != META_TREE && &*name != b"__sled__default" {
                    tracing::warn!(
                        store = %path.display(),
                        tree = %String::from_utf8_lossy(&name),
                        "ignoring a sled tree that is not part of the state-machine store"
                    );
                }
                continue;
            };
            let id = parse_shard_id(suffix).ok_or_else(|| {
                StorageError::corruption(
                    &path,
                    0,
                    format!(
                        "malformed shard tree name {:?}",
                        String::from_utf8_lossy(&name)
                    ),
                )
            })?;
            let tree = db
                .open_tree(&name)
                .map_err(StorageError::sled("open shard tree"))?;
            let handle = Arc::new(ShardHandle {
                tree,
                writer: Mutex::new(WriterState { dropped: false }),
            });
            shards.insert(id, handle);
        }

        match meta
            .get(FORMAT_VERSION_KEY)
            .map_err(StorageError::sled("read format version"))?
        {
            Some(bytes) => {
                let found = <[u8; 4]>::try_from(&*bytes)
                    .map(u32::from_be_bytes)
                    .map_err(|_| {
                        StorageError::corruption(
                            &path,
                            0,
                            format!(
                                "format version in the meta tree is {} bytes, not 4",
                                bytes.len()
                            ),
                        )
                    })?;
                if found != FORMAT_VERSION {
                    return Err(StorageError::FormatVersion {
                        path,
                        found,
                        supported: FORMAT_VERSION,
                    });
                }
            }
            None if shards.is_empty() => {
                // A new store (or one whose creation died before this write).
                meta.insert(FORMAT_VERSION_KEY, &FORMAT_VERSION.to_be_bytes())
                    .map_err(StorageError::sled("write format version"))?;
                db.flush().map_err(StorageError::sled("flush"))?;
            }
            None => {
                return Err(StorageError::corruption(
                    &path,
                    0,
                    "the store has shard trees but no format version in its meta tree",
                ));
            }
        }

        let store = SledStore {
            db,
            path,
            shards: RwLock::new(shards),
        };
        for (&id, handle) in store.read_map().iter() {
            store.validate_shard(id, &handle.tree)?;
        }
        Ok(store)
    }

    /// Checks what a crash cannot explain: unknown internal keys, keys outside
    /// the three spaces, or data without an applied index or import marker.
    fn validate_shard(&self, shard: ShardId, tree: &Tree) -> Result<()> {
        let state = self.read_state(shard, tree)?;
        for entry in tree.range([INTERNAL_PREFIX]..[DATA_PREFIX]) {
            let (key, _) = entry.map_err(StorageError::sled("scan internal keys"))?;
            if &*key != APPLIED_INDEX_KEY && &*key != IMPORT_MARKER_KEY {
                return Err(self.corrupt(shard, format!("unknown internal key {key:?}")));
            }
        }
        if let Some(entry) = tree.range([AUX_PREFIX + 1]..).next() {
            let (key, _) = entry.map_err(StorageError::sled("scan shard tree"))?;
            return Err(self.corrupt(shard, format!("key {key:?} has an unknown space prefix")));
        }
        if state == ShardState::Absent && !tree.is_empty() {
            return Err(self.corrupt(
                shard,
                "the shard tree holds data but neither an applied index nor an import marker",
            ));
        }
        Ok(())
    }

    /// Every shard in the store, sorted by id.
    ///
    /// # Errors
    ///
    /// [`StorageError::Sled`] or [`StorageError::Corruption`] when reading a
    /// shard's internal keys fails.
    pub fn shards(&self) -> Result<Vec<ShardStatus>> {
        let handles: Vec<(ShardId, Arc<ShardHandle>)> = self
            .read_map()
            .iter()
            .map(|(&id, h)| (id, Arc::clone(h)))
            .collect();
        let mut out = Vec::with_capacity(handles.len());
        for (id, handle) in handles {
            match self.read_state(id, &handle.tree)? {
                ShardState::Absent => {}
                ShardState::Importing { .. } => out.push(ShardStatus {
                    id,
                    applied_index: None,
                    import_incomplete: true,
                }),
                ShardState::Ready { applied } => out.push(ShardStatus {
                    id,
                    applied_index: Some(applied),
                    import_incomplete: false,
                }),
            }
        }
        Ok(out)
    }

    /// The shard's applied index: `None` if the store does not hold the shard
    /// or holds only an incomplete import of it.
    ///
    /// # Errors
    ///
    /// [`StorageError::Sled`], or [`StorageError::Corruption`] if the stored
    /// index is malformed.
    pub fn applied_index(&self, shard: ShardId) -> Result<Option<u64>> {
        let Some(handle) = self.handle(shard) else {
            return Ok(None);
        };
        match self.read_state(shard, &handle.tree)? {
            ShardState::Ready { applied } => Ok(Some(applied)),
            ShardState::Absent | ShardState::Importing { .. } => Ok(None),
        }
    }

    /// Applies `batch` to `shard` and sets its applied index to
    /// `applied_index`, in one atomic (also across crashes) sled batch.
    ///
    /// A shard the store does not hold is created, with any applied index.
    /// Durable only after the next [`flush`](Self::flush).
    ///
    /// # Errors
    ///
    /// [`StorageError::InvalidArgument`], with nothing written, if
    /// `applied_index` is not greater than the shard's current applied index
    /// (the entry was already applied) or if the shard has an incomplete
    /// import. [`StorageError::Sled`] if sled fails.
    pub fn apply(&self, shard: ShardId, applied_index: u64, batch: &ShardBatch) -> Result<()> {
        self.with_writer(shard, true, |handle, _| {
            match self.read_state(shard, &handle.tree)? {
                ShardState::Absent => {}
                ShardState::Ready { applied } if applied_index > applied => {}
                ShardState::Ready { applied } => {
                    return Err(StorageError::InvalidArgument(format!(
                        "shard {shard:016x}: applied index {applied_index} is not greater than \
                         the current applied index {applied}; the entry was already applied"
                    )));
                }
                ShardState::Importing { target } => {
                    return Err(incomplete_import(shard, target));
                }
            }
            let mut sled_batch = Batch::default();
            batch.fill(&mut sled_batch);
            sled_batch.insert(APPLIED_INDEX_KEY, &applied_index.to_be_bytes());
            handle
                .tree
                .apply_batch(sled_batch)
                .map_err(StorageError::sled("apply batch"))
        })?
        .ok_or_else(|| unreachable_missing(shard))?
    }

    /// The value of `key` in `space` of `shard`.
    ///
    /// # Errors
    ///
    /// [`StorageError::InvalidArgument`] if the store does not hold the shard
    /// or its import is incomplete; [`StorageError::Sled`] if sled fails.
    pub fn get(&self, shard: ShardId, space: Space, key: &[u8]) -> Result<Option<IVec>> {
        let tree = self.ready_tree(shard)?;
        let mut prefixed = Vec::with_capacity(key.len() + 1);
        prefixed.push(space.prefix());
        prefixed.extend_from_slice(key);
        tree.get(&prefixed).map_err(StorageError::sled("get"))
    }

    /// Up to `limit` key/value pairs of `space` of `shard` whose keys fall in
    /// `range`, in key order, keys without their space prefix.
    ///
    /// `range` is `..` or a `(Bound<&[u8]>, Bound<&[u8]>)` pair.
    ///
    /// # Errors
    ///
    /// [`StorageError::InvalidArgument`] if the store does not hold the shard
    /// or its import is incomplete; [`StorageError::Sled`] if sled fails.
    pub fn scan<R: RangeBounds<[u8]>>(
        &self,
        shard: ShardId,
        space: Space,
        range: R,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let tree = self.ready_tree(shard)?;
        let prefix = space.prefix();
        let with_prefix = |key: &[u8]| {
            let mut k = Vec::with_capacity(key.len() + 1);
            k.push(prefix);
            k.extend_from_slice(key);
            k
        };
        let lo = match range.start_bound() {
            Bound::Included(k) => Bound::Included(with_prefix(k)),
            Bound::Excluded(k) => Bound::Excluded(with_prefix(k)),
            Bound::Unbounded => Bound::Included(vec![prefix]),
        };
        let hi = match range.end_bound() {
            Bound::Included(k) => Bound::Included(with_prefix(k)),
            Bound::Excluded(k) => Bound::Excluded(with_prefix(k)),
            // Every key of the space is below the next prefix byte.
            Bound::Unbounded => Bound::Excluded(vec![prefix + 1]),
        };
        if range_is_empty(&lo, &hi) || limit == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for entry in tree.range::<Vec<u8>, _>((lo, hi)) {
            let (key, value) = entry.map_err(StorageError::sled("scan"))?;
            out.push((key[1..].to_vec(), value.to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Makes everything applied, imported or dropped before this call durable.
    ///
    /// When it returns, every [`apply`](Self::apply) that returned before it
    /// was called survives a crash, so the log entries up to the applied index
    /// read before the call may be compacted. Never compact the log on the
    /// strength of an apply alone: sled writes are not durable until flushed.
    ///
    /// # Errors
    ///
    /// [`StorageError::Sled`] if the write or fsync fails; what is durable is
    /// then unknown and the node should restart.
    pub fn flush(&self) -> Result<()> {
        self.db.flush().map_err(StorageError::sled("flush"))?;
        Ok(())
    }

    /// The [`ShardChecksum`] of the shard's [`Space::Data`] and [`Space::Aux`]
    /// contents. The applied index is not included, so two replicas holding
    /// the same contents compare equal whatever entries got them there.
    ///
    /// # Errors
    ///
    /// [`StorageError::InvalidArgument`] if the store does not hold the shard
    /// or its import is incomplete; [`StorageError::Sled`] if sled fails.
    pub fn checksum(&self, shard: ShardId) -> Result<u32> {
        let tree = self.ready_tree(shard)?;
        let mut sum = ShardChecksum::new();
        for entry in tree.range([DATA_PREFIX]..[AUX_PREFIX + 1]) {
            let (key, value) = entry.map_err(StorageError::sled("checksum scan"))?;
            sum.update_prefixed(&key, &value);
        }
        Ok(sum.finish())
    }

    /// Streams the shard's records, [`Space::Data`] then [`Space::Aux`], each
    /// in key order, straight from sled (the shard is never held in memory).
    ///
    /// Not a snapshot: stop applying to the shard while exporting it. The
    /// applied index is not part of the stream; the receiver passes it to
    /// [`import`](Self::import).
    ///
    /// # Errors
    ///
    /// [`StorageError::InvalidArgument`] if the store does not hold the shard
    /// or its import is incomplete. Read errors are yielded by the iterator,
    /// which then ends.
    pub fn export(&self, shard: ShardId) -> Result<ShardExport> {
        let tree = self.ready_tree(shard)?;
        Ok(ShardExport {
            iter: tree.range([DATA_PREFIX]..[AUX_PREFIX + 1]),
            shard,
            path: self.path.clone(),
            done: false,
        })
    }

    /// Replaces the shard's contents with `records` and sets its applied index
    /// to `applied_index`, then flushes.
    ///
    /// Crash-safe: first a durable batch sets the import marker and removes
    /// the applied index; then the old contents are deleted and the records
    /// written in batches of at most 1,000 records or about 1 MiB; finally one
    /// batch writes the applied index and removes the marker. If the process
    /// dies (or `records` yields an error) in between, the shard stays marked
    /// incomplete, across restarts, until an import of it succeeds or it is
    /// dropped.
    ///
    /// Records must come in the order [`export`](Self::export) yields them
    /// (strictly increasing space, then key): a duplicated or reordered stream
    /// is refused rather than silently merged.
    ///
    /// # Errors
    ///
    /// The first error yielded by `records`; [`StorageError::InvalidArgument`]
    /// if the records are out of order; [`StorageError::Sled`] if sled fails.
    /// In every case the shard is left marked incomplete.
    pub fn import<I>(&self, shard: ShardId, applied_index: u64, records: I) -> Result<ImportReport>
    where
        I: IntoIterator<Item = Result<ExportRecord>>,
    {
        let report = self
            .with_writer(shard, true, |handle, _| {
                self.import_locked(shard, &handle.tree, applied_index, records.into_iter())
            })?
            .ok_or_else(|| unreachable_missing(shard))??;
        tracing::info!(
            shard = format_args!("{shard:016x}"),
            applied_index,
            records = report.records,
            bytes = report.bytes,
            "imported shard"
        );
        Ok(report)
    }

    fn import_locked(
        &self,
        shard: ShardId,
        tree: &Tree,
        applied_index: u64,
        records: impl Iterator<Item = Result<ExportRecord>>,
    ) -> Result<ImportReport> {
        // 1. Mark the shard incomplete, durably, before destroying anything.
        let mut batch = Batch::default();
        batch.insert(IMPORT_MARKER_KEY, &applied_index.to_be_bytes());
        batch.remove(APPLIED_INDEX_KEY);
        tree.apply_batch(batch)
            .map_err(StorageError::sled("write import marker"))?;
        self.flush()?;

        // 2. Remove the old contents (everything above the internal keys).
        loop {
            let mut batch = Batch::default();
            let mut n = 0;
            for key in tree
                .range([DATA_PREFIX]..)
                .keys()
                .take(IMPORT_BATCH_MAX_RECORDS)
            {
                batch.remove(key.map_err(StorageError::sled("scan old shard contents"))?);
                n += 1;
            }
            if n == 0 {
                break;
            }
            tree.apply_batch(batch)
                .map_err(StorageError::sled("clear shard"))?;
        }

        // 3. The records, in bounded batches.
        let mut report = ImportReport {
            records: 0,
            bytes: 0,
            batches: 0,
            checksum: 0,
        };
        let mut sum = ShardChecksum::new();
        let mut prev: Vec<u8> = Vec::new();
        let mut cur: Vec<u8> = Vec::new();
        let mut batch = Batch::default();
        let (mut batch_records, mut batch_bytes) = (0usize, 0usize);
        for record in records {
            let record = record?;
            cur.clear();
            cur.push(record.space.prefix());
            cur.extend_from_slice(&record.key);
            if report.records > 0 && cur <= prev {
                return Err(StorageError::InvalidArgument(format!(
                    "shard {shard:016x}: import record {} ({:?} key {:?}) is not after the \
                     previous one; records must come in export order without duplicates",
                    report.records, record.space, record.key
                )));
            }
            sum.update(record.space, &record.key, &record.value);
            report.records += 1;
            report.bytes += len_u64(record.key.len() + record.value.len());
            batch_records += 1;
            batch_bytes += cur.len() + record.value.len();
            batch.insert(cur.as_slice(), record.value);
            std::mem::swap(&mut prev, &mut cur);
            if batch_records >= IMPORT_BATCH_MAX_RECORDS || batch_bytes >= IMPORT_BATCH_MAX_BYTES {
                tree.apply_batch(std::mem::take(&mut batch))
                    .map_err(StorageError::sled("import batch"))?;
                report.batches += 1;
                (batch_records, batch_bytes) = (0, 0);
            }
        }
        if batch_records > 0 {
            tree.apply_batch(batch)
                .map_err(StorageError::sled("import batch"))?;
            report.batches += 1;
        }

        // 4. Complete: the applied index and the marker's removal in one batch.
        let mut batch = Batch::default();
        batch.insert(APPLIED_INDEX_KEY, &applied_index.to_be_bytes());
        batch.remove(IMPORT_MARKER_KEY);
        tree.apply_batch(batch)
            .map_err(StorageError::sled("complete import"))?;
        self.flush()?;
        report.checksum = sum.finish();
        Ok(report)
    }

    /// Removes the shard and all its contents (a no-op if the store does not
    /// hold it). Durable after the next [`flush`](Self::flush); a crash before
    /// that may bring the shard back as it was.
    ///
    /// Waits for the shard's writers, but not for its readers: do not drop a
    /// shard that is being scanned or exported (sled must not use a tree after
    /// dropping it).
    ///
    /// # Errors
    ///
    /// [`StorageError::Sled`] if sled fails.
    pub fn drop_shard(&self, shard: ShardId) -> Result<()> {
        self.with_writer(shard, false, |_, state| {
            self.db
                .drop_tree(shard_tree_name(shard))
                .map_err(StorageError::sled("drop tree"))?;
            state.dropped = true;
            self.write_map().remove(&shard);
            tracing::info!(shard = format_args!("{shard:016x}"), "dropped shard");
            Ok(())
        })?
        .unwrap_or(Ok(()))
    }

    /// Runs `f` with the shard's writer lock held; `None` if the shard is not
    /// in the map and `create` is false.
    fn with_writer<T>(
        &self,
        shard: ShardId,
        create: bool,
        f: impl FnOnce(&ShardHandle, &mut WriterState) -> T,
    ) -> Result<Option<T>> {
        loop {
            let handle = match self.handle(shard) {
                Some(handle) => handle,
                None if create => self.create_handle(shard)?,
                None => return Ok(None),
            };
            let mut state: MutexGuard<'_, WriterState> =
                handle.writer.lock().unwrap_or_else(PoisonError::into_inner);
            if state.dropped {
                // Dropped while we waited: look again (and maybe create anew).
                continue;
            }
            return Ok(Some(f(&handle, &mut state)));
        }
    }

    fn handle(&self, shard: ShardId) -> Option<Arc<ShardHandle>> {
        self.read_map().get(&shard).cloned()
    }

    fn create_handle(&self, shard: ShardId) -> Result<Arc<ShardHandle>> {
        let mut map = self.write_map();
        if let Some(handle) = map.get(&shard) {
            return Ok(Arc::clone(handle));
        }
        let tree = self
            .db
            .open_tree(shard_tree_name(shard))
            .map_err(StorageError::sled("create shard tree"))?;
        let handle = Arc::new(ShardHandle {
            tree,
            writer: Mutex::new(WriterState { dropped: false }),
        });
        map.insert(shard, Arc::clone(&handle));
        Ok(handle)
    }

    /// The shard's tree if the shard is complete, for readers.
    fn ready_tree(&self, shard: ShardId) -> Result<Tree> {
        let Some(handle) = self.handle(shard) else {
            return Err(not_held(shard));
        };
        match self.read_state(shard, &handle.tree)? {
            ShardState::Ready { .. } => Ok(handle.tree.clone()),
            ShardState::Absent => Err(not_held(shard)),
            ShardState::Importing { target } => Err(incomplete_import(shard, target)),
        }
    }

    fn read_state(&self, shard: ShardId, tree: &Tree) -> Result<ShardState> {
        if let Some(bytes) = tree
            .get(IMPORT_MARKER_KEY)
            .map_err(StorageError::sled("read import marker"))?
        {
            let target = decode_u64(&bytes)
                .ok_or_else(|| self.corrupt(shard, "import marker is not 8 bytes"))?;
            return Ok(ShardState::Importing { target });
        }
        match tree
            .get(APPLIED_INDEX_KEY)
            .map_err(StorageError::sled("read applied index"))?
        {
            Some(bytes) => {
                let applied = decode_u64(&bytes)
                    .ok_or_else(|| self.corrupt(shard, "applied index is not 8 bytes"))?;
                Ok(ShardState::Ready { applied })
            }
            None => Ok(ShardState::Absent),
        }
    }

    fn corrupt(&self, shard: ShardId, reason: impl fmt::Display) -> StorageError {
        // sled exposes no byte offsets: name the tree instead.
        StorageError::corruption(
            &self.path,
            0,
            format!("sled tree {SHARD_TREE_PREFIX}{shard:016x}: {reason}"),
        )
    }

    fn read_map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<ShardId, Arc<ShardHandle>>> {
        // The map is only ever replaced entry by entry: a panic elsewhere
        // cannot leave it half-updated.
        self.shards.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_map(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<ShardId, Arc<ShardHandle>>> {
        self.shards.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The stream of one shard's records; see [`SledStore::export`].
pub struct ShardExport {
    iter: sled::Iter,
    shard: ShardId,
    path: PathBuf,
    done: bool,
}

impl fmt::Debug for ShardExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardExport")
            .field("shard", &self.shard)
            .finish_non_exhaustive()
    }
}

impl Iterator for ShardExport {
    type Item = Result<ExportRecord>;

    fn next(&mut self) -> Option<Result<ExportRecord>> {
        if self.done {
            return None;
        }
        let item = match self.iter.next()? {
            Ok((key, value)) => match key.split_first() {
                Some((&prefix, rest)) => match Space::from_prefix(prefix) {
                    Some(space) => Ok(ExportRecord {
                        space,
                        key: rest.to_vec(),
                        value: value.to_vec(),
                    }),
                    None => Err(self.corrupt(format!("key {key:?} in the export range"))),
                },
                None => Err(self.corrupt("empty key in the export range")),
            },
            Err(e) => Err(StorageError::sled("export scan")(e)),
        };
        self.done = item.is_err();
        Some(item)
    }
}

impl ShardExport {
    fn corrupt(&self, reason: impl fmt::Display) -> StorageError {
        StorageError::corruption(
            &self.path,
            0,
            format!("sled tree {SHARD_TREE_PREFIX}{:016x}: {reason}", self.shard),
        )
    }
}

impl std::iter::FusedIterator for ShardExport {}

/// The sled tree name of a shard: `shard/` and 16 lowercase hex digits, so
/// that tree names sort like shard ids.
fn shard_tree_name(shard: ShardId) -> String {
    format!("{SHARD_TREE_PREFIX}{shard:016x}")
}

/// Inverse of [`shard_tree_name`] (after the prefix); only the canonical form.
fn parse_shard_id(suffix: &[u8]) -> Option<ShardId> {
    if suffix.len() != 16
        || !suffix
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(suffix).ok()?, 16).ok()
}

/// sled 0.34 reports a held lock file only as an `Io` error of kind `Other`
/// with this message (sled is pinned to that exact version).
fn is_lock_conflict(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

fn decode_u64(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

fn len_u64(len: usize) -> u64 {
    // usize is at most 64 bits on every platform sled supports.
    u64::try_from(len).unwrap_or(u64::MAX)
}

/// `true` if no key can be in `(lo, hi)`.
fn range_is_empty(lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>) -> bool {
    match (lo, hi) {
        (Bound::Included(a), Bound::Included(b)) => a > b,
        (Bound::Included(a) | Bound::Excluded(a), Bound::Excluded(b))
        | (Bound::Excluded(a), Bound::Included(b)) => a >= b,
        _ => false,
    }
}

fn not_held(shard: ShardId) -> StorageError {
    StorageError::InvalidArgument(format!("shard {shard:016x} is not in this store"))
}

fn incomplete_import(shard: ShardId, target: u64) -> StorageError {
    StorageError::InvalidArgument(format!(
        "shard {shard:016x} has an incomplete import (to applied index {target}); re-run the \
         import or drop the shard"
    ))
}

/// `with_writer(.., create = true, ..)` always runs its closure.
fn unreachable_missing(shard: ShardId) -> StorageError {
    StorageError::InvalidArgument(format!("shard {shard:016x} vanished while being written"))
}
