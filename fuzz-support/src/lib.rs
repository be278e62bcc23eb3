//! The mutation strategies and bounds that every decoder fuzz suite of the
//! workspace shares (the proptest suites in `*/tests/fuzz_decoders.rs`):
//! their proptest configuration ([`cases`], [`config`]), the [`Mutation`]s
//! made to valid encodings and the strategies that generate them
//! ([`mutations`], [`mutations_with`], [`huge_u32`], [`huge_u64`]), and
//! [`bounded`], which checks that a decoder did not reserve what a damaged
//! length claims.
//!
//! Test-only: a dev-dependency of the crates whose decoders are fuzzed,
//! never linked into a library or binary of the workspace.
//!
//! Each suite mutates what its formats hold: [`FieldMutations`] says how
//! often its mutations set 4-byte fields (in which byte order), 8-byte
//! fields and bincode varints, and to which values; [`mutations`] is the
//! default for little-endian bincode messages.
//!
//! Nothing here asserts how long a decoder takes: speed is measured by
//! benchmarks, never asserted in tests. [`bounded`] bounds memory only.

use std::fmt::Debug;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::Union;
use proptest::test_runner::{FileFailurePersistence, TestCaseError};

// ---------------------------------------------------------------------------
// Configuration.
// ---------------------------------------------------------------------------

/// `default` cases, or `PROPTEST_CASES` when it is set.
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// A fuzz suite's configuration: [`cases`]`(default_cases)` cases, and
/// failing seeds saved to `<test file>.proptest-regressions` beside the
/// test file that `proptest!` runs this configuration in.
pub fn config(default_cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(default_cases),
        // `fuzz_decoders.proptest-regressions` beside the test file: what
        // the default `SourceParallel` falls back to for a test file,
        // without its warning on every run.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Mutations.
// ---------------------------------------------------------------------------

/// One change to a byte string (see [`apply`]). Positions are [`Index`]es,
/// taken relative to the length of the bytes when applied.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// One bit flipped.
    FlipBit {
        /// The byte.
        at: Index,
        /// The bit in it, 0 to 7.
        bit: u8,
    },
    /// Bytes overwritten (clipped to the end).
    Overwrite {
        /// Where the first goes.
        at: Index,
        /// What they are overwritten with.
        bytes: Vec<u8>,
    },
    /// Bytes inserted.
    Insert {
        /// Where (the end included).
        at: Index,
        /// What is inserted.
        bytes: Vec<u8>,
    },
    /// Bytes removed (up to the end).
    Remove {
        /// The first removed.
        at: Index,
        /// How many.
        len: usize,
    },
    /// Everything from a position on removed.
    Truncate {
        /// The first byte removed.
        at: Index,
    },
    /// Bytes appended.
    Append {
        /// What is appended.
        bytes: Vec<u8>,
    },
    /// A 4-byte field (a length, a checksum, an enum variant), little- or
    /// big-endian, set to a value (clipped to the end).
    SetU32 {
        /// Where the field starts.
        at: Index,
        /// Its new value.
        value: u32,
        /// Big-endian instead of little-endian.
        big: bool,
    },
    /// An 8-byte little-endian field (a length) set to a (mostly huge) value
    /// (clipped to the end).
    SetU64 {
        /// Where the field starts.
        at: Index,
        /// Its new value.
        value: u64,
    },
    /// A bincode varint set to a (mostly huge) value: marker 253, then the
    /// value as a little-endian u64, replacing everything from the position
    /// on.
    SetVarint {
        /// Where the varint starts.
        at: Index,
        /// Its new value.
        value: u64,
    },
}

/// Each of `notable`, each as likely as any value at all (the last choice).
pub fn notable_or_any<T>(notable: &[T]) -> BoxedStrategy<T>
where
    T: Arbitrary + Clone + Debug + 'static,
{
    let mut options: Vec<BoxedStrategy<T>> = notable
        .iter()
        .map(|value| Just(value.clone()).boxed())
        .collect();
    options.push(any::<T>().boxed());
    Union::new(options).boxed()
}

