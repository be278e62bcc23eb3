//! A deterministic linearizability checker for key/value histories.
//!
//! Tests of the shardkv store run concurrent clients against a cluster
//! (under faults), record every operation with a [`Recorder`] (what was
//! asked, when, and what came back, or that the client cannot tell whether
//! it took effect) and hand the history to [`check`]. It decides whether
//! one total order of the operations agrees both with real time (an
//! operation that returned before another was called comes first) and with
//! the sequential semantics of the store ([`KvInput`]). A store that loses,
//! duplicates or reorders writes, or serves stale reads, produces a history
//! for which no such order exists, and the verdict explains where.
//!
//! The algorithm: every operation touches one key, so each key's
//! sub-history is checked on its own (linearizability is compositional).
//! Per key, a Wing & Gong / Lowe style depth-first search (the one
//! Porcupine uses, over doubly linked lists of call and return events)
//! builds a linearization one operation at a time. The next operation may be
//! any unplaced one called no later than the earliest return among the
//! unplaced definite operations, provided the model of the store, run from
//! the value the prefix leaves, gives the output the client saw. An
//! indeterminate operation never returns, so it never holds the others
//! back, and it is optional: the search succeeds once every definite
//! operation is placed. States (placed operations, value) that failed are
//! memoized, so each is explored once; a step budget bounds the search,
//! and running out gives [`Verdict::Undecided`] rather than a guess.
//! Inputs are sorted and nothing depends on hash order, so a history always
//! gets the same verdict and the same explanation.
//!
//! A few reductions, each keeping every verdict (a brute-force cross-check
//! in the tests holds them to it), keep the search small: a read that fits
//! is placed at once without trying the alternatives (it could be moved
//! there in any linearization); a failed state also rules out the states
//! with the same value and definite operations that used up more
//! indeterminate ones; of identical pending indeterminate operations only
//! the first is tried; indeterminate operations that would change nothing
//! are left pending, and are tried after the definite ones, with short runs
//! of them in a row first. Refuting a history can still take exponential
//! time when many indeterminate writes were never observed (each may have
//! happened at any point since its call, in any order with the others);
//! the verdict is then [`Verdict::Undecided`]. Tests that want a firm
//! verdict keep them few, e.g. by retrying an operation until it is
//! acknowledged.
//!
//! Equal timestamps count as concurrent: an operation called in the very
//! nanosecond another returned may be ordered either way, as a coarse clock
//! cannot tell which came first.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// The default [`CheckOptions::max_steps_per_key`].
pub const DEFAULT_MAX_STEPS_PER_KEY: u64 = 5_000_000;

/// Values longer than this are abbreviated in explanations.
const SHOWN_VALUE_BYTES: usize = 32;
/// How many bytes of an abbreviated value are shown.
const ABBREVIATED_VALUE_BYTES: usize = 24;
/// How many operations of the longest linearizable prefix an explanation
/// lists (the last ones: they are the ones next to the violation).
const SHOWN_PREFIX_OPS: usize = 8;
/// How many of the operations that could not be placed are listed.
const SHOWN_CANDIDATES: usize = 8;
/// Bound on the memo's size, in 64-bit words (stored sets plus a rough
/// per-entry overhead), about 256 MiB. Beyond it the search goes on without
/// memoizing more states: slower (the step budget still bounds it), never
/// wrong, as the memo only prunes states already known to fail.
const MEMO_WORD_BUDGET: usize = 1 << 25;
/// Rough per-entry overhead of the memo, in words.
const MEMO_ENTRY_OVERHEAD_WORDS: usize = 8;
/// The limits on indeterminate operations in a row of the searches tried
/// before the unlimited one.
const CHAIN_LIMITS: [usize; 2] = [1, 2];
/// Each limited search may take this fraction of the remaining budget (1/4).
const LIMITED_SEARCH_SHARE: u64 = 4;

/// What a client asked the store to do to one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KvInput {
    /// Read the value; answered with [`KvOutput::Value`].
    Get,
    /// Set the value; answered with [`KvOutput::Done`].
    Put(Vec<u8>),
    /// Append the bytes to the value (an absent value counts as empty);
    /// answered with [`KvOutput::Done`].
    Append(Vec<u8>),
    /// Make the value absent; answered with [`KvOutput::Done`].
    Delete,
    /// Compare-and-swap; answered with [`KvOutput::Cas`].
    Cas {
        /// The value the key must have for the swap to happen (`None`: the
        /// key must be absent).
        expected: Option<Vec<u8>>,
        /// The value set if the swap happens.
        new: Vec<u8>,
    },
    /// Set the value to `hash(previous ++ bytes)`, the previous value
    /// counting as empty when absent (`hash` is
    /// [`CheckOptions::hash`]); answered with [`KvOutput::Previous`].
    PutHash(Vec<u8>),
}

/// What the store answered.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KvOutput {
    /// The answer to [`KvInput::Get`]: the value (`None`: absent).
    Value(Option<Vec<u8>>),
    /// The answer to [`KvInput::Put`], [`KvInput::Append`] and
    /// [`KvInput::Delete`].
    Done,
    /// The answer to [`KvInput::Cas`].
    Cas {
        /// Whether the value matched and was replaced.
        swapped: bool,
        /// The value that did not match (`None`: absent); ignored when
        /// `swapped`.
        current: Option<Vec<u8>>,
    },
    /// The answer to [`KvInput::PutHash`]: the value it replaced (`None`:
    /// absent).
    Previous(Option<Vec<u8>>),
}

/// How an operation ended, as its client saw it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The store answered.
    Returned {
        /// The answer.
        output: KvOutput,
        /// When the answer arrived, in nanoseconds since the history
        /// started; never before the call.
        return_ns: u64,
    },
    /// The client cannot tell whether the operation took effect (a timeout,
    /// a lost connection, a panic): it took effect once at some point after
    /// its call, or never.
    Indeterminate,
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Operation {
    /// The client that issued it (only shown in explanations, and used to
    /// break ties in the order the checker considers operations).
    pub client: u64,
    /// The key it touches.
    pub key: Vec<u8>,
    /// What was asked.
    pub input: KvInput,
    /// When it was issued, in nanoseconds since the history started: no
    /// later than the moment it was sent.
    pub call_ns: u64,
    /// How it ended.
    pub outcome: Outcome,
}

/// The result of [`check`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Some order of the operations agrees with real time and the store's
    /// semantics.
    Linearizable,
    /// No order does, on `key` (the first such key in byte order).
    NotLinearizable {
        /// The key whose sub-history is not linearizable.
        key: Vec<u8>,
        /// What could not be placed, after which prefix: human-readable,
        /// bounded in length.
        explanation: String,
    },
    /// The checker could not decide `key` (search budget exhausted, or a
    /// malformed history); no other key was found not linearizable.
    Undecided {
        /// The first key (in byte order) that could not be decided.
        key: Vec<u8>,
        /// Why.
        reason: String,
    },
}

impl Verdict {
    /// Whether the verdict is [`Verdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => write!(f, "linearizable"),
            Verdict::NotLinearizable { key, explanation } => {
                write!(
                    f,
                    "not linearizable on key {}:\n{explanation}",
                    show_bytes(key)
                )
            }
            Verdict::Undecided { key, reason } => {
                write!(f, "undecided on key {}: {reason}", show_bytes(key))
            }
        }
    }
}

impl fmt::Display for KvInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvInput::Get => write!(f, "get"),
            KvInput::Put(v) => write!(f, "put({})", show_bytes(v)),
            KvInput::Append(v) => write!(f, "append({})", show_bytes(v)),
            KvInput::Delete => write!(f, "delete"),
            KvInput::Cas { expected, new } => {
                write!(
                    f,
                    "cas({} -> {})",
                    show_value(expected.as_deref()),
                    show_bytes(new)
                )
            }
            KvInput::PutHash(v) => write!(f, "put_hash({})", show_bytes(v)),
        }
    }
}

impl fmt::Display for KvOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvOutput::Value(v) => write!(f, "{}", show_value(v.as_deref())),
            KvOutput::Done => write!(f, "ok"),
            KvOutput::Cas { swapped: true, .. } => write!(f, "swapped"),
            KvOutput::Cas {
                swapped: false,
                current,
            } => {
                write!(f, "not swapped, current {}", show_value(current.as_deref()))
            }
            KvOutput::Previous(v) => write!(f, "previous {}", show_value(v.as_deref())),
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} {} -> ", self.client, self.input)?;
        match &self.outcome {
            Outcome::Returned { output, return_ns } => {
                write!(f, "{output} [{}..{return_ns} ns]", self.call_ns)
            }
            Outcome::Indeterminate => write!(f, "indeterminate [called at {} ns]", self.call_ns),
        }
    }
}

/// How [`check`] runs.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    /// The hash of [`KvInput::PutHash`], applied to `previous ++ bytes`
    /// (supplied by the caller so that the checker does not depend on the
    /// store's crate).
    pub hash: fn(&[u8]) -> Vec<u8>,
    /// Search steps allowed per key before giving up with
    /// [`Verdict::Undecided`]; [`DEFAULT_MAX_STEPS_PER_KEY`] by default.
    pub max_steps_per_key: u64,
}

impl CheckOptions {
    /// Options with the given hash and the default step budget.
    pub fn new(hash: fn(&[u8]) -> Vec<u8>) -> Self {
        CheckOptions {
            hash,
            max_steps_per_key: DEFAULT_MAX_STEPS_PER_KEY,
        }
    }
}

/// Decides whether `history` is linearizable, key by key (in byte order of
/// the keys). A key found not linearizable is reported at once; otherwise
/// the first undecided key, if any, is reported.
pub fn check(history: &[Operation], options: &CheckOptions) -> Verdict {
    let mut by_key: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
    for (index, op) in history.iter().enumerate() {
        by_key.entry(op.key.as_slice()).or_default().push(index);
    }
    let mut undecided = None;
    for (key, indices) in by_key {
        match check_key(key, history, &indices, options) {
            KeyResult::Linearizable => {}
            KeyResult::NotLinearizable(explanation) => {
                return Verdict::NotLinearizable {
                    key: key.to_vec(),
                    explanation,
                };
            }
            KeyResult::Undecided(reason) => {
                if undecided.is_none() {
                    undecided = Some(Verdict::Undecided {
                        key: key.to_vec(),
                        reason,
                    });
                }
            }
        }
    }
    undecided.unwrap_or(Verdict::Linearizable)
}

