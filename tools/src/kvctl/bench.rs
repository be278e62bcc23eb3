//! `kvctl bench`: a closed-loop load generator against a running cluster.
//!
//! `--clients N` tasks each own a clerk (its own session) and keep exactly
//! one operation in flight until `--duration` has passed, so the offered
//! load follows the cluster's speed (closed loop) and N is the concurrency.
//! Each operation is drawn from `--mix` by weight, its key from `--keys`
//! keys by `--distribution` (uniform, or zipfian with `--zipf-exponent`),
//! and its latency (call to answer, retries included) goes into an HDR
//! histogram per operation kind (microseconds, 3 significant digits).
//!
//! Before measuring, every key is written once (unless `--no-preload`) so
//! reads find values. Keys are spread over the whole key space: the first
//! byte is drawn from the key's hash over the printable range, so the
//! pre-split shards of a fresh cluster all get load. `cas` swaps the value
//! preload wrote for itself (a successful compare-and-swap whenever no
//! append changed that key); `append` grows values, so long runs with
//! appends can reach the value size limit (counted as errors).
//!
//! The client runs on the same machine as the servers in a local cluster;
//! its CPU use counts against theirs (docs/performance.md says how the
//! numbers were taken).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::ValueEnum;
use hdrhistogram::Histogram;
use paxos_log::NetLimits;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::Zipf;
use serde_json::{json, Map, Value};
use shardkv::{Clerk, ClerkError};

use super::cli::{BenchArgs, Format};
use super::{Exit, Reply};
use crate::client::clerk_options;
use crate::cluster_file::ClusterFile;

/// One kind of operation the bench issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OpKind {
    /// A linearizable read.
    Get,
    /// A write of the whole value.
    Put,
    /// An append to the value.
    Append,
    /// A compare-and-swap.
    Cas,
    /// A scan of `--scan-limit` items.
    Scan,
}

impl OpKind {
    const ALL: [OpKind; 5] = [
        OpKind::Get,
        OpKind::Put,
        OpKind::Append,
        OpKind::Cas,
        OpKind::Scan,
    ];

    fn name(self) -> &'static str {
        match self {
            OpKind::Get => "get",
            OpKind::Put => "put",
            OpKind::Append => "append",
            OpKind::Cas => "cas",
            OpKind::Scan => "scan",
        }
    }
}

/// The operation mix: kinds with their weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    weights: Vec<(OpKind, u32)>,
    total: u32,
}

impl Mix {
    /// Parses `put=50,get=50`.
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut weights = Vec::new();
        let mut total: u32 = 0;
        for part in text.split(',').filter(|p| !p.trim().is_empty()) {
            let (name, weight) = part.split_once('=').ok_or_else(|| {
                format!("{part:?}: write each operation as NAME=WEIGHT, e.g. put=50,get=50")
            })?;
            let kind = OpKind::ALL
                .into_iter()
                .find(|k| k.name() == name.trim())
                .ok_or_else(|| {
                    format!("{name:?}: the operations are get, put, append, cas, scan")
                })?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: the weight must be a whole number"))?;
            if weights.iter().any(|(k, _)| *k == kind) {
                return Err(format!("{name:?} appears twice"));
            }
            total = total
                .checked_add(weight)
                .filter(|t| *t <= 1_000_000)
                .ok_or_else(|| "the weights add up to more than 1,000,000".to_string())?;
            if weight > 0 {
                weights.push((kind, weight));
            }
        }
        if total == 0 {
            return Err("the mix is empty: give at least one operation a weight above 0".into());
        }
        Ok(Mix { weights, total })
    }

    /// The kind drawn by `roll` in `0..total`.
    fn pick(&self, roll: u32) -> OpKind {
        debug_assert!(roll < self.total);
        let mut left = roll;
        for &(kind, weight) in &self.weights {
            if left < weight {
                return kind;
            }
            left -= weight;
        }
        // Unreachable: the weights add up to `total` and roll < total.
        self.weights[self.weights.len() - 1].0
    }
}

impl std::fmt::Display for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .weights
            .iter()
            .map(|(k, w)| format!("{}={w}", k.name()))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// How keys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyDistribution {
    /// Every key equally often.
    Uniform,
    /// A few keys very often (Zipf's law over key ranks).
    Zipfian,
}

