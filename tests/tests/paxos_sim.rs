//! Seeded fault simulation of the Multi-Paxos core (see
//! `tests::paxos_sim`). Each suite runs 500 seeds (`SIM_SEEDS=n` changes
//! that, `SIM_SEED=s` runs seed `s` alone) and prints what it exercised.
//! A violation panics with the seed, the scenario, the invariant, the last
//! events and the command that replays it.

use std::time::Instant;

use paxos_log::{Entry, Membership, NodeId, Value};
use tests::paxos_sim::{
    command, run, run_suite, Checker, Corruption, Invariant, Scenario, SuiteStats,
};

/// Seeds per suite in CI.
const SEEDS: u64 = 500;

/// Runs a suite and prints its totals.
fn suite(test_name: &str, scenario: &Scenario, seeds: u64) -> SuiteStats {
    let started = Instant::now();
    let stats = run_suite(test_name, scenario, seeds);
    println!(
        "{test_name}: {} seeds in {:.1?}: {}",
        stats.seeds,
        started.elapsed(),
        stats.totals
    );
    stats
}

/// Whether this is a full run (not `SIM_SEED` replaying one seed, nor a
/// handful of seeds): only then are the progress floors meaningful.
fn full_run(stats: &SuiteStats) -> bool {
    stats.seeds >= 50
}

/// In suites where leadership changes hands often, mid-pipeline: many
/// elections, and some new leader found holes and filled them with no-ops.
fn assert_holes_filled(stats: &SuiteStats) {
    if full_run(stats) {
        let t = &stats.totals;
        assert!(t.leaders > stats.seeds * 4, "too few elections: {t}");
        assert!(t.noops_chosen > 0, "no leader ever filled a hole: {t}");
    }
}

/// Floors every suite must clear so that a simulator that does nothing
/// cannot pass: commands chosen, leaders elected, recovery after faults.
fn assert_progress(stats: &SuiteStats) {
    let t = &stats.totals;
    assert!(
        t.commands_chosen > 0 && t.leaders > 0,
        "nothing was chosen: {t}"
    );
    if !full_run(stats) {
        return;
    }
    assert!(
        t.commands_chosen >= stats.seeds * 50,
        "too few commands chosen: {t}"
    );
    assert!(
        t.leaders > stats.seeds,
        "leadership never changed hands: {t}"
    );
    assert!(t.faults() >= stats.seeds * 5, "too few faults: {t}");
    assert!(t.reads_served > stats.seeds, "too few reads served: {t}");
}

#[test]
fn lossy_network() {
    let stats = suite("lossy_network", &Scenario::lossy_network(), SEEDS);
    assert_progress(&stats);
    let t = &stats.totals;
    if full_run(&stats) {
        assert!(t.dropped > stats.seeds * 100, "{t}");
        assert!(t.duplicated > stats.seeds * 10, "{t}");
        assert!(t.reordered > stats.seeds * 10, "{t}");
    }
}

#[test]
fn partitions_and_heal() {
    let stats = suite(
        "partitions_and_heal",
        &Scenario::partitions_and_heal(),
        SEEDS,
    );
    assert_progress(&stats);
    assert_holes_filled(&stats);
    let t = &stats.totals;
    if full_run(&stats) {
        assert!(t.partitions > stats.seeds, "{t}");
        assert!(t.one_way_partitions > stats.seeds / 2, "{t}");
        assert!(t.link_cuts > stats.seeds / 2, "{t}");
        assert!(t.dropped_by_partition > stats.seeds * 50, "{t}");
    }
}

#[test]
fn crashes_lose_unsynced() {
    let stats = suite(
        "crashes_lose_unsynced",
        &Scenario::crashes_lose_unsynced(),
        SEEDS,
    );
    assert_progress(&stats);
    let t = &stats.totals;
    if full_run(&stats) {
        assert!(t.crashes > stats.seeds * 2, "{t}");
        assert!(t.crashes_in_ready > stats.seeds, "{t}");
        assert!(t.state_machine_lost > stats.seeds / 2, "{t}");
        assert!(t.state_machine_partial > stats.seeds / 2, "{t}");
    }
}

