//! Smoke test of the core on a perfect network: three replicas elect a
//! leader, choose proposed commands in order, and every replica learns the
//! same log. The seeded simulation in the `tests` crate covers faults.

use std::collections::{BTreeMap, VecDeque};

use paxos_log::{
    AcceptorStore, Config, Envelope, MemAcceptorStore, NodeId, ReadReady, Replica, Role, Slot,
    Value,
};

struct Cluster {
    replicas: BTreeMap<NodeId, Replica>,
    stores: BTreeMap<NodeId, MemAcceptorStore>,
    network: VecDeque<Envelope>,
    applied: BTreeMap<NodeId, Vec<(Slot, Value)>>,
}

impl Cluster {
    fn new(size: u64) -> Cluster {
        let members: Vec<NodeId> = (1..=size).map(NodeId).collect();
        let mut replicas = BTreeMap::new();
        let mut stores = BTreeMap::new();
        for &id in &members {
            let config = Config::new(id, members.clone());
            let mut store = MemAcceptorStore::new();
            let recovered = store.recover().unwrap();
            replicas.insert(id, Replica::new(config, recovered, 0).unwrap());
            stores.insert(id, store);
        }
        Cluster {
            replicas,
            stores,
            network: VecDeque::new(),
            applied: BTreeMap::new(),
        }
    }

    /// Carries out replica `id`'s `Ready`: sends its messages, persists,
    /// sends what waited for the write, records what was chosen, and
    /// advances. Returns the reads it completed.
    fn carry_out(&mut self, id: NodeId) -> Vec<ReadReady> {
        let ready = self.replicas.get_mut(&id).unwrap().ready();
        self.network.extend(ready.messages);
        self.stores
            .get_mut(&id)
            .unwrap()
            .persist(&ready.persist)
            .unwrap();
        self.network.extend(ready.persisted_messages);
        let applied = self.applied.entry(id).or_default();
        applied.extend(ready.chosen.into_iter().map(|e| (e.slot, e.value)));
        self.replicas.get_mut(&id).unwrap().advance();
        ready.reads
    }

    /// Carries out the `Ready` of every replica that has one; returns the
    /// reads they completed, or `None` if none had one.
    fn carry_out_all(&mut self) -> Option<Vec<ReadReady>> {
        let ready: Vec<NodeId> = self
            .replicas
            .iter()
            .filter(|(_, r)| r.has_ready())
            .map(|(&id, _)| id)
            .collect();
        if ready.is_empty() {
            return None;
        }
        Some(
            ready
                .into_iter()
                .flat_map(|id| self.carry_out(id))
                .collect(),
        )
    }

    /// Delivers every message in flight; returns whether there was any.
    fn deliver_all(&mut self) -> bool {
        let mut delivered = false;
        while let Some(envelope) = self.network.pop_front() {
            delivered = true;
            self.replicas.get_mut(&envelope.to).unwrap().step(envelope);
        }
        delivered
    }

    /// Runs every replica's Ready and delivers messages until quiet.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let ran = self.carry_out_all().is_some();
            if !self.deliver_all() && !ran {
                return;
            }
        }
        panic!("cluster did not settle");
    }

    fn tick_all(&mut self) {
        for replica in self.replicas.values_mut() {
            replica.tick();
        }
        self.settle();
    }

    fn leader(&self) -> Option<NodeId> {
        self.replicas
            .iter()
            .find(|(_, r)| r.role() == Role::Leader)
            .map(|(id, _)| *id)
    }
}

#[test]
fn three_replicas_elect_and_agree() {
    let mut cluster = Cluster::new(3);
    for _ in 0..100 {
        cluster.tick_all();
        if cluster.leader().is_some() {
            break;
        }
    }
    let leader = cluster.leader().expect("a leader within 100 ticks");
    for i in 0..50u8 {
        cluster
            .replicas
            .get_mut(&leader)
            .unwrap()
            .propose(vec![i])
            .unwrap();
        if i % 7 == 0 {
            cluster.settle();
        }
    }
    // Heartbeats carry the commit point to followers.
    for _ in 0..5 {
        cluster.tick_all();
    }
    let commands = |log: &Vec<(Slot, Value)>| -> Vec<u8> {
        log.iter()
            .flat_map(|(_, v)| match v {
                Value::Commands(cs) => cs.iter().map(|c| c[0]).collect::<Vec<_>>(),
                Value::Noop | Value::Reconfigure(_) => vec![],
            })
            .collect()
    };
    let expected: Vec<u8> = (0..50).collect();
    for id in cluster.replicas.keys() {
        let log = &cluster.applied[id];
        let slots: Vec<Slot> = log.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            slots,
            (1..=slots.len() as u64).collect::<Vec<_>>(),
            "{id}: gap in applied slots"
        );
        assert_eq!(commands(log), expected, "{id} applied a different log");
    }
}

#[test]
fn reads_are_confirmed_by_a_quorum() {
    let mut cluster = Cluster::new(3);
    while cluster.leader().is_none() {
        cluster.tick_all();
    }
    let leader = cluster.leader().unwrap();
    let replica = cluster.replicas.get_mut(&leader).unwrap();
    replica.propose(b"x".to_vec()).unwrap();
    replica.read_index(7).unwrap();
    let reads = cluster.carry_out(leader);
    assert!(reads.is_empty(), "a read needs a quorum round first");
    let mut reads = Vec::new();
    for _ in 0..100 {
        cluster.deliver_all();
        reads.extend(cluster.carry_out_all().unwrap_or_default());
    }
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0].read_id, 7);
}
