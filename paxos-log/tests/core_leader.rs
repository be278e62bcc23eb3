//! Engine tests of the leader's phase 2 pipeline: quorum counting, batching,
//! flow control, stepping down, retransmission and check-quorum.
//!
//! Goal: a slot is chosen exactly when a quorum's acceptances are durable,
//! the leader's own counting only once its own write is (after `advance`);
//! commands are cut into batched slots within `batch_commands_max` /
//! `batch_bytes_max`, at most `inflight_slots_max` in flight and at most
//! `pending_commands_max` queued; a leader refused by a higher promise, or
//! cut off from every peer, steps down; lost `Accept`s are re-sent to exactly
//! the members that did not acknowledge them.
//!
//! Method: elect `n1` by feeding it promises (see `common::elect`), then
//! feed ONE input (`propose`, `tick`, or a peer's message) and compare the
//! whole `Ready`, or the exact sequence of `chosen_upto` values, with
//! `assert_eq!`.
//!
//! Reference: "Paxos Made Simple" (Lamport, 2001), §2.2 (a value is chosen
//! when a majority of acceptors accepted it) and §3 (the distinguished
//! proposer, one instance per command, several instances in flight).

mod common;

use common::*;
use paxos_log::{Config, Message, ProposeError, Ready, Role};

fn leader_config(size: u64, edit: impl FnOnce(&mut Config)) -> Config {
    let mut config = config(1, size);
    edit(&mut config);
    config
}

#[test]
fn propose_sends_accept_to_peers_and_persists_the_leaders_own_acceptance() {
    let (mut r, ballot) = leader(1, 3);

    r.propose(b"x".to_vec()).unwrap();

    assert_eq!(
        r.ready(),
        Ready {
            messages: to_each(1, &[2, 3], &accept(ballot, vec![(1, cmd(b"x"))], 0)),
            persist: vec![op_accept(1, ballot, cmd(b"x"))],
            ..Ready::default()
        },
        "Accepts leave before the leader's own write: they promise nothing"
    );
    assert_eq!(r.inflight_count(), 1);
}

// The leader is an acceptor too: its acceptance is a vote only once durable.
#[test]
fn one_peer_ack_does_not_choose_until_the_leaders_own_write_is_advanced() {
    let (mut r, ballot) = leader(1, 3);
    r.propose(b"x".to_vec()).unwrap();
    let _ = r.ready(); // the leader's own Accept is being written

    r.step(env(2, 1, accepted(ballot, vec![1])));
    assert_eq!(
        r.chosen_upto(),
        0,
        "n2 alone is 1 of 3: the leader's write is not durable yet"
    );

    r.advance();
    assert_eq!(r.chosen_upto(), 1, "n2 + n1's durable acceptance: 2 of 3");
    assert_eq!(r.inflight_count(), 0);
    assert_eq!(
        r.ready(),
        Ready {
            chosen: vec![entry(1, cmd(b"x"))],
            ..Ready::default()
        }
    );
}

#[test]
fn one_peer_ack_after_the_leaders_own_advanced_ack_chooses() {
    let (mut r, ballot) = leader(1, 3);
    r.propose(b"x".to_vec()).unwrap();
    let _ = take(&mut r);
    assert_eq!(r.chosen_upto(), 0, "the leader's own acceptance is 1 of 3");

    r.step(env(3, 1, accepted(ballot, vec![1])));

    assert_eq!(r.chosen_upto(), 1);
    assert_eq!(r.chosen_value(1), Some(&cmd(b"x")));
    assert!(r.has_ready(), "slot 1 is chosen and must be handed out");
    assert_eq!(
        r.ready(),
        Ready {
            chosen: vec![entry(1, cmd(b"x"))],
            ..Ready::default()
        }
    );
}

#[test]
fn five_members_need_three_distinct_acceptances() {
    let (mut r, ballot) = leader(1, 5);
    r.propose(b"x".to_vec()).unwrap();
    let _ = take(&mut r);

    let mut upto = Vec::new();
    for (from, message) in [
        (2, accepted(ballot, vec![1])),
        (2, accepted(ballot, vec![1])),  // duplicate: still n1 + n2
        (3, accepted(b(0, 3), vec![1])), // another ballot: not a vote
        (4, accepted(ballot, vec![2])),  // another slot
        (5, accepted(ballot, vec![1])),
    ] {
        r.step(env(from, 1, message));
        upto.push(r.chosen_upto());
    }

    assert_eq!(upto, vec![0, 0, 0, 0, 1]);
}

