//! At-most-once execution of retried admin requests: [`SessionTable`].
//!
//! Every change request carries `(client_id, seq)`; a client gives each new
//! request a higher seq than the last (gaps are fine) and retries a request
//! with the same seq. Per client the table keeps the last seq applied and
//! its reply:
//!
//! * `seq` equal to the last one: a retry. It gets the stored reply and is
//!   not applied again (so a retried Join whose reply was lost answers with
//!   the configuration it created instead of "group exists").
//! * `seq` above the last one (or a client not in the table): a new request;
//!   it is applied and its reply (success or refusal) stored.
//! * `seq` below the last one: a retry of a request whose reply is gone. It
//!   is refused with [`ControllerError::StaleSeq`] and not applied; a client
//!   only sees that if a delayed copy of an old request arrives late.
//!
//! The table is bounded by [`MAX_SESSIONS`]: admitting a new client to a
//! full table drops the session with the lowest last slot (ties: lowest
//! client id, though slots are unique in practice). The choice depends only
//! on the log, so every replica drops the same one.

use std::collections::BTreeMap;

use paxos_log::Slot;
use serde::{Deserialize, Serialize};

use crate::error::ControllerError;
use crate::limits::MAX_SESSIONS;
use crate::wire::ControllerReply;

/// Identifies an admin client (chosen at random by the client).
pub type ClientId = u64;

/// What the table remembers about one client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The last seq applied for the client.
    pub seq: u64,
    /// Its reply.
    pub reply: ControllerReply,
    /// The slot of the client's latest request (applied or retried), for
    /// eviction.
    pub last_slot: Slot,
}

/// What to do with a request, per [`SessionTable::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCheck {
    /// Apply it, then [`SessionTable::record`] the reply.
    New,
    /// Answer with this stored reply; do not apply.
    Duplicate(ControllerReply),
    /// Refuse it; do not apply.
    Stale(ControllerError),
}

/// The last seq and reply per client, bounded by [`MAX_SESSIONS`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionTable {
    sessions: BTreeMap<ClientId, Session>,
}

impl SessionTable {
    /// Classifies request `seq` of `client_id`, arriving in `slot`. A
    /// duplicate refreshes the session's last slot.
    pub fn check(&mut self, client_id: ClientId, seq: u64, slot: Slot) -> SessionCheck {
        let Some(session) = self.sessions.get_mut(&client_id) else {
            return SessionCheck::New;
        };
        if seq > session.seq {
            SessionCheck::New
        } else if seq == session.seq {
            session.last_slot = slot;
            SessionCheck::Duplicate(session.reply.clone())
        } else {
            SessionCheck::Stale(ControllerError::StaleSeq {
                client_id,
                seq,
                last_seq: session.seq,
            })
        }
    }

    /// Stores the reply to request `seq` of `client_id`, applied in `slot`,
    /// dropping the least recently used session if a new client would
    /// overflow the table.
    pub fn record(&mut self, client_id: ClientId, seq: u64, reply: ControllerReply, slot: Slot) {
        if !self.sessions.contains_key(&client_id) && self.sessions.len() >= MAX_SESSIONS {
            let oldest = self
                .sessions
                .iter()
                .min_by_key(|(&id, session)| (session.last_slot, id))
                .map(|(&id, _)| id);
            if let Some(oldest) = oldest {
                self.sessions.remove(&oldest);
            }
        }
        self.sessions.insert(
            client_id,
            Session {
                seq,
                reply,
                last_slot: slot,
            },
        );
    }

    /// The session of `client_id`, if kept.
    pub fn get(&self, client_id: ClientId) -> Option<&Session> {
        self.sessions.get(&client_id)
    }

    /// Number of sessions kept.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is kept.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_drops_the_least_recently_used_client() {
        let mut table = SessionTable::default();
        let reply = ControllerReply::Changed { num: 1 };
        for client in 0..MAX_SESSIONS as u64 {
            table.record(client, 1, reply.clone(), client + 1);
        }
        // Client 0 retries (slot refreshed), so client 1 is now the oldest.
        assert_eq!(
            table.check(0, 1, 5000),
            SessionCheck::Duplicate(reply.clone())
        );
        table.record(9999, 1, reply.clone(), 5001);
        assert_eq!(table.len(), MAX_SESSIONS);
        assert!(table.get(0).is_some());
        assert!(table.get(1).is_none());
        assert!(table.get(9999).is_some());
        // A known client's next request never evicts anyone.
        table.record(2, 2, reply, 5002);
        assert_eq!(table.len(), MAX_SESSIONS);
        assert!(table.get(3).is_some());
    }
}
