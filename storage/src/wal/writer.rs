//! Group commit: many concurrent appenders, one fsync.
//!
//! A [`WalWriter`] moves a [`Wal`] onto a dedicated thread. Appenders (tokio
//! tasks) send their records over a bounded channel and wait on a oneshot.
//! The thread takes the first waiting request, drains whatever else is queued
//! (up to a batch bound), appends it all, calls `sync` once and only then
//! answers every request of the batch. While it is inside fdatasync the next
//! batch queues up, so the number of records per fsync grows with load by
//! itself, with no timer and no added latency when the load is light.
//!
//! The channel is bounded: when the disk cannot keep up, appenders wait in
//! `send` instead of queueing unbounded memory.

use std::thread;

use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::segment::Lsn;
use super::Wal;
use crate::error::{Result, StorageError};

/// Bounds of the group-commit writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterOptions {
    /// Requests that may wait in the queue before appenders are held back.
    pub queue_depth: usize,
    /// Most records covered by one fsync.
    pub batch_records_max: usize,
    /// Most payload bytes covered by one fsync.
    pub batch_bytes_max: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            queue_depth: 4096,
            batch_records_max: 4096,
            batch_bytes_max: 8 << 20,
        }
    }
}

enum Request {
    Append {
        payloads: Payloads,
        reply: oneshot::Sender<Result<Lsn>>,
    },
    Control(Control),
}

/// Requests that run after the batch they arrive in is durable, so they never
/// delay or reorder the appends queued before them.
enum Control {
    Compact {
        below: Lsn,
        reply: oneshot::Sender<Result<usize>>,
    },
    Close {
        reply: oneshot::Sender<Wal>,
    },
}

/// One record or several that must land together in one batch.
enum Payloads {
    One(Vec<u8>),
    Many(Vec<Vec<u8>>),
}

impl Payloads {
    fn as_slices(&self) -> impl Iterator<Item = &[u8]> {
        let (one, many) = match self {
            Payloads::One(p) => (Some(p.as_slice()), &[][..]),
            Payloads::Many(ps) => (None, ps.as_slice()),
        };
        one.into_iter().chain(many.iter().map(Vec::as_slice))
    }
}

/// Handle to a WAL running on its own thread. Cheap to clone; the thread
/// ends when every handle is dropped or [`WalWriter::close`] is called.
#[derive(Debug, Clone)]
pub struct WalWriter {
    requests: mpsc::Sender<Request>,
    record_size_bytes_max: u32,
}

impl WalWriter {
    /// Starts the writer thread, which owns `wal` from now on.
    pub fn spawn(wal: Wal, options: WriterOptions) -> Result<WalWriter> {
        if options.queue_depth == 0
            || options.batch_records_max == 0
            || options.batch_bytes_max == 0
        {
            return Err(StorageError::InvalidArgument(
                "WAL writer queue depth and batch bounds must be positive".into(),
            ));
        }
        let (requests, receiver) = mpsc::channel(options.queue_depth);
        let record_size_bytes_max = wal.options.record_size_bytes_max;
        let dir = wal.dir().to_path_buf();
        thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || run(wal, receiver, &options))
            .map_err(StorageError::io("spawn WAL writer thread", dir))?;
        Ok(WalWriter {
            requests,
            record_size_bytes_max,
        })
    }

    /// Appends one record and returns its LSN once it is durable.
    pub async fn append(&self, payload: Vec<u8>) -> Result<Lsn> {
        self.check_size(&payload)?;
        self.submit(Payloads::One(payload)).await
    }

    /// Appends records with consecutive LSNs and returns the last LSN once
    /// all of them are durable. Either all are appended or, on a size error,
    /// none.
    pub async fn append_batch(&self, payloads: Vec<Vec<u8>>) -> Result<Lsn> {
        if payloads.is_empty() {
            return Err(StorageError::InvalidArgument(
                "append_batch of no records".into(),
            ));
        }
        for payload in &payloads {
            self.check_size(payload)?;
        }
        self.submit(Payloads::Many(payloads)).await
    }

    /// Deletes whole segments below `lsn`; see [`Wal::compact_below`].
    pub async fn compact_below(&self, lsn: Lsn) -> Result<usize> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Control(Control::Compact { below: lsn, reply }))
            .await?;
        answer.await.map_err(|_| StorageError::WriterStopped)?
    }

    /// Stops the thread after the requests already queued and hands the
    /// `Wal` back.
    pub async fn close(self) -> Result<Wal> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Control(Control::Close { reply }))
            .await?;
        answer.await.map_err(|_| StorageError::WriterStopped)
    }

    fn check_size(&self, payload: &[u8]) -> Result<()> {
        if payload.len() > self.record_size_bytes_max as usize {
            return Err(StorageError::RecordTooLarge {
                size_bytes: payload.len() as u64,
                max_bytes: u64::from(self.record_size_bytes_max),
            });
        }
        Ok(())
    }

    async fn submit(&self, payloads: Payloads) -> Result<Lsn> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Append { payloads, reply }).await?;
        answer.await.map_err(|_| StorageError::WriterStopped)?
    }

    async fn send(&self, request: Request) -> Result<()> {
        self.requests
            .send(request)
            .await
            .map_err(|_| StorageError::WriterStopped)
    }
}

/// The writer thread's loop: batch, append, one fsync, answer.
fn run(mut wal: Wal, mut requests: mpsc::Receiver<Request>, options: &WriterOptions) {
    let mut waiting: Vec<(oneshot::Sender<Result<Lsn>>, Result<Lsn>)> = Vec::new();
    let mut after_sync: Vec<Control> = Vec::new();
    while let Some(first) = requests.blocking_recv() {
        let mut next = Some(first);
        let (mut batch_records, mut batch_bytes) = (0usize, 0usize);
        while let Some(request) = next.take() {
            match request {
                Request::Append { payloads, reply } => {
                    let mut result = Ok(0);
                    for payload in payloads.as_slices() {
                        batch_records += 1;
                        batch_bytes += payload.len();
                        result = wal.append(payload);
                        if result.is_err() {
                            break;
                        }
                    }
                    waiting.push((reply, result));
                }
                Request::Control(control) => {
                    after_sync.push(control);
                    break;
                }
            }
            if batch_records >= options.batch_records_max || batch_bytes >= options.batch_bytes_max
            {
                break;
            }
            next = requests.try_recv().ok();
        }

        if !waiting.is_empty() {
            let synced = wal.sync();
            debug!(
                records = batch_records,
                bytes = batch_bytes,
                ok = synced.is_ok(),
                "group commit"
            );
            for (reply, appended) in waiting.drain(..) {
                let outcome = match (&synced, appended) {
                    (Ok(_), appended) => appended,
                    (Err(_), _) => Err(wal.poison_error()),
                };
                // A dropped receiver means the appender stopped waiting; the
                // record is durable all the same, so there is nothing to undo.
                let _ = reply.send(outcome);
            }
        }
        for control in after_sync.drain(..) {
            match control {
                Control::Compact { below, reply } => {
                    let _ = reply.send(wal.compact_below(below));
                }
                Control::Close { reply } => {
                    let _ = reply.send(wal);
                    return;
                }
            }
        }
    }
}
