//! `kvctl admin add-replica|remove-replica`: group membership changes.

use std::path::Path;
use std::time::Duration;

use super::Reply;
use crate::cluster_file::ClusterFile;

/// Adds replica `node` to group `gid`.
pub async fn add_replica(
    _path: &Path,
    _file: &ClusterFile,
    _gid: u64,
    _node: &str,
    _timeout: Duration,
) -> anyhow::Result<Reply> {
    anyhow::bail!("add-replica is being built")
}

/// Removes replica `node` from group `gid`.
pub async fn remove_replica(
    _path: &Path,
    _file: &ClusterFile,
    _gid: u64,
    _node: &str,
    _timeout: Duration,
) -> anyhow::Result<Reply> {
    anyhow::bail!("remove-replica is being built")
}
