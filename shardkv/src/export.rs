//! Point-in-time images of one shard, for `kvctl snapshot export`.
//!
//! ```text
//!   export_begin(shard) ── leader: read-index barrier ── lock the state machine
//!        │                   copy the shard's data (sled tree, data space) ── unlock
//!        ▼
//!   ExportImage { image id, configuration, range, items, bytes }
//!   export_chunk(image, after, max_bytes) ── items after `after`, ≤ max_bytes
//!   export_end(image) ── dropped (or after EXPORT_IMAGE_IDLE_MS unused)
//! ```
//!
//! # Why the image is linearizable
//!
//! The leader first passes `paxos-log`'s read-index barrier (the same path
//! as every read), so everything acknowledged before the request is
//! applied. It then copies the shard while holding the state machine's
//! lock, which the driver also holds to apply: the copy is the shard after
//! one applied prefix of the log, at or after the read index, which is a
//! state the shard had at a moment between the request and the reply.
//! Writes that continue meanwhile wait for the lock and never reach the
//! copy, so paging through the image later sees that one moment only (a
//! scan's pages, by contrast, each see their own). Shards are imaged one
//! at a time: two shards' images are two moments.
//!
//! # Bounds
//!
//! The image lives in the replica's memory. A replica holds at most
//! [`EXPORT_IMAGES_MAX`] images (a further `export_begin` gets `NotReady`:
//! retry later), each at most [`EXPORT_IMAGE_BYTES_MAX`] bytes counted with
//! a per-item overhead (a bigger shard is refused with
//! [`ExportBegin::TooLarge`]; split it first), so exports take at most
//! `EXPORT_IMAGES_MAX * EXPORT_IMAGE_BYTES_MAX` (128 MiB) of a replica's
//! memory. An image unused for [`EXPORT_IMAGE_IDLE_MS`] is dropped. While
//! the copy runs, the group applies nothing: about a second for a shard at
//! the cap.
//!
//! Only the shard's data space is copied: session tables and other
//! bookkeeping stay behind.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use controller::{ConfigNum, ShardId};
use paxos_log::NodeHandle;
use serde::{Deserialize, Serialize};
use storage::sled_store::Space;

use crate::error::KvError;
use crate::rpc::ServiceError;
use crate::server::{service_error, ClientAddrs, SharedMachine};
use crate::wire::{encode, ReadOp};

/// Most bytes one image may take, counting [`ITEM_OVERHEAD_BYTES`] per item
/// on top of its key and value.
pub const EXPORT_IMAGE_BYTES_MAX: u64 = 64 << 20;

/// Most images one replica holds at a time (being copied included).
pub const EXPORT_IMAGES_MAX: usize = 2;

/// An image nobody asked for a chunk of for this long is dropped.
pub const EXPORT_IMAGE_IDLE_MS: u64 = 60_000;

/// What one item costs in memory beyond its key and value bytes (two
/// vector headers and allocator rounding), for the image's size cap.
pub const ITEM_OVERHEAD_BYTES: u64 = 64;

/// The key/value pairs of an image, in key order.
type Items = Vec<(Vec<u8>, Vec<u8>)>;

/// Items read from sled per step while copying.
const COPY_STEP_ITEMS: usize = 1024;

/// A point-in-time image of one shard, held by the replica that answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportImage {
    /// The image's id, for `export_chunk` and `export_end` at `replica`.
    pub image: u64,
    /// The client address of the replica holding the image.
    pub replica: String,
    /// The shard.
    pub shard: ShardId,
    /// The configuration the group had installed when it took the image.
    pub num: ConfigNum,
    /// The shard's first key (inclusive).
    pub start: Vec<u8>,
    /// The shard's end (exclusive; `None`: the end of the key space).
    pub end: Option<Vec<u8>>,
    /// Items in the image.
    pub items: u64,
    /// Key and value bytes in the image.
    pub bytes: u64,
}

/// The answer to `export_begin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExportBegin {
    /// The image is held; fetch it with `export_chunk`.
    Image(ExportImage),
    /// The shard is too large for an image; nothing is held.
    TooLarge {
        /// The shard.
        shard: ShardId,
        /// The image would have taken more than this many bytes.
        max_bytes: u64,
    },
}

/// Items of an image, in key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportChunk {
    /// Key/value pairs.
    pub items: Vec<(Vec<u8>, Vec<u8>)>,
    /// Whether these are the image's last.
    pub done: bool,
}

/// The images one replica holds. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct ExportImages {
    held: Mutex<Held>,
}

#[derive(Debug)]
struct Held {
    next_id: u64,
    /// Slots taken by copies in progress.
    copying: usize,
    images: BTreeMap<u64, Image>,
}

#[derive(Debug)]
struct Image {
    items: Arc<Items>,
    last_used: Instant,
}

/// A slot taken for a copy; given back on drop unless the copy became an
/// image.
struct Reservation {
    images: Arc<ExportImages>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut held = self.images.lock();
        held.copying = held.copying.saturating_sub(1);
    }
}

