//! Tests of the acceptor stores against the `AcceptorStore` contract, and of
//! `WalAcceptorStore`'s durability: a batch acknowledged by `persist`
//! survives any crash; a batch whose `persist` failed survives whole or not
//! at all (one batch is one WAL record); a failed write or fsync stops the
//! store until it is reopened; a torn last record is dropped, other damage
//! and undecodable records refuse to open.
//!
//! Method: one conformance suite runs against `MemAcceptorStore` and
//! `WalAcceptorStore` on `SimFs` (restarted through a simulated power loss)
//! and on real files; expected states are written out by hand. The WAL store
//! is compared with `MemAcceptorStore` fed the same batches on random
//! workloads. Crash tests run on `SimFs` and enumerate every fault point,
//! every surviving prefix of the unsynced bytes, every truncation and every
//! flipped byte of the records concerned; record offsets are found by
//! walking the frame lengths in the file (segment header 32 bytes, frame
//! header 16), independently of the code under test.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use paxos_log::{
    AcceptorStore, Ballot, MemAcceptorStore, NodeId, PersistOp, RecoveredState, Slot, Value,
    WalAcceptorStore,
};
use proptest::prelude::*;
use storage::fs::{Fault, Fs, RealFs, SimFs};
use storage::wal::{Wal, WalOptions, WalReader};
use storage::StorageError;
use tempfile::TempDir;

/// Where every `SimFs` test keeps its log.
const DIR: &str = "/node/acceptor-wal";
/// Segment header and frame header sizes (docs/disk-format.md).
const SEGMENT_HEADER_LEN: usize = 32;
const FRAME_HEADER_LEN: usize = 16;

fn dir() -> PathBuf {
    PathBuf::from(DIR)
}

fn options(segment_size_bytes_max: u64) -> WalOptions {
    WalOptions {
        segment_size_bytes_max,
        record_size_bytes_max: 1 << 16,
        write_buffer_bytes_max: 1 << 20,
    }
}

/// Segments large enough that a test's whole log fits in one.
fn one_segment() -> WalOptions {
    options(1 << 20)
}

/// The smallest segments the WAL allows: every record starts a new one.
fn tiny_segments() -> WalOptions {
    options((SEGMENT_HEADER_LEN + FRAME_HEADER_LEN) as u64)
}

fn b(round: u64, node: u64) -> Ballot {
    Ballot {
        round,
        node_id: NodeId(node),
    }
}

fn val(tag: u8) -> Value {
    Value::Commands(vec![vec![tag; 3], vec![tag.wrapping_add(1)]])
}

fn promise(ballot: Ballot) -> PersistOp {
    PersistOp::Promise { ballot }
}

fn accept(slot: Slot, ballot: Ballot, value: Value) -> PersistOp {
    PersistOp::Accept {
        slot,
        ballot,
        value,
    }
}

fn chosen(slot: Slot, value: Value) -> PersistOp {
    PersistOp::Chosen { slot, value }
}

fn state(
    promised: Ballot,
    accepted: &[(Slot, Ballot, Value)],
    chosen: &[(Slot, Value)],
) -> RecoveredState {
    RecoveredState {
        promised,
        accepted: accepted
            .iter()
            .map(|(slot, ballot, value)| (*slot, (*ballot, value.clone())))
            .collect(),
        chosen: chosen.iter().cloned().collect(),
        compacted_upto: 0,
    }
}

/// The reference: `MemAcceptorStore` fed `batches`.
fn mem_state(batches: &[Vec<PersistOp>]) -> RecoveredState {
    let mut mem = MemAcceptorStore::new();
    for batch in batches {
        mem.persist(batch).unwrap();
    }
    mem.recover().unwrap()
}

fn open(fs: &SimFs, options: &WalOptions) -> Result<WalAcceptorStore, StorageError> {
    WalAcceptorStore::open(fs.shared(), &dir(), options.clone())
}

/// The encoded record payload of a batch, format v1, built independently of
/// the store: version byte 1, then `bincode::serialize` of the ops.
fn v1_payload(ops: &[PersistOp]) -> Vec<u8> {
    let mut payload = vec![1];
    payload.extend(bincode::serialize(&ops.to_vec()).unwrap());
    payload
}

/// The segment files of the WAL, oldest first.
fn segment_paths(fs: &SimFs) -> Vec<PathBuf> {
    fs.list_dir(&dir())
        .unwrap()
        .into_iter()
        .filter(|name| name.ends_with(".wal"))
        .map(|name| dir().join(name))
        .collect()
}

/// Byte ranges of the frames of a segment file, found by walking the frame
/// length fields.
fn frame_ranges(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut offset = SEGMENT_HEADER_LEN;
    while offset < bytes.len() {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap());
        let end = offset + FRAME_HEADER_LEN + usize::try_from(len).unwrap();
        ranges.push(offset..end);
        offset = end;
    }
    assert_eq!(
        offset,
        bytes.len(),
        "frames must end at the end of the file"
    );
    ranges
}

fn persist_all(store: &mut dyn AcceptorStore, batches: &[Vec<PersistOp>]) {
    for batch in batches {
        store.persist(batch).unwrap();
    }
}

fn assert_poisoned<T: std::fmt::Debug>(result: Result<T, StorageError>, context: &str) {
    assert!(
        matches!(result, Err(StorageError::Poisoned { .. })),
        "{context}: expected Poisoned, got {result:?}"
    );
}