/// The shortest prefix of `history` that is already not linearizable, for
/// a failure report: the operations called before some instant, those still
/// in flight then counting as indeterminate (they were). A violation in a
/// prefix is a violation of the whole history (any linearization of the
/// whole, cut at that instant, would linearize the prefix), and the prefix
/// ends right where the history went wrong, so its last operations are the
/// ones to read. Unlike dropping operations from the middle, cutting in
/// time never invents a violation: a prefix is what the store had really
/// answered by then.
///
/// `None` if the whole history is linearizable or undecided. Binary search
/// over the call order: about log2(n) checks.
pub fn shortest_failing_prefix(
    history: &[Operation],
    options: &CheckOptions,
) -> Option<Vec<Operation>> {
    let mut ordered: Vec<&Operation> = history.iter().collect();
    ordered.sort_by_key(|op| op.call_ns);
    let fails = |len: usize| -> bool {
        let prefix = prefix_of(&ordered, len);
        matches!(check(&prefix, options), Verdict::NotLinearizable { .. })
    };
    if !fails(ordered.len()) {
        return None;
    }
    // Invariant: prefixes of `high` operations fail, of `low` do not.
    let (mut low, mut high) = (0, ordered.len());
    while high - low > 1 {
        let middle = low + (high - low) / 2;
        if fails(middle) {
            high = middle;
        } else {
            low = middle;
        }
    }
    Some(prefix_of(&ordered, high))
}

/// The first `len` operations of `ordered` (sorted by call time) as the
/// history stood just before the next one was called: an operation that
/// had not returned by then is indeterminate.
fn prefix_of(ordered: &[&Operation], len: usize) -> Vec<Operation> {
    let cut_ns = ordered.get(len).map_or(u64::MAX, |next| next.call_ns);
    ordered[..len]
        .iter()
        .map(|&op| {
            let mut op = op.clone();
            if matches!(op.outcome, Outcome::Returned { return_ns, .. } if return_ns >= cut_ns) {
                op.outcome = Outcome::Indeterminate;
            }
            op
        })
        .collect()
}

/// Records a history from concurrent clients, for [`check`]. Clones share
/// the same history and clock (an [`Instant`] taken in [`Recorder::new`]).
#[derive(Debug, Clone)]
pub struct Recorder {
    start: Instant,
    log: Arc<Mutex<Log>>,
}

#[derive(Debug, Default)]
struct Log {
    /// In call order; `None` for operations that failed.
    slots: Vec<Option<Operation>>,
    /// How many slots hold an operation.
    recorded: usize,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty history whose clock starts now.
    pub fn new() -> Self {
        Recorder {
            start: Instant::now(),
            log: Arc::default(),
        }
    }

    /// Records that `client` is about to issue `input` on `key`: call it
    /// before sending the request, and finish the returned [`PendingOp`]
    /// once the outcome is known.
    pub fn call(&self, client: u64, key: Vec<u8>, input: KvInput) -> PendingOp {
        let mut log = self.lock();
        // Read the clock under the lock so that the history lists operations
        // in call order.
        let call_ns = self.now_ns();
        // Recorded as indeterminate until it is finished, so that an
        // operation whose client panicked or gave up (its PendingOp dropped
        // or leaked) counts as one that may or may not have happened.
        log.slots.push(Some(Operation {
            client,
            key,
            input,
            call_ns,
            outcome: Outcome::Indeterminate,
        }));
        log.recorded += 1;
        let slot = log.slots.len() - 1;
        drop(log);
        PendingOp {
            recorder: self.clone(),
            slot,
        }
    }

    /// The operations recorded so far, in call order; those not finished yet
    /// are indeterminate.
    pub fn history(&self) -> Vec<Operation> {
        self.lock().slots.iter().flatten().cloned().collect()
    }

    /// How many operations [`Recorder::history`] would return.
    pub fn len(&self) -> usize {
        self.lock().recorded
    }

    /// Whether no operation is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        // A client that panicked elsewhere must not hide the history.
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An operation issued through [`Recorder::call`] whose outcome is not
/// known yet. Dropping it unfinished leaves it indeterminate.
#[derive(Debug)]
#[must_use = "finish the operation: dropping it records it as indeterminate"]
pub struct PendingOp {
    recorder: Recorder,
    slot: usize,
}

impl PendingOp {
    /// The store answered `output` (now).
    pub fn returned(self, output: KvOutput) {
        // After the answer arrived, so never earlier than the true return.
        let return_ns = self.recorder.now_ns();
        if let Some(op) = self.recorder.lock().slots[self.slot].as_mut() {
            op.outcome = Outcome::Returned { output, return_ns };
        }
    }

    /// The client cannot tell whether the operation took effect.
    pub fn indeterminate(self) {
        // It is recorded as indeterminate from the start.
    }

    /// The operation certainly did not take effect: it is dropped from the
    /// history.
    pub fn failed(self) {
        let mut log = self.recorder.lock();
        if log.slots[self.slot].take().is_some() {
            log.recorded -= 1;
        }
    }
}

enum KeyResult {
    Linearizable,
    NotLinearizable(String),
    Undecided(String),
}

/// One operation of a key's sub-history, with its index in the history.
struct KeyOp<'h> {
    index: usize,
    op: &'h Operation,
}

impl KeyOp<'_> {
    fn observed(&self) -> Option<&KvOutput> {
        match &self.op.outcome {
            Outcome::Returned { output, .. } => Some(output),
            Outcome::Indeterminate => None,
        }
    }

    fn return_ns(&self) -> Option<u64> {
        match self.op.outcome {
            Outcome::Returned { return_ns, .. } => Some(return_ns),
            Outcome::Indeterminate => None,
        }
    }

    fn is_definite(&self) -> bool {
        self.return_ns().is_some()
    }
}

impl fmt::Display for KeyOp<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} {}", self.index, self.op)
    }
}

/// What one operation does to the value, if the model accepts it.
enum Effect {
    Keep,
    Set(Option<Vec<u8>>),
}

/// Runs `input` on `value`; `None` if the store would not have answered
/// `observed` (no observation: any answer will do).
fn step(
    value: Option<&[u8]>,
    input: &KvInput,
    observed: Option<&KvOutput>,
    hash: fn(&[u8]) -> Vec<u8>,
) -> Option<Effect> {
    let done = matches!(observed, None | Some(KvOutput::Done));
    match input {
        KvInput::Get => match observed {
            None => Some(Effect::Keep),
            Some(KvOutput::Value(seen)) if seen.as_deref() == value => Some(Effect::Keep),
            Some(_) => None,
        },
        KvInput::Put(v) => done.then(|| Effect::Set(Some(v.clone()))),
        KvInput::Append(v) => done.then(|| Effect::Set(Some(concat(value, v)))),
        KvInput::Delete => done.then_some(Effect::Set(None)),
        KvInput::Cas { expected, new } => {
            if expected.as_deref() == value {
                matches!(observed, None | Some(KvOutput::Cas { swapped: true, .. }))
                    .then(|| Effect::Set(Some(new.clone())))
            } else {
                match observed {
                    None => Some(Effect::Keep),
                    Some(KvOutput::Cas {
                        swapped: false,
                        current,
                    }) if current.as_deref() == value => Some(Effect::Keep),
                    Some(_) => None,
                }
            }
        }
        KvInput::PutHash(v) => match observed {
            None => Some(Effect::Set(Some(hash(&concat(value, v))))),
            Some(KvOutput::Previous(previous)) if previous.as_deref() == value => {
                Some(Effect::Set(Some(hash(&concat(value, v)))))
            }
            Some(_) => None,
        },
    }
}

/// What the store would answer to `input` on `value` (for explanations).
fn model_output(value: Option<&[u8]>, input: &KvInput) -> KvOutput {
    let value = value.map(<[u8]>::to_vec);
    match input {
        KvInput::Get => KvOutput::Value(value),
        KvInput::Put(_) | KvInput::Append(_) | KvInput::Delete => KvOutput::Done,
        KvInput::Cas { expected, .. } => KvOutput::Cas {
            swapped: *expected == value,
            current: value,
        },
        KvInput::PutHash(_) => KvOutput::Previous(value),
    }
}

fn concat(value: Option<&[u8]>, suffix: &[u8]) -> Vec<u8> {
    let mut out = value.unwrap_or_default().to_vec();
    out.extend_from_slice(suffix);
    out
}

/// Marks the end of a list.
const NIL: usize = usize::MAX;

/// A doubly linked list over nodes `0..len` behind a head node (`len`),
/// from which nodes are removed when their operation is placed and
/// restored, in reverse order, when the search backtracks (dancing links).
struct Links {
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl Links {
    fn new(len: usize) -> Self {
        let head = len;
        let mut next: Vec<usize> = (1..=len).collect();
        if len > 0 {
            next[len - 1] = NIL;
        }
        next.push(if len > 0 { 0 } else { NIL });
        let prev = (0..=len)
            .map(|node| if node == 0 { head } else { node - 1 })
            .collect();
        Links { next, prev }
    }

    fn first(&self) -> usize {
        self.next[self.next.len() - 1]
    }

    fn remove(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        if next != NIL {
            self.prev[next] = prev;
        }
    }

    fn restore(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        if next != NIL {
            self.prev[next] = node;
        }
    }
}

/// Events of one kind (the calls of one kind of candidates, or the
/// returns of the definite operations), as a list in time order.
struct Lane {
    links: Links,
    /// Per node: its operation (rank) and its time.
    rank: Vec<usize>,
    ns: Vec<u64>,
}

impl Lane {
    /// `events` as (time, rank), sorted.
    fn new(events: &[(u64, usize)]) -> Self {
        Lane {
            links: Links::new(events.len()),
            rank: events.iter().map(|e| e.1).collect(),
            ns: events.iter().map(|e| e.0).collect(),
        }
    }
}

/// The lanes of candidates, in the order the search tries them at each
/// state: definite pure reads (one that fits is the only choice worth
/// trying), other definite operations, indeterminate operations whose
/// result does not depend on the value (put, delete: a value that no
/// definite operation explains most often comes from one), the other
/// indeterminate operations. Trying indeterminate operations last makes
/// the states that placed fewer of them fail (and be memoized) first, and
/// those dominate the others. A candidate is eligible if called no later
/// than the earliest return among the definite operations not placed
/// (equal times count as concurrent).
const READS: usize = 0;
const WRITES: usize = 1;
const OVERWRITES: usize = 2;
const OTHERS: usize = 3;
const LANES: usize = 4;

/// The values the search met, each given a small id so that memo entries
/// and stack frames do not copy values.
#[derive(Default)]
struct Values {
    values: Vec<Option<Vec<u8>>>,
    ids: HashMap<Option<Vec<u8>>, usize>,
}

impl Values {
    fn intern(&mut self, value: Option<Vec<u8>>) -> usize {
        if let Some(&id) = self.ids.get(&value) {
            return id;
        }
        let id = self.values.len();
        self.values.push(value.clone());
        self.ids.insert(value, id);
        id
    }

