//! [`WalAcceptorStore`]: the durable [`AcceptorStore`], on the storage
//! crate's write-ahead log.
//!
//! An acceptor may send a promise or an acceptance only once the state
//! behind it can no longer be lost: if a replica forgot a promise after a
//! SIGKILL or a power loss, it could accept a lower ballot and two different
//! values could be chosen for one slot. This store keeps every
//! [`PersistOp`] in a [`Wal`] and rebuilds the acceptor's
//! [`RecoveredState`] from it when the node starts.
//!
//! ```text
//!   Ready.persist ──► persist(ops) ──► one WAL record ──► Wal::sync: one write + one fdatasync
//!                         │
//!                         └──► apply_op on the in-memory RecoveredState
//!
//!   open(dir) ──► Wal::open_replay: every record decoded and applied with apply_op
//!                 (one read of the log) ──► recover() hands out the result
//! ```
//!
//! # One record per `Ready`
//!
//! [`AcceptorStore::persist`] receives the whole `persist` list of one
//! [`crate::Ready`] and encodes it as a single WAL record, then calls
//! [`Wal::sync`] once. So each `Ready` costs exactly one fdatasync however
//! many promises and accepts it carries, and because the WAL frame checksums
//! the record as a whole, a crash keeps either the whole batch or none of it:
//! a stronger guarantee than the trait's "any prefix of the batch".
//!
//! Record format (version 1): one byte `1`, then `bincode::serialize` (bincode
//! 1.3.3, fixed-width little-endian integers) of the batch as a `Vec` of
//! `PersistOp`. A record that does not decode makes [`WalAcceptorStore::open`]
//! fail with [`StorageError::Corruption`] naming the WAL directory and the
//! record's LSN: the frame checksum already passed, so such a record was
//! written by an incompatible build, and skipping it could forget a promise.
//! [`decode_acceptor_record`] decodes one record for read-only tools.
//!
//! # Failures
//!
//! A failed write or fsync poisons the underlying [`Wal`]: every later
//! `persist` fails, and so does [`AcceptorStore::recover`], because whether
//! the failed batch is durable is unknown. The node must restart and
//! [`WalAcceptorStore::open`] again, which reads back what is really on disk:
//! the state after the last successful `persist`, possibly plus the whole
//! failed batch.
//!
//! # Memory
//!
//! The store keeps no copy of the accepted values: the core already holds
//! the log, and copying every command on the persist path would double both
//! the memory and the work. The state rebuilt at open is handed to the
//! first [`AcceptorStore::recover`]; a later `recover` or a `compact` (both
//! rare) reads the WAL back from disk.

use std::path::Path;
use std::sync::Arc;

use bincode::Options;
use storage::wal::{Lsn, RecoveryReport, Wal, WalOptions, WalReader, WalStats};
use storage::{FsRef, StorageError};
use tracing::info;

use crate::ready::PersistOp;
use crate::store::{apply_op, AcceptorStore, RecoveredState};
use crate::types::Slot;

/// The format version byte that starts every acceptor record this build
/// writes, and the only one it reads.
pub const ACCEPTOR_RECORD_VERSION: u8 = 1;

/// Capacity above which the reused encoding buffer is released after a
/// batch, so one unusually large batch does not pin its memory forever.
const ENCODE_BUFFER_RETAIN_BYTES_MAX: usize = 1 << 20;

