//! Durable-append throughput of the WAL under group commit, next to the raw
//! fdatasync rate of the same disk.
//!
//! Method: every row runs for the same wall time in a fresh directory on the
//! disk under test. The raw row appends one 116-byte frame-sized write and
//! calls fdatasync, in a loop, from one thread: the most a one-fsync-per-op
//! design can reach. The WAL rows run N tokio tasks that each append
//! 100-byte records through one `WalWriter` in a closed loop; an append
//! counts when it is acknowledged, that is, after the fsync covering it.
//!
//! Run: `cargo bench -p storage --bench wal_group_commit -- [--seconds S] [--dir PATH]`
//! (the directory defaults to the current one, which under cargo is the
//! crate's own directory, so the measured disk is the project's).

#![allow(clippy::print_stdout)]

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use storage::wal::{Wal, WalOptions, WalWriter, WriterOptions};
use storage::RealFs;

const PAYLOAD_BYTES: usize = 100;
/// A WAL frame of a 100-byte payload: 16 bytes of header plus the payload.
const FRAME_BYTES: usize = 116;

struct Row {
    label: String,
    ops: u64,
    seconds: f64,
    latencies_us: Vec<u32>,
    records_per_fsync: f64,
}

impl Row {
    fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.seconds
    }
    /// The latency at `permille`/1000 of the sorted samples.
    fn percentile_us(&self, permille: usize) -> u32 {
        let rank = self.latencies_us.len().saturating_sub(1) * permille / 1000;
        self.latencies_us.get(rank).copied().unwrap_or(0)
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
        .unwrap_or(3.0);
    let base: PathBuf = flag("--dir")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let duration = Duration::from_secs_f64(seconds);

    let mut rows = vec![raw_fdatasync(&base, duration)?];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    for appenders in [1, 8, 64] {
        rows.push(runtime.block_on(wal_appends(&base, duration, appenders))?);
    }

    let one = rows[1].ops_per_s();
    println!(
        "\nWAL durable appends of {PAYLOAD_BYTES}-byte records, {seconds} s per row, dir {}",
        base.display()
    );
    println!("| writer | acked appends/s | p50 µs | p99 µs | max µs | records per fsync | vs 1 appender |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {:.0} | {} | {} | {} | {:.1} | {:.1}x |",
            row.label,
            row.ops_per_s(),
            row.percentile_us(500),
            row.percentile_us(990),
            row.latencies_us.last().copied().unwrap_or(0),
            row.records_per_fsync,
            row.ops_per_s() / one,
        );
    }
    Ok(())
}

/// One writer, one fdatasync per record: the disk's own limit.
fn raw_fdatasync(base: &Path, duration: Duration) -> Result<Row, Box<dyn std::error::Error>> {
    let dir = tempfile::Builder::new()
        .prefix("wal-bench-raw")
        .tempdir_in(base)?;
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("raw.log"))?;
    let record = [0xA5u8; FRAME_BYTES];
    let mut latencies_us = Vec::new();
    let started = Instant::now();
    while started.elapsed() < duration {
        let op = Instant::now();
        file.write_all(&record)?;
        file.sync_data()?;
        latencies_us.push(micros(op.elapsed()));
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies_us.sort_unstable();
    Ok(Row {
        label: "raw write+fdatasync, 1 thread".into(),
        ops: latencies_us.len() as u64,
        seconds,
        latencies_us,
        records_per_fsync: 1.0,
    })
}

/// N concurrent appenders through one group-commit writer.
async fn wal_appends(
    base: &Path,
    duration: Duration,
    appenders: usize,
) -> Result<Row, Box<dyn std::error::Error>> {
    let dir = tempfile::Builder::new()
        .prefix("wal-bench")
        .tempdir_in(base)?;
    let (wal, _) = Wal::open(RealFs::shared(), dir.path(), WalOptions::default())?;
    let stats = wal.stats();
    let writer = WalWriter::spawn(wal, WriterOptions::default())?;
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for task in 0..appenders {
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies_us = Vec::new();
            while Instant::now() < deadline {
                let payload = vec![u8::try_from(task % 251).unwrap_or(0); PAYLOAD_BYTES];
                let op = Instant::now();
                writer.append(payload).await?;
                latencies_us.push(micros(op.elapsed()));
            }
            Ok::<_, storage::StorageError>(latencies_us)
        }));
    }
    let mut latencies_us = Vec::new();
    for task in tasks {
        latencies_us.extend(task.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    writer.close().await?;
    latencies_us.sort_unstable();
    let fsyncs = stats.fsync_count.load(Ordering::Relaxed).max(1);
    let synced = stats.records_synced.load(Ordering::Relaxed);
    Ok(Row {
        label: format!(
            "WAL, {appenders} appender{}",
            if appenders == 1 { "" } else { "s" }
        ),
        ops: latencies_us.len() as u64,
        seconds,
        latencies_us,
        records_per_fsync: synced as f64 / fsyncs as f64,
    })
}

fn micros(elapsed: Duration) -> u32 {
    u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX)
}
