//! The properties every run must keep, checked from outside the core.
//!
//! [`Checker`] holds the global view (every value any replica ever reported
//! chosen, every command a client proposed); each invariant is one method
//! returning an [`InvariantError`] when it breaks. The simulator calls them
//! after every `Ready` and every tick; the checker-proof test feeds them
//! broken histories directly.
//!
//! With membership changes the checker also knows the group's true
//! configurations ([`Checker::for_group`]): the genesis members, then each
//! chosen `Reconfigure` in slot `r` governing from `r + α` on, built from the
//! global chosen log as its contiguous prefix grows. Every replica's own
//! account of the configurations of the slots it may vote on next is
//! checked against it ([`Checker::check_configuration`]), because a replica
//! that counts a quorum among the wrong members can choose two values in
//! one slot long before two values are ever reported. The checker keeps
//! and looks up these configurations itself, by the rule above, and never
//! through `paxos_log::Membership`: the code under test is no reference
//! for itself.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use paxos_log::{Entry, Membership, NodeId, Slot, Value};

use super::command_id;
use super::trace::short_value;

/// Which property a run broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invariant {
    /// Two different values chosen for one slot.
    Agreement,
    /// A chosen value no client proposed, or a command chosen twice.
    Validity,
    /// Chosen entries handed out with a gap or a repeat.
    Contiguity,
    /// A value once chosen lost or changed on a replica.
    Durability,
    /// A replica whose configuration of a slot it may vote on or propose
    /// next differs from the one the chosen log decides.
    Configuration,
    /// A read that would miss a write reported chosen before it started.
    ReadLinearizability,
    /// A state machine (applied, restored from its own snapshot after a
    /// restart, or installed from a peer's snapshot) that differs from the
    /// chosen log prefix.
    StateMachine,
    /// A log or store compacted beyond what the state machine applied, or
    /// beyond the durable snapshot that covers it.
    Compaction,
    /// No leader, or no fresh proposal chosen everywhere, after healing.
    Liveness,
    /// The core itself panicked (an internal assertion, or worse).
    CorePanic,
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Invariant::Agreement => "agreement",
            Invariant::Validity => "validity",
            Invariant::Contiguity => "contiguity (gap-free delivery)",
            Invariant::Durability => "durability",
            Invariant::Configuration => "configuration agreement",
            Invariant::ReadLinearizability => "read linearizability",
            Invariant::StateMachine => "state machine = chosen prefix",
            Invariant::Compaction => "compaction covered by applied state and a durable snapshot",
            Invariant::Liveness => "liveness",
            Invariant::CorePanic => "core panic",
        })
    }
}

/// A broken invariant and what exactly broke it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvariantError {
    /// The property.
    pub invariant: Invariant,
    /// Slots, values, replicas involved.
    pub detail: String,
}

