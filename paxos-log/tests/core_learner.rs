//! Engine tests of the learner role: how a replica learns which slots are
//! chosen, fetches the ones it missed, and restarts without re-applying.
//!
//! Goal: a follower takes the leader's commit point (`Heartbeat` /
//! `Accept::commit_upto`) as choosing a slot only if it accepted that slot
//! at the leader's own ballot (a leader proposes one value per slot per
//! ballot); anything else (a slot missing, or accepted at an older ballot)
//! is fetched with `CatchUp`, answered with chosen values only, persisted as
//! `PersistOp::Chosen` before it is applied, and handed out in
//! `Ready::chosen` in slot order without gaps. After a restart, slots up to
//! the applied one are never handed out again.
//!
//! Method: build one follower (`n1`; the leader is `n2`) in a precise state
//! by recovering acceptor state or feeding it messages, feed ONE input, and
//! compare the whole `Ready` with `assert_eq!`.
//!
//! Reference: "Paxos Made Simple" (Lamport, 2001), §2.3 ("Learning a
//! Chosen Value": a learner may learn from the distinguished learner, and
//! must be able to find out about a value it missed) and §3.

mod common;

use common::*;
use paxos_log::{Message, Ready, Replica, Role, Value};

/// `n1` of three following `n2` at ballot 2.2, with slots 1..=3 accepted
/// at 2.2 and nothing chosen yet.
fn follower_with_three_accepted() -> Replica {
    let mut r = replica(1, 3);
    r.step(env(
        2,
        1,
        accept(
            b(2, 2),
            vec![(1, cmd(b"A")), (2, cmd(b"B")), (3, cmd(b"C"))],
            0,
        ),
    ));
    drain(&mut r);
    assert_eq!(r.chosen_upto(), 0);
    r
}

#[test]
fn heartbeat_commit_point_chooses_slots_accepted_at_the_leaders_ballot() {
    let mut r = follower_with_three_accepted();

    r.step(env(2, 1, heartbeat(b(2, 2), 2, 7)));

    assert_eq!(
        r.ready(),
        Ready {
            messages: vec![env(1, 2, heartbeat_ack(b(2, 2), 7))],
            chosen: vec![entry(1, cmd(b"A")), entry(2, cmd(b"B"))],
            ..Ready::default()
        },
        "its own acceptance is on disk already: no Chosen record needed"
    );
    assert_eq!(r.chosen_upto(), 2);
}

#[test]
fn accept_commit_point_chooses_earlier_slots() {
    let mut r = follower_with_three_accepted();

    r.step(env(2, 1, accept(b(2, 2), vec![(4, cmd(b"D"))], 3)));

    assert_eq!(
        r.ready(),
        Ready {
            persist: vec![op_accept(4, b(2, 2), cmd(b"D"))],
            persisted_messages: vec![env(1, 2, accepted(b(2, 2), vec![4]))],
            chosen: vec![
                entry(1, cmd(b"A")),
                entry(2, cmd(b"B")),
                entry(3, cmd(b"C"))
            ],
            ..Ready::default()
        }
    );
}

#[test]
fn commit_point_does_not_choose_a_slot_accepted_at_an_older_ballot() {
    let mut r = replica(1, 3);
    // Slot 2 accepted from the old leader n3 at 1.3 ...
    r.step(env(3, 1, accept(b(1, 3), vec![(2, cmd(b"B-old"))], 0)));
    drain(&mut r);
    // ... slots 1 and 3 from the new leader n2 at 2.2.
    r.step(env(
        2,
        1,
        accept(b(2, 2), vec![(1, cmd(b"A")), (3, cmd(b"C"))], 0),
    ));
    drain(&mut r);

    r.step(env(2, 1, heartbeat(b(2, 2), 3, 1)));

    assert_eq!(
        r.ready(),
        Ready {
            messages: vec![
                env(
                    1,
                    2,
                    Message::CatchUp {
                        first_slot: 2,
                        last_slot: 3
                    }
                ),
                env(1, 2, heartbeat_ack(b(2, 2), 1)),
            ],
            chosen: vec![entry(1, cmd(b"A"))],
            ..Ready::default()
        },
        "slot 2's value at 1.3 may not be the chosen one; slot 3 waits for it"
    );
    r.advance();

    // The leader answers with the chosen values (slot 2 was re-proposed).
    r.step(env(2, 1, chosen(vec![(2, cmd(b"B-new")), (3, cmd(b"C"))])));

    assert_eq!(
        r.ready(),
        Ready {
            persist: vec![op_chosen(2, cmd(b"B-new")), op_chosen(3, cmd(b"C"))],
            chosen: vec![entry(2, cmd(b"B-new")), entry(3, cmd(b"C"))],
            ..Ready::default()
        },
        "learned values are made durable before they are applied"
    );
    assert_eq!(r.chosen_upto(), 3);
}

