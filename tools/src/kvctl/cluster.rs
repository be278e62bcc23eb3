//! `kvctl cluster init|up|down|status`: a local cluster of `kvd`
//! processes, described by `DIR/cluster.toml` (see
//! [`crate::cluster_file`]).
//!
//! Every node lives in `DIR/NODE/`: `kvd.toml`, `data/`, `kvd.log` (its
//! stdout and stderr) and, while `up` has it running, `kvd.pid`. `up`
//! starts each node as `kvd --config ABS_DIR/NODE/kvd.toml` in its own
//! process group (so a Ctrl-C at the terminal that ran `up` does not reach
//! it), joins the groups when none has joined yet (a fresh cluster), and
//! waits until every shard is served. A node counts as running when its pid file names
//! a live process whose command line holds its `kvd.toml` path, so a stale
//! pid file (after a reboot or a SIGKILL) is never mistaken for a node.
//! `down` sends SIGTERM to those processes (a clean shutdown) and waits;
//! nodes started by hand, without a pid file, are left alone.
//!
//! Process handling reads `/proc` and sends signals with `kill(1)`:
//! Linux only, which is where shardkv runs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use controller::{ClerkOptions as AdminOptions, Configuration, ControllerClerk, ControllerStatus};
use paxos_log::NetLimits;
use serde_json::{json, Value};
use shardkv::rpc::{context_within, ReplicaStatus};

use super::cli::{AddGroupArgs, ClusterCommand, DirArg, ShapeArgs, UpArgs};
use super::{Exit, Reply};
use crate::cluster_file::{ClusterFile, ClusterNode, Shape, CLUSTER_FILE, KVD_FILE};
use crate::kvd_config::Role;

/// Name of a running node's pid file in its directory.
pub const PID_FILE: &str = "kvd.pid";
/// Name of a node's log file in its directory.
pub const LOG_FILE: &str = "kvd.log";
/// Environment variable naming the `kvd` binary `up` starts.
pub const KVD_ENV: &str = "KVD";

/// How long one status call may take.
const STATUS_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long `down` waits for a node to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a `cluster` subcommand.
pub async fn run(
    command: ClusterCommand,
    cluster_flag: Option<&Path>,
    timeout: Duration,
) -> anyhow::Result<Reply> {
    match command {
        ClusterCommand::Init(args) => {
            let at = locate(&args.dir, cluster_flag)?;
            let file = init(&at, shape(&args.shape))?;
            let text = format!(
                "initialized {}: {} nodes; next: {} cluster up",
                at.file.display(),
                file.nodes.len(),
                at.kvctl()
            );
            Ok(Reply::ok(
                text,
                json!({"ok": true, "dir": at.dir, "nodes": file.nodes.len()}),
            ))
        }
        ClusterCommand::Up(args) => up(&args, cluster_flag, timeout).await,
        ClusterCommand::Down(args) => down(&locate(&args, cluster_flag)?),
        ClusterCommand::Status(args) => status(&locate(&args, cluster_flag)?).await,
        ClusterCommand::AddGroup(args) => add_group(&args, cluster_flag).await,
    }
}

fn shape(args: &ShapeArgs) -> Shape {
    Shape {
        controllers: args.controllers,
        groups: args.groups,
        replicas: args.replicas,
        shards: args.shards,
        base_port: args.base_port,
        tls: args.tls,
    }
}

/// Where a cluster lives: its directory (the nodes' directories are in
/// it) and its cluster file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The cluster directory, canonical (or absolute, before it exists).
    pub dir: PathBuf,
    /// The cluster file.
    pub file: PathBuf,
}

impl Location {
    /// How a person types `kvctl` to reach this cluster from here:
    /// `--cluster FILE` unless it is the one found by default.
    pub fn kvctl(&self) -> String {
        let default = locate(&DirArg { dir: None }, None).ok();
        if default.as_ref() == Some(self) {
            "kvctl".to_string()
        } else {
            format!("kvctl --cluster {}", self.file.display())
        }
    }
}

