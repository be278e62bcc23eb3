//! The driver: replicas, their stores and state machines, the clients and
//! the fault schedule, stepped tick by tick.
//!
//! Each replica is driven exactly as the core's module docs prescribe:
//! inputs (`tick`, `propose`, `read_index`, `step`), then `ready`; the
//! `Ready`'s messages are sent at once, its persist completes some ticks
//! later (inputs keep arriving meanwhile), then the persisted messages are
//! sent, the chosen entries applied, the reads released, and `advance`
//! called. A crash can hit anywhere in that sequence.
//!
//! With snapshots ([`Scenario::snapshot_every`]), each replica also models
//! its state machine (the applied prefix) and a durable snapshot of it, as
//! `paxos-log`'s driver does: after a `Ready`, every K applied slots, it
//! saves a snapshot, then compacts the core and the acceptor store below
//! it; it sends its snapshot, through the simulated network, to the peers a
//! `Ready` lists in `snapshot_requests`; and a replica that receives one
//! beyond what it applied restores its state machine from it, saves it,
//! calls `install_snapshot` and compacts its store (`snapshots.rs`).
//!
//! The machines are the genesis replicas and, with
//! [`Scenario::spares`], spare machines that run from the start outside the
//! group. With [`Scenario::reconfig_rate`] the leader is asked to change
//! the membership while the faults last, and the machine being added or
//! removed is sometimes crashed around it (`membership.rs`).

mod membership;
mod snapshots;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::panic::{self, AssertUnwindSafe};

use paxos_log::{
    AcceptorStore, Ballot, Config, Entry, Envelope, MemAcceptorStore, Message, NodeId, PersistOp,
    ProposeError, ReadReady, Replica, Role, Slot, Value,
};

use super::invariants::{
    configurations_text, members_text, membership_text, Checker, Invariant, InvariantError,
};
use super::network::{Event, EventQueue, Links};
use super::rng::{hash_name, mix, SimRng};
use super::scenario::{Corruption, Scenario};
use super::state_machine::{Snapshot, StateMachine};
use super::trace::{short_value, MsgSummary, Trace, TraceEvent};
use super::{command, FORGED_COMMAND};

/// Events kept for a violation report unless `SIM_TRACE_LEN` says more.
pub const DEFAULT_TRACE_LEN: usize = 50;

/// How often (in ticks) the liveness check re-proposes a fresh command
/// while none is chosen yet (the previous one may have been dropped by a
/// leader that stepped down).
const FRESH_RETRY_TICKS: u64 = 20;

/// What one run did: progress made and faults injected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Ticks simulated (faults and recovery).
    pub ticks: u64,
    /// Ticks from the end of the faults until the cluster had recovered.
    pub heal_ticks: u64,
    /// Commands a leader took (`propose` returned `Ok`).
    pub commands_proposed: u64,
    /// Client calls refused (`NotLeader` or `Busy`).
    pub commands_refused: u64,
    /// Distinct commands chosen.
    pub commands_chosen: u64,
    /// Slots chosen.
    pub slots_chosen: u64,
    /// Of those, no-ops.
    pub noops_chosen: u64,
    /// Distinct ballots some replica led with (leader elections won).
    pub leaders: u64,
    /// Messages the replicas sent.
    pub messages_sent: u64,
    /// Messages delivered to a running replica.
    pub messages_delivered: u64,
    /// Messages lost by the network.
    pub dropped: u64,
    /// Messages lost to a partition.
    pub dropped_by_partition: u64,
    /// Messages that arrived at a crashed replica.
    pub dropped_at_down_node: u64,
    /// Messages delivered twice.
    pub duplicated: u64,
    /// Messages held back so later ones overtake them.
    pub reordered: u64,
    /// Partitions (both ways).
    pub partitions: u64,
    /// One-way partitions.
    pub one_way_partitions: u64,
    /// Single links cut both ways (bridges).
    pub link_cuts: u64,
    /// Replicas crashed at a random tick (persist in flight lost).
    pub crashes: u64,
    /// Replicas crashed while carrying out a `Ready`.
    pub crashes_in_ready: u64,
    /// Times every replica crashed at once.
    pub crash_all: u64,
    /// Restarts.
    pub restarts: u64,
    /// Restarts whose state machine was lost (restored from the durable
    /// snapshot, or from nothing: `applied_upto` 0).
    pub state_machine_lost: u64,
    /// Restarts whose state machine kept only part of what it applied.
    pub state_machine_partial: u64,
    /// Persist batches made durable (fsyncs).
    pub persists: u64,
    /// Reads started (`read_index` returned `Ok`).
    pub reads_started: u64,
    /// Reads released by a leader (`Ready::reads`).
    pub reads_released: u64,
    /// Reads served (released and applied up to their slot).
    pub reads_served: u64,
    /// Snapshots taken (each followed by a compaction of log and store).
    pub snapshots_taken: u64,
    /// Peers listed in `Ready::snapshot_requests`.
    pub snapshot_requests: u64,
    /// Snapshots sent to a peer (resends included).
    pub snapshots_sent: u64,
    /// Snapshots that arrived at a running replica.
    pub snapshots_delivered: u64,
    /// Of those: not beyond what the replica had applied (ignored).
    pub snapshots_stale: u64,
    /// Of those: arrived while a `Ready` was in flight, installed after it.
    pub snapshots_deferred: u64,
    /// Snapshots installed (`install_snapshot`).
    pub snapshots_installed: u64,
    /// Snapshots the test-only corruption damaged.
    pub snapshots_corrupted: u64,
    /// Crashes right after a snapshot was made durable, before compacting.
    pub crashes_in_snapshot: u64,
    /// Restarts whose state machine was lost and restored from the durable
    /// snapshot (slot > 0).
    pub restarts_from_snapshot: u64,
    /// Highest compaction point of any replica's log (a maximum).
    pub max_compacted: u64,
    /// Promises delivered to a candidate of their ballot whose promiser had
    /// compacted the candidate's first open slot.
    pub compacted_promises: u64,
    /// Candidates that stepped down on such a promise (and asked to catch
    /// up instead of leading).
    pub compacted_stepdowns: u64,
    /// Replicas taken away for a long stretch (crashed or isolated).
    pub long_outages: u64,
    /// Snapshots installed by a replica that was leader or candidate.
    pub snapshots_installed_not_follower: u64,
    /// Replicas that, when the faults stopped, had applied less than
    /// another replica had compacted (only a snapshot could bring them
    /// back).
    pub behind_compaction_at_heal: u64,
    /// Snapshots installed after the faults stopped (during recovery).
    pub snapshots_installed_in_recovery: u64,

    // --- membership changes ---
    /// `reconfigure` calls made.
    pub reconfigs_asked: u64,
    /// Of those: taken (`Ok`), each one change proposed.
    pub reconfigs_taken: u64,
    /// Of those: refused with `NotLeader`.
    pub reconfigs_not_leader: u64,
    /// Of those: refused with `Reconfiguring` (another change under way).
    pub reconfigs_refused_in_progress: u64,
    /// Of those: refused with `InvalidMembership` (never, for the valid
    /// sets the simulation draws) or `Busy`.
    pub reconfigs_refused_other: u64,
    /// Changes due while no machine was running to ask.
    pub reconfigs_nobody_to_ask: u64,
    /// Changes taken that add one machine.
    pub adds: u64,
    /// Changes taken that remove one member.
    pub removes: u64,
    /// Changes taken that replace one member with a non-member.
    pub replaces: u64,
    /// Changes taken that removed the leader that took them.
    pub leader_removals: u64,
    /// `Reconfigure` values chosen.
    pub reconfigs_chosen: u64,
    /// Of those: in force (a slot they govern was chosen).
    pub reconfigs_in_force: u64,
    /// Machines being added or removed that were crashed around the change.
    pub changing_node_crashes: u64,
    /// Snapshots installed by a machine that had been added to the group
    /// since the slot it had applied (it caught up through the snapshot).
    pub snapshots_installed_by_added: u64,
    /// Machines outside the latest configuration at the end that had not
    /// applied the fresh command (exempt from liveness: nobody leads them).
    pub removed_left_behind: u64,
}

