//! `kvctl` as a person uses it, against real `kvd` processes: `cluster up`
//! (the default shape: 3 controllers, 2 groups of 3), every client command
//! with its text, JSON and exit code, `shell`, admin changes, `status`,
//! `down` and `up` again keeping the data; SIGKILL of a group's leader and
//! of a follower under load losing nothing acknowledged; and bad input to
//! every kind of command getting a clear error and the contract's exit
//! code.
//!
//! Method: [`common::TestCluster`] runs `kvctl cluster up` in a temporary
//! directory on free ports and stops the cluster when dropped.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{ok, run_kvctl, stderr, stdout, TestCluster};
use serde_json::Value;
use shardkv::{Clerk, ClerkError, ClerkOptions};

fn json_line(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn a_default_cluster_serves_every_command_and_survives_down_and_up() {
    let cluster = TestCluster::up(&[]);
    assert_eq!(cluster.nodes().len(), 9, "3 controllers and 2 groups of 3");

    // The README's first steps.
    assert_eq!(ok(&cluster.kvctl(&["put", "a", "1"])), "OK\n");
    assert_eq!(ok(&cluster.kvctl(&["get", "a"])), "1\n");

    // Text output and exit codes.
    let absent = cluster.kvctl(&["get", "nope"]);
    assert_eq!(absent.status.code(), Some(3));
    assert_eq!(stdout(&absent), "");
    assert!(stderr(&absent).contains("not found"), "{}", stderr(&absent));
    ok(&cluster.kvctl(&["append", "a", "2"]));
    assert_eq!(ok(&cluster.kvctl(&["get", "a"])), "12\n");
    let mismatch = cluster.kvctl(&["cas", "a", "wrong", "x"]);
    assert_eq!(mismatch.status.code(), Some(4));
    assert_eq!(stdout(&mismatch), "12\n", "the current value is printed");
    assert_eq!(ok(&cluster.kvctl(&["cas", "a", "12", "13"])), "OK\n");
    assert_eq!(ok(&cluster.kvctl(&["cas", "new", "--absent", "n"])), "OK\n");
    let taken = cluster.kvctl(&["cas", "new", "--absent", "m"]);
    assert_eq!(taken.status.code(), Some(4));
    // put-hash: the previous value out, hash(previous ++ value) in.
    assert_eq!(ok(&cluster.kvctl(&["put-hash", "h", "x"])), "");
    let first = shardkv::hash::put_hash(None, b"x");
    assert_eq!(
        ok(&cluster.kvctl(&["put-hash", "h", "y"]))
            .trim_end()
            .as_bytes(),
        first.as_slice()
    );
    // Values may start with '-'.
    ok(&cluster.kvctl(&["put", "neg", "-1"]));
    assert_eq!(ok(&cluster.kvctl(&["get", "neg"])), "-1\n");
    assert_eq!(ok(&cluster.kvctl(&["cas", "neg", "-1", "--x"])), "OK\n");
    ok(&cluster.kvctl(&["delete", "neg"]));
    ok(&cluster.kvctl(&["delete", "new"]));
    assert_eq!(cluster.kvctl(&["get", "new"]).status.code(), Some(3));
    // Keys on both groups (shard boundaries of 8 initial shards are spread
    // over the byte range), scanned in key order.
    for key in ["0", "A", "Z", "k", "z"] {
        ok(&cluster.kvctl(&["put", key, &format!("v{key}")]));
    }
    let scan = ok(&cluster.kvctl(&["scan"]));
    let keys: Vec<&str> = scan
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(keys, ["0", "A", "Z", "a", "h", "k", "z"]);
    assert_eq!(
        ok(&cluster.kvctl(&["scan", "A", "k", "--limit", "2"])),
        "A\tvA\nZ\tvZ\n"
    );

    // JSON lines, `-o json` before or after the subcommand.
    let get = json_line(&ok(&cluster.kvctl(&["-o", "json", "get", "a"])));
    assert_eq!(get, serde_json::json!({"ok": true, "value": "13"}));
    let absent = cluster.kvctl(&["get", "nope", "-o", "json"]);
    assert_eq!(absent.status.code(), Some(3));
    assert_eq!(stdout(&absent), "{\"ok\":true,\"value\":null}\n");
    let cas = cluster.kvctl(&["-o", "json", "cas", "a", "no", "x"]);
    assert_eq!(
        json_line(&stdout(&cas)),
        serde_json::json!({"ok": true, "swapped": false, "value": "13"})
    );
    let hash = json_line(&ok(&cluster.kvctl(&["-o", "json", "put-hash", "h2", "v"])));
    assert_eq!(hash, serde_json::json!({"ok": true, "previous": null}));
    let scan = json_line(&ok(&cluster.kvctl(&["-o", "json", "scan", "y"])));
    assert_eq!(
        scan,
        serde_json::json!({"ok": true, "items": [["z", "vz"]]})
    );
    assert_eq!(
        ok(&cluster.kvctl(&["-o", "json", "put", "p", "1"])),
        "{\"ok\":true}\n"
    );

    // The shell: one result line per command, POSIX quoting.
    let script = "put \"a b\" 'c d'\nget \"a b\"\nget missing\n# a comment\n\nbogus\nscan y\n";
    let text = ok(&cluster.kvctl_with_stdin(&["shell"], Some(script)));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!(&lines[..3], ["OK", "c d", "(absent)"]);
    assert!(lines[3].starts_with("error: "), "{}", lines[3]);
    assert_eq!(lines[4], "z\tvz");
    let json = ok(&cluster.kvctl_with_stdin(&["shell", "-o", "json"], Some(script)));
    let objects: Vec<Value> = json.lines().map(json_line).collect();
    assert_eq!(objects.len(), 5);
    assert_eq!(objects[1]["value"], "c d");
    assert_eq!(objects[2]["value"], Value::Null);
    assert_eq!(objects[3]["ok"], false);
    assert_eq!(objects[3]["indeterminate"], false);

    // Admin: the configuration, a split, a move, a leave and a join.
    let config = json_line(&ok(&cluster.kvctl(&["-o", "json", "admin", "config"])));
    assert_eq!(config["ok"], true);
    assert_eq!(config["groups"].as_object().unwrap().len(), 2);
    assert_eq!(config["shards"].as_array().unwrap().len(), 8);
    assert_eq!(config["shards"][0]["start"], "");
    assert_eq!(config["shards"][7]["end"], Value::Null);
    let split = json_line(&ok(&cluster.kvctl(&["-o", "json", "admin", "split", "m"])));
    let new_shard = split["shard"].as_u64().unwrap();
    ok(&cluster.kvctl(&["admin", "move", &new_shard.to_string(), "1"]));
    ok(&cluster.kvctl(&["admin", "leave", "2"]));
    for key in ["0", "A", "Z", "a", "k", "z"] {
        assert!(
            !ok(&cluster.kvctl(&["get", key])).is_empty(),
            "{key} after leave"
        );
    }
    ok(&cluster.kvctl(&["admin", "join", "2"]));
    let old = json_line(&ok(&cluster.kvctl(&["-o", "json", "admin", "config", "1"])));
    assert_eq!(old["num"], 1);

    // Status: every node up, one leader per group, the shard map.
    let status = json_line(&ok(&cluster.kvctl(&["-o", "json", "cluster", "status"])));
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 9);
    assert!(nodes.iter().all(|n| n["pid"].is_u64()), "{status}");
    let text = ok(&cluster.kvctl(&["cluster", "status"]));
    assert!(text.contains("configuration"), "{text}");

    // Down stops every node; up brings them back with their data.
    let down = ok(&cluster.kvctl(&["cluster", "down"]));
    assert!(down.contains("stopped 9 nodes"), "{down}");
    assert!(cluster.nodes().iter().all(|n| cluster.pid(n).is_none()));
    let dir = cluster.dir.to_string_lossy().into_owned();
    ok(&run_kvctl(&["cluster", "up", &dir], None, None));
    assert_eq!(ok(&cluster.kvctl(&["get", "a"])), "13\n");
    assert_eq!(ok(&cluster.kvctl(&["get", "z"])), "vz\n");
    // A second `up` starts nothing and says so, however the directory is
    // spelled.
    let spelled = format!("{dir}/../cluster");
    let again = run_kvctl(&["-o", "json", "cluster", "up", &spelled], None, None);
    let again = json_line(&ok(&again));
    assert_eq!(again["started"].as_array().unwrap().len(), 0);
}

