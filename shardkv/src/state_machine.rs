//! The replica group's state machine: [`ShardMachine`], a
//! [`paxos_log::StateMachine`] over a sled store with one tree per shard.
//!
//! ```text
//!   sled store
//!   ├─ shard/<id>   data + sessions + applied index   (one per shard held)
//!   ├─ shard/GROUP  GroupState (configuration, shard states) + applied index
//!   └─ shard/DURABLE  applied index only: every slot up to it is flushed
//! ```
//!
//! # Crash safety without a cross-tree transaction
//!
//! sled makes one batch on one tree atomic, nothing more. Each tree carries
//! its own applied index, written in the same batch as its changes, and an
//! entry whose slot is not above a tree's index is never applied to that tree
//! again. After a crash the driver replays the log from the durable slot (the
//! last point where everything was flushed), so every entry is applied to
//! every tree exactly once.
//!
//! What keeps the replay *deterministic* is the rule that an entry's effect
//! on a tree depends only on that tree's own state and on the group state,
//! and a barrier: an entry that changes the group state (a configuration,
//! a migration chunk, a garbage collection) first writes the shard trees it
//! touches, then flushes, then writes the group tree. So if the group tree
//! already holds such an entry, every earlier write to every tree is durable
//! and is skipped on replay; and a write to a shard is only ever replayed
//! against the group state it was first applied against (a later change to
//! that shard's state would have flushed it).
//!
//! # Snapshots
//!
//! `snapshot` flushes, advances the durable slot, and returns every tree's
//! records; `restore` first clears the durable slot (so a crash midway
//! restores again), replaces every tree, then sets it. The whole state is
//! held in memory while a snapshot is taken or sent: see `docs/shardkv.md`.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use bincode::Options;
use controller::{ConfigNum, Configuration, ShardId};
use paxos_log::{Slot, StateMachine};
use serde::{Deserialize, Serialize};
use storage::sled_store::{ExportRecord, ShardBatch, SledStore, Space};
use storage::StorageError;
use tokio::sync::watch;
use tracing::{error, info};

use crate::error::KvError;
use crate::group::{plan, Change, GcNotice, GroupState, ShardEntry, ShardState};
use crate::hash::put_hash;
use crate::limits::{ApplyLimits, Limits, KEY_BYTES_CEILING, SCAN_ITEMS_CEILING};
use crate::session::{self, Check};
use crate::wire::{
    bincode_options, decode, encode, ClientId, Command, Cursor, Outcome, ReadOp, ReadReply, Record,
    RecordSpace, WriteOp, WriteReply,
};
use crate::{DURABLE_TREE, GROUP_TREE};

/// First byte of every shardkv snapshot.
pub const SNAPSHOT_VERSION: u8 = 1;

/// Commands one slot may hold: a batch of the log is one slot, and each of
/// its commands gets its own entry index.
pub const POSITIONS_PER_SLOT: u64 = 1 << 16;

/// The index of the command at `position` of the batch chosen in `slot`:
/// `slot * 2^16 + position`. Every tree's applied index counts these, so
/// that each command of a batch is applied to a tree exactly once, also
/// when a crash interrupts a batch and the log is replayed.
pub fn entry_index(slot: Slot, position: u64) -> Result<u64, String> {
    if position >= POSITIONS_PER_SLOT {
        return Err(format!(
            "slot {slot} holds more than {POSITIONS_PER_SLOT} commands; configure the log's \
             batch_commands_max below that"
        ));
    }
    slot.checked_mul(POSITIONS_PER_SLOT)
        .map(|base| base + position)
        .ok_or_else(|| format!("slot {slot} is beyond the entry index range"))
}

/// Key of the group state in the group tree's aux space.
const GROUP_STATE_KEY: &[u8] = b"state";

/// The state machine of one replica of a group. See the [module docs](self).
#[derive(Debug)]
pub struct ShardMachine {
    store: Arc<SledStore>,
    group: GroupState,
    /// Applied index of every tree, cached (absent: 0).
    applied: BTreeMap<ShardId, Slot>,
    /// Every slot up to here is flushed.
    durable: Slot,
    /// The last slot the driver applied.
    last_slot: Slot,
    /// How many commands of `last_slot` came before the last one applied.
    position: u64,
    /// Limits for answering reads (writes carry their own).
    limits: Limits,
    /// Set when the store failed; every later command is answered
    /// `Failed` and the server stops serving.
    failed: Option<String>,
    /// Where `group` and `failed` are published after every change.
    view: watch::Sender<GroupView>,
}

