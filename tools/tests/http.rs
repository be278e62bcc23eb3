//! The HTTP gateway and `/metrics` of group nodes, against real `kvd`
//! processes: any node serving any key (keys owned by the other group
//! included) with `kvctl -o json`'s shapes and the contract's statuses;
//! percent-decoded keys and raw values; scans in key order with limits;
//! bad input refused with 400, 404 and 413; concurrent requests through
//! the clerk pool; `/metrics` as valid Prometheus text whose operation
//! counters move with requests; `/status` naming the replica; and a taken
//! HTTP port failing the start.
//!
//! Method: [`common::TestCluster`] starts a cluster of one controller and
//! two single-replica groups with `kvctl cluster up`; the tests talk HTTP/1.1
//! to the nodes' `http_addr` with the tiny client below (one connection per
//! request, `Connection: close`), and cross-check with a shardkv `Clerk`.
//! Every request and every wait is bounded.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestCluster;
use serde_json::Value;
use shardkv::{Clerk, ClerkOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tools::cluster_file::ClusterFile;

/// The cluster every test here uses: small, so it starts fast.
const SHAPE: [&str; 8] = [
    "--controllers",
    "1",
    "--groups",
    "2",
    "--replicas",
    "1",
    "--shards",
    "4",
];
/// Default `Limits` of the nodes `cluster up` writes.
const KEY_BYTES_MAX: usize = 4096;
const VALUE_BYTES_MAX: usize = 1 << 20;
/// Bound of every HTTP exchange.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One HTTP response.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `raw` (a whole HTTP/1.1 request) and reads the response until the
/// server closes the connection.
async fn exchange(addr: SocketAddr, raw: Vec<u8>) -> Response {
    let io = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(&raw).await?;
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await?;
        Ok::<_, std::io::Error>(bytes)
    };
    let bytes = tokio::time::timeout(REQUEST_TIMEOUT, io)
        .await
        .unwrap_or_else(|_| panic!("no HTTP response from {addr} within {REQUEST_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("HTTP exchange with {addr}: {e}"));
    parse_response(&bytes)
}

fn parse_response(bytes: &[u8]) -> Response {
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(bytes)));
    let head = std::str::from_utf8(&bytes[..split]).expect("UTF-8 head");
    let rest = &bytes[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line.split_once(':').expect("header line");
            (name.trim().to_string(), value.trim().to_string())
        })
        .collect();
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    response.body = if response
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        dechunk(rest)
    } else if let Some(len) = response.header("content-length") {
        let len: usize = len.parse().expect("content-length");
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    response
}

fn dechunk(mut bytes: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let end = bytes
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size");
        let size_text = std::str::from_utf8(&bytes[..end]).expect("chunk size text");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .expect("hex chunk size");
        bytes = &bytes[end + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&bytes[..size]);
        bytes = &bytes[size + 2..];
    }
}

/// `METHOD target` with `headers` and, if given, a body with its length.
async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    let mut raw = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    raw.push_str("\r\n");
    let mut raw = raw.into_bytes();
    if let Some(body) = body {
        raw.extend_from_slice(body);
    }
    exchange(addr, raw).await
}

async fn get(addr: SocketAddr, target: &str) -> Response {
    request(addr, "GET", target, &[], None).await
}

async fn put(addr: SocketAddr, target: &str, value: &[u8]) -> Response {
    request(addr, "PUT", target, &[], Some(value)).await
}

