//! `kvctl`'s command line, as clap derives it: every subcommand, its
//! arguments and the help text a person reads. The contract (names, flags,
//! exit codes) is the design brief's section 6; `shell` parses each of its
//! lines with the same [`Op`] definitions, so the two never drift apart.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The whole command line.
#[derive(Debug, Parser)]
#[command(
    name = "kvctl",
    version,
    about = "The shardkv command line: a local cluster, client operations, admin, WAL \
             inspection, snapshot export and import.",
    after_help = "The cluster file is found by --cluster FILE, then $KV_CLUSTER, then \
                  ./kv-data/cluster.toml.\n\
                  Exit codes: 0 ok, 1 error, 2 usage, 3 not found (get), 4 cas mismatch.\n\
                  First steps: kvctl cluster up; kvctl put a 1; kvctl get a; kvctl cluster status"
)]
pub struct Cli {
    /// Cluster file [default: $KV_CLUSTER, then ./kv-data/cluster.toml].
    #[arg(long, global = true, value_name = "FILE")]
    pub cluster: Option<PathBuf>,
    /// Output format: `text`, or `json` (one JSON object per result line).
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Text)]
    pub output: Format,
    /// How long one client or admin operation may take, retries included,
    /// before its outcome is reported (as unknown, if it may have happened).
    #[arg(long, global = true, value_name = "MS", default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people: values as they are, `OK`, tables.
    Text,
    /// For programs: one JSON object per result line.
    Json,
}

/// Every subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, start, stop and inspect a local cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// A client operation.
    #[command(flatten)]
    Op(Op),
    /// Read commands (the same words as on the command line) from stdin,
    /// one per line with POSIX-shell quoting; print one result line each.
    Shell,
    /// Change or show the shard configuration, or a group's replicas.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Inspect a node's write-ahead log (read-only; works on a running node).
    #[command(subcommand)]
    Wal(WalCommand),
    /// Export a running cluster's data to a file, import one, verify one.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Closed-loop load against the running cluster: N clients, each with
    /// one operation in flight, for a duration; throughput and latency
    /// percentiles.
    Bench(BenchArgs),
}

/// `kvctl bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Concurrent clients (each its own clerk and session).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub clients: u32,
    /// How long to measure, in seconds.
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    pub duration: f64,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,
    /// Bytes per value written.
    #[arg(long, value_name = "B", default_value_t = 100)]
    pub value_size: usize,
    /// Operation mix, as weights: e.g. put=50,get=50 or
    /// get=90,put=5,append=2,cas=2,scan=1.
    #[arg(long, default_value = "put=50,get=50", value_parser = super::bench::Mix::parse)]
    pub mix: super::bench::Mix,
    /// How keys are chosen.
    #[arg(long, value_enum, default_value_t = super::bench::KeyDistribution::Uniform)]
    pub distribution: super::bench::KeyDistribution,
    /// The zipfian exponent (with --distribution zipfian).
    #[arg(long, default_value_t = 0.99)]
    pub zipf_exponent: f64,
    /// Items per scan.
    #[arg(long, default_value_t = 10)]
    pub scan_limit: usize,
    /// Do not write every key once before measuring.
    #[arg(long)]
    pub no_preload: bool,
    /// Seed of the clients' random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// One JSON object at the end (the same as -o json).
    #[arg(long)]
    pub json: bool,
}

/// `kvctl cluster ...`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Write cluster.toml and one kvd.toml per node (refuses an existing
    /// cluster).
    Init(InitArgs),
    /// Start every node not already running (init first if needed), join
    /// the groups, wait until every shard is served.
    Up(UpArgs),
    /// Stop the nodes `up` started (SIGTERM; they shut down cleanly).
    Down(DirArg),
    /// Nodes, roles, leaders, applied slots, the shard map, migrations.
    Status(DirArg),
    /// Add a new replica group to the cluster file and start its nodes
    /// (then `kvctl admin join GID` hands it shards).
    AddGroup(AddGroupArgs),
}

/// `kvctl cluster add-group`.
#[derive(Debug, Clone, Args)]
pub struct AddGroupArgs {
    /// Where.
    #[command(flatten)]
    pub dir: DirArg,
    /// Replicas of the new group [default: as many as the first group].
    #[arg(long)]
    pub replicas: Option<u32>,
    /// The kvd binary (as for `up`).
    #[arg(long, value_name = "PATH")]
    pub kvd: Option<PathBuf>,
}

/// A cluster directory argument.
#[derive(Debug, Clone, Args)]
pub struct DirArg {
    /// Cluster directory [default: the cluster file's directory, ./kv-data].
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `kvctl cluster init`.
#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// Where.
    #[command(flatten)]
    pub dir: DirArg,
    /// The cluster's shape and ports.
    #[command(flatten)]
    pub shape: ShapeArgs,
}