impl RunStats {
    /// Every fault injected: losses, duplicates, reorderings, partitions,
    /// crashes.
    pub fn faults(&self) -> u64 {
        self.dropped
            + self.duplicated
            + self.reordered
            + self.partitions
            + self.one_way_partitions
            + self.link_cuts
            + self.crashes
            + self.crashes_in_ready
            + self.crash_all
            + self.crashes_in_snapshot
            + self.long_outages
            + self.changing_node_crashes
    }

    /// Adds `other` to these totals (`heal_ticks` keeps the maximum).
    pub fn add(&mut self, other: &RunStats) {
        self.ticks += other.ticks;
        self.heal_ticks = self.heal_ticks.max(other.heal_ticks);
        self.commands_proposed += other.commands_proposed;
        self.commands_refused += other.commands_refused;
        self.commands_chosen += other.commands_chosen;
        self.slots_chosen += other.slots_chosen;
        self.noops_chosen += other.noops_chosen;
        self.leaders += other.leaders;
        self.messages_sent += other.messages_sent;
        self.messages_delivered += other.messages_delivered;
        self.dropped += other.dropped;
        self.dropped_by_partition += other.dropped_by_partition;
        self.dropped_at_down_node += other.dropped_at_down_node;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.partitions += other.partitions;
        self.one_way_partitions += other.one_way_partitions;
        self.link_cuts += other.link_cuts;
        self.crashes += other.crashes;
        self.crashes_in_ready += other.crashes_in_ready;
        self.crash_all += other.crash_all;
        self.restarts += other.restarts;
        self.state_machine_lost += other.state_machine_lost;
        self.state_machine_partial += other.state_machine_partial;
        self.persists += other.persists;
        self.reads_started += other.reads_started;
        self.reads_released += other.reads_released;
        self.reads_served += other.reads_served;
        self.snapshots_taken += other.snapshots_taken;
        self.snapshot_requests += other.snapshot_requests;
        self.snapshots_sent += other.snapshots_sent;
        self.snapshots_delivered += other.snapshots_delivered;
        self.snapshots_stale += other.snapshots_stale;
        self.snapshots_deferred += other.snapshots_deferred;
        self.snapshots_installed += other.snapshots_installed;
        self.snapshots_corrupted += other.snapshots_corrupted;
        self.crashes_in_snapshot += other.crashes_in_snapshot;
        self.restarts_from_snapshot += other.restarts_from_snapshot;
        self.max_compacted = self.max_compacted.max(other.max_compacted);
        self.compacted_promises += other.compacted_promises;
        self.compacted_stepdowns += other.compacted_stepdowns;
        self.long_outages += other.long_outages;
        self.snapshots_installed_not_follower += other.snapshots_installed_not_follower;
        self.behind_compaction_at_heal += other.behind_compaction_at_heal;
        self.snapshots_installed_in_recovery += other.snapshots_installed_in_recovery;
        self.reconfigs_asked += other.reconfigs_asked;
        self.reconfigs_taken += other.reconfigs_taken;
        self.reconfigs_not_leader += other.reconfigs_not_leader;
        self.reconfigs_refused_in_progress += other.reconfigs_refused_in_progress;
        self.reconfigs_refused_other += other.reconfigs_refused_other;
        self.reconfigs_nobody_to_ask += other.reconfigs_nobody_to_ask;
        self.adds += other.adds;
        self.removes += other.removes;
        self.replaces += other.replaces;
        self.leader_removals += other.leader_removals;
        self.reconfigs_chosen += other.reconfigs_chosen;
        self.reconfigs_in_force += other.reconfigs_in_force;
        self.changing_node_crashes += other.changing_node_crashes;
        self.snapshots_installed_by_added += other.snapshots_installed_by_added;
        self.removed_left_behind += other.removed_left_behind;
    }
}

impl fmt::Display for RunStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ticks; commands: {} proposed, {} refused, {} chosen in {} slots ({} no-ops); \
             {} leader elections; messages: {} sent, {} delivered; faults: {} total \
             ({} lost, {} lost to partitions, {} to down nodes, {} duplicated, {} reordered, \
             {} partitions, {} one-way, {} link cuts, {} crashes at random ticks, {} inside a Ready, \
             {} crash-all, {} restarts of which {} lost and {} partly lost the state machine); \
             {} fsyncs; reads: {} started, {} released, {} served; \
             max ticks to recover after the faults: {}",
            self.ticks,
            self.commands_proposed,
            self.commands_refused,
            self.commands_chosen,
            self.slots_chosen,
            self.noops_chosen,
            self.leaders,
            self.messages_sent,
            self.messages_delivered,
            self.faults(),
            self.dropped,
            self.dropped_by_partition,
            self.dropped_at_down_node,
            self.duplicated,
            self.reordered,
            self.partitions,
            self.one_way_partitions,
            self.link_cuts,
            self.crashes,
            self.crashes_in_ready,
            self.crash_all,
            self.restarts,
            self.state_machine_lost,
            self.state_machine_partial,
            self.persists,
            self.reads_started,
            self.reads_released,
            self.reads_served,
            self.heal_ticks,
        )?;
        if self.snapshots_taken + self.long_outages > 0 {
            write!(
                f,
                "; snapshots: {} taken, {} requested, {} sent, {} delivered ({} stale, {} \
                 deferred past a Ready), {} installed, {} restarts from a snapshot, {} crashes \
                 while snapshotting, highest compaction point {}; {} promises beyond a \
                 candidate's compaction point, {} candidates stepped down on one; {} long \
                 outages; {} installed by a leader or candidate; recovery: {} replicas behind \
                 another's compaction point when the faults stopped, {} snapshots installed",
                self.snapshots_taken,
                self.snapshot_requests,
                self.snapshots_sent,
                self.snapshots_delivered,
                self.snapshots_stale,
                self.snapshots_deferred,
                self.snapshots_installed,
                self.restarts_from_snapshot,
                self.crashes_in_snapshot,
                self.max_compacted,
                self.compacted_promises,
                self.compacted_stepdowns,
                self.long_outages,
                self.snapshots_installed_not_follower,
                self.behind_compaction_at_heal,
                self.snapshots_installed_in_recovery,
            )?;
        }
        if self.reconfigs_asked > 0 {
            write!(
                f,
                "; membership changes: {} asked, {} taken ({} adds, {} removes, {} replaces; \
                 {} removed the leader itself), {} refused as not leader, {} while another \
                 was under way, {} otherwise, {} due with nobody to ask; {} chosen, {} in \
                 force; {} crashes of a machine being added or removed; {} snapshots installed \
                 by added machines; {} removed machines left behind at the end",
                self.reconfigs_asked,
                self.reconfigs_taken,
                self.adds,
                self.removes,
                self.replaces,
                self.leader_removals,
                self.reconfigs_not_leader,
                self.reconfigs_refused_in_progress,
                self.reconfigs_refused_other,
                self.reconfigs_nobody_to_ask,
                self.reconfigs_chosen,
                self.reconfigs_in_force,
                self.changing_node_crashes,
                self.snapshots_installed_by_added,
                self.removed_left_behind,
            )?;
        }
        if self.snapshots_corrupted > 0 {
            write!(f, "; {} snapshots CORRUPTED", self.snapshots_corrupted)?;
        }
        Ok(())
    }
}

/// A broken invariant with everything needed to understand and replay it.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The seed of the run (what `SIM_SEED` takes).
    pub seed: u64,
    /// The scenario the run used.
    pub scenario: Scenario,
    /// The tick it was detected at.
    pub tick: u64,
    /// What broke.
    pub error: InvariantError,
    /// The last events before it, oldest first.
    pub trace: Vec<String>,
    /// Every replica's state when it was detected.
    pub state: String,
}

impl Violation {
    /// The command that replays this run alone, for suite test `test_name`.
    pub fn replay_command(&self, test_name: &str) -> String {
        format!(
            "SIM_SEED={} cargo test -p tests --test paxos_sim -- --include-ignored \
             --exact {test_name} --nocapture",
            self.seed
        )
    }

