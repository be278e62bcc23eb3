//! Engine tests of membership change under the α-window rule.
//!
//! Goal: a `Reconfigure` chosen in slot `r` governs every slot from `r + α`
//! on; a leader proposes slot `i` only once every slot up to `i - α` is
//! chosen; every slot's value is chosen by a majority of ITS configuration,
//! and every other quorum (phase 1 of a candidate, phase 1 of a leader
//! reaching a new configuration, read confirmation) is counted among a
//! majority of each configuration it is about. Around that: no-ops carry a
//! change into force without client load, one change at a time, a removed
//! leader steps down, a replica outside every configuration never campaigns
//! until a change adds it, and snapshots and restarts keep the
//! configurations.
//!
//! Method: as in the other `core_*` tests, drive one `Replica` (mostly a
//! leader `n1` of the genesis group `{n1, n2, n3}`, elected by feeding it
//! promises) into a precise state, feed ONE input (`reconfigure`,
//! `propose`, a tick, or a peer's message), and compare the whole `Ready`,
//! the role, or the configurations with `assert_eq!`. α is set small (2 or
//! 4) so windows are visible in a few slots.
//!
//! Reference: "Paxos Made Simple" (Lamport, 2001), end of §3 (the state
//! machine's configuration in the log, with α commands of lookahead);
//! `docs/protocol.md`, "Membership change".

mod common;

use common::*;
use paxos_log::membership::{validate_members, MEMBERS_MAX};
use paxos_log::{
    Ballot, Membership, Message, NodeId, PersistOp, ProposeError, ReadReady, Ready, RecoveredState,
    Replica, Role, Value,
};

/// `n1` leading genesis `{n1, n2, n3}` with α = `alpha` and one command per
/// slot, quiet. Its ballot is 1.1; `n1` and `n2` promised from slot 1.
fn leader_one_per_slot(alpha: u64) -> (Replica, Ballot) {
    let mut config = config_alpha(1, 3, alpha);
    config.batch_commands_max = 1;
    leader_with(config)
}

/// A replica of genesis `{n1, n2, n3}` with α = 2 that restarted after
/// applying slot 1, which holds `Reconfigure(new_members)`: slot 2 is still
/// governed by the genesis members, slot 3 on by `new_members`.
fn restarted_after_a_change(id: u64, alpha: u64, new_members: &[u64]) -> Replica {
    let state = recovered(b(1, 2), vec![(1, b(1, 2), reconf(new_members))], vec![]);
    Replica::new(config_alpha(id, 3, alpha), state, 1).unwrap()
}

/// A follower `n<id>` of genesis `{n1, n2, n3}` with α = 2 that learned
/// slots 1..=3 from leader 1.1: `a`, `Reconfigure{n1, n2, n4}`, a no-op.
/// The change governs from slot 4 on. Every `Ready` is carried out.
fn follower_that_learned_a_change(id: u64) -> Replica {
    let mut r = Replica::new(config_alpha(id, 3, 2), RecoveredState::default(), 0).unwrap();
    let entries = vec![(1, cmd(b"a")), (2, reconf(&[1, 2, 4])), (3, Value::Noop)];
    r.step(env(1, id, accept(b(1, 1), entries, 0)));
    drain(&mut r);
    r.step(env(1, id, heartbeat(b(1, 1), 3, 1)));
    drain(&mut r);
    assert_eq!(r.chosen_upto(), 3);
    r
}

// ---------------------------------------------------------------------------
// Rule 1: the window.

#[test]
fn leader_proposes_only_slots_within_alpha_of_its_chosen_prefix() {
    let mut config = config_alpha(1, 3, 2);
    config.batch_commands_max = 1;
    config.inflight_slots_max = 100;
    let (mut r, ballot) = leader_with(config);
    for command in [b"a", b"b", b"c", b"d", b"e"] {
        r.propose(command.to_vec()).unwrap();
    }

    assert_eq!(
        take(&mut r),
        Ready {
            messages: to_each(
                1,
                &[2, 3],
                &accept(ballot, vec![(1, cmd(b"a")), (2, cmd(b"b"))], 0)
            ),
            persist: vec![
                op_accept(1, ballot, cmd(b"a")),
                op_accept(2, ballot, cmd(b"b")),
            ],
            ..Ready::default()
        },
        "nothing chosen, α = 2: slots 1 and 2 only, although 100 may be in flight"
    );
    assert_eq!((r.inflight_count(), r.pending_count()), (2, 3));

    // Slot 2 chosen first does not move the window: slot 1 is still open.
    r.step(env(2, 1, accepted(ballot, vec![2])));
    assert_eq!(r.chosen_upto(), 0);
    assert_quiet(&r);

    r.step(env(3, 1, accepted(ballot, vec![1])));
    assert_eq!(
        take(&mut r),
        Ready {
            messages: to_each(
                1,
                &[2, 3],
                &accept(ballot, vec![(3, cmd(b"c")), (4, cmd(b"d"))], 2)
            ),
            persist: vec![
                op_accept(3, ballot, cmd(b"c")),
                op_accept(4, ballot, cmd(b"d")),
            ],
            chosen: vec![entry(1, cmd(b"a")), entry(2, cmd(b"b"))],
            ..Ready::default()
        },
        "chosen up to 2: the window reaches slot 4"
    );

    r.step(env(2, 1, accepted(ballot, vec![3])));
    assert_eq!(
        take(&mut r),
        Ready {
            messages: to_each(1, &[2, 3], &accept(ballot, vec![(5, cmd(b"e"))], 3)),
            persist: vec![op_accept(5, ballot, cmd(b"e"))],
            chosen: vec![entry(3, cmd(b"c"))],
            ..Ready::default()
        },
        "one more slot chosen, one more slot out"
    );
}