/// A 4-byte value a damaged length field may claim: `u32::MAX`,
/// `u32::MAX - 1`, 2^31, each of `limits` (a format's own bounds and just
/// past them), or any value.
pub fn huge_u32(limits: &[u32]) -> BoxedStrategy<u32> {
    let notable: Vec<u32> = [u32::MAX, u32::MAX - 1, 1 << 31]
        .into_iter()
        .chain(limits.iter().copied())
        .collect();
    notable_or_any(&notable)
}

/// An 8-byte value a damaged length may claim: `u64::MAX`, 2^40, 2^32,
/// 2^63, or any value.
pub fn huge_u64() -> BoxedStrategy<u64> {
    notable_or_any(&[u64::MAX, 1 << 40, 1 << 32, 1 << 63])
}

/// How a suite's mutations set fields, besides the changes to bytes that
/// every suite makes (with weights: flip a bit 4, overwrite 2, insert 1,
/// remove 1, truncate 2, append 1): how often (a weight on the same scale,
/// 0 for never) and to which values.
///
/// The default suits little-endian bincode messages: 4-byte fields (enum
/// variants) set to any value, little-endian, weight 1; 8-byte fields
/// (lengths) set to [`huge_u64`], weight 2; no varints.
#[derive(Debug, Clone)]
pub struct FieldMutations {
    /// Weight of [`Mutation::SetU32`].
    pub u32_weight: u32,
    /// The values [`Mutation::SetU32`] writes.
    pub u32_values: BoxedStrategy<u32>,
    /// Whether [`Mutation::SetU32`] writes big-endian half the time (else
    /// always little-endian).
    pub u32_either_endian: bool,
    /// Weight of [`Mutation::SetU64`].
    pub u64_weight: u32,
    /// The values [`Mutation::SetU64`] and [`Mutation::SetVarint`] write.
    pub u64_values: BoxedStrategy<u64>,
    /// Weight of [`Mutation::SetVarint`].
    pub varint_weight: u32,
}

impl Default for FieldMutations {
    fn default() -> Self {
        FieldMutations {
            u32_weight: 1,
            u32_values: any::<u32>().boxed(),
            u32_either_endian: false,
            u64_weight: 2,
            u64_values: huge_u64(),
            varint_weight: 0,
        }
    }
}

/// One mutation: a change to bytes, or a field set as `fields` says.
pub fn mutation_with(fields: &FieldMutations) -> impl Strategy<Value = Mutation> {
    let set_u32 = if fields.u32_either_endian {
        (any::<Index>(), fields.u32_values.clone(), any::<bool>())
            .prop_map(|(at, value, big)| Mutation::SetU32 { at, value, big })
            .boxed()
    } else {
        (any::<Index>(), fields.u32_values.clone())
            .prop_map(|(at, value)| Mutation::SetU32 {
                at,
                value,
                big: false,
            })
            .boxed()
    };
    let options: Vec<(u32, BoxedStrategy<Mutation>)> = vec![
        (
            4,
            (any::<Index>(), 0u8..8)
                .prop_map(|(at, bit)| Mutation::FlipBit { at, bit })
                .boxed(),
        ),
        (
            2,
            (any::<Index>(), vec(any::<u8>(), 1..8))
                .prop_map(|(at, bytes)| Mutation::Overwrite { at, bytes })
                .boxed(),
        ),
        (
            1,
            (any::<Index>(), vec(any::<u8>(), 1..24))
                .prop_map(|(at, bytes)| Mutation::Insert { at, bytes })
                .boxed(),
        ),
        (
            1,
            (any::<Index>(), 1usize..24)
                .prop_map(|(at, len)| Mutation::Remove { at, len })
                .boxed(),
        ),
        (
            2,
            any::<Index>()
                .prop_map(|at| Mutation::Truncate { at })
                .boxed(),
        ),
        (
            1,
            vec(any::<u8>(), 1..32)
                .prop_map(|bytes| Mutation::Append { bytes })
                .boxed(),
        ),
        (fields.u32_weight, set_u32),
        (
            fields.u64_weight,
            (any::<Index>(), fields.u64_values.clone())
                .prop_map(|(at, value)| Mutation::SetU64 { at, value })
                .boxed(),
        ),
        (
            fields.varint_weight,
            (any::<Index>(), fields.u64_values.clone())
                .prop_map(|(at, value)| Mutation::SetVarint { at, value })
                .boxed(),
        ),
    ];
    // Same choice, in the same order, as a `prop_oneof!` of the options
    // kept: seeds saved before the strategies moved here replay the same
    // cases.
    Union::new_weighted(
        options
            .into_iter()
            .filter(|&(weight, _)| weight > 0)
            .collect(),
    )
}

