//! Committed throughput of a 3-replica group with real WAL fsyncs.
//!
//! Method: three replicas in one process, each with its own driver thread
//! and its own `WalAcceptorStore` in a fresh directory on the disk under
//! test. N tokio tasks propose 100-byte commands to the leader in a closed
//! loop; a proposal counts when the leader has applied it, i.e. after a
//! majority fsync'd it. Each row runs for the same wall time after a short
//! warm-up, on a fresh group.
//!
//! `--transport` picks how the replicas reach each other:
//!
//! - `channel` (the default): the in-process `ChannelTransport`, with no
//!   serialization and no sockets, so a table measures the log and the
//!   disk, not the network.
//! - `tcp`: the production network transport, `net::TarpcTransport` to
//!   each peer and a `net::PeerListener` per replica on 127.0.0.1 (port 0),
//!   so every message is serialized, framed and sent over loopback TCP. A
//!   table then adds the cost of the network stack (but not of a real
//!   network's latency). Each row's servers are shut down and its nodes
//!   stopped before the next row starts.
//!
//! The title line of each table names the transport it used.
//!
//! Run: `cargo bench -p paxos-log --bench log_throughput -- [--seconds S] [--dir PATH] [--clients 1,16,64,256] [--transport channel|tcp]`

#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paxos_log::net::{PeerListener, ServerHandle};
use paxos_log::store::wal::WalAcceptorStore;
use paxos_log::{
    ChannelTransport, Config, DriverOptions, NetLimits, Node, NodeHandle, NodeId, Role, Slot,
    StateMachine, TarpcTransport, Transport,
};
use storage::wal::{WalOptions, WalStats};
use storage::RealFs;

const COMMAND_BYTES: usize = 100;

/// The group id the TCP servers accept; any value works, as long as every
/// replica of the group uses the same one.
const GROUP: u64 = 1;

/// How the replicas of a row reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransportKind {
    /// The in-process `ChannelTransport`: no serialization, no sockets.
    Channel,
    /// `TarpcTransport` + `PeerListener` over loopback TCP.
    Tcp,
}

