//! The I/O-free Multi-Paxos core: [`Replica`].
//!
//! One `Replica` plays all three Paxos roles for its node: acceptor
//! (`acceptor.rs`: promises and acceptances, the safety-critical part),
//! proposer (`proposer.rs`: elections, the leader's phase 2 pipeline,
//! linearizable reads) and learner (`learner.rs`: which slots are chosen,
//! catch-up of missed ones).
//!
//! Driving it (the raft-rs `Ready` recipe):
//!
//! 1. feed inputs: [`Replica::tick`] every tick, [`Replica::propose`] /
//!    [`Replica::read_index`] for clients, [`Replica::step`] for every
//!    message from a peer;
//! 2. when [`Replica::has_ready`], take [`Replica::ready`] and carry it out in
//!    the order its docs give (send, persist, send persisted, apply);
//! 3. call [`Replica::advance`]; only then take the next `Ready`.
//!
//! Inputs may keep arriving between `ready` and `advance` (while the disk
//! write is in flight); what they produce goes into the next `Ready`.
//!
//! Messages a replica addresses to itself never leave the core: they are
//! handled at once, or (promises and acceptances, which must wait for the
//! disk) in `advance`. So the leader's own acceptance counts towards a
//! quorum only once its own write is durable.
//!
//! Membership changes (`membership.rs` of the crate, and "Membership
//! change" in `docs/protocol.md`): every slot has its own configuration,
//! fixed by the chosen prefix under the α-window rule, and every quorum
//! (phase 1, phase 2, reads, check-quorum) is counted among the members of
//! the slots it is about.

mod acceptor;
mod learner;
mod proposer;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use tracing::{debug, error};

use crate::config::Config;
use crate::error::{ConfigError, ProposeError};
use crate::membership::{majority, validate_members, Membership};
use crate::message::{Envelope, Message};
use crate::ready::{PersistOp, ReadReady, Ready};
use crate::store::RecoveredState;
use crate::types::{Ballot, Command, Entry, NodeId, Slot, Value};

/// What a replica currently does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepts what a leader proposes; may start an election on timeout.
    Follower,
    /// Running phase 1 with its own ballot.
    Candidate,
    /// Completed phase 1: proposes, and serves reads.
    Leader,
}

impl Role {
    /// The role's name in status reports (`leader`, `candidate`,
    /// `follower`).
    pub fn name(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}

/// What this replica knows about one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SlotState {
    /// Accepted `value` at `ballot`; not known chosen.
    Accepted { ballot: Ballot, value: Value },
    /// Known chosen.
    Chosen { value: Value },
}

/// A slot the leader proposed and has not yet seen chosen.
#[derive(Debug, Clone)]
struct Proposal {
    value: Value,
    /// Members whose durable acceptance at the leader's ballot arrived.
    acks: BTreeSet<NodeId>,
}

/// A promise for this replica's ballot, kept while it campaigns and leads:
/// the values the promiser had accepted decide what the leader proposes in
/// those slots, whenever it gets to them.
#[derive(Debug, Clone)]
struct PromiseInfo {
    /// The promise covers every slot from here on.
    first_slot: Slot,
    /// What the promiser had accepted (and not known chosen) from
    /// `first_slot` on. Chosen values it reported were learned at once.
    accepted: BTreeMap<Slot, (Ballot, Value)>,
}

/// A read waiting for its leadership check.
#[derive(Debug, Clone, Copy)]
struct PendingRead {
    read_id: u64,
    /// Serve once applied reaches this slot.
    slot: Slot,
    /// Heartbeat round whose quorum acknowledgement confirms leadership.
    probe: u64,
}

/// Deterministic pseudo-random numbers (SplitMix64) from the config seed.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `[min, max)`.
    fn between(&mut self, min: u32, max: u32) -> u32 {
        debug_assert!(min < max);
        let span = u64::from(max - min);
        // `span` fits in u32, so the remainder does too.
        min + u32::try_from(self.next_u64() % span).unwrap_or(0)
    }
}