/// An [`AcceptorStore`] that survives SIGKILL and power loss: each batch is
/// one record of a write-ahead log, made durable with one fdatasync before
/// [`AcceptorStore::persist`] returns. See the module docs.
///
/// # Batch size
///
/// A batch is normally one WAL record. A batch whose encoding would exceed
/// the WAL's `record_size_bytes_max` is split into several records, all made
/// durable by the same single fdatasync: the [`AcceptorStore`] contract lets
/// a crash keep a prefix of a batch, and the core's per-slot bound
/// (`batch_bytes_max`) keeps every single op far below the limit, while a
/// whole `Ready` (e.g. a leader's own accepts for `inflight_slots_max` full
/// slots) may not be. A single op that alone exceeds the limit is refused
/// with [`StorageError::RecordTooLarge`] before anything is written, and the
/// store stays usable.
#[derive(Debug)]
pub struct WalAcceptorStore {
    wal: Wal,
    fs: FsRef,
    /// The WAL's record limit, which bounds each record this store writes.
    record_size_bytes_max: u32,
    /// The durable state as rebuilt at open or written by the last
    /// compaction, until a `recover` takes it or a `persist` makes it stale.
    opened_state: Option<RecoveredState>,
    /// Every slot up to here is compacted away (a checkpoint says so).
    compacted_upto: Slot,
    report: RecoveryReport,
    /// Reused for encoding each batch.
    encode_buffer: Vec<u8>,
    /// Set when a write or fsync failed: what is durable is unknown.
    failed: Option<String>,
}

impl WalAcceptorStore {
    /// Opens (or creates) the acceptor WAL in `dir` and rebuilds the
    /// acceptor state from it in the same pass, so the log is read once.
    ///
    /// A torn record at the end of the log (a crash during its write) is cut
    /// off, as [`Wal::open`] does. Damage anywhere else, or a record that
    /// does not decode, is [`StorageError::Corruption`]: the replica must not
    /// start with state it may have forgotten.
    pub fn open(
        fs: FsRef,
        dir: &Path,
        options: WalOptions,
    ) -> Result<WalAcceptorStore, StorageError> {
        let mut state = RecoveredState::default();
        let record_size_bytes_max = options.record_size_bytes_max;
        let (wal, report) = Wal::open_replay(fs.clone(), dir, options, |lsn, payload| {
            decode_record(dir, lsn, payload, &mut state)
        })?;
        info!(
            dir = %dir.display(),
            records = report.record_count,
            promised = %state.promised,
            accepted_slots = state.accepted.len(),
            chosen_slots = state.chosen.len(),
            "recovered acceptor state"
        );
        Ok(WalAcceptorStore {
            record_size_bytes_max,
            compacted_upto: state.compacted_upto,
            opened_state: Some(state),
            wal,
            fs,
            report,
            encode_buffer: Vec::new(),
            failed: None,
        })
    }

    /// What [`WalAcceptorStore::open`] found and repaired in the WAL.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// Counters of the WAL's write path (fsyncs, records, bytes).
    pub fn stats(&self) -> Arc<WalStats> {
        self.wal.stats()
    }

    /// The WAL directory.
    pub fn wal_dir(&self) -> &Path {
        self.wal.dir()
    }

