//! At-most-once execution of client writes: the per-shard session table.
//!
//! Every write carries `(client_id, seq)`; a clerk gives each new request a
//! higher seq than the last and retries a request with the same seq. Each
//! shard remembers, per client, the last seq applied *to that shard* and its
//! reply, inside the shard's own sled tree ([`Space::Aux`]), so the table is
//! written in the same atomic batch as the data, survives crashes, and moves
//! and splits with the shard:
//!
//! * `seq` equal to the last one: a retry; it gets the stored reply and is
//!   not applied again.
//! * `seq` above it, or a client the shard does not know: new; applied, and
//!   its reply stored.
//! * `seq` below it: a late copy of an old request; refused
//!   ([`KvError::StaleRequest`]), not applied.
//!
//! # Expiry
//!
//! A shard's *log time* is the largest `stamp_ms` (the proposing replica's
//! wall clock) of the writes it applied; it is part of the shard's state, so
//! every replica computes the same expiry. A session idle for longer than
//! `session_ttl_ms` of log time is forgotten; each write sweeps at most
//! [`SWEEP_PER_WRITE`] expired sessions, oldest first, through an index keyed
//! by last activity, so the work per write stays bounded and the table stays
//! near the number of clients active within the TTL. A shard refuses a new
//! client once it holds `sessions_per_shard_max` sessions
//! ([`KvError::TooManySessions`]).
//!
//! Forgetting is only safe if no copy of a forgotten client's request can
//! still arrive. The shard keeps `forgotten_ms`, the latest last-activity of
//! any session it forgot, and refuses a request of an unknown client whose
//! stamp is not later than `forgotten_ms + request_max_age_ms`
//! ([`KvError::SessionExpired`]): a retry is stamped at most
//! `request_max_age_ms` after the original was applied. A genuinely new
//! client's stamp is the present, far above it.
//!
//! # Layout in the shard's aux space
//!
//! ```text
//!   "m"                                  -> ShardMeta (log time, forgotten_ms, count)
//!   "s" ++ client_id (u64 BE)            -> Session (seq, last_ms, reply)
//!   "x" ++ last_ms (u64 BE) ++ client_id -> "" (expiry index, oldest first)
//! ```

use serde::{Deserialize, Serialize};
use storage::sled_store::{ShardBatch, SledStore, Space};
use storage::StorageError;

use crate::error::KvError;
use crate::limits::ApplyLimits;
use crate::wire::{bincode_options, ClientId};
use bincode::Options;
use controller::ShardId;

/// Most expired sessions one write forgets.
pub const SWEEP_PER_WRITE: usize = 16;

const META_KEY: &[u8] = b"m";
const SESSION_PREFIX: u8 = b's';
const INDEX_PREFIX: u8 = b'x';

/// Per-shard bookkeeping of the session table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMeta {
    /// The shard's log time: the largest stamp of a write it applied.
    pub clock_ms: u64,
    /// The latest last-activity of any session forgotten so far.
    pub forgotten_ms: u64,
    /// Sessions held.
    pub sessions: u64,
    /// Sessions forgotten so far (expired), for status pages.
    pub expired: u64,
}

/// What a shard remembers about one client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The last seq applied.
    pub seq: u64,
    /// Log time of that request.
    pub last_ms: u64,
    /// Its encoded reply.
    pub reply: Vec<u8>,
}

/// What to do with a write, per [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Apply it, then [`record`] its reply.
    New {
        /// The client's session before it, if any.
        previous: Option<Session>,
    },
    /// A retry: answer with this stored (encoded) reply.
    Duplicate(Vec<u8>),
    /// Refuse it; nothing changes.
    Refused(KvError),
}

fn session_key(client_id: ClientId) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(SESSION_PREFIX);
    key.extend_from_slice(&client_id.to_be_bytes());
    key
}

fn index_key(last_ms: u64, client_id: ClientId) -> Vec<u8> {
    let mut key = Vec::with_capacity(17);
    key.push(INDEX_PREFIX);
    key.extend_from_slice(&last_ms.to_be_bytes());
    key.extend_from_slice(&client_id.to_be_bytes());
    key
}

fn corrupt(shard: ShardId, what: &str, err: impl std::fmt::Display) -> StorageError {
    StorageError::InvalidArgument(format!(
        "shard {shard}: the session table's {what} does not decode ({err}); the replica's state \
         machine is damaged: rebuild the replica from its peers"
    ))
}

/// The shard's session bookkeeping (defaults for a shard with none yet).
pub fn meta(store: &SledStore, shard: ShardId) -> Result<ShardMeta, StorageError> {
    match store.get(shard, Space::Aux, META_KEY)? {
        None => Ok(ShardMeta::default()),
        Some(bytes) => bincode_options(bytes.len())
            .deserialize(&bytes)
            .map_err(|err| corrupt(shard, "meta record", err)),
    }
}

