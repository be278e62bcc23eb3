//! The body of `kvd --config DIR/NODE/kvd.toml`: one shardkv node (a
//! controller replica or a group replica) in the foreground.
//!
//! It is a library function so that two binaries can run it: `kvd`, and
//! `kvctl` when started under the name `kvd` (`kvctl cluster up` does that
//! when no `kvd` binary sits next to it, so that `cargo run --bin kvctl`
//! alone gives a working cluster; see docs/tools.md).
//!
//! It validates its configuration (exit 2 naming the key and the fix),
//! locks its data directory, starts the node, and runs until SIGTERM or
//! SIGINT, then stops cleanly: listeners closed, the log's thread joined
//! (everything acknowledged is on disk), the store flushed. SIGKILL loses
//! nothing acknowledged either; that is what the WAL is for. Logs go to
//! stderr, filtered by `RUST_LOG` (default `info`).
//!
//! The signal handlers are installed before the node starts: a SIGTERM
//! during a long start (WAL replay, opening the store) is held, not fatal,
//! and stops the node cleanly as soon as it has started.
//!
//! A replica whose storage fails (a full disk, an I/O error, a failed
//! fsync) stops taking part at once: after a failed write or fsync nothing
//! it holds in memory can be trusted to be on disk. kvd then stops too,
//! exiting 1 with the cause and the fix, rather than lingering as a node
//! that answers nothing: once space is back, starting it again recovers
//! from its own disk (a partly written record is cut off) and catches up
//! from its group. Nothing acknowledged is lost: a write is acknowledged
//! only after a majority fsync'd it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::data_dir::DataDirLock;
use crate::http_gateway::{self, Gateway, GatewayOptions};
use crate::kvd_config::{GroupNode, KvdConfig, NodeConfig};
use crate::metrics::{NodeIdentity, NodeMetrics};
use anyhow::Context;
use clap::Parser;
use controller::ControllerServer;
use shardkv::ShardKvServer;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

/// One shardkv node, in the foreground.
#[derive(Debug, Parser)]
#[command(
    name = "kvd",
    version,
    about = "Runs one shardkv node (a controller replica or a replica-group member) in the \
             foreground.",
    after_help = "The file's keys are documented in the tools crate (kvd_config). SIGTERM or \
                  SIGINT stops the node cleanly; logs go to stderr, filtered by RUST_LOG \
                  (e.g. RUST_LOG=debug, RUST_LOG=shardkv=debug,info)."
)]
struct Args {
    /// The node's kvd.toml.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

/// Runs `kvd` with this process's arguments; the process's exit code.
pub fn kvd_main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: `kvctl cluster up` sends the log
        // to kvd.log, which people grep.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let loaded = KvdConfig::load(&args.config)
        .and_then(|config| Ok((config.validate(&args.config)?, config.name)));
    let (node, name) = match loaded {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("kvd: invalid configuration: {err}");
            return ExitCode::from(2);
        }
    };
    match run(node, name) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err:#}");
            eprintln!("kvd: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(node: NodeConfig, name: String) -> anyhow::Result<()> {
    let data_dir = match &node {
        NodeConfig::Controller(config) => config.data_dir.clone(),
        NodeConfig::Group(node) => node.server.data_dir.clone(),
    };
    let _lock = DataDirLock::acquire(&data_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        // Before anything starts, so that a signal during the start is
        // caught (and acted on once started) instead of killing the process.
        let mut stop = StopSignals::listen()?;
        match node {
            NodeConfig::Controller(config) => {
                let (id, addr) = (config.node_id, config.members[&config.node_id].client);
                let data_dir = config.data_dir.clone();
                let server = ControllerServer::start(config)
                    .await
                    .context("starting the controller replica")?;
                info!(node = %id, %addr, "controller replica serving");
                println!("ready");
                let handle = server.node_handle();
                let failed = tokio::select! {
                    () = stop.recv() => None,
                    reason = storage_failure(|| log_failure(&handle.metrics())) => Some(reason),
                };
                info!("stopping");
                server.shutdown().await;
                if let Some(reason) = failed {
                    return Err(stopped_on_failure(&reason, &data_dir));
                }
            }
            NodeConfig::Group(node) => run_group(node, name, stop).await?,
        }
        info!("stopped");
        Ok(())
    })
}

/// How long requests in flight on the HTTP gateway may take to finish
/// once the node is told to stop.
const HTTP_DRAIN: Duration = Duration::from_secs(5);

