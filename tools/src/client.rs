//! What every client-side tool shares (the `kvctl` commands and the HTTP
//! gateway): clerk options for a per-operation time limit, and how a stored
//! value that may not be UTF-8 is shown as text.

use std::time::Duration;

use paxos_log::NetLimits;
use shardkv::ClerkOptions;

/// Options for a clerk whose operations give up after `timeout` (retries
/// included), with a fresh client id, connecting with `net` (which carries
/// the cluster's access key).
pub fn clerk_options(timeout: Duration, net: NetLimits) -> ClerkOptions {
    let defaults = ClerkOptions::new(controller::unique_client_id());
    ClerkOptions {
        deadline: timeout,
        // One attempt may not outlast the whole operation.
        rpc_timeout: timeout.min(defaults.rpc_timeout),
        net,
        ..defaults
    }
}

/// Text for bytes that may not be UTF-8 (JSON output): invalid sequences
/// become U+FFFD.
pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
