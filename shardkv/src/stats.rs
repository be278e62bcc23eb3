//! What a replica counts about the requests it serves ([`RequestStats`]),
//! and a cheap, cloneable view of a running replica for status pages and
//! metrics ([`ReplicaProbe`]).
//!
//! The client service of [`crate::server`] records every `ShardKv` request
//! it answers: which kind it was, how it ended, and how long it took, in
//! relaxed atomic counters and fixed-bucket latency histograms. Nothing here
//! knows about any metrics format: the `tools` crate turns a snapshot of
//! these counters into Prometheus text at scrape time, so this crate stays
//! free of exporter dependencies and a scrape never blocks a request.
//!
//! A [`ReplicaProbe`] bundles the handles a reporter needs (the log node's
//! metrics, the published group state, the WAL's counters, these request
//! counters) without owning the replica, so an HTTP server can keep one for
//! as long as it likes while the replica is shut down by its owner.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use controller::Gid;
use paxos_log::{NodeHandle, NodeMetrics};
use storage::wal::WalStats;
use tokio::sync::watch;

use crate::group::GroupState;
use crate::rpc::{ReplicaStatus, ServiceError};
use crate::server::SharedMachine;
use crate::state_machine::GroupView;
use crate::wire::{ReadOp, WriteOp};

/// Upper bounds (inclusive, in seconds) of the latency histogram buckets;
/// a last, unbounded bucket catches the rest. From half a millisecond (a
/// read-index read on loopback) to ten seconds (a write waiting out a
/// leader change).
pub const LATENCY_BUCKETS_SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Every request kind of the `ShardKv` service that is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RequestKind {
    /// `read` of one key.
    Get,
    /// `read` of a key range.
    Scan,
    /// `write`: put.
    Put,
    /// `write`: append.
    Append,
    /// `write`: delete.
    Delete,
    /// `write`: compare-and-swap.
    Cas,
    /// `write`: put_hash.
    PutHash,
    /// Another group pulling a chunk of a shard this group lost.
    PullShard,
    /// Another group telling this one to delete a shard copy.
    DeleteShard,
}

impl RequestKind {
    /// Every kind, in a fixed order (the order of the counters).
    pub const ALL: [RequestKind; 9] = [
        RequestKind::Get,
        RequestKind::Scan,
        RequestKind::Put,
        RequestKind::Append,
        RequestKind::Delete,
        RequestKind::Cas,
        RequestKind::PutHash,
        RequestKind::PullShard,
        RequestKind::DeleteShard,
    ];