/// What [`ShardMachine::subscribe`] publishes: the group state after the
/// last entry that changed it, and whether the store failed.
#[derive(Debug, Clone)]
pub struct GroupView {
    /// The group state.
    pub group: Arc<GroupState>,
    /// Why the replica stopped serving, if its store failed.
    pub failed: Option<String>,
}

/// One tree in a snapshot.
#[derive(Debug, Serialize, Deserialize)]
struct TreeDump {
    id: ShardId,
    applied: Slot,
    records: Vec<Record>,
}

impl ShardMachine {
    /// Opens the state machine of group `gid` on `store`.
    ///
    /// # Errors
    ///
    /// The store cannot be read, holds another group's state, or was left
    /// half-restored without the marker that makes the driver restore again.
    pub fn open(
        store: Arc<SledStore>,
        gid: controller::Gid,
        limits: Limits,
    ) -> Result<Self, StorageError> {
        let mut applied = BTreeMap::new();
        let mut incomplete = Vec::new();
        for status in store.shards()? {
            match status.applied_index {
                Some(index) => {
                    applied.insert(status.id, index);
                }
                None => incomplete.push(status.id),
            }
        }
        let durable = applied.get(&DURABLE_TREE).copied().unwrap_or(0);
        if durable > 0 && !incomplete.is_empty() {
            return Err(StorageError::InvalidArgument(format!(
                "shards {incomplete:?} have incomplete imports although the store is marked \
                 durable at slot {durable}; rebuild this replica from its peers"
            )));
        }
        let group = match store.get(GROUP_TREE, Space::Aux, GROUP_STATE_KEY) {
            Ok(Some(bytes)) => bincode_options(bytes.len())
                .deserialize::<GroupState>(&bytes)
                .map_err(|err| {
                    StorageError::InvalidArgument(format!(
                        "the group state does not decode ({err}); rebuild this replica from \
                         its peers"
                    ))
                })?,
            Ok(None) | Err(StorageError::InvalidArgument(_)) => GroupState::new(gid),
            Err(err) => return Err(err),
        };
        if group.gid != gid {
            return Err(StorageError::InvalidArgument(format!(
                "this data directory belongs to group {}, not group {gid}; point the replica at \
                 its own directory",
                group.gid
            )));
        }
        let (view, _) = watch::channel(GroupView {
            group: Arc::new(group.clone()),
            failed: None,
        });
        Ok(ShardMachine {
            store,
            group,
            applied,
            durable,
            last_slot: durable,
            position: 0,
            limits,
            failed: None,
            view,
        })
    }

    /// The group state and health as of the last change, published for
    /// the rest of the server (request handlers, the migration task) so
    /// that they never take the state machine's lock, which the driver
    /// thread holds while it applies.
    pub fn subscribe(&self) -> watch::Receiver<GroupView> {
        self.view.subscribe()
    }

    fn publish(&self) {
        self.view.send_replace(GroupView {
            group: Arc::new(self.group.clone()),
            failed: self.failed.clone(),
        });
    }

    /// The group state as this replica has applied it.
    pub fn group(&self) -> &GroupState {
        &self.group
    }

    /// The store.
    pub fn store(&self) -> &Arc<SledStore> {
        &self.store
    }

    /// Why the store failed, if it did.
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// The session bookkeeping of a shard this replica holds.
    pub fn shard_meta(&self, shard: ShardId) -> Option<session::ShardMeta> {
        session::meta(&self.store, shard).ok()
    }

    fn applied(&self, tree: ShardId) -> Slot {
        self.applied.get(&tree).copied().unwrap_or(0)
    }

    /// Applies `batch` to `tree` as entry `entry` (see [`entry_index`])
    /// unless the tree already has it.
    fn write_tree(
        &mut self,
        tree: ShardId,
        entry: u64,
        batch: &ShardBatch,
    ) -> Result<(), StorageError> {
        if entry <= self.applied(tree) {
            return Ok(());
        }
        self.store.apply(tree, entry, batch)?;
        self.applied.insert(tree, entry);
        Ok(())
    }

