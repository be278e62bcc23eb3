//! Compaction and snapshots in the core: what a replica may forget, what it
//! must say about what it forgot, and how a replica behind the compacted
//! log is brought back.
//!
//! Method: as in the other `core_*` tests, drive one `Replica` into a
//! precise state with messages, feed one input and check the exact output.
//! The safety rule under test: a promise that cannot report compacted slots
//! must say so, and a candidate that would need those slots must not lead
//! (it could otherwise fill chosen slots with no-ops).

mod common;

use common::*;
use paxos_log::{Message, Role};

/// A follower that applied slots 1..=3 and compacts them away.
fn follower_with_compacted_log() -> paxos_log::Replica {
    let mut r = replica(2, 3);
    let leader = b(1, 1);
    r.step(env(
        1,
        2,
        accept(
            leader,
            vec![(1, cmd(b"a")), (2, cmd(b"b")), (3, cmd(b"c"))],
            0,
        ),
    ));
    drain(&mut r);
    r.step(env(1, 2, heartbeat(leader, 3, 1)));
    let ready = take(&mut r);
    assert_eq!(ready.chosen.len(), 3, "slots 1..=3 applied");
    r.compact(3);
    r
}

#[test]
fn compact_forgets_applied_slots_and_never_more() {
    let mut r = replica(2, 3);
    let leader = b(1, 1);
    r.step(env(
        1,
        2,
        accept(leader, vec![(1, cmd(b"a")), (2, cmd(b"b"))], 0),
    ));
    drain(&mut r);
    r.step(env(1, 2, heartbeat(leader, 1, 1)));
    drain(&mut r);
    // Slot 2 is accepted, not applied: compacting past it is clamped.
    r.compact(10);
    assert_eq!(r.log_start(), 2, "only the applied slot 1 may be forgotten");
    assert_eq!(r.chosen_value(1), None);
}

#[test]
fn a_promise_reports_what_was_compacted() {
    let mut r = follower_with_compacted_log();
    r.step(env(3, 2, prepare(b(2, 3), 1)));
    let ready = r.ready();
    let promise = ready
        .persisted_messages
        .into_iter()
        .map(|e| e.message)
        .next();
    assert_eq!(
        promise,
        Some(Message::Promise {
            ballot: b(2, 3),
            first_slot: 1,
            compacted_upto: 3,
            slots: vec![]
        }),
        "slots 1..=3 are gone: the promise says so instead of reporting nothing"
    );
}

#[test]
fn a_candidate_behind_a_compacted_promise_does_not_lead_and_asks_to_catch_up() {
    // n1 knows nothing; n2 compacted slots 1..=3. n1 must not take over slot
    // 1 with a no-op: it steps down and asks n2 for what it misses.
    let mut r = replica(1, 3);
    tick_until_candidate(&mut r, 1_000);
    let ballot = r.ballot();
    let _ = take(&mut r);
    r.step(env(
        2,
        1,
        Message::Promise {
            ballot,
            first_slot: 1,
            compacted_upto: 3,
            slots: vec![],
        },
    ));
    assert_eq!(
        r.role(),
        Role::Follower,
        "a quorum with a compacted promise must not elect it"
    );
    let ready = r.ready();
    assert_eq!(
        ready.messages,
        vec![env(
            1,
            2,
            Message::CatchUp {
                first_slot: 1,
                last_slot: 3
            }
        )],
        "asks the promiser for the slots it compacted"
    );
    assert!(
        ready.persist.is_empty(),
        "nothing proposed, nothing accepted"
    );
}

#[test]
fn catch_up_below_the_log_start_asks_the_driver_for_a_snapshot() {
    let mut r = follower_with_compacted_log();
    r.step(env(
        3,
        2,
        Message::CatchUp {
            first_slot: 2,
            last_slot: 5,
        },
    ));
    r.step(env(
        3,
        2,
        Message::CatchUp {
            first_slot: 2,
            last_slot: 5,
        },
    ));
    let ready = r.ready();
    assert_eq!(
        ready.snapshot_requests,
        vec![n(3)],
        "one request per peer per Ready"
    );
    assert!(
        ready.messages.is_empty(),
        "no partial answer from a compacted log"
    );
}

#[test]
fn an_installed_snapshot_counts_as_applied_and_the_tail_follows() {
    let mut r = replica(3, 3);
    let leader = b(1, 1);
    // Slot 6 arrives before the snapshot covering 1..=5.
    r.step(env(1, 3, accept(leader, vec![(6, cmd(b"f"))], 0)));
    drain(&mut r);
    r.install_snapshot(5, None);
    assert_eq!(r.log_start(), 6);
    assert_eq!(r.chosen_upto(), 5);
    r.step(env(1, 3, heartbeat(leader, 6, 1)));
    let ready = take(&mut r);
    assert_eq!(
        ready.chosen,
        vec![entry(6, cmd(b"f"))],
        "only the tail is applied after it"
    );
    // An older snapshot changes nothing.
    r.install_snapshot(4, None);
    assert_eq!(r.chosen_upto(), 6);
    assert_quiet(&r);
}