/// A group replica, and its HTTP gateway if it has an `http_addr`, until
/// SIGTERM or SIGINT. The HTTP address is bound before anything starts (a
/// taken port fails the start, naming the address); at the stop, HTTP stops
/// first (requests in flight get [`HTTP_DRAIN`] to finish, then are cut
/// off), then the replica.
async fn run_group(node: GroupNode, name: String, mut stop: StopSignals) -> anyhow::Result<()> {
    let (id, gid) = (node.server.node_id, node.server.gid);
    let http = match node.http_addr {
        Some(addr) => Some((addr, http_gateway::bind(addr).await?)),
        None => None,
    };
    let options = GatewayOptions {
        net: node.server.net.clone(),
        ..GatewayOptions::new(node.server.controllers.clone(), node.server.limits.clone())
    };
    let data_dir = node.server.data_dir.clone();
    let server = ShardKvServer::start(node.server)
        .await
        .context("starting the group replica")?;
    info!(node = %id, gid, addr = %server.client_addr(), "group replica serving");
    let mut gateway = None;
    if let Some((addr, listener)) = http {
        let probe = server.probe();
        let identity = NodeIdentity {
            name: name.clone(),
            gid,
            node_id: id.0,
        };
        let metrics = match NodeMetrics::new(probe.clone(), data_dir.clone(), &identity) {
            Ok(metrics) => Arc::new(metrics),
            Err(err) => {
                server.shutdown().await;
                return Err(err).context("setting up the node's metrics");
            }
        };
        let state = Arc::new(Gateway::new(name, options, metrics, probe));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(http_gateway::serve(listener, state, async move {
            let _ = stopped.await;
        }));
        info!(%addr, "HTTP gateway serving");
        gateway = Some((stop, task));
    }
    println!("ready");
    let probe = server.probe();
    let failed = tokio::select! {
        () = stop.recv() => None,
        reason = storage_failure(|| {
            if let Some(reason) = log_failure(&probe.node_metrics()) {
                return Some(reason);
            }
            // Already worded: "the replica's state machine store failed: ...".
            probe.group_view().1
        }) => Some(reason),
    };
    info!("stopping");
    if let Some((stop_http, mut task)) = gateway {
        let _ = stop_http.send(());
        match tokio::time::timeout(HTTP_DRAIN, &mut task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => error!(%err, "HTTP gateway"),
            Ok(Err(cause)) => error!(%cause, "HTTP gateway task failed"),
            Err(_) => {
                warn!(
                    drain_ms = HTTP_DRAIN.as_millis(),
                    "HTTP requests still in flight; stopping without them"
                );
                // Dropping the handle would leave the server running on
                // the runtime, connections and all, while the replica stops.
                task.abort();
            }
        }
    }
    server.shutdown().await;
    match failed {
        Some(reason) => Err(stopped_on_failure(&reason, &data_dir)),
        None => Ok(()),
    }
}

/// How often a running node checks whether its replica stopped on a
/// storage failure.
const FAILURE_POLL: Duration = Duration::from_millis(200);

/// Why the replicated log stopped, if it did.
fn log_failure(metrics: &paxos_log::NodeMetrics) -> Option<String> {
    metrics.failed.then(|| {
        let cause = metrics.failure.as_deref().unwrap_or("see the error above");
        format!("the replicated log stopped: {cause}")
    })
}

/// Resolves with the reason once `failure` reports one.
async fn storage_failure(failure: impl Fn() -> Option<String>) -> String {
    loop {
        if let Some(reason) = failure() {
            return reason;
        }
        tokio::time::sleep(FAILURE_POLL).await;
    }
}

/// The error kvd exits with after its replica's storage failed.
fn stopped_on_failure(reason: &str, data_dir: &std::path::Path) -> anyhow::Error {
    error!(%reason, "stopping the node: its replica cannot go on");
    anyhow::anyhow!(
        "{reason}; the node stopped. Remove the cause (if the disk under {} is full, free \
         space; if it failed, repair it) and start the node again: it recovers from its own \
         disk and catches up with its group",
        data_dir.display()
    )
}

/// SIGTERM and SIGINT, caught from [`StopSignals::listen`] on: a signal
/// that arrives before [`StopSignals::recv`] is called is kept for it.
struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    /// Installs the handlers (the default action, death, no longer
    /// applies). Needs the runtime.
    fn listen() -> anyhow::Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
        })
    }

    /// Resolves on SIGTERM or SIGINT, at once if one came since `listen`.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_signal_during_the_start_stops_the_node_once_started() {
        let mut stop = StopSignals::listen().unwrap();
        // SIGTERM to this very process while "starting": caught, not fatal.
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        tokio::task::yield_now().await;
        // Waiting only now still sees it (bounded, in case it was lost).
        tokio::time::timeout(Duration::from_secs(20), stop.recv())
            .await
            .expect("the SIGTERM sent before waiting was kept");
    }
}
