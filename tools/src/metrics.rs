//! Prometheus metrics of one group node ([`NodeMetrics`]), served as text
//! by the HTTP gateway's `GET /metrics`.
//!
//! Each node has its own [`Registry`] (never the process-global one, so
//! tests can run several nodes in one process). Three kinds of source feed
//! it:
//!
//! * the HTTP gateway's own requests, recorded as they finish in native
//!   counters and histograms with the constant label `api="http"`;
//! * the replica's counters that live outside this crate (the `ShardKv`
//!   requests it served, `shardkv::stats`, with `api="rpc"`; the WAL's
//!   fsyncs; the log's snapshot and persist counts), copied out at scrape
//!   time by a custom [`Collector`], because the `shardkv` crate keeps
//!   plain atomics and knows nothing of Prometheus;
//! * gauges of the replica's state (applied slot, leadership,
//!   configuration, shards per state, migration progress, directory sizes)
//!   refreshed just before each scrape.
//!
//! Both sources of `shardkv_ops_total` and `shardkv_op_duration_seconds`
//! share one metric family; the `api` label tells them apart, and their
//! `outcome` values differ: the gateway's say what the HTTP client got
//! (`ok`, `not_found`, `bad_request`, `too_large`, `unavailable`,
//! `indeterminate`, `busy`), the replica's which `ServiceError` it
//! answered (`ok`, `refused`, `not_leader`, `busy`, `indeterminate`,
//! `stopped`, `not_ready`).
//!
//! A scrape reads directory sizes from file metadata: [`NodeMetrics::render`]
//! blocks briefly and is run off the async workers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricType};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use shardkv::group::ShardState;
use shardkv::stats::{ReplicaProbe, RequestKind, RequestOutcome, LATENCY_BUCKETS_SECONDS};

/// Help text of `shardkv_ops_total` (identical for both sources: the
/// registry requires it).
const OPS_HELP: &str = "Operations served by this node, by interface (api: http gateway or rpc \
                        ShardKv service), operation and outcome.";
/// Help text of `shardkv_op_duration_seconds`.
const DURATION_HELP: &str = "Time to answer an operation served by this node, by interface and \
                             operation.";
/// Most directory entries one size computation visits: a bound on the work
/// of a scrape whatever lands in the data directory.
const DIR_ENTRIES_MAX: usize = 100_000;

/// Why the metrics could not be set up or rendered.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A metric could not be created or registered (a bug: names and
    /// labels are fixed).
    #[error("registering the metric {name}: {source}")]
    Register {
        /// The metric.
        name: String,
        /// What the registry said.
        source: prometheus::Error,
    },
    /// The gathered metrics could not be encoded as text.
    #[error("encoding the metrics as Prometheus text: {0}")]
    Encode(prometheus::Error),
}

/// Who a node is, for `shardkv_node_info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The node's name (from its `kvd.toml`).
    pub name: String,
    /// Its group.
    pub gid: u64,
    /// Its id within the group.
    pub node_id: u64,
}

/// Gauges refreshed from the replica at every scrape.
#[derive(Debug)]
struct StateGauges {
    applied_slot: IntGauge,
    chosen_slot: IntGauge,
    log_start_slot: IntGauge,
    is_leader: IntGauge,
    config_num: IntGauge,
    pending_proposals: IntGauge,
    failed: IntGauge,
    wal_dir_bytes: IntGauge,
    snapshot_dir_bytes: IntGauge,
    state_machine_dir_bytes: IntGauge,
    shards: IntGaugeVec,
    shards_awaiting_gc: IntGauge,
    pulled_records: IntGauge,
    pulled_bytes: IntGauge,
}

/// The metrics of one group node. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct NodeMetrics {
    registry: Registry,
    http_ops: IntCounterVec,
    http_duration: HistogramVec,
    gauges: StateGauges,
    probe: ReplicaProbe,
    data_dir: PathBuf,
}

impl NodeMetrics {
    /// Registers every metric of the replica `probe`, whose data directory
    /// (holding `wal/`, `snap/` and `sm/`) is `data_dir`.
    pub fn new(
        probe: ReplicaProbe,
        data_dir: PathBuf,
        identity: &NodeIdentity,
    ) -> Result<NodeMetrics, MetricsError> {
        let registry = Registry::new();
        let http_ops = IntCounterVec::new(
            Opts::new("shardkv_ops_total", OPS_HELP).const_label("api", "http"),
            &["op", "outcome"],
        )
        .map_err(|source| register_error("shardkv_ops_total", source))?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new("shardkv_op_duration_seconds", DURATION_HELP)
                .const_label("api", "http")
                .buckets(LATENCY_BUCKETS_SECONDS.to_vec()),
            &["op"],
        )
        .map_err(|source| register_error("shardkv_op_duration_seconds", source))?;
        // Present from the first scrape, so rates start at zero rather than
        // at the first request.
        for op in ["get", "put", "delete", "scan"] {
            http_ops.with_label_values(&[op, "ok"]);
            http_duration.with_label_values(&[op]);
        }
        register(&registry, http_ops.clone(), "shardkv_ops_total")?;
        register(
            &registry,
            http_duration.clone(),
            "shardkv_op_duration_seconds",
        )?;
        register(
            &registry,
            ReplicaCounters::new(probe.clone())?,
            "replica counters",
        )?;