    /// A short lowercase name, usable as a metric label value.
    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Get => "get",
            RequestKind::Scan => "scan",
            RequestKind::Put => "put",
            RequestKind::Append => "append",
            RequestKind::Delete => "delete",
            RequestKind::Cas => "cas",
            RequestKind::PutHash => "put_hash",
            RequestKind::PullShard => "pull_shard",
            RequestKind::DeleteShard => "delete_shard",
        }
    }

    /// The kind of a write.
    pub fn of_write(op: &WriteOp) -> RequestKind {
        match op {
            WriteOp::Put { .. } => RequestKind::Put,
            WriteOp::Append { .. } => RequestKind::Append,
            WriteOp::Delete { .. } => RequestKind::Delete,
            WriteOp::Cas { .. } => RequestKind::Cas,
            WriteOp::PutHash { .. } => RequestKind::PutHash,
        }
    }

    /// The kind of a read.
    pub fn of_read(op: &ReadOp) -> RequestKind {
        match op {
            ReadOp::Get { .. } => RequestKind::Get,
            ReadOp::Scan { .. } => RequestKind::Scan,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How a counted request ended: success, or the [`ServiceError`] variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RequestOutcome {
    /// Answered.
    Ok,
    /// Refused by the group's rules (`ServiceError::Refused`).
    Refused,
    /// Sent elsewhere: this replica does not lead.
    NotLeader,
    /// The replica's queue was full.
    Busy,
    /// The outcome is unknown.
    Indeterminate,
    /// The replica is stopping or its storage failed.
    Stopped,
    /// A migration call came too early.
    NotReady,
}

impl RequestOutcome {
    /// Every outcome, in a fixed order (the order of the counters).
    pub const ALL: [RequestOutcome; 7] = [
        RequestOutcome::Ok,
        RequestOutcome::Refused,
        RequestOutcome::NotLeader,
        RequestOutcome::Busy,
        RequestOutcome::Indeterminate,
        RequestOutcome::Stopped,
        RequestOutcome::NotReady,
    ];

    /// A short lowercase name, usable as a metric label value.
    pub fn name(self) -> &'static str {
        match self {
            RequestOutcome::Ok => "ok",
            RequestOutcome::Refused => "refused",
            RequestOutcome::NotLeader => "not_leader",
            RequestOutcome::Busy => "busy",
            RequestOutcome::Indeterminate => "indeterminate",
            RequestOutcome::Stopped => "stopped",
            RequestOutcome::NotReady => "not_ready",
        }
    }

    /// The outcome of a served request.
    pub fn of<T>(result: &Result<T, ServiceError>) -> RequestOutcome {
        match result {
            Ok(_) => RequestOutcome::Ok,
            Err(ServiceError::Refused(_)) => RequestOutcome::Refused,
            Err(ServiceError::NotLeader { .. }) => RequestOutcome::NotLeader,
            Err(ServiceError::Busy) => RequestOutcome::Busy,
            Err(ServiceError::Indeterminate(_)) => RequestOutcome::Indeterminate,
            Err(ServiceError::Stopped(_)) => RequestOutcome::Stopped,
            Err(ServiceError::NotReady(_)) => RequestOutcome::NotReady,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A latency histogram with the fixed buckets [`LATENCY_BUCKETS_SECONDS`].
/// Relaxed atomics: a concurrent snapshot may see a sample in a bucket and
/// not yet in the count, which statistics tolerate.
#[derive(Debug)]
pub struct LatencyHistogram {
    /// Samples per bucket (not cumulative); the last is the unbounded one.
    buckets: [AtomicU64; LATENCY_BUCKETS_SECONDS.len() + 1],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
}

/// A histogram's values at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Cumulative counts: samples at or below each bound of
    /// [`LATENCY_BUCKETS_SECONDS`], in order.
    pub cumulative_counts: Vec<u64>,
    /// All samples (the `+Inf` bucket).
    pub count: u64,
    /// Sum of all samples, in seconds.
    pub sum_seconds: f64,
}

impl LatencyHistogram {
    /// Adds one sample.
    pub fn record(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS_SECONDS.len());
        debug_assert!(bucket < self.buckets.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The current values.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0u64;
        let mut cumulative_counts = Vec::with_capacity(LATENCY_BUCKETS_SECONDS.len());
        for bucket in &self.buckets[..LATENCY_BUCKETS_SECONDS.len()] {
            running = running.saturating_add(bucket.load(Ordering::Relaxed));
            cumulative_counts.push(running);
        }
        let overflow = self.buckets[LATENCY_BUCKETS_SECONDS.len()].load(Ordering::Relaxed);
        // The `+Inf` bucket must not be below the others, whatever order
        // concurrent updates landed in.
        let count = self
            .count
            .load(Ordering::Relaxed)
            .max(running.saturating_add(overflow));
        #[allow(clippy::cast_precision_loss)] // statistics: rounding is fine
        let sum_seconds = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        HistogramSnapshot {
            cumulative_counts,
            count,
            sum_seconds,
        }
    }
}

/// Counters of the `ShardKv` requests one replica served: per kind, how
/// many ended each way, and how long they took.
#[derive(Debug)]
pub struct RequestStats {
    outcomes: [[AtomicU64; RequestOutcome::ALL.len()]; RequestKind::ALL.len()],
    latency: [LatencyHistogram; RequestKind::ALL.len()],
}

impl Default for RequestStats {
    fn default() -> Self {
        RequestStats {
            outcomes: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency: std::array::from_fn(|_| LatencyHistogram::default()),
        }
    }
}

impl RequestStats {
    /// Counts one request.
    pub fn record(&self, kind: RequestKind, outcome: RequestOutcome, elapsed: Duration) {
        self.outcomes[kind.index()][outcome.index()].fetch_add(1, Ordering::Relaxed);
        self.latency[kind.index()].record(elapsed);
    }

    /// Requests of `kind` that ended with `outcome` so far.
    pub fn count(&self, kind: RequestKind, outcome: RequestOutcome) -> u64 {
        self.outcomes[kind.index()][outcome.index()].load(Ordering::Relaxed)
    }

    /// The latency histogram of `kind`.
    pub fn latency(&self, kind: RequestKind) -> HistogramSnapshot {
        self.latency[kind.index()].snapshot()
    }
}

/// A running replica's state and counters, for status pages and metrics.
/// Cloning is cheap; holding one does not keep the replica running (its
/// owner still shuts it down), and after that it reports the last state.
#[derive(Debug, Clone)]
pub struct ReplicaProbe {
    pub(crate) machine: SharedMachine,
    pub(crate) node: NodeHandle,
    pub(crate) view: watch::Receiver<GroupView>,
    pub(crate) gid: Gid,
    pub(crate) requests: Arc<RequestStats>,
    pub(crate) wal: Arc<WalStats>,
}

impl ReplicaProbe {
    /// The group.
    pub fn gid(&self) -> Gid {
        self.gid
    }

    /// What the replica knows, as the `status` RPC answers it.
    pub fn status(&self) -> ReplicaStatus {
        crate::server::status(&self.machine, &self.node, self.gid)
    }

    /// The `paxos-log` node's latest metrics.
    pub fn node_metrics(&self) -> NodeMetrics {
        self.node.metrics()
    }

    /// The group state as the replica has applied it (may lag), and why
    /// the replica stopped serving, if its store failed.
    pub fn group_view(&self) -> (Arc<GroupState>, Option<String>) {
        let view = self.view.borrow();
        (Arc::clone(&view.group), view.failed.clone())
    }

    /// The requests the replica served.
    pub fn requests(&self) -> &RequestStats {
        &self.requests
    }

    /// The acceptor WAL's write-path counters (fsyncs and their time).
    pub fn wal(&self) -> &WalStats {
        &self.wal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_in_their_bucket_and_the_counts_are_cumulative() {
        let histogram = LatencyHistogram::default();
        histogram.record(Duration::from_micros(300)); // <= 0.5 ms
        histogram.record(Duration::from_millis(3)); // <= 5 ms
        histogram.record(Duration::from_secs(60)); // +Inf only
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 3);
        assert_eq!(snapshot.cumulative_counts[0], 1);
        assert_eq!(snapshot.cumulative_counts[2], 1, "2.5 ms bucket");
        assert_eq!(snapshot.cumulative_counts[3], 2, "5 ms bucket");
        assert_eq!(*snapshot.cumulative_counts.last().unwrap(), 2);
        assert!((snapshot.sum_seconds - 60.0033).abs() < 1e-9);
    }

    #[test]
    fn requests_are_counted_per_kind_and_outcome() {
        let stats = RequestStats::default();
        let ok: Result<(), ServiceError> = Ok(());
        let busy: Result<(), ServiceError> = Err(ServiceError::Busy);
        stats.record(RequestKind::Put, RequestOutcome::of(&ok), Duration::ZERO);
        stats.record(RequestKind::Put, RequestOutcome::of(&ok), Duration::ZERO);
        stats.record(RequestKind::Get, RequestOutcome::of(&busy), Duration::ZERO);
        assert_eq!(stats.count(RequestKind::Put, RequestOutcome::Ok), 2);
        assert_eq!(stats.count(RequestKind::Get, RequestOutcome::Busy), 1);
        assert_eq!(stats.count(RequestKind::Get, RequestOutcome::Ok), 0);
        assert_eq!(stats.latency(RequestKind::Put).count, 2);
        let names: std::collections::BTreeSet<_> =
            RequestKind::ALL.iter().map(|kind| kind.name()).collect();
        assert_eq!(names.len(), RequestKind::ALL.len(), "names are distinct");
        for (i, kind) in RequestKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i, "ALL is in index order");
        }
        for (i, outcome) in RequestOutcome::ALL.iter().enumerate() {
            assert_eq!(outcome.index(), i, "ALL is in index order");
        }
    }
}
