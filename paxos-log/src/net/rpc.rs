//! The wire contract between replicas: one tarpc service, [`PaxosPeer`].
//!
//! Changing anything here (or in [`Envelope`] and the types it carries)
//! changes the wire format: every replica of a group must run the same
//! version.

use crate::message::Envelope;

/// What one replica's server offers its peers.
#[tarpc::service]
pub trait PaxosPeer {
    /// Hands `batch` to the receiving replica. Answered with `()` as soon
    /// as the batch is queued for the replica (not when it is processed):
    /// messages are one-way, replies are more envelopes sent back.
    ///
    /// `group` is the sender's group id: a server of another group drops
    /// the whole batch. Envelopes whose `to` is not the serving replica
    /// are dropped one by one.
    async fn deliver(group: u64, batch: Vec<Envelope>);
}
