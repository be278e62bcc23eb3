//! Snapshots in the driver: taking them every so many applied slots so the
//! log can be compacted, sending them to peers that fell behind the
//! compacted log, and reassembling the ones received.
//!
//! A snapshot is the state machine's bytes at an applied slot, kept in a
//! [`SnapshotStore`] (checksummed, written atomically), with the group's
//! [`Membership`] as of that slot in the file's meta: the snapshot replaces
//! the log prefix whose `Reconfigure` values it was computed from. It is sent in
//! bounded chunks as [`Message::Snapshot`]; the receiver keeps one partial
//! transfer per peer and restarts it when a chunk is missing, and the sender
//! resends at most once per `resend_after`, when the peer asks again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use storage::snapshot::{SnapshotInfo, SnapshotStore};
use storage::StorageError;

use crate::membership::{Membership, MEMBERS_MAX};
use crate::message::{Envelope, Message};
use crate::types::{NodeId, Slot};

/// Snapshot settings and state of one driver.
#[derive(Debug)]
pub(super) struct Snapshots {
    store: SnapshotStore,
    /// Take a snapshot once this many slots were applied since the last.
    every_slots: u64,
    /// Also take one once this many command bytes were applied since.
    every_bytes: u64,
    /// Command bytes applied since the last snapshot.
    applied_bytes: u64,
    chunk_bytes: usize,
    /// Largest snapshot accepted from a peer.
    bytes_max: u64,
    resend_after: Duration,
    /// The slot of the newest durable snapshot (0: none).
    last_slot: Slot,
    /// The membership saved with it, sent with its first chunk.
    last_membership: Option<Membership>,
    sent_at: BTreeMap<NodeId, Instant>,
    incoming: BTreeMap<NodeId, Incoming>,
}

/// A snapshot's contents.
#[derive(Debug)]
pub(super) struct SnapshotData {
    /// It covers every slot up to here.
    pub(super) slot: Slot,
    /// The configurations as of `slot`; `None` in a snapshot written
    /// before membership changes existed (the genesis members then).
    pub(super) membership: Option<Membership>,
    /// The state machine's bytes.
    pub(super) data: Vec<u8>,
}

/// A transfer being received.
#[derive(Debug)]
struct Incoming {
    slot: Slot,
    total_bytes: u64,
    membership: Option<Membership>,
    data: Vec<u8>,
}

/// The snapshot file's meta: the membership, bincode-encoded (empty: none).
fn encode_membership(membership: &Membership) -> Result<Vec<u8>, StorageError> {
    bincode::serialize(membership).map_err(|e| {
        StorageError::InvalidArgument(format!("encoding the snapshot's membership: {e}"))
    })
}

fn decode_membership(info: &SnapshotInfo) -> Result<Option<Membership>, StorageError> {
    if info.meta.is_empty() {
        return Ok(None);
    }
    let corrupt = |reason: String| StorageError::Corruption {
        path: info.path.clone(),
        offset: 0,
        reason,
    };
    let membership: Membership = bincode::deserialize(&info.meta)
        .map_err(|e| corrupt(format!("the membership in the meta does not decode: {e}")))?;
    membership
        .validate()
        .map_err(|e| corrupt(format!("the membership in the meta is invalid: {e}")))?;
    Ok(Some(membership))
}

impl Snapshots {
    /// Opens the store and returns the newest valid snapshot's contents, for
    /// the state machine to restore at start.
    pub(super) fn open(
        store: SnapshotStore,
        every_slots: u64,
        every_bytes: u64,
        chunk_bytes: usize,
        bytes_max: u64,
        resend_after: Duration,
    ) -> Result<(Snapshots, Option<SnapshotData>), StorageError> {
        let latest = match store.latest_valid()? {
            Some(info) => Some(SnapshotData {
                slot: info.index,
                membership: decode_membership(&info)?,
                data: read_all(&store, info.index)?,
            }),
            None => None,
        };
        let snapshots = Snapshots {
            store,
            every_slots,
            every_bytes,
            applied_bytes: 0,
            chunk_bytes: chunk_bytes.max(1),
            bytes_max,
            resend_after,
            last_slot: latest.as_ref().map_or(0, |latest| latest.slot),
            last_membership: latest.as_ref().and_then(|latest| latest.membership.clone()),
            sent_at: BTreeMap::new(),
            incoming: BTreeMap::new(),
        };
        Ok((snapshots, latest))
    }