/// Asserts a failure in the contract's shape with `status`.
fn assert_failure(response: &Response, status: u16, what: &str) {
    assert_eq!(response.status, status, "{what}: {}", response.text());
    let json = response.json();
    assert_eq!(json["ok"], false, "{what}: {json}");
    assert!(
        json["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: {json}"
    );
    assert_eq!(json["indeterminate"], false, "{what}: {json}");
}

/// Percent-encodes every byte that is not unreserved.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The group nodes of the cluster: name, gid and HTTP address.
fn group_nodes(cluster: &TestCluster) -> Vec<(String, u64, SocketAddr)> {
    let file = ClusterFile::load(&cluster.file).expect("cluster file");
    file.nodes
        .iter()
        .filter_map(|node| Some((node.name.clone(), node.gid?, node.http_addr?)))
        .collect()
}

fn clerk(cluster: &TestCluster, client_id: u64) -> Clerk {
    let file = ClusterFile::load(&cluster.file).expect("cluster file");
    let options = ClerkOptions {
        deadline: Duration::from_secs(20),
        net: file.net(),
        ..ClerkOptions::new(client_id)
    };
    Clerk::new(file.controller_addrs(), options)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_serves_any_key_with_the_json_contract() {
    let cluster = TestCluster::up(&SHAPE);
    let nodes = group_nodes(&cluster);
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    let http_of = |gid: u64| nodes.iter().find(|n| n.1 == gid).expect("group node").2;

    // Keys spread over the byte range land in both groups; each is written
    // through the node of the group that does NOT own it and read back
    // through the other.
    let mut clerk = clerk(&cluster, 9_001);
    clerk
        .get(b"warm-up")
        .await
        .expect("clerk reaches the cluster");
    let config = clerk.config().expect("configuration").clone();
    let keys: Vec<String> = ["0", "9", "A", "M", "Z", "a", "m", "z", "~"]
        .iter()
        .map(|c| format!("{c}-key"))
        .collect();
    let mut owners = BTreeSet::new();
    for key in &keys {
        let owner = config
            .shard_for_key(key.as_bytes())
            .and_then(|shard| shard.gid)
            .expect("every shard is served");
        owners.insert(owner);
        let other = if owner == 1 { 2 } else { 1 };
        let response = put(
            http_of(other),
            &format!("/kvs/keys/{key}"),
            format!("v-{key}").as_bytes(),
        )
        .await;
        assert_eq!(response.status, 200, "put {key}: {}", response.text());
        assert_eq!(response.json(), serde_json::json!({"ok": true}));
        assert!(response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")));
        let response = get(http_of(owner), &format!("/kvs/keys/{key}")).await;
        assert_eq!(response.status, 200, "get {key}: {}", response.text());
        assert_eq!(
            response.json(),
            serde_json::json!({"ok": true, "value": format!("v-{key}")})
        );
    }
    assert_eq!(owners, BTreeSet::from([1, 2]), "the keys cover both groups");
    // What HTTP wrote is what the clerk reads.
    assert_eq!(
        clerk.get(b"M-key").await.unwrap(),
        Some(b"v-M-key".to_vec())
    );

    let (a, b) = (http_of(1), http_of(2));
    // Absent: 404 with a null value.
    let response = get(a, "/kvs/keys/never-written").await;
    assert_eq!(response.status, 404, "{}", response.text());
    assert_eq!(
        response.json(),
        serde_json::json!({"ok": true, "value": null})
    );

    // Delete, then absent.
    let response = request(b, "DELETE", "/kvs/keys/z-key", &[], None).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json(), serde_json::json!({"ok": true}));
    assert_eq!(get(a, "/kvs/keys/z-key").await.status, 404);

    // Percent-decoded UTF-8 keys: an encoded slash and a literal one are
    // the same key, and the clerk sees the decoded bytes.
    let key = "dir/name é";
    let response = put(a, &format!("/kvs/keys/{}", encode(key)), b"x").await;
    assert_eq!(response.status, 200, "{}", response.text());
    let response = get(b, "/kvs/keys/dir/name%20%C3%A9").await;
    assert_eq!(response.json()["value"], "x");
    assert_eq!(
        clerk.get(key.as_bytes()).await.unwrap(),
        Some(b"x".to_vec())
    );

    // Raw values: any bytes in, the same bytes out with Accept.
    let binary = [0u8, 255, b'\n', 0x80, b'"'];
    assert_eq!(put(a, "/kvs/keys/binary", &binary).await.status, 200);
    let response = request(
        b,
        "GET",
        "/kvs/keys/binary",
        &[("Accept", "application/octet-stream")],
        None,
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, binary);
    assert_eq!(
        response.header("content-type"),
        Some("application/octet-stream")
    );

    // Scans: key order across both groups, limit, range.
    let mut expected: Vec<(String, String)> = keys
        .iter()
        .filter(|k| *k != "z-key")
        .map(|k| (k.clone(), format!("v-{k}")))
        .collect();
    expected.push(("dir/name é".to_string(), "x".to_string()));
    expected.push((
        "binary".to_string(),
        String::from_utf8_lossy(&binary).into_owned(),
    ));
    expected.sort();
    let items = |response: &Response| -> Vec<(String, String)> {
        assert_eq!(response.status, 200, "{}", response.text());
        let json = response.json();
        assert_eq!(json["ok"], true, "{json}");
        assert!(json.get("next").is_none(), "not cut by size: {json}");
        json["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|pair| {
                (
                    pair[0].as_str().unwrap().to_string(),
                    pair[1].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(items(&get(a, "/kvs/scan").await), expected);
    assert_eq!(items(&get(b, "/kvs/scan?limit=3").await), expected[..3]);
    let in_range: Vec<_> = expected
        .iter()
        .filter(|(k, _)| k.as_str() >= "A" && k.as_str() < "m")
        .cloned()
        .collect();
    assert!(in_range.len() >= 3, "{in_range:?}");
    assert_eq!(
        items(&get(b, "/kvs/scan?start=A&end=m&limit=100").await),
        in_range
    );
    assert_eq!(
        items(&get(a, "/kvs/scan?start=m&end=A").await),
        Vec::<(String, String)>::new()
    );

    // Bad input.
    let long_key = "k".repeat(KEY_BYTES_MAX + 1);
    assert_failure(
        &get(a, &format!("/kvs/keys/{long_key}")).await,
        400,
        "oversized key",
    );
    assert_failure(
        &put(a, &format!("/kvs/keys/{long_key}"), b"v").await,
        400,
        "oversized key (put)",
    );
    assert_failure(&get(a, "/kvs/keys/%FF").await, 400, "not UTF-8");
    assert_failure(&get(a, "/kvs/keys/%zz").await, 400, "bad escape");
    assert_failure(&get(a, "/kvs/keys/").await, 400, "empty key");
    for limit in ["0", "abc", "-1", "10001"] {
        assert_failure(
            &get(a, &format!("/kvs/scan?limit={limit}")).await,
            400,
            &format!("limit={limit}"),
        );
    }
    assert_failure(
        &get(a, "/kvs/scan?colour=blue").await,
        400,
        "unknown parameter",
    );
    assert_failure(&get(a, "/nowhere").await, 404, "unknown path");
    // An oversized body is refused from its declared length: the request
    // sends no body bytes at all, and the answer still comes.
    let raw = format!(
        "PUT /kvs/keys/big HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n",
        VALUE_BYTES_MAX + 1
    );
    let response = exchange(a, raw.into_bytes()).await;
    assert_failure(&response, 413, "oversized body");
    assert_eq!(get(b, "/kvs/keys/big").await.status, 404, "nothing written");
    // Exactly the limit is accepted.
    let response = put(a, "/kvs/keys/big", &vec![b'b'; VALUE_BYTES_MAX]).await;
    assert_eq!(response.status, 200, "{}", response.text());

    // Concurrent requests through both gateways (more than one clerk's
    // worth) all succeed.
    let writes = (0..24).map(|i| {
        let node = if i % 2 == 0 { a } else { b };
        async move {
            let response = put(node, &format!("/kvs/keys/par-{i:02}"), b"p").await;
            assert_eq!(response.status, 200, "par-{i:02}: {}", response.text());
        }
    });
    futures::future::join_all(writes).await;
    let response = get(a, "/kvs/scan?start=par-&end=par.&limit=100").await;
    let keys: Vec<String> = items(&response).into_iter().map(|(k, _)| k).collect();
    let wanted: Vec<String> = (0..24).map(|i| format!("par-{i:02}")).collect();
    assert_eq!(keys, wanted);
}

/// One sample per `name{labels}` (labels sorted), from Prometheus text.
/// Panics on any line that is not valid exposition format.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let valid_name = |name: &str| {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut samples = BTreeMap::new();
    let mut typed = BTreeSet::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), _) => assert!(valid_name(name), "{line}"),
                (Some("TYPE"), Some(name), Some(kind)) => {
                    assert!(valid_name(name), "{line}");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "{line}"
                    );
                    assert!(typed.insert(name.to_string()), "TYPE twice: {line}");
                }
                _ => panic!("bad comment line: {line}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                (name, parse_labels(body, line))
            }
        };
        assert!(valid_name(name), "bad metric name in {line}");
        let key = series_key(name, &labels);
        assert!(
            samples.insert(key, value).is_none(),
            "duplicate series: {line}"
        );
    }
    samples
}