    /// The full report: seed, scenario, invariant, trace, replay command.
    pub fn report(&self, test_name: &str) -> String {
        let mut out = format!(
            "paxos simulation: invariant violated\n  invariant: {}\n  detail:    {}\n  \
             seed:      {}\n  scenario:  {} (tick {})\n  replay:    {}\n  \
             (SIM_TRACE_LEN=<n> keeps more events)\n\n{:?}\n\nreplicas:\n{}\nlast {} events:\n",
            self.error.invariant,
            self.error.detail,
            self.seed,
            self.scenario.name,
            self.tick,
            self.replay_command(test_name),
            self.scenario,
            self.state,
            self.trace.len(),
        );
        for line in &self.trace {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
        out.push_str(&format!("\nreplay: {}\n", self.replay_command(test_name)));
        out
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} of {}: {}",
            self.seed, self.scenario.name, self.error
        )
    }
}

/// Runs `scenario` with `seed` and checks every invariant throughout.
pub fn run(scenario: &Scenario, seed: u64) -> Result<RunStats, Box<Violation>> {
    run_traced(scenario, seed, DEFAULT_TRACE_LEN)
}

/// [`run`], keeping the last `trace_len` events for the report.
pub fn run_traced(
    scenario: &Scenario,
    seed: u64,
    trace_len: usize,
) -> Result<RunStats, Box<Violation>> {
    let mut sim = Sim::new(scenario.clone(), seed, trace_len);
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| sim.run_to_end()));
    let error = match outcome {
        Ok(Ok(())) => return Ok(sim.final_stats()),
        Ok(Err(error)) => error,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "(non-string panic payload)".to_string());
            InvariantError::new(
                Invariant::CorePanic,
                format!("panic while stepping the cluster: {message}"),
            )
        }
    };
    Err(Box::new(Violation {
        seed,
        scenario: sim.scenario.clone(),
        tick: sim.now,
        error,
        trace: sim.trace.lines(),
        state: sim.describe(),
    }))
}

/// Replaces the core settings of `scenario` with values drawn from wide
/// ranges (election timeouts stay well above a message round trip with a
/// disk write, or no leader could ever win).
fn draw_core_settings(scenario: &mut Scenario, rng: &mut SimRng) {
    let small = |rng: &mut SimRng, low: u64, high: u64| {
        u32::try_from(rng.between(low, high)).expect("small setting")
    };
    let bound = |rng: &mut SimRng, low: u64, high: u64| {
        usize::try_from(rng.between(low, high)).expect("small setting")
    };
    let heartbeat = small(rng, 1, 4);
    let round_trip = scenario.delay_max_ticks * 2 + scenario.disk_delay_max_ticks;
    let floor = u64::from(heartbeat * 2 + 1).max(round_trip + 1);
    scenario.heartbeat_interval_ticks = heartbeat;
    scenario.election_timeout_ticks_min = small(rng, floor, floor + 10);
    scenario.election_timeout_ticks_max = scenario.election_timeout_ticks_min + small(rng, 3, 15);
    // At least two commands per slot and two slots in flight, so that the
    // backlog clients queue during the faults drains well within the
    // liveness bound.
    scenario.batch_commands_max = bound(rng, 2, 8);
    scenario.inflight_slots_max = rng.between(2, 16);
    // Catch-up moves `message_slots_max` slots per round trip: below ~8, a
    // replica that lost its state machine needs thousands of ticks to
    // replay a long log, beyond any sensible liveness bound.
    scenario.message_slots_max = bound(rng, 8, 32);
    scenario.pending_commands_max = bound(rng, 4, 128);
    // α from 1 (no pipelining beyond the chosen prefix) to above every
    // pipeline depth drawn.
    scenario.reconfig_window_slots = rng.between(1, 24);
}

/// Where in carrying out a `Ready` a replica crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CrashPoint {
    /// Right after `ready()`: nothing sent, nothing persisted.
    BeforeSend,
    /// `messages` sent, nothing persisted.
    AfterSend,
    /// A strict prefix of `persist` made durable.
    MidPersist,
    /// `persist` durable, `persisted_messages` not sent.
    AfterPersist,
    /// `persisted_messages` sent, nothing applied.
    AfterPersistedSend,
    /// Part of `chosen` applied.
    MidApply,
    /// Everything done but `advance`.
    BeforeAdvance,
}

const CRASH_POINTS: [CrashPoint; 7] = [
    CrashPoint::BeforeSend,
    CrashPoint::AfterSend,
    CrashPoint::MidPersist,
    CrashPoint::AfterPersist,
    CrashPoint::AfterPersistedSend,
    CrashPoint::MidApply,
    CrashPoint::BeforeAdvance,
];

impl CrashPoint {
    fn describe(self) -> &'static str {
        match self {
            CrashPoint::BeforeSend => "after ready(), before sending",
            CrashPoint::AfterSend => "after sending, before persisting",
            CrashPoint::MidPersist => "in the middle of the persist batch",
            CrashPoint::AfterPersist => "after persisting, before sending persisted messages",
            CrashPoint::AfterPersistedSend => "after sending persisted messages, before applying",
            CrashPoint::MidApply => "in the middle of applying",
            CrashPoint::BeforeAdvance => "before advance()",
        }
    }
}

/// A `Ready` taken whose persist has not completed yet.
#[derive(Debug)]
struct InFlight {
    persist: Vec<PersistOp>,
    persisted_messages: Vec<Envelope>,
    chosen: Vec<Entry>,
    reads: Vec<ReadReady>,
    crash: Option<CrashPoint>,
}

/// One simulated machine: the replica (when running), its durable acceptor
/// store, its state machine and its durable snapshot.
#[derive(Debug)]
struct Node {
    replica: Option<Replica>,
    /// Bumped at every crash; stale disk completions are ignored.
    incarnation: u64,
    store: MemAcceptorStore,
    /// The state machine: every slot applied, up to `sm.applied_upto()`.
    sm: StateMachine,
    /// The newest durable snapshot (survives crashes; slot 0: none).
    snapshot: Snapshot,
    /// Take the next snapshot once the state machine applied this far.
    snapshot_due: Slot,
    /// A snapshot that arrived while a `Ready` was in flight, with its
    /// sender: installed once that `Ready` is carried out (the real driver
    /// handles inputs between `Ready`s, never in the middle of one).
    pending_snapshot: Option<(NodeId, Snapshot)>,
    /// When this incarnation last sent its snapshot to each peer.
    snapshot_sent_at: BTreeMap<NodeId, u64>,
    /// Down for a long outage (not a short crash).
    long_down: bool,
    in_flight: Option<InFlight>,
    /// When down: the tick to restart at.
    down_until: u64,
    /// Released reads waiting for the state machine to reach their slot.
    waiting_reads: Vec<ReadReady>,
    /// This incarnation handed out chosen entries up to here.
    emitted_upto: Slot,
    /// The durability check covered this incarnation's log up to here.
    checked_upto: Slot,
    last_role: Option<(Role, Ballot)>,
}

/// A read started and not yet released.
#[derive(Debug, Clone, Copy)]
struct StartedRead {
    node: NodeId,
    incarnation: u64,
    /// Highest slot handed out as chosen anywhere when it started.
    required: Slot,
}

/// The recovery phase after the faults stop.
#[derive(Debug)]
struct Heal {
    started: u64,
    /// Highest slot reported chosen when the faults stopped: every member
    /// of the latest configuration must apply at least this far.
    target: Slot,
    /// Fresh commands proposed since.
    fresh: Vec<u64>,
    last_fresh_at: Option<u64>,
    /// Where the first fresh command was chosen.
    fresh_slot: Option<Slot>,
}

/// The whole simulated cluster.
struct Sim {
    scenario: Scenario,
    now: u64,
    /// Every machine: the genesis members, then the spares.
    machines: Vec<NodeId>,
    /// The genesis configuration (`Config::members` of every machine).
    genesis: Vec<NodeId>,
    nodes: BTreeMap<NodeId, Node>,
    config_seed: u64,
    net_rng: SimRng,
    fault_rng: SimRng,
    client_rng: SimRng,
    disk_rng: SimRng,
    /// Snapshot timing and compaction points (forked last, so that a
    /// scenario without snapshots replays exactly as before they existed).
    snap_rng: SimRng,
    /// K: a snapshot every this many applied slots (0: never).
    snapshot_every: u64,
    /// Membership changes and the crashes around them (forked after
    /// `snap_rng`, so that a scenario without changes replays exactly as
    /// before they existed).
    member_rng: SimRng,
    /// Crashes of machines being added or removed, due at a tick.
    changing_crashes: Vec<(u64, NodeId)>,
    queue: EventQueue,
    links: Links,
    faults_active: bool,
    checker: Checker,
    trace: Trace,
    stats: RunStats,
    next_command: u64,
    next_read: u64,
    reads: BTreeMap<u64, StartedRead>,
    leader_ballots: BTreeSet<Ballot>,
    /// Promises that compacted the first open slot of the candidate or
    /// leader of their ballot that received them, by (receiver, its
    /// incarnation, ballot): it must never lead at that ballot in that
    /// incarnation afterwards. Forgotten when the receiver crashes.
    compacted_promise_ballots: BTreeMap<(NodeId, u64, Ballot), CompactedPromise>,
    heal: Option<Heal>,
}