// ---------------------------------------------------------------------------
// Rule 2: each slot is chosen by a majority of its own configuration.

#[test]
fn slots_from_r_plus_alpha_go_to_and_are_chosen_by_the_new_members_only() {
    let (mut r, ballot) = leader_one_per_slot(2);
    r.reconfigure(ids(&[1, 2, 4])).unwrap(); // replaces n3 by n4
    for command in [b"a", b"b", b"c"] {
        r.propose(command.to_vec()).unwrap();
    }
    assert_eq!(
        take(&mut r),
        Ready {
            messages: to_each(
                1,
                &[2, 3],
                &accept(ballot, vec![(1, reconf(&[1, 2, 4])), (2, cmd(b"a"))], 0)
            ),
            persist: vec![
                op_accept(1, ballot, reconf(&[1, 2, 4])),
                op_accept(2, ballot, cmd(b"a")),
            ],
            ..Ready::default()
        },
        "the change goes first, in slot 1; both slots are the genesis members'"
    );

    // The change is chosen in slot 1: slot 3 = 1 + α is the new members'.
    r.step(env(2, 1, accepted(ballot, vec![1])));
    assert_eq!(
        take(&mut r),
        Ready {
            messages: to_each(1, &[2, 4], &accept(ballot, vec![(3, cmd(b"b"))], 1)),
            persist: vec![op_accept(3, ballot, cmd(b"b"))],
            chosen: vec![entry(1, reconf(&[1, 2, 4]))],
            ..Ready::default()
        },
        "slot 3 goes to n2 and n4, not to the removed n3"
    );
    assert_eq!(r.current_members(), ids(&[1, 2, 3]), "slot 2 is still n3's");
    assert_eq!(r.membership().members_at(3), ids(&[1, 2, 4]));

    // Slot 2 is the old configuration's: n4 does not vote there, n3 does.
    r.step(env(4, 1, accepted(ballot, vec![2])));
    assert_eq!(r.chosen_upto(), 1, "n4 is no member of slot 2");
    assert_quiet(&r);
    r.step(env(3, 1, accepted(ballot, vec![2])));
    assert_eq!(
        take(&mut r),
        Ready {
            messages: to_each(1, &[2, 4], &accept(ballot, vec![(4, cmd(b"c"))], 2)),
            persist: vec![op_accept(4, ballot, cmd(b"c"))],
            chosen: vec![entry(2, cmd(b"a"))],
            ..Ready::default()
        },
        "n1 + n3 choose slot 2"
    );

    // Slot 3 is the new configuration's: n3 does not vote there, n4 does.
    r.step(env(3, 1, accepted(ballot, vec![3])));
    assert_eq!(r.chosen_upto(), 2, "the removed n3 is no member of slot 3");
    assert_quiet(&r);
    r.step(env(4, 1, accepted(ballot, vec![3])));
    assert_eq!(
        take(&mut r),
        Ready {
            chosen: vec![entry(3, cmd(b"b"))],
            ..Ready::default()
        },
        "n1 + n4: a majority of {{n1, n2, n4}}"
    );
    assert_eq!(r.current_members(), ids(&[1, 2, 4]));
}

// ---------------------------------------------------------------------------
// Rule 3: phase 1 again, same ballot, when the window reaches a new
// configuration.

/// `n1` (ballot `ballot`) has `Reconfigure{n1, n4, n5}` chosen in slot 1
/// with α = 2 and `x` in flight in slot 2; `y` queued. Slot 3 is the new
/// configuration's, where only `n1` promised. Returns the `Ready` that
/// followed the change being chosen.
fn leader_reaching_n1_n4_n5(r: &mut Replica, ballot: Ballot) -> Ready {
    r.reconfigure(ids(&[1, 4, 5])).unwrap();
    r.propose(b"x".to_vec()).unwrap();
    r.propose(b"y".to_vec()).unwrap();
    let ready = take(r);
    assert_eq!(
        accepts_in(&ready),
        vec![(2, ballot, vec![1, 2]), (3, ballot, vec![1, 2])]
    );
    r.step(env(2, 1, accepted(ballot, vec![1])));
    take(r)
}