fn session(
    store: &SledStore,
    shard: ShardId,
    client_id: ClientId,
) -> Result<Option<Session>, StorageError> {
    match store.get(shard, Space::Aux, &session_key(client_id))? {
        None => Ok(None),
        Some(bytes) => bincode_options(bytes.len())
            .deserialize(&bytes)
            .map(Some)
            .map_err(|err| corrupt(shard, "session", err)),
    }
}

/// Classifies request `seq` of `client_id`, stamped `stamp_ms`, against the
/// shard's table (`meta` is the shard's bookkeeping before this write).
pub fn check(
    store: &SledStore,
    shard: ShardId,
    meta: &ShardMeta,
    client_id: ClientId,
    seq: u64,
    stamp_ms: u64,
    limits: &ApplyLimits,
) -> Result<Check, StorageError> {
    match session(store, shard, client_id)? {
        Some(session) if seq == session.seq => Ok(Check::Duplicate(session.reply)),
        Some(session) if seq < session.seq => Ok(Check::Refused(KvError::StaleRequest {
            client_id,
            seq,
            last_seq: session.seq,
        })),
        Some(session) => Ok(Check::New {
            previous: Some(session),
        }),
        None => {
            if meta.forgotten_ms > 0
                && stamp_ms <= meta.forgotten_ms.saturating_add(limits.request_max_age_ms)
            {
                Ok(Check::Refused(KvError::SessionExpired { client_id }))
            } else if meta.sessions >= limits.sessions_per_shard_max {
                Ok(Check::Refused(KvError::TooManySessions {
                    shard,
                    max: limits.sessions_per_shard_max,
                }))
            } else {
                Ok(Check::New { previous: None })
            }
        }
    }
}

/// Adds to `batch` the session update for an applied request: the client's
/// new session, the expiry sweep, and the shard's new meta. `meta` comes in
/// as before the write and leaves as written.
#[allow(clippy::too_many_arguments)]
pub fn record(
    store: &SledStore,
    shard: ShardId,
    meta: &mut ShardMeta,
    batch: &mut ShardBatch,
    client_id: ClientId,
    seq: u64,
    stamp_ms: u64,
    previous: Option<Session>,
    reply: Vec<u8>,
    limits: &ApplyLimits,
) -> Result<(), StorageError> {
    meta.clock_ms = meta.clock_ms.max(stamp_ms);
    match &previous {
        Some(previous) => {
            batch.delete(Space::Aux, &index_key(previous.last_ms, client_id));
        }
        None => meta.sessions += 1,
    }
    let session = Session {
        seq,
        last_ms: meta.clock_ms,
        reply,
    };
    sweep(store, shard, meta, batch, client_id, limits)?;
    batch.put(Space::Aux, &session_key(client_id), &encode_plain(&session));
    batch.put(Space::Aux, &index_key(session.last_ms, client_id), b"");
    batch.put(Space::Aux, META_KEY, &encode_plain(meta));
    Ok(())
}

/// Forgets up to [`SWEEP_PER_WRITE`] sessions idle past the TTL (never
/// `current`, the client being recorded).
fn sweep(
    store: &SledStore,
    shard: ShardId,
    meta: &mut ShardMeta,
    batch: &mut ShardBatch,
    current: ClientId,
    limits: &ApplyLimits,
) -> Result<(), StorageError> {
    let Some(cutoff_ms) = meta.clock_ms.checked_sub(limits.session_ttl_ms) else {
        return Ok(());
    };
    // Index keys below "x" ++ cutoff are sessions last active before it.
    let lo = vec![INDEX_PREFIX];
    let hi = index_key(cutoff_ms, 0);
    let expired = store.scan(
        shard,
        Space::Aux,
        (
            std::ops::Bound::Included(lo.as_slice()),
            std::ops::Bound::Excluded(hi.as_slice()),
        ),
        SWEEP_PER_WRITE + 1,
    )?;
    let mut swept = 0;
    for (key, _) in expired {
        if swept == SWEEP_PER_WRITE {
            break;
        }
        let (Some(last), Some(client)) = (key.get(1..9), key.get(9..17)) else {
            return Err(corrupt(shard, "expiry index", "short key"));
        };
        let last_ms = u64::from_be_bytes(last.try_into().unwrap_or_default());
        let client_id = u64::from_be_bytes(client.try_into().unwrap_or_default());
        if client_id == current {
            continue;
        }
        batch.delete(Space::Aux, &key);
        batch.delete(Space::Aux, &session_key(client_id));
        meta.sessions = meta.sessions.saturating_sub(1);
        meta.expired += 1;
        meta.forgotten_ms = meta.forgotten_ms.max(last_ms);
        swept += 1;
    }
    Ok(())
}

fn encode_plain<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain in-memory data into a Vec: cannot fail (see `wire::encode`).
    bincode_options(usize::MAX)
        .serialize(value)
        .unwrap_or_default()
}