impl ExportImages {
    /// No images yet. Ids start from the clock, so that an id from before a
    /// restart does not name a new image.
    pub(crate) fn new() -> Arc<ExportImages> {
        let seed = crate::server::now_ms().wrapping_mul(1 << 16);
        Arc::new(ExportImages {
            held: Mutex::new(Held {
                next_id: seed,
                copying: 0,
                images: BTreeMap::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        // Nothing under this lock can leave `Held` inconsistent.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot for a new image, dropping idle ones first.
    fn reserve(self: &Arc<Self>) -> Result<Reservation, ServiceError> {
        let mut held = self.lock();
        let idle = Duration::from_millis(EXPORT_IMAGE_IDLE_MS);
        held.images
            .retain(|_, image| image.last_used.elapsed() < idle);
        if held.images.len() + held.copying >= EXPORT_IMAGES_MAX {
            return Err(ServiceError::NotReady(format!(
                "this replica holds {EXPORT_IMAGES_MAX} export images already (the most it \
                 holds); retry when an export finishes (unused images are dropped after \
                 {EXPORT_IMAGE_IDLE_MS} ms)"
            )));
        }
        held.copying += 1;
        Ok(Reservation {
            images: Arc::clone(self),
        })
    }

    /// Turns a reservation into a held image; its id.
    fn hold(&self, reservation: Reservation, items: Items) -> u64 {
        let mut held = self.lock();
        let id = held.next_id;
        held.next_id = held.next_id.wrapping_add(1);
        held.images.insert(
            id,
            Image {
                items: Arc::new(items),
                last_used: Instant::now(),
            },
        );
        drop(held);
        // Gives the copy slot back now that the image holds one.
        drop(reservation);
        id
    }

    /// The items of `image`, marked used now.
    fn items(&self, image: u64) -> Option<Arc<Items>> {
        let mut held = self.lock();
        let entry = held.images.get_mut(&image)?;
        entry.last_used = Instant::now();
        Some(Arc::clone(&entry.items))
    }

    fn remove(&self, image: u64) {
        self.lock().images.remove(&image);
    }

    /// Drops `image` if it has been idle too long; whether it is gone.
    fn expire(&self, image: u64) -> bool {
        let mut held = self.lock();
        let idle = Duration::from_millis(EXPORT_IMAGE_IDLE_MS);
        match held.images.get(&image) {
            Some(entry) if entry.last_used.elapsed() < idle => false,
            Some(_) => {
                held.images.remove(&image);
                true
            }
            None => true,
        }
    }
}

/// Drops `image` once idle, even if nobody calls again.
fn sweep_later(images: Weak<ExportImages>, image: u64) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(EXPORT_IMAGE_IDLE_MS)).await;
            match images.upgrade() {
                Some(images) if !images.expire(image) => {}
                _ => return,
            }
        }
    });
}

/// What `begin` needs from the server.
pub(crate) struct ExportContext<'a> {
    pub(crate) images: &'a Arc<ExportImages>,
    pub(crate) node: &'a NodeHandle,
    pub(crate) machine: &'a SharedMachine,
    pub(crate) client_addrs: &'a ClientAddrs,
}

/// `export_begin`: a linearizable image of `shard` (leader only).
pub(crate) async fn begin(
    context: ExportContext<'_>,
    shard: ShardId,
) -> Result<ExportBegin, ServiceError> {
    let reservation = context.images.reserve()?;
    // The barrier: once it answers, everything acknowledged before this
    // request is applied here. Its answer is of no interest.
    context
        .node
        .read(encode(&ReadOp::Get { key: Vec::new() }))
        .await
        .map_err(|error| service_error(error, context.client_addrs))?;
    let replica = context
        .client_addrs
        .get(context.node.id())
        .map(|addr| addr.to_string())
        .unwrap_or_default();
    let machine = context.machine.clone();
    let images = Arc::clone(context.images);
    // Copying reads sled: keep it off the runtime's workers. The
    // reservation moves along, so a cancelled request still frees its slot.
    let begun = tokio::task::spawn_blocking(move || {
        let copied = copy_shard(&machine, shard)?;
        Ok::<_, ServiceError>(match copied {
            Copied::Image {
                num,
                start,
                end,
                items,
                bytes,
            } => {
                let count = u64::try_from(items.len()).unwrap_or(u64::MAX);
                let image = images.hold(reservation, items);
                ExportBegin::Image(ExportImage {
                    image,
                    replica,
                    shard,
                    num,
                    start,
                    end,
                    items: count,
                    bytes,
                })
            }
            Copied::TooLarge => ExportBegin::TooLarge {
                shard,
                max_bytes: EXPORT_IMAGE_BYTES_MAX,
            },
        })
    })
    .await
    .map_err(|cause| ServiceError::Stopped(format!("export copy task failed: {cause}")))??;
    if let ExportBegin::Image(image) = &begun {
        sweep_later(Arc::downgrade(context.images), image.image);
    }
    Ok(begun)
}