fn parse_labels(mut body: &str, line: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    while !body.is_empty() {
        let (name, rest) = body.split_once("=\"").expect("label=\"value\"");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => panic!("bad escape {other:?} in {line}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line}"),
            }
        };
        labels.push((name.to_string(), value));
        body = &rest[end + 1..];
        body = body.strip_prefix(',').unwrap_or(body);
    }
    labels
}

fn series_key(name: &str, labels: &[(String, String)]) -> String {
    let mut labels = labels.to_vec();
    labels.sort();
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

/// The value of `name{labels}` (0 if absent: counters start there).
fn sample(samples: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .get(&series_key(name, &labels))
        .copied()
        .unwrap_or(0.0)
}

async fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let response = get(addr, "/metrics").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{:?}",
        response.header("content-type")
    );
    parse_prometheus(&response.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_status_describe_each_replica_and_count_operations() {
    let cluster = TestCluster::up(&SHAPE);
    let nodes = group_nodes(&cluster);
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.2).collect();

    // /status: every field, for each replica; between them the two groups
    // serve the 4 shards (waiting out any garbage collection in progress).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut serving = 0;
        let mut settled = true;
        for (name, gid, addr) in &nodes {
            let response = get(*addr, "/status").await;
            assert_eq!(response.status, 200, "{}", response.text());
            assert!(
                response.text().starts_with(r#"{"ok":true,"#),
                "the contract's shape puts ok first: {}",
                response.text()
            );
            let json = response.json();
            assert_eq!(json["ok"], true, "{json}");
            assert_eq!(json["name"], name.as_str(), "{json}");
            assert_eq!(json["gid"], *gid, "{json}");
            assert_eq!(json["node_id"], 1, "{json}");
            assert_eq!(json["role"], "leader", "a one-replica group leads: {json}");
            assert_eq!(json["leader_hint"], 1, "{json}");
            assert!(json["num"].as_u64().is_some_and(|n| n >= 1), "{json}");
            assert!(
                json["applied_slot"].as_u64().is_some_and(|s| s > 0),
                "{json}"
            );
            assert!(json["failed"].is_null(), "{json}");
            for shard in json["shards"].as_array().expect("shards") {
                assert!(shard["id"].is_u64(), "{shard}");
                let state = shard["state"].as_str().expect("state");
                if state.starts_with("serving") {
                    serving += 1;
                }
                settled &= state == "serving";
            }
        }
        if serving == 4 && settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "shards did not settle: {serving} serving"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // /metrics: valid text with the replica's state.
    let (name_a, gid_a, a) = nodes[0].clone();
    let before_a = scrape(a).await;
    let before_b = scrape(addrs[1]).await;
    for samples in [&before_a, &before_b] {
        for (name, at_least) in [
            ("shardkv_wal_fsyncs_total", 1.0),
            ("shardkv_wal_written_bytes_total", 1.0),
            ("shardkv_wal_dir_bytes", 1.0),
            ("shardkv_state_machine_dir_bytes", 1.0),
            ("shardkv_applied_slot", 1.0),
            ("shardkv_config_num", 1.0),
            ("shardkv_is_leader", 1.0),
        ] {
            assert!(
                sample(samples, name, &[]) >= at_least,
                "{name}: {}",
                sample(samples, name, &[])
            );
        }
        assert!(sample(samples, "shardkv_wal_fsync_seconds_total", &[]) > 0.0);
        assert!(samples.contains_key(&series_key("shardkv_snapshot_dir_bytes", &[])));
        assert_eq!(
            sample(samples, "shardkv_shards", &[("state", "pulling")]),
            0.0
        );
    }
    let serving = |samples: &BTreeMap<String, f64>| {
        sample(samples, "shardkv_shards", &[("state", "serving")])
    };
    assert_eq!(serving(&before_a) + serving(&before_b), 4.0);
    assert_eq!(
        sample(
            &before_a,
            "shardkv_node_info",
            &[
                ("name", name_a.as_str()),
                ("gid", &gid_a.to_string()),
                ("node_id", "1")
            ]
        ),
        1.0
    );

    // Operations move the counters: the gateway's exactly, the replicas'
    // (summed over both groups) by at least as much (a clerk may retry).
    for i in 0..5 {
        let response = put(a, &format!("/kvs/keys/metric-{i}"), b"v").await;
        assert_eq!(response.status, 200, "{}", response.text());
    }
    assert_eq!(get(a, "/kvs/keys/metric-0").await.status, 200);
    assert_eq!(get(a, "/kvs/keys/metric-absent").await.status, 404);
    let long_key = "k".repeat(KEY_BYTES_MAX + 1);
    assert_eq!(get(a, &format!("/kvs/keys/{long_key}")).await.status, 400);
    let after_a = scrape(a).await;
    let after_b = scrape(addrs[1]).await;
    let http = |samples: &BTreeMap<String, f64>, op: &str, outcome: &str| {
        sample(
            samples,
            "shardkv_ops_total",
            &[("api", "http"), ("op", op), ("outcome", outcome)],
        )
    };
    assert_eq!(
        http(&after_a, "put", "ok") - http(&before_a, "put", "ok"),
        5.0
    );
    assert_eq!(
        http(&after_a, "get", "ok") - http(&before_a, "get", "ok"),
        1.0
    );
    assert_eq!(
        http(&after_a, "get", "not_found") - http(&before_a, "get", "not_found"),
        1.0
    );
    assert_eq!(
        http(&after_a, "get", "bad_request") - http(&before_a, "get", "bad_request"),
        1.0
    );
    let put_latencies = |samples: &BTreeMap<String, f64>| {
        sample(
            samples,
            "shardkv_op_duration_seconds_count",
            &[("api", "http"), ("op", "put")],
        )
    };
    assert_eq!(put_latencies(&after_a) - put_latencies(&before_a), 5.0);
    assert_eq!(
        sample(
            &after_a,
            "shardkv_op_duration_seconds_bucket",
            &[("api", "http"), ("op", "put"), ("le", "+Inf")]
        ),
        put_latencies(&after_a),
        "the +Inf bucket holds every sample"
    );
    let rpc = |samples: &BTreeMap<String, f64>, op: &str| {
        sample(
            samples,
            "shardkv_ops_total",
            &[("api", "rpc"), ("op", op), ("outcome", "ok")],
        )
    };
    let rpc_puts =
        rpc(&after_a, "put") + rpc(&after_b, "put") - rpc(&before_a, "put") - rpc(&before_b, "put");
    assert!(rpc_puts >= 5.0, "replicas served {rpc_puts} puts");
    let rpc_gets =
        rpc(&after_a, "get") + rpc(&after_b, "get") - rpc(&before_a, "get") - rpc(&before_b, "get");
    assert!(rpc_gets >= 2.0, "replicas served {rpc_gets} gets");
    let rpc_latencies = |samples: &BTreeMap<String, f64>| {
        sample(
            samples,
            "shardkv_op_duration_seconds_count",
            &[("api", "rpc"), ("op", "put")],
        )
    };
    assert!(
        rpc_latencies(&after_a) + rpc_latencies(&after_b)
            - rpc_latencies(&before_a)
            - rpc_latencies(&before_b)
            >= 5.0
    );
    assert!(
        sample(&after_a, "shardkv_wal_fsyncs_total", &[])
            + sample(&after_b, "shardkv_wal_fsyncs_total", &[])
            > sample(&before_a, "shardkv_wal_fsyncs_total", &[])
                + sample(&before_b, "shardkv_wal_fsyncs_total", &[]),
        "the writes were fsync'd"
    );
}

#[test]
fn a_taken_http_port_fails_the_start_naming_the_address() {
    let dir = tempfile::TempDir::new().unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (peer, client, controller) = (free(), free(), free());
    // Held for the whole test: the node cannot bind it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http = taken.local_addr().unwrap();
    let node = dir.path().join("g1-n1");
    std::fs::create_dir_all(&node).unwrap();
    let config = node.join("kvd.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"g1-n1\"\nrole = \"group\"\nnode_id = 1\ngid = 1\ndata_dir = \"data\"\n\
             peer_addr = \"{peer}\"\nclient_addr = \"{client}\"\nhttp_addr = \"{http}\"\n\
             controllers = [\"{controller}\"]\n\n\
             [[members]]\nnode_id = 1\npeer_addr = \"{peer}\"\nclient_addr = \"{client}\"\n"
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = run_kvd_to_exit(&config, Duration::from_secs(20));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&http.to_string()), "{stderr}");
    assert!(stderr.contains("http_addr"), "{stderr}");
    assert!(!stdout.contains("ready"), "never ready: {stdout}");
    drop(taken);
}

/// Runs `kvd --config FILE` until it exits (killed after `limit`): exit
/// code, stdout, stderr.
fn run_kvd_to_exit(config: &Path, limit: Duration) -> (Option<i32>, String, String) {
    let mut child = Command::new(common::KVD)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvd");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for kvd") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kvd did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = child.wait_with_output().expect("kvd output");
    (
        status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
