//! Crash test with a real SIGKILL: a child process applies batches to a
//! `SledStore` as fast as it can, flushing now and then; the parent kills it at
//! a random moment and checks that the reopened store holds exactly the effects
//! of batches `1..=A`, where `A` is the stored applied index and is at least the
//! last index the child reported as flushed.
//!
//! A second test kills a child in the middle of importing a shard: the shard
//! must come back as it was, as incomplete, or as the whole import.
//!
//! The children are this same test binary, re-executed with `--exact <child>
//! --ignored`, which works under both `cargo test` and
//! `cargo nextest run`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use storage::sled_store::{ExportRecord, ShardBatch, ShardChecksum, SledStore, Space};

const CHILD_DIR_ENV: &str = "SHARDKV_SLED_KILL_CHILD_DIR";
const CHILD_TEST: &str = "sled_kill_child";
const SHARD: u64 = 0x5eed;
/// Batch `n` deletes the key written by batch `n - KEEP`.
const KEEP: u64 = 5;
const FLUSH_EVERY: u64 = 97;
const CYCLES: usize = 5;
const FLUSHES_BEFORE_KILL: usize = 3;
const WAIT_FOR_FLUSHES: Duration = Duration::from_secs(20);
const WAIT_FOR_EXIT: Duration = Duration::from_secs(10);

fn batch_for(n: u64) -> ShardBatch {
    let mut batch = ShardBatch::new();
    batch.put(
        Space::Data,
        format!("k{n}").as_bytes(),
        n.to_string().as_bytes(),
    );
    batch.put(Space::Aux, b"last", &n.to_be_bytes());
    if n > KEEP {
        batch.delete(Space::Data, format!("k{}", n - KEEP).as_bytes());
    }
    batch
}

/// The child: applies batches forever, printing `flushed N` after each flush.
#[test]
#[ignore = "run by sled_survives_sigkill as a child process"]
fn sled_kill_child() {
    let dir = std::env::var_os(CHILD_DIR_ENV).unwrap_or_else(|| {
        panic!(
            "{CHILD_TEST} is the child half of sled_survives_sigkill and needs {CHILD_DIR_ENV} \
             to name its data directory; run sled_survives_sigkill instead"
        )
    });
    // libtest has printed "test sled_kill_child ... " without a newline: end
    // that line so that ours start at the beginning of one.
    println!();
    let store = SledStore::open(Path::new(&dir)).unwrap();
    let start = store.applied_index(SHARD).unwrap().unwrap_or(0);
    for n in start + 1.. {
        store.apply(SHARD, n, &batch_for(n)).unwrap();
        if n % FLUSH_EVERY == 0 {
            store.flush().unwrap();
            // Printed only after the flush returned: the parent may rely on it.
            println!("flushed {n}");
        }
    }
}