        let gauge = |name: &str, help: &str| -> Result<IntGauge, MetricsError> {
            let gauge = IntGauge::new(name, help).map_err(|source| register_error(name, source))?;
            register(&registry, gauge.clone(), name)?;
            Ok(gauge)
        };
        let info = IntGaugeVec::new(
            Opts::new(
                "shardkv_node_info",
                "Always 1; labels name the node (name, gid, node_id).",
            ),
            &["name", "gid", "node_id"],
        )
        .map_err(|source| register_error("shardkv_node_info", source))?;
        info.with_label_values(&[
            identity.name.as_str(),
            &identity.gid.to_string(),
            &identity.node_id.to_string(),
        ])
        .set(1);
        register(&registry, info, "shardkv_node_info")?;
        let shards = IntGaugeVec::new(
            Opts::new(
                "shardkv_shards",
                "Shards this replica holds, by state (serving, pulling: arriving from their \
                 previous owner, frozen: lost, kept until the new owner has pulled them).",
            ),
            &["state"],
        )
        .map_err(|source| register_error("shardkv_shards", source))?;
        register(&registry, shards.clone(), "shardkv_shards")?;
        let gauges = StateGauges {
            applied_slot: gauge(
                "shardkv_applied_slot",
                "Every log slot up to this one is applied.",
            )?,
            chosen_slot: gauge(
                "shardkv_chosen_slot",
                "Every log slot up to this one is chosen.",
            )?,
            log_start_slot: gauge(
                "shardkv_log_start_slot",
                "Log slots below this one were compacted away under a snapshot.",
            )?,
            is_leader: gauge(
                "shardkv_is_leader",
                "1 while this replica leads its group, else 0.",
            )?,
            config_num: gauge(
                "shardkv_config_num",
                "The shard configuration this replica has installed.",
            )?,
            pending_proposals: gauge(
                "shardkv_pending_proposals",
                "Proposals waiting for their log slot to be chosen.",
            )?,
            failed: gauge(
                "shardkv_replica_failed",
                "1 if the replica stopped serving after a storage failure, else 0.",
            )?,
            wal_dir_bytes: gauge(
                "shardkv_wal_dir_bytes",
                "Size of the acceptor write-ahead log directory, in bytes.",
            )?,
            snapshot_dir_bytes: gauge(
                "shardkv_snapshot_dir_bytes",
                "Size of the snapshot directory, in bytes.",
            )?,
            state_machine_dir_bytes: gauge(
                "shardkv_state_machine_dir_bytes",
                "Size of the sled state machine directory, in bytes.",
            )?,
            shards,
            shards_awaiting_gc: gauge(
                "shardkv_shards_awaiting_gc",
                "Serving shards whose previous owner has not yet deleted its copy.",
            )?,
            pulled_records: gauge(
                "shardkv_migration_pulled_records",
                "Records installed so far of the shards still arriving.",
            )?,
            pulled_bytes: gauge(
                "shardkv_migration_pulled_bytes",
                "Key and value bytes installed so far of the shards still arriving.",
            )?,
        };
        Ok(NodeMetrics {
            registry,
            http_ops,
            http_duration,
            gauges,
            probe,
            data_dir,
        })
    }

    /// Records one request the HTTP gateway answered.
    pub fn observe_http(&self, op: &str, outcome: &str, elapsed: Duration) {
        self.http_ops.with_label_values(&[op, outcome]).inc();
        self.http_duration
            .with_label_values(&[op])
            .observe(elapsed.as_secs_f64());
    }

    /// Every metric, current, in the Prometheus text format (version
    /// 0.0.4). Blocks briefly: directory sizes are read from the file
    /// system.
    pub fn render(&self) -> Result<String, MetricsError> {
        self.refresh();
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .map_err(MetricsError::Encode)
    }

    /// Sets the gauges from the replica's current state.
    fn refresh(&self) {
        let gauges = &self.gauges;
        let node = self.probe.node_metrics();
        gauges.applied_slot.set(signed(node.applied_slot));
        gauges.chosen_slot.set(signed(node.chosen_upto));
        gauges.log_start_slot.set(signed(node.log_start));
        gauges
            .is_leader
            .set(i64::from(node.role == Some(paxos_log::Role::Leader)));
        gauges
            .pending_proposals
            .set(i64::try_from(node.pending_proposals).unwrap_or(i64::MAX));
        let (group, failed) = self.probe.group_view();
        gauges
            .failed
            .set(i64::from(node.failed || failed.is_some()));
        gauges.config_num.set(signed(group.num));
        let (mut serving, mut pulling, mut frozen, mut awaiting_gc) = (0i64, 0i64, 0i64, 0i64);
        let (mut records, mut bytes) = (0u64, 0u64);
        for entry in group.shards.values() {
            match &entry.state {
                ShardState::Serving { gc } => {
                    serving += 1;
                    awaiting_gc += i64::from(gc.is_some());
                }
                ShardState::Pulling {
                    records: so_far,
                    bytes: bytes_so_far,
                    ..
                } => {
                    pulling += 1;
                    records = records.saturating_add(*so_far);
                    bytes = bytes.saturating_add(*bytes_so_far);
                }
                ShardState::Frozen { .. } => frozen += 1,
            }
        }
        for (state, count) in [
            ("serving", serving),
            ("pulling", pulling),
            ("frozen", frozen),
        ] {
            gauges.shards.with_label_values(&[state]).set(count);
        }
        gauges.shards_awaiting_gc.set(awaiting_gc);
        gauges.pulled_records.set(signed(records));
        gauges.pulled_bytes.set(signed(bytes));
        for (gauge, dir) in [
            (&gauges.wal_dir_bytes, "wal"),
            (&gauges.snapshot_dir_bytes, "snap"),
            (&gauges.state_machine_dir_bytes, "sm"),
        ] {
            gauge.set(signed(dir_size_bytes(&self.data_dir.join(dir))));
        }
    }
}