    /// Writes the group state at `entry`: the last step of every entry that
    /// changes it, after the barrier flush.
    fn write_group(&mut self, entry: u64, group: GroupState) -> Result<(), StorageError> {
        self.store.flush()?;
        let mut batch = ShardBatch::new();
        batch.put(
            Space::Aux,
            GROUP_STATE_KEY,
            &bincode_options(usize::MAX)
                .serialize(&group)
                .unwrap_or_default(),
        );
        self.write_tree(GROUP_TREE, entry, &batch)?;
        self.group = group;
        self.publish();
        Ok(())
    }

    fn drop_tree(&mut self, tree: ShardId) -> Result<(), StorageError> {
        self.store.drop_shard(tree)?;
        self.applied.remove(&tree);
        Ok(())
    }

    fn apply_command(&mut self, entry: u64, command: Command) -> Result<Vec<u8>, StorageError> {
        match command {
            Command::Write {
                client_id,
                seq,
                stamp_ms,
                limits,
                op,
            } => {
                let outcome = self.apply_write(entry, client_id, seq, stamp_ms, &limits, op)?;
                Ok(outcome)
            }
            other => {
                if entry <= self.applied(GROUP_TREE) {
                    // Replay of an entry the group tree has: every tree has it.
                    return Ok(encode(&Outcome::Ok(false)));
                }
                let applied = match other {
                    Command::InstallConfig { config } => self.install_config(entry, config)?,
                    Command::InstallChunk {
                        shard,
                        num,
                        after,
                        records,
                        done,
                    } => self.install_chunk(entry, shard, num, after, records, done)?,
                    Command::DeleteShard { shard, num } => self.delete_shard(entry, shard, num)?,
                    Command::GcDone { shard, num } => self.gc_done(entry, shard, num)?,
                    Command::Write { .. } => false,
                };
                Ok(encode(&Outcome::Ok(applied)))
            }
        }
    }

    fn apply_write(
        &mut self,
        entry: u64,
        client_id: ClientId,
        seq: u64,
        stamp_ms: u64,
        limits: &ApplyLimits,
        op: WriteOp,
    ) -> Result<Vec<u8>, StorageError> {
        let refused = |error| Ok(encode(&Outcome::<WriteReply>::Refused(error)));
        let key = op.key().to_vec();
        let Some(shard) = self.group.shard_for_key(&key).map(|shard| shard.id) else {
            return refused(KvError::WrongGroup {
                num: self.group.num,
            });
        };
        if !self.group.serves(shard) {
            return refused(KvError::WrongGroup {
                num: self.group.num,
            });
        }
        if entry <= self.applied(shard) {
            // Replayed after a restart: the shard has it; nobody waits.
            return Ok(encode(&Outcome::Ok(WriteReply::Done)));
        }
        if key.len() > KEY_BYTES_CEILING {
            return refused(KvError::KeyTooLarge {
                len_bytes: key.len(),
                max_bytes: KEY_BYTES_CEILING,
            });
        }
        let mut meta = session::meta(&self.store, shard)?;
        let previous =
            match session::check(&self.store, shard, &meta, client_id, seq, stamp_ms, limits)? {
                Check::Duplicate(reply) => return Ok(reply),
                Check::Refused(error) => return refused(error),
                Check::New { previous } => previous,
            };
        let current = self
            .store
            .get(shard, Space::Data, &key)?
            .map(|v| v.to_vec());
        let too_large = |len: usize| {
            let len_bytes = u64::try_from(len).unwrap_or(u64::MAX);
            (len_bytes > limits.value_bytes_max).then_some(KvError::ValueTooLarge {
                len_bytes,
                max_bytes: limits.value_bytes_max,
            })
        };
        let mut batch = ShardBatch::new();
        let reply = match op {
            WriteOp::Put { value, .. } => {
                if let Some(error) = too_large(value.len()) {
                    return refused(error);
                }
                batch.put(Space::Data, &key, &value);
                WriteReply::Done
            }
            WriteOp::Append { value, .. } => {
                let mut new = current.unwrap_or_default();
                if let Some(error) = too_large(new.len() + value.len()) {
                    return refused(error);
                }
                new.extend_from_slice(&value);
                batch.put(Space::Data, &key, &new);
                WriteReply::Done
            }
            WriteOp::Delete { .. } => {
                batch.delete(Space::Data, &key);
                WriteReply::Done
            }
            WriteOp::Cas { expected, new, .. } => {
                if current == expected {
                    if let Some(error) = too_large(new.len()) {
                        return refused(error);
                    }
                    batch.put(Space::Data, &key, &new);
                    WriteReply::Cas {
                        swapped: true,
                        current: None,
                    }
                } else {
                    WriteReply::Cas {
                        swapped: false,
                        current,
                    }
                }
            }
            WriteOp::PutHash { value, .. } => {
                batch.put(Space::Data, &key, &put_hash(current.as_deref(), &value));
                WriteReply::Previous(current)
            }
        };
        let reply = encode(&Outcome::Ok(reply));
        session::record(
            &self.store,
            shard,
            &mut meta,
            &mut batch,
            client_id,
            seq,
            stamp_ms,
            previous,
            reply.clone(),
            limits,
        )?;
        self.write_tree(shard, entry, &batch)?;
        Ok(reply)
    }