#[test]
fn crash_everyone() {
    let stats = suite("crash_everyone", &Scenario::crash_everyone(), SEEDS);
    assert_progress(&stats);
    let t = &stats.totals;
    if full_run(&stats) {
        assert!(t.crash_all > stats.seeds * 2, "{t}");
        assert!(t.restarts > stats.seeds * 6, "{t}");
    }
}

/// Floors of the suites with every fault together: every kind of network
/// fault, partitions of every shape, crashes inside a `Ready` and crashes of
/// every replica at once.
fn assert_mixed_faults_exercised(stats: &SuiteStats) {
    let t = &stats.totals;
    if !full_run(stats) {
        return;
    }
    assert!(
        t.dropped > 0 && t.duplicated > 0 && t.reordered > 0,
        "a network fault never happened: {t}"
    );
    assert!(
        t.partitions + t.one_way_partitions + t.link_cuts > stats.seeds,
        "too few partitions: {t}"
    );
    assert!(
        t.crashes_in_ready > 0 && t.crash_all > 0,
        "no crash inside a Ready or of every replica: {t}"
    );
}

#[test]
fn five_replicas_mixed_faults() {
    let stats = suite(
        "five_replicas_mixed_faults",
        &Scenario::five_replicas_mixed_faults(),
        SEEDS,
    );
    assert_progress(&stats);
    assert_holes_filled(&stats);
    assert_mixed_faults_exercised(&stats);
    let t = &stats.totals;
    if full_run(&stats) {
        assert!(t.crashes > stats.seeds, "{t}");
    }
}

#[test]
fn reads_under_faults() {
    let stats = suite("reads_under_faults", &Scenario::reads_under_faults(), SEEDS);
    assert_progress(&stats);
    assert_holes_filled(&stats);
    let t = &stats.totals;
    if full_run(&stats) {
        assert!(t.reads_started > stats.seeds * 50, "{t}");
        assert!(t.reads_served > stats.seeds * 30, "{t}");
    }
}

#[test]
fn elections_across_bridges() {
    let stats = suite(
        "elections_across_bridges",
        &Scenario::elections_across_bridges(),
        SEEDS,
    );
    assert_progress(&stats);
    assert_holes_filled(&stats);
    let t = &stats.totals;
    if full_run(&stats) {
        assert!(t.link_cuts > stats.seeds * 2, "{t}");
        assert!(t.crashes_in_ready > stats.seeds, "{t}");
        assert!(t.reads_served > stats.seeds * 20, "{t}");
    }
}

/// Floors of the suites with snapshots: replicas took snapshots and
/// compacted, replicas that fell behind were brought back by installing
/// one, and candidates behind a compaction point were refused leadership
/// (reads served: [`assert_progress`]).
fn assert_snapshots_exercised(stats: &SuiteStats) {
    let t = &stats.totals;
    if !full_run(stats) {
        return;
    }
    assert!(
        t.snapshots_taken > stats.seeds * 3,
        "too few snapshots: {t}"
    );
    assert!(t.max_compacted > 0, "nothing compacted: {t}");
    assert!(t.snapshot_requests > 0, "no snapshot ever requested: {t}");
    assert!(
        t.snapshots_installed > stats.seeds / 2,
        "too few snapshots installed: {t}"
    );
    assert!(t.snapshots_stale > 0, "no stale snapshot arrived: {t}");
    assert!(
        t.compacted_stepdowns > 0,
        "no candidate stepped down on a compacted promise: {t}"
    );
    assert!(
        t.restarts_from_snapshot > 0,
        "no restart from a snapshot: {t}"
    );
    assert!(
        t.crashes_in_snapshot > 0,
        "no crash while snapshotting: {t}"
    );
    assert!(t.long_outages > stats.seeds, "too few long outages: {t}");
    // Liveness after the faults covered replicas that only a snapshot could
    // bring back.
    assert!(
        t.behind_compaction_at_heal > stats.seeds / 10,
        "too few replicas behind a compaction point at the end of the faults: {t}"
    );
    assert!(
        t.snapshots_installed_in_recovery > stats.seeds / 10,
        "too few snapshots installed during recovery: {t}"
    );
}

