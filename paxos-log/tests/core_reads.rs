//! Engine tests of linearizable reads (read-index).
//!
//! Goal: a read is released (`Ready::reads`) only once the leader has
//! proved it still leads AFTER the read arrived: a heartbeat round started
//! after `read_index` must be acknowledged by a quorum, the leader counting
//! itself. The released slot is at least the commit point at the time of
//! the call (and at least what the leader's phase 1 recovered), so serving
//! the read after applying that slot sees every write acknowledged before
//! it. Only the leader serves reads.
//!
//! Method: elect `n1` by feeding it promises, feed ONE input (`read_index`
//! or a `HeartbeatAck`), and compare the whole `Ready` with `assert_eq!`.
//!
//! Reference: the read-index protocol of the Raft dissertation (Ongaro,
//! 2014), §6.4; for Paxos, "Paxos Made Live" (Chandra et al., 2007) §5.2
//! (master leases) states the problem it avoids.

mod common;

use common::*;
use paxos_log::{ProposeError, ReadReady, Ready, Replica, Role, Value};

/// `n1` leading a group of `size` with slot 1 chosen and applied; its next
/// heartbeat round is number 2 (round 1 went out on election).
fn leader_with_one_chosen(size: u64) -> (Replica, paxos_log::Ballot) {
    let (mut r, ballot) = leader(1, size);
    r.propose(b"w".to_vec()).unwrap();
    let _ = take(&mut r);
    for peer in 2..=size / 2 + 1 {
        r.step(env(peer, 1, accepted(ballot, vec![1])));
    }
    let ready = take(&mut r);
    assert_eq!(ready.chosen, vec![entry(1, cmd(b"w"))]);
    assert_eq!(r.chosen_upto(), 1);
    (r, ballot)
}

#[test]
fn read_index_on_a_follower_or_candidate_is_not_leader() {
    let mut r = replica(1, 3);
    assert_eq!(
        r.read_index(1),
        Err(ProposeError::NotLeader { leader_hint: None })
    );

    r.step(env(3, 1, heartbeat(b(1, 3), 0, 1)));
    assert_eq!(
        r.read_index(2),
        Err(ProposeError::NotLeader {
            leader_hint: Some(n(3))
        })
    );
    drain(&mut r);

    tick_until_candidate(&mut r, 20);
    assert_eq!(
        r.read_index(3),
        Err(ProposeError::NotLeader { leader_hint: None })
    );
}

#[test]
fn read_starts_a_heartbeat_round_and_waits_for_it() {
    let (mut r, ballot) = leader_with_one_chosen(3);

    r.read_index(7).unwrap();

    assert_eq!(
        r.ready(),
        Ready {
            messages: to_each(1, &[2, 3], &heartbeat(ballot, 1, 2)),
            ..Ready::default()
        },
        "a new round (2), and no read yet: the leader alone is 1 of 3"
    );
}

#[test]
fn read_is_released_when_one_peer_acks_its_round_in_three() {
    let (mut r, ballot) = leader_with_one_chosen(3);
    r.read_index(7).unwrap();
    let _ = take(&mut r);

    r.step(env(3, 1, heartbeat_ack(ballot, 2)));

    assert_eq!(
        r.ready(),
        Ready {
            reads: vec![ReadReady {
                read_id: 7,
                slot: 1
            }],
            ..Ready::default()
        },
        "n3 + the leader itself: 2 of 3"
    );
}

#[test]
fn read_needs_two_peer_acks_in_five() {
    let (mut r, ballot) = leader_with_one_chosen(5);
    r.read_index(7).unwrap();
    let _ = take(&mut r);

    r.step(env(4, 1, heartbeat_ack(ballot, 2)));
    r.step(env(4, 1, heartbeat_ack(ballot, 2)));
    assert_quiet(&r);
    r.step(env(2, 1, heartbeat_ack(ballot, 2)));

    assert_eq!(
        r.ready().reads,
        vec![ReadReady {
            read_id: 7,
            slot: 1
        }]
    );
}

