//! The storage crate's one error type.
//!
//! Every variant names the thing that failed (operation, file, byte offset) so
//! that an operator reading a log line knows where to look and what to do.
//! Expected outcomes, such as a torn WAL tail after a crash, are not errors:
//! they are reported as values (see [`crate::wal::RecoveryReport`]).

use std::io;
use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Everything that can go wrong in the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An operating-system call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What we were doing, e.g. `"fsync"` or `"create segment"`.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Bytes on disk fail validation somewhere a crash cannot explain. The
    /// store refuses to open: silently skipping would lose acknowledged data.
    #[error(
        "corruption in {} at byte offset {offset}: {reason}; the replica must be rebuilt \
         from its peers (or the file restored from a backup)",
        path.display()
    )]
    Corruption {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the first bad byte range (e.g. the start of the bad record).
        offset: u64,
        /// What failed validation.
        reason: String,
    },

    /// A file carries a format version this build cannot read.
    #[error(
        "{} has format version {found}, this build reads version {supported}; \
         use a matching shardkv release",
        path.display()
    )]
    FormatVersion {
        /// The file.
        path: PathBuf,
        /// Version found in the file header.
        found: u32,
        /// Version this build reads and writes.
        supported: u32,
    },

    /// A record is larger than the configured maximum.
    #[error("record of {size_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    RecordTooLarge {
        /// Size of the offending record.
        size_bytes: u64,
        /// The configured maximum.
        max_bytes: u64,
    },

    /// An earlier write or fsync failed, so what is on disk is unknown. Retrying
    /// an fsync after a failure can report success for data that was dropped
    /// ("fsyncgate"), so the writer refuses all further work until the process
    /// restarts and recovers from what is really on disk.
    #[error(
        "write-ahead log stopped after an earlier failure ({cause}); restart the node to \
         recover from disk"
    )]
    Poisoned {
        /// Description of the first failure.
        cause: String,
    },

    /// The background writer of a [`crate::wal::WalWriter`] is gone.
    #[error("the WAL writer thread has stopped; restart the node")]
    WriterStopped,

    /// A caller asked for something the store cannot do in its current state.
    #[error("invalid request: {0}")]
    InvalidArgument(String),

    /// sled reported an error.
    #[error("sled {op}: {source}")]
    Sled {
        /// What we were doing.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: sled::Error,
    },
}

impl StorageError {
    /// Builds a closure that wraps an [`io::Error`] with its operation and path,
    /// for use with `map_err`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| StorageError::Io { op, path, source }
    }

    /// Builds a [`StorageError::Corruption`].
    pub(crate) fn corruption(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        StorageError::Corruption {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// Builds a closure that wraps a [`sled::Error`] with its operation.
    pub(crate) fn sled(op: &'static str) -> impl FnOnce(sled::Error) -> Self {
        move |source| StorageError::Sled { op, source }
    }
}