/// One replica of a Multi-Paxos group. See the module docs for how to drive it.
#[derive(Debug)]
pub struct Replica {
    config: Config,
    /// Which members vote on which slot.
    membership: Membership,
    rng: Rng,
    /// Logical time: ticks since start.
    now_ticks: u64,

    // --- acceptor ---
    /// Highest ballot promised (durable once the current `Ready` is).
    promised: Ballot,
    /// Every slot this replica holds something for, all >= `log_start`.
    log: BTreeMap<Slot, SlotState>,
    /// Slots below this were compacted away under a snapshot.
    log_start: Slot,

    // --- learner ---
    /// Every slot up to here is `Chosen` in `log`.
    chosen_upto: Slot,
    /// Chosen entries up to here were handed out in a `Ready`.
    emitted_upto: Slot,
    /// Highest commit point heard from the current leader.
    leader_commit: Slot,
    /// When this replica last asked for missing slots.
    catch_up_sent_at: Option<u64>,

    // --- proposer ---
    role: Role,
    /// The leader this replica believes in, if any.
    leader_hint: Option<NodeId>,
    /// This replica's own ballot while candidate or leader.
    ballot: Ballot,
    /// Highest ballot seen in any message, so a new election goes above it.
    highest_seen: Ballot,
    election_elapsed_ticks: u32,
    election_timeout_ticks: u32,
    heartbeat_elapsed_ticks: u32,
    /// Candidate: the first slot of its phase 1.
    prepare_first_slot: Slot,
    /// Candidate and leader: the promises for its ballot.
    promises: BTreeMap<NodeId, PromiseInfo>,
    /// Leader: the slot it last asked a new configuration to promise for.
    promises_requested_for: Option<Slot>,
    /// Leader: the next free slot, the in-flight slots, queued commands.
    next_slot: Slot,
    proposals: BTreeMap<Slot, Proposal>,
    pending: VecDeque<Command>,
    /// Leader: a membership change not yet in a slot.
    reconfig_queued: Option<Vec<NodeId>>,
    /// The highest slot any promise for this ballot reported: the leader
    /// fills every open slot up to it, and reads wait until it is chosen.
    recovered_upto: Slot,
    /// Leader: the current heartbeat round and what each peer acknowledged.
    probe: u64,
    acked_probe: BTreeMap<NodeId, u64>,
    /// Leader: when each peer last answered at the leader's ballot.
    last_heard_at: BTreeMap<NodeId, u64>,
    /// Tick at which this replica became leader.
    leader_since: u64,
    pending_reads: Vec<PendingRead>,
    /// A heartbeat round should start at the end of this call (a read asked).
    probe_wanted: bool,

    // --- output ---
    out: Ready,
    /// Messages to self, handled before the current call returns.
    local: VecDeque<Message>,
    /// Messages to self that wait for the current `Ready`'s persistence.
    local_after_persist: Vec<Message>,
    /// Those of the `Ready` handed out and not yet advanced.
    local_in_flight: Vec<Message>,
    awaiting_advance: bool,
}

impl Replica {
    /// Creates a replica from its configuration, its recovered acceptor state
    /// and the highest slot its state machine has applied durably (0 if
    /// none). Slots up to `applied_upto` are taken as chosen and not handed
    /// out again.
    pub fn new(
        config: Config,
        recovered: RecoveredState,
        applied_upto: Slot,
    ) -> Result<Replica, ConfigError> {
        Replica::recover(config, recovered, applied_upto, None)
    }

