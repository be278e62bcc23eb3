//! Test harness for process-level tests of `kvctl` and `kvd`: a real local
//! cluster started with `kvctl cluster up` in a temporary directory, on a
//! block of free loopback ports, stopped (and, failing that, killed) when
//! the [`TestCluster`] is dropped.
//!
//! Ports come from 10000..20000: below Linux's ephemeral range (32768 and
//! up), so an outgoing connection never takes one and a node a test kills
//! can bind its port again on restart; and below the tests crate's range
//! (20000..32768, tests/src/ports.rs), so the two suites running side by
//! side never draw the same port. The block is picked at random and probed
//! (every port bindable) before use; `up` is retried on another block if a
//! parallel test took one in between.

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

pub mod links;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

/// The kvctl binary Cargo built for these tests.
pub const KVCTL: &str = env!("CARGO_BIN_EXE_kvctl");
/// The kvd binary Cargo built for these tests.
pub const KVD: &str = env!("CARGO_BIN_EXE_kvd");

/// A running local cluster.
pub struct TestCluster {
    /// Holds the cluster directory.
    pub temp: TempDir,
    /// The cluster directory.
    pub dir: PathBuf,
    /// `dir/cluster.toml`.
    pub file: PathBuf,
    /// The first port of its block.
    pub base_port: u16,
}

/// `base_port..base_port + count` are all free now.
fn ports_free(base_port: u16, count: u16) -> bool {
    (base_port..base_port + count).all(|port| TcpListener::bind(("127.0.0.1", port)).is_ok())
}

/// A pseudo-random number from the clock and the process id (no rand
/// crate needed for picking a port block).
fn entropy() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()) ^ d.as_secs())
        .unwrap_or(0);
    let mixed = nanos ^ (u64::from(std::process::id()) << 32);
    mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// First port of the range blocks are drawn from.
const LOW_PORT: u16 = 10_000;
/// End (exclusive) of that range: where the tests crate's range starts.
const HIGH_PORT: u16 = 20_000;

/// A free block of `count` ports in `LOW_PORT..HIGH_PORT`.
pub fn free_port_block(count: u16) -> u16 {
    for attempt in 0..200u64 {
        let span = u64::from(HIGH_PORT - LOW_PORT - count);
        let offset = entropy().wrapping_add(attempt * 7919) % span;
        let base = LOW_PORT + u16::try_from(offset).expect("offset below the span");
        if ports_free(base, count) {
            return base;
        }
    }
    panic!("no free block of {count} ports in {LOW_PORT}..{HIGH_PORT}");
}

/// Node count of a cluster made with these `cluster up` arguments.
fn node_count(args: &[&str]) -> u16 {
    let value = |flag: &str, default: u16| {
        args.iter()
            .position(|a| *a == flag)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| v.parse().expect("numeric flag"))
    };
    value("--controllers", 3) + value("--groups", 2) * value("--replicas", 3)
}

/// Runs kvctl with `args` (and `stdin`), bounded in time.
pub fn run_kvctl(args: &[&str], stdin: Option<&str>, cwd: Option<&Path>) -> Output {
    let mut command = Command::new(KVCTL);
    command
        .args(args)
        .env("KVD", KVD)
        .env_remove("KV_CLUSTER")
        .env(
            "RUST_LOG",
            "warn,paxos_log=info,shardkv=info,controller=info",
        )
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let mut child = command.spawn().expect("spawn kvctl");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin piped");
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    let pid = child.id();
    // A watchdog: no kvctl command in a test may hang the suite.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(120)).is_err() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    });
    let output = child.wait_with_output().expect("wait for kvctl");
    let _ = done_tx.send(());
    let _ = watchdog.join();
    output
}

/// stdout as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts a zero exit; returns stdout.
pub fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "kvctl failed ({:?}):\nstdout: {}\nstderr: {}",
        output.status.code(),
        stdout(output),
        stderr(output)
    );
    stdout(output)
}

