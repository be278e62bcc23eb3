//! Read-only inspection of a node's write-ahead log: the library behind
//! `kvctl wal dump` and `kvctl wal verify`.
//!
//! A node's WAL (`DATA_DIR/wal/`, see `docs/disk-format.md`) holds the
//! acceptor records `paxos-log` writes: promises, accepted values,
//! values learned as chosen, and compaction checkpoints. Each accepted or
//! chosen value is a no-op, a membership change, or a batch of opaque
//! commands, each prefixed by the driver's 16-byte proposal tag; after the
//! tag, a command is a `shardkv::wire::Command` in a group replica and a
//! `controller::wire::ControllerCommand` in a controller replica.
//!
//! * [`WalSource::resolve`] turns what a person typed (a WAL directory, a
//!   data directory holding `wal/`, a node directory holding `data/wal/`,
//!   or one segment file) into what to read.
//! * [`walk`] reads the segments oldest first and hands every valid record
//!   to a visitor, with the file and byte offset it sits at. [`verify`]
//!   and [`dump`] are the two visitors the command line uses.
//! * [`decode_record`] and [`decode_command`] decode a payload; [`record_text`]
//!   and [`record_json`] render one record.
//!
//! # The same rules as recovery
//!
//! Each segment is validated by `storage`'s own scanner
//! ([`storage::wal::segment::scan_segment`]), the function `Wal::open` runs
//! at a node's start, with the same "may be torn" flag (only the last
//! segment). The two checks across segments (the header's first LSN equals
//! the file name's; each segment starts right after the previous one ends)
//! are those of `Wal::open`, and a record whose checksum passes but which
//! does not decode as an acceptor record fails as it does when the node
//! opens its acceptor store. So `verify` reports corruption exactly when a
//! node would refuse to start, naming the same file and offset, and a torn
//! tail exactly when the node would cut one off. `storage`'s `WalReader`
//! is not used because it reads a whole directory only (not one segment
//! file), does not say where each record sits, and stops at the first
//! segment a running node compacts away while it reads.
//!
//! # Read-only, also on a running node
//!
//! Nothing here writes, truncates, creates or locks anything: files are
//! opened for reading only and the data directory's `LOCK` is never
//! touched. On a running node the last segment may grow while it is read:
//! what is read is a prefix of it, and a record cut off at its end is a
//! torn tail (reported as a note, not an error). A segment the node
//! compacts away between the listing and its read is skipped and listed in
//! [`WalSummary::vanished_segments`]. Memory is bounded by one segment
//! (at most [`SEGMENT_READ_BYTES_MAX`]) plus one rendered record.
//!
//! # Output
//!
//! Text mode shows keys and values as quoted, escaped UTF-8 when they are
//! valid UTF-8 and as `0x` hex otherwise, cut at
//! [`TEXT_BYTES_SHOWN_MAX`] bytes with `... (+N bytes)` saying how much
//! was left out. JSON mode (one object per record) gives every byte string
//! in full and losslessly: a field `key` holds the UTF-8 text when the
//! bytes are valid UTF-8; otherwise the field is named `key_hex` and holds
//! lowercase hex. Exactly one of the two is present.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use controller::wire::{ControllerCommand, ControllerOp};
use controller::Configuration;
use paxos_log::driver::split_command_tag;
use paxos_log::store::wal::decode_acceptor_record;
use paxos_log::{Ballot, PersistOp, Value};
use serde_json::{json, Map, Value as Json};
use shardkv::wire::{Command as KvCommand, Cursor, RecordSpace, WriteOp};
use storage::wal::segment::{
    parse_segment_file_name, scan_segment, SegmentEnd, SEGMENT_MAGIC, SEGMENT_TMP_SUFFIX,
};
use storage::wal::{TornTail, WalOptions};
use storage::StorageError;

/// Longest key or value shown in text mode, in bytes (JSON mode shows all).
pub const TEXT_BYTES_SHOWN_MAX: usize = 64;

/// Largest segment file read. `kvd` writes segments of at most 64 MiB plus
/// one record of at most 16 MiB; anything far larger is not a segment it
/// wrote, and reading it whole would only exhaust memory.
pub const SEGMENT_READ_BYTES_MAX: u64 = 1 << 30;

/// Most shards of a configuration listed in text mode.
const TEXT_SHARDS_SHOWN_MAX: usize = 16;

/// Why a WAL could not be read, or where it is damaged.
#[derive(Debug, thiserror::Error)]
pub enum WalInspectError {
    /// The path does not exist.
    #[error(
        "{}: no such file or directory; give a node's WAL directory, its data directory \
         (holding wal/), its node directory (holding data/wal/), or one segment file",
        path.display()
    )]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// The path exists but holds no WAL.
    #[error(
        "{}: not a WAL: {reason}; give a node's WAL directory, its data directory \
         (holding wal/), its node directory (holding data/wal/), or one segment file",
        path.display()
    )]
    NotAWal {
        /// The path given.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// Reading a file or directory failed.
    #[error("reading {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A record (or segment header) fails validation where a crash cannot
    /// explain it: the node refuses to start on this WAL.
    #[error(
        "corruption in {} at byte offset {offset}: {reason}; the node will refuse to start: \
         rebuild the replica from its peers (or restore the file from a backup)",
        path.display()
    )]
    Corruption {
        /// The damaged segment file.
        path: PathBuf,
        /// Where the bad record (or header, at 0) starts.
        offset: u64,
        /// What failed validation.
        reason: String,
    },
    /// A segment of a format version this build does not read.
    #[error(
        "{} has WAL format version {found}, this build reads version {supported}; use a \
         kvctl of the same release as the node",
        path.display()
    )]
    FormatVersion {
        /// The segment file.
        path: PathBuf,
        /// The version in its header.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// A record whose checksum is valid but which is not an acceptor record
    /// this build reads.
    #[error(
        "record LSN {lsn} in {} at byte offset {offset}: its checksum is valid but it is not \
         an acceptor record this build reads ({reason}); the node will refuse to start: it was \
         written by another release, or the replica must be rebuilt from its peers",
        path.display()
    )]
    Undecodable {
        /// The segment file.
        path: PathBuf,
        /// Where the record's frame starts.
        offset: u64,
        /// Its LSN.
        lsn: u64,
        /// Why it does not decode.
        reason: String,
    },
    /// Writing the dump failed (e.g. the reader of a pipe went away).
    #[error("writing the dump: {0}")]
    Output(#[source] io::Error),
    /// Any other storage failure.
    #[error(transparent)]
    Storage(StorageError),
}

impl WalInspectError {
    /// The file and byte offset of the damage, for errors that have one.
    pub fn location(&self) -> Option<(&Path, u64)> {
        match self {
            WalInspectError::Corruption { path, offset, .. }
            | WalInspectError::Undecodable { path, offset, .. } => Some((path, *offset)),
            WalInspectError::FormatVersion { path, .. } => Some((path, 8)),
            _ => None,
        }
    }
}

impl From<StorageError> for WalInspectError {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::Corruption {
                path,
                offset,
                reason,
            } => WalInspectError::Corruption {
                path,
                offset,
                reason,
            },
            StorageError::FormatVersion {
                path,
                found,
                supported,
            } => WalInspectError::FormatVersion {
                path,
                found,
                supported,
            },
            other => WalInspectError::Storage(other),
        }
    }
}