    fn get(&self, id: usize) -> Option<&[u8]> {
        self.values[id].as_deref()
    }
}

/// A set of placed definite operations, stored without its leading
/// all-ones words and trailing zero words: the search places operations
/// roughly in call order, so most of a long history's set is one or the
/// other.
#[derive(PartialEq, Eq)]
struct PackedSet {
    full_words: usize,
    middle: Box<[u64]>,
}

impl PackedSet {
    fn pack(set: &[u64]) -> Self {
        let full_words = set.iter().take_while(|&&w| w == u64::MAX).count();
        PackedSet {
            full_words,
            middle: trim_zeros(&set[full_words..]).into(),
        }
    }

    fn matches(&self, set: &[u64]) -> bool {
        if set.len() < self.full_words + self.middle.len() {
            return false;
        }
        let (full, rest) = set.split_at(self.full_words);
        let (middle, zeros) = rest.split_at(self.middle.len());
        // Packing is canonical (maximal run of full words), so this is
        // equality of the packed forms.
        full.iter().all(|&w| w == u64::MAX)
            && *middle == *self.middle
            && zeros.iter().all(|&w| w == 0)
    }
}

fn trim_zeros(set: &[u64]) -> &[u64] {
    let used = set.iter().rposition(|&w| w != 0).map_or(0, |last| last + 1);
    &set[..used]
}

fn is_subset(small: &[u64], large: &[u64]) -> bool {
    small.len() <= large.len() && small.iter().zip(large).all(|(&s, &l)| s & !l == 0)
}

/// A state of the search from which no linearization goes on.
struct Failed {
    definite: PackedSet,
    /// The placed indeterminate operations (trailing zero words trimmed).
    indeterminate: Box<[u64]>,
}

/// The failed states (placed sets, value). A state also fails if a failed
/// one with the same placed definite operations and value placed a subset
/// of its indeterminate operations: those already called stay eligible
/// and optional forever, so the state that placed fewer of them can do
/// everything the other can (leaving the extra ones out), with the same
/// value and the same constraints on the rest. Buckets are found by an
/// incrementally maintained Zobrist hash of the placed definite operations
/// and the value, then compared exactly, so a hash collision costs time,
/// never a wrong verdict.
#[derive(Default)]
struct Memo {
    buckets: HashMap<(u64, usize), Vec<Failed>>,
    entries: usize,
    words: usize,
}

impl Memo {
    fn fails(&self, placed: &Placed, value: usize) -> bool {
        self.buckets
            .get(&(placed.definite_hash, value))
            .is_some_and(|bucket| {
                bucket.iter().any(|failed| {
                    failed.definite.matches(&placed.definite.0)
                        && is_subset(&failed.indeterminate, &placed.indeterminate.0)
                })
            })
    }

    fn record(&mut self, placed: &Placed, value: usize) {
        if self.words >= MEMO_WORD_BUDGET {
            return;
        }
        let failed = Failed {
            definite: PackedSet::pack(&placed.definite.0),
            indeterminate: trim_zeros(&placed.indeterminate.0).into(),
        };
        let bucket = self
            .buckets
            .entry((placed.definite_hash, value))
            .or_default();
        // Entries the new one dominates are redundant now.
        let before = bucket.len();
        bucket.retain(|old| {
            old.definite != failed.definite || !is_subset(&failed.indeterminate, &old.indeterminate)
        });
        self.entries -= before - bucket.len();
        self.words +=
            failed.definite.middle.len() + failed.indeterminate.len() + MEMO_ENTRY_OVERHEAD_WORDS;
        self.entries += 1;
        bucket.push(failed);
    }
}

/// A bit set over `len` operations.
struct BitSet(Vec<u64>);

impl BitSet {
    fn new(len: usize) -> Self {
        BitSet(vec![0; len.div_ceil(64)])
    }

    fn flip(&mut self, i: usize) {
        self.0[i / 64] ^= 1 << (i % 64);
    }

    fn contains(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
}

/// Where an operation's bit lives: definite and indeterminate operations
/// have a set each, as the memo treats them differently.
#[derive(Clone, Copy)]
enum Slot {
    Definite(usize),
    Indeterminate(usize),
}

/// The operations placed so far.
struct Placed {
    definite: BitSet,
    indeterminate: BitSet,
    /// Zobrist hash of `definite`.
    definite_hash: u64,
}

impl Placed {
    fn flip(&mut self, slot: Slot, zobrist: u64) {
        match slot {
            Slot::Definite(i) => {
                self.definite.flip(i);
                self.definite_hash ^= zobrist;
            }
            Slot::Indeterminate(i) => self.indeterminate.flip(i),
        }
    }

    fn contains(&self, slot: Slot) -> bool {
        match slot {
            Slot::Definite(i) => self.definite.contains(i),
            Slot::Indeterminate(i) => self.indeterminate.contains(i),
        }
    }
}

/// One placed operation on the search stack.
struct Frame {
    rank: usize,
    previous_value: usize,
    /// A pure read placed as soon as it fitted: if nothing goes on from
    /// there, nothing goes on from the state before it either.
    forced: bool,
    /// How many indeterminate operations end the prefix in a row (0 if
    /// this one is definite).
    chain: usize,
    /// Whether a rule that depends on how the state was reached (not only
    /// on the state) left out some of its successors: its failure is then
    /// not the state's own, and is not memoized.
    restricted: bool,
}

/// The deepest point the search reached: the prefix it had placed, the
/// value it left, and the operations that were then eligible but led
/// nowhere.
#[derive(Default)]
struct Deepest {
    prefix: Vec<usize>,
    value: usize,
    /// The definite operation whose return bounded the eligible ones.
    blocking: Option<usize>,
    candidates: Vec<usize>,
    more_candidates: usize,
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether a definite operation changes nothing wherever it fits (a get, a
/// cas that answered it did not swap): it can then be moved to the front
/// of any linearization from a state where it fits and may come next, so
/// placing it there is the only choice worth trying.
fn is_pure_read(op: &KeyOp<'_>) -> bool {
    match op.observed() {
        Some(KvOutput::Value(_)) => op.op.input == KvInput::Get,
        Some(KvOutput::Cas { swapped: false, .. }) => matches!(op.op.input, KvInput::Cas { .. }),
        _ => false,
    }
}

enum Placement {
    Placed,
    Rejected,
    /// The state fails.
    DeadEnd,
}

enum SearchResult {
    Linearizable,
    NotLinearizable(Deepest),
    Undecided(Deepest),
}

/// The search over one key's operations, sorted by (call, client, index):
/// an operation is named by its rank in that order.
struct Search<'a, 'h> {
    ops: &'a [KeyOp<'h>],
    hash: fn(&[u8]) -> Vec<u8>,
    lanes: [Lane; LANES],
    /// The returns of the definite operations not placed.
    returns: Lane,
    lane_of: Vec<usize>,
    call_node: Vec<usize>,
    return_node: Vec<usize>,
    slots: Vec<Slot>,
    pure_read: Vec<bool>,
    /// For an indeterminate operation, the previous one (by rank) with the
    /// same input, or NIL: of identical pending operations, the search only
    /// places the first, as any other would do the same.
    twin_before: Vec<usize>,
    zobrist: Vec<u64>,
    definite: usize,
    definite_left: usize,
    placed: Placed,
    values: Values,
    value: usize,
    memo: Memo,
    stack: Vec<Frame>,
    /// The longest run of consecutive indeterminate operations the current
    /// search places.
    chain_limit: usize,
    /// Whether `chain_limit` left out a successor of some state.
    chain_limit_hit: bool,
}

impl<'a, 'h> Search<'a, 'h> {
    fn new(ops: &'a [KeyOp<'h>], hash: fn(&[u8]) -> Vec<u8>) -> Self {
        let mut slots = Vec::with_capacity(ops.len());
        let (mut definite, mut indeterminate) = (0, 0);
        let pure_read: Vec<bool> = ops.iter().map(is_pure_read).collect();
        let mut lane_events: [Vec<(u64, usize)>; LANES] = Default::default();
        let mut return_events = Vec::new();
        let mut lane_of = Vec::with_capacity(ops.len());
        let mut twin_before = vec![NIL; ops.len()];
        let mut last_with_input: HashMap<&KvInput, usize> = HashMap::new();
        for (rank, op) in ops.iter().enumerate() {
            let lane = if let Some(return_ns) = op.return_ns() {
                slots.push(Slot::Definite(definite));
                definite += 1;
                return_events.push((return_ns, rank));
                if pure_read[rank] {
                    READS
                } else {
                    WRITES
                }
            } else {
                slots.push(Slot::Indeterminate(indeterminate));
                indeterminate += 1;
                if let Some(twin) = last_with_input.insert(&op.op.input, rank) {
                    twin_before[rank] = twin;
                }
                match op.op.input {
                    KvInput::Put(_) | KvInput::Delete => OVERWRITES,
                    _ => OTHERS,
                }
            };
            // Ranks follow call order, so each lane is in time order.
            lane_events[lane].push((op.op.call_ns, rank));
            lane_of.push(lane);
        }
        let mut call_node = vec![NIL; ops.len()];
        for events in &lane_events {
            for (node, &(_, rank)) in events.iter().enumerate() {
                call_node[rank] = node;
            }
        }
        return_events.sort_unstable();
        let mut return_node = vec![NIL; ops.len()];
        for (node, &(_, rank)) in return_events.iter().enumerate() {
            return_node[rank] = node;
        }
        let mut seed = 0;
        Search {
            ops,
            hash,
            lanes: lane_events.map(|events| Lane::new(&events)),
            returns: Lane::new(&return_events),
            lane_of,
            call_node,
            return_node,
            slots,
            pure_read,
            twin_before,
            zobrist: (0..ops.len()).map(|_| splitmix64(&mut seed)).collect(),
            definite,
            definite_left: definite,
            placed: Placed {
                definite: BitSet::new(definite),
                indeterminate: BitSet::new(indeterminate),
                definite_hash: 0,
            },
            values: Values::default(),
            value: 0,
            memo: Memo::default(),
            stack: Vec::new(),
            chain_limit: usize::MAX,
            chain_limit_hit: false,
        }
    }