    fn check_failed(&self) -> Result<(), StorageError> {
        match &self.failed {
            Some(cause) => Err(StorageError::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Encodes `ops` as one record into `encode_buffer`.
    fn encode(&mut self, ops: &[PersistOp]) -> Result<(), StorageError> {
        self.encode_buffer.clear();
        self.encode_buffer.push(ACCEPTOR_RECORD_VERSION);
        bincode::serialize_into(&mut self.encode_buffer, ops).map_err(|error| {
            StorageError::InvalidArgument(format!("cannot encode acceptor record: {error}"))
        })
    }

    /// Appends `ops` as one record (several only if the batch exceeds the
    /// record limit), then makes them all durable with one fdatasync.
    fn write_batch(&mut self, ops: &[PersistOp]) -> Result<Lsn, StorageError> {
        // The common case costs one encoding pass and one append.
        self.encode(ops)?;
        if self.encode_buffer.len() <= self.record_size_bytes_max as usize {
            self.wal.append(&self.encode_buffer)?;
        } else {
            self.append_split(ops)?;
        }
        self.wal.sync()
    }

    /// The rare oversized batch (e.g. a leader's own accepts for many full
    /// slots in one `Ready`): records of at most the limit, in order.
    fn append_split(&mut self, ops: &[PersistOp]) -> Result<(), StorageError> {
        // A record is the version byte, bincode's u64 length, then the ops.
        const RECORD_OVERHEAD_BYTES: usize = 1 + 8;
        let limit = self.record_size_bytes_max as usize;
        let budget = limit.saturating_sub(RECORD_OVERHEAD_BYTES);
        let mut sizes = Vec::with_capacity(ops.len());
        for op in ops {
            let size = bincode::serialized_size(op).map_err(|error| {
                StorageError::InvalidArgument(format!("cannot size acceptor record: {error}"))
            })?;
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            if size > budget {
                // Refused before anything is appended: the WAL is unchanged.
                return Err(StorageError::RecordTooLarge {
                    size_bytes: size.saturating_add(RECORD_OVERHEAD_BYTES) as u64,
                    max_bytes: limit as u64,
                });
            }
            sizes.push(size);
        }
        let (mut start, mut record_bytes) = (0, 0);
        for (index, size) in sizes.into_iter().enumerate() {
            if index > start && record_bytes + size > budget {
                self.encode(&ops[start..index])?;
                self.wal.append(&self.encode_buffer)?;
                (start, record_bytes) = (index, 0);
            }
            record_bytes += size;
        }
        self.encode(&ops[start..])?;
        self.wal.append(&self.encode_buffer)?;
        Ok(())
    }

    /// Rebuilds the durable state by reading the WAL back from disk. Every
    /// batch this store appended was synced, so the files hold all of it.
    fn read_state(&self) -> Result<RecoveredState, StorageError> {
        let mut state = RecoveredState::default();
        let dir = self.wal.dir();
        let reader = WalReader::open(self.fs.clone(), dir, self.record_size_bytes_max)?;
        reader.for_each_from(0, |lsn, payload| {
            decode_record(dir, lsn, payload, &mut state)
        })?;
        Ok(state)
    }
}

impl AcceptorStore for WalAcceptorStore {
    /// Returns the state rebuilt at open if nothing was persisted since;
    /// otherwise reads the WAL back (rare: the driver recovers once, at
    /// start). Fails with [`StorageError::Poisoned`] after a failed
    /// `persist`, since whether that batch is durable is unknown until the
    /// store is reopened.
    fn recover(&mut self) -> Result<RecoveredState, StorageError> {
        self.check_failed()?;
        match self.opened_state.take() {
            Some(state) => Ok(state),
            None => self.read_state(),
        }
    }

    /// Writes the batch as one WAL record (several if it exceeds the record
    /// limit) with one fdatasync. An empty batch writes and syncs nothing.
    fn persist(&mut self, ops: &[PersistOp]) -> Result<(), StorageError> {
        self.check_failed()?;
        if ops.is_empty() {
            return Ok(());
        }
        let result = self.write_batch(ops);
        if self.encode_buffer.capacity() > ENCODE_BUFFER_RETAIN_BYTES_MAX {
            self.encode_buffer = Vec::new();
        }
        match result {
            Ok(_) => {
                self.opened_state = None;
                Ok(())
            }
            // Refused before anything was buffered: the WAL is unchanged.
            Err(error @ StorageError::RecordTooLarge { .. }) => Err(error),
            Err(error) => {
                self.failed = Some(error.to_string());
                Err(error)
            }
        }
    }

    /// Writes a checkpoint (the promise, the compaction point and every
    /// slot above it) under one fdatasync, then deletes every WAL segment
    /// that holds only records from before the checkpoint. A crash before
    /// the checkpoint is durable leaves the old records, which still say
    /// everything; a crash during the deletions leaves a contiguous tail
    /// that starts at or before the checkpoint.
    fn compact(&mut self, upto: Slot) -> Result<(), StorageError> {
        self.check_failed()?;
        if upto <= self.compacted_upto {
            return Ok(());
        }
        let mut state = match self.opened_state.take() {
            Some(state) => state,
            None => self.read_state()?,
        };
        state.compact(upto);
        let checkpoint = state.checkpoint_ops();
        let first_lsn = self.wal.next_lsn();
        if let Err(error) = self.write_batch(&checkpoint) {
            // What the disk holds is unknown. Only a reopen can tell.
            self.failed = Some(error.to_string());
            return Err(error);
        }
        self.compacted_upto = upto;
        // Exactly what is durable now: a `recover` right after (the
        // driver's start compacts, then recovers) need not read it back.
        self.opened_state = Some(state);
        self.wal.compact_below(first_lsn)?;
        Ok(())
    }
}

/// Decodes one acceptor record (the payload of one WAL record this store
/// wrote: see the module docs for the format) into its ops, without
/// applying them. Read-only tools such as `kvctl wal dump` use it so they
/// never duplicate the format; the error is the reason the bytes are not a
/// record this build reads (the caller adds where they came from).
pub fn decode_acceptor_record(payload: &[u8]) -> Result<Vec<PersistOp>, String> {
    let Some((&version, body)) = payload.split_first() else {
        return Err("empty acceptor record, expected a format version byte".to_string());
    };
    if version != ACCEPTOR_RECORD_VERSION {
        return Err(format!(
            "acceptor record format version {version}, this build reads version \
             {ACCEPTOR_RECORD_VERSION}"
        ));
    }
    // The same encoding as `bincode::serialize`, but strict: trailing bytes
    // are an error, and no length prefix may claim more than the record holds.
    let ops: Vec<PersistOp> = bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .reject_trailing_bytes()
        .with_limit(u64::try_from(body.len()).unwrap_or(u64::MAX))
        .deserialize(body)
        .map_err(|error| format!("undecodable acceptor ops: {error}"))?;
    // Compacting up to `Slot::MAX` leaves no next slot (applying it would
    // overflow computing one), and no build ever writes it.
    if ops.iter().any(|op| {
        matches!(
            op,
            PersistOp::Checkpoint {
                compacted_upto: Slot::MAX,
                ..
            }
        )
    }) {
        return Err(format!(
            "checkpoint compacts up to slot {}, which leaves no next slot",
            Slot::MAX
        ));
    }
    Ok(ops)
}

/// Decodes one acceptor record and applies its ops to `state`.
fn decode_record(
    dir: &Path,
    lsn: Lsn,
    payload: &[u8],
    state: &mut RecoveredState,
) -> Result<(), StorageError> {
    let ops = decode_acceptor_record(payload).map_err(|reason| StorageError::Corruption {
        path: dir.to_path_buf(),
        offset: 0,
        reason: format!("record LSN {lsn}: {reason}"),
    })?;
    for op in &ops {
        apply_op(state, op);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Ballot, NodeId, Value};

    #[test]
    fn decode_acceptor_record_reads_what_persist_writes_and_names_bad_input() {
        let ops = vec![
            PersistOp::Promise {
                ballot: Ballot {
                    round: 2,
                    node_id: NodeId(1),
                },
            },
            PersistOp::Chosen {
                slot: 3,
                value: Value::Commands(vec![b"c".to_vec()]),
            },
        ];
        let mut record = vec![ACCEPTOR_RECORD_VERSION];
        record.extend(bincode::serialize(&ops).unwrap());
        assert_eq!(decode_acceptor_record(&record), Ok(ops));

        assert!(decode_acceptor_record(&[]).unwrap_err().contains("empty"));
        record[0] = 9;
        assert!(decode_acceptor_record(&record)
            .unwrap_err()
            .contains("version 9"));
        record[0] = ACCEPTOR_RECORD_VERSION;
        record.push(0);
        assert!(decode_acceptor_record(&record)
            .unwrap_err()
            .contains("undecodable"));
    }
}