#[test]
fn leader_asks_a_new_configuration_to_promise_and_proposes_there_only_after_a_majority() {
    let (mut r, ballot) = leader_one_per_slot(2);

    assert_eq!(
        leader_reaching_n1_n4_n5(&mut r, ballot),
        Ready {
            messages: to_each(1, &[4, 5], &prepare(ballot, 3)),
            chosen: vec![entry(1, reconf(&[1, 4, 5]))],
            ..Ready::default()
        },
        "same ballot, from slot 3, to the members that did not promise; no Accept for slot 3"
    );
    assert_eq!((r.inflight_count(), r.pending_count()), (1, 1));
    r.tick();
    assert_quiet(&r);

    r.step(env(4, 1, promise(ballot, 3, vec![])));

    assert_eq!(
        take(&mut r),
        Ready {
            messages: to_each(1, &[4, 5], &accept(ballot, vec![(3, cmd(b"y"))], 1)),
            persist: vec![op_accept(3, ballot, cmd(b"y"))],
            ..Ready::default()
        },
        "n1 + n4 promised: a majority of {{n1, n4, n5}}, so the queued command goes out"
    );
}

#[test]
fn a_value_the_new_configuration_accepted_is_re_proposed_at_its_highest_ballot() {
    // Elect n1 above ballots 3.3 and 4.2, which earlier leaders used.
    let mut config = config_alpha(1, 3, 2);
    config.batch_commands_max = 1;
    let mut r = Replica::new(config, RecoveredState::default(), 0).unwrap();
    r.step(env(2, 1, heartbeat(b(5, 2), 0, 1)));
    drain(&mut r);
    let ballot = elect(&mut r, 3);
    assert_eq!(ballot, b(6, 1));
    let _ = leader_reaching_n1_n4_n5(&mut r, ballot);

    // n4 accepted "high" at 4.2 in slot 3, n5 "low" at 3.3.
    r.step(env(
        4,
        1,
        promise(ballot, 3, vec![p_accepted(3, b(4, 2), cmd(b"high"))]),
    ));
    r.step(env(
        5,
        1,
        promise(ballot, 3, vec![p_accepted(3, b(3, 3), cmd(b"low"))]),
    ));

    assert_eq!(
        take(&mut r),
        Ready {
            messages: to_each(1, &[4, 5], &accept(ballot, vec![(3, cmd(b"high"))], 1)),
            persist: vec![op_accept(3, ballot, cmd(b"high"))],
            ..Ready::default()
        },
        "slot 3 may hold a chosen value: the highest-ballot one, not the queued y"
    );
    assert_eq!(r.pending_count(), 1, "y waits for slot 4");
}

// ---------------------------------------------------------------------------
// Rule 4: a candidate needs a majority of every configuration of its window.

#[test]
fn a_candidate_needs_a_majority_of_each_configuration_in_its_window() {
    for order in [[2, 3, 4], [4, 5, 2]] {
        let mut r = restarted_after_a_change(1, 2, &[1, 4, 5]);
        assert_eq!(r.current_members(), ids(&[1, 2, 3]));
        assert_eq!(r.membership().members_at(3), ids(&[1, 4, 5]));
        tick_until_candidate(&mut r, 100);
        let ballot = r.ballot();
        assert_eq!(ballot, b(2, 1));
        assert_eq!(
            take(&mut r),
            Ready {
                messages: to_each(1, &[2, 3, 4, 5], &prepare(ballot, 2)),
                persist: vec![PersistOp::Promise { ballot }],
                ..Ready::default()
            },
            "window [2, 3]: every member of both configurations is asked"
        );

        let mut roles = Vec::new();
        for peer in order {
            r.step(env(peer, 1, promise(ballot, 2, vec![])));
            roles.push(r.role());
        }

        assert_eq!(
            roles,
            [Role::Candidate, Role::Candidate, Role::Leader],
            "promises in order {order:?}: a majority of one configuration is not enough"
        );
    }
}

// ---------------------------------------------------------------------------
// Rule 5: no-ops carry a change into force, and stop there.

