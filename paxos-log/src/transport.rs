//! How replicas reach each other: the [`Transport`] trait, and
//! [`ChannelTransport`], an in-process network for tests.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::driver::NodeHandle;
use crate::message::Envelope;
use crate::types::NodeId;

/// Sends messages to peers. Best effort: Paxos tolerates loss, so there is
/// nothing to report back, and `send` must never block the driver.
pub trait Transport: Send + Sync + 'static {
    /// Sends each envelope to its `to` replica, or drops it.
    fn send(&self, envelopes: Vec<Envelope>);
}

/// An in-process network: delivers envelopes straight into the receivers'
/// driver queues. Replicas register and unregister as they start and stop,
/// so messages to a stopped replica are dropped like on a real network.
#[derive(Debug, Clone, Default)]
pub struct ChannelTransport {
    nodes: Arc<RwLock<BTreeMap<NodeId, NodeHandle>>>,
}

impl ChannelTransport {
    /// An empty network.
    pub fn new() -> ChannelTransport {
        ChannelTransport::default()
    }

    /// Routes messages for `id` to `handle` from now on.
    pub fn register(&self, id: NodeId, handle: NodeHandle) {
        self.nodes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, handle);
    }

    /// Drops messages for `id` from now on.
    pub fn unregister(&self, id: NodeId) {
        self.nodes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }
}

impl Transport for ChannelTransport {
    fn send(&self, envelopes: Vec<Envelope>) {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        for envelope in envelopes {
            if let Some(handle) = nodes.get(&envelope.to) {
                handle.deliver(envelope);
            }
        }
    }
}
