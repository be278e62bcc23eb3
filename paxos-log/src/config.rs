//! Settings of one replica, validated before the replica starts.

use crate::error::ConfigError;
use crate::types::NodeId;

/// Settings of one replica. Durations are in ticks: the driver decides how
/// long a tick is, which keeps the core free of clocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This replica.
    pub node_id: NodeId,
    /// Every voting member of the group, this replica included.
    pub members: Vec<NodeId>,
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
        if !self.members.contains(&self.node_id) {
            return invalid("members must include node_id");
        }
        let mut sorted = self.members.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != self.members.len() {
            return invalid("members must not repeat a node");
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
        ];
        for (name, value) in bounds {
            if value == 0 {
                return invalid(&format!("{name} must be positive"));
            }
        }
        Ok(())
    }

    /// Votes needed for a majority.
    pub fn quorum(&self) -> usize {
        self.members.len() / 2 + 1
    }
}