impl InvariantError {
    /// An error for `invariant` explained by `detail`.
    pub fn new(invariant: Invariant, detail: impl Into<String>) -> InvariantError {
        InvariantError {
            invariant,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for InvariantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

/// The first report that a slot is chosen.
#[derive(Debug, Clone)]
struct ChosenRecord {
    value: Value,
    by: NodeId,
    tick: u64,
}

/// The group's true configurations, from the global chosen log.
#[derive(Debug)]
struct GroupView {
    /// α (`Config::reconfig_window_slots`).
    window_slots: u64,
    /// Each configuration with its first slot, members sorted: the genesis
    /// members from slot 1, then, for every `Reconfigure` chosen in a slot
    /// `r` of `1..=known_upto`, its members from `r + α` (in slot order, so
    /// the first slots increase).
    configs: Vec<(Slot, Vec<NodeId>)>,
    /// Every slot up to here is reported chosen (and recorded above).
    known_upto: Slot,
}

impl GroupView {
    /// The members of the configuration that governs `slot` (`slot >= 1`):
    /// the last one whose first slot is at most `slot`.
    fn members_at(&self, slot: Slot) -> &[NodeId] {
        self.configs
            .iter()
            .rev()
            .find(|(first, _)| *first <= slot)
            .map_or(&[], |(_, members)| members.as_slice())
    }
}

/// `members`, sorted.
fn sorted(members: &[NodeId]) -> Vec<NodeId> {
    let mut members = members.to_vec();
    members.sort_unstable();
    members
}

/// Global knowledge of a run that the invariants are checked against.
#[derive(Debug, Default)]
pub struct Checker {
    /// Every slot any replica ever reported chosen, with the first report.
    chosen: BTreeMap<Slot, ChosenRecord>,
    /// The slot each chosen command is in.
    command_slot: BTreeMap<u64, Slot>,
    /// Every command a replica took with `propose` returning `Ok`.
    proposed: BTreeSet<u64>,
    /// Every member set a replica took with `reconfigure` returning `Ok`.
    proposed_members: BTreeSet<Vec<NodeId>>,
    /// The true configurations; `None` for a checker fed histories by
    /// hand, which then checks no configuration.
    group: Option<GroupView>,
    /// Highest slot handed out in any `Ready::chosen`.
    max_emitted: Slot,
}

impl Checker {
    /// A checker that has seen nothing and checks no configuration.
    pub fn new() -> Checker {
        Checker::default()
    }

    /// A checker for a group whose genesis configuration is `genesis` and
    /// whose α is `window_slots`: it also knows the true configurations.
    pub fn for_group(genesis: &[NodeId], window_slots: u64) -> Checker {
        Checker {
            group: Some(GroupView {
                window_slots,
                configs: vec![(1, sorted(genesis))],
                known_upto: 0,
            }),
            ..Checker::default()
        }
    }

    /// Records that a replica took command `id` (`propose` returned `Ok`).
    pub fn record_proposed(&mut self, id: u64) {
        self.proposed.insert(id);
    }

    /// Records that a replica took a change to `members` (`reconfigure`
    /// returned `Ok`).
    pub fn record_proposed_members(&mut self, members: &[NodeId]) {
        self.proposed_members.insert(members.to_vec());
    }

    /// The true configurations as far as the chosen log is known without a
    /// gap, each with its first slot (`None` for a checker built with
    /// [`Checker::new`]).
    pub fn true_configurations(&self) -> Option<&[(Slot, Vec<NodeId>)]> {
        self.group.as_ref().map(|g| g.configs.as_slice())
    }

    /// The true members of `slot` (`None` for [`Checker::new`]), as far as
    /// the chosen log is known: right for every slot up to `α` past the
    /// contiguous chosen prefix.
    pub fn true_members_at(&self, slot: Slot) -> Option<&[NodeId]> {
        self.group.as_ref().map(|g| g.members_at(slot))
    }

    /// The newest true configuration: once every change chosen so far is in
    /// force, these are the members (`None` for [`Checker::new`]).
    pub fn latest_members(&self) -> Option<&[NodeId]> {
        self.true_configurations()
            .and_then(|configs| configs.last())
            .map(|(_, members)| members.as_slice())
    }

    /// Highest slot any replica handed out as chosen so far: what a read
    /// started now must see.
    pub fn max_emitted(&self) -> Slot {
        self.max_emitted
    }

    /// Highest slot any replica reported chosen (emitted or held).
    pub fn max_chosen(&self) -> Slot {
        self.chosen.keys().next_back().copied().unwrap_or(0)
    }

    /// Slots reported chosen.
    pub fn chosen_slots(&self) -> usize {
        self.chosen.len()
    }

    /// Every slot reported chosen with its value, in slot order.
    pub fn chosen_entries(&self) -> impl Iterator<Item = (Slot, &Value)> + '_ {
        self.chosen.iter().map(|(slot, r)| (*slot, &r.value))
    }

    /// Distinct commands chosen.
    pub fn chosen_commands(&self) -> usize {
        self.command_slot.len()
    }

    /// The slot command `id` was chosen in, if it was.
    pub fn command_slot(&self, id: u64) -> Option<Slot> {
        self.command_slot.get(&id).copied()
    }

    /// Records that `node` handed out `entries` as chosen in one `Ready`
    /// and checks them: contiguity from `emitted_upto`, then agreement and
    /// validity of each. Returns the new emitted point.
    pub fn on_emitted(
        &mut self,
        node: NodeId,
        tick: u64,
        emitted_upto: Slot,
        entries: &[Entry],
    ) -> Result<Slot, InvariantError> {
        let upto = Self::check_contiguity(node, emitted_upto, entries)?;
        for entry in entries {
            self.on_chosen(node, tick, entry.slot, &entry.value)?;
        }
        self.max_emitted = self.max_emitted.max(upto);
        Ok(upto)
    }

    /// Records that `node` reports `value` chosen in `slot` (handed out, or
    /// held as chosen) and checks agreement and, the first time the slot is
    /// reported, validity.
    pub fn on_chosen(
        &mut self,
        node: NodeId,
        tick: u64,
        slot: Slot,
        value: &Value,
    ) -> Result<(), InvariantError> {
        if self.check_agreement(node, slot, value)? {
            return Ok(());
        }
        self.check_validity(slot, value)?;
        if let Value::Commands(commands) = value {
            for command in commands {
                if let Some(id) = command_id(command) {
                    self.command_slot.insert(id, slot);
                }
            }
        }
        self.chosen.insert(
            slot,
            ChosenRecord {
                value: value.clone(),
                by: node,
                tick,
            },
        );
        self.extend_group_view();
        Ok(())
    }

    /// Moves the true configurations over every newly contiguous chosen
    /// slot, in slot order: a `Reconfigure` chosen in slot `r` governs from
    /// `r + α` on.
    fn extend_group_view(&mut self) {
        let Some(group) = self.group.as_mut() else {
            return;
        };
        while let Some(record) = self.chosen.get(&(group.known_upto + 1)) {
            group.known_upto += 1;
            if let Value::Reconfigure(members) = &record.value {
                let first = group.known_upto + group.window_slots;
                group.configs.push((first, sorted(members)));
            }
        }
    }

    /// **Agreement**: no two replicas (nor one replica in two incarnations)
    /// ever report different values chosen for the same slot. Returns
    /// whether the slot was already known (with this same value).
    pub fn check_agreement(
        &self,
        node: NodeId,
        slot: Slot,
        value: &Value,
    ) -> Result<bool, InvariantError> {
        match self.chosen.get(&slot) {
            None => Ok(false),
            Some(first) if first.value == *value => Ok(true),
            Some(first) => Err(InvariantError::new(
                Invariant::Agreement,
                format!(
                    "slot {slot}: {node} reports {} chosen, but {} reported {} chosen at tick {}",
                    short_value(value),
                    first.by,
                    short_value(&first.value),
                    first.tick
                ),
            )),
        }
    }

    /// **Validity**: a value newly reported chosen is a no-op, a
    /// membership change to a member set some leader took, or a non-empty
    /// batch of distinct commands that clients proposed and that no other
    /// slot holds (a command is chosen at most once in the log).
    pub fn check_validity(&self, slot: Slot, value: &Value) -> Result<(), InvariantError> {
        let invalid = |why: String| {
            Err(InvariantError::new(
                Invariant::Validity,
                format!("slot {slot} chosen as {}: {why}", short_value(value)),
            ))
        };
        let commands = match value {
            Value::Noop => return Ok(()),
            Value::Reconfigure(members) if self.proposed_members.contains(members) => {
                return Ok(());
            }
            Value::Reconfigure(_) => {
                return invalid("no leader ever took a change to that member set".to_string());
            }
            Value::Commands(commands) => commands,
        };
        if commands.is_empty() {
            return invalid("an empty batch".to_string());
        }
        let mut seen = BTreeSet::new();
        for command in commands {
            let Some(id) = command_id(command) else {
                return invalid(format!("{command:?} is not a command any client sends"));
            };
            if !self.proposed.contains(&id) {
                return invalid(format!("command c{id} was never proposed"));
            }
            if !seen.insert(id) {
                return invalid(format!("command c{id} twice in one batch"));
            }
            if let Some(other) = self.command_slot.get(&id) {
                if *other != slot {
                    return invalid(format!("command c{id} was already chosen in slot {other}"));
                }
            }
        }
        Ok(())
    }

    /// **Contiguity**: the entries one replica incarnation hands out in a
    /// `Ready` continue exactly from what it handed out before (starting
    /// from the `applied_upto` it was created with): no gap, no repeat, in
    /// slot order. Returns the new emitted point.
    pub fn check_contiguity(
        node: NodeId,
        emitted_upto: Slot,
        entries: &[Entry],
    ) -> Result<Slot, InvariantError> {
        let mut upto = emitted_upto;
        for entry in entries {
            if entry.slot != upto + 1 {
                let slots: Vec<Slot> = entries.iter().map(|e| e.slot).collect();
                return Err(InvariantError::new(
                    Invariant::Contiguity,
                    format!(
                        "{node} handed out slots {slots:?} after slot {emitted_upto}: \
                         expected slot {} next",
                        upto + 1
                    ),
                ));
            }
            upto = entry.slot;
        }
        Ok(upto)
    }

    /// **Durability**: a replica that claims every slot up to `chosen_upto`
    /// is chosen (`Replica::chosen_upto`) holds, for each slot in
    /// `(from, chosen_upto]`, a chosen value, and it is the value reported
    /// chosen before (across crashes and restarts of every replica). Slots
    /// no one reported yet are recorded as reported by `node`.
    pub fn check_durability<'a>(
        &mut self,
        node: NodeId,
        tick: u64,
        from: Slot,
        chosen_upto: Slot,
        value_of: impl Fn(Slot) -> Option<&'a Value>,
    ) -> Result<(), InvariantError> {
        for slot in from + 1..=chosen_upto {
            let Some(value) = value_of(slot) else {
                return Err(InvariantError::new(
                    Invariant::Durability,
                    format!(
                        "{node} has chosen_upto {chosen_upto} but holds no chosen value for \
                         slot {slot} (it can neither apply nor serve it)"
                    ),
                ));
            };
            match self.check_agreement(node, slot, value) {
                Err(mut e) => {
                    e.invariant = Invariant::Durability;
                    e.detail = format!("{} (held as chosen in the replica's log)", e.detail);
                    return Err(e);
                }
                Ok(true) => {}
                Ok(false) => self.on_chosen(node, tick, slot, value)?,
            }
        }
        Ok(())
    }

    /// **Durability at the end**: once the faults stopped and the cluster
    /// recovered, every slot ever reported chosen up to `upto` is held, with
    /// the same value, by the replica `node` whose values `value_of` gives.
    pub fn check_nothing_lost<'a>(
        &self,
        node: NodeId,
        upto: Slot,
        value_of: impl Fn(Slot) -> Option<&'a Value>,
    ) -> Result<(), InvariantError> {
        for (slot, record) in self.chosen.range(..=upto) {
            match value_of(*slot) {
                Some(value) if *value == record.value => {}
                other => {
                    return Err(InvariantError::new(
                        Invariant::Durability,
                        format!(
                            "slot {slot} was reported chosen as {} by {} at tick {}, but after \
                             recovery {node} holds {}",
                            short_value(&record.value),
                            record.by,
                            record.tick,
                            other.map_or("nothing".to_string(), short_value)
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    /// **Durability at the end, for a replica outside the group**: a
    /// machine that is no member of the latest configuration stops hearing
    /// from the leader and may stay behind, but every slot up to `upto` it
    /// holds as chosen (`value_of`) holds the value reported chosen there.
    pub fn check_nothing_wrong<'a>(
        &self,
        node: NodeId,
        upto: Slot,
        value_of: impl Fn(Slot) -> Option<&'a Value>,
    ) -> Result<(), InvariantError> {
        for (slot, record) in self.chosen.range(..=upto) {
            match value_of(*slot) {
                Some(value) if *value != record.value => {
                    return Err(InvariantError::new(
                        Invariant::Durability,
                        format!(
                            "slot {slot} was reported chosen as {} by {} at tick {}, but after \
                             recovery {node} (outside the latest configuration) holds {}",
                            short_value(&record.value),
                            record.by,
                            record.tick,
                            short_value(value)
                        ),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// **Configuration agreement**: `node`, which knows every slot up to
    /// `chosen_upto` chosen, holds in `membership` (its
    /// `Replica::membership`) the true configuration of every slot of its
    /// window `chosen_upto + 1 ..= chosen_upto + α`: the slots it may
    /// propose, vote on and count quorums for next. Those configurations
    /// depend only on the changes chosen up to `chosen_upto`, so the chosen
    /// log decides them. The checker must know the chosen log that far (the
    /// simulation checks after the replica's prefix was reported).
    pub fn check_configuration(
        &self,
        node: NodeId,
        chosen_upto: Slot,
        membership: &Membership,
    ) -> Result<(), InvariantError> {
        let Some(group) = self.group.as_ref() else {
            return Ok(());
        };
        let broken = |detail: String| Err(InvariantError::new(Invariant::Configuration, detail));
        if chosen_upto > group.known_upto {
            return broken(format!(
                "{node} knows slots up to {chosen_upto} chosen, but only slots up to {} were \
                 ever reported chosen: its configurations cannot be checked",
                group.known_upto
            ));
        }
        for slot in chosen_upto + 1..=chosen_upto + group.window_slots {
            let truth = group.members_at(slot);
            // The replica's own lookup: what it counts quorums among.
            let held = membership.members_at(slot);
            if held != truth {
                return broken(format!(
                    "{node} (chosen up to {chosen_upto}, α {}) says slot {slot} is governed by \
                     {}, but the chosen log says {} (its membership: {}; the true one: {})",
                    group.window_slots,
                    members_text(held),
                    members_text(truth),
                    membership_text(membership),
                    configurations_text(&group.configs),
                ));
            }
        }
        Ok(())
    }

    /// **State machine**: the state machine (or snapshot) `what` of `node`,
    /// which claims slots `1..=upto` applied, holds for each the value
    /// reported chosen; `value_of` gives its values. Every slot any state
    /// machine holds was handed out as chosen by some replica (or came in a
    /// snapshot, itself checked), so a slot no one reported is a violation
    /// too.
    pub fn check_state_machine<'a>(
        &self,
        node: NodeId,
        what: &str,
        upto: Slot,
        value_of: impl Fn(Slot) -> Option<&'a Value>,
    ) -> Result<(), InvariantError> {
        for slot in 1..=upto {
            let held = value_of(slot);
            let record = self.chosen.get(&slot);
            let ok = matches!((held, record), (Some(held), Some(record)) if *held == record.value);
            if ok {
                continue;
            }
            let held = held.map_or("nothing".to_string(), short_value);
            let detail = match record {
                Some(record) => format!(
                    "{node} {what} (slots 1..={upto}): slot {slot} holds {held}, but {} \
                     reported {} chosen at tick {}",
                    record.by,
                    short_value(&record.value),
                    record.tick
                ),
                None => format!(
                    "{node} {what} (slots 1..={upto}): slot {slot} holds {held}, but no \
                     replica ever reported slot {slot} chosen"
                ),
            };
            return Err(InvariantError::new(Invariant::StateMachine, detail));
        }
        Ok(())
    }

    /// **Compaction**: `node` compacted its log (`log_start`, for a running
    /// replica) and its acceptor store (`store_compacted_upto`) only below
    /// what its state machine applied and what its durable snapshot covers,
    /// so that a restart finds every forgotten slot in the snapshot and a
    /// peer asking for them can be sent it.
    pub fn check_compaction(
        node: NodeId,
        log_start: Option<Slot>,
        applied_upto: Slot,
        snapshot_slot: Slot,
        store_compacted_upto: Slot,
    ) -> Result<(), InvariantError> {
        let broken = |detail: String| Err(InvariantError::new(Invariant::Compaction, detail));
        if let Some(log_start) = log_start {
            let compacted = log_start.saturating_sub(1);
            if compacted > applied_upto {
                return broken(format!(
                    "{node} compacted its log up to slot {compacted} but applied only up to \
                     {applied_upto}"
                ));
            }
            if compacted > snapshot_slot {
                return broken(format!(
                    "{node} compacted its log up to slot {compacted} but its durable snapshot \
                     covers only up to {snapshot_slot}"
                ));
            }
        }
        if store_compacted_upto > snapshot_slot {
            return broken(format!(
                "{node} compacted its acceptor store up to slot {store_compacted_upto} but its \
                 durable snapshot covers only up to {snapshot_slot} (a restart would lose slots)"
            ));
        }
        Ok(())
    }

    /// **Read linearizability**: a read handed out by `node` at `slot` was
    /// started (`read_index`) when slot `required` was the highest handed
    /// out as chosen anywhere; serving it at a lower slot could miss a
    /// write a client already saw succeed.
    pub fn check_read(
        node: NodeId,
        read_id: u64,
        required: Slot,
        slot: Slot,
    ) -> Result<(), InvariantError> {
        if slot >= required {
            return Ok(());
        }
        Err(InvariantError::new(
            Invariant::ReadLinearizability,
            format!(
                "{node} released read r{read_id} at slot {slot}, but slot {required} had \
                 been handed out as chosen before the read started"
            ),
        ))
    }

    /// **Liveness**: `ticks_since_heal` ticks after the faults stopped, the
    /// cluster must have elected a leader and chosen a fresh proposal on
    /// every replica that must apply it (every member of the latest
    /// configuration) (`recovered`); `state` says which for the report.
    pub fn check_liveness(
        recovered: bool,
        ticks_since_heal: u64,
        bound: u64,
        state: impl FnOnce() -> String,
    ) -> Result<(), InvariantError> {
        if recovered || ticks_since_heal < bound {
            return Ok(());
        }
        Err(InvariantError::new(
            Invariant::Liveness,
            format!(
                "{ticks_since_heal} ticks after the faults stopped, no fresh proposal is \
                 chosen and applied where it must be; {}",
                state()
            ),
        ))
    }
}

/// `{n1,n2,n3}`.
pub(crate) fn members_text(members: &[NodeId]) -> String {
    let names: Vec<String> = members.iter().map(ToString::to_string).collect();
    format!("{{{}}}", names.join(","))
}

/// `1:{n1,n2,n3} 40:{n1,n2,n4}`: each configuration from its first slot.
pub(crate) fn membership_text(membership: &Membership) -> String {
    configs_text(membership.iter())
}

/// [`membership_text`] of the checker's own configurations.
pub(crate) fn configurations_text(configs: &[(Slot, Vec<NodeId>)]) -> String {
    configs_text(
        configs
            .iter()
            .map(|(slot, members)| (*slot, members.as_slice())),
    )
}

fn configs_text<'a>(configs: impl Iterator<Item = (Slot, &'a [NodeId])>) -> String {
    configs
        .map(|(slot, members)| format!("{slot}:{}", members_text(members)))
        .collect::<Vec<_>>()
        .join(" ")
}