impl TransportKind {
    fn parse(name: &str) -> Result<TransportKind, String> {
        match name {
            "channel" => Ok(TransportKind::Channel),
            "tcp" => Ok(TransportKind::Tcp),
            other => Err(format!(
                "--transport: expected `channel` or `tcp`, got `{other}`"
            )),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            TransportKind::Channel => "in-process channel transport (no serialization, no sockets)",
            TransportKind::Tcp => "tarpc TCP transport over 127.0.0.1 loopback",
        }
    }
}

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
    let transport = flag("--transport")
        .map(|s| TransportKind::parse(s))
        .transpose()?
        .unwrap_or(TransportKind::Channel);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    println!(
        "\n3-replica paxos-log, {}, WAL fsync on every replica, \
         {COMMAND_BYTES}-byte commands, {seconds} s per row, dir {}",
        transport.describe(),
        base.display()
    );
    println!("| proposers | committed ops/s | p50 ms | p99 ms | p999 ms | max ms | fsyncs/s per replica |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &clients {
        let row = runtime.block_on(run_row(
            &base,
            transport,
            n,
            Duration::from_secs_f64(seconds),
        ))?;
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

/// The running group of one row, and what must be torn down after it.
#[derive(Default)]
struct Group {
    nodes: Vec<Node<Counter>>,
    /// Each replica's WAL counters (its real fsyncs).
    wal_stats: Vec<Arc<WalStats>>,
    /// TCP only: one server per replica.
    servers: Vec<ServerHandle>,
    /// TCP only: kept alive until the nodes are stopped; dropping one
    /// aborts its peer tasks.
    transports: Vec<Arc<TarpcTransport>>,
    /// Removed (with the WAL in them) when dropped.
    dirs: Vec<tempfile::TempDir>,
}

impl Group {
    /// Starts replica `id` with a fresh WAL under `base`, on `transport`.
    fn start_node<T: Transport + ?Sized>(
        &mut self,
        base: &Path,
        id: NodeId,
        members: &[NodeId],
        transport: Arc<T>,
    ) -> Result<NodeHandle, Box<dyn std::error::Error>> {
        let dir = tempfile::Builder::new()
            .prefix("paxos-bench")
            .tempdir_in(base)?;
        let store = WalAcceptorStore::open(RealFs::shared(), dir.path(), WalOptions::default())?;
        self.dirs.push(dir);
        self.wal_stats.push(store.stats());
        let options = DriverOptions {
            tick: Duration::from_millis(10),
            ..DriverOptions::default()
        };
        let config = Config::new(id, members.to_vec());
        let node = Node::start(config, store, Counter::default(), transport, options)?;
        let handle = node.handle();
        self.nodes.push(node);
        Ok(handle)
    }

    /// fsyncs of every replica's WAL so far.
    fn fsyncs(&self) -> u64 {
        self.wal_stats
            .iter()
            .map(|stats| stats.fsync_count.load(Ordering::Relaxed))
            .sum()
    }

    /// Stops the servers first (waiting until their ports are released),
    /// then the nodes (joining their driver threads), then the transports
    /// (aborting their peer tasks), then removes the WAL directories.
    async fn stop(self) {
        for server in self.servers {
            server.shutdown().await;
        }
        for node in self.nodes {
            node.stop();
        }
        drop(self.transports);
        drop(self.dirs);
    }
}

/// Three replicas connected by the in-process `ChannelTransport`.
fn start_channel_group(
    base: &Path,
    members: &[NodeId],
) -> Result<Group, Box<dyn std::error::Error>> {
    let network = Arc::new(ChannelTransport::new());
    let mut group = Group::default();
    for &id in members {
        let handle = group.start_node(base, id, members, Arc::clone(&network))?;
        network.register(id, handle);
    }
    Ok(group)
}

/// Three replicas talking over loopback TCP: every listener is bound first
/// (port 0), so every address is known before any replica starts.
async fn start_tcp_group(
    base: &Path,
    members: &[NodeId],
) -> Result<Group, Box<dyn std::error::Error>> {
    let limits = NetLimits::default();
    let mut listeners = Vec::new();
    let mut addrs = BTreeMap::new();
    for &id in members {
        let listener =
            PeerListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)), limits.clone()).await?;
        addrs.insert(id, listener.local_addr());
        listeners.push(listener);
    }
    let runtime = tokio::runtime::Handle::current();
    let mut group = Group::default();
    for (&id, listener) in members.iter().zip(listeners) {
        let peers: BTreeMap<NodeId, SocketAddr> = addrs
            .iter()
            .filter(|(peer, _)| **peer != id)
            .map(|(peer, addr)| (*peer, *addr))
            .collect();
        let transport = Arc::new(TarpcTransport::new(&runtime, peers, GROUP, limits.clone()));
        group.transports.push(Arc::clone(&transport));
        match group.start_node(base, id, members, transport) {
            Ok(handle) => group.servers.push(listener.start(handle, GROUP)),
            Err(e) => {
                group.stop().await;
                return Err(e);
            }
        }
    }
    Ok(group)
}

async fn run_row(
    base: &Path,
    transport: TransportKind,
    proposers: usize,
    duration: Duration,
) -> Result<Row, Box<dyn std::error::Error>> {
    let members: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let group = match transport {
        TransportKind::Channel => start_channel_group(base, &members)?,
        TransportKind::Tcp => start_tcp_group(base, &members).await?,
    };
    let nodes = &group.nodes;
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
    let fsyncs_start = group.fsyncs();
    let measured_start = Instant::now();
    let mut latencies_us = Vec::new();
    let mut join_error = None;
    for task in tasks {
        match task.await {
            Ok(latencies) => latencies_us.extend(latencies),
            Err(e) => join_error = Some(e),
        }
    }
    let seconds = measured_start
        .elapsed()
        .as_secs_f64()
        .min(duration.as_secs_f64());
    let fsyncs = group.fsyncs() - fsyncs_start;
    group.stop().await;
    if let Some(e) = join_error {
        return Err(e.into());
    }
    latencies_us.sort_unstable();
    Ok(Row {
        ops: latencies_us.len() as u64,
        seconds,
        latencies_us,
        fsyncs_per_replica: fsyncs / 3,
    })
}