#[test]
fn compaction_and_snapshots() {
    let stats = suite(
        "compaction_and_snapshots",
        &Scenario::compaction_and_snapshots(),
        SEEDS,
    );
    assert_progress(&stats);
    assert_snapshots_exercised(&stats);
    let t = &stats.totals;
    if full_run(&stats) {
        assert!(t.snapshots_deferred > 0, "{t}");
        assert!(t.crashes > stats.seeds && t.dropped > 0, "{t}");
    }
}

#[test]
fn compaction_five_replicas_mixed() {
    let stats = suite(
        "compaction_five_replicas_mixed",
        &Scenario::compaction_five_replicas_mixed(),
        SEEDS,
    );
    assert_progress(&stats);
    assert_holes_filled(&stats);
    assert_snapshots_exercised(&stats);
    assert_mixed_faults_exercised(&stats);
}

/// [`Scenario::compaction_and_snapshots`] where a replica that installs a
/// snapshot received from a peer also crashes, sometimes, right after it
/// restored its state machine from it and saved it durably, and before
/// `install_snapshot` and the store's compaction: a point of the real
/// driver's `receive_snapshot` (a torn store compaction leaves the same
/// disk state). On restart the state machine is at the snapshot's slot,
/// the store still holds only what it held before, compacted lower.
///
/// Regression test. `Replica::new(config, recovered, applied_upto)` takes
/// every slot in `(recovered.compacted_upto, applied_upto]` as held in the
/// store, which is true only for slots the replica applied through its own
/// log. Before the fix, a restart at this crash point left slots the
/// replica got through the snapshot in that range: the store held nothing
/// for them, or a stale `Accepted` record from a superseded ballot that
/// `Replica::new` turned into `Chosen` (340 of 500 seeds failed; seed 11
/// held a wrong value as chosen). Now the driver, and this simulation with
/// it, compacts the store up to the durable snapshot before the core
/// starts, and saves a received snapshot before restoring it.
#[test]
fn compaction_crash_before_install_snapshot() {
    let scenario = Scenario {
        name: "compaction_crash_before_install_snapshot",
        crash_in_install_rate: 0.3,
        ..Scenario::compaction_and_snapshots()
    };
    let stats = suite("compaction_crash_before_install_snapshot", &scenario, SEEDS);
    assert_progress(&stats);
    assert_snapshots_exercised(&stats);
}

#[test]
#[ignore = "long: 10,000 seeds; run with --ignored"]
fn mixed_faults_10k_seeds() {
    let stats = suite("mixed_faults_10k_seeds", &Scenario::mixed_faults(), 10_000);
    assert_progress(&stats);
}

#[test]
#[ignore = "long: 10,000 seeds; run with --ignored"]
fn compaction_mixed_faults_10k_seeds() {
    let stats = suite(
        "compaction_mixed_faults_10k_seeds",
        &Scenario::compaction_mixed_faults(),
        10_000,
    );
    assert_progress(&stats);
    assert_snapshots_exercised(&stats);
}

/// Floors of the suites with membership changes: changes of every kind
/// were taken, chosen and put in force, machines being added or removed
/// crashed around them, and every proposed set was a valid one.
fn assert_membership_exercised(stats: &SuiteStats) {
    let t = &stats.totals;
    assert_eq!(
        t.reconfigs_refused_other, 0,
        "a valid member set was refused: {t}"
    );
    if !full_run(stats) {
        return;
    }
    let floor = stats.seeds / 2;
    assert!(
        t.reconfigs_taken > stats.seeds,
        "too few changes taken: {t}"
    );
    assert!(
        t.reconfigs_in_force > stats.seeds,
        "too few changes in force: {t}"
    );
    assert!(t.adds > floor, "too few additions: {t}");
    assert!(t.removes > floor, "too few removals: {t}");
    assert!(t.replaces > floor, "too few replacements: {t}");
    assert!(t.leader_removals > 0, "no leader ever removed itself: {t}");
    assert!(
        t.reconfigs_not_leader > 0 && t.reconfigs_refused_in_progress > 0,
        "no change was ever refused: {t}"
    );
    assert!(
        t.changing_node_crashes > floor,
        "too few crashes of a machine being added or removed: {t}"
    );
}