/// A gauge value from an unsigned count (saturating: gauges are `i64`).
fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn register_error(name: &str, source: prometheus::Error) -> MetricsError {
    MetricsError::Register {
        name: name.to_string(),
        source,
    }
}

fn register(
    registry: &Registry,
    collector: impl Collector + 'static,
    name: &str,
) -> Result<(), MetricsError> {
    registry
        .register(Box::new(collector))
        .map_err(|source| register_error(name, source))
}

/// Bytes of the regular files under `dir`, by metadata, without following
/// symbolic links; 0 if it does not exist. Unreadable entries are skipped
/// (a file may vanish mid-walk: compaction deletes segments), and the walk
/// stops after [`DIR_ENTRIES_MAX`] entries.
pub fn dir_size_bytes(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut visited = 0usize;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            visited += 1;
            if visited > DIR_ENTRIES_MAX {
                return total;
            }
            let Ok(metadata) = entry.path().symlink_metadata() else {
                continue;
            };
            if metadata.is_dir() {
                pending.push(entry.path());
            } else if metadata.is_file() {
                total = total.saturating_add(metadata.len());
            }
        }
    }
    total
}

/// The replica's counters kept outside this crate, copied into metric
/// families at each scrape.
struct ReplicaCounters {
    probe: ReplicaProbe,
    descs: Vec<Desc>,
}

/// The families [`ReplicaCounters`] produces: name, help, type.
const COUNTER_FAMILIES: [(&str, &str); 7] = [
    (
        "shardkv_wal_fsyncs_total",
        "fdatasync calls on write-ahead log segments (group commits and seals).",
    ),
    (
        "shardkv_wal_fsync_seconds_total",
        "Time spent in write-ahead log fdatasync calls.",
    ),
    (
        "shardkv_wal_synced_records_total",
        "Write-ahead log records made durable.",
    ),
    (
        "shardkv_wal_written_bytes_total",
        "Frame bytes written to write-ahead log segments.",
    ),
    (
        "shardkv_log_persists_total",
        "Batches of acceptor state the replicated log persisted (one fsync each).",
    ),
    (
        "shardkv_snapshots_taken_total",
        "Snapshots this replica took of its own state machine.",
    ),
    (
        "shardkv_snapshots_installed_total",
        "Snapshots received from peers and installed.",
    ),
];
const FSYNC_MAX_NAME: &str = "shardkv_wal_fsync_max_seconds";
const FSYNC_MAX_HELP: &str = "Longest single write-ahead log fdatasync so far.";