/// The leader of group `gid` by `cluster status`.
fn leader_of(cluster: &TestCluster, gid: u64) -> Option<String> {
    let output = cluster.kvctl(&["-o", "json", "cluster", "status"]);
    let status = json_line(&stdout(&output));
    status["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["gid"] == gid && n["state"] == "leader")
        .and_then(|n| n["name"].as_str().map(str::to_string))
}

/// A replica of group `gid` that `cluster status` reports as a follower.
fn follower_of(cluster: &TestCluster, gid: u64) -> Option<String> {
    let output = cluster.kvctl(&["-o", "json", "cluster", "status"]);
    let status = json_line(&stdout(&output));
    status["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["gid"] == gid && n["state"] == "follower" && n["pid"].is_u64())
        .and_then(|n| n["name"].as_str().map(str::to_string))
}

/// SIGKILL of the leader under load, restart, then SIGKILL of a follower
/// (the restarted old leader, often) and restart: every acknowledged append
/// is there exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_leader_and_a_follower_under_load_loses_nothing_acknowledged() {
    kill_a_leader_then_a_follower_under_load(Victim::Follower).await;
}

/// Kill the leader, restart it, and at once kill the first other live
/// replica, which is often the leader elected meanwhile. This found a sled
/// 0.34.7 deadlock (a replica's driver thread frozen inside `apply_batch`,
/// third_party/README.md): the group stopped answering about one run in
/// three under the load of the whole suite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_churn_right_after_a_restart_keeps_the_group_available() {
    kill_a_leader_then_a_follower_under_load(Victim::FirstOtherLive).await;
}

