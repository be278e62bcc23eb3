//! The replicated shard controller: numbered configurations of groups and
//! key-range shards, served over tarpc on top of `paxos-log`.
//!
//! Not built yet: this crate is delivered by the controller issue.
