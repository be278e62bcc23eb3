//! `kvctl admin add-replica` and `remove-replica` against real `kvd`
//! processes: a group grows to four replicas, the new one catches up and
//! votes, the leader is removed, and the whole cluster restarts from its
//! rewritten files with every value intact; wrong names are refused.

mod common;

use std::time::{Duration, Instant};

use common::{ok, stderr, stdout, TestCluster};
use serde_json::Value;

fn status(cluster: &TestCluster) -> Value {
    let out = cluster.kvctl(&["-o", "json", "cluster", "status"]);
    serde_json::from_str(stdout(&out).trim()).expect("status JSON")
}

/// Waits (bounded) until every listed replica of group 1 reports the same
/// applied slot, at least `at_least`.
fn wait_caught_up(cluster: &TestCluster, names: &[&str], at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = status(cluster);
        let slots: Vec<u64> = names
            .iter()
            .filter_map(|name| {
                status["nodes"]
                    .as_array()?
                    .iter()
                    .find(|n| n["name"] == *name)?["applied_slot"]
                    .as_u64()
            })
            .collect();
        let min = slots.iter().min().copied().unwrap_or(0);
        if slots.len() == names.len() && min >= at_least && slots.iter().all(|s| *s == min) {
            return;
        }
        assert!(Instant::now() < deadline, "not caught up: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_group_gains_a_replica_loses_its_leader_and_restarts_from_its_files() {
    let cluster = TestCluster::up(&["--controllers", "1", "--groups", "1"]);
    for i in 0..20 {
        ok(&cluster.kvctl(&["put", &format!("k{i}"), &format!("v{i}")]));
    }

    let added = ok(&cluster.kvctl(&["-o", "json", "admin", "add-replica", "1", "g1-n4"]));
    let added: Value = serde_json::from_str(added.trim()).unwrap();
    assert_eq!(added["members"], serde_json::json!([1, 2, 3, 4]));
    // The controller knows the new replica's address.
    let config = ok(&cluster.kvctl(&["-o", "json", "admin", "config"]));
    let config: Value = serde_json::from_str(config.trim()).unwrap();
    assert_eq!(config["groups"]["1"].as_array().unwrap().len(), 4);
    // The new replica catches up through the log and votes from then on.
    ok(&cluster.kvctl(&["put", "after-add", "yes"]));
    let slot = added["slot"].as_u64().unwrap();
    wait_caught_up(&cluster, &["g1-n1", "g1-n2", "g1-n3", "g1-n4"], slot);
    let file = std::fs::read_to_string(&cluster.file).unwrap();
    assert!(file.contains("[genesis]"), "{file}");

    // Remove the leader: the others elect one of theirs and keep serving.
    let leader = status(&cluster)["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["gid"] == 1 && n["state"] == "leader")
        .map(|n| n["name"].as_str().unwrap().to_string())
        .expect("a leader");
    ok(&cluster.kvctl(&["admin", "remove-replica", "1", &leader]));
    assert!(
        cluster.pid(&leader).is_none(),
        "the removed replica stopped"
    );
    let file = std::fs::read_to_string(&cluster.file).unwrap();
    assert!(!file.contains(&format!("name = \"{leader}\"")), "{file}");
    ok(&cluster.kvctl(&["put", "after-remove", "yes"]));
    for i in 0..20 {
        assert_eq!(
            ok(&cluster.kvctl(&["get", &format!("k{i}")])),
            format!("v{i}\n")
        );
    }

    // Everything restarts from the rewritten kvd.toml files.
    ok(&cluster.kvctl(&["cluster", "down"]));
    ok(&cluster.kvctl(&["cluster", "up"]));
    assert_eq!(ok(&cluster.kvctl(&["get", "after-add"])), "yes\n");
    assert_eq!(ok(&cluster.kvctl(&["get", "after-remove"])), "yes\n");
    assert_eq!(ok(&cluster.kvctl(&["get", "k7"])), "v7\n");
    let names = cluster.nodes();
    assert!(names.contains(&"g1-n4".to_string()));

    // Wrong names and groups are refused, changing nothing.
    for args in [
        ["admin", "remove-replica", "1", "g9-n9"],
        ["admin", "add-replica", "1", "c1"],
        ["admin", "add-replica", "7", "g7-n1"],
        ["admin", "add-replica", "1", "../x"],
    ] {
        let out = cluster.kvctl(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).is_empty());
    }
}
