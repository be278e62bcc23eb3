//! `kvctl`: the shardkv command line. Started under the name `kvd` (see
//! `tools::node`), it runs a node instead, so that `cargo run --bin kvctl
//! -- cluster up` works without building the `kvd` binary as well.

use std::path::Path;

fn main() -> std::process::ExitCode {
    let arg0 = std::env::args_os().next().unwrap_or_default();
    if Path::new(&arg0).file_name() == Some("kvd".as_ref()) {
        return tools::node::kvd_main();
    }
    tools::kvctl::kvctl_main()
}
