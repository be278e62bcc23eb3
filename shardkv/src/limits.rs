//! Every size and time bound of a replica group in one place: [`Limits`].
//!
//! A replica group replicates every write through `paxos-log` and keeps the
//! client session table of each shard inside the shard's sled tree, so each
//! bound here caps either one log entry, one reply, or the state a client can
//! make the group keep. A request over a limit is refused with a typed
//! [`KvError`](crate::KvError) and changes nothing.
//!
//! Limits that decide what `apply` does (the largest value an append may
//! grow, the session bounds) travel inside each command, so that replicas
//! configured differently still apply the log identically; the rest are
//! checked by the server before a request takes a log slot.

use serde::{Deserialize, Serialize};

/// Hard ceiling on [`Limits::key_bytes_max`]: keys are shard boundaries
/// too, and the controller refuses split keys longer than this.
pub const KEY_BYTES_CEILING: usize = controller::limits::MAX_KEY_BYTES;

/// Hard ceiling on [`Limits::value_bytes_max`]: a value must fit in one
/// log entry and one network frame with room to spare.
pub const VALUE_BYTES_CEILING: usize = 8 << 20;

/// Length of every value `put_hash` stores (16 hex digits); no smaller
/// value limit is accepted.
pub const PUT_HASH_VALUE_BYTES: usize = 16;

/// Most items one scan request returns from one shard, whatever the caller
/// asks for; the clerk asks again for more.
pub const SCAN_ITEMS_CEILING: usize = 10_000;

/// The bounds a replica group enforces. In a configuration file, missing
/// fields take their defaults and unknown ones are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Longest key accepted, in bytes.
    pub key_bytes_max: usize,
    /// Longest value accepted or produced (by append), in bytes.
    pub value_bytes_max: usize,
    /// Most bytes of keys and values one scan reply carries.
    pub scan_bytes_max: usize,
    /// Sessions (clients remembered for at-most-once) per shard. A new
    /// client of a full shard is refused until idle sessions expire.
    pub sessions_per_shard_max: u64,
    /// A session idle for this long (in log time: the largest request
    /// timestamp the shard has applied) is forgotten.
    pub session_ttl_ms: u64,
    /// The longest a request may take from the client's first attempt to
    /// its last retry, clock skew between servers included. A request from
    /// a client the shard does not remember is refused if it could be a
    /// retry of a request whose session was already forgotten (see
    /// `docs/shardkv.md`). Must be well below `session_ttl_ms`.
    pub request_max_age_ms: u64,
    /// Most bytes of one migration chunk (one log entry).
    pub migration_chunk_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            key_bytes_max: 4096,
            value_bytes_max: 1 << 20,
            scan_bytes_max: 4 << 20,
            sessions_per_shard_max: 100_000,
            session_ttl_ms: 10 * 60 * 1000,
            request_max_age_ms: 2 * 60 * 1000,
            migration_chunk_bytes: 2 << 20,
        }
    }
}

impl Limits {
    /// Checks that the limits can work together; the text names the field
    /// and the fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.key_bytes_max == 0 || self.key_bytes_max > KEY_BYTES_CEILING {
            return Err(format!(
                "key_bytes_max must be 1 to {KEY_BYTES_CEILING}, not {}",
                self.key_bytes_max
            ));
        }
        if self.value_bytes_max < PUT_HASH_VALUE_BYTES || self.value_bytes_max > VALUE_BYTES_CEILING
        {
            return Err(format!(
                "value_bytes_max must be {PUT_HASH_VALUE_BYTES} (a put_hash value) to \
                 {VALUE_BYTES_CEILING}, not {}",
                self.value_bytes_max
            ));
        }
        if self.scan_bytes_max < self.key_bytes_max + self.value_bytes_max {
            return Err(format!(
                "scan_bytes_max ({}) must hold at least one item (key_bytes_max + \
                 value_bytes_max = {})",
                self.scan_bytes_max,
                self.key_bytes_max + self.value_bytes_max
            ));
        }
        if self.migration_chunk_bytes < self.key_bytes_max + self.value_bytes_max {
            return Err(format!(
                "migration_chunk_bytes ({}) must hold at least one record (key_bytes_max + \
                 value_bytes_max = {})",
                self.migration_chunk_bytes,
                self.key_bytes_max + self.value_bytes_max
            ));
        }
        if self.sessions_per_shard_max == 0 {
            return Err("sessions_per_shard_max must be at least 1".to_string());
        }
        if self.request_max_age_ms == 0 || self.request_max_age_ms >= self.session_ttl_ms {
            return Err(format!(
                "request_max_age_ms ({}) must be above 0 and below session_ttl_ms ({})",
                self.request_max_age_ms, self.session_ttl_ms
            ));
        }
        Ok(())
    }

    /// The part of the limits `apply` needs, carried in every write.
    pub fn apply_limits(&self) -> ApplyLimits {
        ApplyLimits {
            value_bytes_max: u64::try_from(self.value_bytes_max).unwrap_or(u64::MAX),
            sessions_per_shard_max: self.sessions_per_shard_max,
            session_ttl_ms: self.session_ttl_ms,
            request_max_age_ms: self.request_max_age_ms,
        }
    }
}

/// The limits a write is applied under, chosen by the replica that
/// proposed it and carried in the command so every replica applies it the
/// same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyLimits {
    /// Longest value an append may produce.
    pub value_bytes_max: u64,
    /// Most sessions of the shard.
    pub sessions_per_shard_max: u64,
    /// Idle time after which a session is forgotten.
    pub session_ttl_ms: u64,
    /// See [`Limits::request_max_age_ms`].
    pub request_max_age_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_the_field() {
        Limits::default().validate().unwrap();
        let err = Limits {
            key_bytes_max: 0,
            ..Limits::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.contains("key_bytes_max"), "{err}");
        let err = Limits {
            request_max_age_ms: Limits::default().session_ttl_ms,
            ..Limits::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.contains("request_max_age_ms"), "{err}");
        let err = Limits {
            migration_chunk_bytes: 10,
            ..Limits::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.contains("migration_chunk_bytes"), "{err}");
    }
}