#[test]
fn membership_changes() {
    let stats = suite("membership_changes", &Scenario::membership_changes(), SEEDS);
    assert_progress(&stats);
    assert_holes_filled(&stats);
    assert_membership_exercised(&stats);
    let t = &stats.totals;
    if full_run(&stats) {
        assert!(t.dropped > 0 && t.partitions + t.link_cuts > 0, "{t}");
        assert!(t.crashes > stats.seeds && t.crashes_in_ready > 0, "{t}");
    }
}

#[test]
fn membership_five_replicas_mixed() {
    let stats = suite(
        "membership_five_replicas_mixed",
        &Scenario::membership_five_replicas_mixed(),
        SEEDS,
    );
    assert_progress(&stats);
    assert_holes_filled(&stats);
    assert_membership_exercised(&stats);
    let t = &stats.totals;
    if full_run(&stats) {
        assert!(t.crashes_in_ready > 0 && t.crash_all > 0, "{t}");
    }
}

#[test]
fn membership_with_compaction() {
    let stats = suite(
        "membership_with_compaction",
        &Scenario::membership_with_compaction(),
        SEEDS,
    );
    assert_progress(&stats);
    assert_snapshots_exercised(&stats);
    assert_membership_exercised(&stats);
    let t = &stats.totals;
    if full_run(&stats) {
        assert!(
            t.snapshots_installed_by_added > stats.seeds / 10,
            "too few added machines caught up through a snapshot: {t}"
        );
    }
}

/// [`Scenario::membership_one_member_handover`]: no fault at all, a
/// one-member group whose member is replaced by a spare machine (and the
/// spare added).
///
/// Regression test. The smallest case of a handover that left no member of
/// the new configuration aware that it was one: the outgoing member steps
/// down as soon as its removal is in force, and the machine that replaced
/// it, which had not learned the change, never campaigned, so the group
/// stalled for good. Now a non-voter that hears from no leader pulls the
/// chosen log from the members it knows, learns that it is a member, and
/// campaigns.
#[test]
fn membership_one_member_handover() {
    let stats = suite(
        "membership_one_member_handover",
        &Scenario::membership_one_member_handover(),
        SEEDS,
    );
    // No faults here, so not `assert_progress`: every seed must hand the
    // group over and keep choosing commands.
    let t = &stats.totals;
    assert_eq!(t.reconfigs_refused_other, 0, "{t}");
    if full_run(&stats) {
        assert!(t.commands_chosen >= stats.seeds * 50, "{t}");
        assert!(
            t.leaders > stats.seeds,
            "leadership never changed hands: {t}"
        );
        assert!(
            t.adds > stats.seeds / 4 && t.replaces > stats.seeds / 4,
            "{t}"
        );
        assert!(t.leader_removals > stats.seeds / 4, "{t}");
        assert!(t.reconfigs_in_force > stats.seeds, "{t}");
    }
}

#[test]
#[ignore = "long: 10,000 seeds; run with --ignored"]
fn membership_mixed_faults_10k_seeds() {
    let stats = suite(
        "membership_mixed_faults_10k_seeds",
        &Scenario::membership_mixed_faults(),
        10_000,
    );
    assert_progress(&stats);
    assert_snapshots_exercised(&stats);
    assert_membership_exercised(&stats);
}