#[test]
fn slots_are_chosen_out_of_order_but_emitted_in_order() {
    let (mut r, ballot) = leader_with(leader_config(3, |c| c.batch_commands_max = 1));
    r.propose(b"a".to_vec()).unwrap();
    r.propose(b"b".to_vec()).unwrap();
    let _ = take(&mut r);

    r.step(env(2, 1, accepted(ballot, vec![2])));
    assert_eq!(r.chosen_value(2), Some(&cmd(b"b")));
    assert_eq!(r.chosen_upto(), 0, "slot 1 is still open");
    r.step(env(2, 1, accepted(ballot, vec![1])));

    assert_eq!(
        r.ready().chosen,
        vec![entry(1, cmd(b"a")), entry(2, cmd(b"b"))]
    );
}

#[test]
fn commands_proposed_before_ready_share_one_slot() {
    let (mut r, ballot) = leader(1, 3);

    for command in [b"a", b"b", b"c"] {
        r.propose(command.to_vec()).unwrap();
    }

    assert_eq!(
        r.ready(),
        Ready {
            messages: to_each(
                1,
                &[2, 3],
                &accept(ballot, vec![(1, cmds(&[b"a", b"b", b"c"]))], 0)
            ),
            persist: vec![op_accept(1, ballot, cmds(&[b"a", b"b", b"c"]))],
            ..Ready::default()
        }
    );
}

#[test]
fn queued_commands_are_batched_up_to_batch_commands_max() {
    let (mut r, ballot) = leader_with(leader_config(3, |c| {
        c.inflight_slots_max = 1;
        c.batch_commands_max = 2;
    }));
    r.propose(b"a".to_vec()).unwrap();
    let _ = take(&mut r);
    // The pipeline is full: these wait.
    for command in [b"b", b"c", b"d", b"e", b"f"] {
        r.propose(command.to_vec()).unwrap();
    }
    let _ = take(&mut r);
    assert_eq!((r.inflight_count(), r.pending_count()), (1, 5));

    // Slot 1 chosen: the pipeline has room for one more slot of 2 commands.
    r.step(env(2, 1, accepted(ballot, vec![1])));

    assert_eq!(
        r.ready(),
        Ready {
            messages: to_each(
                1,
                &[2, 3],
                &accept(ballot, vec![(2, cmds(&[b"b", b"c"]))], 1)
            ),
            persist: vec![op_accept(2, ballot, cmds(&[b"b", b"c"]))],
            chosen: vec![entry(1, cmd(b"a"))],
            ..Ready::default()
        }
    );
    assert_eq!((r.inflight_count(), r.pending_count()), (1, 3));
}

#[test]
fn queued_commands_are_batched_up_to_batch_bytes_max() {
    let (mut r, ballot) = leader_with(leader_config(3, |c| {
        c.inflight_slots_max = 1;
        c.batch_bytes_max = 10;
    }));
    r.propose(b"0000".to_vec()).unwrap();
    let _ = take(&mut r);
    for command in [&b"aaaa"[..], b"bbbb", b"cccc", &[b'z'; 25]] {
        r.propose(command.to_vec()).unwrap();
    }
    let _ = take(&mut r);
    assert_eq!(r.pending_count(), 4);

    // 4 + 4 bytes fit in 10; a third command would make 12.
    r.step(env(2, 1, accepted(ballot, vec![1])));
    let ready = take(&mut r);
    assert_eq!(
        ready.persist,
        vec![op_accept(2, ballot, cmds(&[b"aaaa", b"bbbb"]))]
    );

    // 4 + 25 bytes do not fit: cccc goes alone.
    r.step(env(2, 1, accepted(ballot, vec![2])));
    let ready = take(&mut r);
    assert_eq!(ready.persist, vec![op_accept(3, ballot, cmd(b"cccc"))]);

    // A command larger than the bound still gets a slot, alone.
    r.step(env(2, 1, accepted(ballot, vec![3])));
    let ready = take(&mut r);
    assert_eq!(ready.persist, vec![op_accept(4, ballot, cmd(&[b'z'; 25]))]);
    assert_eq!(r.pending_count(), 0);
}