/// A promise that compacted the first open slot of the candidate or leader
/// that received it.
#[derive(Debug, Clone, Copy)]
struct CompactedPromise {
    /// The receiver's role when it arrived.
    role: Role,
    from: NodeId,
    first_slot: Slot,
    compacted_upto: Slot,
    tick: u64,
}

type Step = Result<(), InvariantError>;

impl Sim {
    fn new(mut scenario: Scenario, seed: u64, trace_len: usize) -> Sim {
        let mut root = SimRng::new(mix(seed ^ hash_name(scenario.name)));
        if scenario.vary_core_settings {
            draw_core_settings(&mut scenario, &mut root.fork());
        }
        let genesis: Vec<NodeId> = (1..=scenario.replicas).map(NodeId).collect();
        let machines: Vec<NodeId> = (1..=scenario.replicas + scenario.spares)
            .map(NodeId)
            .collect();
        let nodes = machines
            .iter()
            .map(|&id| {
                (
                    id,
                    Node {
                        replica: None,
                        incarnation: 0,
                        store: MemAcceptorStore::new(),
                        sm: StateMachine::default(),
                        snapshot: Snapshot::default(),
                        snapshot_due: 0,
                        pending_snapshot: None,
                        snapshot_sent_at: BTreeMap::new(),
                        long_down: false,
                        in_flight: None,
                        down_until: 0,
                        waiting_reads: Vec::new(),
                        emitted_upto: 0,
                        checked_upto: 0,
                        last_role: None,
                    },
                )
            })
            .collect();
        let config_seed = root.next_u64();
        let net_rng = root.fork();
        let fault_rng = root.fork();
        let client_rng = root.fork();
        let disk_rng = root.fork();
        let mut snap_rng = root.fork();
        let snapshot_every = scenario
            .snapshot_every
            .map_or(0, |range| snap_rng.in_range(range));
        let member_rng = root.fork();
        let mut nodes: BTreeMap<NodeId, Node> = nodes;
        for node in nodes.values_mut() {
            node.snapshot_due = snapshot_every;
        }
        let checker = Checker::for_group(&genesis, scenario.reconfig_window_slots);
        Sim {
            now: 0,
            machines,
            genesis,
            nodes,
            config_seed,
            net_rng,
            fault_rng,
            client_rng,
            disk_rng,
            snap_rng,
            snapshot_every,
            member_rng,
            changing_crashes: Vec::new(),
            queue: EventQueue::default(),
            links: Links::default(),
            faults_active: true,
            checker,
            trace: Trace::new(trace_len),
            stats: RunStats::default(),
            next_command: 1,
            next_read: 1,
            reads: BTreeMap::new(),
            leader_ballots: BTreeSet::new(),
            compacted_promise_ballots: BTreeMap::new(),
            heal: None,
            scenario,
        }
    }

    /// Faults for `fault_ticks`, then recovery until the liveness check
    /// passes (or fails), then the final durability check.
    fn run_to_end(&mut self) -> Step {
        for id in self.machines.clone() {
            self.start_replica(id)?;
        }
        self.trace.push(0, TraceEvent::Phase("faults start"));
        for _ in 0..self.scenario.fault_ticks {
            self.tick()?;
        }
        self.begin_heal()?;
        loop {
            self.tick()?;
            if self.liveness_step()? {
                break;
            }
        }
        self.final_checks()
    }

    fn final_stats(&self) -> RunStats {
        let mut stats = self.stats.clone();
        stats.ticks = self.now;
        stats.heal_ticks = self.heal.as_ref().map_or(0, |h| self.now - h.started);
        stats.commands_chosen = self.checker.chosen_commands() as u64;
        stats.slots_chosen = self.checker.chosen_slots() as u64;
        stats.noops_chosen = self
            .checker
            .chosen_entries()
            .filter(|(_, v)| **v == Value::Noop)
            .count() as u64;
        stats.leaders = self.leader_ballots.len() as u64;
        let max_chosen = self.checker.max_chosen();
        let window = self.scenario.reconfig_window_slots;
        for (slot, value) in self.checker.chosen_entries() {
            if matches!(value, Value::Reconfigure(_)) {
                stats.reconfigs_chosen += 1;
                if slot + window <= max_chosen {
                    stats.reconfigs_in_force += 1;
                }
            }
        }
        stats
    }

    // ----- one tick -----

    fn tick(&mut self) -> Step {
        self.now += 1;
        if self.faults_active {
            self.inject_faults();
            self.due_changing_crashes();
        }
        for id in self.machines.clone() {
            let node = &self.nodes[&id];
            if node.replica.is_none() && node.down_until <= self.now {
                self.restart(id)?;
            }
        }
        self.client_calls()?;
        self.reconfig_calls()?;
        // Tick the replicas starting from a random one.
        let start = self.fault_rng.index(self.machines.len());
        let order: Vec<NodeId> = self.machines[start..]
            .iter()
            .chain(&self.machines[..start])
            .copied()
            .collect();
        for id in order {
            if let Some(replica) = self.replica(id) {
                replica.tick();
                self.observe(id)?;
                self.pump(id)?;
            }
        }
        self.random_snapshots()?;
        while let Some(event) = self.queue.pop_due(self.now) {
            match event {
                Event::Deliver(envelope) => self.deliver(envelope)?,
                Event::DiskDone { node, incarnation } => self.disk_done(node, incarnation)?,
                Event::Snapshot { from, to, snapshot } => {
                    self.deliver_snapshot(from, to, snapshot)?;
                }
            }
        }
        self.check_logs()
    }

    fn replica(&mut self, id: NodeId) -> Option<&mut Replica> {
        self.nodes.get_mut(&id)?.replica.as_mut()
    }

    fn inject_faults(&mut self) {
        for id in self.links.end_isolations(self.now) {
            self.trace.push(
                self.now,
                TraceEvent::Network(format!("long isolation of {id} ends")),
            );
        }
        self.long_outage();
        let scenario = &self.scenario;
        if self.links.is_split() {
            if self.fault_rng.chance(scenario.heal_rate) {
                self.links.heal();
                self.trace
                    .push(self.now, TraceEvent::Network("healed".to_string()));
            }
        } else if self.fault_rng.chance(scenario.partition_rate) {
            let description = if self.fault_rng.chance(scenario.link_cut_fraction) {
                self.stats.link_cuts += 1;
                self.links.cut_link(&self.machines, &mut self.fault_rng)
            } else if self.fault_rng.chance(scenario.one_way_fraction) {
                self.stats.one_way_partitions += 1;
                self.links.split(&self.machines, true, &mut self.fault_rng)
            } else {
                self.stats.partitions += 1;
                self.links.split(&self.machines, false, &mut self.fault_rng)
            };
            self.trace.push(self.now, TraceEvent::Network(description));
        }
        let up = self.running();
        if up.is_empty() {
            return;
        }
        if self.fault_rng.chance(self.scenario.crash_all_rate) {
            self.stats.crash_all += 1;
            for id in up {
                self.crash(id, "crash of every replica at once");
            }
        } else if self.fault_rng.chance(self.scenario.crash_rate) {
            let id = up[self.fault_rng.index(up.len())];
            self.stats.crashes += 1;
            self.crash(id, "at a random tick");
        }
    }

    /// The machines running now, in id order.
    fn running(&self) -> Vec<NodeId> {
        self.machines
            .iter()
            .copied()
            .filter(|id| self.nodes[id].replica.is_some())
            .collect()
    }

    // ----- replicas: start, crash, restart -----