    /// Searches from scratch, placing at most `chain_limit` indeterminate
    /// operations in a row, within `max_steps`; returns the steps taken.
    fn run(&mut self, chain_limit: usize, max_steps: u64) -> (SearchResult, u64) {
        while self.pop(false).is_some() {}
        self.memo = Memo::default();
        self.chain_limit = chain_limit;
        self.chain_limit_hit = false;
        self.value = self.values.intern(None);
        let mut deepest = Deepest::default();
        let mut deepest_len = 0;
        let mut deepest_stale = true;
        let mut steps: u64 = 0;
        let mut lane = READS;
        let mut node = self.lanes[READS].links.first();
        loop {
            if self.definite_left == 0 {
                return (SearchResult::Linearizable, steps);
            }
            if steps >= max_steps {
                if deepest_stale {
                    deepest = self.deepest();
                }
                return (SearchResult::Undecided(deepest), steps);
            }
            steps += 1;
            let candidates = &self.lanes[lane];
            if node != NIL && candidates.ns[node] <= self.frontier_ns() {
                let rank = candidates.rank[node];
                let next = candidates.links.next[node];
                match self.try_place(rank) {
                    Placement::Placed => {
                        if self.stack.len() > deepest_len {
                            deepest_len = self.stack.len();
                            deepest_stale = true;
                        }
                        lane = READS;
                        node = self.lanes[READS].links.first();
                        continue;
                    }
                    Placement::Rejected => {
                        node = next;
                        continue;
                    }
                    Placement::DeadEnd => {}
                }
            } else if lane + 1 < LANES {
                lane += 1;
                node = self.lanes[lane].links.first();
                continue;
            }
            if deepest_stale {
                // Only pushes happened since the depth record was set, so
                // the stack is at that record now.
                deepest_stale = false;
                deepest = self.deepest();
            }
            loop {
                let Some(frame) = self.pop(true) else {
                    return (SearchResult::NotLinearizable(deepest), steps);
                };
                if !frame.forced {
                    lane = self.lane_of[frame.rank];
                    node = self.lanes[lane].links.next[self.call_node[frame.rank]];
                    break;
                }
            }
        }
    }

    /// The earliest return among the definite operations not placed.
    fn frontier_ns(&self) -> u64 {
        let first = self.returns.links.first();
        if first == NIL {
            u64::MAX
        } else {
            self.returns.ns[first]
        }
    }

    fn try_place(&mut self, rank: usize) -> Placement {
        let op = &self.ops[rank];
        let definite = op.is_definite();
        let twin = self.twin_before[rank];
        if twin != NIL && !self.placed.contains(self.slots[twin]) {
            return Placement::Rejected;
        }
        let chain = self.stack.last().map_or(0, |top| top.chain);
        if !definite {
            // An indeterminate overwrite right after another indeterminate
            // operation does what it would do alone, with one more
            // operation used up: the state before that one tries it
            // alone.
            let pointless = chain > 0 && self.lane_of[rank] == OVERWRITES;
            if pointless || chain >= self.chain_limit {
                self.chain_limit_hit |= !pointless;
                if let Some(top) = self.stack.last_mut() {
                    top.restricted = true;
                }
                return Placement::Rejected;
            }
        }
        let Some(effect) = step(
            self.values.get(self.value),
            &op.op.input,
            op.observed(),
            self.hash,
        ) else {
            return Placement::Rejected;
        };
        let next_value = match effect {
            Effect::Keep => self.value,
            Effect::Set(v) => self.values.intern(v),
        };
        // An indeterminate operation that would change nothing here is
        // better left pending: it can still be placed later.
        if !definite && next_value == self.value {
            return Placement::Rejected;
        }
        self.placed.flip(self.slots[rank], self.zobrist[rank]);
        if self.memo.fails(&self.placed, next_value) {
            self.placed.flip(self.slots[rank], self.zobrist[rank]);
            // A pure read that fits leads nowhere: neither does this state.
            return if self.pure_read[rank] {
                Placement::DeadEnd
            } else {
                Placement::Rejected
            };
        }
        self.stack.push(Frame {
            rank,
            previous_value: self.value,
            forced: self.pure_read[rank],
            chain: if definite { 0 } else { chain + 1 },
            restricted: false,
        });
        self.lanes[self.lane_of[rank]]
            .links
            .remove(self.call_node[rank]);
        if definite {
            self.returns.links.remove(self.return_node[rank]);
            self.definite_left -= 1;
        }
        self.value = next_value;
        Placement::Placed
    }

    /// Backtracks over the last placed operation; `failed`: because the
    /// state it led to failed.
    fn pop(&mut self, failed: bool) -> Option<Frame> {
        let frame = self.stack.pop()?;
        if failed && !frame.restricted {
            self.memo.record(&self.placed, self.value);
        }
        let rank = frame.rank;
        if self.ops[rank].is_definite() {
            self.returns.links.restore(self.return_node[rank]);
            self.definite_left += 1;
        }
        self.lanes[self.lane_of[rank]]
            .links
            .restore(self.call_node[rank]);
        self.placed.flip(self.slots[rank], self.zobrist[rank]);
        self.value = frame.previous_value;
        Some(frame)
    }

