//! A seeded, deterministic fault simulation of the Multi-Paxos core of
//! `paxos-log`.
//!
//! A run drives N replicas ([`paxos_log::Replica`], each with a
//! [`paxos_log::MemAcceptorStore`] that survives its crashes) through
//! logical ticks exactly as the core's driving recipe prescribes, while one
//! seed decides every fault ([`Scenario`] gives the rates): message loss,
//! delay, reordering, duplication, two-sided and one-way partitions and
//! their healing, crashes at random ticks or at a random point of carrying
//! out a `Ready` (so whatever was not persisted is lost), crashes of every
//! replica at once, restarts whose state machine survived fully, partly or
//! not at all, client proposals of unique commands, and linearizable reads.
//! With snapshots ([`Scenario::snapshot_every`]) each replica also has a
//! state machine (its applied log prefix) and a durable snapshot of it; it
//! takes snapshots and compacts its log and acceptor store below them (every
//! K applied slots, and at random moments), answers the `snapshot_requests`
//! of its `Ready`s by sending its snapshot through the simulated network,
//! and installs the snapshots it receives, as `paxos-log`'s driver does;
//! long outages (a replica down or cut off for a long stretch) make replicas
//! fall behind the others' compaction points.
//! With membership changes ([`Scenario::spares`],
//! [`Scenario::reconfig_rate`]) the machines are the genesis replicas (every
//! machine's `Config::members`) and spare machines that run from the start
//! outside the group; while the faults last, the leader is asked to add a
//! machine, remove a member (itself too) or replace one, and the machine
//! being added or removed is sometimes crashed around the change, so that it
//! must catch up from the log or a snapshot (which carries the membership)
//! after its restart. Every machine takes part in every fault.
//! Nothing depends on wall time or hash order: a seed replays exactly.
//!
//! The invariants ([`Checker`], one method each) are checked after every
//! `Ready` and every tick: agreement, validity, gap-free delivery (also
//! across an installed snapshot: delivery resumes right after its slot),
//! durability across crashes (a compacted slot lives on in the state
//! machine), read linearizability, state machine = chosen log prefix
//! (after every snapshot install and restart, and at the end), compaction
//! never beyond what was applied nor beyond the durable snapshot, no
//! replica leading at a ballot after it received, as candidate or leader of
//! that ballot, a promise that compacted its first open slot (checked at
//! every later look at its role, until it crashes), configuration
//! agreement (every replica's configurations of the slots of its α-window
//! are the ones the chosen log decides: the checker derives them from the
//! chosen log itself, not through `paxos_log::Membership`) and validity of
//! membership changes (only member sets a leader took are chosen); and,
//! once the faults stop, liveness (a leader is elected and a fresh proposal
//! is chosen on every replica within `Scenario::liveness_ticks`, also for
//! replicas that only a snapshot can bring back; with membership changes,
//! on every member of the latest configuration: a removed machine hears
//! from no leader and may stay behind, but what it holds must be right).
//! A violation comes back as a [`Violation`] whose report holds the seed,
//! the scenario, the invariant, the last events and the command that
//! replays it:
//!
//! ```text
//! SIM_SEED=1234 cargo test -p tests --test paxos_sim -- \
//!     --include-ignored --exact lossy_network --nocapture
//! ```
//!
//! `SIM_SEED` runs that one seed, `SIM_SEEDS` changes how many seeds a suite
//! runs, `SIM_TRACE_LEN` how many events a report keeps.

mod invariants;
mod network;
mod rng;
mod scenario;
mod sim;
mod state_machine;
mod trace;

use std::env;

use paxos_log::Command;

pub use self::invariants::{Checker, Invariant, InvariantError};
pub use self::rng::SimRng;
pub use self::scenario::{Corruption, Scenario};
pub use self::sim::{run, run_traced, RunStats, Violation, DEFAULT_TRACE_LEN};

/// The command the test-only corruption forges: no client ever proposes it
/// (client command ids start at 1 and count up).
pub const FORGED_COMMAND: u64 = u64::MAX;

/// The bytes of client command `id`: unique per run.
pub fn command(id: u64) -> Command {
    id.to_le_bytes().to_vec()
}

/// The id of a command made by [`command`], if `bytes` is one.
pub fn command_id(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_le_bytes)
}

/// The seeds a suite runs: `SIM_SEED` alone if set, else `0..SIM_SEEDS`,
/// else `0..default_count`.
///
/// # Panics
///
/// If either variable is set to something other than a number.
pub fn seeds_from_env(default_count: u64) -> Vec<u64> {
    if let Ok(seed) = env::var("SIM_SEED") {
        let seed = seed
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("SIM_SEED={seed:?} is not a u64"));
        return vec![seed];
    }
    let count = match env::var("SIM_SEEDS") {
        Ok(count) => count
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("SIM_SEEDS={count:?} is not a u64")),
        Err(_) => default_count,
    };
    (0..count).collect()
}

/// How many events a violation report keeps: `SIM_TRACE_LEN`, else
/// [`DEFAULT_TRACE_LEN`].
pub fn trace_len_from_env() -> usize {
    env::var("SIM_TRACE_LEN")
        .ok()
        .and_then(|len| len.trim().parse().ok())
        .unwrap_or(DEFAULT_TRACE_LEN)
}

/// Totals over the seeds of one suite.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SuiteStats {
    /// Seeds run.
    pub seeds: u64,
    /// Sums over the runs (`heal_ticks`: the maximum).
    pub totals: RunStats,
}

/// Runs `scenario` for every seed of [`seeds_from_env`] (`default_count`
/// unless overridden) and returns the totals.
///
/// # Panics
///
/// At the first violation, with its full report ([`Violation::report`]),
/// whose replay command names `test_name`: the suite's test function.
pub fn run_suite(test_name: &str, scenario: &Scenario, default_count: u64) -> SuiteStats {
    let trace_len = trace_len_from_env();
    let mut stats = SuiteStats::default();
    for seed in seeds_from_env(default_count) {
        match run_traced(scenario, seed, trace_len) {
            Ok(run) => {
                stats.seeds += 1;
                stats.totals.add(&run);
            }
            Err(violation) => panic!("{}", violation.report(test_name)),
        }
    }
    stats
}