/// The same seed gives the same run: nothing depends on wall time or hash
/// order.
#[test]
fn runs_are_deterministic() {
    for scenario in [
        Scenario::five_replicas_mixed_faults(),
        Scenario::compaction_and_snapshots(),
        Scenario::compaction_five_replicas_mixed(),
        Scenario::membership_with_compaction(),
    ] {
        for seed in [0, 1, 2, 77] {
            let a = run(&scenario, seed).unwrap();
            let b = run(&scenario, seed).unwrap();
            assert_eq!(a, b, "{}: seed {seed} ran differently twice", scenario.name);
        }
    }
}

// ----- proof that the checkers catch broken logs -----

fn commands(ids: &[u64]) -> Value {
    Value::Commands(ids.iter().map(|&id| command(id)).collect())
}

/// A network that rewrites the values of the `Accept`s it delivers makes
/// followers accept (and learn as chosen) values nobody proposed and that
/// differ from the leader's: the simulation must report it, as agreement,
/// validity or durability (not as a crash of the core, and not pass).
#[test]
fn checker_catches_forged_accept_values() {
    let scenario = Scenario {
        corruption: Some(Corruption::ForgeAcceptValues),
        ..Scenario::quiet("forged_accepts", 3)
    };
    for seed in 0..20 {
        let violation = run(&scenario, seed).expect_err("a forged log must not pass");
        assert!(
            matches!(
                violation.error.invariant,
                Invariant::Agreement | Invariant::Validity | Invariant::Durability
            ),
            "seed {seed}: caught as {}, not as agreement or validity:\n{}",
            violation.error,
            violation.report("checker_catches_forged_accept_values")
        );
        let report = violation.report("checker_catches_forged_accept_values");
        assert!(
            report.contains(&format!("SIM_SEED={seed} cargo test")),
            "{report}"
        );
        assert!(report.contains("forged_accepts"), "{report}");
        assert!(
            report.contains("FORGED"),
            "the trace shows the forgery:\n{report}"
        );
    }
}

/// A network that changes one value of every snapshot it delivers makes
/// the receiver install a state machine that is not the chosen log: the
/// simulation must report it as a state machine violation, right at the
/// install, with the damage in the trace.
#[test]
fn checker_catches_corrupted_snapshots() {
    let scenario = Scenario {
        corruption: Some(Corruption::CorruptSnapshots),
        ..Scenario::compaction_and_snapshots()
    };
    for seed in 0..20 {
        let violation = run(&scenario, seed).expect_err("a corrupted snapshot must not pass");
        let report = violation.report("checker_catches_corrupted_snapshots");
        assert_eq!(
            violation.error.invariant,
            Invariant::StateMachine,
            "seed {seed}: caught as {}, not as a state machine violation:\n{report}",
            violation.error,
        );
        assert!(
            violation.error.detail.contains("snapshot"),
            "seed {seed}: {}",
            violation.error
        );
        assert!(
            report.contains("CORRUPTED snapshot"),
            "the trace shows the damage:\n{report}"
        );
        assert!(
            report.contains(&format!("SIM_SEED={seed} cargo test")),
            "{report}"
        );
    }
}

/// A driver that restores and installs snapshots without the membership
/// saved with them gives the core the genesis configuration after a
/// snapshot that covers a change: the simulation must report the
/// replica's wrong configurations (before they can split a quorum).
#[test]
fn checker_catches_snapshots_that_forget_the_membership() {
    let scenario = Scenario {
        corruption: Some(Corruption::ForgetSnapshotMembership),
        ..Scenario::membership_with_compaction()
    };
    let mut caught = 0;
    for seed in 0..20 {
        // A seed whose snapshots never covered a change has nothing to
        // catch; every other must be caught, as a configuration violation.
        let Err(violation) = run(&scenario, seed) else {
            continue;
        };
        caught += 1;
        let report = violation.report("checker_catches_snapshots_that_forget_the_membership");
        assert_eq!(
            violation.error.invariant,
            Invariant::Configuration,
            "seed {seed}: caught as {}, not as configuration agreement:\n{report}",
            violation.error,
        );
        assert!(
            report.contains("true configurations (chosen log)"),
            "the report shows the true configurations:\n{report}"
        );
    }
    assert!(caught >= 10, "only {caught} of 20 seeds caught");
}

