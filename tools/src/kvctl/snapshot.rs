//! `kvctl snapshot export|import|verify`: a running cluster's keys and
//! values to a file ([`crate::snapshot_file`]) and back.
//!
//! * `export` plans from the controller's latest configuration and copies
//!   each shard through a point-in-time image its group's leader takes
//!   (`export_begin`, see `shardkv::export`), page by page. Each shard in
//!   the file is that shard at one moment of the linearizable order; two
//!   shards are two moments (like the per-shard pieces of a scan). A shard
//!   whose image is lost (its replica restarted, or it idled out) is cut
//!   from the file and copied again, from whichever group serves it then;
//!   if a shard's range changed (a split), the export starts over from the
//!   new configuration.
//! * `import` checks the whole file first (a damaged file changes
//!   nothing), then puts every item, routed by key, through
//!   [`IMPORT_TASKS`] clerks at once. Puts are idempotent, so an
//!   interrupted import is finished by running it again. Keys the cluster
//!   holds that the file does not are left alone. A failed import says how
//!   many items went in, and is `indeterminate` once any did (or the failed
//!   put may have).
//! * `verify` reads the whole file and prints what it holds, or exits 1
//!   naming the byte offset of the damage.
//!
//! Progress bars go to stderr, and only when it is a terminal and the
//! output is text.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use controller::Shard;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use shardkv::export::{ExportBegin, ExportChunk};
use shardkv::{Clerk, ClerkError};
use storage::RealFs;
use tokio::sync::{mpsc, Mutex};

use super::cli::{Format, SnapshotCommand};
use super::{cluster, load_cluster, ops, Exit, Reply};
use crate::client::lossy;
use crate::snapshot_file::{
    self, now_ms, Entry, Header, SnapshotFileError, SnapshotFileReader, SnapshotFileWriter, Summary,
};

/// Clerks putting items at once during an import.
pub const IMPORT_TASKS: usize = 16;

/// Items read ahead of the clerks during an import.
const IMPORT_QUEUE_ITEMS: usize = 4096;

/// Bytes of keys and values asked for per export chunk.
const EXPORT_CHUNK_BYTES: u64 = 1 << 20;

/// Times one shard's image may be lost before the export gives up.
const SHARD_ATTEMPTS: u32 = 5;

/// Times the export starts over because the shard layout changed.
const LAYOUT_ATTEMPTS: u32 = 3;

/// Runs a `snapshot` subcommand.
pub async fn run(
    command: SnapshotCommand,
    cluster: Option<&Path>,
    format: Format,
    timeout: Duration,
) -> anyhow::Result<Reply> {
    match command {
        SnapshotCommand::Export { file, shard } => {
            export(&file, shard, cluster, format, timeout).await
        }
        SnapshotCommand::Import { file } => import(&file, cluster, format, timeout).await,
        SnapshotCommand::Verify { file } => Ok(verify(&file).await),
    }
}

/// A progress bar on stderr, or a hidden one (JSON output, or stderr is
/// not a terminal).
fn progress(format: Format, len: u64, verb: &str) -> ProgressBar {
    if format == Format::Json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {human_pos}/{human_len} items ({per_sec}, {eta} left)",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(verb.to_string());
    bar
}

/// The reply for a file that failed to read: exit 1, naming the offset of
/// any damage (also as `offset` in JSON).
fn file_failure(path: &Path, err: &SnapshotFileError, note: &str) -> Reply {
    let mut reply = Reply::error(Exit::Error, format!("{err}{note}"), false);
    reply.json["file"] = json!(path.display().to_string());
    if let Some(offset) = err.offset() {
        reply.json["offset"] = json!(offset);
    }
    reply
}

fn summary_json(path: &Path, summary: &Summary) -> serde_json::Value {
    json!({
        "ok": true,
        "file": path.display().to_string(),
        "num": summary.num,
        "created_ms": summary.created_ms,
        "shards": summary.shards,
        "items": summary.items,
        "bytes": summary.bytes,
        "file_bytes": summary.file_bytes,
    })
}