#[test]
fn at_most_inflight_slots_max_slots_are_in_flight_and_the_rest_is_queued() {
    let (mut r, ballot) = leader_with(leader_config(3, |c| {
        c.inflight_slots_max = 2;
        c.batch_commands_max = 1;
    }));

    for command in [b"a", b"b", b"c", b"d", b"e"] {
        r.propose(command.to_vec()).unwrap();
    }

    let ready = take(&mut r);
    assert_eq!((r.inflight_count(), r.pending_count()), (2, 3));
    assert_eq!(
        ready.persist,
        vec![
            op_accept(1, ballot, cmd(b"a")),
            op_accept(2, ballot, cmd(b"b"))
        ]
    );
    let mut sent: Vec<_> = ready.messages.iter().map(|e| (e.to, &e.message)).collect();
    sent.sort_by_key(|(to, _)| *to);
    let slot_1 = accept(ballot, vec![(1, cmd(b"a"))], 0);
    let slot_2 = accept(ballot, vec![(2, cmd(b"b"))], 0);
    let both = accept(ballot, vec![(1, cmd(b"a")), (2, cmd(b"b"))], 0);
    assert!(
        sent == vec![
            (n(2), &slot_1),
            (n(2), &slot_2),
            (n(3), &slot_1),
            (n(3), &slot_2)
        ] || sent == vec![(n(2), &both), (n(3), &both)],
        "slots 1 and 2, and nothing else, go to both peers: {sent:?}"
    );

    // Slot 2 is chosen: one slot frees up, one command moves into it.
    r.step(env(3, 1, accepted(ballot, vec![2])));

    assert_eq!(
        r.ready().messages,
        to_each(1, &[2, 3], &accept(ballot, vec![(3, cmd(b"c"))], 0)),
        "commit_upto stays 0: slot 1 is still open"
    );
    assert_eq!((r.inflight_count(), r.pending_count()), (2, 2));
}

#[test]
fn propose_is_busy_past_pending_commands_max() {
    let (mut r, _) = leader_with(leader_config(3, |c| {
        c.inflight_slots_max = 1;
        c.batch_commands_max = 1;
        c.pending_commands_max = 2;
    }));
    r.propose(b"a".to_vec()).unwrap();
    let _ = take(&mut r); // slot 1 in flight: the pipeline is full
    r.propose(b"b".to_vec()).unwrap(); // queued
    r.propose(b"c".to_vec()).unwrap(); // queued

    assert_eq!(r.propose(b"d".to_vec()), Err(ProposeError::Busy));
    assert_eq!((r.inflight_count(), r.pending_count()), (1, 2));
}

#[test]
fn follower_and_candidate_refuse_proposals_with_a_leader_hint() {
    let mut r = replica(1, 3);
    assert_eq!(
        r.propose(b"x".to_vec()),
        Err(ProposeError::NotLeader { leader_hint: None })
    );

    r.step(env(2, 1, heartbeat(b(1, 2), 0, 1)));
    assert_eq!(
        r.propose(b"x".to_vec()),
        Err(ProposeError::NotLeader {
            leader_hint: Some(n(2))
        })
    );
    drain(&mut r);

    tick_until_candidate(&mut r, 20);
    assert_eq!(
        r.propose(b"x".to_vec()),
        Err(ProposeError::NotLeader { leader_hint: None })
    );
    assert_eq!(r.pending_count(), 0);
}

#[test]
fn nack_with_a_higher_promise_makes_the_leader_step_down_and_drop_its_queue() {
    let (mut r, ballot) = leader_with(leader_config(3, |c| {
        c.inflight_slots_max = 1;
        c.batch_commands_max = 1;
    }));
    for command in [b"a", b"b", b"c"] {
        r.propose(command.to_vec()).unwrap();
    }
    drain(&mut r);
    assert_eq!((r.inflight_count(), r.pending_count()), (1, 2));

    r.step(env(2, 1, nack(ballot, b(5, 3))));

    assert_eq!(r.role(), Role::Follower);
    assert_eq!((r.inflight_count(), r.pending_count()), (0, 0));
    assert_eq!(
        r.propose(b"d".to_vec()),
        Err(ProposeError::NotLeader { leader_hint: None })
    );
    assert_quiet(&r);
    // A late acceptance of the abandoned slot chooses nothing.
    r.step(env(2, 1, accepted(ballot, vec![1])));
    assert_eq!(r.chosen_upto(), 0);
    // Its next election goes above the promise the Nack reported.
    tick_until_candidate(&mut r, 20);
    assert_eq!(r.ballot(), b(6, 1));
}