/// The shape of a new cluster.
#[derive(Debug, Clone, Args)]
pub struct ShapeArgs {
    /// Controller replicas (1 to 7; 3 or 5 tolerate failures).
    #[arg(long, default_value_t = 3)]
    pub controllers: u32,
    /// Replica groups.
    #[arg(long, default_value_t = 2)]
    pub groups: u32,
    /// Replicas per group (1 to 7; 3 or 5 tolerate failures).
    #[arg(long, default_value_t = 3)]
    pub replicas: u32,
    /// Shards of the first configuration.
    #[arg(long, default_value_t = 8)]
    pub shards: u32,
    /// First port; each node takes three (peer, client, HTTP) from here on.
    #[arg(long, default_value_t = 7400)]
    pub base_port: u16,
    /// Mutual TLS on every connection: makes a certificate authority for
    /// the cluster and a certificate for kvctl and for every node (under
    /// DIR/tls and DIR/NODE/tls).
    #[arg(long)]
    pub tls: bool,
}

/// `kvctl cluster up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Where.
    #[command(flatten)]
    pub dir: DirArg,
    /// The shape, if `up` has to init the cluster.
    #[command(flatten)]
    pub shape: ShapeArgs,
    /// The kvd binary [default: $KVD, then `kvd` next to kvctl, then kvctl
    /// itself running as kvd].
    #[arg(long, value_name = "PATH")]
    pub kvd: Option<PathBuf>,
    /// How long to wait for every shard to be served.
    #[arg(long, value_name = "S", default_value_t = 60)]
    pub wait_s: u64,
}

/// A client operation: on the command line and in `shell`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Op {
    /// Print the value of KEY (exit 3 if absent).
    Get {
        /// The key.
        key: String,
    },
    /// Set KEY to VALUE.
    Put {
        /// The key.
        key: String,
        /// The value.
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
    /// Append VALUE to the value of KEY.
    Append {
        /// The key.
        key: String,
        /// The value to append.
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
    /// Remove KEY.
    Delete {
        /// The key.
        key: String,
    },
    /// Set KEY to NEW if its value is EXPECTED (or, with --absent, if it
    /// has none); exit 4 and print the current value otherwise.
    #[command(override_usage = "kvctl cas KEY (EXPECTED | --absent) NEW")]
    Cas {
        /// The key.
        key: String,
        /// EXPECTED NEW, or NEW alone with --absent.
        #[arg(
            value_name = "EXPECTED NEW",
            num_args = 1..=2,
            required = true,
            allow_hyphen_values = true
        )]
        values: Vec<String>,
        /// Swap only if KEY has no value.
        #[arg(long)]
        absent: bool,
    },
    /// Set KEY to hash(previous ++ VALUE) (64-bit FNV-1a, 16 hex digits);
    /// print the previous value.
    PutHash {
        /// The key.
        key: String,
        /// The value hashed after the previous one.
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
    /// Print `KEY<TAB>VALUE` lines for keys in [START, END), in key order.
    Scan {
        /// First key [default: the start of the key space].
        start: Option<String>,
        /// End (exclusive) [default: the end of the key space].
        end: Option<String>,
        /// At most this many items.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

/// `kvctl admin ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Add group GID (its replicas' addresses come from the cluster file);
    /// shards rebalance onto it.
    Join {
        /// The group.
        gid: u64,
    },
    /// Remove group GID; its shards move to the others.
    Leave {
        /// The group.
        gid: u64,
    },
    /// Hand shard SHARD to group GID.
    Move {
        /// The shard id.
        shard: u64,
        /// The group.
        gid: u64,
    },
    /// Split the shard containing KEY at KEY (the new shard stays on the
    /// same group).
    Split {
        /// The split key.
        key: String,
    },
    /// Show configuration NUM [default: the latest].
    Config {
        /// The configuration number.
        num: Option<u64>,
    },
    /// Add a new replica named NODE to group GID: writes its kvd.toml,
    /// starts it, and makes it a voting member.
    AddReplica {
        /// The group.
        gid: u64,
        /// The new node's name (as in the cluster file).
        node: String,
    },
    /// Remove replica NODE from group GID and stop it.
    RemoveReplica {
        /// The group.
        gid: u64,
        /// The node's name.
        node: String,
    },
}

/// `kvctl wal ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum WalCommand {
    /// Decode every record: ballots, slots, promises, accepted values with
    /// the client operations inside, configuration entries, checkpoints.
    Dump {
        /// A node's WAL directory, its data directory (holding wal/), its
        /// node directory (holding data/wal/), or one segment file.
        path: PathBuf,
        /// One JSON object per record instead of text (as `-o json`).
        #[arg(long)]
        json: bool,
    },
    /// Check every checksum; on the first bad record, name the file and
    /// byte offset and exit 1.
    Verify {
        /// A node's WAL directory, its data directory (holding wal/), its
        /// node directory (holding data/wal/), or one segment file.
        path: PathBuf,
    },
}

/// `kvctl snapshot ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum SnapshotCommand {
    /// Write a consistent, self-verifying copy of the data (every shard, or
    /// one) to FILE.
    Export {
        /// The file to write.
        file: PathBuf,
        /// Only this shard.
        #[arg(long, value_name = "ID")]
        shard: Option<u64>,
    },
    /// Put every item of FILE into the running cluster (safe to re-run
    /// after an interruption).
    Import {
        /// The file to read.
        file: PathBuf,
    },
    /// Check FILE's header, every record and the whole-file checksum.
    Verify {
        /// The file to check.
        file: PathBuf,
    },
}
