//! The lock on a node's data directory: [`DataDirLock`].
//!
//! Two processes opening one data directory would interleave two WALs'
//! appends and two sled instances' writes: silent corruption. `kvd` takes an
//! exclusive advisory lock on `DATA_DIR/LOCK` before it opens anything and
//! holds it until it exits (the kernel drops it when the process dies, even
//! by SIGKILL, so a crash never leaves a stale lock behind).

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

/// Name of the lock file inside a data directory.
pub const LOCK_FILE: &str = "LOCK";

/// An exclusive lock on a data directory, held while this value lives.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

/// Why a data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error(
        "{path} is locked by another process: another kvd is running on this data directory; \
         stop it first (or point this node at its own directory)"
    )]
    Held {
        /// The lock file.
        path: PathBuf,
    },
    /// The directory or the lock file could not be created or locked.
    #[error("locking {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

impl DataDirLock {
    /// Creates `dir` if missing and locks it, without waiting.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let io_error = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io_error)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_error)?;
        match file.try_lock() {
            Ok(()) => Ok(DataDirLock { _file: file, path }),
            Err(TryLockError::WouldBlock) => Err(LockError::Held { path }),
            Err(TryLockError::Error(source)) => Err(io_error(source)),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::TempDir::new().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        match DataDirLock::acquire(dir.path()) {
            Err(LockError::Held { path }) => assert_eq!(path, first.path()),
            other => panic!("second lock: {other:?}"),
        }
        drop(first);
        DataDirLock::acquire(dir.path()).expect("free again");
    }
}