/// The cluster: `DIR/cluster.toml` for a DIR argument, else `--cluster
/// FILE`, else `$KV_CLUSTER`, else `./kv-data/cluster.toml`, the directory
/// being the file's. The directory is made canonical: nodes are started
/// with absolute paths (independent of the caller's working directory),
/// and the same cluster reached by another spelling (`../kv-data`, a
/// symlink) must be recognised as the same.
pub fn locate(arg: &DirArg, cluster_flag: Option<&Path>) -> anyhow::Result<Location> {
    let (dir, name) = match &arg.dir {
        Some(dir) => (dir.clone(), CLUSTER_FILE.into()),
        None => {
            let file = super::cluster_file_path(cluster_flag);
            let name = file
                .file_name()
                .map_or(CLUSTER_FILE.into(), ToOwned::to_owned);
            (parent_of(&file), name)
        }
    };
    let dir = match std::fs::canonicalize(&dir) {
        Ok(dir) => dir,
        Err(_) => {
            std::path::absolute(&dir).with_context(|| format!("resolving {}", dir.display()))?
        }
    };
    let file = dir.join(name);
    Ok(Location { dir, file })
}

fn parent_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes `dir/cluster.toml` and every node's `kvd.toml`; refuses a
/// directory that already holds a cluster.
pub fn init(at: &Location, shape: Shape) -> anyhow::Result<ClusterFile> {
    let (dir, path) = (&at.dir, &at.file);
    if path.exists() {
        bail!(
            "{} already exists: this directory holds a cluster (start it with `kvctl cluster \
             up`, or pick another directory)",
            path.display()
        );
    }
    let mut file = ClusterFile::generate(shape).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if file.tls {
        super::tls::create_cluster_tls(dir, &file)?;
        file.load_tls(dir).map_err(anyhow::Error::msg)?;
    }
    for node in &file.nodes {
        write_atomically(&node_dir(dir, node).join(KVD_FILE), &file.kvd_toml(node))?;
    }
    // The cluster file last: its presence means the directory is complete.
    write_atomically(path, &file.to_toml())?;
    Ok(file)
}

/// Writes `text` to `path` through a temporary file, fsync, a rename and
/// an fsync of the directory, so a crash leaves the old file or the new
/// one, never half of one, and a finished write survives.
pub(super) fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let temp = path.with_extension("toml.tmp");
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        // Owner only: the cluster file and every kvd.toml hold the
        // cluster's secret.
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        // A temporary file left by a crash keeps its mode through `open`.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    };
    write().with_context(|| format!("writing {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("renaming to {}", path.display()))?;
    std::fs::File::open(parent)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("syncing {}", parent.display()))?;
    Ok(())
}

/// A node's directory.
pub fn node_dir(dir: &Path, node: &ClusterNode) -> PathBuf {
    dir.join(&node.name)
}

/// The pid of `node`'s running `kvd`, if `up` started one that still runs.
pub fn running_pid(dir: &Path, node: &ClusterNode) -> Option<u32> {
    let node_dir = node_dir(dir, node);
    let pid: u32 = std::fs::read_to_string(node_dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let config = std::fs::canonicalize(node_dir.join(KVD_FILE)).ok()?;
    // Compared as files, not strings: `up` may have been run with another
    // spelling of the directory.
    let ours = cmdline.split(|&b| b == 0).any(|arg| {
        let arg = Path::new(std::ffi::OsStr::from_bytes(arg));
        arg.ends_with(KVD_FILE) && std::fs::canonicalize(arg).is_ok_and(|a| a == config)
    });
    // A zombie (exited, not yet reaped) has an empty command line.
    ours.then_some(pid)
}

/// Whether the pid file of `node` names a live process that is not its
/// kvd (pid reuse, or a tool we do not know): such a file is left alone.
fn pid_file_names_a_stranger(dir: &Path, node: &ClusterNode) -> bool {
    let pid = std::fs::read_to_string(node_dir(dir, node).join(PID_FILE))
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok());
    pid.is_some_and(|pid| {
        Path::new(&format!("/proc/{pid}")).exists() && running_pid(dir, node).is_none()
    })
}

