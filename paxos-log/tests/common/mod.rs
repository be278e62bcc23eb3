//! Helpers shared by the `core_*` engine tests: terse constructors for ids,
//! ballots, values and messages, and drivers that put a [`Replica`] into a
//! precise state (follower, candidate, leader) by feeding it messages.
//!
//! Every helper is deterministic: no clock, no randomness beyond the
//! replica's own seeded election timer, no I/O.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;

use paxos_log::{
    Ballot, Config, Envelope, Message, NodeId, PersistOp, PromisedSlot, Ready, RecoveredState,
    Replica, Role, Slot, SlotValue, Value,
};

/// `NodeId(id)`.
pub fn n(id: u64) -> NodeId {
    NodeId(id)
}

/// `Ballot { round, node_id: NodeId(node) }`.
pub fn b(round: u64, node: u64) -> Ballot {
    Ballot {
        round,
        node_id: NodeId(node),
    }
}

/// Members `n1..=n<size>`.
pub fn members(size: u64) -> Vec<NodeId> {
    (1..=size).map(NodeId).collect()
}

/// The default configuration of `n<id>` in a group of `size`.
pub fn config(id: u64, size: u64) -> Config {
    Config::new(n(id), members(size))
}

/// A fresh replica with nothing on disk.
pub fn replica(id: u64, size: u64) -> Replica {
    Replica::new(config(id, size), RecoveredState::default(), 0).unwrap()
}

/// A value holding one batch of the given commands.
pub fn cmds(commands: &[&[u8]]) -> Value {
    Value::Commands(commands.iter().map(|c| c.to_vec()).collect())
}

/// A value holding one command.
pub fn cmd(command: &[u8]) -> Value {
    cmds(&[command])
}

/// `SlotValue { slot, value }`.
pub fn sv(slot: Slot, value: Value) -> SlotValue {
    SlotValue { slot, value }
}

/// An envelope from `n<from>` to `n<to>`.
pub fn env(from: u64, to: u64, message: Message) -> Envelope {
    Envelope {
        from: n(from),
        to: n(to),
        message,
    }
}

/// The same message from `from` to each of `to`, in that order.
pub fn to_each(from: u64, to: &[u64], message: &Message) -> Vec<Envelope> {
    to.iter().map(|&t| env(from, t, message.clone())).collect()
}

/// `Message::Prepare`.
pub fn prepare(ballot: Ballot, first_slot: Slot) -> Message {
    Message::Prepare { ballot, first_slot }
}

/// `Message::Promise`.
pub fn promise(ballot: Ballot, first_slot: Slot, slots: Vec<PromisedSlot>) -> Message {
    Message::Promise {
        ballot,
        first_slot,
        compacted_upto: 0,
        slots,
    }
}

/// `Message::Accept` for `entries` (slot, value).
pub fn accept(ballot: Ballot, entries: Vec<(Slot, Value)>, commit_upto: Slot) -> Message {
    Message::Accept {
        ballot,
        entries: entries.into_iter().map(|(s, v)| sv(s, v)).collect(),
        commit_upto,
    }
}

/// `Message::Accepted`.
pub fn accepted(ballot: Ballot, slots: Vec<Slot>) -> Message {
    Message::Accepted { ballot, slots }
}

/// `Message::Heartbeat`.
pub fn heartbeat(ballot: Ballot, commit_upto: Slot, probe: u64) -> Message {
    Message::Heartbeat {
        ballot,
        commit_upto,
        probe,
    }
}

/// `Message::HeartbeatAck`.
pub fn heartbeat_ack(ballot: Ballot, probe: u64) -> Message {
    Message::HeartbeatAck { ballot, probe }
}

/// `Message::Nack`.
pub fn nack(ballot: Ballot, promised: Ballot) -> Message {
    Message::Nack { ballot, promised }
}

/// `Message::Chosen` for `entries` (slot, value).
pub fn chosen(entries: Vec<(Slot, Value)>) -> Message {
    Message::Chosen {
        entries: entries.into_iter().map(|(s, v)| sv(s, v)).collect(),
    }
}

/// `PersistOp::Accept`.
pub fn op_accept(slot: Slot, ballot: Ballot, value: Value) -> PersistOp {
    PersistOp::Accept {
        slot,
        ballot,
        value,
    }
}

/// `PersistOp::Chosen`.
pub fn op_chosen(slot: Slot, value: Value) -> PersistOp {
    PersistOp::Chosen { slot, value }
}

/// `PromisedSlot::Accepted`.
pub fn p_accepted(slot: Slot, ballot: Ballot, value: Value) -> PromisedSlot {
    PromisedSlot::Accepted {
        slot,
        ballot,
        value,
    }
}

/// `PromisedSlot::Chosen`.
pub fn p_chosen(slot: Slot, value: Value) -> PromisedSlot {
    PromisedSlot::Chosen { slot, value }
}

/// `Entry { slot, value }`.
pub fn entry(slot: Slot, value: Value) -> paxos_log::Entry {
    paxos_log::Entry { slot, value }
}

