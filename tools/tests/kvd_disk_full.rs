//! A node whose disk fills up: it stops with the cause and the fix (exit
//! 1), the group goes on without it, and once space is back a plain
//! restart recovers it from its own disk; nothing acknowledged is lost.
//!
//! The full disk is a file size limit (`ulimit -f`, RLIMIT_FSIZE) on one
//! replica's process, with SIGXFSZ ignored, so that a write past the limit
//! fails (EFBIG) the way a write to a full disk fails (ENOSPC): partly
//! written, then an error. Mounting a small filesystem would need
//! privileges a test cannot count on.

mod common;

use std::fs::OpenOptions;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{is_alive, ok, stdout, TestCluster, KVD};
use serde_json::Value;
use shardkv::{Clerk, ClerkError, ClerkOptions};

/// The victim's file size limit, in 512-byte blocks: 8 MiB.
const LIMIT_BLOCKS: u32 = 16_384;

/// The replica's applied slot by `cluster status`, if it answers.
fn applied_slot(cluster: &TestCluster, node: &str) -> Option<u64> {
    let output = cluster.kvctl(&["-o", "json", "cluster", "status"]);
    let status: Value = serde_json::from_str(stdout(&output).trim()).ok()?;
    status["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["name"] == node)
        .and_then(|n| n["applied_slot"].as_u64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fills_stops_with_the_cause_and_recovers_once_space_returns() {
    let cluster = TestCluster::init(&["--controllers", "1", "--groups", "1"]);
    cluster.start();
    let victim = "g1-n3";
    let node_dir = cluster.dir.join(victim);

    // Restart the victim under the limit.
    let old = cluster.pid(victim).expect("the victim runs");
    cluster.signal(victim, "TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    while is_alive(old) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!is_alive(old), "{victim} did not stop on SIGTERM");
    let log_path = node_dir.join("kvd.log");
    let log_from = std::fs::metadata(&log_path).expect("log").len();
    let log = OpenOptions::new()
        .append(true)
        .open(&log_path)
        .expect("open the log");
    let config = node_dir.join("kvd.toml");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f {LIMIT_BLOCKS}; exec \"$0\" --config \"$1\""
        ))
        .arg(KVD)
        .arg(&config)
        .env("RUST_LOG", "warn,paxos_log=info,shardkv=info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("start the victim");
    // `exec` keeps the pid: the harness stops it like the others.
    std::fs::write(node_dir.join("kvd.pid"), format!("{}\n", child.id())).expect("pid file");

    // Writes until the victim stops: 2 KiB values on distinct keys.
    let file = tools::cluster_file::ClusterFile::load(&cluster.file).expect("cluster file");
    let mut clerk = Clerk::new(
        file.controller_addrs(),
        ClerkOptions {
            deadline: Duration::from_secs(20),
            net: file.net(),
            ..ClerkOptions::new(controller::unique_client_id())
        },
    );
    let value = vec![b'v'; 2048];
    let (mut acked, mut unknown) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the victim") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{victim} still runs after {} acknowledged writes",
            acked.len()
        );
        let key = format!("k{:06}", acked.len() + unknown.len());
        match clerk.put(key.as_bytes(), &value).await {
            Ok(()) => acked.push(key),
            Err(ClerkError::Indeterminate(_)) => unknown.push(key),
            Err(error) => panic!("the group stopped serving: {error}"),
        }
    };
    // The group went on without it.
    for i in 0..20 {
        let key = format!("after{i}");
        clerk
            .put(key.as_bytes(), b"x")
            .await
            .expect("the group serves on");
        acked.push(key);
    }

    // It stopped with the cause and the fix.
    assert_eq!(status.code(), Some(1), "{victim}: {status:?}");
    let text = std::fs::read_to_string(&log_path).expect("log");
    let said = &text[usize::try_from(log_from).expect("log offset")..];
    assert!(
        said.contains("File too large"),
        "no cause in the log:\n{said}"
    );
    assert!(
        said.contains("the node stopped. Remove the cause (if the disk"),
        "no fix in the log:\n{said}"
    );

    // Space is back: a plain restart recovers and catches up.
    cluster.start();
    let target = applied_slot(&cluster, "g1-n1").expect("g1-n1 answers");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let caught_up = applied_slot(&cluster, victim).is_some_and(|slot| slot >= target);
        if caught_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{victim} did not catch up to slot {target}: {:?}",
            applied_slot(&cluster, victim)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing acknowledged lost.
    for key in &acked {
        let got = clerk.get(key.as_bytes()).await.expect("read back");
        assert!(got.is_some(), "acknowledged write {key} lost");
    }
    eprintln!(
        "{victim} stopped after {} acknowledged writes ({} unknown); recovered to slot \
         {target}; it said:",
        acked.len(),
        unknown.len()
    );
    for line in said
        .lines()
        .filter(|l| l.contains("ERROR") || l.starts_with("kvd:"))
    {
        eprintln!("  {line}");
    }
    ok(&cluster.kvctl(&["cluster", "down"]));
}