    fn install_config(&mut self, entry: u64, config: Configuration) -> Result<bool, StorageError> {
        let changes = match plan(&self.group, &config) {
            Ok(changes) => changes,
            Err(reason) => {
                // A duplicate proposal of a configuration already installed
                // is the common case; anything else is worth a line.
                if config.num > self.group.num {
                    info!(num = config.num, %reason, "configuration not installed");
                }
                return Ok(false);
            }
        };
        let num = config.num;
        let mut group = self.group.clone();
        for change in changes {
            match change {
                Change::Serve { shard } => {
                    let keep = matches!(
                        group.shards.get(&shard),
                        Some(ShardEntry { num: frozen_at, state: ShardState::Frozen { to: None } })
                            if *frozen_at + 1 == num
                    );
                    if !keep && group.shards.contains_key(&shard) {
                        // A stale copy (lost earlier, not yet collected)
                        // must not come back to life.
                        self.drop_tree(shard)?;
                    }
                    // Every change of a shard's state writes the shard's
                    // tree at the entry's slot, so that no write refused
                    // before it is applied when replayed after it.
                    self.write_tree(shard, entry, &ShardBatch::new())?;
                    group.shards.insert(
                        shard,
                        ShardEntry {
                            num,
                            state: ShardState::Serving { gc: None },
                        },
                    );
                }
                Change::Pull { shard, from, addrs } => {
                    self.drop_tree(shard)?;
                    group.shards.insert(
                        shard,
                        ShardEntry {
                            num,
                            state: ShardState::Pulling {
                                from,
                                addrs,
                                after: None,
                                records: 0,
                                bytes: 0,
                            },
                        },
                    );
                }
                Change::Freeze { shard, to } => {
                    self.write_tree(shard, entry, &ShardBatch::new())?;
                    if let Some(ShardEntry {
                        num: gained_at,
                        state: ShardState::Serving { gc: Some(notice) },
                    }) = group.shards.get(&shard)
                    {
                        // Lost again before the previous owner confirmed
                        // its deletion: keep telling it.
                        group.gc_pending.insert((shard, *gained_at), notice.clone());
                    }
                    group.shards.insert(
                        shard,
                        ShardEntry {
                            num,
                            state: ShardState::Frozen { to },
                        },
                    );
                }
                Change::Split { parent, child, at } => {
                    self.split(entry, parent, child, &at)?;
                    let gc = None;
                    group.shards.insert(
                        child,
                        ShardEntry {
                            num,
                            state: ShardState::Serving { gc },
                        },
                    );
                }
            }
        }
        group.num = num;
        group.config = Some(config);
        self.write_group(entry, group)?;
        info!(num, "installed configuration");
        Ok(true)
    }