async fn verify(path: &Path) -> Reply {
    let owned = path.to_path_buf();
    let checked = tokio::task::spawn_blocking(move || snapshot_file::verify(&owned)).await;
    match checked {
        Ok(Ok(summary)) => {
            let text = format!(
                "ok: {}\nconfiguration: {}\ncreated_ms: {}\nshards: {}\nitems: {}\nbytes: {}\n\
                 file_bytes: {}\n",
                path.display(),
                summary.num,
                summary.created_ms,
                summary.shards,
                summary.items,
                summary.bytes,
                summary.file_bytes
            );
            Reply::ok(text, summary_json(path, &summary))
        }
        Ok(Err(err)) => file_failure(path, &err, ""),
        Err(cause) => Reply::error(
            Exit::Error,
            format!("verifying {}: task failed: {cause}", path.display()),
            false,
        ),
    }
}

/// The export's file, written off the async workers one step at a time.
struct FileTask {
    writer: Option<SnapshotFileWriter>,
}

impl FileTask {
    async fn create(path: &Path, header: Header) -> anyhow::Result<FileTask> {
        let path = path.to_path_buf();
        let writer = tokio::task::spawn_blocking(move || {
            SnapshotFileWriter::create(RealFs::shared(), &path, header)
        })
        .await
        .context("the file task failed")??;
        Ok(FileTask {
            writer: Some(writer),
        })
    }

    /// Runs `step` on the writer in a blocking task.
    async fn step<T, F>(&mut self, step: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut SnapshotFileWriter) -> Result<T, SnapshotFileError> + Send + 'static,
    {
        let mut writer = self
            .writer
            .take()
            .ok_or_else(|| anyhow!("the export file was lost after an earlier failure"))?;
        let (writer, result) = tokio::task::spawn_blocking(move || {
            let result = step(&mut writer);
            (writer, result)
        })
        .await
        .context("the file task failed")?;
        self.writer = Some(writer);
        Ok(result?)
    }

    async fn finish(mut self) -> anyhow::Result<Summary> {
        let writer = self
            .writer
            .take()
            .ok_or_else(|| anyhow!("the export file was lost after an earlier failure"))?;
        Ok(tokio::task::spawn_blocking(move || writer.finish())
            .await
            .context("the file task failed")??)
    }
}

/// How copying the planned shards went.
enum Copied {
    /// Every shard is in the file.
    Done,
    /// A shard's range is not what the plan said: plan again.
    LayoutChanged(String),
}

async fn export(
    path: &Path,
    only: Option<u64>,
    cluster: Option<&Path>,
    format: Format,
    timeout: Duration,
) -> anyhow::Result<Reply> {
    let file = load_cluster(cluster)?;
    let mut admin = cluster::admin_clerk(&file, timeout);
    let mut clerk = ops::clerk(&file, timeout);
    let bar = progress(format, 0, "exporting");
    let mut last_change = String::new();
    for _ in 0..LAYOUT_ATTEMPTS {
        let config = admin
            .query(None)
            .await
            .context("asking the controller for the latest configuration")?;
        let shards: Vec<Shard> = match only {
            Some(id) => vec![config.shard(id).cloned().ok_or_else(|| {
                let ids: Vec<String> = config.shards.iter().map(|s| s.id.to_string()).collect();
                anyhow!(
                    "shard {id} is not in configuration {} (its shards: {}); see `kvctl admin \
                     config`",
                    config.num,
                    ids.join(", ")
                )
            })?],
            None => config.shards.clone(),
        };
        let header = Header {
            num: config.num,
            created_ms: now_ms(),
        };
        // Dropping the task on any error below removes the temporary file.
        let mut task = FileTask::create(path, header)
            .await
            .with_context(|| format!("writing {}", path.display()))?;
        bar.set_length(0);
        bar.set_position(0);
        match copy_shards(&mut clerk, &mut task, &shards, &bar).await? {
            Copied::LayoutChanged(why) => last_change = why,
            Copied::Done => {
                let summary = task
                    .finish()
                    .await
                    .with_context(|| format!("writing {}", path.display()))?;
                bar.finish_and_clear();
                let text = format!(
                    "exported {} shards, {} items ({} bytes) of configuration {} to {} ({} bytes)",
                    summary.shards,
                    summary.items,
                    summary.bytes,
                    summary.num,
                    path.display(),
                    summary.file_bytes
                );
                return Ok(Reply::ok(text, summary_json(path, &summary)));
            }
        }
    }
    bar.finish_and_clear();
    bail!(
        "the shard layout kept changing during the export ({last_change}); run it again once \
         no split or configuration change is under way"
    )
}