/// Key number `index`: a printable first byte from its hash (so keys
/// spread over every pre-split shard), then the number.
pub fn key_for(index: u64) -> Vec<u8> {
    // splitmix64: a fixed, well-mixed hash of the index.
    let mut z = index.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // 94 printable characters from '!' on; the remainder fits a byte.
    let first = b'!' + u8::try_from(z % 94).unwrap_or(0);
    let mut key = vec![first];
    key.extend_from_slice(format!("{index:012}").as_bytes());
    key
}

/// What one client measured.
struct ClientResult {
    histograms: BTreeMap<OpKind, Histogram<u64>>,
    errors: BTreeMap<OpKind, u64>,
    first_error: Option<String>,
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    // 1 µs to 10 minutes, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).context("creating a latency histogram")
}

/// The key chooser of one client.
enum KeyChooser {
    Uniform(u64),
    Zipfian(Zipf<f64>),
}

impl KeyChooser {
    fn new(args: &BenchArgs) -> anyhow::Result<KeyChooser> {
        Ok(match args.distribution {
            KeyDistribution::Uniform => KeyChooser::Uniform(args.keys),
            KeyDistribution::Zipfian => {
                #[allow(clippy::cast_precision_loss)] // key counts far below 2^52
                let n = args.keys as f64;
                KeyChooser::Zipfian(
                    Zipf::new(n, args.zipf_exponent).map_err(|e| {
                        anyhow::anyhow!("--zipf-exponent {}: {e}", args.zipf_exponent)
                    })?,
                )
            }
        })
    }

    fn next(&self, rng: &mut SmallRng) -> u64 {
        match self {
            KeyChooser::Uniform(keys) => rng.random_range(0..*keys),
            KeyChooser::Zipfian(zipf) => {
                // Ranks are 1..=n; rank 1 is the most popular key.
                let rank: f64 = rng.sample(zipf);
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let rank = rank as u64;
                rank.saturating_sub(1)
            }
        }
    }
}

/// Runs the bench and reports.
pub async fn run(
    file: &ClusterFile,
    args: &BenchArgs,
    format: Format,
    timeout: Duration,
) -> anyhow::Result<Reply> {
    if !(args.duration > 0.0 && args.duration <= 86_400.0) {
        return Ok(Reply::error(
            Exit::Usage,
            format!(
                "--duration {}: use more than 0 and at most 86400 seconds",
                args.duration
            ),
            false,
        ));
    }
    KeyChooser::new(args)?;
    let show_progress = format == Format::Text;
    let value = vec![b'v'; args.value_size];
    let controllers = file.controller_addrs();
    let net = file.net();

    if !args.no_preload {
        preload(&controllers, &net, args, &value, timeout, show_progress).await?;
    }

    let duration = Duration::from_secs_f64(args.duration);
    let done_ops = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + duration;
    let mut tasks = Vec::new();
    for client in 0..args.clients {
        let (controllers, args, value) = (controllers.clone(), args.clone(), value.clone());
        let (done_ops, net) = (Arc::clone(&done_ops), net.clone());
        tasks.push(tokio::spawn(async move {
            let mut clerk = Clerk::new(controllers, clerk_options(timeout, net));
            run_client(&mut clerk, &args, client, &value, end, &done_ops).await
        }));
    }
    let progress = show_progress.then(|| progress_task(Arc::clone(&done_ops), duration));
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.context("a bench client task failed")??);
    }
    let elapsed = started.elapsed();
    if let Some(progress) = progress {
        progress.abort();
        let _ = progress.await;
    }
    report(args, &results, elapsed, format)
}

/// Writes every key once, `args.clients` at a time.
async fn preload(
    controllers: &[std::net::SocketAddr],
    net: &NetLimits,
    args: &BenchArgs,
    value: &[u8],
    timeout: Duration,
    show_progress: bool,
) -> anyhow::Result<()> {
    let bar = if show_progress {
        indicatif::ProgressBar::new(args.keys)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("preload {bar:40} {pos}/{len} keys ({per_sec})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (controllers, value, next, bar, net) = (
            controllers.to_vec(),
            value.to_vec(),
            Arc::clone(&next),
            bar.clone(),
            net.clone(),
        );
        let keys = args.keys;
        tasks.push(tokio::spawn(async move {
            let mut clerk = Clerk::new(controllers, clerk_options(timeout, net));
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= keys {
                    return Ok::<(), ClerkError>(());
                }
                clerk.put(&key_for(index), &value).await?;
                bar.inc(1);
            }
        }));
    }
    for task in tasks {
        task.await
            .context("a preload task failed")?
            .context("preloading the keys (use --no-preload to skip)")?;
    }
    bar.finish_and_clear();
    Ok(())
}