    /// Moves the keys of `parent` from `at` on, and a copy of its sessions,
    /// into the new shard `child`. The child is written completely (and
    /// flushed) before the parent loses anything, so a crash in between
    /// replays only the parent's part.
    fn split(
        &mut self,
        entry: u64,
        parent: ShardId,
        child: ShardId,
        at: &[u8],
    ) -> Result<(), StorageError> {
        if entry > self.applied(child) {
            let upper = self.store.scan(
                parent,
                Space::Data,
                (Bound::Included(at), Bound::Unbounded),
                usize::MAX,
            )?;
            let aux = self.store.scan(parent, Space::Aux, .., usize::MAX)?;
            let records = upper
                .into_iter()
                .map(|(key, value)| (Space::Data, key, value))
                .chain(aux.into_iter().map(|(key, value)| (Space::Aux, key, value)))
                .map(|(space, key, value)| Ok(ExportRecord { space, key, value }));
            self.store.import(child, entry, records)?;
            self.applied.insert(child, entry);
            self.store.flush()?;
        }
        if entry > self.applied(parent) {
            let mut batch = ShardBatch::new();
            for (key, _) in self.store.scan(
                parent,
                Space::Data,
                (Bound::Included(at), Bound::Unbounded),
                usize::MAX,
            )? {
                batch.delete(Space::Data, &key);
            }
            self.write_tree(parent, entry, &batch)?;
        }
        Ok(())
    }

    fn install_chunk(
        &mut self,
        entry: u64,
        shard: ShardId,
        num: ConfigNum,
        after: Option<Cursor>,
        records: Vec<Record>,
        done: bool,
    ) -> Result<bool, StorageError> {
        let Some(held) = self.group.shards.get(&shard) else {
            return Ok(false);
        };
        let ShardState::Pulling {
            from,
            addrs,
            after: expected,
            records: count,
            bytes,
        } = &held.state
        else {
            return Ok(false);
        };
        if held.num != num || *expected != after {
            // A duplicate or late chunk: the shard moved on.
            return Ok(false);
        }
        // Records must continue strictly after the cursor, in order.
        let mut last = after.clone();
        for record in &records {
            let cursor = record.cursor();
            if last.as_ref().is_some_and(|last| cursor <= *last) {
                error!(shard, num, "a migration chunk is out of order; ignored");
                return Ok(false);
            }
            last = Some(cursor);
        }
        let mut batch = ShardBatch::new();
        let mut added_bytes = 0u64;
        for record in &records {
            let space = match record.space {
                RecordSpace::Data => Space::Data,
                RecordSpace::Aux => Space::Aux,
            };
            batch.put(space, &record.key, &record.value);
            added_bytes += u64::try_from(record.size_bytes()).unwrap_or(u64::MAX);
        }
        let state = if done {
            ShardState::Serving {
                gc: Some(GcNotice {
                    from: *from,
                    addrs: addrs.clone(),
                }),
            }
        } else {
            ShardState::Pulling {
                from: *from,
                addrs: addrs.clone(),
                after: last,
                records: count + u64::try_from(records.len()).unwrap_or(u64::MAX),
                bytes: bytes + added_bytes,
            }
        };
        self.write_tree(shard, entry, &batch)?;
        let mut group = self.group.clone();
        group.shards.insert(shard, ShardEntry { num, state });
        self.write_group(entry, group)?;
        if done {
            info!(shard, num, "shard arrived; serving");
        }
        Ok(true)
    }

    fn delete_shard(
        &mut self,
        entry: u64,
        shard: ShardId,
        num: ConfigNum,
    ) -> Result<bool, StorageError> {
        let frozen = matches!(
            self.group.shards.get(&shard),
            Some(ShardEntry { num: lost_at, state: ShardState::Frozen { .. } }) if *lost_at == num
        );
        if !frozen {
            return Ok(false);
        }
        self.drop_tree(shard)?;
        let mut group = self.group.clone();
        group.shards.remove(&shard);
        self.write_group(entry, group)?;
        info!(shard, num, "deleted a shard its new owner has");
        Ok(true)
    }