#[test]
fn a_change_without_load_is_carried_into_force_by_noops_and_no_further() {
    let (mut r, ballot) = leader_with_alpha(1, 3, 4);
    r.reconfigure(ids(&[1, 2, 4])).unwrap();

    let entries = vec![
        (1, reconf(&[1, 2, 4])),
        (2, Value::Noop),
        (3, Value::Noop),
        (4, Value::Noop),
    ];
    assert_eq!(
        take(&mut r),
        Ready {
            messages: to_each(1, &[2, 3], &accept(ballot, entries.clone(), 0)),
            persist: entries
                .iter()
                .map(|(slot, value)| op_accept(*slot, ballot, value.clone()))
                .collect(),
            ..Ready::default()
        },
        "the change in slot 1 governs from 1 + α = 5: no-ops fill 2..=4"
    );

    r.step(env(2, 1, accepted(ballot, vec![1, 2, 3, 4])));
    assert_eq!(
        take(&mut r),
        Ready {
            chosen: entries.iter().map(|(s, v)| entry(*s, v.clone())).collect(),
            ..Ready::default()
        },
        "the change is in force: nothing more to propose"
    );
    assert_eq!(r.current_members(), ids(&[1, 2, 4]));
    assert!(!r.reconfiguring());

    let mut rounds = 0;
    for _ in 0..10 {
        r.tick();
        if r.has_ready() {
            rounds += 1;
            let ready = take(&mut r);
            assert!(
                ready
                    .messages
                    .iter()
                    .all(|e| matches!(e.message, Message::Heartbeat { .. })),
                "only heartbeats, no further no-ops: {ready:?}"
            );
            let to: Vec<u64> = ready.messages.iter().map(|e| e.to.0).collect();
            assert_eq!(to, [2, 4], "to the members now in force");
        }
    }
    assert_eq!(rounds, 5, "one heartbeat round every 2 ticks");
    assert_eq!((r.role(), r.inflight_count()), (Role::Leader, 0));
}

#[test]
fn a_new_leader_carries_a_chosen_change_into_force_with_noops() {
    // Chosen in slot 1 with α = 4: {n1, n4, n5} governs from slot 5.
    let mut r = restarted_after_a_change(1, 4, &[1, 4, 5]);
    tick_until_candidate(&mut r, 100);
    let ballot = r.ballot();
    let _ = take(&mut r);
    r.step(env(2, 1, promise(ballot, 2, vec![])));
    r.step(env(4, 1, promise(ballot, 2, vec![])));
    assert_eq!(r.role(), Role::Leader);

    let noops = vec![(2, Value::Noop), (3, Value::Noop), (4, Value::Noop)];
    let mut messages = to_each(1, &[2, 3, 4, 5], &heartbeat(ballot, 1, 1));
    messages.extend(to_each(1, &[2, 3], &accept(ballot, noops.clone(), 1)));
    assert_eq!(
        take(&mut r),
        Ready {
            messages,
            persist: noops
                .iter()
                .map(|(slot, value)| op_accept(*slot, ballot, value.clone()))
                .collect(),
            ..Ready::default()
        },
        "no-ops up to slot 4 = r + α - 1; nothing in slot 5 without load"
    );

    r.step(env(2, 1, accepted(ballot, vec![2, 3, 4])));
    let ready = take(&mut r);
    assert_eq!(ready.chosen.len(), 3);
    assert!(ready.messages.is_empty() && ready.persist.is_empty());
    assert_eq!(r.current_members(), ids(&[1, 4, 5]));
    assert_quiet(&r);
}

// ---------------------------------------------------------------------------
// Rule 6: reconfigure's errors, one change at a time.

#[test]
fn reconfigure_is_refused_unless_leader() {
    let mut r = replica(1, 3);
    assert_eq!(
        r.reconfigure(ids(&[1, 2, 4])),
        Err(ProposeError::NotLeader { leader_hint: None })
    );
    r.step(env(3, 1, heartbeat(b(1, 3), 0, 1)));
    assert_eq!(
        r.reconfigure(ids(&[1, 2, 4])),
        Err(ProposeError::NotLeader {
            leader_hint: Some(n(3))
        })
    );
    drain(&mut r);
    tick_until_candidate(&mut r, 100);
    assert_eq!(
        r.reconfigure(ids(&[1, 2, 4])),
        Err(ProposeError::NotLeader { leader_hint: None })
    );
    assert!(!r.reconfiguring());
}

#[test]
fn reconfigure_refuses_sets_that_cannot_be_a_configuration() {
    let (mut r, _) = leader(1, 3);
    let too_many: Vec<u64> = (1..=MEMBERS_MAX as u64 + 1).collect();
    for members in [vec![], vec![1, 2, 2], vec![0, 1, 2], too_many] {
        let members = ids(&members);
        let reason = validate_members(&members).unwrap_err();
        assert_eq!(
            r.reconfigure(members),
            Err(ProposeError::InvalidMembership(reason))
        );
    }
    assert!(!r.reconfiguring());
    assert_quiet(&r);

    let most: Vec<u64> = (1..=MEMBERS_MAX as u64).collect();
    assert_eq!(r.reconfigure(ids(&most)), Ok(()), "MEMBERS_MAX is allowed");
}