/// Kills and reaps the child on every path out of the parent, panics included.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl ChildGuard {
    fn kill_and_wait(&mut self) -> std::process::ExitStatus {
        self.0.kill().expect("kill child");
        let deadline = Instant::now() + WAIT_FOR_EXIT;
        loop {
            if let Some(status) = self.0.try_wait().expect("wait for child") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "child did not exit within {WAIT_FOR_EXIT:?} of SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Runs one child until it has reported `FLUSHES_BEFORE_KILL` flushes, kills
/// it at a random moment after that, and returns the last flushed index.
fn run_and_kill(dir: &Path, cycle: usize) -> u64 {
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args([
            "--exact",
            CHILD_TEST,
            "--nocapture",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);

    // Read stdout on a thread so every wait below can be bounded. The thread
    // ends when the child dies (EOF) or the receiver is gone.
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let deadline = Instant::now() + WAIT_FOR_FLUSHES;
    let mut flushed = Vec::new();
    while flushed.len() < FLUSHES_BEFORE_KILL {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(n) = line.strip_prefix("flushed ") {
                    flushed.push(n.trim().parse::<u64>().unwrap());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("cycle {cycle}: saw {flushed:?} within {WAIT_FOR_FLUSHES:?}, wanted {FLUSHES_BEFORE_KILL} flushes")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.0.wait().unwrap();
                panic!("cycle {cycle}: child exited ({status}) after flushes {flushed:?}")
            }
        }
    }

    // Kill at a random moment: right away, or while it is mid-way to the next flush.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    std::thread::sleep(Duration::from_micros(u64::from(nanos % 40_000)));
    let status = child.kill_and_wait();
    assert!(
        !status.success(),
        "cycle {cycle}: child exited cleanly: {status}"
    );

    // Flushes printed while we slept count too.
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
        if let Some(n) = line.strip_prefix("flushed ") {
            flushed.push(n.trim().parse::<u64>().unwrap());
        }
    }
    *flushed.last().unwrap()
}

/// Checks that the store holds exactly the effects of batches `1..=applied`.
fn check_store(store: &SledStore, applied: u64) {
    let mut want: Vec<(Vec<u8>, Vec<u8>)> = (applied.saturating_sub(KEEP) + 1..=applied)
        .map(|n| (format!("k{n}").into_bytes(), n.to_string().into_bytes()))
        .collect();
    want.sort();
    let data = store.scan(SHARD, Space::Data, .., usize::MAX).unwrap();
    assert_eq!(data, want, "data after applied index {applied}");
    let aux = store.scan(SHARD, Space::Aux, .., usize::MAX).unwrap();
    assert_eq!(
        aux,
        vec![(b"last".to_vec(), applied.to_be_bytes().to_vec())]
    );
}

#[test]
fn sled_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut previous = 0;
    for cycle in 0..CYCLES {
        let started = Instant::now();
        let last_flushed = run_and_kill(dir.path(), cycle);
        let store = SledStore::open(dir.path()).unwrap();
        let applied = store
            .applied_index(SHARD)
            .unwrap()
            .expect("the child applied batches");
        assert!(
            applied >= last_flushed,
            "cycle {cycle}: applied index {applied} is below the flushed index {last_flushed}"
        );
        assert!(
            last_flushed > previous,
            "cycle {cycle}: the child did not resume from {previous}"
        );
        check_store(&store, applied);
        eprintln!(
            "cycle {cycle}: last flushed {last_flushed}, recovered applied index {applied}, \
             {:?}",
            started.elapsed()
        );
        previous = applied;
    }
}

// ---------------------------------------------------------------------------
// Import killed mid-way: the shard must come back either as it was, as
// incomplete, or as the complete import, never as a complete-looking mix.

const IMPORT_CHILD_TEST: &str = "sled_import_kill_child";
const IMPORT_RUN_ENV: &str = "SHARDKV_SLED_KILL_IMPORT_RUN";
const IMPORT_PAUSE_ENV: &str = "SHARDKV_SLED_KILL_IMPORT_PAUSE";
const IMPORT_SHARD: u64 = 0x1a;
const IMPORT_RECORDS: u64 = 20_000;

/// The records of import run `run`: every run writes the same keys with
/// run-specific values, so a mix of two runs is detectable.
fn import_records(run: u64) -> impl Iterator<Item = ExportRecord> {
    let data = (0..IMPORT_RECORDS).map(move |i| ExportRecord {
        space: Space::Data,
        key: format!("i{i:06}").into_bytes(),
        value: format!("{run}:{i}").into_bytes(),
    });
    let aux = (0..3).map(move |j| ExportRecord {
        space: Space::Aux,
        key: format!("meta{j}").into_bytes(),
        value: run.to_be_bytes().to_vec(),
    });
    data.chain(aux)
}

fn import_checksum(run: u64) -> u32 {
    let mut sum = ShardChecksum::new();
    for r in import_records(run) {
        sum.update(r.space, &r.key, &r.value);
    }
    sum.finish()
}

/// The child: imports run `$SHARDKV_SLED_KILL_IMPORT_RUN` into `IMPORT_SHARD`
/// at applied index equal to the run number. With
/// `$SHARDKV_SLED_KILL_IMPORT_PAUSE` set it stops half-way through the stream
/// (after printing `halfway`) so the parent can kill it there.
#[test]
#[ignore = "run by sled_import_survives_sigkill as a child process"]
fn sled_import_kill_child() {
    let (Some(dir), Some(run)) = (
        std::env::var_os(CHILD_DIR_ENV),
        std::env::var_os(IMPORT_RUN_ENV),
    ) else {
        panic!(
            "{IMPORT_CHILD_TEST} is the child half of sled_import_survives_sigkill and needs \
             {CHILD_DIR_ENV} and {IMPORT_RUN_ENV}; run sled_import_survives_sigkill instead"
        )
    };
    let run: u64 = run.to_str().unwrap().parse().unwrap();
    let pause = std::env::var_os(IMPORT_PAUSE_ENV).is_some();
    println!(); // End libtest's "test ... " line, as in `sled_kill_child`.
    let store = SledStore::open(Path::new(&dir)).unwrap();
    println!("started");
    let records = import_records(run).enumerate().map(move |(i, r)| {
        if pause && i as u64 == IMPORT_RECORDS / 2 {
            println!("halfway");
            // Bounded: the parent kills us long before this ends.
            std::thread::sleep(Duration::from_secs(30));
        }
        Ok(r)
    });
    let report = store.import(IMPORT_SHARD, run, records).unwrap();
    assert_eq!(report.checksum, import_checksum(run));
    println!("imported");
    std::thread::sleep(Duration::from_secs(30));
}