async fn copy_shards(
    clerk: &mut Clerk,
    task: &mut FileTask,
    shards: &[Shard],
    bar: &ProgressBar,
) -> anyhow::Result<Copied> {
    for shard in shards {
        if let Copied::LayoutChanged(why) = copy_shard(clerk, task, shard, bar).await? {
            return Ok(Copied::LayoutChanged(why));
        }
    }
    Ok(Copied::Done)
}

/// Copies one shard's image into the file, taking a new image (from
/// whichever group serves the shard then) if one is lost.
async fn copy_shard(
    clerk: &mut Clerk,
    task: &mut FileTask,
    shard: &Shard,
    bar: &ProgressBar,
) -> anyhow::Result<Copied> {
    let id = shard.id;
    let mut last_loss = String::new();
    for _ in 0..SHARD_ATTEMPTS {
        let begun = clerk
            .export_begin(id, &shard.start)
            .await
            .with_context(|| format!("taking an image of shard {id}"))?;
        let image = match begun {
            ExportBegin::Image(image) => image,
            ExportBegin::TooLarge { max_bytes, .. } => bail!(
                "shard {id} holds more than a replica may copy for one export ({max_bytes} \
                 bytes); split it (`kvctl admin split KEY`) and export again"
            ),
        };
        let replica: SocketAddr = image.replica.parse().with_context(|| {
            format!(
                "the replica holding shard {id}'s image gave no usable address ({:?})",
                image.replica
            )
        })?;
        if image.start != shard.start || image.end != shard.end {
            clerk.export_end(replica, image.image).await;
            return Ok(Copied::LayoutChanged(format!(
                "shard {id} covers another range in configuration {}",
                image.num
            )));
        }
        let (start, end) = (shard.start.clone(), shard.end.clone());
        let mark = task
            .step(move |writer| writer.begin_shard(id, &start, end.as_deref()))
            .await?;
        let (position, length) = (bar.position(), bar.length().unwrap_or(0));
        // `items` comes from the network: no overflow on a wild value.
        bar.set_length(length.saturating_add(image.items));
        bar.set_message(format!("exporting shard {id}"));
        let mut after: Option<Vec<u8>> = None;
        let lost = loop {
            let chunk = match clerk
                .export_chunk(replica, image.image, after.as_deref(), EXPORT_CHUNK_BYTES)
                .await
            {
                Ok(chunk) => chunk,
                Err(err) => break Some(err.to_string()),
            };
            if let Err(why) = advance_cursor(&mut after, &chunk) {
                break Some(format!("replica {replica}: {why}"));
            }
            let count = u64::try_from(chunk.items.len()).unwrap_or(u64::MAX);
            let items = chunk.items;
            task.step(move |writer| {
                items
                    .iter()
                    .try_for_each(|(key, value)| writer.item(key, value))
            })
            .await
            .with_context(|| format!("copying shard {id} from replica {replica}"))?;
            bar.inc(count);
            if chunk.done {
                break None;
            }
        };
        match lost {
            None => {
                task.step(SnapshotFileWriter::end_shard).await?;
                clerk.export_end(replica, image.image).await;
                return Ok(Copied::Done);
            }
            Some(cause) => {
                // Cut the partial shard out and start it again.
                task.step(move |writer| writer.rewind(mark)).await?;
                bar.set_length(length);
                bar.set_position(position);
                last_loss = cause;
            }
        }
    }
    bail!(
        "shard {id}: its image was lost {SHARD_ATTEMPTS} times (last: {last_loss}); check the \
         group with `kvctl cluster status` and export again"
    )
}