fn assert_corruption_in_dir<T: std::fmt::Debug>(
    result: Result<T, StorageError>,
    lsn: u64,
    context: &str,
) {
    match result {
        Err(StorageError::Corruption {
            path,
            offset,
            reason,
        }) => {
            assert_eq!(path, dir(), "{context}: wrong path ({reason})");
            assert_eq!(offset, 0, "{context}: ({reason})");
            assert!(
                reason.contains(&format!("record LSN {lsn}:")),
                "{context}: reason does not name LSN {lsn}: {reason}"
            );
        }
        other => panic!("{context}: expected Corruption naming LSN {lsn}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// 1. Conformance: the same cases against every store.
// ---------------------------------------------------------------------------

/// A kind of store under test, and what a restart means for it.
trait Harness {
    /// A new, empty store.
    fn fresh(&mut self) -> Box<dyn AcceptorStore>;
    /// The store the last `fresh` returned, after a restart.
    fn restart(&mut self, store: Box<dyn AcceptorStore>) -> Box<dyn AcceptorStore>;
}

/// `MemAcceptorStore` lives across a simulated restart: nothing to do.
struct MemHarness;

impl Harness for MemHarness {
    fn fresh(&mut self) -> Box<dyn AcceptorStore> {
        Box::new(MemAcceptorStore::new())
    }
    fn restart(&mut self, store: Box<dyn AcceptorStore>) -> Box<dyn AcceptorStore> {
        store
    }
}

/// `WalAcceptorStore` on `SimFs`; a restart is a power loss and a reopen.
struct SimHarness {
    fs: SimFs,
    options: WalOptions,
}

impl Harness for SimHarness {
    fn fresh(&mut self) -> Box<dyn AcceptorStore> {
        self.fs = SimFs::new();
        Box::new(open(&self.fs, &self.options).unwrap())
    }
    fn restart(&mut self, store: Box<dyn AcceptorStore>) -> Box<dyn AcceptorStore> {
        drop(store);
        self.fs.crash();
        Box::new(open(&self.fs, &self.options).unwrap())
    }
}

/// `WalAcceptorStore` on real files; a restart is a drop and a reopen.
struct RealHarness {
    root: TempDir,
    count: u32,
}

impl RealHarness {
    fn dir(&self) -> PathBuf {
        self.root.path().join(format!("store-{}", self.count))
    }
    fn open(&self) -> Box<dyn AcceptorStore> {
        Box::new(WalAcceptorStore::open(RealFs::shared(), &self.dir(), one_segment()).unwrap())
    }
}

impl Harness for RealHarness {
    fn fresh(&mut self) -> Box<dyn AcceptorStore> {
        self.count += 1;
        self.open()
    }
    fn restart(&mut self, store: Box<dyn AcceptorStore>) -> Box<dyn AcceptorStore> {
        drop(store);
        self.open()
    }
}

struct Case {
    name: &'static str,
    batches: Vec<Vec<PersistOp>>,
    expected: RecoveredState,
}

fn conformance_cases() -> Vec<Case> {
    vec![
        Case {
            name: "a new store is empty",
            batches: vec![],
            expected: RecoveredState::default(),
        },
        Case {
            name: "a lower promise after a higher one does not lower it",
            batches: vec![
                vec![promise(b(5, 1))],
                vec![promise(b(3, 2))],
                vec![promise(b(5, 0))],
            ],
            expected: state(b(5, 1), &[], &[]),
        },
        Case {
            name: "a lower promise later in the same batch does not lower it",
            batches: vec![vec![promise(b(2, 1)), promise(b(7, 2)), promise(b(6, 3))]],
            expected: state(b(7, 2), &[], &[]),
        },
        Case {
            name: "per slot, the accept at the highest ballot wins",
            batches: vec![
                vec![accept(1, b(2, 1), val(1))],
                vec![accept(1, b(1, 2), val(2))],
                vec![accept(2, b(1, 2), val(3))],
                vec![accept(1, b(3, 1), val(4))],
                vec![accept(1, b(2, 2), val(5)), accept(2, b(1, 1), val(6))],
            ],
            expected: state(b(3, 1), &[(1, b(3, 1), val(4)), (2, b(1, 2), val(3))], &[]),
        },
        Case {
            name: "a lower-ballot accept later in the same batch does not replace",
            batches: vec![vec![
                accept(7, b(4, 1), Value::Noop),
                accept(7, b(3, 3), val(9)),
            ]],
            expected: state(b(4, 1), &[(7, b(4, 1), Value::Noop)], &[]),
        },
        Case {
            name: "an accept raises the promise",
            batches: vec![vec![promise(b(2, 1))], vec![accept(4, b(6, 3), val(1))]],
            expected: state(b(6, 3), &[(4, b(6, 3), val(1))], &[]),
        },
        Case {
            name: "an accept below the promise does not lower it",
            batches: vec![vec![promise(b(9, 1))], vec![accept(4, b(6, 3), val(1))]],
            expected: state(b(9, 1), &[(4, b(6, 3), val(1))], &[]),
        },
        Case {
            name: "chosen values are recorded, apart from accepts and promises",
            batches: vec![
                vec![chosen(3, val(1))],
                vec![chosen(5, Value::Noop), accept(3, b(1, 1), val(2))],
                vec![chosen(8, Value::Commands(vec![]))],
            ],
            expected: state(
                b(1, 1),
                &[(3, b(1, 1), val(2))],
                &[(3, val(1)), (5, Value::Noop), (8, Value::Commands(vec![]))],
            ),
        },
        Case {
            name: "empty batches change nothing",
            batches: vec![
                vec![],
                vec![promise(b(1, 1)), chosen(1, val(7))],
                vec![],
                vec![],
            ],
            expected: state(b(1, 1), &[], &[(1, val(7))]),
        },
    ]
}

/// Runs every case on fresh stores of `harness`, checking the state right
/// after the batches, after a restart, and after an empty batch and another
/// restart.
fn conformance(harness: &mut dyn Harness, store_name: &str) {
    for case in conformance_cases() {
        let context = format!("{store_name}: {}", case.name);
        let mut store = harness.fresh();
        assert_eq!(
            store.recover().unwrap(),
            RecoveredState::default(),
            "{context}: fresh"
        );
        persist_all(store.as_mut(), &case.batches);
        assert_eq!(store.recover().unwrap(), case.expected, "{context}");
        let mut store = harness.restart(store);
        assert_eq!(
            store.recover().unwrap(),
            case.expected,
            "{context}: after restart"
        );
        store.persist(&[]).unwrap();
        assert_eq!(
            store.recover().unwrap(),
            case.expected,
            "{context}: after an empty batch"
        );
        let mut store = harness.restart(store);
        assert_eq!(
            store.recover().unwrap(),
            case.expected,
            "{context}: after an empty batch and a restart"
        );
    }
}

#[test]
fn conformance_mem() {
    conformance(&mut MemHarness, "MemAcceptorStore");
}

#[test]
fn conformance_wal_simfs() {
    for (name, options) in [("one segment", one_segment()), ("tiny", tiny_segments())] {
        let mut harness = SimHarness {
            fs: SimFs::new(),
            options,
        };
        conformance(
            &mut harness,
            &format!("WalAcceptorStore on SimFs ({name} segments)"),
        );
    }
}

#[test]
fn conformance_wal_real_files() {
    let mut harness = RealHarness {
        root: tempfile::tempdir().unwrap(),
        count: 0,
    };
    conformance(&mut harness, "WalAcceptorStore on real files");
}

// ---------------------------------------------------------------------------
// One record and one fsync per batch; the record format.
// ---------------------------------------------------------------------------

#[test]
fn each_batch_is_one_record_and_one_fsync_and_empty_batches_touch_nothing() {
    let fs = SimFs::new();
    let mut store = open(&fs, &one_segment()).unwrap();
    let stats = store.stats();
    assert_eq!(store.wal_dir(), dir());
    let batches = [
        vec![promise(b(1, 1))],
        vec![accept(1, b(1, 1), val(1)), accept(2, b(1, 1), val(2))],
        vec![
            chosen(3, val(3)),
            promise(b(2, 2)),
            accept(4, b(2, 2), Value::Noop),
        ],
    ];
    for (i, batch) in batches.iter().enumerate() {
        store.persist(batch).unwrap();
        let n = u64::try_from(i + 1).unwrap();
        assert_eq!(stats.fsync_count.load(Ordering::Relaxed), n, "batch {i}");
        assert_eq!(stats.records_synced.load(Ordering::Relaxed), n, "batch {i}");
    }
    let segment = &segment_paths(&fs)[0];
    let bytes_before = fs.read(segment).unwrap();
    let written_before = stats.bytes_written.load(Ordering::Relaxed);
    let ops_before = fs.mutating_ops();
    store.persist(&[]).unwrap();
    assert_eq!(
        fs.mutating_ops(),
        ops_before,
        "an empty batch wrote or synced"
    );
    assert_eq!(stats.fsync_count.load(Ordering::Relaxed), 3);
    assert_eq!(stats.bytes_written.load(Ordering::Relaxed), written_before);
    assert_eq!(fs.read(segment).unwrap(), bytes_before);
    assert_eq!(store.recover().unwrap(), mem_state(&batches));
}

#[test]
fn records_are_a_version_byte_then_bincode_of_the_batch() {
    let fs = SimFs::new();
    let batches = [
        vec![promise(b(1, 1)), accept(1, b(1, 1), val(1))],
        vec![chosen(2, Value::Noop)],
    ];
    let mut store = open(&fs, &one_segment()).unwrap();
    persist_all(&mut store, &batches);
    drop(store);
    let records = WalReader::open(fs.shared(), &dir(), 1 << 16)
        .unwrap()
        .read_from(1)
        .unwrap();
    let payloads: Vec<(u64, Vec<u8>)> = records.into_iter().map(|r| (r.lsn, r.payload)).collect();
    assert_eq!(
        payloads,
        vec![(1, v1_payload(&batches[0])), (2, v1_payload(&batches[1]))]
    );
}

/// The bytes of two records written out by hand from docs/disk-format.md,
/// so a change of encoding (bincode options, field or variant order) fails.
#[test]
fn records_have_the_documented_bytes() {
    let le = |x: u64| x.to_le_bytes().to_vec();
    let promise_record = [vec![1], le(1), vec![0, 0, 0, 0], le(3), le(2)].concat();
    assert_eq!(promise_record.len(), 29);
    let accept_record = [
        vec![1],
        le(1),
        vec![1, 0, 0, 0],
        le(7),
        le(4),
        le(1),
        vec![1, 0, 0, 0],
        le(1),
        le(2),
        vec![0xaa, 0xbb],
    ]
    .concat();
    let fs = SimFs::new();
    let mut store = open(&fs, &one_segment()).unwrap();
    store.persist(&[promise(b(3, 2))]).unwrap();
    store
        .persist(&[accept(7, b(4, 1), Value::Commands(vec![vec![0xaa, 0xbb]]))])
        .unwrap();
    drop(store);
    let payloads: Vec<Vec<u8>> = WalReader::open(fs.shared(), &dir(), 1 << 16)
        .unwrap()
        .read_from(1)
        .unwrap()
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(payloads, vec![promise_record, accept_record]);
}

#[test]
fn hand_written_v1_records_are_recovered() {
    let fs = SimFs::new();
    let batches = vec![
        vec![promise(b(3, 2)), accept(5, b(3, 2), val(4))],
        vec![chosen(1, val(9)), accept(5, b(2, 1), val(5))],
        // An empty batch is never written, but decodes as nothing.
        vec![],
    ];
    let (mut wal, _) = Wal::open(fs.shared(), &dir(), one_segment()).unwrap();
    for batch in &batches {
        wal.append(&v1_payload(batch)).unwrap();
    }
    wal.sync().unwrap();
    drop(wal);
    let mut store = open(&fs, &one_segment()).unwrap();
    assert_eq!(
        store.recover().unwrap(),
        state(b(3, 2), &[(5, b(3, 2), val(4))], &[(1, val(9))])
    );
    assert_eq!(store.recovery_report().record_count, 3);
}

#[test]
fn a_batch_over_the_record_limit_is_refused_without_poisoning() {
    let fs = SimFs::new();
    let options = WalOptions {
        record_size_bytes_max: 256,
        ..one_segment()
    };
    let mut store = open(&fs, &options).unwrap();
    store.persist(&[promise(b(1, 1))]).unwrap();
    let huge = vec![accept(1, b(1, 1), Value::Commands(vec![vec![7; 300]]))];
    let result = store.persist(&huge);
    assert!(
        matches!(
            result,
            Err(StorageError::RecordTooLarge { max_bytes: 256, .. })
        ),
        "{result:?}"
    );
    let expected = state(b(1, 1), &[], &[]);
    assert_eq!(store.recover().unwrap(), expected);
    store.persist(&[promise(b(2, 1))]).unwrap();
    drop(store);
    fs.crash();
    let mut store = open(&fs, &options).unwrap();
    assert_eq!(store.recover().unwrap(), state(b(2, 1), &[], &[]));
}

/// A batch several times the record limit (a leader's own accepts for many
/// full slots in one `Ready`) is split into records under one fsync, and
/// recovers whole; a crash that tears the unsynced records keeps a prefix of
/// the batch, never a later op without the earlier ones.
#[test]
fn a_batch_over_the_record_limit_is_split_under_one_fsync() {
    let sized_value =
        |slot: Slot| Value::Commands(vec![vec![7; 200 + usize::try_from(slot).unwrap()]]);
    let fs = SimFs::new();
    let options = WalOptions {
        record_size_bytes_max: 1024,
        ..one_segment()
    };
    let mut store = open(&fs, &options).unwrap();
    let batch: Vec<PersistOp> = (1..=20)
        .map(|slot| accept(slot, b(1, 1), sized_value(slot)))
        .collect();
    let fsyncs_before = store.stats().fsync_count.load(Ordering::Relaxed);
    store.persist(&batch).unwrap();
    let fsyncs = store.stats().fsync_count.load(Ordering::Relaxed) - fsyncs_before;
    assert_eq!(fsyncs, 1, "one fsync covers the whole batch");
    let records = store.stats().records_synced.load(Ordering::Relaxed);
    assert!(
        records >= 4,
        "20 ops of ~230 bytes need several 1 KiB records, got {records}"
    );
    let expected: Vec<(Slot, Ballot, Value)> = (1..=20)
        .map(|slot| (slot, b(1, 1), sized_value(slot)))
        .collect();
    drop(store);
    fs.crash();
    let mut store = open(&fs, &options).unwrap();
    assert_eq!(store.recover().unwrap(), state(b(1, 1), &expected, &[]));

    // The same batch, torn by a crash before its fsync: a prefix survives.
    let mut next: Vec<PersistOp> = (21..=40)
        .map(|slot| accept(slot, b(2, 1), Value::Commands(vec![vec![1; 200]])))
        .collect();
    next.insert(0, promise(b(2, 1)));
    for seed in 0..16 {
        let fs = SimFs::new();
        let mut store = open(&fs, &options).unwrap();
        fs.inject(Fault::SyncError);
        assert!(store.persist(&next).is_err());
        drop(store);
        fs.crash_torn(seed);
        let mut store = open(&fs, &options).unwrap();
        let recovered = store.recover().unwrap();
        let slots: Vec<Slot> = recovered.accepted.keys().copied().collect();
        assert_eq!(
            slots,
            (21..21 + slots.len() as u64).collect::<Vec<_>>(),
            "seed {seed}: not a prefix"
        );
        if !slots.is_empty() {
            assert_eq!(
                recovered.promised,
                b(2, 1),
                "seed {seed}: later op kept without earlier one"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 2. Restart equivalence on random workloads.
// ---------------------------------------------------------------------------

fn arb_ballot() -> impl Strategy<Value = Ballot> {
    (0u64..4, 0u64..3).prop_map(|(round, node)| b(round, node))
}

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Noop),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..6), 0..3)
            .prop_map(Value::Commands),
    ]
}

fn arb_op() -> impl Strategy<Value = PersistOp> {
    prop_oneof![
        arb_ballot().prop_map(promise),
        (1u64..6, arb_ballot(), arb_value())
            .prop_map(|(slot, ballot, value)| accept(slot, ballot, value)),
        (1u64..6, arb_value()).prop_map(|(slot, value)| chosen(slot, value)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// Persisting random batches, then a power loss and a reopen, gives the
    /// same state as `MemAcceptorStore` fed the same batches, both before and
    /// after the restart; each non-empty batch is exactly one record.
    #[test]
    fn reopened_wal_store_equals_mem_store(
        batches in prop::collection::vec(prop::collection::vec(arb_op(), 0..6), 0..12),
        segment_size in prop_oneof![Just(48u64), Just(200), Just(1 << 20)],
    ) {
        let fs = SimFs::new();
        let options = options(segment_size);
        let mut store = open(&fs, &options).unwrap();
        let mut mem = MemAcceptorStore::new();
        for batch in &batches {
            store.persist(batch).unwrap();
            mem.persist(batch).unwrap();
        }
        let expected = mem.recover().unwrap();
        prop_assert_eq!(&store.recover().unwrap(), &expected);
        let non_empty = batches.iter().filter(|batch| !batch.is_empty()).count();
        prop_assert_eq!(
            store.stats().records_synced.load(Ordering::Relaxed),
            u64::try_from(non_empty).unwrap()
        );
        drop(store);
        fs.crash();
        let mut store = open(&fs, &options).unwrap();
        prop_assert_eq!(&store.recover().unwrap(), &expected);
        prop_assert_eq!(store.recovery_report().record_count, u64::try_from(non_empty).unwrap());
    }
}

// ---------------------------------------------------------------------------
// 3. Crashes and faults during a persist: all or nothing, then poisoned.
// ---------------------------------------------------------------------------

/// Batches persisted successfully before the failing one.
fn prior_batches() -> Vec<Vec<PersistOp>> {
    vec![
        vec![promise(b(1, 1)), accept(1, b(1, 1), val(1))],
        vec![accept(2, b(1, 1), val(2)), chosen(5, val(5))],
        vec![promise(b(2, 2))],
    ]
}

/// The batch whose persist fails. Every proper prefix of it gives a state
/// different from both "none of it" and "all of it".
fn failing_batch() -> Vec<PersistOp> {
    vec![
        promise(b(3, 1)),
        accept(1, b(3, 1), val(11)),
        accept(2, b(3, 1), val(12)),
        chosen(3, val(13)),
    ]
}

/// The states a recovery after the failing persist may return.
fn before_and_after() -> (RecoveredState, RecoveredState) {
    let before = mem_state(&prior_batches());
    let mut all = prior_batches();
    all.push(failing_batch());
    let after = mem_state(&all);
    for len in 1..failing_batch().len() {
        let mut partial = prior_batches();
        partial.push(failing_batch()[..len].to_vec());
        let partial = mem_state(&partial);
        assert!(
            partial != before && partial != after,
            "test setup: prefix {len} is indistinguishable"
        );
    }
    (before, after)
}

/// A store holding the prior batches, durably.
fn setup(options: &WalOptions) -> (SimFs, WalAcceptorStore) {
    let fs = SimFs::new();
    let mut store = open(&fs, options).unwrap();
    persist_all(&mut store, &prior_batches());
    (fs, store)
}

/// After a failed persist: every later call fails until reopen.
fn assert_stopped(store: &mut WalAcceptorStore, context: &str) {
    assert_poisoned(
        store.persist(&[promise(b(50, 1))]),
        &format!("{context}: persist after a failure"),
    );
    assert_poisoned(
        store.persist(&[]),
        &format!("{context}: empty persist after a failure"),
    );
    assert_poisoned(
        store.recover(),
        &format!("{context}: recover after a failure"),
    );
}

/// After a reopen, the store works again and what it persists is durable.
fn assert_usable_after_reopen(fs: &SimFs, options: &WalOptions, context: &str) {
    let mut store = open(fs, options).unwrap();
    let mut expected = store.recover().unwrap();
    store.persist(&[promise(b(60, 1))]).unwrap();
    expected.promised = b(60, 1);
    drop(store);
    fs.crash();
    let mut store = open(fs, options).unwrap();
    assert_eq!(
        store.recover().unwrap(),
        expected,
        "{context}: after reopen"
    );
}

/// How the process ends after the failed persist.
#[derive(Debug, Clone, Copy)]
enum End {
    /// The process dies; the machine keeps running (page cache survives).
    Kill,
    /// Power loss: unsynced bytes are lost.
    PowerLoss,
    /// Power loss keeping the first `n` unsynced bytes of each file.
    Keep(usize),
    /// Power loss keeping a pseudo-random prefix.
    Torn(u64),
}

fn end(fs: &SimFs, how: End) {
    match how {
        End::Kill => {}
        End::PowerLoss => fs.crash(),
        End::Keep(n) => fs.crash_keeping(|_, _| n),
        End::Torn(seed) => fs.crash_torn(seed),
    }
}

/// Bytes of the failing batch's frame.
fn failing_frame_len() -> usize {
    FRAME_HEADER_LEN + v1_payload(&failing_batch()).len()
}

#[test]
fn failed_fsync_keeps_the_whole_batch_or_none_of_it() {
    let (before, after) = before_and_after();
    let frame_len = failing_frame_len();
    let mut ends = vec![End::Kill, End::PowerLoss];
    ends.extend((0..=frame_len).map(End::Keep));
    ends.extend((0..32).map(End::Torn));
    for options in [one_segment(), tiny_segments()] {
        // With tiny segments the persist first seals the full segment, and
        // the fault hits that fsync: the batch's frame is never written.
        let frame_written = options == one_segment();
        for &how in &ends {
            let context = format!(
                "fsync error, then {how:?}, segment max {}",
                options.segment_size_bytes_max
            );
            let (fs, mut store) = setup(&options);
            fs.inject(Fault::SyncError);
            assert!(store.persist(&failing_batch()).is_err(), "{context}");
            assert_stopped(&mut store, &context);
            drop(store);
            end(&fs, how);
            let recovered = open(&fs, &options).unwrap().recover().unwrap();
            match how {
                _ if !frame_written => assert_eq!(recovered, before, "{context}"),
                // The bytes reached the page cache; reopening makes them durable.
                End::Kill => assert_eq!(recovered, after, "{context}"),
                End::PowerLoss => assert_eq!(recovered, before, "{context}"),
                End::Keep(n) if n < frame_len => assert_eq!(recovered, before, "{context}"),
                End::Keep(_) => assert_eq!(recovered, after, "{context}"),
                End::Torn(_) => assert!(
                    recovered == before || recovered == after,
                    "{context}: partial batch recovered: {recovered:?}"
                ),
            }
            assert_usable_after_reopen(&fs, &options, &context);
        }
    }
}

#[test]
fn failed_write_loses_the_batch_and_poisons() {
    let (before, after) = before_and_after();
    let frame_len = failing_frame_len();
    for options in [one_segment(), tiny_segments()] {
        // With tiny segments the persist first starts a new segment, and the
        // fault hits the write of its header: the frame is never written.
        let frame_written = options == one_segment();
        let mut faults = vec![Fault::WriteError];
        faults.extend((0..=frame_len).map(|keep_bytes| Fault::ShortWrite { keep_bytes }));
        for fault in faults {
            for how in [End::Kill, End::PowerLoss] {
                let context = format!(
                    "{fault:?}, then {how:?}, segment max {}",
                    options.segment_size_bytes_max
                );
                let (fs, mut store) = setup(&options);
                fs.inject(fault);
                assert!(store.persist(&failing_batch()).is_err(), "{context}");
                assert_stopped(&mut store, &context);
                drop(store);
                end(&fs, how);
                let mut reopened = open(&fs, &options).unwrap();
                let recovered = reopened.recover().unwrap();
                let whole_frame_written = frame_written
                    && matches!(fault, Fault::ShortWrite { keep_bytes } if keep_bytes >= frame_len);
                if whole_frame_written && matches!(how, End::Kill) {
                    assert_eq!(recovered, after, "{context}");
                } else {
                    assert_eq!(recovered, before, "{context}");
                }
                let partial_frame = frame_written
                    && matches!(
                        fault,
                        Fault::ShortWrite { keep_bytes } if keep_bytes > 0 && keep_bytes < frame_len
                    );
                if partial_frame && matches!(how, End::Kill) {
                    assert!(
                        reopened.recovery_report().torn_tail.is_some(),
                        "{context}: the partial frame must be cut off"
                    );
                }
                drop(reopened);
                assert_usable_after_reopen(&fs, &options, &context);
            }
        }
    }
}

#[test]
fn a_halt_at_every_step_of_a_persist_keeps_all_or_nothing() {
    let (before, after) = before_and_after();
    for options in [one_segment(), tiny_segments()] {
        let mut halts = 0;
        let mut outcomes = BTreeMap::new();
        for k in 0.. {
            let (fs, mut store) = setup(&options);
            fs.halt_after(k);
            if store.persist(&failing_batch()).is_ok() {
                assert!(!fs.halted(), "persist succeeded on a halted filesystem");
                break;
            }
            halts += 1;
            assert!(fs.halted(), "halt point {k}");
            for how in [End::PowerLoss, End::Keep(usize::MAX), End::Torn(k)] {
                let context = format!(
                    "halt after {k} ops, then {how:?}, segment max {}",
                    options.segment_size_bytes_max
                );
                let (fs, mut store) = setup(&options);
                fs.halt_after(k);
                assert!(store.persist(&failing_batch()).is_err(), "{context}");
                // The store is stopped, not just the filesystem.
                assert_poisoned(store.recover(), &context);
                drop(store);
                end(&fs, how);
                let recovered = open(&fs, &options).unwrap().recover().unwrap();
                if matches!(how, End::PowerLoss) {
                    // The final fsync never returned: nothing of it is durable.
                    assert_eq!(recovered, before, "{context}");
                }
                assert!(
                    recovered == before || recovered == after,
                    "{context}: partial batch recovered: {recovered:?}"
                );
                *outcomes.entry(recovered == after).or_insert(0) += 1;
                assert_usable_after_reopen(&fs, &options, &context);
            }
        }
        if options == one_segment() {
            // Without a roll, a persist is exactly one write and one fsync.
            assert_eq!(halts, 2, "halt points");
        } else {
            // Seal, create, header, fsync, rename, fsync dir, write, fsync.
            assert!(halts > 2, "only {halts} halt points");
        }
        assert_eq!(outcomes.len(), 2, "both outcomes must occur: {outcomes:?}");
    }
}

// ---------------------------------------------------------------------------
// 4. A torn last record is dropped; damage in the middle refuses to open.
// ---------------------------------------------------------------------------

/// Three batches; the last one is the record the tests damage at the tail.
fn three_batches() -> Vec<Vec<PersistOp>> {
    vec![
        vec![promise(b(1, 1)), accept(1, b(1, 1), val(1))],
        vec![accept(2, b(1, 1), val(2)), chosen(9, val(9))],
        vec![
            promise(b(4, 2)),
            accept(1, b(4, 2), val(3)),
            chosen(2, val(2)),
        ],
    ]
}

fn store_with(batches: &[Vec<PersistOp>], options: &WalOptions) -> SimFs {
    let fs = SimFs::new();
    let mut store = open(&fs, options).unwrap();
    persist_all(&mut store, batches);
    drop(store);
    fs
}

/// Damage done to the bytes of a segment on "disk".
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// The file is cut to this length.
    CutAt(usize),
    /// The byte at this offset is flipped.
    Flip(usize),
}

#[test]
fn a_torn_last_record_is_dropped_whole() {
    let batches = three_batches();
    let first_two = mem_state(&batches[..2]);
    let reference = store_with(&batches, &one_segment());
    let segment = segment_paths(&reference)[0].clone();
    let frames = frame_ranges(&reference.read(&segment).unwrap());
    assert_eq!(frames.len(), 3);
    let last = frames[2].clone();
    // Every truncation inside the last frame, and every flipped byte of it.
    let damages = (last.start..last.end)
        .map(Damage::CutAt)
        .chain(last.clone().map(Damage::Flip));
    for damage in damages {
        let fs = store_with(&batches, &one_segment());
        match damage {
            Damage::CutAt(len) => fs.truncate_durably(&segment, len).unwrap(),
            Damage::Flip(at) => fs.corrupt_byte(&segment, at, 0x20).unwrap(),
        }
        let mut store = open(&fs, &one_segment()).unwrap();
        assert_eq!(store.recover().unwrap(), first_two, "{damage:?}");
        let torn = &store.recovery_report().torn_tail;
        match damage {
            Damage::CutAt(len) if len == last.start => {
                assert!(torn.is_none(), "{damage:?}: a clean cut is not torn");
            }
            _ => assert!(torn.is_some(), "{damage:?}: torn tail not reported"),
        }
        // The log continues cleanly after the cut.
        let extra = vec![promise(b(7, 7))];
        store.persist(&extra).unwrap();
        drop(store);
        fs.crash();
        let mut all = batches[..2].to_vec();
        all.push(extra);
        assert_eq!(
            open(&fs, &one_segment()).unwrap().recover().unwrap(),
            mem_state(&all),
            "{damage:?}: after a new persist and a restart"
        );
    }
}

#[test]
fn a_damaged_record_before_the_last_refuses_to_open() {
    let batches = three_batches();
    // One segment: damage in frame 2 of 3. Tiny segments: the whole middle
    // segment (a sealed one) is damaged.
    for options in [one_segment(), tiny_segments()] {
        let reference = store_with(&batches, &options);
        let segments = segment_paths(&reference);
        let (segment, frame) = if segments.len() == 1 {
            let frames = frame_ranges(&reference.read(&segments[0]).unwrap());
            (segments[0].clone(), frames[1].clone())
        } else {
            assert_eq!(segments.len(), 3);
            let frames = frame_ranges(&reference.read(&segments[1]).unwrap());
            assert_eq!(frames.len(), 1);
            (segments[1].clone(), frames[0].clone())
        };
        for at in frame.clone() {
            let context = format!(
                "byte {at} of {} flipped (segment max {})",
                segment.display(),
                options.segment_size_bytes_max
            );
            let fs = store_with(&batches, &options);
            fs.corrupt_byte(&segment, at, 0x01).unwrap();
            match open(&fs, &options) {
                Err(StorageError::Corruption { path, offset, .. }) => {
                    assert_eq!(path, segment, "{context}");
                    assert_eq!(offset, u64::try_from(frame.start).unwrap(), "{context}");
                }
                other => panic!("{context}: expected Corruption, got {other:?}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 5. Records that pass the WAL's checksum but do not decode.
// ---------------------------------------------------------------------------

#[test]
fn an_undecodable_record_is_corruption_naming_its_lsn() {
    let good = v1_payload(&[promise(b(1, 1))]);
    let accept_record = v1_payload(&[accept(3, b(1, 1), val(4))]);
    let body = good[1..].to_vec();
    let mut huge_inner = vec![1];
    huge_inner.extend(1u64.to_le_bytes()); // one op
    huge_inner.extend(1u32.to_le_bytes()); // Accept
    huge_inner.extend(3u64.to_le_bytes()); // slot
    huge_inner.extend(1u64.to_le_bytes()); // ballot.round
    huge_inner.extend(1u64.to_le_bytes()); // ballot.node_id
    huge_inner.extend(1u32.to_le_bytes()); // Value::Commands
    huge_inner.extend(u64::MAX.to_le_bytes()); // command count
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("version 2", [&[2][..], &body].concat()),
        ("version 0", [&[0][..], &body].concat()),
        ("version 255", [&[255][..], &body].concat()),
        ("empty payload", vec![]),
        ("version byte only", vec![1]),
        ("garbage", vec![1, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x11]),
        (
            "cut short",
            accept_record[..accept_record.len() - 1].to_vec(),
        ),
        ("trailing byte", [&accept_record[..], &[0]].concat()),
        (
            "unknown op",
            [&[1][..], &1u64.to_le_bytes(), &7u32.to_le_bytes()].concat(),
        ),
        (
            "huge op count",
            [&[1][..], &u64::MAX.to_le_bytes()].concat(),
        ),
        ("huge command count", huge_inner),
    ];
    for (name, payload) in bad {
        for position in [1u64, 2] {
            let fs = SimFs::new();
            let (mut wal, _) = Wal::open(fs.shared(), &dir(), one_segment()).unwrap();
            if position == 2 {
                wal.append(&good).unwrap();
            }
            wal.append(&payload).unwrap();
            wal.append(&good).unwrap();
            wal.sync().unwrap();
            drop(wal);
            assert_corruption_in_dir(
                open(&fs, &one_segment()),
                position,
                &format!("{name} at LSN {position}"),
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 6. Many records across many segments.
// ---------------------------------------------------------------------------

#[test]
fn many_records_across_segments_recover() {
    let options = options(512);
    let fs = SimFs::new();
    let mut store = open(&fs, &options).unwrap();
    let mut batches = Vec::new();
    for i in 0..400u64 {
        let node = i % 3;
        let ballot = b(i / 7, node);
        let tag = u8::try_from(i % 251).unwrap();
        let batch = match i % 4 {
            0 => vec![promise(ballot)],
            1 => vec![accept(i % 50 + 1, ballot, val(tag))],
            2 => vec![
                accept(i % 50 + 1, ballot, val(tag)),
                accept(i % 50 + 2, ballot, Value::Noop),
                chosen(i / 2, val(tag)),
            ],
            _ => vec![promise(b(i / 9, node)), chosen(i, Value::Commands(vec![]))],
        };
        store.persist(&batch).unwrap();
        batches.push(batch);
        if i == 200 {
            // Restart half-way: the log continues in the right segment.
            drop(store);
            fs.crash();
            store = open(&fs, &options).unwrap();
            assert_eq!(store.recover().unwrap(), mem_state(&batches));
        }
    }
    let expected = mem_state(&batches);
    assert_eq!(store.recover().unwrap(), expected);
    drop(store);
    fs.crash();
    let segments = segment_paths(&fs).len();
    assert!(segments >= 20, "only {segments} segments");
    let mut store = open(&fs, &options).unwrap();
    assert_eq!(store.recovery_report().segment_count, segments);
    assert_eq!(store.recovery_report().record_count, 400);
    assert_eq!(store.recover().unwrap(), expected);
}

// ---------------------------------------------------------------------------
// Compaction below a snapshot.
// ---------------------------------------------------------------------------

/// Slots 1..=`count` accepted at ballot (1, 1), one batch each.
fn accept_slots(store: &mut WalAcceptorStore, count: Slot) {
    for slot in 1..=count {
        store
            .persist(&[accept(slot, b(1, 1), Value::Commands(vec![vec![7; 40]]))])
            .unwrap();
    }
}

/// Compaction forgets exactly the slots up to the compaction point, keeps
/// the promise and every slot above, survives a power loss, and deletes the
/// WAL segments that only held what was forgotten.
#[test]
fn compaction_keeps_everything_above_the_point_and_frees_segments() {
    let fs = SimFs::new();
    let options = WalOptions {
        segment_size_bytes_max: 256,
        ..one_segment()
    };
    let mut store = open(&fs, &options).unwrap();
    store.persist(&[promise(b(3, 2))]).unwrap();
    accept_slots(&mut store, 20);
    store
        .persist(&[PersistOp::Chosen {
            slot: 21,
            value: Value::Noop,
        }])
        .unwrap();
    let segments_before = fs.list_dir(&dir()).unwrap().len();

    store.compact(15).unwrap();
    let mut expected = store.recover().unwrap();
    assert_eq!(expected.compacted_upto, 15);
    assert_eq!(expected.promised, b(3, 2));
    assert_eq!(
        expected.accepted.keys().copied().collect::<Vec<_>>(),
        (16..=20).collect::<Vec<_>>()
    );
    assert!(expected.chosen.contains_key(&21));
    let segments_after = fs.list_dir(&dir()).unwrap().len();
    assert!(
        segments_after < segments_before,
        "{segments_before} -> {segments_after} segments"
    );
    assert!(!fs
        .list_dir(&dir())
        .unwrap()
        .contains(&"00000000000000000001.wal".to_string()));

    drop(store);
    fs.crash();
    let mut store = open(&fs, &options).unwrap();
    assert_eq!(
        store.recover().unwrap(),
        expected,
        "compaction survives power loss"
    );
    // Compacting to an older point changes nothing.
    store.compact(10).unwrap();
    expected.compacted_upto = 15;
    assert_eq!(store.recover().unwrap(), expected);
}

/// A crash while the checkpoint is being written keeps any prefix of it:
/// the state after reopening is the state before compaction or the
/// compacted one, and never lacks a slot above the compaction point.
#[test]
fn a_torn_checkpoint_loses_nothing_above_the_compaction_point() {
    for seed in 0..32 {
        let fs = SimFs::new();
        let options = WalOptions {
            segment_size_bytes_max: 256,
            record_size_bytes_max: 128,
            ..one_segment()
        };
        let mut store = open(&fs, &options).unwrap();
        accept_slots(&mut store, 12);
        let before = store.recover().unwrap();
        fs.inject(Fault::SyncError);
        assert!(store.compact(6).is_err(), "the checkpoint's fsync failed");
        drop(store);
        fs.crash_torn(seed);
        let mut store = open(&fs, &options).unwrap();
        let after = store.recover().unwrap();
        for slot in 7..=12 {
            assert_eq!(
                after.accepted.get(&slot),
                before.accepted.get(&slot),
                "seed {seed}: slot {slot}"
            );
        }
        assert!(
            after == before || after.compacted_upto == 6,
            "seed {seed}: {after:?}"
        );
    }
}

#[test]
fn mem_store_compaction_matches_the_wal_store() {
    let mut mem = MemAcceptorStore::new();
    let fs = SimFs::new();
    let mut wal = open(&fs, &one_segment()).unwrap();
    for store in [&mut mem as &mut dyn AcceptorStore, &mut wal] {
        store
            .persist(&[
                accept(1, b(1, 1), Value::Noop),
                accept(2, b(1, 1), Value::Noop),
            ])
            .unwrap();
        store.compact(1).unwrap();
    }
    assert_eq!(mem.recover().unwrap(), wal.recover().unwrap());
    assert_eq!(mem.recover().unwrap().compacted_upto, 1);
}