#[test]
fn one_change_at_a_time_until_it_is_in_force() {
    let (mut r, ballot) = leader_with_alpha(1, 3, 2);
    assert!(!r.reconfiguring());

    r.reconfigure(ids(&[1, 2, 4])).unwrap();
    assert!(r.reconfiguring());
    assert_eq!(
        r.reconfigure(ids(&[1, 2, 5])),
        Err(ProposeError::Reconfiguring),
        "queued"
    );

    let ready = take(&mut r);
    assert_eq!(
        ready.persist,
        vec![
            op_accept(1, ballot, reconf(&[1, 2, 4])),
            op_accept(2, ballot, Value::Noop),
        ],
        "the refused change was not queued"
    );
    assert!(r.reconfiguring());
    assert_eq!(
        r.reconfigure(ids(&[1, 2, 5])),
        Err(ProposeError::Reconfiguring),
        "in flight"
    );

    r.step(env(2, 1, accepted(ballot, vec![1])));
    drain(&mut r);
    assert_eq!(r.chosen_upto(), 1);
    assert!(r.reconfiguring());
    assert_eq!(
        r.reconfigure(ids(&[1, 2, 5])),
        Err(ProposeError::Reconfiguring),
        "chosen in slot 1, in force from slot 3"
    );

    r.step(env(2, 1, accepted(ballot, vec![2])));
    drain(&mut r);
    assert_eq!(r.chosen_upto(), 2);
    assert_eq!(r.current_members(), ids(&[1, 2, 4]));
    assert!(!r.reconfiguring());
    assert_eq!(r.reconfigure(ids(&[1, 2, 5])), Ok(()), "in force");
    assert!(r.reconfiguring());
}

/// A change can be chosen while a slot below it is still open: it is then
/// known chosen (no longer in flight) but not yet in the configurations.
#[test]
fn a_change_chosen_above_an_open_slot_still_refuses_another() {
    let (mut r, ballot) = leader_one_per_slot(4);
    r.propose(b"a".to_vec()).unwrap();
    let _ = take(&mut r); // slot 1: a
    r.reconfigure(ids(&[1, 2, 4])).unwrap();
    let ready = take(&mut r); // slot 2: the change; 3 and 4: no-ops
    assert_eq!(accepts_in(&ready)[0].2, vec![2, 3, 4]);

    r.step(env(2, 1, accepted(ballot, vec![2])));
    assert_eq!(r.chosen_value(2), Some(&reconf(&[1, 2, 4])));
    assert_eq!(r.chosen_upto(), 0, "slot 1 is still open");

    assert!(
        r.reconfiguring(),
        "a change is chosen in slot 2 and not in force"
    );
    assert_eq!(
        r.reconfigure(ids(&[1, 2, 5])),
        Err(ProposeError::Reconfiguring)
    );
}

// ---------------------------------------------------------------------------
// Rule 7: removed and added replicas.

#[test]
fn a_removed_leader_steps_down_on_its_first_tick_once_its_removal_is_in_force() {
    let (mut r, ballot) = leader_with_alpha(1, 3, 2);
    r.reconfigure(ids(&[2, 3, 4])).unwrap();
    let ready = take(&mut r);
    assert_eq!(
        accepts_in(&ready)[0].2,
        vec![1, 2],
        "the change, then a no-op"
    );

    r.step(env(2, 1, accepted(ballot, vec![1])));
    drain(&mut r);
    for _ in 0..4 {
        r.tick();
        drain(&mut r);
        assert_eq!(r.role(), Role::Leader, "slot 2 is still n1's to vote on");
    }

    r.step(env(2, 1, accepted(ballot, vec![2])));
    drain(&mut r);
    assert_eq!(r.chosen_upto(), 2);
    assert!(!r.is_voter(), "slots 3 and 4 are {{n2, n3, n4}}'s");
    assert_eq!(r.role(), Role::Leader, "until its next tick");

    r.tick();
    assert_eq!(r.role(), Role::Follower);
    assert_eq!(r.leader_hint(), None);
    assert!(!r.reconfiguring(), "nothing left queued");
    for _ in 0..1_000 {
        r.tick();
        drain(&mut r);
        assert_eq!(r.role(), Role::Follower, "a non-voter never campaigns");
    }
}

