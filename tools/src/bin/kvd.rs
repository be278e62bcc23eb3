//! `kvd --config DIR/NODE/kvd.toml`: one shardkv node in the foreground.
//! The body lives in [`tools::node`] so that `kvctl` can carry it too.

fn main() -> std::process::ExitCode {
    tools::node::kvd_main()
}