    fn start_replica(&mut self, id: NodeId) -> Step {
        // As the real driver: the snapshot's membership knows the changes
        // chosen in the slots it replaced.
        let snapshot = &self.nodes[&id].snapshot;
        let membership = (snapshot.slot() > 0).then(|| self.snapshot_membership(snapshot));
        let scenario = &self.scenario;
        let node = self.nodes.get_mut(&id).expect("member");
        // Every machine, spares included, has the genesis configuration:
        // later ones come from the log and from snapshots.
        let mut config = Config::new(id, self.genesis.clone());
        config.rng_seed = mix(self.config_seed ^ mix(id.0) ^ mix(node.incarnation << 8));
        config.election_timeout_ticks_min = scenario.election_timeout_ticks_min;
        config.election_timeout_ticks_max = scenario.election_timeout_ticks_max;
        config.heartbeat_interval_ticks = scenario.heartbeat_interval_ticks;
        config.batch_commands_max = scenario.batch_commands_max;
        config.inflight_slots_max = scenario.inflight_slots_max;
        config.message_slots_max = scenario.message_slots_max;
        config.pending_commands_max = scenario.pending_commands_max;
        config.reconfig_window_slots = scenario.reconfig_window_slots;
        // As the real driver at start: slots covered by the durable snapshot
        // are compacted out of the acceptor store before the core starts,
        // so a stale accept there can never be taken for the chosen value
        // (a crash may fall between saving a received snapshot and
        // compacting below it).
        let snapshot_slot = node.snapshot.slot();
        node.store
            .compact(snapshot_slot)
            .expect("MemAcceptorStore::compact cannot fail");
        let recovered = node
            .store
            .recover()
            .expect("MemAcceptorStore::recover cannot fail");
        let applied_upto = node.sm.applied_upto();
        // The core cannot start with its log compacted beyond its state
        // machine (it would have neither the slots nor their effects).
        Checker::check_compaction(
            id,
            Some(recovered.compacted_upto + 1),
            applied_upto,
            node.snapshot.slot(),
            recovered.compacted_upto,
        )?;
        let replica = Replica::recover(config, recovered, applied_upto, membership)
            .expect("the simulation's configuration is valid");
        node.replica = Some(replica);
        node.emitted_upto = applied_upto;
        // Re-check the whole log this incarnation starts from.
        node.checked_upto = 0;
        node.last_role = None;
        self.observe(id)?;
        self.pump(id)
    }

    /// The replica loses everything not in its store; its state machine
    /// keeps what it applied (restart decides how much of it survived).
    fn crash(&mut self, id: NodeId, point: &'static str) {
        let down_ticks_max = if self.fault_rng.chance(self.scenario.quick_restart_fraction) {
            5
        } else {
            self.scenario.down_ticks_max.max(1)
        };
        let down_ticks = self.fault_rng.between(1, down_ticks_max);
        self.crash_for(id, point, down_ticks);
    }

    /// [`Sim::crash`] for exactly `down_ticks`.
    fn crash_for(&mut self, id: NodeId, point: &'static str, down_ticks: u64) {
        let node = self.nodes.get_mut(&id).expect("member");
        node.replica = None;
        node.in_flight = None;
        node.incarnation += 1;
        node.waiting_reads.clear();
        node.pending_snapshot = None;
        node.snapshot_sent_at.clear();
        node.long_down = false;
        node.down_until = self.now + down_ticks;
        node.last_role = None;
        self.compacted_promise_ballots
            .retain(|&(node, _, _), _| node != id);
        self.trace
            .push(self.now, TraceEvent::Crash { node: id, point });
    }

    /// Rebuilds the replica from its store and from what its state machine
    /// kept: everything it applied, nothing (lost), or a prefix (flushed
    /// lazily). A state machine never goes below its durable snapshot: a
    /// lost one is restored from the snapshot (as the real driver does
    /// before the core starts), a partial one keeps at least that much.
    fn restart(&mut self, id: NodeId) -> Step {
        let applied_before = self.nodes[&id].sm.applied_upto();
        let snapshot_slot = self.nodes[&id].snapshot.slot();
        let lost = self.fault_rng.chance(self.scenario.state_machine_lost_rate);
        let applied_upto = if lost {
            self.stats.state_machine_lost += 1;
            snapshot_slot
        } else if self
            .fault_rng
            .chance(self.scenario.state_machine_partial_rate)
        {
            self.stats.state_machine_partial += 1;
            self.fault_rng
                .between(snapshot_slot.min(applied_before), applied_before)
        } else {
            applied_before
        };
        self.stats.restarts += 1;
        let node = self.nodes.get_mut(&id).expect("member");
        node.long_down = false;
        if lost {
            // Restored from the durable snapshot alone.
            node.sm.restore(&node.snapshot);
            if snapshot_slot > 0 {
                self.stats.restarts_from_snapshot += 1;
            }
        } else {
            node.sm.truncate(applied_upto);
        }
        // As the real driver: the next snapshot is due K slots after the
        // newest durable one.
        if self.snapshot_every > 0 {
            node.snapshot_due = snapshot_slot + self.snapshot_every;
        }
        let disk = node.store.state();
        self.trace.push(
            self.now,
            TraceEvent::Restart {
                node: id,
                applied_upto,
                applied_before,
                promised: disk.promised,
                accepted: disk.accepted.len(),
                chosen: disk.chosen.len(),
                snapshot: snapshot_slot,
                compacted: disk.compacted_upto,
            },
        );
        // What the state machine restarts with must be the chosen prefix
        // (it is the snapshot itself when the rest was lost).
        let node = &self.nodes[&id];
        let what = if lost {
            "state machine restored from its durable snapshot after a restart"
        } else {
            "state machine kept across a restart"
        };
        self.checker
            .check_state_machine(id, what, node.sm.applied_upto(), |slot| node.sm.value(slot))?;
        self.start_replica(id)
    }

    /// Records role changes and every ballot a replica led with, and
    /// checks that no replica leads at a ballot for which, in this
    /// incarnation, it received a promise that compacted its first open
    /// slot (**compaction**: it cannot know the values of those slots).
    fn observe(&mut self, id: NodeId) -> Step {
        let Some(node) = self.nodes.get_mut(&id) else {
            return Ok(());
        };
        let Some(replica) = node.replica.as_ref() else {
            return Ok(());
        };
        let now = (replica.role(), replica.ballot());
        if now.0 == Role::Leader {
            if let Some(promise) =
                self.compacted_promise_ballots
                    .get(&(id, node.incarnation, now.1))
            {
                let CompactedPromise {
                    role,
                    from,
                    first_slot,
                    compacted_upto,
                    tick,
                } = *promise;
                return Err(InvariantError::new(
                    Invariant::Compaction,
                    format!(
                        "{id} leads at ballot {} after, as {role:?} of that ballot at tick \
                         {tick}, it received a promise from {from} that compacted slots up to \
                         {compacted_upto}, at or above its first open slot {first_slot}: it \
                         cannot know their values",
                        now.1
                    ),
                ));
            }
        }
        if node.last_role == Some(now) {
            return Ok(());
        }
        let was = node.last_role.map(|(role, _)| role);
        node.last_role = Some(now);
        if now.0 == Role::Leader {
            self.leader_ballots.insert(now.1);
        }
        if was.is_some() || now.0 != Role::Follower {
            self.trace.push(
                self.now,
                TraceEvent::Role {
                    node: id,
                    role: now.0,
                    ballot: now.1,
                },
            );
        }
        Ok(())
    }

    // ----- carrying out Ready -----

