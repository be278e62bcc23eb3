//! The shardkv binaries' shared code: `kvd` (one node) and, to come,
//! `kvctl` (everything a person types).
//!
//! * [`kvd_config`]: `kvd.toml`, parsed, validated (every mistake named with
//!   its key and fix) and turned into a controller or group replica's
//!   server configuration.
//! * [`data_dir`]: the lock that keeps two processes off one data
//!   directory.

pub mod data_dir;
pub mod kvd_config;