/// The program `up` runs as `kvd`, and the name it runs under.
pub(super) fn kvd_program(flag: Option<&Path>) -> anyhow::Result<(PathBuf, bool)> {
    if let Some(path) = flag {
        return Ok((path.to_path_buf(), false));
    }
    if let Some(path) = std::env::var_os(KVD_ENV).filter(|p| !p.is_empty()) {
        return Ok((PathBuf::from(path), false));
    }
    let me = std::env::current_exe().context("finding the kvctl executable")?;
    let sibling = me.with_file_name("kvd");
    if sibling.is_file() {
        return Ok((sibling, false));
    }
    // kvctl carries kvd (see tools::node): run it under that name.
    Ok((me, true))
}

/// A node `up` started: its process, and where its log stood before it
/// started (its `ready` line comes after that).
pub(super) struct Started<'a> {
    node: &'a ClusterNode,
    child: Child,
    log_from_bytes: u64,
}

/// Fails naming the address if one of `node`'s ports is taken now (before
/// its files are written, so a taken port changes nothing).
pub(super) fn ensure_ports_free(node: &ClusterNode) -> anyhow::Result<()> {
    for addr in [Some(node.peer_addr), Some(node.client_addr), node.http_addr]
        .into_iter()
        .flatten()
    {
        if std::net::TcpListener::bind(addr).is_err() {
            bail!(
                "{addr} (for node {}) is in use: free it, or edit the ports in the cluster file",
                node.name
            );
        }
    }
    Ok(())
}

/// Starts `node`'s kvd in the background, logging to its `kvd.log`.
pub(super) fn spawn<'a>(
    dir: &Path,
    node: &'a ClusterNode,
    program: &Path,
    as_kvd: bool,
) -> anyhow::Result<Started<'a>> {
    use std::os::unix::process::CommandExt;
    let node_dir = node_dir(dir, node);
    let config = node_dir.join(KVD_FILE);
    if !config.is_file() {
        bail!(
            "{} is missing: re-create it (move the cluster directory away and run `kvctl \
             cluster init`), or restore it from a backup",
            config.display()
        );
    }
    let log_path = node_dir.join(LOG_FILE);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let log_from_bytes = log
        .metadata()
        .with_context(|| format!("reading {}", log_path.display()))?
        .len();
    let mut command = Command::new(program);
    if as_kvd {
        command.arg0("kvd");
    }
    command
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log file handle")?)
        .stderr(log)
        .process_group(0);
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "info");
    }
    let child = command
        .spawn()
        .with_context(|| format!("starting {} for node {}", program.display(), node.name))?;
    std::fs::write(node_dir.join(PID_FILE), format!("{}\n", child.id()))
        .with_context(|| format!("writing {}", node_dir.join(PID_FILE).display()))?;
    eprintln!("{:<8} started (pid {})", node.name, child.id());
    Ok(Started {
        node,
        child,
        log_from_bytes,
    })
}

/// Whether `node`'s log says `ready` after `from_bytes`: kvd prints it once
/// every listener is bound. (A connection to its port proves nothing: on a
/// shared machine another process may hold the port while this node fails
/// to bind it.)
fn logged_ready(dir: &Path, node: &ClusterNode, from_bytes: u64) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let path = node_dir(dir, node).join(LOG_FILE);
    let mut text = String::new();
    let read = std::fs::File::open(&path).and_then(|mut file| {
        file.seek(SeekFrom::Start(from_bytes))?;
        // The lines before `ready` are a few startup logs: bounded.
        file.take(1 << 20).read_to_string(&mut text)
    });
    read.is_ok() && text.lines().any(|line| line == "ready")
}

/// The last `lines` lines of a node's log, for an error message.
fn log_tail(dir: &Path, node: &ClusterNode, lines: usize) -> String {
    let path = node_dir(dir, node).join(LOG_FILE);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    format!("last lines of {}:\n{tail}", path.display())
}