    /// Whether enough was applied since the last snapshot to take another:
    /// `every_slots` slots, or `every_bytes` bytes of commands.
    pub(super) fn due(&self, applied: Slot) -> bool {
        let by_slots = self.every_slots > 0 && applied >= self.last_slot + self.every_slots;
        let by_bytes = self.every_bytes > 0
            && self.applied_bytes >= self.every_bytes
            && applied > self.last_slot;
        by_slots || by_bytes
    }

    /// Counts `len_bytes` of commands applied.
    pub(super) fn note_applied(&mut self, len_bytes: usize) {
        self.applied_bytes = self
            .applied_bytes
            .saturating_add(u64::try_from(len_bytes).unwrap_or(u64::MAX));
    }

    /// Makes `data` the durable snapshot at `slot` and drops older ones.
    pub(super) fn save(
        &mut self,
        slot: Slot,
        membership: Option<&Membership>,
        data: &[u8],
    ) -> Result<(), StorageError> {
        let meta = match membership {
            Some(membership) => encode_membership(membership)?,
            None => Vec::new(),
        };
        let mut writer = self.store.begin(slot, &meta)?;
        // The writer cuts its own chunks.
        writer.write_chunk(data)?;
        writer.finish()?;
        self.last_slot = slot;
        self.applied_bytes = 0;
        self.last_membership = membership.cloned();
        self.store.remove_older_than(slot)?;
        Ok(())
    }

    /// The chunks of the newest snapshot for `peer`, unless it was sent one
    /// less than `resend_after` ago.
    pub(super) fn chunks_for(
        &mut self,
        me: NodeId,
        peer: NodeId,
        now: Instant,
    ) -> Result<Vec<Envelope>, StorageError> {
        if self.last_slot == 0
            || self
                .sent_at
                .get(&peer)
                .is_some_and(|&at| now < at + self.resend_after)
        {
            return Ok(Vec::new());
        }
        self.sent_at.insert(peer, now);
        let membership = self.last_membership.clone();
        let data = read_all(&self.store, self.last_slot)?;
        let total_bytes = data.len() as u64;
        let mut offset = 0u64;
        let mut envelopes = Vec::new();
        // An empty snapshot is still one (empty) chunk, so it completes.
        for chunk in data
            .chunks(self.chunk_bytes)
            .chain(data.is_empty().then_some(&[][..]))
        {
            envelopes.push(Envelope {
                from: me,
                to: peer,
                message: Message::Snapshot {
                    slot: self.last_slot,
                    offset,
                    total_bytes,
                    membership: if offset == 0 {
                        membership.clone()
                    } else {
                        None
                    },
                    data: chunk.to_vec(),
                },
            });
            offset += chunk.len() as u64;
        }
        Ok(envelopes)
    }

    /// Takes one received chunk; returns the whole snapshot once complete.
    pub(super) fn receive(
        &mut self,
        from: NodeId,
        slot: Slot,
        offset: u64,
        total_bytes: u64,
        membership: Option<Membership>,
        data: Vec<u8>,
    ) -> Option<SnapshotData> {
        if total_bytes > self.bytes_max || offset.saturating_add(data.len() as u64) > total_bytes {
            return None;
        }
        if offset == 0 {
            // A new transfer replaces whatever was partly received from the
            // same peer. Senders are not checked against the membership (a
            // lagging replica may not know its leader's), so the number of
            // transfers is capped, and memory grows only with bytes that
            // really arrived, never with what a sender claims.
            if !self.incoming.contains_key(&from) && self.incoming.len() >= MEMBERS_MAX {
                return None;
            }
            self.incoming.insert(
                from,
                Incoming {
                    slot,
                    total_bytes,
                    membership,
                    data: Vec::new(),
                },
            );
        }
        let incoming = self.incoming.get_mut(&from)?;
        let in_sequence = incoming.slot == slot
            && incoming.total_bytes == total_bytes
            && incoming.data.len() as u64 == offset;
        if !in_sequence {
            // A chunk went missing: drop the transfer; the peer resends.
            self.incoming.remove(&from);
            return None;
        }
        incoming.data.extend_from_slice(&data);
        if incoming.data.len() as u64 == total_bytes {
            return self.incoming.remove(&from).map(|done| SnapshotData {
                slot: done.slot,
                membership: done.membership,
                data: done.data,
            });
        }
        None
    }
}

fn read_all(store: &SnapshotStore, slot: Slot) -> Result<Vec<u8>, StorageError> {
    let mut reader = store.open_snapshot(slot)?;
    let mut data = Vec::new();
    while let Some(chunk) = reader.next_chunk()? {
        data.extend_from_slice(&chunk);
    }
    Ok(data)
}