/// What a path given on the command line turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalSource {
    /// A WAL directory, given as such.
    WalDir(PathBuf),
    /// A data directory: its `wal/` is read.
    DataDir {
        /// The data directory given.
        data_dir: PathBuf,
        /// Its `wal/`.
        wal_dir: PathBuf,
    },
    /// A node directory (where `kvd.toml` lives): its `data/wal/` is read.
    NodeDir {
        /// The node directory given.
        node_dir: PathBuf,
        /// Its `data/wal/`.
        wal_dir: PathBuf,
    },
    /// One segment file.
    Segment(PathBuf),
}

impl WalSource {
    /// Decides what `path` is: a file is a segment; a directory holding
    /// segment files is a WAL directory; otherwise a directory holding
    /// `wal/` is a data directory, and one holding `data/wal/` a node
    /// directory.
    pub fn resolve(path: &Path) -> Result<WalSource, WalInspectError> {
        let metadata = match std::fs::metadata(path) {
            Ok(metadata) => metadata,
            Err(source) if source.kind() == io::ErrorKind::NotFound => {
                return Err(WalInspectError::NotFound {
                    path: path.to_path_buf(),
                })
            }
            Err(source) => {
                return Err(WalInspectError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        if !metadata.is_dir() {
            return Ok(WalSource::Segment(path.to_path_buf()));
        }
        if !list_dir(path)?.segments.is_empty() {
            return Ok(WalSource::WalDir(path.to_path_buf()));
        }
        let wal_dir = path.join("wal");
        if wal_dir.is_dir() {
            return Ok(WalSource::DataDir {
                data_dir: path.to_path_buf(),
                wal_dir,
            });
        }
        let wal_dir = path.join("data").join("wal");
        if wal_dir.is_dir() {
            return Ok(WalSource::NodeDir {
                node_dir: path.to_path_buf(),
                wal_dir,
            });
        }
        Err(WalInspectError::NotAWal {
            path: path.to_path_buf(),
            reason: "a directory with no segment file (20 digits and .wal), no wal/ and no \
                     data/wal/"
                .to_string(),
        })
    }

    /// The WAL directory read (for a segment, the directory it is in).
    pub fn wal_dir(&self) -> PathBuf {
        match self {
            WalSource::WalDir(wal_dir)
            | WalSource::DataDir { wal_dir, .. }
            | WalSource::NodeDir { wal_dir, .. } => wal_dir.clone(),
            WalSource::Segment(path) => path
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
        }
    }

    /// What was read, for a person: e.g. `WAL directory X (in data
    /// directory Y)`.
    pub fn describe(&self) -> String {
        match self {
            WalSource::WalDir(dir) => format!("WAL directory {}", dir.display()),
            WalSource::DataDir { data_dir, wal_dir } => format!(
                "WAL directory {} (of data directory {})",
                wal_dir.display(),
                data_dir.display()
            ),
            WalSource::NodeDir { node_dir, wal_dir } => format!(
                "WAL directory {} (of node directory {})",
                wal_dir.display(),
                node_dir.display()
            ),
            WalSource::Segment(path) => format!("WAL segment {}", path.display()),
        }
    }
}

/// What a pass over a WAL found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalSummary {
    /// Segments read.
    pub segment_count: usize,
    /// Valid records read.
    pub record_count: u64,
    /// First and last LSN read (`None` if no record was read).
    pub lsn_range: Option<(u64, u64)>,
    /// Where the last segment ends in a partial record: a write in
    /// progress (running node) or cut short by a crash (the node truncates
    /// it when it starts). Not corruption.
    pub torn_tail: Option<TornTail>,
    /// Segments listed but gone when read: a running node compacted them.
    pub vanished_segments: Vec<PathBuf>,
    /// `*.wal.tmp` files: a segment creation was in progress or a crash
    /// interrupted it (the node removes them when it starts).
    pub tmp_files: Vec<PathBuf>,
}

impl WalSummary {
    /// One line for a person: counts and LSN range.
    pub fn counts_line(&self) -> String {
        let range = match self.lsn_range {
            Some((first, last)) => format!(", LSN {first}..={last}"),
            None => String::new(),
        };
        format!(
            "{} segment(s), {} record(s){range}",
            self.segment_count, self.record_count
        )
    }

    /// Notes worth a person's attention (torn tail, vanished segments,
    /// temporary files), one line each.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some(torn) = &self.torn_tail {
            notes.push(format!(
                "note: the last segment {} ends in a partial record at byte offset {} ({} \
                 bytes: {}): a write in progress or cut short by a crash, not corruption; the \
                 node cuts it off when it starts",
                torn.path.display(),
                torn.offset,
                torn.discarded_bytes,
                torn.reason
            ));
        }
        for path in &self.vanished_segments {
            notes.push(format!(
                "note: segment {} was removed while being read (the running node compacted \
                 it): its records were not read",
                path.display()
            ));
        }
        for path in &self.tmp_files {
            notes.push(format!(
                "note: {} is a segment being created, or one a crash interrupted (the node \
                 removes it when it starts); not read",
                path.display()
            ));
        }
        notes
    }

    /// The summary as a JSON object.
    pub fn to_json(&self) -> Json {
        json!({
            "segments": self.segment_count,
            "records": self.record_count,
            "first_lsn": self.lsn_range.map(|(first, _)| first),
            "last_lsn": self.lsn_range.map(|(_, last)| last),
            "torn_tail": self.torn_tail.as_ref().map(|torn| json!({
                "file": torn.path.display().to_string(),
                "offset": torn.offset,
                "bytes": torn.discarded_bytes,
                "reason": torn.reason,
            })),
            "vanished_segments": self.vanished_segments.iter()
                .map(|path| path.display().to_string()).collect::<Vec<_>>(),
            "tmp_files": self.tmp_files.iter()
                .map(|path| path.display().to_string()).collect::<Vec<_>>(),
        })
    }
}

/// One valid record, where it sits, and its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Its LSN.
    pub lsn: u64,
    /// The segment file.
    pub path: &'a Path,
    /// Byte offset of its frame in the file.
    pub offset: u64,
    /// The payload (an acceptor record).
    pub payload: &'a [u8],
}

/// The segment files of a WAL directory, oldest first, and the leftovers of
/// interrupted segment creations.
struct Listing {
    segments: Vec<(u64, PathBuf)>,
    tmp_files: Vec<PathBuf>,
}

fn list_dir(dir: &Path) -> Result<Listing, WalInspectError> {
    let io_error = |source| WalInspectError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut listing = Listing {
        segments: Vec::new(),
        tmp_files: Vec::new(),
    };
    for entry in std::fs::read_dir(dir).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if let Some(lsn) = parse_segment_file_name(&name) {
            listing.segments.push((lsn, entry.path()));
        } else if name.ends_with(SEGMENT_TMP_SUFFIX) {
            listing.tmp_files.push(entry.path());
        }
    }
    listing.segments.sort();
    listing.tmp_files.sort();
    Ok(listing)
}

/// Reads one segment file whole (read-only), bounded by
/// [`SEGMENT_READ_BYTES_MAX`]. `Ok(None)`: it does not exist (any more).
fn read_segment(path: &Path) -> Result<Option<Vec<u8>>, WalInspectError> {
    let io_error = |source| WalInspectError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(source) if source.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io_error(source)),
    };
    let mut bytes = Vec::new();
    file.take(SEGMENT_READ_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > SEGMENT_READ_BYTES_MAX {
        return Err(WalInspectError::NotAWal {
            path: path.to_path_buf(),
            reason: format!(
                "larger than {SEGMENT_READ_BYTES_MAX} bytes, far above any segment kvd writes"
            ),
        });
    }
    Ok(Some(bytes))
}