fn ids(ids: &[u64]) -> Vec<NodeId> {
    ids.iter().copied().map(NodeId).collect()
}

/// A replica's membership holding exactly `configs` (first slot, sorted
/// members), written out. `Membership` can only be built through the core's
/// own `record`; each configuration is recorded with window 0 (it governs
/// from the slot given) and the result is checked to be what it says, so
/// that no expected value depends on the core's arithmetic.
fn membership(configs: &[(u64, &[u64])]) -> Membership {
    let [(1, genesis), changes @ ..] = configs else {
        panic!("a membership starts with its genesis members at slot 1");
    };
    let mut membership = Membership::genesis(&ids(genesis));
    for &(first, members) in changes {
        membership.record(first, &ids(members), 0);
    }
    let built: Vec<(u64, Vec<NodeId>)> = membership
        .iter()
        .map(|(first, members)| (first, members.to_vec()))
        .collect();
    let written: Vec<(u64, Vec<NodeId>)> = configs
        .iter()
        .map(|&(first, members)| (first, ids(members)))
        .collect();
    assert_eq!(built, written, "the test built a different membership");
    membership
}

#[test]
fn checker_catches_wrong_configurations() {
    // α = 4; a change to {1,2,4} (named in any order) chosen in slot 2
    // governs from slot 6.
    let mut checker = Checker::for_group(&ids(&[3, 1, 2]), 4);
    checker.record_proposed_members(&ids(&[4, 2, 1]));
    checker.on_chosen(NodeId(1), 1, 1, &Value::Noop).unwrap();
    checker
        .on_chosen(NodeId(1), 1, 2, &Value::Reconfigure(ids(&[4, 2, 1])))
        .unwrap();
    checker.on_chosen(NodeId(1), 1, 3, &Value::Noop).unwrap();
    assert_eq!(
        checker.true_configurations(),
        Some(&[(1, ids(&[1, 2, 3])), (6, ids(&[1, 2, 4]))][..])
    );
    for (slot, members) in [
        (1, [1, 2, 3]),
        (5, [1, 2, 3]),
        (6, [1, 2, 4]),
        (99, [1, 2, 4]),
    ] {
        assert_eq!(checker.true_members_at(slot), Some(&ids(&members)[..]));
    }
    assert_eq!(checker.latest_members(), Some(&ids(&[1, 2, 4])[..]));
    let right = membership(&[(1, &[1, 2, 3]), (6, &[1, 2, 4])]);
    for chosen_upto in 0..=3 {
        checker
            .check_configuration(NodeId(2), chosen_upto, &right)
            .unwrap();
    }
    // Before slot 2 the change governs nothing in the window yet.
    let genesis = membership(&[(1, &[1, 2, 3])]);
    checker.check_configuration(NodeId(2), 1, &genesis).unwrap();
    // The change missed, in force one slot early or late (a wrong α), or
    // to the wrong set; and a replica ahead of everything ever reported
    // chosen.
    let early = membership(&[(1, &[1, 2, 3]), (5, &[1, 2, 4])]);
    let late = membership(&[(1, &[1, 2, 3]), (7, &[1, 2, 4])]);
    let wrong_set = membership(&[(1, &[1, 2, 3]), (6, &[1, 2, 5])]);
    for (chosen_upto, membership) in [
        (2, &genesis),
        (3, &genesis),
        (2, &early),
        (2, &late),
        (3, &wrong_set),
        (4, &right),
    ] {
        let error = checker
            .check_configuration(NodeId(2), chosen_upto, membership)
            .unwrap_err();
        assert_eq!(error.invariant, Invariant::Configuration, "{error}");
    }
    // A checker fed by hand, without the group, checks no configuration.
    Checker::new()
        .check_configuration(NodeId(2), 3, &genesis)
        .unwrap();
}