#[test]
fn commit_point_over_a_missing_slot_requests_catch_up_from_the_leader() {
    let mut r = replica(1, 3);
    // The Accept for slot 1 was lost; slot 2 arrived.
    r.step(env(2, 1, accept(b(2, 2), vec![(2, cmd(b"B"))], 0)));
    drain(&mut r);

    r.step(env(2, 1, heartbeat(b(2, 2), 2, 5)));

    assert_eq!(
        r.ready(),
        Ready {
            messages: vec![
                env(
                    1,
                    2,
                    Message::CatchUp {
                        first_slot: 1,
                        last_slot: 2
                    }
                ),
                env(1, 2, heartbeat_ack(b(2, 2), 5)),
            ],
            ..Ready::default()
        },
        "nothing chosen past a hole"
    );
}

#[test]
fn catch_up_request_is_bounded_by_message_slots_max() {
    let mut config = config(1, 3);
    config.message_slots_max = 4;
    let mut r = Replica::new(config, Default::default(), 0).unwrap();

    r.step(env(2, 1, heartbeat(b(1, 2), 10, 1)));

    assert_eq!(
        r.ready().messages,
        vec![
            env(
                1,
                2,
                Message::CatchUp {
                    first_slot: 1,
                    last_slot: 4
                }
            ),
            env(1, 2, heartbeat_ack(b(1, 2), 1)),
        ]
    );
}

#[test]
fn chosen_reply_with_a_gap_is_persisted_but_applied_only_once_the_gap_fills() {
    let mut r = replica(1, 3);
    r.step(env(2, 1, heartbeat(b(1, 2), 3, 1)));
    drain(&mut r);

    r.step(env(2, 1, chosen(vec![(2, cmd(b"B")), (3, Value::Noop)])));
    let ready = take(&mut r);
    assert_eq!(
        ready.persist,
        vec![op_chosen(2, cmd(b"B")), op_chosen(3, Value::Noop)]
    );
    assert_eq!(ready.chosen, vec![], "slot 1 is still missing");
    assert_eq!(r.chosen_upto(), 0);

    r.step(env(2, 1, chosen(vec![(1, cmd(b"A"))])));

    assert_eq!(
        r.ready(),
        Ready {
            persist: vec![op_chosen(1, cmd(b"A"))],
            chosen: vec![
                entry(1, cmd(b"A")),
                entry(2, cmd(b"B")),
                entry(3, Value::Noop)
            ],
            ..Ready::default()
        }
    );
}

#[test]
fn partial_chosen_reply_asks_again_for_the_rest() {
    let mut r = replica(1, 3);
    r.step(env(2, 1, heartbeat(b(1, 2), 3, 1)));
    drain(&mut r);

    r.step(env(2, 1, chosen(vec![(1, cmd(b"A"))])));

    assert_eq!(
        r.ready(),
        Ready {
            messages: vec![env(
                1,
                2,
                Message::CatchUp {
                    first_slot: 2,
                    last_slot: 3
                }
            )],
            persist: vec![op_chosen(1, cmd(b"A"))],
            chosen: vec![entry(1, cmd(b"A"))],
            ..Ready::default()
        }
    );
}

#[test]
fn chosen_values_already_known_are_neither_persisted_nor_applied_again() {
    let mut r = follower_with_three_accepted();
    r.step(env(2, 1, heartbeat(b(2, 2), 2, 1)));
    drain(&mut r);

    r.step(env(2, 1, chosen(vec![(1, cmd(b"A")), (2, cmd(b"B"))])));

    assert_quiet(&r);
    assert_eq!(r.ready(), Ready::default());
}

/// `n1` of three restarted with slots 1..=3 accepted at 2.2 (promise 2.2)
/// and slots 1..=2 applied by its state machine.
fn restarted_with_two_applied() -> Replica {
    let state = recovered(
        b(2, 2),
        vec![
            (1, b(2, 2), cmd(b"A")),
            (2, b(2, 2), cmd(b"B")),
            (3, b(2, 2), cmd(b"C")),
        ],
        vec![],
    );
    Replica::new(config(1, 3), state, 2).unwrap()
}

#[test]
fn restart_takes_applied_slots_as_chosen_and_never_hands_them_out_again() {
    let mut r = restarted_with_two_applied();
    assert_eq!(r.chosen_upto(), 2);
    assert_eq!(r.chosen_value(2), Some(&cmd(b"B")));
    assert_eq!(r.chosen_value(3), None);
    assert_quiet(&r);

    r.step(env(2, 1, heartbeat(b(2, 2), 3, 1)));

    assert_eq!(
        r.ready(),
        Ready {
            messages: vec![env(1, 2, heartbeat_ack(b(2, 2), 1))],
            chosen: vec![entry(3, cmd(b"C"))],
            ..Ready::default()
        },
        "only slot 3; 1 and 2 were applied before the restart"
    );
}

#[test]
fn restart_hands_out_recovered_chosen_slots_above_the_applied_one() {
    let state = recovered(
        b(2, 2),
        vec![(1, b(2, 2), cmd(b"A"))],
        vec![(2, cmd(b"B")), (3, cmd(b"C")), (5, cmd(b"E"))],
    );
    let mut r = Replica::new(config(1, 3), state, 1).unwrap();
    assert_eq!(r.chosen_upto(), 3);

    assert_eq!(
        r.ready(),
        Ready {
            chosen: vec![entry(2, cmd(b"B")), entry(3, cmd(b"C"))],
            ..Ready::default()
        }
    );
}