/// One segment to read and how.
struct Planned {
    path: PathBuf,
    /// The first LSN its name says (`None`: not named like a segment).
    name_lsn: Option<u64>,
    /// Whether it is the last segment of its log (the only one that may end
    /// in a torn record).
    is_last: bool,
}

fn plan(source: &WalSource) -> Result<(Vec<Planned>, Vec<PathBuf>), WalInspectError> {
    if let WalSource::Segment(path) = source {
        let name_lsn = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(parse_segment_file_name);
        // A segment is the last of its log if no segment of its directory
        // starts later; a file not named like a segment stands alone (a
        // copy), and is read as the last one so a partial tail is a note.
        let is_last = match name_lsn {
            Some(lsn) => list_dir(&source.wal_dir())?
                .segments
                .iter()
                .all(|(other, _)| *other <= lsn),
            None => true,
        };
        let planned = Planned {
            path: path.clone(),
            name_lsn,
            is_last,
        };
        return Ok((vec![planned], Vec::new()));
    }
    let wal_dir = source.wal_dir();
    let listing = list_dir(&wal_dir)?;
    if listing.segments.is_empty() {
        return Err(WalInspectError::NotAWal {
            path: wal_dir,
            reason: "no segment file (20 digits and .wal) in this directory".to_string(),
        });
    }
    let count = listing.segments.len();
    let planned = listing
        .segments
        .into_iter()
        .enumerate()
        .map(|(index, (lsn, path))| Planned {
            path,
            name_lsn: Some(lsn),
            is_last: index + 1 == count,
        })
        .collect();
    Ok((planned, listing.tmp_files))
}