    /// Takes the replica's `Ready` if it has one and none is in flight:
    /// checks what it hands out, sends its messages, starts its persist.
    fn pump(&mut self, id: NodeId) -> Step {
        let now = self.now;
        let node = self.nodes.get_mut(&id).expect("member");
        let Some(replica) = node.replica.as_mut() else {
            return Ok(());
        };
        if node.in_flight.is_some() || !replica.has_ready() {
            return Ok(());
        }
        let ready = replica.ready();
        node.emitted_upto = self
            .checker
            .on_emitted(id, now, node.emitted_upto, &ready.chosen)?;
        // Everything up to `chosen_upto` is now reported (handed out now
        // or before, or restored from a state machine or snapshot that was
        // checked against the chosen log), so the checker knows the
        // configurations of the replica's window.
        self.checker
            .check_configuration(id, replica.chosen_upto(), replica.membership())?;
        for read in &ready.reads {
            let Some(started) = self.reads.remove(&read.read_id) else {
                return Err(InvariantError::new(
                    Invariant::ReadLinearizability,
                    format!(
                        "{id} released read r{} that was never started, or twice",
                        read.read_id
                    ),
                ));
            };
            if started.node != id || started.incarnation != node.incarnation {
                return Err(InvariantError::new(
                    Invariant::ReadLinearizability,
                    format!(
                        "{id} (incarnation {}) released read r{} started at {} (incarnation {})",
                        node.incarnation, read.read_id, started.node, started.incarnation
                    ),
                ));
            }
            Checker::check_read(id, read.read_id, started.required, read.slot)?;
            self.stats.reads_released += 1;
        }
        // An election is under way if the replica promises (persists a
        // promise or answers a Prepare) or campaigns.
        let election = ready
            .persist
            .iter()
            .any(|op| matches!(op, PersistOp::Promise { .. }))
            || ready
                .messages
                .iter()
                .chain(&ready.persisted_messages)
                .any(|e| matches!(e.message, Message::Promise { .. } | Message::Prepare { .. }));
        let crash_rate = if election {
            self.scenario
                .crash_in_ready_rate
                .max(self.scenario.crash_in_election_rate)
        } else {
            self.scenario.crash_in_ready_rate
        };
        let crash = if self.faults_active && self.fault_rng.chance(crash_rate) {
            Some(CRASH_POINTS[self.fault_rng.index(CRASH_POINTS.len())])
        } else {
            None
        };
        let disk_ticks = self.disk_rng.between(0, self.scenario.disk_delay_max_ticks);
        let chosen = ready
            .chosen
            .iter()
            .take(6)
            .map(|e| format!("{}={}", e.slot, short_value(&e.value)))
            .collect::<Vec<_>>()
            .join(" ")
            + if ready.chosen.len() > 6 { " ..." } else { "" };
        self.trace.push(
            now,
            TraceEvent::Ready {
                node: id,
                messages: ready.messages.len(),
                persist: ready.persist.len(),
                persisted_messages: ready.persisted_messages.len(),
                chosen,
                reads: ready.reads.len(),
                snapshot_requests: ready.snapshot_requests.len(),
                disk_ticks,
                crash_point: crash.map(CrashPoint::describe),
            },
        );
        if crash == Some(CrashPoint::BeforeSend) {
            self.crash_in_ready(id, CrashPoint::BeforeSend);
            return Ok(());
        }
        for envelope in ready.messages {
            self.send(envelope);
        }
        // Snapshots go out with the messages: they do not depend on this
        // `Ready`'s persist (the snapshot sent is the newest durable one).
        for peer in ready.snapshot_requests {
            self.stats.snapshot_requests += 1;
            self.send_snapshot(id, peer);
        }
        if crash == Some(CrashPoint::AfterSend) {
            self.crash_in_ready(id, CrashPoint::AfterSend);
            return Ok(());
        }
        let node = self.nodes.get_mut(&id).expect("member");
        node.in_flight = Some(InFlight {
            persist: ready.persist,
            persisted_messages: ready.persisted_messages,
            chosen: ready.chosen,
            reads: ready.reads,
            crash,
        });
        let incarnation = node.incarnation;
        let order = self.disk_rng.next_u64();
        self.queue.schedule(
            now + disk_ticks,
            order,
            Event::DiskDone {
                node: id,
                incarnation,
            },
        );
        Ok(())
    }

    fn crash_in_ready(&mut self, id: NodeId, point: CrashPoint) {
        self.stats.crashes_in_ready += 1;
        self.crash(id, point.describe());
    }

    /// The persist of the in-flight `Ready` completes: the rest of the
    /// recipe (send persisted, apply, reads, advance), or a crash in it.
    fn disk_done(&mut self, id: NodeId, incarnation: u64) -> Step {
        let node = self.nodes.get_mut(&id).expect("member");
        if node.incarnation != incarnation || node.replica.is_none() {
            return Ok(());
        }
        let Some(flight) = node.in_flight.take() else {
            return Ok(());
        };
        let crash = flight.crash;
        if crash == Some(CrashPoint::MidPersist) && !flight.persist.is_empty() {
            let len = u64::try_from(flight.persist.len()).expect("usize fits in u64");
            let keep = usize::try_from(self.disk_rng.below(len)).expect("below a usize");
            if keep > 0 {
                node.store
                    .persist(&flight.persist[..keep])
                    .expect("MemAcceptorStore::persist cannot fail");
            }
            self.trace.push(
                self.now,
                TraceEvent::Persisted {
                    node: id,
                    ops: keep,
                },
            );
            self.crash_in_ready(id, CrashPoint::MidPersist);
            return Ok(());
        }
        if !flight.persist.is_empty() {
            node.store
                .persist(&flight.persist)
                .expect("MemAcceptorStore::persist cannot fail");
            self.stats.persists += 1;
        }
        if crash == Some(CrashPoint::AfterPersist) {
            self.crash_in_ready(id, CrashPoint::AfterPersist);
            return Ok(());
        }
        for envelope in flight.persisted_messages {
            self.send(envelope);
        }
        if crash == Some(CrashPoint::AfterPersistedSend) {
            self.crash_in_ready(id, CrashPoint::AfterPersistedSend);
            return Ok(());
        }
        let crash_at = match crash {
            Some(CrashPoint::MidApply) if !flight.chosen.is_empty() => {
                Some(self.disk_rng.index(flight.chosen.len()))
            }
            _ => None,
        };
        let node = self.nodes.get_mut(&id).expect("member");
        for (i, entry) in flight.chosen.into_iter().enumerate() {
            if crash_at == Some(i) {
                self.crash_in_ready(id, CrashPoint::MidApply);
                return Ok(());
            }
            if entry.slot != node.sm.applied_upto() + 1 {
                return Err(InvariantError::new(
                    Invariant::Contiguity,
                    format!(
                        "{id} applies slot {} after slot {}",
                        entry.slot,
                        node.sm.applied_upto()
                    ),
                ));
            }
            node.sm.apply(entry.value);
        }
        node.waiting_reads.extend(flight.reads);
        self.serve_reads(id);
        if matches!(
            crash,
            Some(CrashPoint::BeforeAdvance | CrashPoint::MidApply)
        ) {
            self.crash_in_ready(id, CrashPoint::BeforeAdvance);
            return Ok(());
        }
        if let Some(replica) = self.replica(id) {
            replica.advance();
        }
        self.observe(id)?;
        // Between `Ready`s, as the real driver: a snapshot that arrived
        // meanwhile is installed, and one is taken if due.
        if let Some((from, snapshot)) = self
            .nodes
            .get_mut(&id)
            .and_then(|n| n.pending_snapshot.take())
        {
            self.install_snapshot(id, from, snapshot)?;
        }
        if self.nodes[&id].replica.is_some() {
            self.maybe_take_snapshot(id, false)?;
        }
        self.pump(id)
    }

    /// Serves the released reads of `id` whose slot its state machine
    /// reached.
    fn serve_reads(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("member");
        let applied = node.sm.applied_upto();
        let mut served = Vec::new();
        node.waiting_reads.retain(|read| {
            let ready = read.slot <= applied;
            if ready {
                served.push(*read);
            }
            !ready
        });
        for read in served {
            self.stats.reads_served += 1;
            self.trace.push(
                self.now,
                TraceEvent::ReadServed {
                    node: id,
                    read_id: read.read_id,
                    slot: read.slot,
                },
            );
        }
    }

    // ----- network -----

    fn send(&mut self, envelope: Envelope) {
        self.stats.messages_sent += 1;
        let (from, to) = (envelope.from, envelope.to);
        let summary = MsgSummary::of(&envelope.message);
        self.transmit(from, to, summary, Event::Deliver(envelope));
    }