impl ReplicaCounters {
    fn new(probe: ReplicaProbe) -> Result<ReplicaCounters, MetricsError> {
        let rpc = HashMap::from([("api".to_string(), "rpc".to_string())]);
        let desc = |name: &str, help: &str, labels: &[&str], constant: &HashMap<String, String>| {
            Desc::new(
                name.to_string(),
                help.to_string(),
                labels.iter().map(|label| (*label).to_string()).collect(),
                constant.clone(),
            )
            .map_err(|source| register_error(name, source))
        };
        let mut descs = vec![
            desc("shardkv_ops_total", OPS_HELP, &["op", "outcome"], &rpc)?,
            desc("shardkv_op_duration_seconds", DURATION_HELP, &["op"], &rpc)?,
            desc(FSYNC_MAX_NAME, FSYNC_MAX_HELP, &[], &HashMap::new())?,
        ];
        for (name, help) in COUNTER_FAMILIES {
            descs.push(desc(name, help, &[], &HashMap::new())?);
        }
        Ok(ReplicaCounters { probe, descs })
    }
}

fn label(name: &str, value: &str) -> proto::LabelPair {
    let mut pair = proto::LabelPair::default();
    pair.set_name(name.to_string());
    pair.set_value(value.to_string());
    pair
}

fn family(
    name: &str,
    help: &str,
    kind: MetricType,
    metrics: Vec<proto::Metric>,
) -> proto::MetricFamily {
    let mut family = proto::MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

fn counter(value: f64) -> proto::Metric {
    let mut counter = proto::Counter::default();
    counter.set_value(value);
    let mut metric = proto::Metric::default();
    metric.set_counter(counter);
    metric
}

fn gauge(value: f64) -> proto::Metric {
    let mut gauge = proto::Gauge::default();
    gauge.set_value(value);
    proto::Metric::from_gauge(gauge)
}

/// A counter value as the exposition format carries it (a float; exact up
/// to 2^53, far beyond any count here).
#[allow(clippy::cast_precision_loss)]
fn float(value: u64) -> f64 {
    value as f64
}

impl Collector for ReplicaCounters {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let requests = self.probe.requests();
        let mut ops = Vec::new();
        let mut durations = Vec::new();
        for kind in RequestKind::ALL {
            for outcome in RequestOutcome::ALL {
                let mut metric = counter(float(requests.count(kind, outcome)));
                metric.set_label(vec![
                    label("api", "rpc"),
                    label("op", kind.name()),
                    label("outcome", outcome.name()),
                ]);
                ops.push(metric);
            }
            let snapshot = requests.latency(kind);
            let mut histogram = proto::Histogram::default();
            histogram.set_sample_count(snapshot.count);
            histogram.set_sample_sum(snapshot.sum_seconds);
            histogram.set_bucket(
                LATENCY_BUCKETS_SECONDS
                    .iter()
                    .zip(&snapshot.cumulative_counts)
                    .map(|(bound, count)| {
                        let mut bucket = proto::Bucket::default();
                        bucket.set_upper_bound(*bound);
                        bucket.set_cumulative_count(*count);
                        bucket
                    })
                    .collect(),
            );
            let mut metric = proto::Metric::default();
            metric.set_histogram(histogram);
            metric.set_label(vec![label("api", "rpc"), label("op", kind.name())]);
            durations.push(metric);
        }
        let wal = self.probe.wal();
        let node = self.probe.node_metrics();
        let micros = |value: u64| float(value) / 1e6;
        let values = [
            float(wal.fsync_count.load(Ordering::Relaxed)),
            micros(wal.fsync_micros_total.load(Ordering::Relaxed)),
            float(wal.records_synced.load(Ordering::Relaxed)),
            float(wal.bytes_written.load(Ordering::Relaxed)),
            float(node.persist_count),
            float(node.snapshots_taken),
            float(node.snapshots_installed),
        ];
        let mut families = vec![
            family("shardkv_ops_total", OPS_HELP, MetricType::COUNTER, ops),
            family(
                "shardkv_op_duration_seconds",
                DURATION_HELP,
                MetricType::HISTOGRAM,
                durations,
            ),
            family(
                FSYNC_MAX_NAME,
                FSYNC_MAX_HELP,
                MetricType::GAUGE,
                vec![gauge(micros(wal.fsync_micros_max.load(Ordering::Relaxed)))],
            ),
        ];
        for ((name, help), value) in COUNTER_FAMILIES.iter().zip(values) {
            families.push(family(
                name,
                help,
                MetricType::COUNTER,
                vec![counter(value)],
            ));
        }
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_sizes_count_files_below_it_and_missing_ones_are_zero() {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 100]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub").join("b"), [0u8; 23]).unwrap();
        assert_eq!(dir_size_bytes(dir.path()), 123);
        assert_eq!(dir_size_bytes(&dir.path().join("missing")), 0);
    }
}
