//! `kvctl admin ...`: configuration changes through the controller
//! (`join leave move split`), `config [NUM]`, and group membership
//! (`add-replica`, `remove-replica`, in [`super::membership`]).
//!
//! `join GID` takes the group's replica addresses from the cluster file,
//! so a person types only the group id. Every change prints the number of
//! the configuration it created; the groups then move shards on their own
//! (watch with `kvctl cluster status`).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use controller::{ClerkError, Configuration, ControllerClerk};
use serde_json::{json, Value};

use super::cli::AdminCommand;
use super::cluster::{admin_clerk, group_addresses};
use super::{lossy, Exit, Reply};
use crate::cluster_file::ClusterFile;

/// Runs an `admin` subcommand.
pub async fn run(
    command: AdminCommand,
    cluster_file: &Path,
    timeout: Duration,
) -> anyhow::Result<Reply> {
    let file = ClusterFile::load(cluster_file).context("loading the cluster file")?;
    let mut admin = admin_clerk(&file, timeout);
    match command {
        AdminCommand::Join { gid } => {
            let groups = file.groups();
            let Some(nodes) = groups.get(&gid) else {
                let known: Vec<u64> = groups.keys().copied().collect();
                return Ok(Reply::error(
                    Exit::Error,
                    format!(
                        "group {gid} is not in {}: its groups are {known:?} (add its nodes to \
                         the cluster file first)",
                        cluster_file.display()
                    ),
                    false,
                ));
            };
            let addresses = group_addresses(nodes);
            let joined = admin.join([(gid, addresses)].into()).await;
            Ok(changed(joined, &format!("joined group {gid}")))
        }
        AdminCommand::Leave { gid } => {
            let left = admin.leave(vec![gid]).await;
            Ok(changed(left, &format!("group {gid} left")))
        }
        AdminCommand::Move { shard, gid } => {
            let moved = admin.move_shard(shard, gid).await;
            Ok(changed(
                moved,
                &format!("shard {shard} moves to group {gid}"),
            ))
        }
        AdminCommand::Split { key } => match admin.split(key.clone().into_bytes()).await {
            Ok((num, shard)) => Ok(Reply::ok(
                format!("split at {key:?}: new shard {shard} (configuration {num})"),
                json!({"ok": true, "num": num, "shard": shard}),
            )),
            Err(err) => Ok(admin_failure(&err)),
        },
        AdminCommand::Config { num } => config(&mut admin, num).await,
        AdminCommand::AddReplica { gid, node } => {
            super::membership::add_replica(cluster_file, &file, gid, &node, timeout).await
        }
        AdminCommand::RemoveReplica { gid, node } => {
            super::membership::remove_replica(cluster_file, &file, gid, &node, timeout).await
        }
    }
}

/// The reply for a change that created configuration `num`.
fn changed(result: Result<u64, ClerkError>, what: &str) -> Reply {
    match result {
        Ok(num) => Reply::ok(
            format!("{what} (configuration {num})"),
            json!({"ok": true, "num": num}),
        ),
        Err(err) => admin_failure(&err),
    }
}

/// The reply for a controller call that did not get a definite answer or
/// was refused.
pub fn admin_failure(err: &ClerkError) -> Reply {
    Reply::error(Exit::Error, err.to_string(), err.is_indeterminate())
}

async fn config(admin: &mut ControllerClerk, num: Option<u64>) -> anyhow::Result<Reply> {
    let config = match admin.query(num).await {
        Ok(config) => config,
        Err(err) => return Ok(admin_failure(&err)),
    };
    if let Some(asked) = num.filter(|&n| n != config.num) {
        // The controller answers the latest for a number beyond it.
        return Ok(Reply::error(
            Exit::Error,
            format!(
                "configuration {asked} does not exist yet (the latest is {})",
                config.num
            ),
            false,
        ));
    }
    let mut text = format!("configuration {}\ngroups:\n", config.num);
    for (gid, addrs) in &config.groups {
        text.push_str(&format!("  {gid}: {}\n", addrs.join(" ")));
    }
    text.push_str(&shard_table(&config));
    Ok(Reply::ok(text, config_json(&config)))
}

/// The shard map as a table: id, key range (`""` is the empty key,
/// `(end)` the end of the key space), owner.
pub fn shard_table(config: &Configuration) -> String {
    let show = |key: &[u8]| {
        if key.is_empty() {
            "\"\"".to_string()
        } else {
            lossy(key)
        }
    };
    let mut text = format!(
        "{:>5}  {:<20} {:<20} {:>4}\n",
        "SHARD", "START", "END", "GID"
    );
    for shard in &config.shards {
        text.push_str(&format!(
            "{:>5}  {:<20} {:<20} {:>4}\n",
            shard.id,
            show(&shard.start),
            shard.end.as_deref().map_or("(end)".to_string(), show),
            shard.gid.map_or("-".to_string(), |g| g.to_string())
        ));
    }
    text
}

/// `admin config`'s JSON object (the contract's shape).
pub fn config_json(config: &Configuration) -> Value {
    let groups: serde_json::Map<String, Value> = config
        .groups
        .iter()
        .map(|(gid, addrs)| (gid.to_string(), json!(addrs)))
        .collect();
    let shards: Vec<Value> = config
        .shards
        .iter()
        .map(|shard| {
            json!({
                "id": shard.id,
                "start": lossy(&shard.start),
                "end": shard.end.as_deref().map(lossy),
                "gid": shard.gid,
            })
        })
        .collect();
    json!({"ok": true, "num": config.num, "groups": groups, "shards": shards})
}
