//! The body of `kvctl`: it parses the command line ([`cli`]), finds the
//! cluster file, runs one command and turns its result into output lines
//! and an exit code ([`Reply`]).
//!
//! Like [`crate::node`], this is binary code kept in the library so tests
//! and the `kvd`-in-`kvctl` fallback can reach it; it reports errors with
//! `anyhow` (a person reads them), while the library modules it drives
//! ([`crate::cluster_file`], [`crate::wal_inspect`], ...) use typed errors.
//!
//! Modules: [`cli`] (the clap definitions), [`ops`] (client operations,
//! also used by `shell`), [`shell`], [`admin`], [`membership`]
//! (add-replica, remove-replica), [`cluster`] (init, up, down, status,
//! add-group), [`wal`], [`snapshot`].

pub mod admin;
pub mod bench;
pub mod cli;
pub mod cluster;
pub mod membership;
pub mod ops;
pub mod shell;
pub mod snapshot;
pub mod tls;
pub mod wal;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde_json::{json, Value};

use crate::cluster_file::{ClusterFile, CLUSTER_FILE};
use cli::{Cli, Command, Format};

/// The cluster directory used when nothing else names one.
pub const DEFAULT_DIR: &str = "kv-data";
/// Environment variable naming the cluster file.
pub const CLUSTER_ENV: &str = "KV_CLUSTER";

/// `kvctl`'s exit codes (the contract in the design brief, section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exit {
    /// Done.
    Ok = 0,
    /// Failed (the message says why, and whether it may have happened).
    Error = 1,
    /// The command line was wrong.
    Usage = 2,
    /// `get`: the key is absent.
    NotFound = 3,
    /// `cas`: the value differed.
    CasMismatch = 4,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

/// The result of one command: what to print and how to exit.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The exit code.
    pub exit: Exit,
    /// Text output: lines for stdout (raw bytes: values need not be UTF-8).
    pub text: Vec<u8>,
    /// The JSON object printed with `-o json`.
    pub json: Value,
    /// A note for stderr in text mode (the error, or why the exit code is
    /// not 0).
    pub note: Option<String>,
}

impl Reply {
    /// Success with `text` (a newline is added if missing) and `json`.
    pub fn ok(text: impl Into<Vec<u8>>, json: Value) -> Reply {
        let mut text = text.into();
        if !text.is_empty() && !text.ends_with(b"\n") {
            text.push(b'\n');
        }
        Reply {
            exit: Exit::Ok,
            text,
            json,
            note: None,
        }
    }

    /// A failure; `indeterminate`: the operation may still have taken
    /// effect.
    pub fn error(exit: Exit, message: impl Into<String>, indeterminate: bool) -> Reply {
        let message = message.into();
        Reply {
            exit,
            text: Vec::new(),
            json: json!({"ok": false, "error": message, "indeterminate": indeterminate}),
            note: Some(message),
        }
    }

    /// Sets the exit code (and a note for stderr) of an otherwise
    /// successful reply.
    pub fn with_exit(mut self, exit: Exit, note: impl Into<String>) -> Reply {
        self.exit = exit;
        self.note = Some(note.into());
        self
    }

    /// Prints the reply as a command's whole output.
    pub fn print(&self, format: Format) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        match format {
            // Commands that printed as they went (shell, wal dump) leave
            // nothing for the end.
            Format::Json if self.json.is_null() => {}
            Format::Json => writeln!(out, "{}", self.json)?,
            Format::Text => out.write_all(&self.text)?,
        }
        out.flush()?;
        if format == Format::Text {
            if let Some(note) = &self.note {
                eprintln!("kvctl: {note}");
            }
        }
        Ok(())
    }
}

pub use crate::client::lossy;

/// Runs `kvctl` with this process's arguments; the process's exit code.
pub fn kvctl_main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            use clap::error::ErrorKind;
            let shown = matches!(
                err.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            );
            if !shown && wants_json(std::env::args()) {
                let reply = Reply::error(Exit::Usage, usage_message(&err), false);
                let _ = reply.print(Format::Json);
                return Exit::Usage.into();
            }
            // clap prints the message (or the help) and exits 2 (0 for
            // help and version).
            err.exit()
        }
    };
    let format = cli.output;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            return print_failure(
                format,
                &anyhow::anyhow!("starting the async runtime: {err}"),
            )
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(reply) => {
            if let Err(err) = reply.print(format) {
                // A closed stdout (`kvctl scan | head`) is not worth a
                // message; the exit code still says what happened.
                if err.kind() != std::io::ErrorKind::BrokenPipe {
                    eprintln!("kvctl: writing output: {err}");
                }
            }
            reply.exit.into()
        }
        Err(err) => print_failure(format, &err),
    }
}

/// Whether a command line that did not parse asked for JSON output (so
/// its usage error is a JSON line too).
fn wants_json(args: impl Iterator<Item = String>) -> bool {
    let args: Vec<String> = args.collect();
    args.iter().enumerate().any(|(i, arg)| {
        let next_is_json = args.get(i + 1).is_some_and(|next| next == "json");
        ((arg == "-o" || arg == "--output") && next_is_json)
            || matches!(arg.as_str(), "-ojson" | "-o=json" | "--output=json")
    })
}

/// clap's message for a usage error on one line: what is wrong, without
/// the usage and help hints that follow it.
pub fn usage_message(err: &clap::Error) -> String {
    let text = err.to_string();
    let lines: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.join(" ").trim_start_matches("error: ").to_string()
}

fn print_failure(format: Format, err: &anyhow::Error) -> ExitCode {
    let reply = Reply::error(Exit::Error, format!("{err:#}"), false);
    let _ = reply.print(format);
    Exit::Error.into()
}

/// Runs one parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<Reply> {
    let timeout = Duration::from_millis(cli.timeout_ms.max(1));
    match cli.command {
        Command::Cluster(command) => cluster::run(command, cli.cluster.as_deref(), timeout).await,
        Command::Op(op) => {
            let file = load_cluster(cli.cluster.as_deref())?;
            let mut clerk = ops::clerk(&file, timeout);
            Ok(ops::run(&mut clerk, &op).await)
        }
        Command::Shell => {
            let file = load_cluster(cli.cluster.as_deref())?;
            shell::run(&file, cli.output, timeout).await
        }
        Command::Admin(command) => {
            let path = cluster_file_path(cli.cluster.as_deref());
            admin::run(command, &path, timeout).await
        }
        Command::Wal(command) => wal::run(command, cli.output).await,
        Command::Bench(args) => {
            let file = load_cluster(cli.cluster.as_deref())?;
            let format = if args.json { Format::Json } else { cli.output };
            bench::run(&file, &args, format, timeout).await
        }
        Command::Snapshot(command) => {
            snapshot::run(command, cli.cluster.as_deref(), cli.output, timeout).await
        }
    }
}

/// The cluster file: `--cluster FILE`, then `$KV_CLUSTER`, then
/// `./kv-data/cluster.toml`.
pub fn cluster_file_path(flag: Option<&Path>) -> PathBuf {
    if let Some(path) = flag {
        return path.to_path_buf();
    }
    match std::env::var_os(CLUSTER_ENV) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => Path::new(DEFAULT_DIR).join(CLUSTER_FILE),
    }
}

/// Loads the cluster file found by [`cluster_file_path`].
pub fn load_cluster(flag: Option<&Path>) -> anyhow::Result<ClusterFile> {
    let path = cluster_file_path(flag);
    ClusterFile::load(&path).context("loading the cluster file")
}
