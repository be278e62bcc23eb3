//! `kvctl shell`: client operations read from stdin, one per line, split
//! into words like a POSIX shell does (quotes, backslash escapes; the
//! `shlex` crate), each answered with exactly one line on stdout, in order.
//!
//! The words are the command line's: `put a "hello world"`, `get a`,
//! `cas k --absent v`. Empty lines and lines starting with `#` are skipped.
//! A line that does not parse gets an error line (exit code 2's meaning,
//! `indeterminate: false`) and the shell goes on. In text mode a result
//! that would take several lines on the command line takes one: `scan`
//! prints its `KEY<TAB>VALUE` pairs joined by tabs, an absent value prints
//! `(absent)`, an error `error: TEXT`. `-o json` prints the same objects as
//! the command line. The shell exits 0 at the end of its input (each
//! line's outcome is on its line), 1 if stdin cannot be read.

use std::io::Write;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::cli::{Format, Op};
use super::{ops, Exit, Reply};
use crate::cluster_file::ClusterFile;

/// One shell line: just the client operations.
#[derive(Debug, Parser)]
#[command(name = "", no_binary_name = true, disable_help_flag = true)]
struct Line {
    #[command(subcommand)]
    op: LineOp,
}

#[derive(Debug, Subcommand)]
enum LineOp {
    #[command(flatten)]
    Op(Op),
}

/// Parses one line into an operation; `Ok(None)` for a blank or comment
/// line.
pub fn parse_line(line: &str) -> Result<Option<Op>, String> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    let words = shlex::split(trimmed)
        .ok_or_else(|| "unbalanced quotes or a trailing backslash".to_string())?;
    match Line::try_parse_from(words) {
        Ok(Line { op: LineOp::Op(op) }) => Ok(Some(op)),
        Err(err) => Err(super::usage_message(&err)),
    }
}

/// The single text line of `reply` for `op` in the shell.
fn text_line(op: &Op, reply: &Reply) -> Vec<u8> {
    if let (Exit::Error | Exit::Usage, Some(note)) = (reply.exit, &reply.note) {
        return format!("error: {note}").into_bytes();
    }
    match op {
        Op::Get { .. } if reply.exit == Exit::NotFound => b"(absent)".to_vec(),
        Op::Cas { .. } if reply.exit == Exit::CasMismatch && reply.json["value"].is_null() => {
            b"(absent)".to_vec()
        }
        _ => {
            let mut text = reply.text.clone();
            while text.last() == Some(&b'\n') {
                text.pop();
            }
            if matches!(op, Op::Scan { .. }) {
                for byte in &mut text {
                    if *byte == b'\n' {
                        *byte = b'\t';
                    }
                }
            }
            text
        }
    }
}

/// Runs the shell until stdin ends.
pub async fn run(file: &ClusterFile, format: Format, timeout: Duration) -> anyhow::Result<Reply> {
    let mut clerk = ops::clerk(file, timeout);
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let (op, reply) = match parse_line(&line) {
            Ok(None) => continue,
            Ok(Some(op)) => {
                let reply = ops::run(&mut clerk, &op).await;
                (Some(op), reply)
            }
            Err(message) => (None, Reply::error(Exit::Usage, message, false)),
        };
        let mut out = std::io::stdout().lock();
        match (format, &op) {
            (Format::Json, _) => writeln!(out, "{}", reply.json)?,
            (Format::Text, Some(op)) => {
                out.write_all(&text_line(op, &reply))?;
                out.write_all(b"\n")?;
            }
            (Format::Text, None) => {
                writeln!(out, "error: {}", reply.note.unwrap_or_default())?;
            }
        }
        out.flush()?;
    }
    Ok(Reply::ok(Vec::new(), serde_json::Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_like_a_posix_shell() {
        match parse_line(r#"put "a key" 'it''s' "#).unwrap().unwrap() {
            Op::Put { key, value } => assert_eq!((key.as_str(), value.as_str()), ("a key", "its")),
            other => panic!("{other:?}"),
        }
        match parse_line(r"append k a\ b\\c").unwrap().unwrap() {
            Op::Append { value, .. } => assert_eq!(value, r"a b\c"),
            other => panic!("{other:?}"),
        }
        match parse_line("cas k --absent v").unwrap().unwrap() {
            Op::Cas { values, absent, .. } => assert!(absent && values == ["v"]),
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_line("  # comment").unwrap(), None);
        assert_eq!(parse_line("").unwrap(), None);
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        assert!(parse_line("put 'unterminated")
            .unwrap_err()
            .contains("quotes"));
        assert!(parse_line("frobnicate x")
            .unwrap_err()
            .contains("frobnicate"));
        assert!(parse_line("put onlykey").is_err());
        assert!(parse_line("cluster up").is_err(), "only client operations");
    }
}
