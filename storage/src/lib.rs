//! The storage engine under every shardkv replica: the place where a
//! replica's promises, accepted values and applied state survive SIGKILL and
//! power loss.
//!
//! This crate knows bytes, files and sled, and nothing of Paxos:
//!
//! * [`wal`]: a segmented, checksummed write-ahead log with group commit,
//!   torn-tail recovery and whole-segment compaction.
//! * [`snapshot`]: snapshot files written atomically (temporary name, fsync,
//!   rename, directory fsync) and validated end to end on open.
//! * [`sled_store`]: a sled 0.34 state-machine store with one tree per shard,
//!   whose applied index is written in the same atomic batch as the data.
//! * [`fs`]: the only module that touches the filesystem, so tests can crash
//!   it and inject faults.
//!
//! Every on-disk format is described byte by byte in `docs/disk-format.md`.

pub mod error;
pub mod fs;
pub mod sled_store;
pub mod snapshot;
pub mod wal;

pub use error::{Result, StorageError};
pub use fs::{Fs, FsFile, FsRef, RealFs, SimFs};