/// Moves the export cursor `after` past `chunk`: to its last key. A chunk
/// that is empty but not the last is a protocol error (asking again from
/// the same cursor would get it again): the error says so, and the caller
/// copies the shard again from a new image.
fn advance_cursor(after: &mut Option<Vec<u8>>, chunk: &ExportChunk) -> Result<(), String> {
    match chunk.items.last() {
        Some((key, _)) => {
            *after = Some(key.clone());
            Ok(())
        }
        None if chunk.done => Ok(()),
        None => Err(format!(
            "an empty export chunk after {} that is not the image's last (a protocol error)",
            after.as_deref().map_or_else(
                || "the start".to_string(),
                |key| format!("{:?}", lossy(key))
            )
        )),
    }
}

/// What the import's workers share.
struct Workers {
    queue: Mutex<mpsc::Receiver<(Vec<u8>, Vec<u8>)>>,
    /// Set by the first failed put: the others stop.
    failed: AtomicBool,
    bar: ProgressBar,
}

async fn import(
    path: &Path,
    cluster: Option<&Path>,
    format: Format,
    timeout: Duration,
) -> anyhow::Result<Reply> {
    // Every byte is checked before anything is written.
    let owned = path.to_path_buf();
    let summary = match tokio::task::spawn_blocking(move || snapshot_file::verify(&owned))
        .await
        .context("the verify task failed")?
    {
        Ok(summary) => summary,
        Err(err) => return Ok(file_failure(path, &err, "; nothing was imported")),
    };
    let file = load_cluster(cluster)?;
    let started = Instant::now();
    let (sender, receiver) = mpsc::channel(IMPORT_QUEUE_ITEMS);
    let reader = tokio::task::spawn_blocking({
        let path = path.to_path_buf();
        move || read_items(&path, &sender)
    });
    let workers = Arc::new(Workers {
        queue: Mutex::new(receiver),
        failed: AtomicBool::new(false),
        bar: progress(format, summary.items, "importing"),
    });
    let mut tasks = Vec::with_capacity(IMPORT_TASKS);
    for _ in 0..IMPORT_TASKS {
        let clerk = ops::clerk(&file, timeout);
        tasks.push(tokio::spawn(put_items(clerk, Arc::clone(&workers))));
    }
    let mut first_failure: Option<PutFailure> = None;
    let mut imported = 0u64;
    for task in tasks {
        match task.await {
            Ok((count, failure)) => {
                imported += count;
                if first_failure.is_none() {
                    first_failure = failure;
                }
            }
            Err(cause) => {
                // Its count is lost, and it may have put items.
                first_failure.get_or_insert_with(|| PutFailure {
                    message: format!("an import task failed: {cause}"),
                    indeterminate: true,
                });
            }
        }
    }
    let read = reader.await;
    workers.bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let failure = match (first_failure, read) {
        (Some(failure), _) => Some(failure),
        (None, Ok(Ok(()))) => None,
        (None, Ok(Err(err))) => Some(PutFailure {
            message: format!("{err} (the file changed after it was verified?)"),
            indeterminate: false,
        }),
        (None, Err(cause)) => Some(PutFailure {
            message: format!("the file reader task failed: {cause}"),
            indeterminate: false,
        }),
    };
    if let Some(failure) = failure {
        // Items already put stay put: the cluster holds part of the file,
        // so the outcome is not "nothing happened" once any item is in (or
        // the failing put itself may have been applied).
        let indeterminate = imported > 0 || failure.indeterminate;
        let message = format!(
            "the import stopped after {imported} of {} items were imported: {}. Puts are \
             idempotent: once the cause is fixed, running the same import again finishes it",
            summary.items, failure.message
        );
        let mut reply = Reply::error(Exit::Error, message, indeterminate);
        reply.json["file"] = json!(path.display().to_string());
        reply.json["items"] = json!(imported);
        return Ok(reply);
    }
    #[allow(clippy::cast_precision_loss)] // a rate for people
    let per_s = imported as f64 / seconds.max(1e-3);
    let text = format!(
        "imported {imported} items ({} bytes, {} shards) from {} in {seconds:.1} s ({per_s:.0} \
         items/s)",
        summary.bytes,
        summary.shards,
        path.display()
    );
    let mut json = summary_json(path, &summary);
    json["items"] = json!(imported);
    json["seconds"] = json!(seconds);
    json["items_per_s"] = json!(per_s);
    Ok(Reply::ok(text, json))
}