/// A recovered acceptor state: promise, accepted `(slot, ballot, value)`
/// and learned-chosen `(slot, value)`.
pub fn recovered(
    promised: Ballot,
    accepted: Vec<(Slot, Ballot, Value)>,
    chosen: Vec<(Slot, Value)>,
) -> RecoveredState {
    RecoveredState {
        promised,
        accepted: accepted
            .into_iter()
            .map(|(s, b, v)| (s, (b, v)))
            .collect::<BTreeMap<_, _>>(),
        chosen: chosen.into_iter().collect(),
        compacted_upto: 0,
    }
}

/// Takes the pending `Ready` and advances (the driver carried it out).
pub fn take(r: &mut Replica) -> Ready {
    let ready = r.ready();
    r.advance();
    ready
}

/// Carries out every pending `Ready` until the replica is quiet.
pub fn drain(r: &mut Replica) {
    for _ in 0..100 {
        if !r.has_ready() {
            return;
        }
        let _ = take(r);
    }
    panic!("replica never became quiet");
}

/// Asserts the replica has nothing to do.
#[track_caller]
pub fn assert_quiet(r: &Replica) {
    assert!(!r.has_ready(), "expected no Ready");
}

/// Ticks a follower until it starts an election; returns the ticks it took.
/// Panics if that takes more than `max_ticks`.
#[track_caller]
pub fn tick_until_candidate(r: &mut Replica, max_ticks: u32) -> u32 {
    for ticks in 1..=max_ticks {
        r.tick();
        if r.role() == Role::Candidate {
            return ticks;
        }
    }
    panic!("no election within {max_ticks} ticks");
}

/// Turns `r` (a follower of a group `n1..=n<size>`) into a leader: it
/// times out, its own promise becomes durable, and peers in id order promise
/// with nothing accepted until it has a quorum. Every resulting `Ready` is
/// carried out, so the returned leader is quiet. Returns its ballot.
pub fn elect(r: &mut Replica, size: u64) -> Ballot {
    tick_until_candidate(r, 1_000);
    let ballot = r.ballot();
    let first_slot = r.chosen_upto() + 1;
    let _ = take(r); // own promise durable and delivered
    let me = r.id().0;
    for peer in (1..=size).filter(|&p| p != me) {
        if r.role() == Role::Leader {
            break;
        }
        r.step(env(peer, me, promise(ballot, first_slot, vec![])));
    }
    assert_eq!(r.role(), Role::Leader, "no quorum of promises");
    drain(r);
    ballot
}

/// A fresh `n<id>` elected leader of a group of `size`, quiet.
pub fn leader(id: u64, size: u64) -> (Replica, Ballot) {
    leader_with(config(id, size))
}

/// A fresh replica with `config`, elected leader, quiet.
pub fn leader_with(config: Config) -> (Replica, Ballot) {
    let size = config.members.len() as u64;
    let mut r = Replica::new(config, RecoveredState::default(), 0).unwrap();
    let ballot = elect(&mut r, size);
    (r, ballot)
}

/// Ticks until the leader's next heartbeat round goes out; returns that
/// tick's `Ready` (not advanced).
pub fn tick_until_heartbeat(r: &mut Replica) -> Ready {
    for _ in 0..1_000 {
        r.tick();
        if r.has_ready() {
            return r.ready();
        }
    }
    panic!("no heartbeat");
}

/// `[NodeId(id), ..]`.
pub fn ids(ids: &[u64]) -> Vec<NodeId> {
    ids.iter().copied().map(NodeId).collect()
}

/// `Value::Reconfigure` naming `members`.
pub fn reconf(members: &[u64]) -> Value {
    Value::Reconfigure(ids(members))
}

/// The default configuration of `n<id>` in a genesis group of `size`, with
/// α (`reconfig_window_slots`) = `alpha`.
pub fn config_alpha(id: u64, size: u64, alpha: u64) -> Config {
    let mut config = config(id, size);
    config.reconfig_window_slots = alpha;
    config
}

/// A fresh `n<id>` elected leader of a genesis group of `size` with α =
/// `alpha` (peers promise in id order, as in [`elect`]), quiet.
pub fn leader_with_alpha(id: u64, size: u64, alpha: u64) -> (Replica, Ballot) {
    leader_with(config_alpha(id, size, alpha))
}

/// The `Accept`s in `ready.messages`, as `(to, ballot, slots)`, in order.
pub fn accepts_in(ready: &Ready) -> Vec<(u64, Ballot, Vec<Slot>)> {
    ready
        .messages
        .iter()
        .filter_map(|e| match &e.message {
            Message::Accept {
                ballot, entries, ..
            } => Some((e.to.0, *ballot, entries.iter().map(|sv| sv.slot).collect())),
            _ => None,
        })
        .collect()
}

/// Every peer in `from` that `ready` (taken from leader `r`) sent an
/// `Accept` to answers `Accepted` for exactly the slots it was sent. The
/// leader sends a slot only to the members of its configuration, so this
/// acknowledges each slot from the right members only.
pub fn ack_accepts(r: &mut Replica, ready: &Ready, from: &[u64]) {
    let me = r.id().0;
    for (to, ballot, slots) in accepts_in(ready) {
        if from.contains(&to) {
            r.step(env(to, me, accepted(ballot, slots)));
        }
    }
}