async fn up(
    args: &UpArgs,
    cluster_flag: Option<&Path>,
    timeout: Duration,
) -> anyhow::Result<Reply> {
    let at = locate(&args.dir, cluster_flag)?;
    let dir = &at.dir;
    // One budget for the whole wait: nodes listening, then shards served.
    let deadline = Instant::now() + Duration::from_secs(args.wait_s.max(1));
    let initialized = if at.file.exists() {
        false
    } else {
        init(&at, shape(&args.shape))?;
        eprintln!("initialized {}", dir.display());
        true
    };
    let file = ClusterFile::load(&at.file)?;
    if !initialized && args.shape.tls && !file.tls {
        // The shape flags only shape a new cluster; say so rather than
        // start a plaintext cluster the user believes encrypted.
        bail!(
            "{} exists without TLS, and --tls only applies when `up` creates a cluster: \
             drop --tls to start it as it is, or create a new cluster directory with \
             `kvctl cluster up DIR --tls`",
            at.file.display()
        );
    }
    let (program, as_kvd) = kvd_program(args.kvd.as_deref())?;

    let mut started = Vec::new();
    let mut already = Vec::new();
    for node in &file.nodes {
        if let Some(pid) = running_pid(dir, node) {
            already.push(node.name.clone());
            eprintln!("{:<8} already running (pid {pid})", node.name);
            continue;
        }
        started.push(spawn(dir, node, &program, as_kvd)?);
    }
    wait_listening(dir, &mut started, deadline).await?;

    let mut admin = admin_clerk(&file, timeout);
    let config = match join_if_fresh(&file, &mut admin).await? {
        Ok(config) => config,
        Err(reply) => return Ok(reply),
    };
    let config = wait_served(&file, &mut admin, config.num, deadline).await?;
    let served = config.shards.len();
    let k = at.kvctl();
    let text = format!(
        "cluster up: {} controllers, {} groups, {served} shards served (configuration {}); \
         logs in {}/NODE/{LOG_FILE}\nnext:\n  {k} put a 1\n  {k} get a\n  {k} cluster \
         status\n  {k} cluster down",
        file.controllers().count(),
        file.groups().len(),
        config.num,
        dir.display(),
    );
    let started_names: Vec<&str> = started.iter().map(|s| s.node.name.as_str()).collect();
    Ok(Reply::ok(
        text,
        json!({
            "ok": true,
            "dir": dir,
            "initialized": initialized,
            "started": started_names,
            "already_running": already,
            "num": config.num,
            "shards": served,
        }),
    ))
}

async fn add_group(args: &AddGroupArgs, cluster_flag: Option<&Path>) -> anyhow::Result<Reply> {
    let at = locate(&args.dir, cluster_flag)?;
    let (dir, path) = (at.dir, at.file);
    let mut file = ClusterFile::load(&path)?;
    let replicas = match args.replicas {
        Some(replicas) => replicas,
        None => file
            .groups()
            .values()
            .next()
            .map_or(3, |nodes| u32::try_from(nodes.len()).unwrap_or(3)),
    };
    let gid = file.add_group(replicas).map_err(anyhow::Error::msg)?;
    let new: Vec<ClusterNode> = file
        .nodes
        .iter()
        .filter(|n| n.gid == Some(gid))
        .cloned()
        .collect();
    for node in &new {
        ensure_ports_free(node)?;
    }
    for node in &new {
        super::tls::ensure_node_tls(&dir, &file, node)?;
        write_atomically(&node_dir(&dir, node).join(KVD_FILE), &file.kvd_toml(node))?;
    }
    write_atomically(&path, &file.to_toml())?;
    let (program, as_kvd) = kvd_program(args.kvd.as_deref())?;
    let mut started = Vec::new();
    for node in &new {
        started.push(spawn(&dir, node, &program, as_kvd)?);
    }
    wait_listening(&dir, &mut started, Instant::now() + Duration::from_secs(30)).await?;
    let names: Vec<&str> = new.iter().map(|n| n.name.as_str()).collect();
    Ok(Reply::ok(
        format!(
            "group {gid} started ({}); next: kvctl admin join {gid}",
            names.join(" ")
        ),
        json!({"ok": true, "gid": gid, "nodes": names}),
    ))
}

