//! Replica-group servers (per-shard state machines, client sessions, shard
//! migration) and the client library.
//!
//! Not built yet: this crate is delivered by the shardkv issue.
