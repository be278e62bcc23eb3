//! Engine tests of elections: the election timer, phase 1a, and how a
//! candidate turns a quorum of promises into a leader's first proposals.
//!
//! Goal: a follower that hears no leader starts an election in
//! `[election_timeout_ticks_min, election_timeout_ticks_max)` ticks with a
//! ballot above every ballot it has seen, asking from its first slot not
//! known chosen; a new leader takes over every open slot exactly as Paxos
//! requires (highest-ballot accepted value, else a no-op; a value reported
//! chosen is learned, not re-proposed) and proposes new commands after the
//! highest slot reported.
//!
//! Method: build one replica (`n1`) in a precise state by recovering
//! acceptor state or feeding it messages, feed ONE input (a tick or a
//! promise), and compare the whole `Ready` with `assert_eq!`.
//!
//! Reference: "Paxos Made Simple" (Lamport, 2001), §2.2 phase 1 and §3
//! ("Implementing a State Machine": the new leader's phase 1 for all
//! instances, no-ops for the gaps).

mod common;

use common::*;
use paxos_log::{Config, PersistOp, ProposeError, Ready, Replica, Role, Value};

#[test]
fn follower_that_hears_nothing_elects_itself_within_the_timeout_range() {
    for seed in 0..64 {
        let mut config = config(1, 3);
        config.rng_seed = seed;
        let (min, max) = (
            config.election_timeout_ticks_min,
            config.election_timeout_ticks_max,
        );
        let mut r = Replica::new(config, Default::default(), 0).unwrap();

        for _ in 1..min {
            r.tick();
            assert_eq!(r.role(), Role::Follower, "seed {seed}: election before min");
            assert_quiet(&r);
        }
        let ticks = (min - 1) + tick_until_candidate(&mut r, max - min + 1);
        assert!(ticks < max, "seed {seed}: election after {ticks} ticks");

        assert_eq!(
            r.ready(),
            Ready {
                messages: to_each(1, &[2, 3], &prepare(b(1, 1), 1)),
                persist: vec![PersistOp::Promise { ballot: b(1, 1) }],
                ..Ready::default()
            },
            "seed {seed}: Prepare to every peer; its own promise stays inside"
        );
        assert_eq!(r.ballot(), b(1, 1));
        assert_eq!(r.promised(), b(1, 1));
        assert_eq!(r.leader_hint(), None);
    }
}

#[test]
fn election_ballot_is_above_every_ballot_seen_and_starts_after_chosen_slots() {
    // Restarted with promise 3.3, slots 1..=3 accepted, 1..=2 applied.
    let state = recovered(
        b(3, 3),
        vec![
            (1, b(2, 2), cmd(b"A")),
            (2, b(3, 3), cmd(b"B")),
            (3, b(3, 3), cmd(b"C")),
        ],
        vec![],
    );
    let mut r = Replica::new(config(1, 3), state, 2).unwrap();
    // A heartbeat from a leader at 6.2 (not a promise, but seen) ...
    r.step(env(2, 1, heartbeat(b(6, 2), 0, 1)));
    drain(&mut r);
    // ... and a refusal naming a promise of 8.3 that n3 made.
    r.step(env(3, 1, nack(b(1, 1), b(8, 3))));
    drain(&mut r);

    tick_until_candidate(&mut r, 20);

    assert_eq!(
        r.ready(),
        Ready {
            messages: to_each(1, &[2, 3], &prepare(b(9, 1), 3)),
            persist: vec![PersistOp::Promise { ballot: b(9, 1) }],
            ..Ready::default()
        },
        "round above 8.3, first_slot = chosen_upto + 1 = 3"
    );
}

#[test]
fn election_ballot_is_above_the_ballot_of_the_last_leader_followed() {
    let mut r = replica(1, 3);
    r.step(env(2, 1, prepare(b(5, 2), 1)));
    drain(&mut r);
    // n3 won with 7.3 and n1 accepted from it; then n3 went quiet.
    r.step(env(3, 1, accept(b(7, 3), vec![(1, cmd(b"x"))], 0)));
    drain(&mut r);

    tick_until_candidate(&mut r, 20);

    assert_eq!(r.ballot(), b(8, 1));
    assert_eq!(
        r.ready().messages,
        to_each(1, &[2, 3], &prepare(b(8, 1), 1))
    );
}

#[test]
fn candidate_that_gets_no_quorum_retries_with_a_higher_ballot() {
    let mut r = replica(1, 3);
    tick_until_candidate(&mut r, 20);
    let _ = take(&mut r);
    assert_eq!(r.ballot(), b(1, 1));

    let mut ticks = 0;
    while !r.has_ready() {
        r.tick();
        ticks += 1;
        assert!(ticks < 20, "no new election within the timeout");
    }

    assert_eq!(r.role(), Role::Candidate);
    assert_eq!(
        r.ready(),
        Ready {
            messages: to_each(1, &[2, 3], &prepare(b(2, 1), 1)),
            persist: vec![PersistOp::Promise { ballot: b(2, 1) }],
            ..Ready::default()
        }
    );
}

