//! Shared fixtures for the tests that run real drivers (`driver.rs`,
//! `net.rs`): a state machine that records what it applied, and waits on
//! replica metrics instead of sleeps.

#![allow(dead_code)] // each test file uses its own subset

use std::time::{Duration, Instant};

use paxos_log::{NodeHandle, Role, Slot, StateMachine};

/// Records every applied command; answers reads with the count applied.
/// In memory only: `durable_slot` is 0, so a restarted replica re-learns
/// the whole log, or restores its snapshot when it has a snapshot store.
#[derive(Debug, Default)]
pub struct LogMachine {
    /// Every applied command with its slot, in order.
    pub applied: Vec<(Slot, Vec<u8>)>,
}

impl StateMachine for LogMachine {
    fn apply(&mut self, slot: Slot, command: &[u8]) -> Vec<u8> {
        self.applied.push((slot, command.to_vec()));
        slot.to_le_bytes().to_vec()
    }
    fn read(&mut self, _query: &[u8]) -> Vec<u8> {
        (self.applied.len() as u64).to_le_bytes().to_vec()
    }
    fn durable_slot(&self) -> Slot {
        0
    }
    fn snapshot(&mut self) -> Option<Vec<u8>> {
        Some(bincode::serialize(&self.applied).expect("a Vec of byte vectors encodes"))
    }
    fn restore(&mut self, _slot: Slot, snapshot: &[u8]) -> Result<(), String> {
        self.applied = bincode::deserialize(snapshot).map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// The commands a replica applied, in order.
pub fn commands_of(machine: &LogMachine) -> Vec<Vec<u8>> {
    machine.applied.iter().map(|(_, c)| c.clone()).collect()
}

/// Waits (10 s at most) until one of `handles` leads, and returns it.
pub async fn wait_for_leader(handles: &[NodeHandle]) -> NodeHandle {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(leader) = handles
            .iter()
            .find(|h| h.metrics().role == Some(Role::Leader))
        {
            return leader.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no leader elected within 10 s: {:?}",
            handles.iter().map(NodeHandle::metrics).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits (20 s at most per replica) until every replica applied `slot`.
pub async fn wait_applied(handles: &[NodeHandle], slot: Slot) {
    for handle in handles {
        let caught_up = handle
            .wait_for(Duration::from_secs(20), |m| m.applied_slot >= slot)
            .await;
        assert!(
            caught_up.is_some(),
            "{} did not apply slot {slot}: {:?}",
            handle.id(),
            handle.metrics()
        );
    }
}

/// Proposes `command` through whichever replica leads, retrying up to 100
/// times 20 ms apart, and returns the slot it was applied in. Like the
/// callers before it, it retries after any error, including an unknown
/// outcome, so a caller that counts applied commands exactly must expect
/// a retried command to be applied at most twice in a faulty run.
pub async fn commit(handles: &[NodeHandle], command: &[u8]) -> Slot {
    for _ in 0..100 {
        let leader = wait_for_leader(handles).await;
        match leader.propose(command.to_vec()).await {
            Ok(slot) => {
                return u64::from_le_bytes(slot.try_into().expect("LogMachine answers its slot"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    panic!("the cluster did not commit {command:?} in 100 attempts");
}