enum Copied {
    Image {
        num: ConfigNum,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        items: Items,
        bytes: u64,
    },
    TooLarge,
}

/// Copies the data of `shard` under the state machine's lock, if this
/// replica serves it.
fn copy_shard(machine: &SharedMachine, shard: ShardId) -> Result<Copied, ServiceError> {
    let machine = machine.lock();
    if let Some(reason) = machine.failed() {
        return Err(ServiceError::Stopped(reason.to_string()));
    }
    let group = machine.group();
    let range = group
        .config
        .as_ref()
        .and_then(|config| config.shard(shard))
        .filter(|_| group.serves(shard));
    let Some(range) = range else {
        return Err(ServiceError::Refused(KvError::WrongGroup {
            num: group.num,
        }));
    };
    let store = machine.store();
    let mut items: Items = Vec::new();
    let mut bytes = 0u64;
    let mut cost = 0u64;
    let mut lo: Bound<Vec<u8>> = Bound::Unbounded;
    loop {
        let found = store
            .scan(
                shard,
                Space::Data,
                (lo.as_ref().map(Vec::as_slice), Bound::Unbounded),
                COPY_STEP_ITEMS,
            )
            .map_err(|err| ServiceError::Stopped(format!("reading shard {shard}: {err}")))?;
        let exhausted = found.len() < COPY_STEP_ITEMS;
        for (key, value) in found {
            debug_assert!(range.contains(&key), "a shard's tree holds only its keys");
            let item_bytes = u64::try_from(key.len() + value.len()).unwrap_or(u64::MAX);
            bytes = bytes.saturating_add(item_bytes);
            cost = cost.saturating_add(item_bytes + ITEM_OVERHEAD_BYTES);
            if cost > EXPORT_IMAGE_BYTES_MAX {
                return Ok(Copied::TooLarge);
            }
            lo = Bound::Excluded(key.clone());
            items.push((key, value));
        }
        if exhausted {
            break;
        }
    }
    Ok(Copied::Image {
        num: group.num,
        start: range.start.clone(),
        end: range.end.clone(),
        items,
        bytes,
    })
}

/// `export_chunk`: the items of `image` after key `after` (from the first
/// if `None`), at most `max_bytes` of keys and values (at least one item).
pub(crate) fn chunk(
    images: &ExportImages,
    image: u64,
    after: Option<&[u8]>,
    max_bytes: usize,
) -> Result<ExportChunk, ServiceError> {
    let items = images.items(image).ok_or_else(|| {
        ServiceError::Stopped(format!(
            "export image {image} is not held here (unused for {EXPORT_IMAGE_IDLE_MS} ms, \
             finished, or the replica restarted); begin the shard's export again"
        ))
    })?;
    let first = match after {
        Some(after) => items.partition_point(|(key, _)| key.as_slice() <= after),
        None => 0,
    };
    let mut chunk = Vec::new();
    let mut bytes = 0usize;
    for (key, value) in items.iter().skip(first) {
        let size = key.len() + value.len();
        if !chunk.is_empty() && bytes + size > max_bytes {
            return Ok(ExportChunk {
                items: chunk,
                done: false,
            });
        }
        bytes += size;
        chunk.push((key.clone(), value.clone()));
    }
    Ok(ExportChunk {
        items: chunk,
        done: true,
    })
}

/// `export_end`: drops `image` (gone already is fine).
pub(crate) fn end(images: &ExportImages, image: u64) {
    images.remove(image);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str) -> (Vec<u8>, Vec<u8>) {
        (key.as_bytes().to_vec(), b"0123456789".to_vec())
    }

    #[tokio::test]
    async fn chunks_page_by_cursor_and_bytes_and_slots_are_bounded() {
        let images = ExportImages::new();
        let first = images.reserve().unwrap();
        let second = images.reserve().unwrap();
        assert!(matches!(images.reserve(), Err(ServiceError::NotReady(_))));
        drop(second);
        let id = images.hold(first, vec![item("a"), item("b"), item("c")]);
        // One image held, one slot free.
        let third = images.reserve().unwrap();
        assert!(images.reserve().is_err());
        drop(third);

        let page = chunk(&images, id, None, 22).unwrap();
        assert_eq!(page.items, vec![item("a"), item("b")]);
        assert!(!page.done);
        let page = chunk(&images, id, Some(b"b"), 22).unwrap();
        assert_eq!(page.items, vec![item("c")]);
        assert!(page.done);
        // At least one item, whatever the bound.
        assert_eq!(chunk(&images, id, Some(b"a"), 1).unwrap().items.len(), 1);
        // Past the end: nothing, done.
        let page = chunk(&images, id, Some(b"z"), 100).unwrap();
        assert!(page.items.is_empty() && page.done);

        end(&images, id);
        assert!(matches!(
            chunk(&images, id, None, 100),
            Err(ServiceError::Stopped(_))
        ));
        assert!(images.expire(id), "an ended image is gone");
    }
}
