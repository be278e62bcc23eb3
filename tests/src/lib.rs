//! Cross-crate integration, simulation, crash and fault tests for shardkv.
//!
//! The library holds the test machinery that more than one integration test
//! (under `tests/tests/`) shares; it is never linked into a shipped binary.
//!
//! * [`paxos_sim`]: a seeded, deterministic fault simulation of the
//!   Multi-Paxos core of `paxos-log` (message loss, delay, reordering,
//!   duplication, partitions, crashes that lose unsynced writes, restarts
//!   with a lost or partly lost state machine), with agreement, validity,
//!   gap-free delivery, durability, read-linearizability and liveness
//!   checks. The suites live in `tests/tests/paxos_sim.rs`.
//! * [`linearizability`]: a deterministic linearizability checker for
//!   key/value histories (get, put, append, delete, cas, put_hash, with
//!   indeterminate operations), and a thread-safe recorder of such
//!   histories for tests of the shardkv store.
//! * [`ports`]: loopback ports for servers that a test restarts on the same
//!   address (below the ephemeral range, where client connections never
//!   take them).
//! * [`shardkv_cluster`]: a whole deployment in one process (a controller
//!   group and replica groups over loopback TCP, each replica with its own
//!   WAL, snapshots and sled store in a temporary directory), with
//!   crash-restart of replicas and groups. The suites live in
//!   `tests/tests/shardkv_*.rs`.
//!
//! The storage engine's own tests live in `storage/tests`, the Paxos core's
//! unit and smoke tests in `paxos-log/tests`.

pub mod linearizability;
pub mod paxos_sim;
pub mod ports;
pub mod shardkv_cluster;