#[test]
fn heartbeats_from_a_leader_hold_off_elections() {
    let mut r = replica(1, 3);
    for tick in 0..500u64 {
        if tick % 5 == 0 {
            r.step(env(2, 1, heartbeat(b(1, 2), 0, tick)));
            drain(&mut r);
        }
        r.tick();
        assert_eq!(r.role(), Role::Follower, "election at tick {tick}");
    }
    assert_eq!(r.leader_hint(), Some(n(2)));
}

#[test]
fn candidate_becomes_leader_on_a_quorum_of_promises_counting_its_own_after_advance() {
    let mut r = replica(1, 3);
    tick_until_candidate(&mut r, 20);
    let _ = r.ready();
    // n2's promise alone is not a quorum of 3 while n1's own is not durable.
    r.step(env(2, 1, promise(b(1, 1), 1, vec![])));
    assert_eq!(r.role(), Role::Candidate);

    r.advance();

    assert_eq!(r.role(), Role::Leader);
    assert_eq!(r.leader_hint(), Some(n(1)));
    assert_eq!(
        r.ready(),
        Ready {
            messages: to_each(1, &[2, 3], &heartbeat(b(1, 1), 0, 1)),
            ..Ready::default()
        },
        "nothing to take over: just the first heartbeat round"
    );
}

#[test]
fn promises_for_another_ballot_or_first_slot_do_not_count() {
    let mut r = replica(1, 5);
    tick_until_candidate(&mut r, 20);
    let _ = take(&mut r);
    assert_eq!(r.ballot(), b(1, 1));

    r.step(env(2, 1, promise(b(1, 1), 1, vec![])));
    r.step(env(3, 1, promise(b(0, 3), 1, vec![])));
    r.step(env(4, 1, promise(b(1, 1), 2, vec![])));
    r.step(env(2, 1, promise(b(1, 1), 1, vec![])));

    assert_eq!(r.role(), Role::Candidate, "n1 + n2 only: 2 of 5");
    assert_quiet(&r);
}

// Reference: "Paxos Made Simple" §2.2 (phase 2a: "v is the value of the
// highest-numbered proposal among the responses") and §3 (no-ops for gaps).
#[test]
fn new_leader_reproposes_highest_ballot_values_learns_chosen_ones_and_fills_holes() {
    let mut r = replica(1, 5);
    // n1 promised 3.3 once, so its next ballot is 4.1.
    r.step(env(3, 1, prepare(b(3, 3), 1)));
    drain(&mut r);
    tick_until_candidate(&mut r, 20);
    let _ = take(&mut r);
    let ballot = b(4, 1);
    assert_eq!(r.ballot(), ballot);

    r.step(env(
        2,
        1,
        promise(
            ballot,
            1,
            vec![
                p_accepted(1, b(2, 2), cmd(b"A")),
                p_accepted(2, b(2, 2), cmd(b"B-old")),
                p_accepted(4, b(1, 2), cmd(b"D")),
            ],
        ),
    ));
    assert_eq!(r.role(), Role::Candidate);
    r.step(env(
        3,
        1,
        promise(
            ballot,
            1,
            vec![
                p_chosen(1, cmd(b"A")),
                p_accepted(2, b(3, 3), cmd(b"B-new")),
                p_accepted(6, b(2, 3), cmd(b"F")),
            ],
        ),
    ));

    assert_eq!(r.role(), Role::Leader);
    let take_over = accept(
        ballot,
        vec![
            (2, cmd(b"B-new")),
            (3, Value::Noop),
            (4, cmd(b"D")),
            (5, Value::Noop),
            (6, cmd(b"F")),
        ],
        1,
    );
    // Leadership is announced at once; the open slots are filled when the
    // Ready is taken.
    let mut messages = to_each(1, &[2, 3, 4, 5], &heartbeat(ballot, 1, 1));
    messages.extend(to_each(1, &[2, 3, 4, 5], &take_over));
    assert_eq!(
        r.ready(),
        Ready {
            messages,
            persist: vec![
                op_chosen(1, cmd(b"A")),
                op_accept(2, ballot, cmd(b"B-new")),
                op_accept(3, ballot, Value::Noop),
                op_accept(4, ballot, cmd(b"D")),
                op_accept(5, ballot, Value::Noop),
                op_accept(6, ballot, cmd(b"F")),
            ],
            chosen: vec![entry(1, cmd(b"A"))],
            ..Ready::default()
        },
        "slot 1 reported chosen: learned (persisted as Chosen), not re-proposed"
    );
    r.advance();
    assert_eq!(r.chosen_upto(), 1);
    assert_eq!(r.inflight_count(), 5);

    // New commands go after the highest slot any promise reported.
    r.propose(b"G".to_vec()).unwrap();
    assert_eq!(
        r.ready().messages,
        to_each(1, &[2, 3, 4, 5], &accept(ballot, vec![(7, cmd(b"G"))], 1))
    );
}