#[test]
fn a_non_voter_follows_and_catches_up_and_campaigns_once_a_change_adds_it() {
    // n4 is not in the genesis {n1, n2, n3}.
    let mut r = Replica::new(config_alpha(4, 3, 2), RecoveredState::default(), 0).unwrap();
    assert!(!r.is_voter());
    for _ in 0..1_000 {
        r.tick();
        assert_eq!(r.role(), Role::Follower);
    }
    // It never campaigns; hearing no leader, it pulls the chosen log from
    // the members it knows, one message's worth at a time.
    let pulled = take(&mut r);
    assert!(!pulled.messages.is_empty(), "a lonely non-voter pulls");
    let first_pull = Message::CatchUp {
        first_slot: 1,
        last_slot: config_alpha(4, 3, 2).message_slots_max as u64,
    };
    for envelope in &pulled.messages {
        assert!(
            [n(1), n(2), n(3)].contains(&envelope.to) && envelope.message == first_pull,
            "only pulls from the genesis members: {envelope:?}"
        );
    }
    assert!(pulled.persist.is_empty(), "no promise: no campaign");
    assert_quiet(&r);

    let leader = b(1, 1);
    r.step(env(1, 4, accept(leader, vec![(1, cmd(b"a"))], 0)));
    assert_eq!(
        take(&mut r),
        Ready {
            persist: vec![op_accept(1, leader, cmd(b"a"))],
            persisted_messages: vec![env(4, 1, accepted(leader, vec![1]))],
            ..Ready::default()
        },
        "it accepts like any acceptor"
    );
    assert_eq!(r.leader_hint(), Some(n(1)));

    r.step(env(1, 4, heartbeat(leader, 3, 2)));
    assert_eq!(
        take(&mut r),
        Ready {
            messages: vec![
                env(
                    4,
                    1,
                    Message::CatchUp {
                        first_slot: 2,
                        last_slot: 3
                    }
                ),
                env(4, 1, heartbeat_ack(leader, 2)),
            ],
            chosen: vec![entry(1, cmd(b"a"))],
            ..Ready::default()
        }
    );
    assert!(!r.is_voter());

    r.step(env(
        1,
        4,
        chosen(vec![(2, reconf(&[1, 2, 4])), (3, Value::Noop)]),
    ));
    assert_eq!(
        take(&mut r),
        Ready {
            persist: vec![op_chosen(2, reconf(&[1, 2, 4])), op_chosen(3, Value::Noop)],
            chosen: vec![entry(2, reconf(&[1, 2, 4])), entry(3, Value::Noop)],
            ..Ready::default()
        }
    );
    assert!(r.is_voter());
    assert_eq!(r.current_members(), ids(&[1, 2, 4]));

    tick_until_candidate(&mut r, 100);
    assert_eq!(
        take(&mut r),
        Ready {
            messages: to_each(4, &[1, 2], &prepare(b(2, 4), 4)),
            persist: vec![PersistOp::Promise { ballot: b(2, 4) }],
            ..Ready::default()
        },
        "it campaigns among {{n1, n2, n4}}"
    );
}

// ---------------------------------------------------------------------------
// Rule 8: a leader outside a slot's configuration persists it as chosen.

#[test]
fn a_leader_outside_a_slots_configuration_persists_the_chosen_value_with_it() {
    let (mut r, ballot) = leader_one_per_slot(2);
    r.reconfigure(ids(&[2, 3, 4])).unwrap(); // removes n1 from slot 3 on
    r.propose(b"x".to_vec()).unwrap();
    r.propose(b"y".to_vec()).unwrap();
    let _ = take(&mut r); // slot 1: the change, slot 2: x
    r.step(env(2, 1, accepted(ballot, vec![1])));
    assert_eq!(
        take(&mut r),
        Ready {
            messages: to_each(1, &[3, 4], &prepare(ballot, 3)),
            chosen: vec![entry(1, reconf(&[2, 3, 4]))],
            ..Ready::default()
        },
        "n2 promised already; n3 and n4 are asked"
    );

    r.step(env(3, 1, promise(ballot, 3, vec![])));
    assert_eq!(
        take(&mut r),
        Ready {
            messages: to_each(1, &[2, 3, 4], &accept(ballot, vec![(3, cmd(b"y"))], 1)),
            ..Ready::default()
        },
        "slot 3 goes to its members only; n1 accepts nothing there"
    );

    r.step(env(2, 1, accepted(ballot, vec![2])));
    assert_eq!(take(&mut r).chosen, vec![entry(2, cmd(b"x"))]);
    r.step(env(2, 1, accepted(ballot, vec![3])));
    assert_eq!(r.chosen_upto(), 2, "1 of {{n2, n3, n4}}: n1 does not vote");
    assert_quiet(&r);

    r.step(env(4, 1, accepted(ballot, vec![3])));
    assert_eq!(
        take(&mut r),
        Ready {
            persist: vec![op_chosen(3, cmd(b"y"))],
            chosen: vec![entry(3, cmd(b"y"))],
            ..Ready::default()
        },
        "persisted (with the Ready that hands it out) before it is applied"
    );

    r.tick();
    assert_eq!(r.role(), Role::Follower);
}

// ---------------------------------------------------------------------------
// Rule 9: reads.