#[test]
fn acks_of_a_round_started_before_the_read_do_not_release_it() {
    let (mut r, ballot) = leader_with_one_chosen(3);
    let round = tick_until_heartbeat(&mut r);
    assert_eq!(
        round.messages,
        to_each(1, &[2, 3], &heartbeat(ballot, 1, 2))
    );
    r.advance();

    r.read_index(9).unwrap();
    assert_eq!(
        r.ready().messages,
        to_each(1, &[2, 3], &heartbeat(ballot, 1, 3))
    );
    r.advance();

    // Both peers answer round 2, which may predate a new leader's election.
    r.step(env(2, 1, heartbeat_ack(ballot, 2)));
    r.step(env(3, 1, heartbeat_ack(ballot, 2)));
    assert_quiet(&r);

    r.step(env(2, 1, heartbeat_ack(ballot, 3)));
    assert_eq!(
        r.ready().reads,
        vec![ReadReady {
            read_id: 9,
            slot: 1
        }]
    );
}

#[test]
fn acks_at_another_ballot_do_not_release_a_read() {
    let (mut r, ballot) = leader_with_one_chosen(3);
    r.read_index(7).unwrap();
    let _ = take(&mut r);

    r.step(env(2, 1, heartbeat_ack(b(ballot.round + 1, 2), 2)));
    r.step(env(3, 1, heartbeat_ack(b(0, 1), 2)));

    assert_quiet(&r);
}

#[test]
fn read_slot_is_the_commit_point_at_the_time_of_the_call() {
    let (mut r, ballot) = leader_with_one_chosen(3);
    r.propose(b"x".to_vec()).unwrap();
    let _ = take(&mut r);
    r.read_index(7).unwrap(); // slot 2 is in flight, not chosen
    let _ = take(&mut r);
    r.step(env(2, 1, accepted(ballot, vec![2])));
    assert_eq!(r.chosen_upto(), 2);
    let _ = take(&mut r);
    r.read_index(8).unwrap();
    let _ = take(&mut r);

    r.step(env(2, 1, heartbeat_ack(ballot, 3)));

    assert_eq!(
        r.ready().reads,
        vec![
            ReadReady {
                read_id: 7,
                slot: 1
            },
            ReadReady {
                read_id: 8,
                slot: 2
            }
        ],
        "read 8 came after slot 2 was chosen: it must see it"
    );
}

#[test]
fn new_leader_releases_reads_only_once_the_slots_it_took_over_are_chosen() {
    let mut r = replica(1, 3);
    tick_until_candidate(&mut r, 20);
    let _ = take(&mut r);
    let ballot = r.ballot();
    // n2 reports slot 2 accepted (possibly chosen, and acknowledged to a
    // client); slot 1 is a hole.
    r.step(env(
        2,
        1,
        promise(ballot, 1, vec![p_accepted(2, b(0, 2), cmd(b"w"))]),
    ));
    assert_eq!(r.role(), Role::Leader);
    let _ = take(&mut r);

    r.read_index(5).unwrap();
    let _ = take(&mut r);
    r.step(env(2, 1, heartbeat_ack(ballot, 2)));
    assert_quiet(&r);

    r.step(env(2, 1, accepted(ballot, vec![1, 2])));

    assert_eq!(
        r.ready(),
        Ready {
            chosen: vec![entry(1, Value::Noop), entry(2, cmd(b"w"))],
            reads: vec![ReadReady {
                read_id: 5,
                slot: 2
            }],
            ..Ready::default()
        },
        "the read must see slot 2, which the old leader may have acknowledged"
    );
}

#[test]
fn reads_pending_when_the_leader_steps_down_are_never_released() {
    let (mut r, ballot) = leader_with_one_chosen(3);
    r.read_index(7).unwrap();
    let _ = take(&mut r);

    r.step(env(3, 1, nack(ballot, b(ballot.round + 1, 3))));
    r.step(env(2, 1, heartbeat_ack(ballot, 2)));

    assert_eq!(r.role(), Role::Follower);
    assert_quiet(&r);
}

#[test]
fn single_member_leader_releases_a_read_at_once() {
    let config = paxos_log::Config::new(n(1), vec![n(1)]);
    let mut r = Replica::new(config, Default::default(), 0).unwrap();
    tick_until_candidate(&mut r, 20);
    drain(&mut r);
    assert_eq!(r.role(), Role::Leader);

    r.read_index(4).unwrap();

    assert_eq!(
        r.ready(),
        Ready {
            reads: vec![ReadReady {
                read_id: 4,
                slot: 0
            }],
            ..Ready::default()
        }
    );
}
