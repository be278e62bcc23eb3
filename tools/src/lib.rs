//! The shardkv binaries' shared code: `kvd` (one node) and `kvctl`
//! (everything a person types).
//!
//! * [`kvd_config`]: `kvd.toml`, parsed, validated (every mistake named with
//!   its key and fix) and turned into a controller or group replica's
//!   server configuration.
//! * [`client`]: clerk options and value display shared by `kvctl` and the
//!   HTTP gateway.
//! * [`cluster_file`]: `cluster.toml`, every node of a local cluster, and
//!   the `kvd.toml` of each.
//! * [`data_dir`]: the lock that keeps two processes off one data
//!   directory.
//! * [`wal_inspect`]: read-only decoding and verification of a node's
//!   write-ahead log (`kvctl wal dump|verify`), with the rules of recovery.
//! * [`http_gateway`]: the HTTP API every group node serves (keys, scans,
//!   `/metrics`, `/status`), routing any key through a pool of clerks.
//! * [`metrics`]: a group node's Prometheus metrics (operations, latencies,
//!   fsyncs, log and snapshot sizes, migrations), rendered at scrape time.
//! * [`snapshot_file`]: the `kvctl snapshot` file format (checksummed
//!   records of every shard's keys and values), streaming writer and reader.
//! * [`node`] and [`kvctl`]: the bodies of the two binaries (kept here so
//!   `kvctl` can also run as `kvd`, and tests can reach them).

pub mod access;
pub mod client;
pub mod cluster_file;
pub mod data_dir;
pub mod http_gateway;
pub mod kvctl;
pub mod kvd_config;
pub mod metrics;
pub mod node;
pub mod snapshot_file;
pub mod wal_inspect;