#[test]
fn has_ready_reports_recovered_chosen_slots_above_the_applied_one() {
    let state = recovered(b(2, 2), vec![], vec![(1, cmd(b"A"))]);
    let r = Replica::new(config(1, 3), state, 0).unwrap();
    assert_eq!(r.chosen_upto(), 1);

    assert!(r.has_ready(), "slot 1 is chosen and not yet applied");
}

#[test]
fn catch_up_is_answered_with_chosen_slots_only() {
    let mut r = restarted_with_two_applied();

    r.step(env(
        3,
        1,
        Message::CatchUp {
            first_slot: 1,
            last_slot: 3,
        },
    ));

    assert_eq!(
        r.ready(),
        Ready {
            messages: vec![env(1, 3, chosen(vec![(1, cmd(b"A")), (2, cmd(b"B"))]))],
            ..Ready::default()
        },
        "slot 3 is only accepted here: it may not be the chosen value"
    );
    r.advance();

    r.step(env(
        3,
        1,
        Message::CatchUp {
            first_slot: 3,
            last_slot: 3,
        },
    ));
    assert_quiet(&r);
}

#[test]
fn catch_up_answer_is_bounded_by_message_slots_max() {
    let mut config = config(1, 3);
    config.message_slots_max = 2;
    let state = recovered(b(1, 2), vec![], (1..=5).map(|s| (s, Value::Noop)).collect());
    let mut r = Replica::new(config, state, 5).unwrap();

    r.step(env(
        2,
        1,
        Message::CatchUp {
            first_slot: 2,
            last_slot: 5,
        },
    ));

    assert_eq!(
        r.ready().messages,
        vec![env(1, 2, chosen(vec![(2, Value::Noop), (3, Value::Noop)]))]
    );
}

#[test]
fn misaddressed_and_self_claimed_messages_are_ignored() {
    let mut r = follower_with_three_accepted();
    let messages = [
        prepare(b(9, 3), 1),
        accept(b(9, 3), vec![(1, cmd(b"X"))], 1),
        heartbeat(b(9, 3), 3, 1),
        chosen(vec![(1, cmd(b"X"))]),
        nack(b(2, 2), b(9, 3)),
        Message::CatchUp {
            first_slot: 1,
            last_slot: 3,
        },
    ];
    for message in messages {
        r.step(env(3, 2, message.clone())); // addressed to n2
        r.step(env(1, 1, message)); // claims to come from n1 itself
    }

    assert_quiet(&r);
    assert_eq!(r.promised(), b(2, 2));
    assert_eq!(r.leader_hint(), Some(n(2)));
    assert_eq!(r.role(), Role::Follower);
    assert_eq!(r.chosen_upto(), 0);
    // The log is untouched: the real leader's commit point still works.
    r.step(env(2, 1, heartbeat(b(2, 2), 1, 2)));
    assert_eq!(r.ready().chosen, vec![entry(1, cmd(b"A"))]);
}

// A member that has not yet learned the change that added a replica must
// still follow that replica when it leads, or it could never catch up.
#[test]
fn a_leader_outside_every_known_configuration_is_followed() {
    let mut r = follower_with_three_accepted();
    r.step(env(9, 1, accept(b(9, 9), vec![(4, cmd(b"D"))], 0)));
    assert_eq!(r.leader_hint(), Some(n(9)));
    assert_eq!(r.promised(), b(9, 9));
    let ready = r.ready();
    assert_eq!(
        ready.persisted_messages,
        vec![env(1, 9, accepted(b(9, 9), vec![4]))]
    );
}

// A catch-up reply can reach a replica after it has become leader and
// re-proposed the same slot (Paxos guarantees the same value).
#[test]
fn leader_learning_an_in_flight_slot_from_a_chosen_reply_finishes_it() {
    let mut r = replica(1, 3);
    // n1 follows n2, missed slot 1, and asks n2 for it.
    r.step(env(2, 1, heartbeat(b(1, 2), 1, 1)));
    assert!(r.ready().messages.contains(&env(
        1,
        2,
        Message::CatchUp {
            first_slot: 1,
            last_slot: 1
        }
    )));
    r.advance();
    // n2 goes quiet; n1 is elected with n3, which reports slot 1.
    tick_until_candidate(&mut r, 20);
    let _ = take(&mut r);
    let ballot = r.ballot();
    r.step(env(
        3,
        1,
        promise(ballot, 1, vec![p_accepted(1, b(1, 2), cmd(b"A"))]),
    ));
    assert_eq!(r.role(), Role::Leader);
    let _ = take(&mut r);
    assert_eq!(r.inflight_count(), 1);

    // n2's late reply arrives.
    r.step(env(2, 1, chosen(vec![(1, cmd(b"A"))])));

    assert_eq!(r.role(), Role::Leader);
    assert_eq!(r.chosen_upto(), 1);
    assert_eq!(r.inflight_count(), 0, "slot 1 is no longer in flight");
    assert_eq!(r.ready().chosen, vec![entry(1, cmd(b"A"))]);
}
