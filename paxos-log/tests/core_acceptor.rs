//! Engine tests of the acceptor role of the Multi-Paxos core.
//!
//! Goal: pin down the two acceptor rules Paxos's safety rests on, and the
//! durability contract around them: a promise or an acceptance is answered
//! only from `Ready::persisted_messages` (after the fsync of
//! `Ready::persist`), refusals go out at once in `Ready::messages` and
//! change nothing.
//!
//! Method: build one replica (`n1` of a group of three) in a precise state,
//! by recovering acceptor state or by feeding it messages, feed it ONE
//! input, and compare the whole `Ready` it produces with `assert_eq!`.
//!
//! Reference: "Paxos Made Simple" (Lamport, 2001), §2.2: P1a ("an acceptor
//! can accept a proposal numbered n iff it has not responded to a prepare
//! request having a number greater than n") and the phase 1b / 2b rules.

mod common;

use common::*;
use paxos_log::{PersistOp, Ready, Replica, Role, Value};

/// `n1` of three, recovered with: promise 3.2, slot 1 chosen and applied,
/// slots 2, 3 and 5 accepted, slot 4 learned chosen (a gap at 2..3).
fn acceptor_with_history() -> Replica {
    let state = recovered(
        b(3, 2),
        vec![
            (2, b(2, 2), cmd(b"B")),
            (3, b(3, 2), cmd(b"C")),
            (5, b(3, 2), cmd(b"E")),
        ],
        vec![(1, cmd(b"A")), (4, cmd(b"D"))],
    );
    let r = Replica::new(config(1, 3), state, 1).unwrap();
    assert_eq!(r.chosen_upto(), 1);
    assert_eq!(r.promised(), b(3, 2));
    assert_quiet(&r);
    r
}

// Reference: "Paxos Made Simple" §2.2, phase 1(b): the promise carries the
// highest-numbered proposal accepted, here for every slot >= first_slot.
#[test]
fn prepare_above_promise_persists_promise_then_reports_every_slot_from_first_slot() {
    let mut r = acceptor_with_history();

    r.step(env(3, 1, prepare(b(4, 3), 2)));

    assert_eq!(
        r.ready(),
        Ready {
            persist: vec![PersistOp::Promise { ballot: b(4, 3) }],
            persisted_messages: vec![env(
                1,
                3,
                promise(
                    b(4, 3),
                    2,
                    vec![
                        p_accepted(2, b(2, 2), cmd(b"B")),
                        p_accepted(3, b(3, 2), cmd(b"C")),
                        p_chosen(4, cmd(b"D")),
                        p_accepted(5, b(3, 2), cmd(b"E")),
                    ],
                ),
            )],
            ..Ready::default()
        },
        "the Promise waits for the fsync of the promise: never in `messages`"
    );
    assert_eq!(r.promised(), b(4, 3));
    assert_eq!(r.role(), Role::Follower);
}

#[test]
fn prepare_reports_only_slots_from_its_first_slot_on() {
    let mut r = acceptor_with_history();

    r.step(env(2, 1, prepare(b(9, 2), 4)));

    assert_eq!(
        r.ready(),
        Ready {
            persist: vec![PersistOp::Promise { ballot: b(9, 2) }],
            persisted_messages: vec![env(
                1,
                2,
                promise(
                    b(9, 2),
                    4,
                    vec![p_chosen(4, cmd(b"D")), p_accepted(5, b(3, 2), cmd(b"E"))],
                ),
            )],
            ..Ready::default()
        }
    );
}

#[test]
fn prepare_on_an_empty_acceptor_promises_nothing_accepted() {
    let mut r = replica(1, 3);

    r.step(env(2, 1, prepare(b(1, 2), 1)));

    assert_eq!(
        r.ready(),
        Ready {
            persist: vec![PersistOp::Promise { ballot: b(1, 2) }],
            persisted_messages: vec![env(1, 2, promise(b(1, 2), 1, vec![]))],
            ..Ready::default()
        }
    );
}