    /// [`Replica::new`] for a replica whose state machine was restored from
    /// a snapshot: `membership` is the one saved with it
    /// ([`Replica::membership_for_snapshot`]), which knows the changes in
    /// the slots the snapshot replaced. `None` means the genesis
    /// configuration, for a group that never compacted a change away.
    pub fn recover(
        config: Config,
        recovered: RecoveredState,
        applied_upto: Slot,
        membership: Option<Membership>,
    ) -> Result<Replica, ConfigError> {
        config.validate()?;
        let mut membership = match membership {
            Some(membership) => {
                membership
                    .validate()
                    .map_err(|e| ConfigError(format!("snapshot membership: {e}")))?;
                membership
            }
            None => Membership::genesis(&config.members),
        };
        let mut rng = Rng(config.rng_seed ^ config.node_id.0.rotate_left(32));
        let election_timeout_ticks = rng.between(
            config.election_timeout_ticks_min,
            config.election_timeout_ticks_max,
        );
        let mut log = BTreeMap::new();
        for (slot, (ballot, value)) in recovered.accepted {
            log.insert(slot, SlotState::Accepted { ballot, value });
        }
        for (slot, value) in recovered.chosen {
            log.insert(slot, SlotState::Chosen { value });
        }
        // Every slot up to `applied_upto` was applied, so it was chosen, and
        // the value on disk is the chosen one: a value learned from a peer
        // is persisted as `Chosen` before it is applied.
        for (&slot, state) in log.range_mut(..=applied_upto) {
            if let SlotState::Accepted { value, .. } = state {
                *state = SlotState::Chosen {
                    value: std::mem::replace(value, Value::Noop),
                };
            }
            if let SlotState::Chosen {
                value: Value::Reconfigure(members),
            } = state
            {
                record_change(&mut membership, slot, members, &config);
            }
        }
        let promised = recovered.promised;
        let log_start = recovered.compacted_upto + 1;
        let mut replica = Replica {
            log_start,
            rng,
            now_ticks: 0,
            promised,
            log,
            chosen_upto: applied_upto,
            emitted_upto: applied_upto,
            leader_commit: applied_upto,
            catch_up_sent_at: None,
            role: Role::Follower,
            leader_hint: None,
            ballot: Ballot::ZERO,
            highest_seen: promised,
            election_elapsed_ticks: 0,
            election_timeout_ticks,
            heartbeat_elapsed_ticks: 0,
            prepare_first_slot: 0,
            promises: BTreeMap::new(),
            promises_requested_for: None,
            next_slot: 0,
            proposals: BTreeMap::new(),
            pending: VecDeque::new(),
            reconfig_queued: None,
            recovered_upto: 0,
            probe: 0,
            acked_probe: BTreeMap::new(),
            last_heard_at: BTreeMap::new(),
            leader_since: 0,
            pending_reads: Vec::new(),
            probe_wanted: false,
            out: Ready::default(),
            local: VecDeque::new(),
            local_after_persist: Vec::new(),
            local_in_flight: Vec::new(),
            awaiting_advance: false,
            config,
            membership,
        };
        // Slots above the applied one may already be chosen in the log.
        replica.advance_chosen();
        replica.check_invariants();
        Ok(replica)
    }

    /// The settings it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This replica's id.
    pub fn id(&self) -> NodeId {
        self.config.node_id
    }

    /// Its current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The replica believed to lead, if any (itself when leader).
    pub fn leader_hint(&self) -> Option<NodeId> {
        self.leader_hint
    }

    /// The highest ballot promised.
    pub fn promised(&self) -> Ballot {
        self.promised
    }

    /// This replica's own ballot (meaningful while candidate or leader).
    pub fn ballot(&self) -> Ballot {
        self.ballot
    }

    /// Every slot up to this one is known chosen here.
    pub fn chosen_upto(&self) -> Slot {
        self.chosen_upto
    }

    /// Commands queued at the leader, not yet in a slot.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Slots the leader proposed and has not yet seen chosen.
    pub fn inflight_count(&self) -> usize {
        self.proposals.len()
    }

    /// The chosen value of `slot`, if this replica knows it.
    pub fn chosen_value(&self, slot: Slot) -> Option<&Value> {
        match self.log.get(&slot) {
            Some(SlotState::Chosen { value }) => Some(value),
            _ => None,
        }
    }

    /// Slots below this were compacted away (1 if none were).
    pub fn log_start(&self) -> Slot {
        self.log_start
    }

    /// The configurations this replica knows: every one that governs a
    /// slot above its compaction point.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The members that vote on the next slot to be chosen.
    pub fn current_members(&self) -> &[NodeId] {
        self.membership.members_at(self.chosen_upto + 1)
    }