#[test]
fn checker_catches_membership_changes_nobody_proposed() {
    let mut checker = Checker::for_group(&ids(&[1, 2, 3]), 4);
    checker.record_proposed_members(&ids(&[1, 2, 4]));
    checker
        .on_chosen(NodeId(1), 1, 1, &Value::Reconfigure(ids(&[1, 2, 4])))
        .unwrap();
    for members in [ids(&[1, 2, 5]), ids(&[4, 2, 1]), vec![]] {
        let error = checker
            .on_chosen(NodeId(1), 1, 2, &Value::Reconfigure(members))
            .unwrap_err();
        assert_eq!(error.invariant, Invariant::Validity, "{error}");
    }
}

#[test]
fn checker_catches_wrong_values_on_removed_replicas() {
    let mut checker = Checker::new();
    checker.record_proposed(1);
    checker.on_chosen(NodeId(1), 1, 1, &commands(&[1])).unwrap();
    checker.on_chosen(NodeId(1), 1, 2, &Value::Noop).unwrap();
    let one = commands(&[1]);
    let noop = Value::Noop;
    // A removed replica may hold nothing past where it was left behind...
    checker
        .check_nothing_wrong(NodeId(3), 2, |slot| (slot == 1).then_some(&one))
        .unwrap();
    // ...but what it holds must be the chosen value.
    let error = checker
        .check_nothing_wrong(NodeId(3), 2, |slot| (slot == 2).then_some(&one))
        .unwrap_err();
    assert_eq!(error.invariant, Invariant::Durability, "{error}");
    checker
        .check_nothing_wrong(NodeId(3), 2, |slot| {
            Some(if slot == 1 { &one } else { &noop })
        })
        .unwrap();
}

#[test]
fn checker_catches_state_machines_off_the_chosen_log() {
    let mut checker = Checker::new();
    checker.record_proposed(1);
    checker.on_chosen(NodeId(1), 1, 1, &commands(&[1])).unwrap();
    checker.on_chosen(NodeId(1), 1, 2, &Value::Noop).unwrap();
    let one = commands(&[1]);
    let noop = Value::Noop;
    let good = |slot| match slot {
        1 => Some(&one),
        2 => Some(&noop),
        _ => None,
    };
    checker
        .check_state_machine(NodeId(2), "snapshot", 2, good)
        .unwrap();
    // A changed value, a missing one, and a slot no one reported chosen.
    let errors = [
        checker.check_state_machine(NodeId(2), "snapshot", 2, |_| Some(&one)),
        checker.check_state_machine(NodeId(2), "snapshot", 2, |slot| {
            (slot == 2).then_some(&noop)
        }),
        checker.check_state_machine(NodeId(2), "snapshot", 3, |_| Some(&noop)),
    ];
    for error in errors {
        let error = error.unwrap_err();
        assert_eq!(error.invariant, Invariant::StateMachine, "{error}");
    }
}

#[test]
fn checker_catches_compaction_beyond_applied_or_snapshot() {
    Checker::check_compaction(NodeId(1), Some(6), 5, 5, 5).unwrap();
    Checker::check_compaction(NodeId(1), None, 0, 5, 5).unwrap();
    for (log_start, applied, snapshot, store) in [
        (Some(7), 5, 6, 0),
        (Some(7), 6, 5, 0),
        (Some(1), 5, 5, 6),
        (None, 9, 5, 6),
    ] {
        let error =
            Checker::check_compaction(NodeId(1), log_start, applied, snapshot, store).unwrap_err();
        assert_eq!(error.invariant, Invariant::Compaction, "{error}");
    }
}