/// Reads the WAL of `source` oldest segment first, validating it with the
/// rules of recovery (see the module docs), and calls `visit` on every
/// valid record in LSN order. The first error (damage, or one `visit`
/// returns) ends the pass.
///
/// In a damaged segment, the valid records before the damage are visited
/// before the corruption is returned (a dump shows what is readable); an
/// error `visit` returns for them is dropped in favour of the corruption,
/// which is what a starting node reports.
pub fn walk(
    source: &WalSource,
    mut visit: impl FnMut(&RecordRef<'_>) -> Result<(), WalInspectError>,
) -> Result<WalSummary, WalInspectError> {
    let record_size_bytes_max = WalOptions::default().record_size_bytes_max;
    let (planned, tmp_files) = plan(source)?;
    if let WalSource::Segment(path) = source {
        check_magic(path)?;
    }
    let mut summary = WalSummary {
        tmp_files,
        ..WalSummary::default()
    };
    // The LSN the next segment must start at (`None`: not known yet).
    let mut expected_first: Option<u64> = None;
    for segment in &planned {
        let path = segment.path.as_path();
        let Some(bytes) = read_segment(path)? else {
            if matches!(source, WalSource::Segment(_)) {
                return Err(WalInspectError::NotFound {
                    path: path.to_path_buf(),
                });
            }
            // Compaction removes segments oldest first; whatever follows
            // starts a new contiguous run.
            summary.vanished_segments.push(path.to_path_buf());
            expected_first = None;
            continue;
        };
        let scan = match scan_segment(&bytes, path, segment.is_last, record_size_bytes_max) {
            Ok(scan) => scan,
            Err(error) => {
                visit_prefix(&bytes, path, &error, record_size_bytes_max, &mut visit);
                return Err(error.into());
            }
        };
        if let Some(name_lsn) = segment.name_lsn {
            if scan.first_lsn != name_lsn {
                return Err(WalInspectError::Corruption {
                    path: path.to_path_buf(),
                    offset: 16,
                    reason: format!(
                        "header says first LSN {}, file name says {name_lsn}",
                        scan.first_lsn
                    ),
                });
            }
        }
        if let Some(expected) = expected_first {
            if scan.first_lsn != expected {
                return Err(WalInspectError::Corruption {
                    path: path.to_path_buf(),
                    offset: 0,
                    reason: format!(
                        "segment starts at LSN {} but the previous one ends at {}: records \
                         are missing",
                        scan.first_lsn,
                        expected.saturating_sub(1)
                    ),
                });
            }
        }
        expected_first = Some(scan.next_lsn());
        summary.segment_count += 1;
        for record in &scan.records {
            visit(&RecordRef {
                lsn: record.lsn,
                path,
                offset: record.offset,
                payload: record.payload(&bytes),
            })?;
            summary.record_count += 1;
            let first = summary.lsn_range.map_or(record.lsn, |(first, _)| first);
            summary.lsn_range = Some((first, record.lsn));
        }
        if let SegmentEnd::Torn { offset, reason } = scan.end {
            debug_assert!(
                segment.is_last,
                "the scanner reports torn tails only where allowed"
            );
            summary.torn_tail = Some(TornTail {
                path: path.to_path_buf(),
                offset,
                discarded_bytes: u64::try_from(bytes.len())
                    .unwrap_or(u64::MAX)
                    .saturating_sub(offset),
                reason,
            });
        }
    }
    Ok(summary)
}

/// One segment file given alone must at least look like one, so a wrong
/// file is named as such rather than as a corrupt segment.
fn check_magic(path: &Path) -> Result<(), WalInspectError> {
    let mut magic = [0u8; SEGMENT_MAGIC.len()];
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(source) if source.kind() == io::ErrorKind::NotFound => {
            return Err(WalInspectError::NotFound {
                path: path.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(WalInspectError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    match file.read_exact(&mut magic) {
        Ok(()) if magic == SEGMENT_MAGIC => Ok(()),
        Ok(()) => Err(WalInspectError::NotAWal {
            path: path.to_path_buf(),
            reason: "the file does not start with the segment magic SHARDWAL".to_string(),
        }),
        Err(source) if source.kind() == io::ErrorKind::UnexpectedEof => {
            Err(WalInspectError::NotAWal {
                path: path.to_path_buf(),
                reason: "the file is shorter than the segment magic SHARDWAL".to_string(),
            })
        }
        Err(source) => Err(WalInspectError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Visits the valid records of a segment before the damage `error` points
/// at: those bytes are a run of valid frames, which the scanner reads back
/// when told the (cut) segment may end anywhere.
fn visit_prefix(
    bytes: &[u8],
    path: &Path,
    error: &StorageError,
    record_size_bytes_max: u32,
    visit: &mut impl FnMut(&RecordRef<'_>) -> Result<(), WalInspectError>,
) {
    let StorageError::Corruption { offset, .. } = error else {
        return;
    };
    let Some(prefix) = usize::try_from(*offset)
        .ok()
        .and_then(|end| bytes.get(..end))
    else {
        return;
    };
    let Ok(scan) = scan_segment(prefix, path, true, record_size_bytes_max) else {
        return;
    };
    for record in &scan.records {
        let view = RecordRef {
            lsn: record.lsn,
            path,
            offset: record.offset,
            payload: record.payload(prefix),
        };
        if visit(&view).is_err() {
            return;
        }
    }
}

/// Checks every checksum of the WAL with the rules a starting node applies
/// (see the module docs), and that every record decodes. `Ok` may still
/// carry a torn tail: a note, not an error.
pub fn verify(source: &WalSource) -> Result<WalSummary, WalInspectError> {
    walk(source, |record| match decode_record(record.payload) {
        Ok(_) => Ok(()),
        Err(reason) => Err(WalInspectError::Undecodable {
            path: record.path.to_path_buf(),
            offset: record.offset,
            lsn: record.lsn,
            reason,
        }),
    })
}

/// How [`dump`] renders records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpFormat {
    /// For people: a line per record, a line per op, a line per command.
    Text,
    /// One JSON object per record, one per line, nothing else.
    JsonLines,
}

/// Writes every record of the WAL to `out` as it is read (one record in
/// memory at a time), then returns the summary. Records that do not decode
/// are shown with the reason, not treated as an error; damage ends the dump
/// with the error after the readable records before it.
pub fn dump(
    source: &WalSource,
    format: DumpFormat,
    out: &mut dyn Write,
) -> Result<WalSummary, WalInspectError> {
    let mut line = String::new();
    let mut current_segment: Option<PathBuf> = None;
    walk(source, |record| {
        line.clear();
        match format {
            DumpFormat::Text => {
                if current_segment.as_deref() != Some(record.path) {
                    current_segment = Some(record.path.to_path_buf());
                    let _ = writeln!(line, "== segment {}", record.path.display());
                }
                record_text(record, &mut line);
            }
            DumpFormat::JsonLines => {
                let _ = writeln!(line, "{}", record_json(record));
            }
        }
        out.write_all(line.as_bytes())
            .map_err(WalInspectError::Output)
    })
    .and_then(|summary| {
        out.flush().map_err(WalInspectError::Output)?;
        Ok(summary)
    })
}

/// Decodes a record payload into its acceptor ops (`paxos-log`'s format);
/// the error says why it is not one.
pub fn decode_record(payload: &[u8]) -> Result<Vec<PersistOp>, String> {
    decode_acceptor_record(payload)
}

/// One command of a value, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandView<'a> {
    /// The `paxos-log` driver's tag: the proposer id of the driver start
    /// that proposed the command, and its sequence number there. `None`:
    /// the bytes are shorter than a tag.
    pub tag: Option<(u64, u64)>,
    /// The application's command: the bytes after the tag (all of them
    /// without one).
    pub bytes: &'a [u8],
    /// What they decode as.
    pub kind: CommandKind,
}

/// What an application command decodes as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandKind {
    /// A group replica's command.
    Shardkv(KvCommand),
    /// A controller replica's command.
    Controller(ControllerCommand),
    /// Neither decoder accepted it (or it has no tag).
    Opaque,
}

/// Decodes one command of a value: strips the driver's tag
/// ([`paxos_log::driver::split_command_tag`]), then decodes the rest as a
/// shardkv command, else as a controller command, else leaves it opaque.
/// Both encodings reject trailing bytes, so a command of one kind
/// practically never decodes as the other.
pub fn decode_command(tagged: &[u8]) -> CommandView<'_> {
    let Some((proposer, seq, bytes)) = split_command_tag(tagged) else {
        return CommandView {
            tag: None,
            bytes: tagged,
            kind: CommandKind::Opaque,
        };
    };
    let kind = if let Ok(command) = shardkv::wire::decode::<KvCommand>(bytes) {
        CommandKind::Shardkv(command)
    } else if let Ok(command) = controller::wire::decode::<ControllerCommand>(bytes) {
        CommandKind::Controller(command)
    } else {
        CommandKind::Opaque
    };
    CommandView {
        tag: Some((proposer, seq)),
        bytes,
        kind,
    }
}

// ---------------------------------------------------------------- text ----

/// Appends the text rendering of one record to `out`: a line for the
/// record, then an indented line per op and per command.
pub fn record_text(record: &RecordRef<'_>, out: &mut String) {
    let file = record.path.file_name().map_or_else(
        || record.path.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    );
    let _ = write!(
        out,
        "lsn {} @ {file}:{} ({} bytes): ",
        record.lsn,
        record.offset,
        record.payload.len()
    );
    let ops = match decode_record(record.payload) {
        Ok(ops) => ops,
        Err(reason) => {
            let _ = writeln!(
                out,
                "not an acceptor record ({reason}): {}",
                text_bytes(record.payload)
            );
            return;
        }
    };
    let _ = writeln!(out, "{} op(s)", ops.len());
    for op in &ops {
        match op {
            PersistOp::Promise { ballot } => {
                let _ = writeln!(out, "  promise ballot {ballot}");
            }
            PersistOp::Accept {
                slot,
                ballot,
                value,
            } => {
                let _ = write!(out, "  accept slot {slot} ballot {ballot}: ");
                value_text(value, out);
            }
            PersistOp::Chosen { slot, value } => {
                let _ = write!(out, "  chosen slot {slot}: ");
                value_text(value, out);
            }
            PersistOp::Checkpoint {
                promised,
                compacted_upto,
            } => {
                let _ = writeln!(
                    out,
                    "  checkpoint promised {promised} compacted_upto slot {compacted_upto}"
                );
            }
        }
    }
}

fn value_text(value: &Value, out: &mut String) {
    match value {
        Value::Noop => {
            let _ = writeln!(out, "noop");
        }
        Value::Reconfigure(members) => {
            let members: Vec<String> = members.iter().map(|id| id.0.to_string()).collect();
            let _ = writeln!(
                out,
                "reconfigure: members [{}] (membership change)",
                members.join(", ")
            );
        }
        Value::Commands(commands) => {
            let _ = writeln!(out, "{} command(s)", commands.len());
            for (index, bytes) in commands.iter().enumerate() {
                let _ = write!(out, "    [{index}] ");
                command_text(bytes, out);
                out.push('\n');
            }
        }
    }
}

fn command_text(tagged: &[u8], out: &mut String) {
    let view = decode_command(tagged);
    if let Some((proposer, seq)) = view.tag {
        let _ = write!(out, "proposal {proposer:016x}#{seq}: ");
    }
    match view.kind {
        CommandKind::Shardkv(command) => kv_command_text(&command, out),
        CommandKind::Controller(ControllerCommand::Change { client_id, seq, op }) => {
            let _ = write!(out, "controller change client {client_id} seq {seq}: ");
            match op {
                ControllerOp::Join { groups } => {
                    let groups: Vec<String> = groups
                        .iter()
                        .map(|(gid, addrs)| format!("{gid} {addrs:?}"))
                        .collect();
                    let _ = write!(out, "join groups {{{}}}", groups.join(", "));
                }
                ControllerOp::Leave { gids } => {
                    let _ = write!(out, "leave groups {gids:?}");
                }
                ControllerOp::Move { shard, gid } => {
                    let _ = write!(out, "move shard {shard} to group {gid}");
                }
                ControllerOp::Split { key } => {
                    let _ = write!(out, "split at key {}", text_bytes(&key));
                }
                ControllerOp::SetAddresses { gid, addresses } => {
                    let _ = write!(out, "set group {gid} addresses {addresses:?}");
                }
            }
        }
        CommandKind::Opaque => {
            let why = if view.tag.is_some() {
                "neither a shardkv nor a controller command"
            } else {
                "shorter than the log's command tag"
            };
            let _ = write!(
                out,
                "{} opaque bytes ({why}): {}",
                view.bytes.len(),
                text_bytes(view.bytes)
            );
        }
    }
}

fn kv_command_text(command: &KvCommand, out: &mut String) {
    match command {
        KvCommand::Write {
            client_id,
            seq,
            stamp_ms,
            op,
            ..
        } => {
            let _ = write!(
                out,
                "write client {client_id} seq {seq} stamp_ms {stamp_ms}: "
            );
            match op {
                WriteOp::Put { key, value } => {
                    let _ = write!(out, "put {} = {}", text_bytes(key), text_bytes(value));
                }
                WriteOp::Append { key, value } => {
                    let _ = write!(out, "append {} += {}", text_bytes(key), text_bytes(value));
                }
                WriteOp::Delete { key } => {
                    let _ = write!(out, "delete {}", text_bytes(key));
                }
                WriteOp::Cas { key, expected, new } => {
                    let expected = expected
                        .as_deref()
                        .map_or_else(|| "(absent)".to_string(), text_bytes);
                    let _ = write!(
                        out,
                        "cas {} expected {expected} new {}",
                        text_bytes(key),
                        text_bytes(new)
                    );
                }
                WriteOp::PutHash { key, value } => {
                    let _ = write!(
                        out,
                        "put-hash {} with {}",
                        text_bytes(key),
                        text_bytes(value)
                    );
                }
            }
        }
        KvCommand::InstallConfig { config } => {
            let _ = write!(out, "install-config ");
            config_text(config, out);
        }
        KvCommand::InstallChunk {
            shard,
            num,
            after,
            records,
            done,
        } => {
            let after = after
                .as_ref()
                .map_or_else(|| "the start".to_string(), cursor_text);
            let bytes: usize = records.iter().map(|record| record.size_bytes()).sum();
            let _ = write!(
                out,
                "install-chunk shard {shard} config {num} after {after}: {} record(s), {bytes} \
                 bytes{}",
                records.len(),
                if *done { ", last chunk" } else { "" }
            );
            if let (Some(first), Some(last)) = (records.first(), records.last()) {
                let _ = write!(
                    out,
                    ", keys {} ..= {}",
                    text_bytes(&first.key),
                    text_bytes(&last.key)
                );
            }
        }
        KvCommand::DeleteShard { shard, num } => {
            let _ = write!(out, "delete-shard shard {shard} (lost in config {num})");
        }
        KvCommand::GcDone { shard, num } => {
            let _ = write!(out, "gc-done shard {shard} (gained in config {num})");
        }
    }
}

fn config_text(config: &Configuration, out: &mut String) {
    let groups: Vec<String> = config
        .groups
        .iter()
        .map(|(gid, addrs)| format!("{gid} {addrs:?}"))
        .collect();
    let _ = write!(
        out,
        "config {}: groups {{{}}}, {} shard(s):",
        config.num,
        groups.join(", "),
        config.shards.len()
    );
    for shard in config.shards.iter().take(TEXT_SHARDS_SHOWN_MAX) {
        let end = shard
            .end
            .as_deref()
            .map_or_else(|| "end".to_string(), text_bytes);
        let gid = shard
            .gid
            .map_or_else(|| "none".to_string(), |gid| gid.to_string());
        let _ = write!(
            out,
            " {} [{}, {end})->g{gid}",
            shard.id,
            text_bytes(&shard.start)
        );
    }
    if config.shards.len() > TEXT_SHARDS_SHOWN_MAX {
        let _ = write!(
            out,
            " ... (+{} shards)",
            config.shards.len() - TEXT_SHARDS_SHOWN_MAX
        );
    }
}

fn cursor_text(cursor: &Cursor) -> String {
    format!("{} {}", space_name(cursor.space), text_bytes(&cursor.key))
}

fn space_name(space: RecordSpace) -> &'static str {
    match space {
        RecordSpace::Data => "data",
        RecordSpace::Aux => "aux",
    }
}

/// Bytes for a person: quoted and escaped if UTF-8, else `0x` hex; at most
/// [`TEXT_BYTES_SHOWN_MAX`] bytes, then `... (+N bytes)`.
pub fn text_bytes(bytes: &[u8]) -> String {
    let mut shown = bytes.len().min(TEXT_BYTES_SHOWN_MAX);
    let mut text = match std::str::from_utf8(bytes) {
        Ok(all) => {
            // Cut at a character boundary at or below the limit.
            while !all.is_char_boundary(shown) {
                shown -= 1;
            }
            format!("\"{}\"", all[..shown].escape_debug())
        }
        Err(_) => format!("0x{}", hex(&bytes[..shown])),
    };
    if shown < bytes.len() {
        let _ = write!(text, " ... (+{} bytes)", bytes.len() - shown);
    }
    text
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

// ---------------------------------------------------------------- JSON ----

/// One record as a JSON object: `lsn`, `segment` (the file), `offset`,
/// `payload_bytes`, and `ops` (or, for a record that does not decode,
/// `ops: null`, `error` and `payload_hex`). Byte strings follow the
/// convention of the module docs.
pub fn record_json(record: &RecordRef<'_>) -> Json {
    let mut object = Map::new();
    object.insert("lsn".into(), json!(record.lsn));
    object.insert("segment".into(), json!(record.path.display().to_string()));
    object.insert("offset".into(), json!(record.offset));
    object.insert("payload_bytes".into(), json!(record.payload.len()));
    match decode_record(record.payload) {
        Ok(ops) => {
            object.insert("ops".into(), Json::Array(ops.iter().map(op_json).collect()));
        }
        Err(reason) => {
            object.insert("ops".into(), Json::Null);
            object.insert("error".into(), json!(reason));
            object.insert("payload_hex".into(), json!(hex(record.payload)));
        }
    }
    Json::Object(object)
}

fn ballot_json(ballot: &Ballot) -> Json {
    json!({"round": ballot.round, "node_id": ballot.node_id.0})
}

fn op_json(op: &PersistOp) -> Json {
    match op {
        PersistOp::Promise { ballot } => json!({"op": "promise", "ballot": ballot_json(ballot)}),
        PersistOp::Accept {
            slot,
            ballot,
            value,
        } => json!({
            "op": "accept",
            "slot": slot,
            "ballot": ballot_json(ballot),
            "value": value_json(value),
        }),
        PersistOp::Chosen { slot, value } => json!({
            "op": "chosen",
            "slot": slot,
            "value": value_json(value),
        }),
        PersistOp::Checkpoint {
            promised,
            compacted_upto,
        } => json!({
            "op": "checkpoint",
            "promised": ballot_json(promised),
            "compacted_upto": compacted_upto,
        }),
    }
}

fn value_json(value: &Value) -> Json {
    match value {
        Value::Noop => json!({"kind": "noop"}),
        Value::Reconfigure(members) => json!({
            "kind": "reconfigure",
            "members": members.iter().map(|id| id.0).collect::<Vec<_>>(),
        }),
        Value::Commands(commands) => json!({
            "kind": "commands",
            "commands": commands.iter().map(|bytes| command_json(bytes)).collect::<Vec<_>>(),
        }),
    }
}

/// Puts `bytes` under `field` (valid UTF-8) or `field_hex` (otherwise).
fn put_bytes(object: &mut Map<String, Json>, field: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => object.insert(field.to_string(), json!(text)),
        Err(_) => object.insert(format!("{field}_hex"), json!(hex(bytes))),
    };
}

fn command_json(tagged: &[u8]) -> Json {
    let mut object = Map::new();
    let view = decode_command(tagged);
    if let Some((proposer, seq)) = view.tag {
        // Hex: a random 64-bit id does not survive a JSON number in
        // JavaScript (53-bit integers).
        object.insert("proposer_id".into(), json!(format!("{proposer:016x}")));
        object.insert("proposal_seq".into(), json!(seq));
    }
    match view.kind {
        CommandKind::Shardkv(command) => {
            object.insert("decoder".into(), json!("shardkv"));
            kv_command_json(&command, &mut object);
        }
        CommandKind::Controller(ControllerCommand::Change { client_id, seq, op }) => {
            object.insert("decoder".into(), json!("controller"));
            object.insert("command".into(), json!("change"));
            object.insert("client_id".into(), json!(client_id));
            object.insert("seq".into(), json!(seq));
            match op {
                ControllerOp::Join { groups } => {
                    object.insert("op".into(), json!("join"));
                    object.insert("groups".into(), json!(groups));
                }
                ControllerOp::Leave { gids } => {
                    object.insert("op".into(), json!("leave"));
                    object.insert("gids".into(), json!(gids));
                }
                ControllerOp::Move { shard, gid } => {
                    object.insert("op".into(), json!("move"));
                    object.insert("shard".into(), json!(shard));
                    object.insert("gid".into(), json!(gid));
                }
                ControllerOp::Split { key } => {
                    object.insert("op".into(), json!("split"));
                    put_bytes(&mut object, "key", &key);
                }
                ControllerOp::SetAddresses { gid, addresses } => {
                    object.insert("op".into(), json!("set_addresses"));
                    object.insert("gid".into(), json!(gid));
                    object.insert("addresses".into(), json!(addresses));
                }
            }
        }
        CommandKind::Opaque => {
            object.insert("decoder".into(), json!("opaque"));
            object.insert("len_bytes".into(), json!(view.bytes.len()));
            object.insert("hex".into(), json!(hex(view.bytes)));
        }
    }
    Json::Object(object)
}

fn kv_command_json(command: &KvCommand, object: &mut Map<String, Json>) {
    match command {
        KvCommand::Write {
            client_id,
            seq,
            stamp_ms,
            limits,
            op,
        } => {
            object.insert("command".into(), json!("write"));
            object.insert("client_id".into(), json!(client_id));
            object.insert("seq".into(), json!(seq));
            object.insert("stamp_ms".into(), json!(stamp_ms));
            object.insert(
                "limits".into(),
                json!({
                    "value_bytes_max": limits.value_bytes_max,
                    "sessions_per_shard_max": limits.sessions_per_shard_max,
                    "session_ttl_ms": limits.session_ttl_ms,
                    "request_max_age_ms": limits.request_max_age_ms,
                }),
            );
            match op {
                WriteOp::Put { key, value } => {
                    object.insert("op".into(), json!("put"));
                    put_bytes(object, "key", key);
                    put_bytes(object, "value", value);
                }
                WriteOp::Append { key, value } => {
                    object.insert("op".into(), json!("append"));
                    put_bytes(object, "key", key);
                    put_bytes(object, "value", value);
                }
                WriteOp::Delete { key } => {
                    object.insert("op".into(), json!("delete"));
                    put_bytes(object, "key", key);
                }
                WriteOp::Cas { key, expected, new } => {
                    object.insert("op".into(), json!("cas"));
                    put_bytes(object, "key", key);
                    match expected {
                        Some(expected) => put_bytes(object, "expected", expected),
                        None => {
                            object.insert("expected".into(), Json::Null);
                        }
                    }
                    put_bytes(object, "new", new);
                }
                WriteOp::PutHash { key, value } => {
                    object.insert("op".into(), json!("put_hash"));
                    put_bytes(object, "key", key);
                    put_bytes(object, "value", value);
                }
            }
        }
        KvCommand::InstallConfig { config } => {
            object.insert("command".into(), json!("install_config"));
            object.insert("config".into(), config_json(config));
        }
        KvCommand::InstallChunk {
            shard,
            num,
            after,
            records,
            done,
        } => {
            object.insert("command".into(), json!("install_chunk"));
            object.insert("shard".into(), json!(shard));
            object.insert("num".into(), json!(num));
            object.insert(
                "after".into(),
                after.as_ref().map_or(Json::Null, |cursor| {
                    let mut after = Map::new();
                    after.insert("space".into(), json!(space_name(cursor.space)));
                    put_bytes(&mut after, "key", &cursor.key);
                    Json::Object(after)
                }),
            );
            let records: Vec<Json> = records
                .iter()
                .map(|record| {
                    let mut item = Map::new();
                    item.insert("space".into(), json!(space_name(record.space)));
                    put_bytes(&mut item, "key", &record.key);
                    put_bytes(&mut item, "value", &record.value);
                    Json::Object(item)
                })
                .collect();
            object.insert("records".into(), Json::Array(records));
            object.insert("done".into(), json!(done));
        }
        KvCommand::DeleteShard { shard, num } => {
            object.insert("command".into(), json!("delete_shard"));
            object.insert("shard".into(), json!(shard));
            object.insert("num".into(), json!(num));
        }
        KvCommand::GcDone { shard, num } => {
            object.insert("command".into(), json!("gc_done"));
            object.insert("shard".into(), json!(shard));
            object.insert("num".into(), json!(num));
        }
    }
}

fn config_json(config: &Configuration) -> Json {
    let shards: Vec<Json> = config
        .shards
        .iter()
        .map(|shard| {
            let mut item = Map::new();
            item.insert("id".into(), json!(shard.id));
            put_bytes(&mut item, "start", &shard.start);
            match &shard.end {
                Some(end) => put_bytes(&mut item, "end", end),
                None => {
                    item.insert("end".into(), Json::Null);
                }
            }
            item.insert("gid".into(), json!(shard.gid));
            Json::Object(item)
        })
        .collect();
    json!({"num": config.num, "groups": config.groups, "shards": shards})
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use paxos_log::{AcceptorStore, NodeId, WalAcceptorStore};
    use storage::wal::segment::{encode_frame, encode_segment_header};
    use storage::wal::Wal;
    use storage::RealFs;
    use tempfile::TempDir;

    use super::*;

    fn ballot(round: u64, node: u64) -> Ballot {
        Ballot {
            round,
            node_id: NodeId(node),
        }
    }

    /// `command` as the driver proposes it: behind its 16-byte tag.
    fn tagged(command: &[u8]) -> Vec<u8> {
        let mut bytes = 0xabcdu64.to_le_bytes().to_vec();
        bytes.extend_from_slice(&5u64.to_le_bytes());
        bytes.extend_from_slice(command);
        bytes
    }

    fn put(key: &[u8], value: &[u8]) -> Vec<u8> {
        tagged(&shardkv::wire::encode(&KvCommand::Write {
            client_id: 7,
            seq: 1,
            stamp_ms: 1_000,
            limits: shardkv::Limits::default().apply_limits(),
            op: WriteOp::Put {
                key: key.to_vec(),
                value: value.to_vec(),
            },
        }))
    }

    fn join() -> Vec<u8> {
        tagged(&controller::wire::encode(&ControllerCommand::Change {
            client_id: 9,
            seq: 2,
            op: ControllerOp::Join {
                groups: BTreeMap::from([(1, vec!["127.0.0.1:1".to_string()])]),
            },
        }))
    }

    /// A WAL written by paxos-log's store: promises, accepts of shardkv and
    /// controller commands, a membership change, a chosen no-op and a
    /// compaction checkpoint, over several small segments.
    fn write_wal(dir: &Path, segment_size_bytes_max: u64) {
        let options = WalOptions {
            segment_size_bytes_max,
            ..WalOptions::default()
        };
        let mut store = WalAcceptorStore::open(RealFs::shared(), dir, options).unwrap();
        store
            .persist(&[PersistOp::Promise {
                ballot: ballot(1, 1),
            }])
            .unwrap();
        for slot in 1..=4u64 {
            store
                .persist(&[PersistOp::Accept {
                    slot,
                    ballot: ballot(1, 1),
                    value: Value::Commands(vec![put(format!("k{slot}").as_bytes(), b"v")]),
                }])
                .unwrap();
        }
        store
            .persist(&[
                PersistOp::Accept {
                    slot: 5,
                    ballot: ballot(1, 1),
                    value: Value::Commands(vec![join(), tagged(b"\xffopaque"), b"short".to_vec()]),
                },
                PersistOp::Accept {
                    slot: 6,
                    ballot: ballot(1, 1),
                    value: Value::Reconfigure(vec![NodeId(1), NodeId(2)]),
                },
                PersistOp::Chosen {
                    slot: 7,
                    value: Value::Noop,
                },
            ])
            .unwrap();
        store.compact(2).unwrap();
        store
            .persist(&[PersistOp::Promise {
                ballot: ballot(2, 2),
            }])
            .unwrap();
        // Enough records after the checkpoint to span several segments.
        for slot in 8..=10u64 {
            store
                .persist(&[PersistOp::Accept {
                    slot,
                    ballot: ballot(2, 2),
                    value: Value::Commands(vec![put(format!("k{slot}").as_bytes(), b"w")]),
                }])
                .unwrap();
        }
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        list_dir(dir)
            .unwrap()
            .segments
            .into_iter()
            .map(|(_, path)| path)
            .collect()
    }

    /// What a starting node concludes about a WAL directory, in the terms
    /// `verify` reports.
    fn recovery_verdict(dir: &Path) -> Result<Option<(PathBuf, u64)>, (PathBuf, u64)> {
        match WalAcceptorStore::open(RealFs::shared(), dir, WalOptions::default()) {
            Ok(store) => Ok(store
                .recovery_report()
                .torn_tail
                .as_ref()
                .map(|torn| (torn.path.clone(), torn.offset))),
            Err(StorageError::Corruption { path, offset, .. }) => Err((path, offset)),
            Err(StorageError::FormatVersion { path, .. }) => Err((path, 8)),
            Err(other) => panic!("unexpected recovery error {other}"),
        }
    }

    fn verify_verdict(dir: &Path) -> Result<Option<(PathBuf, u64)>, (PathBuf, u64)> {
        match verify(&WalSource::WalDir(dir.to_path_buf())) {
            Ok(summary) => Ok(summary
                .torn_tail
                .map(|torn| (torn.path.clone(), torn.offset))),
            Err(error) => {
                let (path, offset) = error.location().expect("damage has a location");
                Err((path.to_path_buf(), offset))
            }
        }
    }

    #[test]
    fn verify_agrees_with_recovery_on_every_byte_flip_and_every_truncation() {
        let root = TempDir::new().unwrap();
        let good = root.path().join("good");
        write_wal(&good, 200);
        let files = segments(&good);
        assert!(files.len() >= 3, "several segments: {files:?}");
        let clean = verify(&WalSource::WalDir(good.clone())).unwrap();
        assert_eq!(clean.torn_tail, None);

        let mut cases = 0;
        let mut corruptions = 0;
        for (index, file) in files.iter().enumerate() {
            let name = file.file_name().unwrap();
            let len = std::fs::metadata(file).unwrap().len();
            for at in 0..len {
                let a = root.path().join(format!("flip-{index}-{at}-a"));
                copy_dir(&good, &a);
                let path = a.join(name);
                let mut bytes = std::fs::read(&path).unwrap();
                bytes[usize::try_from(at).unwrap()] ^= 0x10;
                std::fs::write(&path, &bytes).unwrap();
                let b = root.path().join(format!("flip-{index}-{at}-b"));
                copy_dir(&a, &b);
                let verdict = verify_verdict(&a);
                let expected = recovery_verdict(&b);
                // Recovery ran on its own copy: compare paths by file name.
                let strip = |v: Result<Option<(PathBuf, u64)>, (PathBuf, u64)>| match v {
                    Ok(t) => Ok(t.map(|(p, o)| (p.file_name().unwrap().to_owned(), o))),
                    Err((p, o)) => Err((p.file_name().unwrap().to_owned(), o)),
                };
                assert_eq!(
                    strip(verdict.clone()),
                    strip(expected),
                    "flip in {name:?} at {at}"
                );
                corruptions += usize::from(verdict.is_err());
                cases += 1;
                std::fs::remove_dir_all(&a).unwrap();
                std::fs::remove_dir_all(&b).unwrap();
            }
        }
        assert!(
            cases > 300 && corruptions > cases / 2,
            "{corruptions} of {cases}"
        );

        // Every truncation of the last segment is a torn tail (or nothing),
        // for verify and recovery alike; verify changes no byte.
        let last = files.last().unwrap();
        let len = std::fs::metadata(last).unwrap().len();
        for cut in 32..len {
            let a = root.path().join(format!("cut-{cut}"));
            copy_dir(&good, &a);
            let path = a.join(last.file_name().unwrap());
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            file.set_len(cut).unwrap();
            drop(file);
            let verdict = verify_verdict(&a);
            assert_eq!(
                std::fs::metadata(&path).unwrap().len(),
                cut,
                "verify truncates nothing"
            );
            assert_eq!(
                verdict.map(|t| t.map(|(_, o)| o)),
                recovery_verdict(&a).map(|t| t.map(|(_, o)| o))
            );
            std::fs::remove_dir_all(&a).unwrap();
        }
    }

    #[test]
    fn dump_decodes_every_kind_of_op_and_command() {
        let dir = TempDir::new().unwrap();
        write_wal(dir.path(), 1 << 20);
        let source = WalSource::WalDir(dir.path().to_path_buf());
        let mut text = Vec::new();
        let summary = dump(&source, DumpFormat::Text, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        for expected in [
            "promise ballot 1.1",
            "accept slot 1 ballot 1.1: 1 command(s)",
            "[0] proposal 000000000000abcd#5: write client 7 seq 1 stamp_ms 1000: put \"k1\" = \"v\"",
            "controller change client 9 seq 2: join groups {1 [\"127.0.0.1:1\"]}",
            "7 opaque bytes (neither a shardkv nor a controller command): 0xff6f7061717565",
            "5 opaque bytes (shorter than the log's command tag): \"short\"",
            "reconfigure: members [1, 2]",
            "chosen slot 7: noop",
            "checkpoint promised 1.1 compacted_upto slot 2",
            "promise ballot 2.2",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from:\n{text}"
            );
        }
        // Six persists, the checkpoint, a promise and three accepts.
        assert_eq!(summary.record_count, 11, "{text}");

        let mut lines = Vec::new();
        dump(&source, DumpFormat::JsonLines, &mut lines).unwrap();
        let records: Vec<Json> = String::from_utf8(lines)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(records.len(), 11);
        assert_eq!(records[0]["ops"][0]["op"], "promise");
        assert_eq!(records[0]["offset"], 32);
        let put = &records[1]["ops"][0];
        assert_eq!(put["op"], "accept");
        assert_eq!(put["slot"], 1);
        assert_eq!(put["ballot"], json!({"round": 1, "node_id": 1}));
        let command = &put["value"]["commands"][0];
        assert_eq!(command["decoder"], "shardkv");
        assert_eq!(command["proposer_id"], "000000000000abcd");
        assert_eq!(command["proposal_seq"], 5);
        assert_eq!(command["command"], "write");
        assert_eq!(command["op"], "put");
        assert_eq!(command["key"], "k1");
        assert_eq!(command["value"], "v");
        let mixed = &records[5]["ops"];
        assert_eq!(mixed[0]["value"]["commands"][0]["decoder"], "controller");
        assert_eq!(
            mixed[0]["value"]["commands"][0]["groups"]["1"][0],
            "127.0.0.1:1"
        );
        assert_eq!(mixed[0]["value"]["commands"][1]["decoder"], "opaque");
        assert_eq!(mixed[0]["value"]["commands"][1]["hex"], "ff6f7061717565");
        assert_eq!(mixed[0]["value"]["commands"][2]["hex"], "73686f7274");
        assert_eq!(mixed[0]["value"]["commands"][2].get("proposer_id"), None);
        assert_eq!(
            mixed[1]["value"],
            json!({"kind": "reconfigure", "members": [1, 2]})
        );
        assert_eq!(mixed[2]["value"], json!({"kind": "noop"}));
        assert_eq!(records[6]["ops"][0]["op"], "checkpoint");
        assert_eq!(records[6]["ops"][0]["compacted_upto"], 2);
    }

    #[test]
    fn byte_strings_are_truncated_in_text_and_lossless_in_json() {
        assert_eq!(text_bytes(b"a\"b\n"), "\"a\\\"b\\n\"");
        assert_eq!(text_bytes(b"\x00\xff"), "0x00ff");
        let long = "é".repeat(40); // 80 bytes, 2 per character
        let shown = text_bytes(long.as_bytes());
        assert!(shown.ends_with("\" ... (+16 bytes)"), "{shown}");
        let long_binary = vec![0xffu8; 100];
        assert_eq!(
            text_bytes(&long_binary),
            format!("0x{} ... (+36 bytes)", "ff".repeat(64))
        );

        let mut object = Map::new();
        put_bytes(&mut object, "key", "k".repeat(100).as_bytes());
        put_bytes(&mut object, "value", &long_binary);
        assert_eq!(object["key"], json!("k".repeat(100)));
        assert_eq!(object["value_hex"], json!("ff".repeat(100)));
        assert!(!object.contains_key("value"));
    }

    #[test]
    fn a_record_that_does_not_decode_fails_verify_at_its_offset_but_dumps() {
        let dir = TempDir::new().unwrap();
        let good: Vec<u8> = {
            let mut record = vec![1u8];
            record.extend(
                bincode::serialize(&vec![PersistOp::Promise {
                    ballot: ballot(1, 1),
                }])
                .unwrap(),
            );
            record
        };
        let mut bytes = encode_segment_header(1).to_vec();
        encode_frame(1, &good, &mut bytes);
        let second = bytes.len() as u64;
        encode_frame(2, b"\x01garbage", &mut bytes);
        let path = dir.path().join("00000000000000000001.wal");
        std::fs::write(&path, &bytes).unwrap();

        let source = WalSource::resolve(dir.path()).unwrap();
        match verify(&source) {
            Err(WalInspectError::Undecodable {
                path: bad,
                offset,
                lsn,
                ..
            }) => {
                assert_eq!((bad, offset, lsn), (path.clone(), second, 2));
            }
            other => panic!("expected an undecodable record, got {other:?}"),
        }
        let mut out = Vec::new();
        let summary = dump(&source, DumpFormat::Text, &mut out).unwrap();
        assert_eq!(summary.record_count, 2);
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("lsn 2 @ 00000000000000000001.wal:"), "{out}");
        assert!(out.contains("not an acceptor record"), "{out}");
    }

    #[test]
    fn one_segment_file_is_read_with_the_rules_of_its_place_in_the_log() {
        let dir = TempDir::new().unwrap();
        write_wal(dir.path(), 200);
        let files = segments(dir.path());
        let (first, last) = (&files[0], files.last().unwrap());
        for file in [first, last] {
            let summary = verify(&WalSource::Segment(file.clone())).unwrap();
            assert_eq!(summary.segment_count, 1);
            assert!(summary.record_count >= 1);
        }
        // A damaged final record: torn in the last segment, corruption in a
        // sealed one (as recovery decides).
        for file in [first, last] {
            let mut bytes = std::fs::read(file).unwrap();
            let end = bytes.len() - 1;
            bytes[end] ^= 0x01;
            std::fs::write(file, &bytes).unwrap();
        }
        let sealed = verify(&WalSource::Segment(first.clone())).unwrap_err();
        assert!(
            matches!(sealed, WalInspectError::Corruption { .. }),
            "{sealed}"
        );
        let torn = verify(&WalSource::Segment(last.clone())).unwrap();
        assert_eq!(torn.torn_tail.unwrap().path, *last);

        // A copy under another name stands alone: read as a last segment.
        let copy = dir.path().join("copy.bin");
        std::fs::copy(first, &copy).unwrap();
        assert!(verify(&WalSource::Segment(copy))
            .unwrap()
            .torn_tail
            .is_some());
    }

    #[test]
    fn paths_resolve_to_wal_data_and_node_directories_or_are_refused() {
        let root = TempDir::new().unwrap();
        let node = root.path().join("g1-n1");
        let data = node.join("data");
        let wal = data.join("wal");
        write_wal(&wal, 1 << 20);
        assert_eq!(
            WalSource::resolve(&wal).unwrap(),
            WalSource::WalDir(wal.clone())
        );
        assert_eq!(
            WalSource::resolve(&data).unwrap(),
            WalSource::DataDir {
                data_dir: data.clone(),
                wal_dir: wal.clone()
            }
        );
        let source = WalSource::resolve(&node).unwrap();
        assert_eq!(source.wal_dir(), wal);
        assert!(
            source.describe().contains("node directory"),
            "{}",
            source.describe()
        );

        let missing = WalSource::resolve(&root.path().join("nope")).unwrap_err();
        assert!(
            matches!(missing, WalInspectError::NotFound { .. }),
            "{missing}"
        );
        let empty = root.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let error = WalSource::resolve(&empty).unwrap_err();
        assert!(matches!(error, WalInspectError::NotAWal { .. }), "{error}");
        let text = root.path().join("notes.txt");
        std::fs::write(&text, "hello, this is not a WAL segment at all").unwrap();
        let error = verify(&WalSource::resolve(&text).unwrap()).unwrap_err();
        assert!(error.to_string().contains("SHARDWAL"), "{error}");
    }

    #[test]
    fn a_segment_compacted_away_during_the_read_is_skipped_and_named() {
        let dir = TempDir::new().unwrap();
        write_wal(dir.path(), 200);
        let files = segments(dir.path());
        assert!(files.len() >= 3);
        let source = WalSource::WalDir(dir.path().to_path_buf());
        let mut removed = false;
        let summary = walk(&source, |record| {
            // While the first segment is being read, the "node" removes
            // the second one (as compaction would, oldest first).
            if !removed && record.path == files[0] {
                std::fs::remove_file(&files[1]).unwrap();
                removed = true;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(summary.vanished_segments, vec![files[1].clone()]);
        assert_eq!(summary.segment_count, files.len() - 1);
        assert!(
            summary.notes()[0].contains("compacted"),
            "{:?}",
            summary.notes()
        );
    }

    #[test]
    fn recovery_of_a_verified_wal_still_works() {
        // Verifying must leave the directory exactly as it was: the node
        // then opens it and finds every record.
        let dir = TempDir::new().unwrap();
        write_wal(dir.path(), 200);
        let before: Vec<_> = segments(dir.path())
            .iter()
            .map(|path| std::fs::read(path).unwrap())
            .collect();
        verify(&WalSource::WalDir(dir.path().to_path_buf())).unwrap();
        let after: Vec<_> = segments(dir.path())
            .iter()
            .map(|path| std::fs::read(path).unwrap())
            .collect();
        assert_eq!(before, after);
        let (wal, _) = Wal::open(RealFs::shared(), dir.path(), WalOptions::default()).unwrap();
        assert!(wal.next_lsn() > 1);
    }
}
