//! Multi-Paxos replicated log: an I/O-free deterministic core and the tokio
//! driver that runs it over the `storage` WAL and a transport.
//!
//! Not built yet: this crate is delivered by the paxos-log issue. It is an
//! empty library so that the workspace layout and dependency direction
//! (`storage` <- `paxos-log` <- `controller` <- `shardkv` <- `tools`) are fixed
//! from the start.