// Reference: "Paxos Made Simple" §2.2, P1a: a promise is a refusal of every
// lower ballot, in phase 1 as in phase 2.
#[test]
fn prepare_below_the_promise_is_nacked_at_once_and_changes_nothing() {
    let mut r = acceptor_with_history();

    r.step(env(3, 1, prepare(b(2, 3), 2)));

    assert_eq!(
        r.ready(),
        Ready {
            messages: vec![env(1, 3, nack(b(2, 3), b(3, 2)))],
            ..Ready::default()
        },
        "a refusal promises nothing: sent at once, nothing persisted"
    );
    r.advance();
    assert_eq!(r.promised(), b(3, 2));
    assert_eq!(r.role(), Role::Follower);
    assert_eq!(r.leader_hint(), None);
}

#[test]
fn accept_below_the_promise_is_nacked_and_nothing_is_accepted() {
    let mut r = acceptor_with_history();

    r.step(env(2, 1, accept(b(2, 2), vec![(6, cmd(b"F"))], 5)));

    assert_eq!(
        r.ready(),
        Ready {
            messages: vec![env(1, 2, nack(b(2, 2), b(3, 2)))],
            ..Ready::default()
        }
    );
    r.advance();
    assert_eq!(r.promised(), b(3, 2));
    assert_eq!(r.leader_hint(), None, "a refused leader is not followed");
    assert_eq!(r.chosen_upto(), 1, "a refused commit point teaches nothing");

    // Slot 6 was not accepted: a new candidate hears nothing about it.
    r.step(env(3, 1, prepare(b(5, 3), 5)));
    assert_eq!(
        r.ready().persisted_messages,
        vec![env(
            1,
            3,
            promise(b(5, 3), 5, vec![p_accepted(5, b(3, 2), cmd(b"E"))])
        )]
    );
}

#[test]
fn heartbeat_below_the_promise_is_nacked_and_not_followed() {
    let mut r = acceptor_with_history();

    r.step(env(2, 1, heartbeat(b(2, 2), 5, 4)));

    assert_eq!(
        r.ready(),
        Ready {
            messages: vec![env(1, 2, nack(b(2, 2), b(3, 2)))],
            ..Ready::default()
        },
        "no HeartbeatAck: a refused leader must not confirm reads"
    );
    r.advance();
    assert_eq!(r.promised(), b(3, 2));
    assert_eq!(r.leader_hint(), None);
    assert_eq!(r.chosen_upto(), 1);
}

// The network may duplicate a Prepare; the candidate may also retransmit it.
#[test]
fn duplicate_prepare_at_the_promised_ballot_is_answered_again_without_a_new_write() {
    let mut r = acceptor_with_history();
    r.step(env(3, 1, prepare(b(4, 3), 4)));
    let first = take(&mut r);
    assert_eq!(first.persist, vec![PersistOp::Promise { ballot: b(4, 3) }]);

    r.step(env(3, 1, prepare(b(4, 3), 4)));

    assert_eq!(
        r.ready(),
        Ready {
            persisted_messages: first.persisted_messages,
            ..Ready::default()
        },
        "the same Promise again, with no second write of the promise"
    );
    assert_eq!(r.promised(), b(4, 3));
}

// Reference: "Paxos Made Simple" §2.2, phase 2(b).
#[test]
fn accept_above_the_promise_persists_each_slot_and_acknowledges_after_persist() {
    let mut r = replica(1, 3);
    r.step(env(2, 1, prepare(b(2, 2), 1)));
    drain(&mut r);

    r.step(env(
        3,
        1,
        accept(b(3, 3), vec![(1, cmd(b"A")), (2, cmds(&[b"B", b"b"]))], 0),
    ));

    assert_eq!(
        r.ready(),
        Ready {
            persist: vec![
                op_accept(1, b(3, 3), cmd(b"A")),
                op_accept(2, b(3, 3), cmds(&[b"B", b"b"])),
            ],
            persisted_messages: vec![env(1, 3, accepted(b(3, 3), vec![1, 2]))],
            ..Ready::default()
        }
    );
    assert_eq!(
        r.promised(),
        b(3, 3),
        "accepting a ballot promises it (the Accept records carry it)"
    );
    assert_eq!(r.leader_hint(), Some(n(3)));
}