/// What the parent found after a kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ImportState {
    Absent,
    Incomplete,
    Complete(u64),
}

fn import_state(store: &SledStore) -> ImportState {
    let status = store
        .shards()
        .unwrap()
        .into_iter()
        .find(|s| s.id == IMPORT_SHARD);
    match status {
        None => ImportState::Absent,
        Some(s) if s.import_incomplete => ImportState::Incomplete,
        Some(s) => {
            let run = s.applied_index.unwrap();
            // Complete means exactly that run's records: nothing mixed in.
            assert_eq!(
                store.checksum(IMPORT_SHARD).unwrap(),
                import_checksum(run),
                "run {run}"
            );
            let data = store
                .scan(IMPORT_SHARD, Space::Data, .., usize::MAX)
                .unwrap();
            assert_eq!(data.len() as u64, IMPORT_RECORDS);
            assert_eq!(data[7].1, format!("{run}:7").into_bytes());
            ImportState::Complete(run)
        }
    }
}

/// Spawns the import child for `run` and waits for `line` on its stdout.
fn spawn_import_child(dir: &Path, run: u64, pause: bool) -> (ChildGuard, mpsc::Receiver<String>) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        IMPORT_CHILD_TEST,
        "--nocapture",
        "--ignored",
        "--test-threads=1",
    ])
    .env(CHILD_DIR_ENV, dir)
    .env(IMPORT_RUN_ENV, run.to_string())
    .env_remove(IMPORT_PAUSE_ENV)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    if pause {
        cmd.env(IMPORT_PAUSE_ENV, "1");
    }
    let mut child = ChildGuard(cmd.spawn().unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn wait_for_line(child: &mut ChildGuard, rx: &mpsc::Receiver<String>, want: &str) {
    let deadline = Instant::now() + WAIT_FOR_FLUSHES;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line == want => return,
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("child did not print {want:?} within {WAIT_FOR_FLUSHES:?}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.0.wait().unwrap();
                panic!("child exited ({status}) before printing {want:?}")
            }
        }
    }
}

#[test]
fn sled_import_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let mut rng = u64::from(seed) | 1;
    let mut next_random = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut previous = ImportState::Absent;
    // Paused half-way, then killed at random moments, then allowed to finish.
    let plan = [
        (1, "pause"),
        (2, "random"),
        (3, "random"),
        (4, "pause"),
        (5, "random"),
        (6, "finish"),
    ];
    for (run, mode) in plan {
        let started = Instant::now();
        let (mut child, rx) = spawn_import_child(dir.path(), run, mode == "pause");
        match mode {
            "pause" => wait_for_line(&mut child, &rx, "halfway"),
            "finish" => wait_for_line(&mut child, &rx, "imported"),
            _ => {
                wait_for_line(&mut child, &rx, "started");
                std::thread::sleep(Duration::from_micros(next_random() % 250_000));
            }
        }
        child.kill_and_wait();
        let store = SledStore::open(dir.path()).unwrap();
        let state = import_state(&store);
        match mode {
            // The marker was durable before the first record was read.
            "pause" => assert_eq!(state, ImportState::Incomplete, "run {run}"),
            "finish" => assert_eq!(state, ImportState::Complete(run), "run {run}"),
            _ => assert!(
                state == previous
                    || state == ImportState::Incomplete
                    || state == ImportState::Complete(run),
                "run {run} (seed {seed}): found {state:?} after {previous:?}"
            ),
        }
        if matches!(state, ImportState::Incomplete) {
            assert!(is_refused(store.apply(
                IMPORT_SHARD,
                1_000,
                &ShardBatch::new()
            )));
        }
        eprintln!(
            "import run {run} ({mode}): {state:?}, {:?}",
            started.elapsed()
        );
        previous = state;
    }
}

fn is_refused(result: storage::Result<()>) -> bool {
    matches!(result, Err(storage::StorageError::InvalidArgument(_)))
}
