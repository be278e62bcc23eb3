//! `kvctl bench` against a real cluster: every operation of a mixed
//! workload runs, the JSON line has the contract's fields with consistent
//! numbers, the text table lists each operation, and bad flags are usage
//! errors.

mod common;

use common::{ok, TestCluster};
use serde_json::Value;

#[test]
fn bench_runs_a_mixed_workload_and_reports_the_contracts_fields() {
    let cluster = TestCluster::up(&["--controllers", "1", "--groups", "2", "--replicas", "1"]);
    let args = [
        "bench",
        "--clients",
        "4",
        "--duration",
        "1",
        "--keys",
        "200",
        "--mix",
        "get=40,put=30,append=10,cas=10,scan=10",
        "--json",
    ];
    let line = ok(&cluster.kvctl(&args));
    let report: Value = serde_json::from_str(line.trim()).expect("one JSON object");
    assert_eq!(report["ok"], true);
    assert_eq!(report["errors"], 0, "{report}");
    let ops = report["ops"].as_u64().unwrap();
    assert!(ops > 0);
    let seconds = report["seconds"].as_f64().unwrap();
    assert!(seconds >= 1.0, "it ran for the duration: {seconds}");
    let rate = report["ops_per_s"].as_f64().unwrap();
    assert!((rate - ops as f64 / seconds).abs() < 1e-6 * rate.max(1.0));
    let quantiles: Vec<f64> = ["p50_ms", "p99_ms", "p999_ms", "max_ms"]
        .iter()
        .map(|k| {
            report[*k]
                .as_f64()
                .unwrap_or_else(|| panic!("{k}: {report}"))
        })
        .collect();
    assert!(quantiles.windows(2).all(|w| w[0] <= w[1]), "{quantiles:?}");
    let per_op = report["per_op"].as_object().unwrap();
    for op in ["get", "put", "append", "cas", "scan"] {
        assert!(per_op[op]["ops"].as_u64().unwrap() > 0, "{op}: {report}");
    }
    let sum: u64 = per_op.values().map(|v| v["ops"].as_u64().unwrap()).sum();
    assert_eq!(sum, ops);
    // Preload wrote every key once; puts and cas wrote the same value.
    assert!(
        ok(&cluster.kvctl(&["scan", "--limit", "1000"]))
            .lines()
            .count()
            >= 200
    );

    // The text table: a row per operation and a total.
    let text = ok(&cluster.kvctl(&[
        "bench",
        "--clients",
        "2",
        "--duration",
        "0.5",
        "--keys",
        "50",
        "--mix",
        "put=1",
        "--distribution",
        "zipfian",
        "--no-preload",
    ]));
    assert!(text.contains("zipfian"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("put ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("total ")), "{text}");

    // Bad flags are usage errors.
    for bad in [
        vec!["bench", "--mix", "put=0"],
        vec!["bench", "--mix", "delete=1"],
        vec!["bench", "--clients", "0"],
        vec!["bench", "--keys", "0"],
        vec!["bench", "--duration", "-1"],
    ] {
        let out = cluster.kvctl(&bad);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{bad:?}: {}",
            common::stderr(&out)
        );
    }
}