#[test]
fn new_leader_with_a_restarted_log_asks_only_from_its_first_unchosen_slot() {
    let state = recovered(
        b(2, 2),
        vec![(1, b(1, 2), cmd(b"A")), (2, b(2, 2), cmd(b"B"))],
        vec![],
    );
    let mut r = Replica::new(config(1, 3), state, 1).unwrap();
    tick_until_candidate(&mut r, 20);
    let first = take(&mut r);
    assert_eq!(first.messages, to_each(1, &[2, 3], &prepare(b(3, 1), 2)));

    // n1's own promise reported slot 2; n2 reports slot 2 at the same ballot
    // (and a stale slot 1, below first_slot, which is ignored).
    r.step(env(
        2,
        1,
        promise(
            b(3, 1),
            2,
            vec![
                p_accepted(1, b(1, 2), cmd(b"stale")),
                p_accepted(2, b(2, 2), cmd(b"B")),
            ],
        ),
    ));

    assert_eq!(r.role(), Role::Leader);
    let mut messages = to_each(1, &[2, 3], &heartbeat(b(3, 1), 1, 1));
    messages.extend(to_each(
        1,
        &[2, 3],
        &accept(b(3, 1), vec![(2, cmd(b"B"))], 1),
    ));
    assert_eq!(
        r.ready(),
        Ready {
            messages,
            persist: vec![op_accept(2, b(3, 1), cmd(b"B"))],
            ..Ready::default()
        }
    );
}

#[test]
fn leader_steps_down_on_a_higher_prepare_and_promises_it() {
    let (mut r, _) = leader(1, 3);

    r.step(env(3, 1, prepare(b(5, 3), 1)));

    assert_eq!(r.role(), Role::Follower);
    assert_eq!(r.leader_hint(), Some(n(3)));
    assert_eq!(
        r.propose(b"x".to_vec()),
        Err(ProposeError::NotLeader {
            leader_hint: Some(n(3))
        })
    );
    assert_eq!(
        r.ready(),
        Ready {
            persist: vec![PersistOp::Promise { ballot: b(5, 3) }],
            persisted_messages: vec![env(1, 3, promise(b(5, 3), 1, vec![]))],
            ..Ready::default()
        }
    );
}

#[test]
fn candidate_steps_down_on_an_accept_from_a_higher_leader() {
    let mut r = replica(1, 3);
    tick_until_candidate(&mut r, 20);
    let _ = take(&mut r);

    r.step(env(2, 1, accept(b(2, 2), vec![(1, cmd(b"x"))], 0)));

    assert_eq!(r.role(), Role::Follower);
    assert_eq!(r.leader_hint(), Some(n(2)));
    assert_eq!(
        r.ready(),
        Ready {
            persist: vec![op_accept(1, b(2, 2), cmd(b"x"))],
            persisted_messages: vec![env(1, 2, accepted(b(2, 2), vec![1]))],
            ..Ready::default()
        }
    );
}

#[test]
fn single_member_group_elects_itself_once_its_promise_is_durable() {
    let config = Config::new(n(1), vec![n(1)]);
    let mut r = Replica::new(config, Default::default(), 0).unwrap();
    tick_until_candidate(&mut r, 20);
    assert_eq!(
        r.ready(),
        Ready {
            persist: vec![PersistOp::Promise { ballot: b(1, 1) }],
            ..Ready::default()
        }
    );
    assert_eq!(r.role(), Role::Candidate);

    r.advance();

    assert_eq!(r.role(), Role::Leader);
}

// Chunked catch-up replies may arrive out of order, so a replica can know a
// slot chosen above a hole. If it is then elected by peers alone (its own
// promise still being written), those peers may report that slot merely
// accepted.
#[test]
fn new_leader_does_not_repropose_a_slot_it_already_knows_chosen() {
    let mut r = replica(1, 3);
    r.step(env(2, 1, heartbeat(b(2, 2), 2, 1)));
    drain(&mut r);
    r.step(env(2, 1, chosen(vec![(2, cmd(b"B"))])));
    drain(&mut r);
    assert_eq!(r.chosen_value(2), Some(&cmd(b"B")));
    assert_eq!(r.chosen_upto(), 0, "slot 1 is still missing");
    tick_until_candidate(&mut r, 20);
    let ballot = r.ballot();
    let _ = r.ready(); // n1's own promise is being written

    let report = vec![p_chosen(1, cmd(b"A")), p_accepted(2, b(2, 2), cmd(b"B"))];
    r.step(env(2, 1, promise(ballot, 1, report.clone())));
    r.step(env(3, 1, promise(ballot, 1, report)));

    assert_eq!(r.role(), Role::Leader);
    assert_eq!(r.chosen_upto(), 2);
    assert_eq!(
        r.inflight_count(),
        0,
        "slot 2 is chosen: nothing to propose"
    );
    r.advance();
    assert_eq!(
        r.ready().chosen,
        vec![entry(1, cmd(b"A")), entry(2, cmd(b"B"))]
    );
}