    fn gc_done(
        &mut self,
        entry: u64,
        shard: ShardId,
        num: ConfigNum,
    ) -> Result<bool, StorageError> {
        let mut group = self.group.clone();
        let serving = match group.shards.get_mut(&shard) {
            Some(held) if held.num == num => match &mut held.state {
                ShardState::Serving { gc } if gc.is_some() => {
                    *gc = None;
                    true
                }
                _ => false,
            },
            _ => false,
        };
        if !serving && group.gc_pending.remove(&(shard, num)).is_none() {
            return Ok(false);
        }
        self.write_group(entry, group)?;
        Ok(true)
    }

    /// Answers a read from the current state.
    pub fn answer(&self, op: &ReadOp) -> Result<Outcome<ReadReply>, StorageError> {
        let wrong_group = || {
            Ok(Outcome::Refused(KvError::WrongGroup {
                num: self.group.num,
            }))
        };
        match op {
            ReadOp::Get { key } => {
                let Some(shard) = self.group.shard_for_key(key) else {
                    return wrong_group();
                };
                if !self.group.serves(shard.id) {
                    return wrong_group();
                }
                let value = self.store.get(shard.id, Space::Data, key)?;
                Ok(Outcome::Ok(ReadReply::Value(value.map(|v| v.to_vec()))))
            }
            ReadOp::Scan { start, end, limit } => {
                if end.as_ref().is_some_and(|end| end <= start) {
                    return Ok(Outcome::Refused(KvError::EmptyRange));
                }
                let Some(shard) = self.group.shard_for_key(start) else {
                    return wrong_group();
                };
                if !self.group.serves(shard.id) {
                    return wrong_group();
                }
                if *limit == 0 {
                    // Nothing asked for: the whole range is still ahead.
                    return Ok(Outcome::Ok(ReadReply::Items {
                        items: Vec::new(),
                        resume: Some(start.clone()),
                    }));
                }
                // The scan stops at the end of the shard or of the range,
                // whichever comes first.
                let (stop, shard_end_first) = match (&shard.end, end) {
                    (Some(shard_end), Some(end)) if shard_end < end => (Some(shard_end), true),
                    (Some(shard_end), None) => (Some(shard_end), true),
                    (_, end) => (end.as_ref(), false),
                };
                let limit = usize::try_from(*limit)
                    .unwrap_or(usize::MAX)
                    .min(SCAN_ITEMS_CEILING);
                let hi = stop.map_or(Bound::Unbounded, |stop| Bound::Excluded(stop.as_slice()));
                let found = self.store.scan(
                    shard.id,
                    Space::Data,
                    (Bound::Included(start.as_slice()), hi),
                    limit,
                )?;
                let full = found.len() >= limit;
                let mut items = Vec::with_capacity(found.len());
                let mut bytes = 0usize;
                let mut cut = full;
                for (key, value) in found {
                    bytes += key.len() + value.len();
                    if !items.is_empty() && bytes > self.limits.scan_bytes_max {
                        cut = true;
                        break;
                    }
                    items.push((key, value));
                }
                let resume = match items.last() {
                    Some((last, _)) if cut => {
                        let mut next = last.clone();
                        next.push(0);
                        Some(next)
                    }
                    _ if shard_end_first => stop.cloned(),
                    _ => None,
                };
                Ok(Outcome::Ok(ReadReply::Items { items, resume }))
            }
        }
    }

    /// The records of a frozen shard after `after`, at most `max_bytes` of
    /// them (at least one), and whether they are the last.
    pub fn chunk(
        &self,
        shard: ShardId,
        after: Option<&Cursor>,
        max_bytes: usize,
    ) -> Result<(Vec<Record>, bool), StorageError> {
        const SCAN_STEP: usize = 256;
        let mut records = Vec::new();
        let mut bytes = 0usize;
        for space in [RecordSpace::Data, RecordSpace::Aux] {
            let sled_space = match space {
                RecordSpace::Data => Space::Data,
                RecordSpace::Aux => Space::Aux,
            };
            let mut lo: Bound<Vec<u8>> = match after {
                Some(cursor) if cursor.space == space => Bound::Excluded(cursor.key.clone()),
                Some(cursor) if cursor.space > space => continue,
                _ => Bound::Unbounded,
            };
            loop {
                let found = self.store.scan(
                    shard,
                    sled_space,
                    (lo.as_ref().map(Vec::as_slice), Bound::Unbounded),
                    SCAN_STEP,
                )?;
                let exhausted = found.len() < SCAN_STEP;
                for (key, value) in found {
                    if !records.is_empty() && bytes + key.len() + value.len() > max_bytes {
                        return Ok((records, false));
                    }
                    bytes += key.len() + value.len();
                    lo = Bound::Excluded(key.clone());
                    records.push(Record { space, key, value });
                }
                if exhausted {
                    break;
                }
            }
        }
        Ok((records, true))
    }