/// One client's closed loop.
async fn run_client(
    clerk: &mut Clerk,
    args: &BenchArgs,
    client: u32,
    value: &[u8],
    end: Instant,
    done_ops: &AtomicU64,
) -> anyhow::Result<ClientResult> {
    let mut rng = SmallRng::seed_from_u64(args.seed.wrapping_mul(1_000_003) ^ u64::from(client));
    let chooser = KeyChooser::new(args)?;
    let mut histograms = BTreeMap::new();
    let mut errors: BTreeMap<OpKind, u64> = BTreeMap::new();
    let mut first_error = None;
    while Instant::now() < end {
        let kind = args.mix.pick(rng.random_range(0..args.mix.total));
        let key = key_for(chooser.next(&mut rng));
        let began = Instant::now();
        let outcome = match kind {
            OpKind::Get => clerk.get(&key).await.map(drop),
            OpKind::Put => clerk.put(&key, value).await,
            OpKind::Append => clerk.append(&key, value).await,
            OpKind::Cas => clerk.cas(&key, Some(value), value).await.map(drop),
            OpKind::Scan => clerk.scan(&key, None, args.scan_limit).await.map(drop),
        };
        let micros = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
        match outcome {
            Ok(()) => {
                let histogram = match histograms.entry(kind) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => e.insert(new_histogram()?),
                };
                histogram.saturating_record(micros.max(1));
                done_ops.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                *errors.entry(kind).or_default() += 1;
                first_error.get_or_insert_with(|| format!("{}: {err}", kind.name()));
            }
        }
    }
    Ok(ClientResult {
        histograms,
        errors,
        first_error,
    })
}

