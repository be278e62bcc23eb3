//! The controller as a `paxos-log` application: [`ControllerStateMachine`].
//!
//! It adds to the pure [`Controller`] what replication needs: at-most-once
//! sessions for retried changes ([`crate::session`]), decoding commands and
//! encoding replies ([`crate::wire`]), and snapshots.
//!
//! * `apply` decodes a [`ControllerCommand`]; undecodable bytes get an
//!   encoded [`ControllerReply::Error`] and change nothing.
//! * `read` answers a [`ControllerQuery`] from the current state; the driver
//!   makes it linearizable with read-index.
//! * `durable_slot` is 0: the state lives in memory and is rebuilt from the
//!   log and snapshots after a restart.
//! * `snapshot` is one version byte ([`SNAPSHOT_VERSION`]) followed by the
//!   bincode encoding (fixed-width integers) of every configuration and the
//!   session table (the driver stores the slot beside it). `restore` checks the version, the
//!   decoding and every invariant ([`Controller::check`]) before replacing
//!   anything, so a corrupt snapshot leaves the state untouched.

use paxos_log::{Slot, StateMachine};
use serde::{Deserialize, Serialize};

use bincode::Options;

use crate::core::Controller;
use crate::error::ControllerError;
use crate::limits::MAX_SESSIONS;
use crate::session::{SessionCheck, SessionTable};
use crate::wire::{
    bincode_options, decode, encode, ControllerCommand, ControllerQuery, ControllerReply,
};

/// First byte of every controller snapshot.
pub const SNAPSHOT_VERSION: u8 = 1;

/// The replicated shard controller: configurations plus client sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerStateMachine {
    controller: Controller,
    sessions: SessionTable,
}

/// Snapshot body, borrowed for encoding.
#[derive(Serialize)]
struct SnapshotRef<'a> {
    controller: &'a Controller,
    sessions: &'a SessionTable,
}

/// Snapshot body, owned for decoding; same fields, same order.
#[derive(Deserialize)]
struct SnapshotOwned {
    controller: Controller,
    sessions: SessionTable,
}

impl ControllerStateMachine {
    /// A state machine holding only configuration 0, pre-split into
    /// `initial_shards` shards (see [`crate::config`]). Every replica of the
    /// controller must be built with the same count.
    pub fn new(initial_shards: u32) -> Result<Self, ControllerError> {
        Ok(ControllerStateMachine {
            controller: Controller::new(initial_shards)?,
            sessions: SessionTable::default(),
        })
    }

    /// The configurations.
    pub fn controller(&self) -> &Controller {
        &self.controller
    }

    /// The client sessions.
    pub fn sessions(&self) -> &SessionTable {
        &self.sessions
    }

    /// Applies a decoded command chosen in `slot`.
    pub fn apply_command(&mut self, slot: Slot, command: &ControllerCommand) -> ControllerReply {
        let ControllerCommand::Change { client_id, seq, op } = command;
        match self.sessions.check(*client_id, *seq, slot) {
            SessionCheck::Duplicate(reply) => reply,
            SessionCheck::Stale(err) => ControllerReply::Error(err),
            SessionCheck::New => {
                let reply = self.controller.apply(op);
                self.sessions.record(*client_id, *seq, reply.clone(), slot);
                reply
            }
        }
    }

    /// Answers a query from the current state.
    pub fn query(&self, query: &ControllerQuery) -> ControllerReply {
        match query {
            ControllerQuery::Config { num } => ControllerReply::Config(self.controller.query(*num)),
        }
    }

    /// Decodes and checks a snapshot without installing it.
    fn decode_snapshot(snapshot: &[u8]) -> Result<SnapshotOwned, String> {
        let (&version, body) = snapshot.split_first().ok_or("empty controller snapshot")?;
        if version != SNAPSHOT_VERSION {
            return Err(format!(
                "controller snapshot version {version} is not supported (expected {SNAPSHOT_VERSION})"
            ));
        }
        let decoded: SnapshotOwned = bincode_options(body.len())
            .deserialize(body)
            .map_err(|err| format!("corrupt controller snapshot: {err}"))?;
        decoded
            .controller
            .check()
            .map_err(|err| format!("corrupt controller snapshot: {err}"))?;
        if decoded.sessions.len() > MAX_SESSIONS {
            return Err("corrupt controller snapshot: too many sessions".to_string());
        }
        Ok(decoded)
    }
}

impl StateMachine for ControllerStateMachine {
    fn apply(&mut self, slot: Slot, command: &[u8]) -> Vec<u8> {
        let reply = match decode::<ControllerCommand>(command) {
            Ok(command) => self.apply_command(slot, &command),
            Err(err) => ControllerReply::Error(err),
        };
        encode(&reply)
    }

    fn read(&mut self, query: &[u8]) -> Vec<u8> {
        let reply = match decode::<ControllerQuery>(query) {
            Ok(query) => self.query(&query),
            Err(err) => ControllerReply::Error(err),
        };
        encode(&reply)
    }

    fn durable_slot(&self) -> Slot {
        0
    }

    fn snapshot(&mut self) -> Option<Vec<u8>> {
        let body = SnapshotRef {
            controller: &self.controller,
            sessions: &self.sessions,
        };
        let mut bytes = vec![SNAPSHOT_VERSION];
        // Serializing plain in-memory data into a Vec cannot fail; if it
        // ever did, no snapshot is better than a truncated one.
        bincode_options(usize::MAX)
            .serialize_into(&mut bytes, &body)
            .ok()?;
        Some(bytes)
    }

    fn restore(&mut self, _slot: Slot, snapshot: &[u8]) -> Result<(), String> {
        let decoded = Self::decode_snapshot(snapshot)?;
        self.controller = decoded.controller;
        self.sessions = decoded.sessions;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_refuses_a_snapshot_that_breaks_an_invariant() {
        let mut corrupt = ControllerStateMachine::new(2).unwrap();
        corrupt.controller.set_owner_for_tests(0, 0, Some(77));
        let bytes = corrupt.snapshot().unwrap();

        let mut sm = ControllerStateMachine::new(2).unwrap();
        let before = sm.clone();
        let err = sm.restore(5, &bytes).unwrap_err();
        assert!(err.contains("unknown group 77"), "{err}");
        assert_eq!(sm, before);
    }
}