/// Waits until every started node is ready (listening on all its
/// addresses); fails with the node's log if one exits first.
pub(super) async fn wait_listening(
    dir: &Path,
    started: &mut [Started<'_>],
    deadline: Instant,
) -> anyhow::Result<()> {
    let mut waiting: BTreeSet<usize> = (0..started.len()).collect();
    while !waiting.is_empty() {
        for index in waiting.clone() {
            let Started {
                node,
                child,
                log_from_bytes,
            } = &mut started[index];
            if let Some(status) = child.try_wait().context("checking a started kvd")? {
                let _ = std::fs::remove_file(node_dir(dir, node).join(PID_FILE));
                bail!(
                    "node {} exited at start ({status}); {}",
                    node.name,
                    log_tail(dir, node, 15)
                );
            }
            if logged_ready(dir, node, *log_from_bytes) {
                waiting.remove(&index);
            }
        }
        if Instant::now() > deadline {
            let names: Vec<&str> = waiting
                .iter()
                .map(|&i| started[i].node.name.as_str())
                .collect();
            bail!("nodes {names:?} did not start listening in time; see their {LOG_FILE}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// An admin clerk for the cluster's controllers.
pub fn admin_clerk(file: &ClusterFile, timeout: Duration) -> ControllerClerk {
    let options = AdminOptions {
        deadline: timeout,
        net: file.net(),
        ..AdminOptions::new(controller::unique_client_id())
    };
    ControllerClerk::new(file.controller_addrs(), options)
}

/// The groups' client addresses as the controller's Join wants them.
pub fn group_addresses(nodes: &[&ClusterNode]) -> Vec<String> {
    nodes.iter().map(|n| n.client_addr.to_string()).collect()
}

/// On a fresh cluster (configuration 0: no change was ever made), joins
/// every group of the file; the latest configuration after that. Later,
/// which groups serve is the admin's call (`admin join|leave`): `up` never
/// undoes a leave. A join that failed is the reply to print (`Err`), with
/// whether it may have happened.
async fn join_if_fresh(
    file: &ClusterFile,
    admin: &mut ControllerClerk,
) -> anyhow::Result<Result<Configuration, Reply>> {
    let latest = admin
        .query(None)
        .await
        .context("asking the controller for the latest configuration")?;
    if latest.num > 0 {
        return Ok(Ok(latest));
    }
    let missing: BTreeMap<u64, Vec<String>> = file
        .groups()
        .into_iter()
        .map(|(gid, nodes)| (gid, group_addresses(&nodes)))
        .collect();
    if missing.is_empty() {
        return Ok(Ok(latest));
    }
    let gids: Vec<u64> = missing.keys().copied().collect();
    let num = match admin.join(missing).await {
        Ok(num) => num,
        Err(err) => {
            let mut reply = super::admin::admin_failure(&err);
            let message = format!("joining groups {gids:?}: {err} (run `kvctl cluster up` again)");
            reply.json["error"] = json!(message);
            reply.note = Some(message);
            return Ok(Err(reply));
        }
    };
    eprintln!("joined groups {gids:?} (configuration {num})");
    let config = admin
        .query(Some(num))
        .await
        .context("reading back the configuration")?;
    Ok(Ok(config))
}

/// Every shard of configuration `num` (or later) and who serves it: one
/// row per shard.
struct ShardServing {
    config: Configuration,
    /// Shard id -> whether its owner's leader serves it at `config.num`.
    served: BTreeMap<u64, bool>,
}

async fn shard_serving(
    file: &ClusterFile,
    admin: &mut ControllerClerk,
) -> anyhow::Result<ShardServing> {
    let config = admin.query(None).await.context("querying the controller")?;
    let statuses = group_statuses(file).await;
    let mut served = BTreeMap::new();
    for shard in &config.shards {
        let ok = shard.gid.is_some_and(|gid| {
            statuses.iter().any(|(_, status)| {
                status.as_ref().is_ok_and(|s| {
                    s.gid == gid
                        && s.role == "leader"
                        && s.num >= config.num
                        && s.shards
                            .iter()
                            .any(|r| r.id == shard.id && r.state.starts_with("serving"))
                })
            })
        });
        served.insert(shard.id, ok);
    }
    Ok(ShardServing { config, served })
}

/// Waits until every shard of the latest configuration has an owner whose
/// leader serves it; prints progress while it waits.
async fn wait_served(
    file: &ClusterFile,
    admin: &mut ControllerClerk,
    at_least: u64,
    deadline: Instant,
) -> anyhow::Result<Configuration> {
    let mut last_report = Instant::now();
    loop {
        let state = shard_serving(file, admin).await?;
        let total = state.served.len();
        let done = state.served.values().filter(|ok| **ok).count();
        let owned = state.config.shards.iter().all(|s| s.gid.is_some());
        if state.config.num >= at_least && owned && done == total {
            return Ok(state.config);
        }
        if Instant::now() > deadline {
            let waiting: Vec<u64> = state
                .served
                .iter()
                .filter(|(_, ok)| !**ok)
                .map(|(id, _)| *id)
                .collect();
            bail!(
                "shards {waiting:?} are not served yet (configuration {}); see `kvctl cluster \
                 status` and the nodes' {LOG_FILE}",
                state.config.num
            );
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            eprintln!("waiting: {done} of {total} shards served");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every group replica's status (or why it did not answer), in file order.
async fn group_statuses(file: &ClusterFile) -> Vec<(&ClusterNode, Result<ReplicaStatus, String>)> {
    let calls = file
        .nodes
        .iter()
        .filter(|n| n.role == Role::Group)
        .map(|node| async move { (node, group_status(node.client_addr, file).await) });
    futures::future::join_all(calls).await
}

/// Connection limits for status calls: a down node must not hold up the
/// table.
fn status_net(file: &ClusterFile) -> NetLimits {
    NetLimits {
        connect_timeout: STATUS_TIMEOUT,
        ..file.net()
    }
}

async fn group_status(addr: SocketAddr, file: &ClusterFile) -> Result<ReplicaStatus, String> {
    let client = shardkv::rpc::connect(addr, &status_net(file))
        .await
        .map_err(|e| format!("unreachable: {e}"))?;
    match client.status(context_within(STATUS_TIMEOUT)).await {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("no answer: {e}")),
    }
}

async fn controller_status(
    addr: SocketAddr,
    file: &ClusterFile,
) -> Result<ControllerStatus, String> {
    let client = controller::clerk::connect(addr, &status_net(file))
        .await
        .map_err(|e| format!("unreachable: {e}"))?;
    client
        .status(context_within(STATUS_TIMEOUT))
        .await
        .map_err(|e| format!("no answer: {e}"))
}

fn down(at: &Location) -> anyhow::Result<Reply> {
    let dir = &at.dir;
    let file = ClusterFile::load(&at.file)?;
    let mut stopping = Vec::new();
    for node in &file.nodes {
        if let Some(pid) = running_pid(dir, node) {
            signal(pid, "TERM")?;
            stopping.push((node, pid));
        } else if pid_file_names_a_stranger(dir, node) {
            eprintln!(
                "{}: its {PID_FILE} names a live process that is not this node's kvd; left alone",
                node.name
            );
        } else {
            // A stale pid file (the node died) is cleaned up.
            let _ = std::fs::remove_file(node_dir(dir, node).join(PID_FILE));
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    let mut killed = Vec::new();
    for (node, pid) in &stopping {
        if !wait_stopped(dir, node, deadline) {
            signal(*pid, "KILL")?;
            killed.push(node.name.clone());
        }
        let _ = std::fs::remove_file(node_dir(dir, node).join(PID_FILE));
    }
    let names: Vec<&str> = stopping.iter().map(|(n, _)| n.name.as_str()).collect();
    let mut text = if names.is_empty() {
        "no node of this cluster was running".to_string()
    } else {
        format!("stopped {} nodes: {}", names.len(), names.join(" "))
    };
    if !killed.is_empty() {
        let _ = write!(
            text,
            "\n{} did not stop within {STOP_TIMEOUT:?} of SIGTERM and were killed (SIGKILL \
             loses nothing acknowledged; see their {LOG_FILE})",
            killed.join(" ")
        );
    }
    Ok(Reply::ok(
        text,
        json!({"ok": true, "stopped": names, "killed": killed}),
    ))
}

/// Waits until `node` no longer runs, or `deadline`; whether it stopped.
pub(super) fn wait_stopped(dir: &Path, node: &ClusterNode, deadline: Instant) -> bool {
    while running_pid(dir, node).is_some() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Sends SIGNAL to `pid` with kill(1).
pub(super) fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    // A process that exited in between is not an error.
    if !status.success() && Path::new(&format!("/proc/{pid}")).exists() {
        bail!("kill -{signal} {pid} failed");
    }
    Ok(())
}

async fn status(at: &Location) -> anyhow::Result<Reply> {
    let dir = &at.dir;
    let file = ClusterFile::load(&at.file)?;
    let file_ref = &file;
    let controller_calls = file
        .controllers()
        .map(|node| async move { (node, controller_status(node.client_addr, file_ref).await) });
    let controllers = futures::future::join_all(controller_calls).await;
    let groups = group_statuses(&file).await;
    let mut admin = admin_clerk(&file, Duration::from_secs(3));
    let config = admin.query(None).await.map_err(|e| e.to_string());

    let mut rows = Vec::new();
    let mut text = format!(
        "{:<8} {:<10} {:>4} {:>7} {:<9} {:>6} {:>8} {:>4}\n",
        "NODE", "ROLE", "GID", "PID", "STATE", "LEADER", "APPLIED", "NUM"
    );
    let mut line = |node: &ClusterNode,
                    state: &str,
                    leader: Option<u64>,
                    applied: Option<u64>,
                    num: Option<u64>,
                    error: Option<&str>| {
        let pid = running_pid(dir, node);
        let show = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let _ = writeln!(
            text,
            "{:<8} {:<10} {:>4} {:>7} {:<9} {:>6} {:>8} {:>4}{}",
            node.name,
            match node.role {
                Role::Controller => "controller",
                Role::Group => "group",
            },
            node.gid.map_or("-".to_string(), |g| g.to_string()),
            show(pid.map(u64::from)),
            state,
            show(leader),
            show(applied),
            show(num),
            error.map(|e| format!("  ({e})")).unwrap_or_default(),
        );
        rows.push(json!({
            "name": node.name, "role": node.role, "gid": node.gid, "node_id": node.node_id,
            "pid": pid, "state": state, "leader_hint": leader, "applied_slot": applied,
            "num": num, "error": error,
        }));
    };
    for (node, result) in &controllers {
        match result {
            Ok(s) => line(
                node,
                &s.role,
                s.leader_hint,
                Some(s.applied_slot),
                Some(s.num),
                None,
            ),
            Err(e) => line(node, "down", None, None, None, Some(e)),
        }
    }
    let mut migrations = Vec::new();
    for (node, result) in &groups {
        match result {
            Ok(s) => {
                let failed = s.failed.as_deref();
                line(
                    node,
                    &s.role,
                    s.leader_hint,
                    Some(s.applied_slot),
                    Some(s.num),
                    failed,
                );
                if s.role == "leader" {
                    for shard in &s.shards {
                        if shard.state != "serving" {
                            migrations.push(json!({
                                "gid": s.gid, "shard": shard.id, "state": shard.state,
                                "num": shard.num,
                            }));
                        }
                    }
                }
            }
            Err(e) => line(node, "down", None, None, None, Some(e)),
        }
    }
    let config_json = match &config {
        Ok(config) => {
            let _ = writeln!(text, "\nconfiguration {}:", config.num);
            text.push_str(&super::admin::shard_table(config));
            super::admin::config_json(config)
        }
        Err(e) => {
            let _ = writeln!(text, "\nconfiguration: unknown ({e})");
            Value::Null
        }
    };
    if migrations.is_empty() {
        let _ = writeln!(text, "\nno migration in progress");
    } else {
        let _ = writeln!(text, "\nin progress:");
        for m in &migrations {
            let _ = writeln!(
                text,
                "  group {} shard {}: {} (since configuration {})",
                m["gid"],
                m["shard"],
                m["state"].as_str().unwrap_or(""),
                m["num"]
            );
        }
    }
    let mut reply = Reply::ok(
        text,
        json!({"ok": true, "nodes": rows, "config": config_json, "migrations": migrations}),
    );
    if let Err(e) = &config {
        let message = format!("the controller did not answer: {e}");
        reply.json["ok"] = json!(false);
        reply.json["error"] = json!(message);
        reply.json["indeterminate"] = json!(false);
        return Ok(reply.with_exit(Exit::Error, message));
    }
    Ok(reply)
}