    /// Puts a message (or a snapshot) on the wire, through every network
    /// fault: partitions, loss, duplication, delay and reordering.
    fn transmit(&mut self, from: NodeId, to: NodeId, summary: MsgSummary, event: Event) {
        let scenario = &self.scenario;
        if self.links.is_cut(from, to) {
            self.stats.dropped_by_partition += 1;
            self.trace_drop(from, to, summary, "partition");
            return;
        }
        if self.faults_active && self.net_rng.chance(scenario.drop_rate) {
            self.stats.dropped += 1;
            self.trace_drop(from, to, summary, "loss");
            return;
        }
        let copies = if self.faults_active && self.net_rng.chance(scenario.duplicate_rate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        if copies == 2 {
            self.schedule_delivery(event.clone());
        }
        self.schedule_delivery(event);
    }

    /// Puts an event on the wire: a random delay, sometimes a long one.
    fn schedule_delivery(&mut self, event: Event) {
        let scenario = &self.scenario;
        let mut delay = self.net_rng.between(0, scenario.delay_max_ticks);
        if self.faults_active && self.net_rng.chance(scenario.reorder_rate) {
            self.stats.reordered += 1;
            delay += self
                .net_rng
                .between(1, scenario.reorder_delay_max_ticks.max(1));
        }
        let order = self.net_rng.next_u64();
        self.queue.schedule(self.now + delay, order, event);
    }

    fn trace_drop(&mut self, from: NodeId, to: NodeId, msg: MsgSummary, why: &'static str) {
        self.trace
            .push(self.now, TraceEvent::Drop { from, to, msg, why });
    }

    /// Whether what `from` sent `to` (summarised by `summary`) is lost on
    /// arrival: the link is cut by now, or `to` is down. Counts and traces
    /// the loss.
    fn dropped_on_arrival(&mut self, from: NodeId, to: NodeId, summary: MsgSummary) -> bool {
        let why = if self.links.is_cut(from, to) {
            self.stats.dropped_by_partition += 1;
            "partition"
        } else if self.nodes.get(&to).is_none_or(|n| n.replica.is_none()) {
            self.stats.dropped_at_down_node += 1;
            "receiver down"
        } else {
            return false;
        };
        self.trace_drop(from, to, summary, why);
        true
    }

    fn deliver(&mut self, mut envelope: Envelope) -> Step {
        let (from, to) = (envelope.from, envelope.to);
        if self.dropped_on_arrival(from, to, MsgSummary::of(&envelope.message)) {
            return Ok(());
        }
        if self.scenario.corruption == Some(Corruption::ForgeAcceptValues) {
            if let Message::Accept { entries, .. } = &mut envelope.message {
                for entry in entries.iter_mut() {
                    entry.value = Value::Commands(vec![command(FORGED_COMMAND)]);
                }
                self.trace.push(
                    self.now,
                    TraceEvent::Forged {
                        to,
                        msg: MsgSummary::of(&envelope.message),
                    },
                );
            }
        }
        self.stats.messages_delivered += 1;
        self.trace.push(
            self.now,
            TraceEvent::Deliver {
                from: envelope.from,
                to,
                msg: MsgSummary::of(&envelope.message),
            },
        );
        // A promise, for the ballot of a candidate (or of a leader asking a
        // new configuration), from beyond its first open slot: it must step
        // down (and ask to catch up) instead of leading on it, now or later
        // (`observe` checks).
        let compacted_promise = match &envelope.message {
            Message::Promise {
                ballot,
                first_slot,
                compacted_upto,
                ..
            } if compacted_upto >= first_slot => self.nodes[&to]
                .replica
                .as_ref()
                .filter(|r| r.role() != Role::Follower && r.ballot() == *ballot)
                .map(|r| {
                    let promise = CompactedPromise {
                        role: r.role(),
                        from,
                        first_slot: *first_slot,
                        compacted_upto: *compacted_upto,
                        tick: self.now,
                    };
                    (*ballot, promise)
                }),
            _ => None,
        };
        if let Some(replica) = self.replica(to) {
            replica.step(envelope);
        }
        if let Some((ballot, promise)) = compacted_promise {
            let stepped_down = self.nodes[&to]
                .replica
                .as_ref()
                .is_some_and(|r| r.role() == Role::Follower);
            if promise.role == Role::Candidate {
                self.stats.compacted_promises += 1;
                if stepped_down {
                    self.stats.compacted_stepdowns += 1;
                }
            }
            if stepped_down {
                self.trace.push(
                    self.now,
                    TraceEvent::CompactedStepDown {
                        node: to,
                        role: promise.role,
                        from,
                        ballot,
                        first_slot: promise.first_slot,
                        compacted_upto: promise.compacted_upto,
                    },
                );
            }
            let incarnation = self.nodes[&to].incarnation;
            self.compacted_promise_ballots
                .entry((to, incarnation, ballot))
                .or_insert(promise);
        }
        self.observe(to)?;
        self.pump(to)
    }

    // ----- clients -----

    /// A replica for a client's (or the operator's) call: one that believes
    /// it leads (there may be several, some stale), or, with probability
    /// `misdirect_rate` or when none does, any running replica; `None` if
    /// none runs. The draws come from the generator `rng` picks out.
    fn pick_target(&mut self, rng: fn(&mut Sim) -> &mut SimRng) -> Option<NodeId> {
        let up = self.running();
        if up.is_empty() {
            return None;
        }
        let leaders: Vec<NodeId> = up
            .iter()
            .copied()
            .filter(|id| {
                self.nodes[id]
                    .replica
                    .as_ref()
                    .is_some_and(|r| r.role() == Role::Leader)
            })
            .collect();
        let misdirect_rate = self.scenario.misdirect_rate;
        let rng = rng(self);
        let pool = if leaders.is_empty() || rng.chance(misdirect_rate) {
            up
        } else {
            leaders
        };
        Some(pool[rng.index(pool.len())])
    }

    /// Client load: bursts of new commands while the faults last (after
    /// them, only the liveness check proposes, so that recovery time is not
    /// a backlog's drain time), and reads throughout.
    fn client_calls(&mut self) -> Step {
        if self.faults_active && self.client_rng.chance(self.scenario.propose_rate) {
            let burst = self
                .client_rng
                .between(1, self.scenario.propose_burst_max.max(1));
            if let Some(target) = self.pick_target(|sim| &mut sim.client_rng) {
                for _ in 0..burst {
                    let id = self.next_command;
                    self.next_command += 1;
                    self.propose(target, id)?;
                }
                self.pump(target)?;
            }
        }
        if self.client_rng.chance(self.scenario.read_rate) {
            if let Some(target) = self.pick_target(|sim| &mut sim.client_rng) {
                self.read_index(target)?;
                self.pump(target)?;
            }
        }
        Ok(())
    }

    /// Proposes command `id` at `target`; returns whether it was taken.
    fn propose(&mut self, target: NodeId, id: u64) -> Result<bool, InvariantError> {
        let Some(replica) = self.replica(target) else {
            return Ok(false);
        };
        let outcome = match replica.propose(command(id)) {
            Ok(()) => {
                self.checker.record_proposed(id);
                self.stats.commands_proposed += 1;
                "taken"
            }
            Err(ProposeError::NotLeader { .. }) => {
                self.stats.commands_refused += 1;
                "not leader"
            }
            Err(ProposeError::Busy) => {
                self.stats.commands_refused += 1;
                "busy"
            }
            Err(ProposeError::Reconfiguring | ProposeError::InvalidMembership(_)) => {
                unreachable!("propose never refuses a command for membership reasons")
            }
        };
        self.trace.push(
            self.now,
            TraceEvent::Propose {
                node: target,
                command: id,
                outcome,
            },
        );
        self.observe(target)?;
        Ok(outcome == "taken")
    }

    fn read_index(&mut self, target: NodeId) -> Step {
        let read_id = self.next_read;
        self.next_read += 1;
        let required = self.checker.max_emitted();
        let incarnation = self.nodes[&target].incarnation;
        let Some(replica) = self.replica(target) else {
            return Ok(());
        };
        if replica.read_index(read_id).is_ok() {
            self.stats.reads_started += 1;
            self.reads.insert(
                read_id,
                StartedRead {
                    node: target,
                    incarnation,
                    required,
                },
            );
            self.trace.push(
                self.now,
                TraceEvent::ReadIndex {
                    node: target,
                    read_id,
                    required,
                },
            );
        }
        self.observe(target)
    }

    // ----- checks -----

    /// Durability of every running replica's chosen prefix, and the
    /// compaction of every replica's log and store, every tick.
    fn check_logs(&mut self) -> Step {
        for (&id, node) in &mut self.nodes {
            let log_start = node.replica.as_ref().map(Replica::log_start);
            Checker::check_compaction(
                id,
                log_start,
                node.sm.applied_upto(),
                node.snapshot.slot(),
                node.store.state().compacted_upto,
            )?;
            if let Some(log_start) = log_start {
                self.stats.max_compacted = self.stats.max_compacted.max(log_start - 1);
            }
            let Some(replica) = node.replica.as_ref() else {
                continue;
            };
            let sm = &node.sm;
            let upto = replica.chosen_upto();
            if upto < node.checked_upto {
                return Err(InvariantError::new(
                    Invariant::Durability,
                    format!(
                        "{id}: chosen_upto went back from {} to {upto}",
                        node.checked_upto
                    ),
                ));
            }
            if upto > node.checked_upto {
                // Compacted slots live on in the state machine (checked
                // against the chosen log whenever it is restored).
                self.checker
                    .check_durability(id, self.now, node.checked_upto, upto, |slot| {
                        held_value(replica, sm, slot)
                    })?;
                node.checked_upto = upto;
            }
            self.checker
                .check_configuration(id, upto, replica.membership())?;
        }
        Ok(())
    }

    /// Faults stop: the network heals and every crashed replica restarts.
    fn begin_heal(&mut self) -> Step {
        self.faults_active = false;
        self.links.heal_all();
        self.changing_crashes.clear();
        self.trace.push(
            self.now,
            TraceEvent::Phase("faults stop: network healed, every replica restarts"),
        );
        for id in self.machines.clone() {
            if self.nodes[&id].replica.is_none() {
                self.restart(id)?;
            }
        }
        let compacted_max = self
            .nodes
            .values()
            .filter_map(|n| n.replica.as_ref().map(|r| r.log_start() - 1))
            .max()
            .unwrap_or(0);
        self.stats.behind_compaction_at_heal += self
            .nodes
            .values()
            .filter(|n| n.sm.applied_upto() < compacted_max)
            .count() as u64;
        self.heal = Some(Heal {
            started: self.now,
            target: self.checker.max_chosen(),
            fresh: Vec::new(),
            last_fresh_at: None,
            fresh_slot: None,
        });
        Ok(())
    }

    /// The members of the newest configuration the chosen log decided (the
    /// genesis ones if it holds no change).
    fn latest_members(&self) -> Vec<NodeId> {
        self.checker
            .latest_members()
            .map_or_else(|| self.genesis.clone(), <[NodeId]>::to_vec)
    }

    /// After the faults: proposes fresh commands to the leader until one is
    /// chosen, and reports whether every member of the latest configuration
    /// applied it and everything chosen before the faults stopped (a
    /// machine removed from the group hears from no leader any more and may
    /// stay behind; `final_checks` checks what it holds). Fails past the
    /// liveness bound.
    fn liveness_step(&mut self) -> Result<bool, InvariantError> {
        let Some(heal) = self.heal.as_mut() else {
            return Ok(false);
        };
        if heal.fresh_slot.is_none() {
            heal.fresh_slot = heal
                .fresh
                .iter()
                .find_map(|&id| self.checker.command_slot(id));
        }
        let retry = heal
            .last_fresh_at
            .is_none_or(|at| self.now >= at + FRESH_RETRY_TICKS);
        if heal.fresh_slot.is_none() && retry {
            // A removed leader steps down on its next tick: not that one.
            let leader = self.machines.iter().copied().find(|id| {
                self.nodes[id]
                    .replica
                    .as_ref()
                    .is_some_and(|r| r.role() == Role::Leader && r.is_voter())
            });
            if let Some(leader) = leader {
                let id = self.next_command;
                self.next_command += 1;
                if self.propose(leader, id)? {
                    let heal = self.heal.as_mut().expect("healing");
                    heal.fresh.push(id);
                    heal.last_fresh_at = Some(self.now);
                }
                self.pump(leader)?;
            }
        }
        let heal = self.heal.as_ref().expect("healing");
        let latest = self.latest_members();
        let recovered = heal.fresh_slot.is_some_and(|fresh| {
            let needed = fresh.max(heal.target);
            self.nodes.values().all(|n| n.replica.is_some())
                && latest
                    .iter()
                    .all(|id| self.nodes[id].sm.applied_upto() >= needed)
        });
        Checker::check_liveness(
            recovered,
            self.now - heal.started,
            self.scenario.liveness_ticks,
            || {
                format!(
                    "fresh commands {:?} (chosen in slot {:?}), every member of the latest \
                     configuration {} must apply up to slot {}",
                    heal.fresh,
                    heal.fresh_slot,
                    members_text(&latest),
                    heal.target
                )
            },
        )?;
        if recovered {
            let needed = heal.fresh_slot.unwrap_or(0).max(heal.target);
            self.stats.removed_left_behind += self
                .nodes
                .iter()
                .filter(|(id, n)| !latest.contains(id) && n.sm.applied_upto() < needed)
                .count() as u64;
        }
        Ok(recovered)
    }

    /// Every slot chosen before the faults stopped is held, unchanged, by
    /// every member of the latest configuration (in its log, or below its
    /// compaction point in its state machine), whatever a machine outside
    /// it holds is the chosen value, and every state machine and durable
    /// snapshot is the chosen log prefix.
    fn final_checks(&mut self) -> Step {
        let target = self.heal.as_ref().map_or(0, |h| h.target);
        let latest = self.latest_members();
        for (&id, node) in &self.nodes {
            let replica = node
                .replica
                .as_ref()
                .expect("every replica runs after healing");
            let sm = &node.sm;
            if latest.contains(&id) {
                self.checker
                    .check_nothing_lost(id, target, |slot| held_value(replica, sm, slot))?;
            } else {
                self.checker
                    .check_nothing_wrong(id, target, |slot| held_value(replica, sm, slot))?;
            }
            self.checker.check_state_machine(
                id,
                "state machine at the end",
                sm.applied_upto(),
                |slot| sm.value(slot),
            )?;
            let snapshot = &node.snapshot;
            self.checker.check_state_machine(
                id,
                "durable snapshot at the end",
                snapshot.slot(),
                |slot| snapshot.value(slot),
            )?;
        }
        Ok(())
    }

    /// One line per replica, for reports.
    fn describe(&self) -> String {
        let mut out = String::new();
        for (id, node) in &self.nodes {
            match node.replica.as_ref() {
                None => out.push_str(&format!(
                    "  {id}: DOWN until t{} (incarnation {}), applied {}, snapshot {}, store \
                     compacted up to {}\n",
                    node.down_until,
                    node.incarnation,
                    node.sm.applied_upto(),
                    node.snapshot.slot(),
                    node.store.state().compacted_upto
                )),
                Some(r) => out.push_str(&format!(
                    "  {id}: {:?} ballot {} promised {} leader_hint {:?} chosen_upto {} \
                     applied {} emitted {} log_start {} snapshot {} pending {} inflight {} \
                     ready_in_flight {}{} (incarnation {}); voter {} reconfiguring {}, \
                     membership {}\n",
                    r.role(),
                    r.ballot(),
                    r.promised(),
                    r.leader_hint().map(|n| n.to_string()),
                    r.chosen_upto(),
                    node.sm.applied_upto(),
                    node.emitted_upto,
                    r.log_start(),
                    node.snapshot.slot(),
                    r.pending_count(),
                    r.inflight_count(),
                    node.in_flight.is_some(),
                    if self.links.is_isolated(*id) {
                        " ISOLATED"
                    } else {
                        ""
                    },
                    node.incarnation,
                    r.is_voter(),
                    r.reconfiguring(),
                    membership_text(r.membership()),
                )),
            }
        }
        if let Some(configs) = self.checker.true_configurations() {
            out.push_str(&format!(
                "  true configurations (chosen log): {}\n",
                configurations_text(configs)
            ));
        }
        out.push_str(&format!(
            "  network: {} events queued, split: {}; highest slot chosen {} (handed out {})\n",
            self.queue.len(),
            self.links.is_split(),
            self.checker.max_chosen(),
            self.checker.max_emitted()
        ));
        out
    }
}

/// The value `replica` holds for `slot` as chosen: in its log, or, below
/// its compaction point, in its state machine (which is what a compacted
/// slot lives on as).
fn held_value<'a>(replica: &'a Replica, sm: &'a StateMachine, slot: Slot) -> Option<&'a Value> {
    if slot < replica.log_start() {
        sm.value(slot)
    } else {
        replica.chosen_value(slot)
    }
}