/// Streams the file's items into `sender` until the end or until the
/// workers stop taking them.
fn read_items(
    path: &Path,
    sender: &mpsc::Sender<(Vec<u8>, Vec<u8>)>,
) -> Result<(), SnapshotFileError> {
    let mut reader = SnapshotFileReader::open(path)?;
    while let Some(entry) = reader.next_entry()? {
        if let Entry::Item { key, value } = entry {
            if sender.blocking_send((key, value)).is_err() {
                // The workers stopped (a put failed); they say why.
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Why an import worker stopped early.
struct PutFailure {
    message: String,
    /// The failed put may have taken effect.
    indeterminate: bool,
}

impl PutFailure {
    fn put(key: &[u8], err: &ClerkError) -> PutFailure {
        PutFailure {
            message: format!("put {:?}: {err}", lossy(key)),
            indeterminate: err.is_indeterminate(),
        }
    }
}

/// One import worker: puts items from the queue until it is empty or a
/// put fails. How many it put, and its failure.
async fn put_items(mut clerk: Clerk, workers: Arc<Workers>) -> (u64, Option<PutFailure>) {
    let mut count = 0u64;
    loop {
        if workers.failed.load(Ordering::Relaxed) {
            return (count, None);
        }
        let next = workers.queue.lock().await.recv().await;
        let Some((key, value)) = next else {
            return (count, None);
        };
        if let Err(err) = clerk.put(&key, &value).await {
            workers.failed.store(true, Ordering::Relaxed);
            // Closing the queue stops the reader.
            workers.queue.lock().await.close();
            return (count, Some(PutFailure::put(&key, &err)));
        }
        count += 1;
        workers.bar.inc(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(keys: &[&str], done: bool) -> ExportChunk {
        ExportChunk {
            items: keys
                .iter()
                .map(|key| (key.as_bytes().to_vec(), b"v".to_vec()))
                .collect(),
            done,
        }
    }

    #[test]
    fn the_cursor_moves_to_a_chunks_last_key_and_never_back() {
        let mut after = None;
        advance_cursor(&mut after, &chunk(&["a", "b"], false)).unwrap();
        assert_eq!(after.as_deref(), Some(&b"b"[..]));
        // The last chunk may be empty: the cursor stays.
        advance_cursor(&mut after, &chunk(&[], true)).unwrap();
        assert_eq!(after.as_deref(), Some(&b"b"[..]));
        // An empty chunk that is not the last: a protocol error, cursor kept.
        let err = advance_cursor(&mut after, &chunk(&[], false)).unwrap_err();
        assert!(
            err.contains("protocol error") && err.contains("\"b\""),
            "{err}"
        );
        assert_eq!(after.as_deref(), Some(&b"b"[..]));
        let mut start = None;
        let err = advance_cursor(&mut start, &chunk(&[], false)).unwrap_err();
        assert!(err.contains("the start"), "{err}");
        assert_eq!(start, None);
    }
}