/// Which replica the second kill takes.
enum Victim {
    /// One that `cluster status` reports as a follower.
    Follower,
    /// The first live replica other than the first victim, whatever its role.
    FirstOtherLive,
}

async fn kill_a_leader_then_a_follower_under_load(victim: Victim) {
    let cluster = TestCluster::up(&["--controllers", "1", "--groups", "1"]);
    let (controllers, net) = {
        let file = tools::cluster_file::ClusterFile::load(&cluster.file).unwrap();
        (file.controller_addrs(), file.net())
    };
    // Four writers append numbered items to their own keys; each records
    // what was acknowledged.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..4u64 {
        let (controllers, stop, net) = (controllers.clone(), stop.clone(), net.clone());
        writers.push(tokio::spawn(async move {
            let options = ClerkOptions {
                deadline: Duration::from_secs(20),
                net,
                ..ClerkOptions::new(controller::unique_client_id())
            };
            let mut clerk = Clerk::new(controllers, options);
            let key = format!("w{writer}");
            let (mut acked, mut unknown) = (Vec::new(), Vec::new());
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match clerk
                    .append(key.as_bytes(), format!("{i},").as_bytes())
                    .await
                {
                    Ok(()) => acked.push(i),
                    Err(ClerkError::Indeterminate(_)) => unknown.push(i),
                    Err(_) => {}
                }
                i += 1;
            }
            (key, acked, unknown)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leader = leader_of(&cluster, 1).expect("group 1 has a leader");
    cluster.signal(&leader, "KILL");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Restart the old leader first, so a majority stays up when the
    // follower goes.
    ok(&cluster.kvctl(&["cluster", "up", &cluster.dir.to_string_lossy()]));
    let second = match victim {
        Victim::Follower => follower_of(&cluster, 1).expect("group 1 has a live follower"),
        Victim::FirstOtherLive => ["g1-n1", "g1-n2", "g1-n3"]
            .into_iter()
            .find(|n| *n != leader && cluster.pid(n).is_some())
            .expect("a live replica")
            .to_string(),
    };
    cluster.signal(&second, "KILL");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ok(&cluster.kvctl(&["cluster", "up", &cluster.dir.to_string_lossy()]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let mut results = BTreeMap::new();
    for writer in writers {
        let (key, acked, unknown) = writer.await.unwrap();
        results.insert(key, (acked, unknown));
    }
    let options = ClerkOptions {
        deadline: Duration::from_secs(20),
        net,
        ..ClerkOptions::new(controller::unique_client_id())
    };
    let mut clerk = Clerk::new(controllers, options);
    let mut total_acked = 0;
    for (key, (acked, unknown)) in &results {
        let value = clerk.get(key.as_bytes()).await.unwrap().unwrap_or_default();
        let items: Vec<u64> = String::from_utf8(value)
            .unwrap()
            .split_terminator(',')
            .map(|s| s.parse().unwrap())
            .collect();
        // Each acknowledged append is there exactly once, in order; only
        // indeterminate ones may be there besides.
        let mut sorted = items.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, items, "{key}: duplicates or reordering: {items:?}");
        for i in acked {
            assert!(items.contains(i), "{key}: acknowledged append {i} lost");
        }
        for i in &items {
            assert!(
                acked.contains(i) || unknown.contains(i),
                "{key}: {i} was never written"
            );
        }
        total_acked += acked.len();
    }
    assert!(total_acked > 20, "the load made progress: {total_acked}");
}

#[test]
fn bad_input_gets_a_clear_error_and_the_right_exit_code() {
    let temp = tempfile::TempDir::new().unwrap();
    let missing = temp.path().join("nowhere/cluster.toml");
    let missing = missing.to_string_lossy();

    // No cluster file: exit 1, naming the file and the way out.
    let out = run_kvctl(&["--cluster", &missing, "get", "a"], None, None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("nowhere/cluster.toml"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("cluster init"), "{}", stderr(&out));
    // ... the same as a JSON line with -o json.
    let out = run_kvctl(
        &["--cluster", &missing, "-o", "json", "get", "a"],
        None,
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let line = json_line(&stdout(&out));
    assert_eq!(line["ok"], false);
    assert_eq!(line["indeterminate"], false);

    // A malformed cluster file names the problem.
    let bad = temp.path().join("bad.toml");
    std::fs::write(
        &bad,
        "shards = 8\n[[nodes]]\nname = \"c1\"\nrole = \"boss\"\n",
    )
    .unwrap();
    let out = run_kvctl(
        &["--cluster", &bad.to_string_lossy(), "get", "a"],
        None,
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("role"), "{}", stderr(&out));
    // KV_CLUSTER is honoured (and named in errors).
    let out = std::process::Command::new(common::KVCTL)
        .args(["get", "a"])
        .env("KV_CLUSTER", &bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bad.toml"), "{}", stderr(&out));

    // Usage errors: exit 2.
    for args in [
        vec!["get"],
        vec!["put", "k"],
        vec!["cas", "k"],
        vec!["frobnicate"],
        vec!["scan", "--limit", "many"],
        vec!["cluster", "init", "--base-port", "70000"],
        vec!["admin", "move", "x", "1"],
        vec!["-o", "yaml", "get", "a"],
    ] {
        let out = run_kvctl(&args, None, None);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }

    // ... also with -o json: a JSON line.
    let out = run_kvctl(&["-o", "json", "put", "k"], None, None);
    assert_eq!(out.status.code(), Some(2));
    let line = json_line(&stdout(&out));
    assert_eq!(line["ok"], false);
    assert_eq!(line["indeterminate"], false);
    assert!(line["error"].as_str().unwrap().contains("VALUE"), "{line}");
    // Help is not an error.
    assert_eq!(run_kvctl(&["--help"], None, None).status.code(), Some(0));

    // Impossible shapes: exit 1 naming the flag.
    let dir = temp.path().join("c");
    let dir = dir.to_string_lossy();
    for (flag, value) in [
        ("--base-port", "65530"),
        ("--replicas", "0"),
        ("--shards", "0"),
    ] {
        let out = run_kvctl(&["cluster", "init", &dir, flag, value], None, None);
        assert_eq!(out.status.code(), Some(1), "{flag}");
        assert!(stderr(&out).contains(flag), "{flag}: {}", stderr(&out));
    }
    // Init twice: refused, and the first stays intact.
    // Ports nothing listens on (drawn like a running cluster's), so the
    // status below finds every node down.
    let port = common::free_port_block(27).to_string();
    ok(&run_kvctl(
        &["cluster", "init", &dir, "--base-port", &port],
        None,
        None,
    ));
    let out = run_kvctl(&["cluster", "init", &dir], None, None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    // Status of a cluster that is not running: every node down, exit 1.
    let file = format!("{dir}/cluster.toml");
    let out = run_kvctl(
        &[
            "--cluster",
            &file,
            "--timeout-ms",
            "500",
            "cluster",
            "status",
        ],
        None,
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("down"), "{}", stdout(&out));
    let args = ["--cluster", &file, "--timeout-ms", "500", "-o", "json"];
    let out = run_kvctl(&[&args[..], &["cluster", "status"]].concat(), None, None);
    assert_eq!(out.status.code(), Some(1));
    let status = json_line(&stdout(&out));
    assert_eq!(status["ok"], false);
    assert_eq!(status["nodes"].as_array().unwrap().len(), 9);
    // A cluster file with another name is the one the commands use.
    let named = temp.path().join("named/prod.toml");
    let named = named.to_string_lossy();
    let init = ["--cluster", &named, "cluster", "init", "--base-port", &port];
    ok(&run_kvctl(&init, None, None));
    assert!(temp.path().join("named/prod.toml").is_file());
    assert!(!temp.path().join("named/cluster.toml").exists());
    let status = [
        "--cluster",
        &named,
        "--timeout-ms",
        "500",
        "cluster",
        "status",
    ];
    let out = run_kvctl(&status, None, None);
    assert!(stdout(&out).contains("g2-n3"), "{}", stdout(&out));
}

#[test]
fn limits_and_unknown_names_are_refused_by_a_running_cluster() {
    let cluster = TestCluster::up(&["--controllers", "1", "--groups", "1", "--replicas", "1"]);
    // An oversized key: refused, certainly not applied.
    let key = "k".repeat(5000);
    let out = cluster.kvctl(&["-o", "json", "put", &key, "v"]);
    assert_eq!(out.status.code(), Some(1));
    let line = json_line(&stdout(&out));
    assert_eq!(line["ok"], false);
    assert_eq!(line["indeterminate"], false);
    assert!(line["error"].as_str().unwrap().contains("key"), "{line}");
    // Unknown groups and shards in admin commands.
    let out = cluster.kvctl(&["admin", "join", "9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("group 9"), "{}", stderr(&out));
    let out = cluster.kvctl(&["admin", "move", "99", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("99"), "{}", stderr(&out));
    let out = cluster.kvctl(&["admin", "config", "99"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
}