    fn fail(&mut self, err: &StorageError) -> Vec<u8> {
        self.stop_serving(format!("the replica's state machine store failed: {err}"))
    }

    /// Marks the replica failed (every later command is answered `Failed`)
    /// and answers with the reason.
    fn stop_serving(&mut self, reason: String) -> Vec<u8> {
        error!(%reason, "replica stops serving");
        self.failed = Some(reason.clone());
        self.publish();
        encode(&Outcome::<()>::Failed(reason))
    }

    fn take_snapshot(&mut self) -> Result<Vec<u8>, StorageError> {
        self.store.flush()?;
        let slot = self.last_slot;
        if slot > self.applied(DURABLE_TREE) {
            self.write_tree(DURABLE_TREE, slot, &ShardBatch::new())?;
            self.store.flush()?;
            self.durable = slot;
        }
        let mut trees = Vec::new();
        for (&id, &applied) in &self.applied {
            if id == DURABLE_TREE {
                continue;
            }
            let mut records = Vec::new();
            for record in self.store.export(id)? {
                let record = record?;
                let space = match record.space {
                    Space::Data => RecordSpace::Data,
                    Space::Aux => RecordSpace::Aux,
                };
                records.push(Record {
                    space,
                    key: record.key,
                    value: record.value,
                });
            }
            trees.push(TreeDump {
                id,
                applied,
                records,
            });
        }
        let mut bytes = vec![SNAPSHOT_VERSION];
        bincode_options(usize::MAX)
            .serialize_into(&mut bytes, &trees)
            .map_err(|err| StorageError::InvalidArgument(format!("encoding a snapshot: {err}")))?;
        Ok(bytes)
    }

    fn decode_snapshot(snapshot: &[u8]) -> Result<Vec<TreeDump>, String> {
        let (&version, body) = snapshot.split_first().ok_or("empty shardkv snapshot")?;
        if version != SNAPSHOT_VERSION {
            return Err(format!(
                "shardkv snapshot version {version} is not supported (expected {SNAPSHOT_VERSION})"
            ));
        }
        bincode_options(body.len())
            .deserialize(body)
            .map_err(|err| format!("corrupt shardkv snapshot: {err}"))
    }

    /// Everything that could make installing `trees` fail half-way, checked
    /// before the store is touched: an error leaves the state unchanged.
    fn check_snapshot(&self, slot: Slot, trees: &[TreeDump]) -> Result<(), String> {
        let corrupt = |what: String| Err(format!("corrupt shardkv snapshot: {what}"));
        let mut ids = std::collections::BTreeSet::new();
        for tree in trees {
            let last_entry = entry_index(slot, POSITIONS_PER_SLOT - 1)?;
            if tree.id == DURABLE_TREE || tree.applied > last_entry || tree.applied == 0 {
                return corrupt(format!(
                    "tree {} (applied {}) is not a state tree applied at or below slot {slot}",
                    tree.id, tree.applied
                ));
            }
            if !ids.insert(tree.id) {
                return corrupt(format!("tree {} appears twice", tree.id));
            }
            // The import refuses records out of order: find out now.
            let in_order = tree
                .records
                .windows(2)
                .all(|pair| (pair[0].space, &pair[0].key) < (pair[1].space, &pair[1].key));
            if !in_order {
                return corrupt(format!("the records of tree {} are not in order", tree.id));
            }
        }
        let group = trees.iter().find(|tree| tree.id == GROUP_TREE).map(|tree| {
            let state = tree
                .records
                .iter()
                .find(|record| record.space == RecordSpace::Aux && record.key == GROUP_STATE_KEY);
            state.map(|record| {
                bincode_options(record.value.len()).deserialize::<GroupState>(&record.value)
            })
        });
        match group {
            Some(Some(Ok(group))) if group.gid != self.group.gid => corrupt(format!(
                "it holds the state of group {}, not of group {}",
                group.gid, self.group.gid
            )),
            Some(Some(Err(err))) => corrupt(format!("the group state does not decode: {err}")),
            Some(None) => corrupt("the group tree holds no group state".to_string()),
            _ => Ok(()),
        }
    }