/// One to three mutations, fields set as `fields` says.
pub fn mutations_with(fields: &FieldMutations) -> impl Strategy<Value = Vec<Mutation>> {
    vec(mutation_with(fields), 1..4)
}

/// One to three mutations, fields set as [`FieldMutations::default`] says.
pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    mutations_with(&FieldMutations::default())
}

/// Writes `field` at `at` (clipped to the end of `bytes`).
pub fn put_field(bytes: &mut [u8], at: usize, field: &[u8]) {
    let end = (at + field.len()).min(bytes.len());
    bytes[at..end].copy_from_slice(&field[..end - at]);
}

/// Applies `mutation` to `bytes`. Empty bytes only grow by an append or an
/// insert; every other mutation leaves them empty.
pub fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    if let Mutation::Append { bytes: more } = mutation {
        bytes.extend_from_slice(more);
        return;
    }
    if bytes.is_empty() {
        if let Mutation::Insert { bytes: more, .. } = mutation {
            bytes.extend_from_slice(more);
        }
        return;
    }
    let len = bytes.len();
    match mutation {
        Mutation::FlipBit { at, bit } => bytes[at.index(len)] ^= 1 << bit,
        Mutation::Overwrite { at, bytes: with } => put_field(bytes, at.index(len), with),
        Mutation::Insert { at, bytes: more } => {
            let at = at.index(len + 1);
            bytes.splice(at..at, more.iter().copied());
        }
        Mutation::Remove { at, len: count } => {
            let at = at.index(len);
            bytes.drain(at..(at + count).min(len));
        }
        Mutation::Truncate { at } => bytes.truncate(at.index(len)),
        Mutation::SetU32 { at, value, big } => {
            let field = if *big {
                value.to_be_bytes()
            } else {
                value.to_le_bytes()
            };
            put_field(bytes, at.index(len), &field);
        }
        Mutation::SetU64 { at, value } => put_field(bytes, at.index(len), &value.to_le_bytes()),
        Mutation::SetVarint { at, value } => {
            let at = at.index(len);
            bytes.truncate(at);
            bytes.push(253);
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        Mutation::Append { .. } => unreachable!("handled above"),
    }
}

/// `original` with `mutations` applied in turn.
pub fn mutated(original: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = original.to_vec();
    for mutation in mutations {
        apply(&mut bytes, mutation);
    }
    bytes
}

// ---------------------------------------------------------------------------
// Bounds.
// ---------------------------------------------------------------------------

/// Peak virtual memory of this process (`VmPeak`), where Linux reports it.
pub fn peak_virtual_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmPeak:"))?;
    let kib: u64 = line
        .trim_start_matches("VmPeak:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Runs `decode` and checks that the peak virtual memory of the process did
/// not grow by 1 GiB or more meanwhile: a decoder that reserved what a
/// damaged length field claims (up to 4 GiB for a u32, far more for a u64)
/// would. Other threads of the test process may allocate meanwhile, hence
/// the wide margin. Where Linux does not report the peak, nothing is
/// checked. How long `decode` takes is not checked: speed is measured by
/// benchmarks, not asserted in tests.
pub fn bounded<T>(decode: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    const MARGIN_BYTES: u64 = 1 << 30;
    let before = peak_virtual_bytes();
    let result = decode();
    if let (Some(before), Some(after)) = (before, peak_virtual_bytes()) {
        prop_assert!(
            after.saturating_sub(before) < MARGIN_BYTES,
            "peak virtual memory grew from {before} to {after} bytes while decoding"
        );
    }
    Ok(result)
}