#[test]
fn checker_catches_two_values_in_one_slot() {
    let mut checker = Checker::new();
    checker.record_proposed(1);
    checker.record_proposed(2);
    checker.on_chosen(NodeId(1), 1, 5, &commands(&[1])).unwrap();
    // The same value again, from another replica: fine.
    checker.on_chosen(NodeId(2), 2, 5, &commands(&[1])).unwrap();
    let error = checker
        .on_chosen(NodeId(3), 3, 5, &commands(&[2]))
        .unwrap_err();
    assert_eq!(error.invariant, Invariant::Agreement, "{error}");
    let error = checker
        .on_chosen(NodeId(3), 3, 5, &Value::Noop)
        .unwrap_err();
    assert_eq!(error.invariant, Invariant::Agreement, "{error}");
}

#[test]
fn checker_catches_invalid_values() {
    let mut checker = Checker::new();
    checker.record_proposed(1);
    checker.record_proposed(2);
    checker.on_chosen(NodeId(1), 1, 1, &commands(&[1])).unwrap();
    checker.on_chosen(NodeId(1), 1, 2, &Value::Noop).unwrap();
    for (slot, value, why) in [
        (3, commands(&[9]), "never proposed"),
        (3, commands(&[1]), "chosen twice"),
        (3, commands(&[2, 2]), "twice in one batch"),
        (3, Value::Commands(vec![b"junk".to_vec()]), "not a command"),
        (3, Value::Commands(vec![]), "empty batch"),
    ] {
        let error = checker.on_chosen(NodeId(2), 2, slot, &value).unwrap_err();
        assert_eq!(error.invariant, Invariant::Validity, "{why}: {error}");
    }
}

#[test]
fn checker_catches_gaps_and_repeats() {
    let entry = |slot| Entry {
        slot,
        value: Value::Noop,
    };
    assert_eq!(
        Checker::check_contiguity(NodeId(1), 3, &[entry(4), entry(5)]).unwrap(),
        5
    );
    for entries in [
        vec![entry(5)],
        vec![entry(3)],
        vec![entry(4), entry(6)],
        vec![entry(4), entry(4)],
    ] {
        let error = Checker::check_contiguity(NodeId(1), 3, &entries).unwrap_err();
        assert_eq!(error.invariant, Invariant::Contiguity, "{error}");
    }
}

#[test]
fn checker_catches_lost_and_changed_values() {
    let mut checker = Checker::new();
    checker.record_proposed(1);
    checker.on_chosen(NodeId(1), 1, 1, &commands(&[1])).unwrap();
    checker.on_chosen(NodeId(1), 1, 2, &Value::Noop).unwrap();
    let one = commands(&[1]);
    let noop = Value::Noop;
    // A replica that claims slots 1..=2 chosen but lost slot 2.
    let error = checker
        .check_durability(NodeId(2), 5, 0, 2, |slot| (slot == 1).then_some(&one))
        .unwrap_err();
    assert_eq!(error.invariant, Invariant::Durability, "{error}");
    // A replica that holds a different value for slot 2 after a restart.
    let error = checker
        .check_durability(NodeId(2), 5, 0, 2, |_| Some(&one))
        .unwrap_err();
    assert_eq!(error.invariant, Invariant::Durability, "{error}");
    // After recovery, every chosen slot must be held unchanged.
    let error = checker
        .check_nothing_lost(NodeId(3), 2, |slot| (slot == 2).then_some(&noop))
        .unwrap_err();
    assert_eq!(error.invariant, Invariant::Durability, "{error}");
    checker
        .check_nothing_lost(NodeId(3), 2, |slot| {
            Some(if slot == 1 { &one } else { &noop })
        })
        .unwrap();
}

#[test]
fn checker_catches_stale_reads_and_stalls() {
    Checker::check_read(NodeId(1), 7, 10, 10).unwrap();
    let error = Checker::check_read(NodeId(1), 7, 10, 9).unwrap_err();
    assert_eq!(error.invariant, Invariant::ReadLinearizability, "{error}");
    Checker::check_liveness(false, 999, 1000, String::new).unwrap();
    Checker::check_liveness(true, 5000, 1000, String::new).unwrap();
    let error = Checker::check_liveness(false, 1000, 1000, String::new).unwrap_err();
    assert_eq!(error.invariant, Invariant::Liveness, "{error}");
}