#[test]
fn nack_with_a_higher_promise_makes_a_candidate_step_down() {
    let mut r = replica(1, 3);
    tick_until_candidate(&mut r, 20);
    let _ = take(&mut r);

    r.step(env(3, 1, nack(b(1, 1), b(2, 3))));

    assert_eq!(r.role(), Role::Follower);
    // A promise that arrives afterwards does not make it leader.
    r.step(env(2, 1, promise(b(1, 1), 1, vec![])));
    assert_eq!(r.role(), Role::Follower);
}

#[test]
fn nack_for_another_ballot_is_ignored_by_the_leader() {
    let (mut r, _) = leader(1, 3);

    r.step(env(2, 1, nack(b(0, 1), b(5, 3))));

    assert_eq!(r.role(), Role::Leader);
    assert_quiet(&r);
}

#[test]
fn unacknowledged_slot_is_resent_on_the_heartbeat_tick_to_exactly_the_members_that_did_not_ack() {
    let (mut r, ballot) = leader(1, 5);
    r.propose(b"x".to_vec()).unwrap();
    let _ = take(&mut r); // n1's own acceptance is durable and counted
    r.step(env(2, 1, accepted(ballot, vec![1])));
    assert_eq!(r.chosen_upto(), 0, "n1 + n2 is 2 of 5");

    r.tick();
    assert_quiet(&r); // not a heartbeat tick
    r.tick();

    let mut messages = to_each(1, &[2, 3, 4, 5], &heartbeat(ballot, 0, 2));
    messages.extend(to_each(
        1,
        &[3, 4, 5],
        &accept(ballot, vec![(1, cmd(b"x"))], 0),
    ));
    assert_eq!(
        r.ready(),
        Ready {
            messages,
            ..Ready::default()
        }
    );
    r.advance();

    // n3 acknowledges the retransmission: chosen, nothing left to resend.
    r.step(env(3, 1, accepted(ballot, vec![1])));
    let _ = take(&mut r);
    assert_eq!(
        tick_until_heartbeat(&mut r),
        Ready {
            messages: to_each(1, &[2, 3, 4, 5], &heartbeat(ballot, 1, 3)),
            ..Ready::default()
        }
    );
}

#[test]
fn leader_that_hears_from_no_peer_steps_down_after_election_timeout_ticks_max() {
    let (mut r, _) = leader(1, 3);
    let window = 20; // election_timeout_ticks_max of the default config

    for tick in 1..window {
        r.tick();
        assert_eq!(r.role(), Role::Leader, "stepped down early, tick {tick}");
        drain(&mut r);
    }
    r.tick();

    assert_eq!(r.role(), Role::Follower);
    assert_eq!(r.leader_hint(), None);
}

#[test]
fn leader_that_hears_from_a_quorum_stays_leader() {
    let (mut r, ballot) = leader(1, 3);
    for tick in 1..=200 {
        r.tick();
        if r.has_ready() {
            let ready = take(&mut r);
            // n2 answers every heartbeat; n3 is gone.
            for envelope in ready.messages {
                if let Message::Heartbeat { probe, .. } = envelope.message {
                    if envelope.to == n(2) {
                        r.step(env(2, 1, heartbeat_ack(ballot, probe)));
                    }
                }
            }
        }
        assert_eq!(r.role(), Role::Leader, "stepped down at tick {tick}");
    }
}

#[test]
fn leader_own_acceptances_do_not_count_as_hearing_from_a_peer() {
    let (mut r, _) = leader(1, 3);

    // Clients keep proposing to the cut-off leader; its own acceptances
    // come back to it on every advance, but no peer ever answers.
    let mut stepped_down_at = None;
    for tick in 1..=30 {
        if r.role() == Role::Leader {
            r.propose(vec![tick]).unwrap();
            drain(&mut r);
        }
        r.tick();
        drain(&mut r);
        if r.role() == Role::Follower && stepped_down_at.is_none() {
            stepped_down_at = Some(tick);
        }
    }

    assert_eq!(
        stepped_down_at,
        Some(20),
        "no peer answered for election_timeout_ticks_max (20) ticks"
    );
}
