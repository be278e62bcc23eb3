//! Cross-crate integration, simulation, crash and fault tests.
//!
//! Empty until the crates it exercises together exist (paxos-log onwards);
//! the storage engine's own tests live in `storage/tests`.