    fn restore_trees(&mut self, slot: Slot, trees: Vec<TreeDump>) -> Result<(), StorageError> {
        // Clear the durable mark first: a crash from here on leaves a store
        // the driver restores again at the next start.
        self.drop_tree(DURABLE_TREE)?;
        self.store.flush()?;
        self.durable = 0;
        for status in self.store.shards()? {
            self.drop_tree(status.id)?;
        }
        self.applied.clear();
        for tree in trees {
            let records = tree.records.into_iter().map(|record| {
                Ok(ExportRecord {
                    space: match record.space {
                        RecordSpace::Data => Space::Data,
                        RecordSpace::Aux => Space::Aux,
                    },
                    key: record.key,
                    value: record.value,
                })
            });
            self.store.import(tree.id, tree.applied, records)?;
            self.applied.insert(tree.id, tree.applied);
        }
        self.write_tree(DURABLE_TREE, slot, &ShardBatch::new())?;
        self.store.flush()?;
        self.durable = slot;
        self.last_slot = slot;
        self.position = 0;
        let gid = self.group.gid;
        self.group = match self.store.get(GROUP_TREE, Space::Aux, GROUP_STATE_KEY) {
            Ok(Some(bytes)) => bincode_options(bytes.len())
                .deserialize::<GroupState>(&bytes)
                .map_err(|err| {
                    StorageError::InvalidArgument(format!("restored group state: {err}"))
                })?,
            _ => GroupState::new(gid),
        };
        Ok(())
    }
}

impl StateMachine for ShardMachine {
    fn apply(&mut self, slot: Slot, command: &[u8]) -> Vec<u8> {
        // The driver applies every command of a batch with the batch's
        // slot: number them within it.
        if slot == self.last_slot {
            self.position += 1;
        } else {
            // The driver applies slots in order; a lower slot (a test
            // replaying old entries) only starts a new numbering, and the
            // trees' applied indexes skip what they have.
            self.last_slot = slot;
            self.position = 0;
        }
        let entry = match entry_index(slot, self.position) {
            Ok(entry) => entry,
            Err(reason) => return self.stop_serving(reason),
        };
        if let Some(reason) = &self.failed {
            return encode(&Outcome::<()>::Failed(reason.clone()));
        }
        let command = match decode::<Command>(command) {
            Ok(command) => command,
            Err(error) => return encode(&Outcome::<()>::Refused(error)),
        };
        match self.apply_command(entry, command) {
            Ok(reply) => reply,
            Err(err) => self.fail(&err),
        }
    }

    fn read(&mut self, query: &[u8]) -> Vec<u8> {
        if let Some(reason) = &self.failed {
            return encode(&Outcome::<ReadReply>::Failed(reason.clone()));
        }
        let outcome = match decode::<ReadOp>(query) {
            Ok(op) => match self.answer(&op) {
                Ok(outcome) => outcome,
                Err(err) => {
                    let _ = self.fail(&err);
                    Outcome::Failed(err.to_string())
                }
            },
            Err(error) => Outcome::Refused(error),
        };
        encode(&outcome)
    }

    fn durable_slot(&self) -> Slot {
        self.durable
    }

    fn snapshot(&mut self) -> Option<Vec<u8>> {
        match self.take_snapshot() {
            Ok(bytes) => Some(bytes),
            Err(err) => {
                let _ = self.fail(&err);
                None
            }
        }
    }

    fn restore(&mut self, slot: Slot, snapshot: &[u8]) -> Result<(), String> {
        let trees = Self::decode_snapshot(snapshot)?;
        self.check_snapshot(slot, &trees)?;
        self.restore_trees(slot, trees).map_err(|err| {
            let _ = self.fail(&err);
            format!("restoring a snapshot at slot {slot}: {err}")
        })?;
        self.failed = None;
        self.publish();
        Ok(())
    }
}
