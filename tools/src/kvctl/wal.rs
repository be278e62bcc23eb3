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
            let json = verify_json(
                &source.describe(),
                &source.wal_dir().display().to_string(),
                summary.to_json(),
            );
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

/// The JSON of a good `verify`: `ok` first (the contract's `{"ok":...}`
/// shape; maps keep insertion order), then the summary's fields, then what
/// was read.
fn verify_json(read: &str, wal_dir: &str, summary: Value) -> Value {
    let mut object = serde_json::Map::new();
    object.insert("ok".into(), json!(true));
    match summary {
        Value::Object(fields) => object.extend(fields),
        // `WalSummary::to_json` builds an object; keep anything else whole.
        other => {
            object.insert("summary".into(), other);
        }
    }
    object.insert("read".into(), json!(read));
    object.insert("wal_dir".into(), json!(wal_dir));
    Value::Object(object)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_json_starts_with_ok() {
        let summary = json!({"segments": 2, "records": 7});
        let text =
            serde_json::to_string(&verify_json("the WAL of g1-n1", "/d/wal", summary)).unwrap();
        assert_eq!(
            text,
            r#"{"ok":true,"segments":2,"records":7,"read":"the WAL of g1-n1","wal_dir":"/d/wal"}"#
        );
    }
}