    /// Whether this replica votes on any slot the leader may propose now
    /// (only voters campaign, and a leader that is no longer one steps
    /// down).
    pub fn is_voter(&self) -> bool {
        let id = self.id();
        self.window_runs()
            .iter()
            .any(|(_, members)| members.contains(&id))
    }

    /// What a snapshot of the state machine at `slot` must be saved with,
    /// and handed to [`Replica::recover`] or
    /// [`Replica::install_snapshot`] with it.
    pub fn membership_for_snapshot(&self, slot: Slot) -> Membership {
        self.membership
            .as_of(slot, self.config.reconfig_window_slots)
    }

    /// Forgets every slot up to `upto`, which must already be applied and
    /// covered by a durable snapshot. Peers that still need those slots get
    /// the snapshot instead (see [`Ready::snapshot_requests`]). The driver
    /// compacts the [`crate::AcceptorStore`] to the same slot.
    pub fn compact(&mut self, upto: Slot) {
        let upto = upto.min(self.emitted_upto);
        if upto < self.log_start {
            return;
        }
        self.log = self.log.split_off(&(upto + 1));
        self.log_start = upto + 1;
        self.membership.forget_before(self.log_start);
        self.check_invariants();
    }

    /// The state machine installed a snapshot covering every slot up to
    /// `slot` (received from a peer because this replica fell behind the
    /// peers' compacted logs), saved with `membership` (`None`: from a
    /// group that never compacted a change away, the genesis members).
    /// Slots up to it count as chosen and applied.
    pub fn install_snapshot(&mut self, slot: Slot, membership: Option<Membership>) {
        if slot <= self.emitted_upto {
            return;
        }
        let membership = membership.unwrap_or_else(|| Membership::genesis(&self.config.members));
        if let Err(error) = membership.validate() {
            // The driver validates before restoring; a bad one here is a
            // bug there, and using it could split quorums.
            error!(slot, %error, "snapshot membership refused; keeping the current one");
        } else {
            // Changes chosen above the snapshot that this replica already
            // knows are in its log; record them again on the new base.
            let known_upto = self.chosen_upto.max(slot);
            self.membership = membership;
            for (&chosen_in, state) in self.log.range(slot + 1..known_upto + 1) {
                if let SlotState::Chosen {
                    value: Value::Reconfigure(members),
                } = state
                {
                    record_change(&mut self.membership, chosen_in, members, &self.config);
                }
            }
        }
        self.log = self.log.split_off(&(slot + 1));
        self.log_start = self.log_start.max(slot + 1);
        self.chosen_upto = self.chosen_upto.max(slot);
        self.emitted_upto = slot;
        self.leader_commit = self.leader_commit.max(slot);
        self.proposals = self.proposals.split_off(&(slot + 1));
        self.catch_up_sent_at = None;
        self.advance_chosen();
        self.check_invariants();
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.now_ticks += 1;
        match self.role {
            // A leader whose removal is in force leaves the group to the
            // remaining members (they elect one of theirs on timeout).
            Role::Leader if !self.is_voter() => self.step_down(None),
            Role::Leader => self.tick_leader(),
            Role::Candidate if !self.is_voter() => self.step_down(None),
            // Only members campaign: a replica being added, or one
            // removed, never disrupts the group with ballots. Instead, when
            // it hears no leader, it pulls the chosen log from the members
            // it knows: a replica about to be added catches up early, and
            // the members of a new configuration learn the change that made
            // them voters even if the outgoing leader stopped before
            // telling them.
            Role::Follower if !self.is_voter() => {
                self.election_elapsed_ticks += 1;
                if self.election_elapsed_ticks >= self.election_timeout_ticks {
                    self.reset_election_timer();
                    self.pull_catch_up();
                }
            }
            Role::Follower | Role::Candidate => {
                self.election_elapsed_ticks += 1;
                if self.election_elapsed_ticks >= self.election_timeout_ticks {
                    self.start_election();
                }
            }
        }
        self.finish_call();
    }