#[test]
fn accept_at_the_promised_ballot_is_taken() {
    let mut r = replica(1, 3);
    r.step(env(2, 1, prepare(b(2, 2), 1)));
    drain(&mut r);

    r.step(env(2, 1, accept(b(2, 2), vec![(1, Value::Noop)], 0)));

    assert_eq!(
        r.ready(),
        Ready {
            persist: vec![op_accept(1, b(2, 2), Value::Noop)],
            persisted_messages: vec![env(1, 2, accepted(b(2, 2), vec![1]))],
            ..Ready::default()
        }
    );
    assert_eq!(r.promised(), b(2, 2));
}

#[test]
fn accept_at_a_higher_ballot_replaces_the_value_reported_to_candidates() {
    let mut r = replica(1, 3);
    r.step(env(2, 1, accept(b(1, 2), vec![(1, cmd(b"old"))], 0)));
    drain(&mut r);
    r.step(env(3, 1, accept(b(2, 3), vec![(1, cmd(b"new"))], 0)));
    drain(&mut r);

    r.step(env(2, 1, prepare(b(3, 2), 1)));

    assert_eq!(
        r.ready().persisted_messages,
        vec![env(
            1,
            2,
            promise(b(3, 2), 1, vec![p_accepted(1, b(2, 3), cmd(b"new"))])
        )]
    );
}

#[test]
fn accept_for_a_slot_already_chosen_is_acknowledged_without_a_write() {
    // Slot 1 accepted at 1.2 and applied before a restart: chosen.
    let state = recovered(b(1, 2), vec![(1, b(1, 2), cmd(b"A"))], vec![]);
    let mut r = Replica::new(config(1, 3), state, 1).unwrap();

    // A new leader re-proposes the chosen value alongside a new slot.
    r.step(env(
        3,
        1,
        accept(b(2, 3), vec![(1, cmd(b"A")), (2, cmd(b"B"))], 1),
    ));

    assert_eq!(
        r.ready(),
        Ready {
            persist: vec![op_accept(2, b(2, 3), cmd(b"B"))],
            persisted_messages: vec![env(1, 3, accepted(b(2, 3), vec![1, 2]))],
            ..Ready::default()
        },
        "slot 1 is acknowledged (so the leader can finish it) but not rewritten"
    );
    assert_eq!(r.chosen_value(1), Some(&cmd(b"A")));
}

#[test]
fn accept_for_a_slot_learned_chosen_is_acknowledged_without_a_write() {
    let mut r = replica(1, 3);
    r.step(env(2, 1, accept(b(1, 2), vec![(1, cmd(b"A"))], 0)));
    drain(&mut r);
    r.step(env(2, 1, heartbeat(b(1, 2), 1, 1)));
    drain(&mut r);
    assert_eq!(r.chosen_upto(), 1);

    r.step(env(2, 1, accept(b(1, 2), vec![(1, cmd(b"A"))], 1)));

    assert_eq!(
        r.ready(),
        Ready {
            persisted_messages: vec![env(1, 2, accepted(b(1, 2), vec![1]))],
            ..Ready::default()
        }
    );
}

#[test]
fn accept_for_a_slot_below_the_applied_one_is_acknowledged_without_a_write() {
    // Restarted with slots 1..=2 applied but no longer in the acceptor log
    // (e.g. a snapshot replaced them).
    let mut r = Replica::new(config(1, 3), recovered(b(1, 2), vec![], vec![]), 2).unwrap();

    r.step(env(
        2,
        1,
        accept(b(1, 2), vec![(2, cmd(b"B")), (3, cmd(b"C"))], 2),
    ));

    assert_eq!(
        r.ready(),
        Ready {
            persist: vec![op_accept(3, b(1, 2), cmd(b"C"))],
            persisted_messages: vec![env(1, 2, accepted(b(1, 2), vec![2, 3]))],
            ..Ready::default()
        }
    );
    assert_eq!(r.chosen_upto(), 2);
}