#[test]
fn a_read_with_two_configurations_in_the_window_needs_a_majority_of_each() {
    // Acks from all of one configuration, then one peer of the other.
    for order in [[4, 5, 3], [2, 3, 4]] {
        let (mut r, ballot) = leader_with_alpha(1, 3, 2);
        r.reconfigure(ids(&[1, 4, 5])).unwrap();
        let _ = take(&mut r); // slot 1: the change, slot 2: a no-op
        r.step(env(2, 1, accepted(ballot, vec![1])));
        let _ = take(&mut r); // Prepare to n4, n5 for slot 3
        r.step(env(4, 1, promise(ballot, 3, vec![])));
        drain(&mut r);
        assert_eq!(r.chosen_upto(), 1, "window [2, 3]: slot 2 old, slot 3 new");

        r.read_index(7).unwrap();
        assert_eq!(
            take(&mut r),
            Ready {
                messages: to_each(1, &[2, 3, 4, 5], &heartbeat(ballot, 1, 2)),
                ..Ready::default()
            },
            "the round goes to every member of the window"
        );

        r.step(env(order[0], 1, heartbeat_ack(ballot, 2)));
        r.step(env(order[1], 1, heartbeat_ack(ballot, 2)));
        assert_quiet(&r); // all of one configuration, only n1 of the other

        r.step(env(order[2], 1, heartbeat_ack(ballot, 2)));
        assert_eq!(
            take(&mut r),
            Ready {
                reads: vec![ReadReady {
                    read_id: 7,
                    slot: 1
                }],
                ..Ready::default()
            },
            "acks in order {order:?}: a majority of the other configuration as well"
        );
    }
}

// ---------------------------------------------------------------------------
// Rule 10: snapshots and restarts.

#[test]
fn a_snapshots_membership_restores_the_configurations_on_recover() {
    let r = follower_that_learned_a_change(2);
    let config = config_alpha(2, 3, 2);

    // At slot 3 the change (chosen in 2) is in force.
    let m = r.membership_for_snapshot(3);
    assert_eq!(m.iter().collect::<Vec<_>>(), [(4, &ids(&[1, 2, 4])[..])]);
    let restored = Replica::recover(
        config.clone(),
        RecoveredState::default(),
        3,
        Some(m.clone()),
    )
    .unwrap();
    assert_eq!(restored.membership(), &m);
    assert_eq!(restored.current_members(), r.current_members());
    assert_eq!(restored.current_members(), ids(&[1, 2, 4]));
    assert!(!restored.reconfiguring());

    // At slot 2 it is chosen and not yet in force: the snapshot keeps both.
    let m = r.membership_for_snapshot(2);
    assert_eq!(
        m.iter().collect::<Vec<_>>(),
        [(1, &ids(&[1, 2, 3])[..]), (4, &ids(&[1, 2, 4])[..])]
    );
    let restored = Replica::recover(config, RecoveredState::default(), 2, Some(m.clone())).unwrap();
    assert_eq!(restored.membership(), &m);
    assert_eq!(restored.current_members(), ids(&[1, 2, 3]));
    assert_eq!(restored.membership().members_at(4), ids(&[1, 2, 4]));
    assert!(restored.reconfiguring(), "the change is still on its way");
}

#[test]
fn install_snapshot_replaces_the_membership() {
    let peer = follower_that_learned_a_change(2);
    let m = peer.membership_for_snapshot(3);
    // n4 is not in the genesis configuration, and knows no change.
    let mut r = Replica::new(config_alpha(4, 3, 2), RecoveredState::default(), 0).unwrap();
    assert!(!r.is_voter());

    r.install_snapshot(3, Some(m.clone()));

    assert_eq!(r.membership(), &m);
    assert_eq!(r.current_members(), ids(&[1, 2, 4]));
    assert!(r.is_voter());
    assert_eq!((r.chosen_upto(), r.log_start()), (3, 4));
    assert_quiet(&r);
}

#[test]
fn install_snapshot_re_records_changes_chosen_above_it_that_the_replica_knew() {
    let peer = follower_that_learned_a_change(2);
    let m = peer.membership_for_snapshot(1);
    assert_eq!(
        m,
        Membership::genesis(&members(3)),
        "the change is in slot 2"
    );

    // n3 learns slots 1..=3 chosen, and installs a snapshot at slot 1 before
    // the entries are handed out.
    let mut r = Replica::new(config_alpha(3, 3, 2), RecoveredState::default(), 0).unwrap();
    let entries = vec![(1, cmd(b"a")), (2, reconf(&[1, 2, 4])), (3, Value::Noop)];
    r.step(env(1, 3, accept(b(1, 1), entries, 0)));
    drain(&mut r);
    r.step(env(1, 3, heartbeat(b(1, 1), 3, 1)));
    assert_eq!(r.chosen_upto(), 3);

    r.install_snapshot(1, Some(m));

    assert_eq!(
        r.membership(),
        peer.membership(),
        "the change chosen in slot 2, above the snapshot, is kept"
    );
    assert_eq!(r.current_members(), ids(&[1, 2, 4]));
    assert!(!r.is_voter(), "n3 was removed");
    assert_eq!(
        take(&mut r).chosen,
        vec![entry(2, reconf(&[1, 2, 4])), entry(3, Value::Noop)]
    );
}