impl TestCluster {
    /// `kvctl cluster up DIR --base-port P ARGS...` on a free port block
    /// (retried on another block if a port was taken meanwhile).
    pub fn up(args: &[&str]) -> TestCluster {
        let count = node_count(args) * 3;
        let mut last = String::new();
        for _ in 0..4 {
            let temp = TempDir::new().expect("temp dir");
            let dir = temp.path().join("cluster");
            let base_port = free_port_block(count);
            let port = base_port.to_string();
            let dir_text = dir.to_string_lossy().into_owned();
            let mut full = vec!["cluster", "up", dir_text.as_str(), "--base-port", &port];
            full.extend_from_slice(args);
            let output = run_kvctl(&full, None, None);
            let cluster = TestCluster {
                file: dir.join("cluster.toml"),
                dir,
                temp,
                base_port,
            };
            if output.status.success() {
                return cluster;
            }
            last = format!("{}\n{}", stdout(&output), stderr(&output));
            // Drop stops whatever started before trying another block.
            drop(cluster);
            if !last.contains("in use") && !last.contains("exited at start") {
                break;
            }
        }
        panic!("kvctl cluster up failed: {last}");
    }

    /// `kvctl cluster init DIR --base-port P ARGS...` on a free port block,
    /// not started: for tests that change the nodes' files first.
    /// [`TestCluster::start`] starts it.
    pub fn init(args: &[&str]) -> TestCluster {
        let temp = TempDir::new().expect("temp dir");
        let dir = temp.path().join("cluster");
        let base_port = free_port_block(node_count(args) * 3);
        let port = base_port.to_string();
        let dir_text = dir.to_string_lossy().into_owned();
        let mut full = vec!["cluster", "init", dir_text.as_str(), "--base-port", &port];
        full.extend_from_slice(args);
        ok(&run_kvctl(&full, None, None));
        TestCluster {
            file: dir.join("cluster.toml"),
            dir,
            temp,
            base_port,
        }
    }

    /// `kvctl cluster up DIR`: starts every node that does not run.
    pub fn start(&self) {
        ok(&run_kvctl(
            &["cluster", "up", &self.dir.to_string_lossy()],
            None,
            None,
        ));
    }

    /// Runs `kvctl --cluster FILE ARGS...`.
    pub fn kvctl(&self, args: &[&str]) -> Output {
        self.kvctl_with_stdin(args, None)
    }

    /// Runs `kvctl --cluster FILE ARGS...` with `stdin`.
    pub fn kvctl_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let file = self.file.to_string_lossy().into_owned();
        let mut full = vec!["--cluster", file.as_str()];
        full.extend_from_slice(args);
        run_kvctl(&full, stdin, None)
    }

    /// The node's pid, if `up` started it and it runs.
    pub fn pid(&self, node: &str) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir.join(node).join("kvd.pid")).ok()?;
        let pid: u32 = text.trim().parse().ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    /// Sends `signal` (e.g. "KILL") to the node and, for KILL, waits until
    /// it is gone.
    pub fn signal(&self, node: &str, signal: &str) {
        let pid = self
            .pid(node)
            .unwrap_or_else(|| panic!("{node} is not running"));
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}");
        if signal == "KILL" {
            let deadline = Instant::now() + Duration::from_secs(10);
            while is_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Every node's name, from the directories `init` made.
    pub fn nodes(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .expect("cluster dir")
            .filter_map(Result::ok)
            .filter(|e| e.path().join("kvd.toml").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

/// Whether `pid` runs (and is not a zombie).
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The test failed: what the nodes said is the first clue.
            for node in self.nodes() {
                let log = std::fs::read_to_string(self.dir.join(&node).join("kvd.log"))
                    .unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(80)..].join("\n");
                eprintln!("---- {node}/kvd.log (last 80 lines)\n{tail}");
            }
        }
        let file = self.file.to_string_lossy().into_owned();
        if self.file.exists() {
            let _ = run_kvctl(&["--cluster", &file, "cluster", "down"], None, None);
        }
        // Whatever did not stop is killed: no test leaves a process behind.
        for node in self.nodes() {
            if let Some(pid) = self.pid(&node) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}
