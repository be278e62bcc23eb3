//! `kvd --config DIR/NODE/kvd.toml`: one shardkv node (a controller replica
//! or a group replica) in the foreground.
//!
//! It validates its configuration (exit 2 naming the key and the fix),
//! locks its data directory, starts the node, and runs until SIGTERM or
//! SIGINT, then stops cleanly: listeners closed, the log's thread joined
//! (everything acknowledged is on disk), the store flushed. SIGKILL loses
//! nothing acknowledged either; that is what the WAL is for. Logs go to
//! stderr, filtered by `RUST_LOG` (default `info`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use controller::ControllerServer;
use shardkv::ShardKvServer;
use tools::data_dir::DataDirLock;
use tools::kvd_config::{KvdConfig, NodeConfig};
use tracing::{error, info};
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

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let node = match KvdConfig::load(&args.config).and_then(|c| c.validate(&args.config)) {
        Ok(node) => node,
        Err(err) => {
            eprintln!("kvd: invalid configuration: {err}");
            return ExitCode::from(2);
        }
    };
    match run(node) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err:#}");
            eprintln!("kvd: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(node: NodeConfig) -> anyhow::Result<()> {
    let data_dir = match &node {
        NodeConfig::Controller(config) => config.data_dir.clone(),
        NodeConfig::Group(config) => config.data_dir.clone(),
    };
    let _lock = DataDirLock::acquire(&data_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match node {
            NodeConfig::Controller(config) => {
                let (id, addr) = (config.node_id, config.members[&config.node_id].client);
                let server = ControllerServer::start(config)
                    .await
                    .context("starting the controller replica")?;
                info!(node = %id, %addr, "controller replica serving");
                println!("ready");
                wait_for_stop().await?;
                info!("stopping");
                server.shutdown().await;
            }
            NodeConfig::Group(config) => {
                let (id, gid) = (config.node_id, config.gid);
                let server = ShardKvServer::start(config)
                    .await
                    .context("starting the group replica")?;
                info!(node = %id, gid, addr = %server.client_addr(), "group replica serving");
                println!("ready");
                wait_for_stop().await?;
                info!("stopping");
                server.shutdown().await;
            }
        }
        info!("stopped");
        Ok(())
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn wait_for_stop() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