#[test]
fn a_restart_recovers_a_change_in_the_applied_prefix_and_no_later_one() {
    let ballot = b(1, 1);
    let state = recovered(
        ballot,
        vec![
            (1, ballot, cmd(b"a")),
            (2, ballot, reconf(&[1, 2, 4])),
            (3, ballot, Value::Noop),
            (4, ballot, reconf(&[1, 5, 6])), // accepted, not known chosen
        ],
        vec![],
    );

    let r = Replica::new(config_alpha(1, 3, 2), state, 3).unwrap();

    assert_eq!(r.chosen_upto(), 3);
    assert_eq!(r.current_members(), ids(&[1, 2, 4]));
    assert_eq!(
        r.membership().iter().collect::<Vec<_>>(),
        [(1, &ids(&[1, 2, 3])[..]), (4, &ids(&[1, 2, 4])[..])],
        "slot 4's change is not chosen: not recorded"
    );
    assert!(!r.reconfiguring());
}

// ---------------------------------------------------------------------------
// Rule 11: determinism.

/// Elects `n1` by its own timer, replaces n3 by n4 under load with α = 2,
/// lets n2 and n4 accept everything they are sent, and reads; returns every
/// `Ready` and the final configuration.
fn reconfiguration_scenario() -> (Vec<Ready>, Vec<NodeId>) {
    let mut config = config_alpha(1, 3, 2);
    config.batch_commands_max = 2;
    let mut r = Replica::new(config, RecoveredState::default(), 0).unwrap();
    let mut readys = Vec::new();
    tick_until_candidate(&mut r, 100);
    let ballot = r.ballot();
    readys.push(take(&mut r));
    r.step(env(2, 1, promise(ballot, 1, vec![])));
    readys.push(take(&mut r));
    r.reconfigure(ids(&[1, 2, 4])).unwrap();
    for i in 0..7u8 {
        r.propose(vec![i]).unwrap();
    }
    for round in 0..8 {
        let ready = take(&mut r);
        ack_accepts(&mut r, &ready, &[2, 4]);
        for e in &ready.messages {
            if let Message::Heartbeat { probe, .. } = e.message {
                r.step(env(e.to.0, 1, heartbeat_ack(ballot, probe)));
            }
        }
        readys.push(ready);
        if round == 4 {
            r.read_index(1).unwrap();
        }
        r.tick();
    }
    (readys, r.current_members().to_vec())
}

#[test]
fn the_same_inputs_give_the_same_readys() {
    let (first, members) = reconfiguration_scenario();
    let (second, _) = reconfiguration_scenario();

    assert_eq!(first, second);
    assert_eq!(members, ids(&[1, 2, 4]), "the scenario did reconfigure");
    let applied: Vec<_> = first.iter().flat_map(|r| r.chosen.clone()).collect();
    assert!(applied.contains(&entry(1, reconf(&[1, 2, 4]))));
    let commands: Vec<u8> = applied
        .iter()
        .filter_map(|e| match &e.value {
            Value::Commands(batch) => Some(batch.iter().map(|c| c[0])),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(
        commands,
        (0..7).collect::<Vec<u8>>(),
        "every command, in order"
    );
    assert_eq!(applied.len(), 5, "the change, then 7 commands two by two");
    assert!(
        first.iter().any(|r| !r.reads.is_empty()),
        "the read was served"
    );
}

// A non-voter's pull (see the test above) goes on while the answers are
// full: the peer may have more. An answer that teaches nothing new (a
// duplicate) asks nothing more, so duplicated messages cannot loop.
#[test]
fn a_pull_answered_with_a_full_batch_asks_the_same_peer_for_more() {
    let mut config = config_alpha(4, 3, 2);
    config.message_slots_max = 2;
    let mut r = Replica::new(config, RecoveredState::default(), 0).unwrap();
    let batch = chosen(vec![(1, cmd(b"a")), (2, cmd(b"b"))]);

    r.step(env(2, 4, batch.clone()));
    let ready = take(&mut r);
    assert_eq!(
        ready.messages,
        vec![env(
            4,
            2,
            Message::CatchUp {
                first_slot: 3,
                last_slot: 4
            }
        )]
    );
    assert_eq!(r.chosen_upto(), 2);

    r.step(env(2, 4, batch));
    assert!(take(&mut r).messages.is_empty(), "a duplicate asks nothing");
    r.step(env(2, 4, chosen(vec![(3, Value::Noop)])));
    assert!(
        take(&mut r).messages.is_empty(),
        "a short answer is the end of the peer's log"
    );
    assert_eq!(r.chosen_upto(), 3);
}