    /// The current state, for the explanation.
    fn deepest(&self) -> Deepest {
        let frontier_ns = self.frontier_ns();
        let mut eligible = Vec::new();
        for lane in &self.lanes {
            let mut node = lane.links.first();
            while node != NIL && lane.ns[node] <= frontier_ns {
                eligible.push(lane.rank[node]);
                node = lane.links.next[node];
            }
        }
        let first_return = self.returns.links.first();
        let blocking = (first_return != NIL).then(|| self.returns.rank[first_return]);
        let more_candidates = eligible.len().saturating_sub(SHOWN_CANDIDATES);
        eligible.truncate(SHOWN_CANDIDATES);
        Deepest {
            prefix: self.stack.iter().map(|f| f.rank).collect(),
            value: self.value,
            blocking,
            candidates: eligible,
            more_candidates,
        }
    }
}

fn check_key(
    key: &[u8],
    history: &[Operation],
    indices: &[usize],
    options: &CheckOptions,
) -> KeyResult {
    let mut ops = Vec::with_capacity(indices.len());
    for &index in indices {
        let op = KeyOp {
            index,
            op: &history[index],
        };
        if op.return_ns().is_some_and(|r| r < op.op.call_ns) {
            return KeyResult::Undecided(format!(
                "malformed history: {op} returns before its call"
            ));
        }
        // An indeterminate read changes nothing and showed nothing: whether
        // and where it happened cannot matter.
        if op.op.input == KvInput::Get && !op.is_definite() {
            continue;
        }
        ops.push(op);
    }
    ops.sort_by_key(|o| (o.op.call_ns, o.op.client, o.index));
    let mut search = Search::new(&ops, options.hash);
    if search.definite == 0 {
        return KeyResult::Linearizable;
    }
    // Most linearizations need few indeterminate operations in a row, and
    // long chains of them are what makes the search explode: look for
    // short ones first, with a share of the budget each. A search whose
    // limit never cut anything off was complete.
    let limits: &[usize] = if search.definite == ops.len() {
        &[]
    } else {
        &CHAIN_LIMITS
    };
    let mut steps = 0;
    for &limit in limits {
        let share = (options.max_steps_per_key - steps) / LIMITED_SEARCH_SHARE;
        let (result, taken) = search.run(limit, share);
        steps += taken;
        match result {
            SearchResult::Linearizable => return KeyResult::Linearizable,
            SearchResult::NotLinearizable(deepest) if !search.chain_limit_hit => {
                return KeyResult::NotLinearizable(explain(
                    key,
                    &ops,
                    search.definite,
                    &deepest,
                    &search.values,
                    options,
                ));
            }
            SearchResult::NotLinearizable(_) | SearchResult::Undecided(_) => {}
        }
    }
    let (result, taken) = search.run(usize::MAX, options.max_steps_per_key - steps);
    steps += taken;
    match result {
        SearchResult::Linearizable => KeyResult::Linearizable,
        SearchResult::NotLinearizable(deepest) => KeyResult::NotLinearizable(explain(
            key,
            &ops,
            search.definite,
            &deepest,
            &search.values,
            options,
        )),
        SearchResult::Undecided(deepest) => KeyResult::Undecided(give_up_reason(
            &ops,
            search.definite,
            steps,
            &search.memo,
            &deepest,
            &search.values,
            options,
        )),
    }
}

fn explain(
    key: &[u8],
    ops: &[KeyOp<'_>],
    definite: usize,
    deepest: &Deepest,
    values: &Values,
    options: &CheckOptions,
) -> String {
    let mut out = format!(
        "key {}: no order of its {} operations ({definite} definite, {} indeterminate) agrees \
         with both real time and the store's semantics.\n",
        show_bytes(key),
        ops.len(),
        ops.len() - definite,
    );
    describe_deepest(&mut out, ops, deepest, values, options, true);
    out
}

/// Why `key` is undecided.
fn give_up_reason(
    ops: &[KeyOp<'_>],
    definite: usize,
    steps: u64,
    memo: &Memo,
    deepest: &Deepest,
    values: &Values,
    options: &CheckOptions,
) -> String {
    let mut out = format!(
        "gave up after {steps} search steps (CheckOptions::max_steps_per_key) with {} failed \
         states memoized; {} operations on this key ({definite} definite, {} indeterminate: \
         many of them, never observed, make refuting a history exponentially hard).\n",
        memo.entries,
        ops.len(),
        ops.len() - definite,
    );
    describe_deepest(&mut out, ops, deepest, values, options, false);
    out
}

/// The deepest point of the search: the end of the prefix, and the
/// operations that may come next. `refuted`: the search is over, none of
/// them leads anywhere.
fn describe_deepest(
    out: &mut String,
    ops: &[KeyOp<'_>],
    deepest: &Deepest,
    values: &Values,
    options: &CheckOptions,
    refuted: bool,
) {
    use fmt::Write as _;
    let value = values.get(deepest.value);
    let prefix = &deepest.prefix;
    if prefix.is_empty() {
        out.push_str("No operation can come first; the key starts absent.\n");
    } else {
        let hidden = prefix.len().saturating_sub(SHOWN_PREFIX_OPS);
        let _ = writeln!(
            out,
            "The longest linearizable prefix found has {} operations:",
            prefix.len()
        );
        if hidden > 0 {
            let _ = writeln!(out, "  ... {hidden} earlier operations");
        }
        for (position, &rank) in prefix.iter().enumerate().skip(hidden) {
            let _ = writeln!(out, "  {}. {}", position + 1, ops[rank]);
        }
        let _ = writeln!(out, "leaving the value {}.", show_value(value));
    }
    let next = if refuted {
        "none of the operations that may come next fits"
    } else {
        "the operations that may come next are"
    };
    match deepest.blocking {
        Some(rank) => {
            let op = &ops[rank];
            let _ = writeln!(
                out,
                "Then {op} must take effect before it returns at {} ns, but {next}:",
                op.return_ns().unwrap_or_default(),
            );
        }
        None => {
            let _ = writeln!(out, "Then {next}:");
        }
    }
    for &rank in &deepest.candidates {
        let op = &ops[rank];
        let why = match step(value, &op.op.input, op.observed(), options.hash) {
            None => format!(
                "the store would have answered {}",
                model_output(value, &op.op.input)
            ),
            Some(_) if refuted => "fits, but no linearization goes on from there".to_string(),
            Some(_) => "fits".to_string(),
        };
        let _ = writeln!(out, "  - {op}: {why}");
    }
    if deepest.more_candidates > 0 {
        let _ = writeln!(out, "  - ... and {} more", deepest.more_candidates);
    }
    out.truncate(out.trim_end().len());
}

fn show_bytes(bytes: &[u8]) -> String {
    if bytes.len() <= SHOWN_VALUE_BYTES {
        format!("\"{}\"", bytes.escape_ascii())
    } else {
        format!(
            "\"{}\"... ({} bytes)",
            bytes[..ABBREVIATED_VALUE_BYTES].escape_ascii(),
            bytes.len()
        )
    }
}

fn show_value(value: Option<&[u8]>) -> String {
    value.map_or_else(|| "absent".to_string(), show_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    /// A toy hash for put_hash: the bytes reversed, then a marker, so that
    /// chains keep their history readable and order matters.
    fn toy_hash(bytes: &[u8]) -> Vec<u8> {
        let mut out: Vec<u8> = bytes.iter().rev().copied().collect();
        out.push(b'#');
        out
    }

    fn options() -> CheckOptions {
        CheckOptions::new(toy_hash)
    }

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn some(s: &str) -> Option<Vec<u8>> {
        Some(b(s))
    }

    fn op(
        client: u64,
        key: &str,
        input: KvInput,
        call: u64,
        ret: u64,
        output: KvOutput,
    ) -> Operation {
        Operation {
            client,
            key: b(key),
            input,
            call_ns: call,
            outcome: Outcome::Returned {
                output,
                return_ns: ret,
            },
        }
    }

    #[test]
    fn the_shortest_failing_prefix_ends_at_the_violation() {
        // A register: puts and reads in turn, one client after another; the
        // read at position 41 sees a value never written.
        let mut history = Vec::new();
        for i in 0..100u64 {
            let value = format!("v{}", i / 2);
            let (call, ret) = (i * 10, i * 10 + 5);
            history.push(if i % 2 == 0 {
                op(i, "k", KvInput::Put(b(&value)), call, ret, KvOutput::Done)
            } else if i == 41 {
                get(i, "k", call, ret, Some("forged"))
            } else {
                get(i, "k", call, ret, Some(&value))
            });
        }
        let prefix = shortest_failing_prefix(&history, &options()).expect("not linearizable");
        assert_eq!(prefix.len(), 42, "{prefix:?}");
        assert_eq!(prefix.last().map(|op| op.client), Some(41));
        assert!(matches!(
            check(&prefix, &options()),
            Verdict::NotLinearizable { .. }
        ));
        // Operations in flight at the cut count as indeterminate.
        let slow = vec![
            op(1, "k", KvInput::Put(b("a")), 0, 100, KvOutput::Done),
            get(2, "k", 10, 20, Some("b")),
            get(3, "k", 30, 40, Some("a")),
        ];
        let prefix = shortest_failing_prefix(&slow, &options()).expect("not linearizable");
        assert_eq!(prefix.len(), 2);
        assert_eq!(prefix[0].outcome, Outcome::Indeterminate);
        // Linearizable histories have none.
        history[41] = get(41, "k", 410, 415, Some("v20"));
        assert_eq!(shortest_failing_prefix(&history, &options()), None);
    }

    fn unknown(client: u64, key: &str, input: KvInput, call: u64) -> Operation {
        Operation {
            client,
            key: b(key),
            input,
            call_ns: call,
            outcome: Outcome::Indeterminate,
        }
    }

    fn get(client: u64, key: &str, call: u64, ret: u64, seen: Option<&str>) -> Operation {
        op(
            client,
            key,
            KvInput::Get,
            call,
            ret,
            KvOutput::Value(seen.map(b)),
        )
    }

    fn put(client: u64, key: &str, v: &str, call: u64, ret: u64) -> Operation {
        op(client, key, KvInput::Put(b(v)), call, ret, KvOutput::Done)
    }

    fn append(client: u64, key: &str, v: &str, call: u64, ret: u64) -> Operation {
        op(
            client,
            key,
            KvInput::Append(b(v)),
            call,
            ret,
            KvOutput::Done,
        )
    }

    fn delete(client: u64, key: &str, call: u64, ret: u64) -> Operation {
        op(client, key, KvInput::Delete, call, ret, KvOutput::Done)
    }

    fn cas(
        client: u64,
        key: &str,
        expected: Option<&str>,
        new: &str,
        call: u64,
        ret: u64,
        output: KvOutput,
    ) -> Operation {
        let input = KvInput::Cas {
            expected: expected.map(b),
            new: b(new),
        };
        op(client, key, input, call, ret, output)
    }

    fn swapped() -> KvOutput {
        KvOutput::Cas {
            swapped: true,
            current: None,
        }
    }

    fn not_swapped(current: Option<&str>) -> KvOutput {
        KvOutput::Cas {
            swapped: false,
            current: current.map(b),
        }
    }

    fn put_hash(
        client: u64,
        key: &str,
        v: &str,
        call: u64,
        ret: u64,
        prev: Option<&str>,
    ) -> Operation {
        op(
            client,
            key,
            KvInput::PutHash(b(v)),
            call,
            ret,
            KvOutput::Previous(prev.map(b)),
        )
    }

    #[track_caller]
    fn assert_linearizable(history: &[Operation]) {
        let verdict = check(history, &options());
        assert_eq!(verdict, Verdict::Linearizable, "{verdict}");
    }

    /// Asserts a violation on `key`; returns the explanation.
    #[track_caller]
    fn assert_violation(history: &[Operation], key: &str) -> String {
        match check(history, &options()) {
            Verdict::NotLinearizable {
                key: bad,
                explanation,
            } => {
                assert_eq!(bad, b(key), "{explanation}");
                assert!(
                    explanation.contains(&format!("key \"{key}\"")),
                    "{explanation}"
                );
                explanation
            }
            other => panic!("expected a violation on {key:?}, got {other}"),
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_linearizable(&[]);
    }

    #[test]
    fn sequential_history_of_every_kind_is_linearizable() {
        assert_linearizable(&[
            get(1, "k", 0, 1, None),
            put(1, "k", "a", 2, 3),
            get(2, "k", 4, 5, Some("a")),
            append(1, "k", "b", 6, 7),
            get(2, "k", 8, 9, Some("ab")),
            cas(1, "k", Some("ab"), "c", 10, 11, swapped()),
            cas(2, "k", Some("ab"), "d", 12, 13, not_swapped(Some("c"))),
            get(2, "k", 14, 15, Some("c")),
            delete(1, "k", 16, 17),
            get(2, "k", 18, 19, None),
            append(1, "k", "x", 20, 21),
            get(2, "k", 22, 23, Some("x")),
            delete(1, "k", 24, 25),
            put_hash(1, "k", "p", 26, 27, None),
            get(2, "k", 28, 29, Some("p#")),
            put_hash(1, "k", "q", 30, 31, Some("p#")),
            get(2, "k", 32, 33, Some("q#p#")),
            cas(2, "k", None, "z", 34, 35, not_swapped(Some("q#p#"))),
            delete(1, "k", 36, 37),
            cas(2, "k", None, "z", 38, 39, swapped()),
            get(1, "k", 40, 41, Some("z")),
        ]);
    }

    #[test]
    fn wrong_output_of_each_kind_is_not_linearizable() {
        let base = || vec![put(1, "k", "a", 0, 1)];
        let wrong: Vec<Operation> = vec![
            get(2, "k", 2, 3, Some("b")),
            get(2, "k", 2, 3, None),
            op(2, "k", KvInput::Put(b("b")), 2, 3, KvOutput::Value(None)),
            op(2, "k", KvInput::Append(b("b")), 2, 3, swapped()),
            op(2, "k", KvInput::Delete, 2, 3, KvOutput::Previous(None)),
            cas(2, "k", Some("a"), "c", 2, 3, not_swapped(Some("a"))),
            cas(2, "k", Some("x"), "c", 2, 3, swapped()),
            cas(2, "k", Some("x"), "c", 2, 3, not_swapped(Some("x"))),
            cas(2, "k", Some("x"), "c", 2, 3, not_swapped(None)),
            put_hash(2, "k", "p", 2, 3, None),
            put_hash(2, "k", "p", 2, 3, Some("b")),
            op(2, "k", KvInput::PutHash(b("p")), 2, 3, KvOutput::Done),
        ];
        for bad in wrong {
            let mut history = base();
            history.push(bad.clone());
            let explanation = assert_violation(&history, "k");
            assert!(
                explanation.contains(&bad.to_string()),
                "{bad}: {explanation}"
            );
        }
    }

    #[test]
    fn concurrent_overlapping_ops_linearize_in_some_order() {
        // put a and put b overlap; the reads pin the order b, a, and a read
        // overlapping both may see either.
        assert_linearizable(&[
            put(1, "k", "a", 0, 100),
            put(2, "k", "b", 10, 90),
            get(3, "k", 20, 30, Some("b")),
            get(4, "k", 25, 95, None),
            get(3, "k", 110, 120, Some("a")),
        ]);
        // Appends that overlap may land in either order.
        for seen in ["xy", "yx"] {
            assert_linearizable(&[
                append(1, "k", "x", 0, 50),
                append(2, "k", "y", 10, 40),
                get(3, "k", 60, 70, Some(seen)),
            ]);
        }
    }

    #[test]
    fn equal_timestamps_count_as_concurrent() {
        // A read called in the nanosecond a put returned may precede it.
        assert_linearizable(&[put(1, "k", "a", 0, 10), get(2, "k", 10, 20, None)]);
        assert_violation(&[put(1, "k", "a", 0, 10), get(2, "k", 11, 20, None)], "k");
    }

    #[test]
    fn stale_read_is_not_linearizable() {
        let explanation = assert_violation(
            &[
                put(1, "k", "old", 0, 10),
                put(1, "k", "new", 20, 30),
                get(2, "k", 40, 50, Some("old")),
            ],
            "k",
        );
        // The explanation names the prefix, the value it leaves and the read.
        assert!(explanation.contains("put(\"new\")"), "{explanation}");
        assert!(
            explanation.contains("leaving the value \"new\""),
            "{explanation}"
        );
        assert!(
            explanation.contains("#2 client 2 get -> \"old\" [40..50 ns]"),
            "{explanation}"
        );
        assert!(
            explanation.contains("the store would have answered \"new\""),
            "{explanation}"
        );
    }

    #[test]
    fn stale_read_after_delete_is_not_linearizable() {
        assert_violation(
            &[
                put(1, "k", "a", 0, 10),
                delete(2, "k", 20, 30),
                get(3, "k", 40, 50, Some("a")),
            ],
            "k",
        );
        assert_linearizable(&[
            put(1, "k", "a", 0, 10),
            delete(2, "k", 20, 30),
            get(3, "k", 25, 50, Some("a")),
            get(3, "k", 60, 70, None),
        ]);
    }

    #[test]
    fn read_of_value_never_written_is_not_linearizable() {
        let explanation = assert_violation(
            &[put(1, "k", "a", 0, 10), get(2, "k", 5, 50, Some("ghost"))],
            "k",
        );
        assert!(explanation.contains("\"ghost\""), "{explanation}");
        assert_violation(&[get(2, "k", 5, 50, Some("ghost"))], "k");
    }

    #[test]
    fn lost_append_is_not_linearizable() {
        // Both appends acknowledged, concurrently; the read only has y.
        assert_violation(
            &[
                append(1, "k", "x", 0, 20),
                append(2, "k", "y", 5, 25),
                get(3, "k", 30, 40, Some("y")),
            ],
            "k",
        );
    }

    #[test]
    fn append_order_against_real_time_is_not_linearizable() {
        // x returned before y was called: "yx" is impossible, "xy" fine.
        let history = |seen| {
            vec![
                append(1, "k", "x", 0, 10),
                append(2, "k", "y", 20, 30),
                get(3, "k", 40, 50, Some(seen)),
            ]
        };
        assert_violation(&history("yx"), "k");
        assert_linearizable(&history("xy"));
    }

    #[test]
    fn duplicate_append_is_not_linearizable() {
        assert_violation(
            &[append(1, "k", "x", 0, 10), get(2, "k", 20, 30, Some("xx"))],
            "k",
        );
        assert_linearizable(&[
            append(1, "k", "x", 0, 10),
            append(1, "k", "x", 15, 18),
            get(2, "k", 20, 30, Some("xx")),
        ]);
    }

    #[test]
    fn indeterminate_append_takes_effect_at_most_once() {
        assert_violation(
            &[
                unknown(1, "k", KvInput::Append(b("x")), 0),
                get(2, "k", 20, 30, Some("xx")),
            ],
            "k",
        );
        assert_linearizable(&[
            unknown(1, "k", KvInput::Append(b("x")), 0),
            get(2, "k", 20, 30, Some("x")),
        ]);
    }

    #[test]
    fn indeterminate_put_observed_later_is_linearizable() {
        assert_linearizable(&[
            put(1, "k", "a", 0, 10),
            unknown(2, "k", KvInput::Put(b("b")), 20),
            get(3, "k", 30, 40, Some("a")),
            get(3, "k", 1000, 1010, Some("b")),
        ]);
    }

    #[test]
    fn indeterminate_put_never_observed_is_linearizable() {
        assert_linearizable(&[
            put(1, "k", "a", 0, 10),
            unknown(2, "k", KvInput::Put(b("b")), 20),
            get(3, "k", 30, 40, Some("a")),
            get(3, "k", 1000, 1010, Some("a")),
        ]);
        // Only indeterminate operations: nothing is required of them.
        assert_linearizable(&[
            unknown(1, "k", KvInput::Put(b("b")), 20),
            unknown(2, "k", KvInput::Get, 25),
        ]);
    }

    #[test]
    fn indeterminate_op_may_take_effect_long_after_its_client_moved_on() {
        // Client 1 gave up on put(a) and put(b) since; the delayed put(a)
        // lands last.
        assert_linearizable(&[
            unknown(1, "k", KvInput::Put(b("a")), 0),
            put(1, "k", "b", 100, 110),
            get(2, "k", 120, 130, Some("b")),
            get(2, "k", 140, 150, Some("a")),
        ]);
        // But once: b cannot come back after a.
        assert_violation(
            &[
                unknown(1, "k", KvInput::Put(b("a")), 0),
                put(1, "k", "b", 100, 110),
                get(2, "k", 120, 130, Some("a")),
                get(2, "k", 140, 150, Some("b")),
                get(2, "k", 160, 170, Some("a")),
            ],
            "k",
        );
    }

    #[test]
    fn indeterminate_op_cannot_take_effect_before_its_call() {
        assert_violation(
            &[
                get(2, "k", 0, 10, Some("a")),
                unknown(1, "k", KvInput::Put(b("a")), 20),
            ],
            "k",
        );
        assert_linearizable(&[
            get(2, "k", 0, 20, Some("a")),
            unknown(1, "k", KvInput::Put(b("a")), 20),
        ]);
    }

    #[test]
    fn cas_swapped_when_value_could_not_match_is_not_linearizable() {
        assert_violation(
            &[
                put(1, "k", "a", 0, 10),
                cas(2, "k", Some("b"), "c", 20, 30, swapped()),
            ],
            "k",
        );
        // Expecting absent on a present key.
        assert_violation(
            &[
                put(1, "k", "a", 0, 10),
                cas(2, "k", None, "c", 20, 30, swapped()),
            ],
            "k",
        );
        // Concurrent with the put, the cas may have seen the key absent,
        // and then the put comes after it.
        assert_linearizable(&[
            put(1, "k", "a", 0, 10),
            cas(2, "k", None, "c", 5, 30, swapped()),
            get(3, "k", 40, 50, Some("a")),
        ]);
        assert_violation(
            &[
                put(1, "k", "a", 0, 10),
                cas(2, "k", None, "c", 5, 30, swapped()),
                get(3, "k", 40, 50, Some("c")),
            ],
            "k",
        );
    }

    #[test]
    fn cas_failure_needs_a_consistent_current_value() {
        assert_linearizable(&[
            put(1, "k", "a", 0, 10),
            cas(2, "k", Some("b"), "c", 20, 30, not_swapped(Some("a"))),
            get(3, "k", 40, 50, Some("a")),
        ]);
        assert_violation(
            &[
                put(1, "k", "a", 0, 10),
                cas(2, "k", Some("b"), "c", 20, 30, not_swapped(Some("z"))),
            ],
            "k",
        );
        // A failed cas changes nothing.
        assert_violation(
            &[
                put(1, "k", "a", 0, 10),
                cas(2, "k", Some("b"), "c", 20, 30, not_swapped(Some("a"))),
                get(3, "k", 40, 50, Some("c")),
            ],
            "k",
        );
    }

    #[test]
    fn put_hash_chains() {
        assert_linearizable(&[
            put_hash(1, "k", "a", 0, 10, None),
            put_hash(2, "k", "b", 20, 30, Some("a#")),
            put_hash(1, "k", "c", 40, 50, Some("b#a#")),
            get(3, "k", 60, 70, Some("c#a#b#")),
        ]);
        // Concurrent put_hashes chain in the order their answers say.
        assert_linearizable(&[
            put_hash(1, "k", "a", 0, 100, Some("b#")),
            put_hash(2, "k", "b", 0, 100, None),
            get(3, "k", 110, 120, Some("a#b#")),
        ]);
        // The chain skips a link.
        assert_violation(
            &[
                put_hash(1, "k", "a", 0, 10, None),
                put_hash(2, "k", "b", 20, 30, Some("a#")),
                put_hash(1, "k", "c", 40, 50, Some("a#")),
            ],
            "k",
        );
        // The hash of the wrong concatenation order.
        assert_violation(
            &[
                put(1, "k", "a", 0, 10),
                put_hash(2, "k", "b", 20, 30, Some("a")),
                get(3, "k", 40, 50, Some("a#b")),
            ],
            "k",
        );
        // Both concurrent put_hashes claim to have seen the key absent.
        assert_violation(
            &[
                put_hash(1, "k", "a", 0, 100, None),
                put_hash(2, "k", "b", 0, 100, None),
            ],
            "k",
        );
    }

    #[test]
    fn keys_are_checked_independently() {
        let history = vec![
            put(1, "a", "1", 0, 10),
            put(1, "b", "1", 0, 10),
            put(1, "c", "2", 0, 10),
            get(2, "a", 20, 30, Some("1")),
            // Only key c ever held "2": on key b it is a violation.
            get(2, "b", 20, 30, Some("2")),
            get(2, "c", 20, 30, Some("2")),
            put(3, "d", "x", 0, 10),
            get(3, "d", 20, 30, Some("x")),
        ];
        let explanation = assert_violation(&history, "b");
        assert!(!explanation.contains("key \"a\""), "{explanation}");
        assert!(!explanation.contains("client 3"), "{explanation}");
        let fine: Vec<Operation> = history
            .iter()
            .filter(|op| op.key != b("b"))
            .cloned()
            .collect();
        assert_linearizable(&fine);
    }

    #[test]
    fn violations_beat_undecided_keys_and_the_first_key_is_named() {
        let mut history = big_concurrent_history("a", 60);
        history.push(get(9, "b", 0, 1, Some("nope")));
        history.push(get(9, "c", 0, 1, Some("nope")));
        let options = CheckOptions {
            hash: toy_hash,
            max_steps_per_key: 10,
        };
        match check(&history, &options) {
            Verdict::NotLinearizable { key, .. } => assert_eq!(key, b("b")),
            other => panic!("expected a violation on b, got {other}"),
        }
    }

    #[test]
    fn verdicts_are_deterministic() {
        let history = vec![
            append(1, "k", "x", 0, 20),
            append(2, "k", "y", 5, 25),
            append(3, "k", "z", 5, 25),
            get(4, "k", 30, 40, Some("zx")),
            get(4, "j", 30, 40, Some("zx")),
        ];
        let first = check(&history, &options());
        assert!(matches!(first, Verdict::NotLinearizable { .. }), "{first}");
        for _ in 0..5 {
            assert_eq!(check(&history.clone(), &options()), first);
        }
        let history = simulate(7, 5, 40, &["a", "b"], 10).history;
        let first = check(&history, &options());
        assert_eq!(first, Verdict::Linearizable);
        assert_eq!(check(&history, &options()), first);
    }

    /// `n` puts of distinct values, all concurrent, then a read of a value
    /// none of them wrote: exponentially many orders, a violation.
    fn big_concurrent_history(key: &str, n: u64) -> Vec<Operation> {
        let mut history: Vec<Operation> = (0..n)
            .map(|i| put(i, key, &format!("v{i}"), i, 1000 + i))
            .collect();
        history.push(get(n, key, 2000, 2010, Some("never")));
        history
    }

    #[test]
    fn tiny_budget_gives_undecided() {
        let history = big_concurrent_history("k", 200);
        let options = CheckOptions {
            hash: toy_hash,
            max_steps_per_key: 50,
        };
        match check(&history, &options) {
            Verdict::Undecided { key, reason } => {
                assert_eq!(key, b("k"));
                assert!(reason.contains("gave up after 50 search steps"), "{reason}");
                // Where it got stuck, for judging the store by hand.
                assert!(
                    reason.contains("The longest linearizable prefix found has"),
                    "{reason}"
                );
                assert!(
                    reason.contains("the operations that may come next are:"),
                    "{reason}"
                );
            }
            other => panic!("expected undecided, got {other}"),
        }
    }

    #[test]
    fn memoization_keeps_exponential_histories_tractable() {
        // 12 concurrent puts have 12! orders; memoized, the search visits
        // each (set of puts, last put) once.
        let history = big_concurrent_history("k", 12);
        let options = CheckOptions {
            hash: toy_hash,
            max_steps_per_key: 2_000_000,
        };
        match check(&history, &options) {
            Verdict::NotLinearizable { key, .. } => assert_eq!(key, b("k")),
            other => panic!("expected a violation, got {other}"),
        }
    }

    #[test]
    fn malformed_history_is_undecided() {
        match check(&[put(1, "k", "a", 10, 5)], &options()) {
            Verdict::Undecided { key, reason } => {
                assert_eq!(key, b("k"));
                assert!(reason.contains("returns before its call"), "{reason}");
            }
            other => panic!("expected undecided, got {other}"),
        }
    }

    #[test]
    fn explanations_are_bounded_and_abbreviate_long_values() {
        let long = "v".repeat(1000);
        let mut history: Vec<Operation> = (0..300)
            .map(|i| put(1, "k", &long, i * 10, i * 10 + 5))
            .collect();
        // Many concurrent reads of a value nobody wrote: all of them are
        // candidates at the violation.
        let wrong = format!("{long}!");
        history.extend((0..50).map(|c| get(c + 2, "k", 5000, 6000, Some(&wrong))));
        let explanation = assert_violation(&history, "k");
        assert!(
            explanation.len() < 4000,
            "{} chars:\n{explanation}",
            explanation.len()
        );
        assert!(explanation.contains("(1000 bytes)"), "{explanation}");
        assert!(explanation.contains("(1001 bytes)"), "{explanation}");
        assert!(!explanation.contains(&"v".repeat(33)), "{explanation}");
        assert!(explanation.contains("350 operations"), "{explanation}");
        assert!(
            explanation.contains("prefix found has 300 operations"),
            "{explanation}"
        );
        assert!(
            explanation.contains("... 292 earlier operations"),
            "{explanation}"
        );
        assert!(explanation.contains("and 42 more"), "{explanation}");
        assert!(explanation.lines().count() <= 25, "{explanation}");
    }

    #[test]
    fn verdict_display_names_the_key() {
        let verdict = check(&[get(1, "k\n", 0, 1, Some("x"))], &options());
        let text = verdict.to_string();
        assert!(
            text.starts_with("not linearizable on key \"k\\n\":\n"),
            "{text}"
        );
        assert_eq!(Verdict::Linearizable.to_string(), "linearizable");
    }

    #[test]
    fn recorder_records_concurrent_clients_of_a_linearizable_store() {
        let recorder = Recorder::new();
        let store = Arc::new(Mutex::new(BTreeMap::new()));
        let threads: Vec<_> = (0..4u64)
            .map(|client| {
                let (recorder, store) = (recorder.clone(), Arc::clone(&store));
                thread::spawn(move || {
                    let mut rng = SplitMix64(client);
                    for _ in 0..50 {
                        let key = b(["a", "b"][rng.index(2)]);
                        let input = random_input(&mut rng);
                        let pending = recorder.call(client, key.clone(), input.clone());
                        let output = apply(&mut store.lock().unwrap(), &key, &input);
                        pending.returned(output);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let history = recorder.history();
        assert_eq!(history.len(), 200);
        assert_eq!(recorder.len(), 200);
        assert!(history.windows(2).all(|w| w[0].call_ns <= w[1].call_ns));
        assert!(history.iter().all(|op| matches!(
            op.outcome,
            Outcome::Returned { return_ns, .. } if return_ns >= op.call_ns
        )));
        assert_eq!(check(&history, &options()), Verdict::Linearizable);
    }

    #[test]
    fn recorder_unfinished_ops_are_indeterminate_and_failed_ones_vanish() {
        let recorder = Recorder::default();
        assert!(recorder.is_empty());
        let done = recorder.call(1, b("k"), KvInput::Put(b("a")));
        let dropped = recorder.call(2, b("k"), KvInput::Put(b("b")));
        let failed = recorder.call(3, b("k"), KvInput::Put(b("c")));
        let given_up = recorder.call(4, b("k"), KvInput::Append(b("d")));
        let in_flight = recorder.call(5, b("k"), KvInput::Delete);
        done.returned(KvOutput::Done);
        drop(dropped);
        failed.failed();
        given_up.indeterminate();
        // A client that panics mid-operation leaves it unfinished.
        let clone = recorder.clone();
        let panicked = thread::spawn(move || {
            let _pending = clone.call(6, b("k"), KvInput::Put(b("e")));
            std::panic::resume_unwind(Box::new("client crashed"));
        });
        assert!(panicked.join().is_err());

        let history = recorder.history();
        let clients: Vec<u64> = history.iter().map(|op| op.client).collect();
        assert_eq!(clients, [1, 2, 4, 5, 6]);
        assert_eq!(recorder.len(), 5);
        assert!(matches!(
            history[0].outcome,
            Outcome::Returned {
                output: KvOutput::Done,
                ..
            }
        ));
        assert!(history[1..]
            .iter()
            .all(|op| op.outcome == Outcome::Indeterminate));
        // Finishing after a snapshot still counts.
        in_flight.returned(KvOutput::Done);
        assert!(matches!(
            recorder.history()[3].outcome,
            Outcome::Returned { .. }
        ));
        assert_eq!(
            check(&recorder.history(), &options()),
            Verdict::Linearizable
        );
    }

    struct SplitMix64(u64);

    impl SplitMix64 {
        fn next(&mut self) -> u64 {
            splitmix64(&mut self.0)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn index(&mut self, len: usize) -> usize {
            usize::try_from(self.below(u64::try_from(len).unwrap())).unwrap()
        }
    }

    fn random_input(rng: &mut SplitMix64) -> KvInput {
        let letter = |rng: &mut SplitMix64| b(["a", "b", "c"][rng.index(3)]);
        match rng.below(20) {
            0..=6 => KvInput::Get,
            7..=10 => KvInput::Put(letter(rng)),
            11..=13 => KvInput::Append(b(["x", "y"][rng.index(2)])),
            14 => KvInput::Delete,
            15..=17 => {
                let expected = if rng.below(4) == 0 {
                    None
                } else {
                    Some(letter(rng))
                };
                KvInput::Cas {
                    expected,
                    new: letter(rng),
                }
            }
            _ => KvInput::PutHash(b(["p", "q"][rng.index(2)])),
        }
    }

    /// A reference store, written independently of the checker's model.
    fn apply(store: &mut BTreeMap<Vec<u8>, Vec<u8>>, key: &[u8], input: &KvInput) -> KvOutput {
        let current = store.get(key).cloned();
        match input {
            KvInput::Get => KvOutput::Value(current),
            KvInput::Put(v) => {
                store.insert(key.to_vec(), v.clone());
                KvOutput::Done
            }
            KvInput::Append(v) => {
                store.entry(key.to_vec()).or_default().extend_from_slice(v);
                KvOutput::Done
            }
            KvInput::Delete => {
                store.remove(key);
                KvOutput::Done
            }
            KvInput::Cas { expected, new } => {
                if current == *expected {
                    store.insert(key.to_vec(), new.clone());
                    KvOutput::Cas {
                        swapped: true,
                        current: None,
                    }
                } else {
                    KvOutput::Cas {
                        swapped: false,
                        current,
                    }
                }
            }
            KvInput::PutHash(v) => {
                let mut joined = current.clone().unwrap_or_default();
                joined.extend_from_slice(v);
                store.insert(key.to_vec(), toy_hash(&joined));
                KvOutput::Previous(current)
            }
        }
    }

    /// A simulated run of a correct store.
    struct Simulated {
        history: Vec<Operation>,
        /// The store after every operation that took effect.
        store: BTreeMap<Vec<u8>, Vec<u8>>,
        /// After every call, return and effect.
        end_ns: u64,
    }

    /// A correct store under concurrent clients: each client issues
    /// operations one after another over random intervals; each operation
    /// takes effect at a random point inside its interval (an indeterminate
    /// one at any point after its call, possibly after its client moved
    /// on, or never), and the outputs come from running the reference store
    /// in the order of those points.
    fn simulate(
        seed: u64,
        clients: u64,
        ops_per_client: usize,
        keys: &[&str],
        indeterminate_one_in: u64,
    ) -> Simulated {
        let mut rng = SplitMix64(seed);
        let mut history = Vec::new();
        let mut effect_at = Vec::new();
        let mut end_ns = 0;
        for client in 0..clients {
            let mut t = rng.below(100);
            for _ in 0..ops_per_client {
                let key = b(keys[rng.index(keys.len())]);
                let input = random_input(&mut rng);
                let duration = 2 + rng.below(300);
                let (outcome, at) = if rng.below(indeterminate_one_in) == 0 {
                    let at = (rng.below(2) == 0).then(|| t + 1 + rng.below(2000));
                    (Outcome::Indeterminate, at)
                } else {
                    let return_ns = t + duration;
                    let outcome = Outcome::Returned {
                        output: KvOutput::Done,
                        return_ns,
                    };
                    (outcome, Some(t + 1 + rng.below(duration - 1)))
                };
                history.push(Operation {
                    client,
                    key,
                    input,
                    call_ns: t,
                    outcome,
                });
                effect_at.push(at);
                end_ns = end_ns.max(at.unwrap_or(0)).max(t + duration);
                t += duration + 1 + rng.below(100);
            }
        }
        let mut order: Vec<usize> = (0..history.len())
            .filter(|&i| effect_at[i].is_some())
            .collect();
        order.sort_by_key(|&i| (effect_at[i], i));
        let mut store = BTreeMap::new();
        for i in order {
            let op = &mut history[i];
            let output = apply(&mut store, &op.key, &op.input);
            if let Outcome::Returned {
                output: recorded, ..
            } = &mut op.outcome
            {
                *recorded = output;
            }
        }
        Simulated {
            history,
            store,
            end_ns,
        }
    }

    #[test]
    fn randomized_correct_histories_are_linearizable() {
        for seed in 0..30 {
            let history = simulate(seed, 5, 40, &["a", "b", "c"], 10).history;
            let verdict = check(&history, &options());
            assert_eq!(verdict, Verdict::Linearizable, "seed {seed}: {verdict}");
        }
        // One hot key, more clients.
        for seed in 100..105 {
            let history = simulate(seed, 8, 60, &["hot"], 20).history;
            let verdict = check(&history, &options());
            assert_eq!(verdict, Verdict::Linearizable, "seed {seed}: {verdict}");
        }
    }

    #[test]
    fn randomized_histories_with_a_corrupted_read_are_not_linearizable() {
        for seed in 0..30 {
            let mut history = simulate(seed, 5, 40, &["a", "b", "c"], 10).history;
            let reads: Vec<usize> = (0..history.len())
                .filter(|&i| {
                    history[i].input == KvInput::Get
                        && matches!(history[i].outcome, Outcome::Returned { .. })
                })
                .collect();
            let victim = reads[SplitMix64(seed).index(reads.len())];
            if let Outcome::Returned { output, .. } = &mut history[victim].outcome {
                *output = KvOutput::Value(some("corrupt"));
            }
            match check(&history, &options()) {
                Verdict::NotLinearizable { key, explanation } => {
                    assert_eq!(key, history[victim].key, "seed {seed}: {explanation}");
                    assert!(
                        explanation.contains("\"corrupt\""),
                        "seed {seed}: {explanation}"
                    );
                }
                other => panic!("seed {seed}: expected a violation, got {other}"),
            }
        }
    }

    #[test]
    fn randomized_histories_with_a_duplicated_append_are_not_linearizable() {
        // After the run quiesces, an acknowledged append of a letter nothing
        // else writes, then a read: with the letter once the history is fine
        // (the checker must find the run's exact final value), with it twice
        // (a retry the store did not deduplicate) it is not.
        for seed in 0..20 {
            let run = simulate(seed, 4, 30, &["k"], 20);
            let before = run.store.get(b"k".as_slice()).cloned().unwrap_or_default();
            let before = String::from_utf8(before).unwrap();
            let t = run.end_ns + 10;
            let mut history = run.history;
            history.push(append(90, "k", "!", t, t + 5));
            for (seen, linearizable) in
                [(format!("{before}!"), true), (format!("{before}!!"), false)]
            {
                let mut history = history.clone();
                history.push(get(91, "k", t + 10, t + 15, Some(&seen)));
                if linearizable {
                    let verdict = check(&history, &options());
                    assert_eq!(verdict, Verdict::Linearizable, "seed {seed}: {verdict}");
                } else {
                    assert_violation(&history, "k");
                }
            }
        }
    }

    /// Small random single-key histories, some outputs corrupted, some on
    /// a coarse clock (many equal times), get the same answer from the
    /// checker as from brute force over every order of every subset of the
    /// operations.
    #[test]
    fn agrees_with_brute_force_on_small_histories() {
        let mut verdicts = [0; 2];
        // (clients, operations each, one in how many indeterminate, clock
        // granularity)
        let shapes = [(3, 2, 10, 1), (3, 3, 3, 1), (4, 2, 2, 1), (3, 3, 4, 100)];
        for (shape, &(clients, each, rate, tick)) in shapes.iter().enumerate() {
            for seed in 0..250 {
                let mut history = simulate(seed, clients, each, &["k"], rate).history;
                let mut rng = SplitMix64(seed ^ 0xABCD);
                for op in &mut history {
                    op.call_ns /= tick;
                    if let Outcome::Returned { output, return_ns } = &mut op.outcome {
                        *return_ns /= tick;
                        if rng.below(4) == 0 {
                            *output = corrupt(output, &mut rng);
                        }
                    }
                }
                let expected = brute_force(&history);
                let verdict = check(&history, &options());
                assert_eq!(
                    verdict.is_linearizable(),
                    expected,
                    "shape {shape} seed {seed}: {history:#?}\n{verdict}"
                );
                assert!(!matches!(verdict, Verdict::Undecided { .. }), "{verdict}");
                verdicts[usize::from(expected)] += 1;
            }
        }
        // Both answers are well represented.
        assert!(verdicts.iter().all(|&n| n > 300), "{verdicts:?}");
    }

    fn corrupt(output: &KvOutput, rng: &mut SplitMix64) -> KvOutput {
        let value = |rng: &mut SplitMix64| {
            [None, some("a"), some("b"), some("ax"), some("p#")][rng.index(5)].clone()
        };
        match output {
            KvOutput::Value(_) => KvOutput::Value(value(rng)),
            KvOutput::Done => KvOutput::Done,
            KvOutput::Cas { swapped, .. } => KvOutput::Cas {
                swapped: !swapped,
                current: value(rng),
            },
            KvOutput::Previous(_) => KvOutput::Previous(value(rng)),
        }
    }

    /// Whether some order of some of the operations (every definite one,
    /// each at most once) is a linearization, by trying every order that
    /// extends a valid prefix: an operation may come next if no operation
    /// of the prefix was called after it returned, and the reference store
    /// gives its answer.
    fn brute_force(history: &[Operation]) -> bool {
        fn extend(
            history: &[Operation],
            used: &mut [bool],
            latest_call: u64,
            store: &BTreeMap<Vec<u8>, Vec<u8>>,
        ) -> bool {
            let done = |i: usize| used[i] || history[i].outcome == Outcome::Indeterminate;
            if (0..history.len()).all(done) {
                return true;
            }
            for (i, op) in history.iter().enumerate() {
                if used[i] {
                    continue;
                }
                if let Outcome::Returned { return_ns, .. } = op.outcome {
                    if return_ns < latest_call {
                        continue;
                    }
                }
                let mut next = store.clone();
                let answer = apply(&mut next, &op.key, &op.input);
                let fits = match (&op.outcome, answer) {
                    (Outcome::Indeterminate, _) => true,
                    (
                        Outcome::Returned {
                            output: KvOutput::Cas { swapped: true, .. },
                            ..
                        },
                        KvOutput::Cas { swapped: true, .. },
                    ) => true,
                    (Outcome::Returned { output, .. }, answer) => *output == answer,
                };
                if fits {
                    used[i] = true;
                    if extend(history, used, latest_call.max(op.call_ns), &next) {
                        return true;
                    }
                    used[i] = false;
                }
            }
            false
        }
        extend(
            history,
            &mut vec![false; history.len()],
            0,
            &BTreeMap::new(),
        )
    }
}
