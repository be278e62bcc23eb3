//! `kvctl wal dump|verify`: the command-line glue over
//! [`crate::wal_inspect`], which does the reading, checking and decoding.
//!
//! Both commands only read: they work on a stopped node's directory and on
//! a running node's (no lock, no repair). `dump` streams each record to
//! stdout as it is decoded, so a WAL of any size is dumped in bounded
//! memory; its `Reply` carries no text and no JSON, only the summary for
//! stderr (which directory was read, counts, a torn tail). `verify` prints
//! one line (or one JSON object) and exits 1 on damage, naming the file and
//! byte offset of the first bad record.

use std::io::{BufWriter, ErrorKind};
use std::path::Path;

use anyhow::Context;
use serde_json::{json, Value};

use super::cli::{Format, WalCommand};
use super::{Exit, Reply};
use crate::wal_inspect::{self, DumpFormat, WalInspectError, WalSource, WalSummary};

/// Runs a `wal` subcommand; `format` is the global `-o` (`-o json` means
/// `dump --json`).
pub async fn run(command: WalCommand, format: Format) -> anyhow::Result<Reply> {
    // Reading and decoding segments is blocking file work.
    tokio::task::spawn_blocking(move || match command {
        WalCommand::Dump { path, json } => dump(&path, json || format == Format::Json, format),
        WalCommand::Verify { path } => verify(&path),
    })
    .await
    .context("the WAL reading task failed")
}

fn dump(path: &Path, json_lines: bool, format: Format) -> Reply {
    let source = match WalSource::resolve(path) {
        Ok(source) => source,
        Err(error) => return failure(&error),
    };
    let dump_format = if json_lines {
        DumpFormat::JsonLines
    } else {
        DumpFormat::Text
    };
    let result = {
        let mut out = BufWriter::new(std::io::stdout().lock());
        wal_inspect::dump(&source, dump_format, &mut out)
    };
    match result {
        Ok(summary) => {
            let note = summary_note(&source, &summary);
            if format == Format::Json {
                // `Reply::print` shows notes in text mode only; the summary
                // still belongs on stderr, never among the JSON lines.
                eprintln!("kvctl: {note}");
                Reply::ok(Vec::new(), Value::Null)
            } else {
                Reply {
                    note: Some(note),
                    ..Reply::ok(Vec::new(), Value::Null)
                }
            }
        }
        // `kvctl wal dump | head`: the reader has what it wanted.
        Err(WalInspectError::Output(error)) if error.kind() == ErrorKind::BrokenPipe => {
            Reply::ok(Vec::new(), Value::Null)
        }
        Err(error) => failure(&error),
    }
}

fn verify(path: &Path) -> Reply {
    let source = match WalSource::resolve(path) {
        Ok(source) => source,
        Err(error) => return failure(&error),
    };
    match wal_inspect::verify(&source) {
        Ok(summary) => {
            let text = format!(
                "ok: {}: {}; every checksum is valid and every record decodes",
                source.describe(),
                summary.counts_line()
            );
            let mut json = summary.to_json();
            if let Value::Object(object) = &mut json {
                object.insert("ok".into(), json!(true));
                object.insert("read".into(), json!(source.describe()));
                object.insert(
                    "wal_dir".into(),
                    json!(source.wal_dir().display().to_string()),
                );
            }
            let notes = summary.notes();
            let reply = Reply::ok(text, json);
            if notes.is_empty() {
                reply
            } else {
                Reply {
                    note: Some(notes.join("\nkvctl: ")),
                    ..reply
                }
            }
        }
        Err(error) => failure(&error),
    }
}

/// The stderr summary of a dump: what was read, counts, notes.
fn summary_note(source: &WalSource, summary: &WalSummary) -> String {
    let mut note = format!("read {}: {}", source.describe(), summary.counts_line());
    for line in summary.notes() {
        note.push_str("\nkvctl: ");
        note.push_str(&line);
    }
    note
}

/// Exit 1 with the error; in JSON, also the file and offset of damage.
fn failure(error: &WalInspectError) -> Reply {
    let mut reply = Reply::error(Exit::Error, error.to_string(), false);
    if let (Some((file, offset)), Value::Object(object)) = (error.location(), &mut reply.json) {
        object.insert("file".into(), json!(file.display().to_string()));
        object.insert("offset".into(), json!(offset));
    }
    reply
}
