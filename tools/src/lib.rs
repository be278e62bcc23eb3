//! Home of the `kvd` and `kvctl` binaries, the HTTP gateway and the metrics
//! endpoint.
//!
//! Not built yet: the binaries are delivered by the kvd/kvctl issue.