    /// Queues a command. Only the leader takes proposals; the command is
    /// chosen some time later, or lost if leadership changes first (the
    /// caller must then treat its outcome as unknown).
    pub fn propose(&mut self, command: Command) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader_hint,
            });
        }
        if self.pending.len() >= self.config.pending_commands_max {
            return Err(ProposeError::Busy);
        }
        self.pending.push_back(command);
        self.finish_call();
        Ok(())
    }

    /// Proposes a membership change: `members` will vote on every slot
    /// from `r + reconfig_window_slots` on, once it is chosen in slot `r`.
    /// Add, remove and replace are all this one call with the new set. One
    /// change at a time: another is refused until this one is in force. A
    /// replica being added should be running (as a non-voter, catching up)
    /// first, or the new configuration may have no quorum.
    pub fn reconfigure(&mut self, members: Vec<NodeId>) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader_hint,
            });
        }
        validate_members(&members).map_err(ProposeError::InvalidMembership)?;
        if self.reconfiguring() {
            return Err(ProposeError::Reconfiguring);
        }
        self.reconfig_queued = Some(members);
        self.finish_call();
        Ok(())
    }

    /// Whether a membership change is queued, in flight, or chosen and not
    /// yet in force.
    pub fn reconfiguring(&self) -> bool {
        self.reconfig_queued.is_some()
            || self.unrecorded_change().is_some()
            || self.membership.changes_after(self.chosen_upto + 1)
    }

    /// The slot of the latest membership change not yet in `membership`:
    /// in flight, or known chosen above a gap (changes are recorded in slot
    /// order, as the prefix reaches them).
    fn unrecorded_change(&self) -> Option<Slot> {
        let is_change = |value: &Value| matches!(value, Value::Reconfigure(_));
        let in_flight = self
            .proposals
            .iter()
            .filter(|(_, p)| is_change(&p.value))
            .map(|(&slot, _)| slot);
        let chosen = self
            .log
            .range(self.chosen_upto + 1..)
            .filter(|(_, state)| matches!(state, SlotState::Chosen { value } if is_change(value)))
            .map(|(&slot, _)| slot);
        in_flight.chain(chosen).max()
    }

    /// Starts a linearizable read. When leadership is confirmed, a
    /// [`ReadReady`] with this `read_id` appears in a `Ready`; the read may be
    /// served once the state machine has applied its slot.
    pub fn read_index(&mut self, read_id: u64) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader_hint,
            });
        }
        if self.pending_reads.len() >= self.config.pending_commands_max {
            return Err(ProposeError::Busy);
        }
        // Slots known chosen above a gap count too: this leader may have
        // served them to a peer's catch-up, which may have applied them.
        let chosen_above_gap = self
            .log
            .range(self.chosen_upto + 1..)
            .rev()
            .find(|(_, state)| matches!(state, SlotState::Chosen { .. }))
            .map_or(0, |(&slot, _)| slot);
        let slot = self
            .chosen_upto
            .max(self.recovered_upto)
            .max(chosen_above_gap);
        self.pending_reads.push(PendingRead {
            read_id,
            slot,
            probe: self.probe + 1,
        });
        self.probe_wanted = true;
        self.finish_call();
        Ok(())
    }

    /// Handles a message from a peer. Messages addressed to another
    /// replica, or claiming to come from this one, are ignored: the network
    /// may misdeliver, and no input from it may crash a replica. Senders
    /// outside every configuration this replica knows are heard: a replica
    /// that is behind may not know the configuration that made its leader
    /// a member, and the acceptor rules are safe whoever sends.
    pub fn step(&mut self, envelope: Envelope) {
        if envelope.to != self.id() || envelope.from == self.id() {
            debug!(from = %envelope.from, to = %envelope.to, "dropped misaddressed message");
            return;
        }
        self.handle(envelope.from, envelope.message);
        self.finish_call();
    }

    /// Whether [`Replica::ready`] has anything.
    pub fn has_ready(&self) -> bool {
        !self.awaiting_advance
            && (!self.out.is_empty()
                || !self.local_after_persist.is_empty()
                || self.emitted_upto < self.chosen_upto
                || self.next_source().is_some())
    }

    /// Takes what the driver must do now. Call [`Replica::advance`] once it
    /// is done, before the next `ready`.
    pub fn ready(&mut self) -> Ready {
        assert!(
            !self.awaiting_advance,
            "Replica::ready called twice without advance"
        );
        // Commands are cut into slots here, not in `propose`, so that all
        // proposed since the last `Ready` share slots (batching under any
        // load, not only once the pipeline is full).
        if self.next_source().is_some() {
            self.fill_slots();
            self.drain_local();
        }
        self.awaiting_advance = true;
        self.local_in_flight = std::mem::take(&mut self.local_after_persist);
        let mut ready = std::mem::take(&mut self.out);
        if self.emitted_upto < self.chosen_upto {
            for slot in self.emitted_upto + 1..=self.chosen_upto {
                match self.log.get(&slot) {
                    Some(SlotState::Chosen { value }) => {
                        ready.chosen.push(Entry {
                            slot,
                            value: value.clone(),
                        });
                    }
                    _ => unreachable_chosen(slot),
                }
            }
            self.emitted_upto = self.chosen_upto;
        }
        ready
    }

    /// Confirms that the last `Ready` was carried out: its `persist` is
    /// durable and its messages are sent.
    pub fn advance(&mut self) {
        assert!(
            self.awaiting_advance,
            "Replica::advance called without ready"
        );
        self.awaiting_advance = false;
        let id = self.id();
        for message in std::mem::take(&mut self.local_in_flight) {
            self.handle(id, message);
        }
        self.finish_call();
    }

    /// Routes one message to the role that handles it.
    fn handle(&mut self, from: NodeId, message: Message) {
        match message {
            Message::Prepare { ballot, first_slot } => self.on_prepare(from, ballot, first_slot),
            Message::Promise {
                ballot,
                first_slot,
                compacted_upto,
                slots,
            } => self.on_promise(from, ballot, first_slot, compacted_upto, slots),
            Message::Accept {
                ballot,
                entries,
                commit_upto,
            } => self.on_accept(from, ballot, entries, commit_upto),
            Message::Accepted { ballot, slots } => self.on_accepted(from, ballot, &slots),
            Message::Nack { ballot, promised } => self.on_nack(ballot, promised),
            Message::Heartbeat {
                ballot,
                commit_upto,
                probe,
            } => self.on_heartbeat(from, ballot, commit_upto, probe),
            Message::HeartbeatAck { ballot, probe } => self.on_heartbeat_ack(from, ballot, probe),
            Message::CatchUp {
                first_slot,
                last_slot,
            } => self.on_catch_up(from, first_slot, last_slot),
            Message::Chosen { entries } => self.on_chosen(from, entries),
            // Snapshot transfer is the driver's business.
            Message::Snapshot { .. } => {}
        }
    }

    /// Work every public call ends with: deliver messages to self, start a
    /// read round if one is wanted, release confirmed reads.
    fn finish_call(&mut self) {
        self.drain_local();
        if self.role == Role::Leader {
            self.request_promises_if_stalled();
            if self.probe_wanted {
                self.probe_wanted = false;
                self.broadcast_heartbeat();
            }
            self.confirm_reads();
            self.drain_local();
        }
        self.check_invariants();
    }

    /// Handles the messages this replica sent itself.
    fn drain_local(&mut self) {
        let id = self.id();
        while let Some(message) = self.local.pop_front() {
            self.handle(id, message);
        }
    }

    /// Sends a message now (to self: handled before the call returns).
    fn send(&mut self, to: NodeId, message: Message) {
        if to == self.id() {
            self.local.push_back(message);
        } else {
            self.out.messages.push(Envelope {
                from: self.id(),
                to,
                message,
            });
        }
    }

    /// Sends a message once the current `Ready` is durable.
    fn send_persisted(&mut self, to: NodeId, message: Message) {
        if to == self.id() {
            self.local_after_persist.push(message);
        } else {
            self.out.persisted_messages.push(Envelope {
                from: self.id(),
                to,
                message,
            });
        }
    }

    fn persist(&mut self, op: PersistOp) {
        self.out.persist.push(op);
    }

    /// The last slot a leader may propose now: slot `i` needs every slot
    /// up to `i - α` chosen.
    fn window_last(&self) -> Slot {
        self.chosen_upto + self.config.reconfig_window_slots
    }

    /// The configurations of the slots a leader may propose now.
    fn window_runs(&self) -> Vec<(Slot, &[NodeId])> {
        self.membership
            .runs(self.chosen_upto + 1, self.window_last())
    }

    /// Every member of a configuration in the window, once each, in order.
    fn window_members(&self) -> Vec<NodeId> {
        let mut members: Vec<NodeId> = self
            .window_runs()
            .into_iter()
            .flat_map(|(_, members)| members.iter().copied())
            .collect();
        members.sort_unstable();
        members.dedup();
        members
    }

    /// Whether a majority of `slot`'s members promised this replica's
    /// ballot for it (phase 1 done for that slot).
    fn has_promise_quorum(&self, slot: Slot) -> bool {
        let members = self.membership.members_at(slot);
        let promised = members
            .iter()
            .filter(|m| self.promises.get(m).is_some_and(|p| p.first_slot <= slot))
            .count();
        promised >= majority(members)
    }

    fn observe(&mut self, ballot: Ballot) {
        self.highest_seen = self.highest_seen.max(ballot);
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed_ticks = 0;
        self.election_timeout_ticks = self.rng.between(
            self.config.election_timeout_ticks_min,
            self.config.election_timeout_ticks_max,
        );
    }

    fn ready_read(&mut self, read: ReadReady) {
        self.out.reads.push(read);
    }

    /// Safety invariants, checked after every call. A failure is a bug in
    /// this crate, never a consequence of input, so it stops the process.
    fn check_invariants(&self) {
        assert!(
            self.emitted_upto <= self.chosen_upto,
            "emitted beyond chosen"
        );
        assert!(
            self.highest_seen >= self.promised,
            "highest seen below promised"
        );
        if self.role != Role::Follower {
            assert!(
                self.ballot.node_id == self.id(),
                "own ballot names another node"
            );
            assert!(self.ballot >= self.promised || self.role == Role::Candidate);
        }
        if cfg!(debug_assertions) {
            for slot in self.emitted_upto + 1..=self.chosen_upto {
                assert!(
                    matches!(self.log.get(&slot), Some(SlotState::Chosen { .. })),
                    "slot {slot} below chosen_upto is not chosen"
                );
            }
            assert!(
                self.log
                    .keys()
                    .next()
                    .is_none_or(|&first| first >= self.log_start),
                "log holds a slot below log_start"
            );
            assert!(
                self.log_start <= self.emitted_upto + 1,
                "compacted beyond applied"
            );
            for (&slot, state) in self.log.range(self.chosen_upto + 1..) {
                if let SlotState::Accepted { ballot, .. } = state {
                    assert!(
                        *ballot <= self.promised,
                        "slot {slot} accepted above the promise"
                    );
                }
            }
            if self.role == Role::Leader {
                assert!(self
                    .proposals
                    .keys()
                    .all(|&s| s < self.next_slot && s > self.chosen_upto));
                assert!(
                    self.proposals.keys().all(|&s| s <= self.window_last()),
                    "a slot in flight beyond the α-window"
                );
            }
        }
    }
}

/// Records a change chosen in `chosen_in`. Only valid member sets are ever
/// proposed; a chosen invalid one (a bug, or a damaged log) is skipped the
/// same way on every replica, so they still agree.
fn record_change(
    membership: &mut Membership,
    chosen_in: Slot,
    members: &[NodeId],
    config: &Config,
) {
    match validate_members(members) {
        Ok(()) => membership.record(chosen_in, members, config.reconfig_window_slots),
        Err(reason) => error!(slot = chosen_in, %reason, "skipped an invalid membership change"),
    }
}

/// The log holds every slot up to `chosen_upto` as chosen; the invariant
/// checks prove it after every call, so reaching this is a bug.
#[cold]
fn unreachable_chosen(slot: Slot) -> ! {
    panic!("slot {slot} is below chosen_upto but not chosen: invariant broken")
}
