//! Settings of one replica, validated before the replica starts.

use crate::error::ConfigError;
use crate::membership::validate_members;
use crate::types::NodeId;

/// Largest α: it also bounds how many slots a leader keeps in flight.
pub const RECONFIG_WINDOW_SLOTS_MAX: u64 = 1 << 16;

/// Settings of one replica. Durations are in ticks: the driver decides how
/// long a tick is, which keeps the core free of clocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This replica.
    pub node_id: NodeId,
    /// The group's genesis configuration: the members that vote from slot
    /// 1 on. Later configurations come from `Reconfigure` values in the
    /// log (and from snapshots). Identical on every replica of the group,
    /// including replicas added later, which need not be in it.
    pub members: Vec<NodeId>,
    /// α: a membership change chosen in slot `r` governs slots from
    /// `r + α` on, and the leader proposes slot `i` only once every slot up
    /// to `i - α` is chosen. A group-wide constant: every replica must use
    /// the same value for the whole life of the group.
    pub reconfig_window_slots: u64,
    /// A follower that hears no leader for a random number of ticks in
    /// `[min, max)` starts an election.
    pub election_timeout_ticks_min: u32,
    /// See `election_timeout_ticks_min`.
    pub election_timeout_ticks_max: u32,
    /// How often the leader sends heartbeats (and retransmits).
    pub heartbeat_interval_ticks: u32,
    /// Seeds the election-timeout randomness, so runs are reproducible.
    pub rng_seed: u64,
    /// Slots the leader may have proposed and not yet seen chosen.
    pub inflight_slots_max: u64,
    /// Most commands batched into one slot.
    pub batch_commands_max: usize,
    /// Most command bytes batched into one slot.
    pub batch_bytes_max: usize,
    /// Proposals queued at the leader before `propose` answers `Busy`.
    pub pending_commands_max: usize,
    /// Most slots carried by one `Accept`, `Promise` or `Chosen` message.
    pub message_slots_max: usize,
}

impl Config {
    /// A configuration with defaults for everything but the membership.
    pub fn new(node_id: NodeId, members: Vec<NodeId>) -> Config {
        Config {
            node_id,
            members,
            reconfig_window_slots: 32,
            election_timeout_ticks_min: 10,
            election_timeout_ticks_max: 20,
            heartbeat_interval_ticks: 2,
            rng_seed: node_id.0,
            inflight_slots_max: 32,
            batch_commands_max: 1024,
            batch_bytes_max: 1 << 20,
            pending_commands_max: 65_536,
            message_slots_max: 64,
        }
    }

    /// Checks the settings make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |reason: &str| Err(ConfigError(reason.to_string()));
        if self.node_id == NodeId(0) {
            return invalid("node_id 0 is reserved; number replicas from 1");
        }
        if let Err(reason) = validate_members(&self.members) {
            return invalid(&format!("members (the genesis configuration): {reason}"));
        }
        if self.reconfig_window_slots > RECONFIG_WINDOW_SLOTS_MAX {
            return invalid(&format!(
                "reconfig_window_slots must be at most {RECONFIG_WINDOW_SLOTS_MAX}"
            ));
        }
        if self.heartbeat_interval_ticks == 0 {
            return invalid("heartbeat_interval_ticks must be positive");
        }
        if self.election_timeout_ticks_min <= self.heartbeat_interval_ticks * 2 {
            return invalid(
                "election_timeout_ticks_min must exceed twice heartbeat_interval_ticks",
            );
        }
        if self.election_timeout_ticks_max <= self.election_timeout_ticks_min {
            return invalid("election_timeout_ticks_max must exceed election_timeout_ticks_min");
        }
        let bounds = [
            ("inflight_slots_max", self.inflight_slots_max),
            ("batch_commands_max", self.batch_commands_max as u64),
            ("batch_bytes_max", self.batch_bytes_max as u64),
            ("pending_commands_max", self.pending_commands_max as u64),
            ("message_slots_max", self.message_slots_max as u64),
            ("reconfig_window_slots", self.reconfig_window_slots),
        ];
        for (name, value) in bounds {
            if value == 0 {
                return invalid(&format!("{name} must be positive"));
            }
        }
        Ok(())
    }
}
