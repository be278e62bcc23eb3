//! Committed throughput of a 3-replica group with real WAL fsyncs.
//!
//! Method: three replicas in one process, each with its own driver thread
//! and its own `WalAcceptorStore` in a fresh directory on the disk under
//! test, connected by the in-process `ChannelTransport` (no serialization,
//! no sockets: this measures the log and the disk, not the network). N tokio
//! tasks propose 100-byte commands to the leader in a closed loop; a
//! proposal counts when the leader has applied it, i.e. after a majority
//! fsync'd it. Each row runs for the same wall time after a short warm-up.
//!
//! Run: `cargo bench -p paxos-log --bench log_throughput -- [--seconds S] [--dir PATH] [--clients 1,16,64,256]`

#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paxos_log::store::wal::WalAcceptorStore;
use paxos_log::{
    ChannelTransport, Config, DriverOptions, Node, NodeHandle, NodeId, Role, Slot, StateMachine,
};
use storage::wal::WalOptions;
use storage::RealFs;

const COMMAND_BYTES: usize = 100;

/// Counts applied commands; the benchmark is about the log, not the state.
#[derive(Debug, Default)]
struct Counter {
    applied: u64,
}

impl StateMachine for Counter {
    fn apply(&mut self, _slot: Slot, _command: &[u8]) -> Vec<u8> {
        self.applied += 1;
        Vec::new()
    }
    fn read(&mut self, _query: &[u8]) -> Vec<u8> {
        self.applied.to_le_bytes().to_vec()
    }
    fn durable_slot(&self) -> Slot {
        0
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let seconds: f64 = flag("--seconds")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5.0);
    let base = flag("--dir")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let clients: Vec<usize> = match flag("--clients") {
        Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
        None => vec![1, 16, 64, 256],
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    println!(
        "\n3-replica paxos-log, in-process transport, WAL fsync on every replica, \
         {COMMAND_BYTES}-byte commands, {seconds} s per row, dir {}",
        base.display()
    );
    println!("| proposers | committed ops/s | p50 ms | p99 ms | p999 ms | max ms | fsyncs/s per replica |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &clients {
        let row = runtime.block_on(run_row(&base, n, Duration::from_secs_f64(seconds)))?;
        println!(
            "| {n} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} |",
            row.ops as f64 / row.seconds,
            ms(row.percentile_us(500)),
            ms(row.percentile_us(990)),
            ms(row.percentile_us(999)),
            ms(row.latencies_us.last().copied().unwrap_or(0)),
            row.fsyncs_per_replica as f64 / row.seconds,
        );
    }
    Ok(())
}

struct Row {
    ops: u64,
    seconds: f64,
    latencies_us: Vec<u32>,
    fsyncs_per_replica: u64,
}

impl Row {
    fn percentile_us(&self, permille: usize) -> u32 {
        let rank = self.latencies_us.len().saturating_sub(1) * permille / 1000;
        self.latencies_us.get(rank).copied().unwrap_or(0)
    }
}

fn ms(us: u32) -> f64 {
    f64::from(us) / 1000.0
}

async fn run_row(
    base: &Path,
    proposers: usize,
    duration: Duration,
) -> Result<Row, Box<dyn std::error::Error>> {
    let members: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let network = Arc::new(ChannelTransport::new());
    let mut dirs = Vec::new();
    let mut nodes = Vec::new();
    for &id in &members {
        let dir = tempfile::Builder::new()
            .prefix("paxos-bench")
            .tempdir_in(base)?;
        let store = WalAcceptorStore::open(RealFs::shared(), dir.path(), WalOptions::default())?;
        let config = Config::new(id, members.clone());
        let options = DriverOptions {
            tick: Duration::from_millis(10),
            ..DriverOptions::default()
        };
        let node = Node::start(
            config,
            store,
            Counter::default(),
            Arc::clone(&network),
            options,
        )?;
        network.register(id, node.handle());
        nodes.push(node);
        dirs.push(dir);
    }
    let handles: Vec<NodeHandle> = nodes.iter().map(Node::handle).collect();
    let leader = loop {
        if let Some(h) = handles
            .iter()
            .find(|h| h.metrics().role == Some(Role::Leader))
        {
            break h.clone();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };

    let warmup = Duration::from_millis(500);
    let started = Instant::now();
    let measure_from = started + warmup;
    let deadline = measure_from + duration;
    let persists_before =
        |handles: &[NodeHandle]| -> u64 { handles.iter().map(|h| h.metrics().persist_count).sum() };
    let mut tasks = Vec::new();
    for task in 0..proposers {
        let leader = leader.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies_us = Vec::new();
            let command = vec![u8::try_from(task % 251).unwrap_or(0); COMMAND_BYTES];
            loop {
                let op = Instant::now();
                if op >= deadline {
                    break;
                }
                let result = leader.propose(command.clone()).await;
                if op >= measure_from && result.is_ok() {
                    let us = u32::try_from(op.elapsed().as_micros()).unwrap_or(u32::MAX);
                    latencies_us.push(us);
                }
            }
            latencies_us
        }));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let fsyncs_start = persists_before(&handles);
    let measured_start = Instant::now();
    let mut latencies_us = Vec::new();
    for task in tasks {
        latencies_us.extend(task.await?);
    }
    let seconds = measured_start
        .elapsed()
        .as_secs_f64()
        .min(duration.as_secs_f64());
    let fsyncs = persists_before(&handles) - fsyncs_start;
    for node in nodes {
        node.stop();
    }
    latencies_us.sort_unstable();
    Ok(Row {
        ops: latencies_us.len() as u64,
        seconds,
        latencies_us,
        fsyncs_per_replica: fsyncs / 3,
    })
}
