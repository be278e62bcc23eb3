//! Access control end to end: `kvctl cluster init` gives the cluster an id
//! and a secret (in files only their owner can read); nodes refuse, and
//! log, connections that do not carry both; `kvctl` with another cluster's
//! id or a wrong secret fails at once, saying which.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{ok, run_kvctl, stderr, TestCluster};

/// A copy of the cluster file next to it, with `edit` applied to its text.
fn edited_copy(cluster: &TestCluster, name: &str, edit: impl Fn(&str) -> String) -> String {
    let text = std::fs::read_to_string(&cluster.file).expect("cluster file");
    let edited = edit(&text);
    assert_ne!(edited, text, "{name}: the edit changed nothing");
    let path = cluster.dir.join(name);
    std::fs::write(&path, edited).expect("write the copy");
    path.to_string_lossy().into_owned()
}

/// The value of `key = "..."` in a TOML text.
fn toml_string(text: &str, key: &str) -> String {
    let table: toml::Table = text.parse().expect("TOML");
    table[key].as_str().expect("a string").to_string()
}

fn node_logs(cluster: &TestCluster) -> String {
    cluster
        .nodes()
        .iter()
        .map(|n| std::fs::read_to_string(cluster.dir.join(n).join("kvd.log")).unwrap_or_default())
        .collect()
}

#[test]
fn strangers_are_refused_and_told_why() {
    let cluster = TestCluster::up(&["--controllers", "1", "--groups", "1"]);
    ok(&cluster.kvctl(&["put", "a", "1"]));
    assert_eq!(ok(&cluster.kvctl(&["get", "a"])).trim(), "1");

    // The secret is in files only their owner reads.
    let text = std::fs::read_to_string(&cluster.file).expect("cluster file");
    let (id, secret) = (
        toml_string(&text, "cluster_id"),
        toml_string(&text, "secret"),
    );
    assert!(id.starts_with("kv-"), "{id}");
    assert_eq!(secret.len(), 64, "{secret}");
    for file in [
        cluster.file.clone(),
        cluster.dir.join("g1-n1").join("kvd.toml"),
    ] {
        let mode = std::fs::metadata(&file)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    }
    let kvd = std::fs::read_to_string(cluster.dir.join("g1-n1").join("kvd.toml")).unwrap();
    assert_eq!(toml_string(&kvd, "secret"), secret);

    // A wrong secret: refused at once, named.
    let flipped: String = secret
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    let wrong_secret = edited_copy(&cluster, "wrong-secret.toml", |t| {
        t.replace(&secret, &flipped)
    });
    let out = run_kvctl(&["--cluster", &wrong_secret, "get", "a"], None, None);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("access denied"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("wrong cluster secret"),
        "{}",
        stderr(&out)
    );

    // Another cluster's id: refused, named.
    let other = edited_copy(&cluster, "other-cluster.toml", |t| {
        t.replace(&id, "kv-0123456789abcdef")
    });
    let out = run_kvctl(&["--cluster", &other, "put", "a", "2"], None, None);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("another cluster"), "{}", stderr(&out));
    // Admin commands go through the same door.
    let out = run_kvctl(&["--cluster", &other, "admin", "config"], None, None);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("access denied"), "{}", stderr(&out));

    // No key at all (a client that predates access control): it cannot
    // get an answer either.
    let keyless = edited_copy(&cluster, "keyless.toml", |t| {
        t.lines()
            .filter(|l| !l.starts_with("cluster_id") && !l.starts_with("secret"))
            .map(|l| format!("{l}\n"))
            .collect()
    });
    let out = run_kvctl(
        &["--cluster", &keyless, "--timeout-ms", "1500", "get", "a"],
        None,
        None,
    );
    assert!(!out.status.success(), "a keyless client was served");

    // The nodes logged each refusal with its reason, and nothing changed.
    let logs = node_logs(&cluster);
    assert!(logs.contains("refused a connection"), "{logs}");
    assert!(logs.contains("wrong secret for this cluster"), "{logs}");
    assert!(logs.contains("another cluster"), "{logs}");
    assert!(logs.contains("no access handshake"), "{logs}");
    assert_eq!(ok(&cluster.kvctl(&["get", "a"])).trim(), "1");

    // Asking for TLS on a cluster made without it is refused, not ignored.
    let dir = cluster.dir.to_string_lossy().into_owned();
    let out = run_kvctl(&["cluster", "up", &dir, "--tls"], None, None);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--tls only applies"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_tls_cluster_serves_its_clients_and_refuses_plaintext_ones() {
    let cluster = TestCluster::up(&["--controllers", "1", "--groups", "1", "--tls"]);
    ok(&cluster.kvctl(&["put", "a", "1"]));
    assert_eq!(ok(&cluster.kvctl(&["get", "a"])).trim(), "1");
    // Every party has its files, readable by their owner only.
    for file in [
        cluster.dir.join("tls").join("ca-key.pem"),
        cluster.dir.join("tls").join("client-key.pem"),
        cluster.dir.join("g1-n2").join("tls").join("node-key.pem"),
    ] {
        let mode = std::fs::metadata(&file)
            .expect("TLS file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    }
    // A client with the right id and secret but no TLS: refused.
    let plaintext = edited_copy(&cluster, "plaintext.toml", |t| {
        t.replace("tls = true\n", "")
    });
    let out = run_kvctl(&["--cluster", &plaintext, "get", "a"], None, None);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("access denied"), "{}", stderr(&out));
    assert!(stderr(&out).contains("requires TLS"), "{}", stderr(&out));
    let logs = node_logs(&cluster);
    assert!(logs.contains("this cluster requires TLS"), "{logs}");
    // A replica added later gets a certificate from the same CA, catches
    // up and votes; one removed loses its key.
    let added = ok(&cluster.kvctl(&["-o", "json", "admin", "add-replica", "1", "g1-n4"]));
    let added: serde_json::Value = serde_json::from_str(added.trim()).expect("JSON");
    assert_eq!(added["members"], serde_json::json!([1, 2, 3, 4]), "{added}");
    assert!(cluster
        .dir
        .join("g1-n4")
        .join("tls")
        .join("node-key.pem")
        .is_file());
    ok(&cluster.kvctl(&["put", "c", "3"]));
    ok(&cluster.kvctl(&["admin", "remove-replica", "1", "g1-n1"]));
    assert!(!cluster.dir.join("g1-n1").join("tls").exists());
    assert_eq!(ok(&cluster.kvctl(&["get", "c"])).trim(), "3");
    // A group added later gets certificates from the same CA and serves.
    ok(&cluster.kvctl(&["cluster", "add-group"]));
    ok(&cluster.kvctl(&["admin", "join", "2"]));
    ok(&cluster.kvctl(&["put", "b", "2"]));
    assert_eq!(ok(&cluster.kvctl(&["get", "b"])).trim(), "2");
    let status = ok(&cluster.kvctl(&["-o", "json", "cluster", "status"]));
    let status: serde_json::Value = serde_json::from_str(status.trim()).expect("JSON");
    let group_2: Vec<&serde_json::Value> = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["gid"] == 2)
        .collect();
    assert_eq!(group_2.len(), 3, "{status}");
    for node in group_2 {
        assert!(
            node["state"] == "leader" || node["state"] == "follower",
            "{node}"
        );
    }
    assert_eq!(ok(&cluster.kvctl(&["get", "a"])).trim(), "1");
}
