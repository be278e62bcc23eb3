//! `kvctl admin add-replica GID NODE | remove-replica GID NODE`: change a
//! replica group's members while it serves.
//!
//! The replicated log changes members with one `Reconfigure` entry (the
//! α-window scheme, docs/protocol.md "Membership change"); around it, the
//! addresses have to be where each step needs them:
//!
//! * add: record the new node in the cluster file (the group's genesis
//!   members recorded too, since they never change), write every member's
//!   `kvd.toml`, tell the running replicas the new peer's address
//!   (`set_peers`), start the new node (a non-voter until the change is in
//!   force), ask the leader to `reconfigure`, then give the controller the
//!   group's new client addresses so clerks and other groups find it.
//! * remove: ask the leader to `reconfigure` without it, update the
//!   controller's addresses, stop the node (SIGTERM), then drop it from the
//!   cluster file, the members' `kvd.toml` and their peers. Its directory
//!   stays on disk (delete it once it is no longer wanted).
//!
//! Each step can be repeated: re-running a command that stopped half-way
//! (a node down, a timeout) finishes it.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use paxos_log::NetLimits;
use serde_json::json;
use shardkv::rpc::{context_within, PeerAddrs, ServiceError};

use super::cli::DirArg;
use super::cluster::{
    admin_clerk, ensure_ports_free, group_addresses, kvd_program, locate, node_dir, running_pid,
    signal, spawn, wait_listening, wait_stopped, write_atomically, PID_FILE,
};
use super::Reply;
use crate::cluster_file::{ClusterFile, ClusterNode, KVD_FILE};