/// Prints a progress line to stderr every second.
fn progress_task(done_ops: Arc<AtomicU64>, duration: Duration) -> tokio::task::JoinHandle<()> {
    let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let bar = indicatif::ProgressBar::new(millis);
    bar.set_style(
        indicatif::ProgressStyle::with_template("bench {bar:40} {elapsed}/{duration} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    tokio::spawn(async move {
        let started = Instant::now();
        let mut last = (started, 0u64);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = Instant::now();
            let ops = done_ops.load(Ordering::Relaxed);
            #[allow(clippy::cast_precision_loss)]
            let rate = (ops - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            last = (now, ops);
            bar.set_position(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
            bar.set_message(format!("{ops} ops, {rate:.0} ops/s"));
        }
    })
}

/// Percentiles of `histogram` in milliseconds.
fn latency_json(histogram: &Histogram<u64>) -> Map<String, Value> {
    #[allow(clippy::cast_precision_loss)]
    let ms = |micros: u64| (micros as f64) / 1000.0;
    let mut map = Map::new();
    for (name, quantile) in [
        ("p50_ms", 0.5),
        ("p90_ms", 0.9),
        ("p99_ms", 0.99),
        ("p999_ms", 0.999),
    ] {
        map.insert(
            name.into(),
            json!(ms(histogram.value_at_quantile(quantile))),
        );
    }
    map.insert("max_ms".into(), json!(ms(histogram.max())));
    map
}

fn report(
    args: &BenchArgs,
    results: &[ClientResult],
    elapsed: Duration,
    format: Format,
) -> anyhow::Result<Reply> {
    let mut per_kind: BTreeMap<OpKind, (Histogram<u64>, u64)> = BTreeMap::new();
    let mut total = new_histogram()?;
    let mut errors_total = 0;
    for result in results {
        for (kind, histogram) in &result.histograms {
            let entry = match per_kind.entry(*kind) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert((new_histogram()?, 0)),
            };
            entry
                .0
                .add(histogram)
                .context("merging latency histograms")?;
            total.add(histogram).context("merging latency histograms")?;
        }
        for (kind, errors) in &result.errors {
            if !per_kind.contains_key(kind) {
                per_kind.insert(*kind, (new_histogram()?, 0));
            }
            if let Some(entry) = per_kind.get_mut(kind) {
                entry.1 += errors;
            }
            errors_total += errors;
        }
    }
    let seconds = elapsed.as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let rate = |ops: u64| ops as f64 / seconds;
    let ops = total.len();

    let mut object = Map::new();
    object.insert("ok".into(), json!(true));
    object.insert("ops".into(), json!(ops));
    object.insert("errors".into(), json!(errors_total));
    object.insert("seconds".into(), json!(seconds));
    object.insert("ops_per_s".into(), json!(rate(ops)));
    object.extend(latency_json(&total));
    object.insert("clients".into(), json!(args.clients));
    object.insert("keys".into(), json!(args.keys));
    object.insert("value_size".into(), json!(args.value_size));
    object.insert("mix".into(), json!(args.mix.to_string()));
    let distribution = match args.distribution {
        KeyDistribution::Uniform => "uniform",
        KeyDistribution::Zipfian => "zipfian",
    };
    object.insert("distribution".into(), json!(distribution));
    let mut per_op = Map::new();
    for (kind, (histogram, errors)) in &per_kind {
        let mut entry = Map::new();
        entry.insert("ops".into(), json!(histogram.len()));
        entry.insert("errors".into(), json!(errors));
        entry.insert("ops_per_s".into(), json!(rate(histogram.len())));
        if !histogram.is_empty() {
            entry.extend(latency_json(histogram));
        }
        per_op.insert(kind.name().into(), Value::Object(entry));
    }
    object.insert("per_op".into(), Value::Object(per_op));
    let first_error = results.iter().find_map(|r| r.first_error.clone());
    if let Some(error) = &first_error {
        object.insert("first_error".into(), json!(error));
    }
    let json = Value::Object(object);

    if format == Format::Json {
        return Ok(Reply::ok(json.to_string(), json));
    }
    let mut text = format!(
        "{} clients, {seconds:.1} s, {} keys ({distribution}), {}-byte values, mix {}\n",
        args.clients, args.keys, args.value_size, args.mix
    );
    let _ = writeln!(
        text,
        "{:<7} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "op", "ops", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p999 ms", "max ms", "errors"
    );
    let mut line = |name: &str, histogram: &Histogram<u64>, errors: u64| {
        let l = latency_json(histogram);
        let get = |k: &str| l.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        let _ = writeln!(
            text,
            "{:<7} {:>10} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7}",
            name,
            histogram.len(),
            rate(histogram.len()),
            get("p50_ms"),
            get("p90_ms"),
            get("p99_ms"),
            get("p999_ms"),
            get("max_ms"),
            errors
        );
    };
    for (kind, (histogram, errors)) in &per_kind {
        line(kind.name(), histogram, *errors);
    }
    line("total", &total, errors_total);
    if let Some(error) = first_error {
        let _ = writeln!(text, "first error: {error}");
    }
    Ok(Reply::ok(text, json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_pick_by_weight() {
        let mix = Mix::parse("put=1,get=3").unwrap();
        assert_eq!(mix.total, 4);
        assert_eq!(mix.pick(0), OpKind::Put);
        assert_eq!(
            (1..4).map(|r| mix.pick(r)).collect::<Vec<_>>(),
            [OpKind::Get; 3]
        );
        assert_eq!(mix.to_string(), "put=1,get=3");
        let zero = Mix::parse("put=0,get=2").unwrap();
        assert_eq!(zero.pick(0), OpKind::Get);
        for bad in [
            "",
            "put",
            "put=x",
            "delete=1",
            "put=1,put=2",
            "put=0",
            "get=4000000000",
        ] {
            assert!(Mix::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_spread_over_the_printable_range_and_are_distinct() {
        let keys: std::collections::BTreeSet<Vec<u8>> = (0..10_000).map(key_for).collect();
        assert_eq!(keys.len(), 10_000);
        let firsts: std::collections::BTreeSet<u8> = keys.iter().map(|k| k[0]).collect();
        assert_eq!(firsts.len(), 94, "every printable first byte is used");
        assert!(firsts.iter().all(|b| (b'!'..=b'~').contains(b)));
    }
}