/// How long one replica call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Adds replica `name` to group `gid`.
pub async fn add_replica(
    path: &Path,
    file: &ClusterFile,
    gid: u64,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<Reply> {
    let at = locate(&DirArg { dir: None }, Some(path))?;
    let dir = at.dir.clone();
    let mut file = file.clone();
    let group = group_nodes(&file, gid)?;
    let node = match file.node(name) {
        Some(node) if node.gid == Some(gid) => {
            // A re-run after a partial add: finish it.
            node.clone()
        }
        Some(_) => bail!("node name {name:?} is taken by another node; pick a new name"),
        None => {
            record_genesis(&mut file, gid, &group);
            let node = file.add_group_node(gid, name).map_err(anyhow::Error::msg)?;
            ensure_ports_free(&node)?;
            node
        }
    };
    let members = group_nodes(&file, gid)?;
    for member in &members {
        super::tls::ensure_node_tls(&dir, &file, member)?;
        write_atomically(
            &node_dir(&dir, member).join(KVD_FILE),
            &file.kvd_toml(member),
        )?;
    }
    write_atomically(&at.file, &file.to_toml())?;
    set_peers(&members, &members, &file.net()).await;

    if running_pid(&dir, &node).is_none() {
        let (program, as_kvd) = kvd_program(None)?;
        let mut started = vec![spawn(&dir, &node, &program, as_kvd)?];
        wait_listening(&dir, &mut started, Instant::now() + Duration::from_secs(30)).await?;
    }
    let ids: Vec<u64> = members.iter().map(|n| n.node_id).collect();
    let slot = reconfigure(&members, &ids, &file.net(), timeout).await?;
    let num = set_addresses(&file, gid, &members, timeout).await?;
    Ok(Reply::ok(
        format!(
            "{name} (node {}) added to group {gid}: members {ids:?}, in force from slot {slot} \
             (configuration {num})",
            node.node_id
        ),
        json!({"ok": true, "gid": gid, "node": name, "node_id": node.node_id, "members": ids,
               "slot": slot, "num": num}),
    ))
}

/// Removes replica `name` from group `gid`.
pub async fn remove_replica(
    path: &Path,
    file: &ClusterFile,
    gid: u64,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<Reply> {
    let at = locate(&DirArg { dir: None }, Some(path))?;
    let dir = at.dir.clone();
    let mut file = file.clone();
    let group = group_nodes(&file, gid)?;
    let Some(node) = group.iter().find(|n| n.name == name).cloned() else {
        bail!("group {gid} has no replica named {name:?} (see `kvctl cluster status`)");
    };
    if group.len() == 1 {
        bail!("{name} is group {gid}'s last replica: remove the group with `kvctl admin leave {gid}` instead");
    }
    record_genesis(&mut file, gid, &group);
    let remaining: Vec<ClusterNode> = group.into_iter().filter(|n| n.name != name).collect();
    let ids: Vec<u64> = remaining.iter().map(|n| n.node_id).collect();
    // Every replica, the leaving one included, may lead: ask them all.
    let mut everyone = remaining.clone();
    everyone.push(node.clone());
    let slot = reconfigure(&everyone, &ids, &file.net(), timeout).await?;
    let num = set_addresses(&file, gid, &remaining, timeout).await?;
    if let Some(pid) = running_pid(&dir, &node) {
        signal(pid, "TERM")?;
        if !wait_stopped(&dir, &node, Instant::now() + Duration::from_secs(30)) {
            signal(pid, "KILL")?;
        }
    }
    let _ = std::fs::remove_file(node_dir(&dir, &node).join(PID_FILE));
    // Its data stays for inspection, but not what would let it (or whoever
    // copies its directory) back in: its TLS key. The cluster's secret in
    // its kvd.toml is the same for every node; rotating it (and the CA) is
    // not automated, see docs/tools.md.
    let _ = std::fs::remove_dir_all(node_dir(&dir, &node).join(super::tls::TLS_DIR));
    file.nodes.retain(|n| n.name != name);
    file.retired
        .entry(gid.to_string())
        .or_default()
        .push(node.node_id);
    for member in &remaining {
        write_atomically(
            &node_dir(&dir, member).join(KVD_FILE),
            &file.kvd_toml(member),
        )?;
    }
    write_atomically(&at.file, &file.to_toml())?;
    set_peers(&remaining, &remaining, &file.net()).await;
    Ok(Reply::ok(
        format!(
            "{name} removed from group {gid}: members {ids:?}, in force from slot {slot} \
             (configuration {num}); its directory {} is kept",
            node_dir(&dir, &node).display()
        ),
        json!({"ok": true, "gid": gid, "node": name, "members": ids, "slot": slot, "num": num}),
    ))
}

fn group_nodes(file: &ClusterFile, gid: u64) -> anyhow::Result<Vec<ClusterNode>> {
    let nodes: Vec<ClusterNode> = file
        .nodes
        .iter()
        .filter(|n| n.gid == Some(gid))
        .cloned()
        .collect();
    if nodes.is_empty() {
        bail!("group {gid} is not in the cluster file (see `kvctl cluster status`)");
    }
    Ok(nodes)
}

/// Records the group's genesis members before its first change.
fn record_genesis(file: &mut ClusterFile, gid: u64, group: &[ClusterNode]) {
    file.genesis
        .entry(gid.to_string())
        .or_insert_with(|| group.iter().map(|n| n.node_id).collect());
}

/// Tells every running replica of `targets` the addresses of `members`
/// (best effort: a replica that is down reads them from its kvd.toml when
/// it starts).
async fn set_peers(targets: &[ClusterNode], members: &[ClusterNode], net: &NetLimits) {
    let peers: Vec<PeerAddrs> = members
        .iter()
        .map(|n| PeerAddrs {
            node_id: n.node_id,
            peer_addr: n.peer_addr.to_string(),
            client_addr: n.client_addr.to_string(),
        })
        .collect();
    for target in targets {
        let Ok(client) = shardkv::rpc::connect(target.client_addr, net).await else {
            eprintln!(
                "{}: not running; it reads its peers from its kvd.toml",
                target.name
            );
            continue;
        };
        if let Err(e) = client
            .set_peers(context_within(CALL_TIMEOUT), peers.clone())
            .await
        {
            eprintln!("{}: could not update its peers ({e})", target.name);
        }
    }
}

/// Asks the group's leader to make `ids` the members; the slot from which
/// they vote.
async fn reconfigure(
    nodes: &[ClusterNode],
    ids: &[u64],
    net: &NetLimits,
    timeout: Duration,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + timeout.max(Duration::from_secs(10));
    let mut last = String::from("no replica answered");
    while Instant::now() < deadline {
        for node in nodes {
            let Ok(client) = shardkv::rpc::connect(node.client_addr, net).await else {
                continue;
            };
            match client
                .reconfigure(context_within(CALL_TIMEOUT * 2), ids.to_vec())
                .await
            {
                Ok(Ok(slot)) => return Ok(slot),
                Ok(Err(ServiceError::NotLeader { .. })) => continue,
                Ok(Err(e)) => last = format!("{}: {e}", node.name),
                Err(e) => last = format!("{}: {e}", node.name),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "the membership change did not complete in time ({last}); re-run the command to finish it"
    )
}

/// Gives the controller the group's client addresses.
async fn set_addresses(
    file: &ClusterFile,
    gid: u64,
    members: &[ClusterNode],
    timeout: Duration,
) -> anyhow::Result<u64> {
    let mut admin = admin_clerk(file, timeout);
    let latest = admin
        .query(None)
        .await
        .context("asking the controller for the latest configuration")?;
    if !latest.groups.contains_key(&gid) {
        // Not joined (yet): `admin join` will take the addresses from the
        // cluster file.
        return Ok(latest.num);
    }
    let refs: Vec<&ClusterNode> = members.iter().collect();
    admin
        .set_addresses(gid, group_addresses(&refs))
        .await
        .with_context(|| format!("telling the controller group {gid}'s addresses"))
}
