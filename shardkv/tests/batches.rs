//! Several commands chosen in one slot (a batch of the log) are each
//! applied exactly once: the driver applies them all with the batch's slot,
//! and the state machine numbers them within it, also when the batch is
//! replayed after a restart.

use std::collections::BTreeMap;
use std::sync::Arc;

use controller::{Configuration, Shard};
use paxos_log::StateMachine;
use shardkv::limits::Limits;
use shardkv::wire::{decode, encode, Command, Outcome, ReadOp, ReadReply, WriteOp, WriteReply};
use shardkv::ShardMachine;
use storage::sled_store::SledStore;

const STAMP_MS: u64 = 1_700_000_000_000;

fn one_shard_config() -> Configuration {
    Configuration {
        num: 1,
        groups: BTreeMap::from([(1, vec!["127.0.0.1:1".to_string()])]),
        shards: vec![Shard {
            id: 0,
            start: Vec::new(),
            end: None,
            gid: Some(1),
        }],
    }
}

fn append(client_id: u64, value: &[u8]) -> Vec<u8> {
    encode(&Command::Write {
        client_id,
        seq: 1,
        stamp_ms: STAMP_MS,
        limits: Limits::default().apply_limits(),
        op: WriteOp::Append {
            key: b"k".to_vec(),
            value: value.to_vec(),
        },
    })
}

fn get(machine: &mut ShardMachine) -> Option<Vec<u8>> {
    match decode::<Outcome<ReadReply>>(&machine.read(&encode(&ReadOp::Get { key: b"k".to_vec() })))
    {
        Ok(Outcome::Ok(ReadReply::Value(value))) => value,
        other => panic!("get: {other:?}"),
    }
}

#[test]
fn every_command_of_a_batch_is_applied_once_also_when_the_batch_is_replayed() {
    let dir = tempfile::TempDir::new().unwrap();
    let open = || {
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        ShardMachine::open(store, 1, Limits::default()).unwrap()
    };
    let batch = [append(7, b"x"), append(8, b"y"), append(9, b"z")];
    {
        let mut machine = open();
        let installed = machine.apply(
            1,
            &encode(&Command::InstallConfig {
                config: one_shard_config(),
            }),
        );
        assert_eq!(decode::<Outcome<bool>>(&installed), Ok(Outcome::Ok(true)));
        // Durable at slot 1: a restart replays from slot 2.
        machine.snapshot().expect("snapshot");
        for command in &batch {
            let reply = decode::<Outcome<WriteReply>>(&machine.apply(2, command));
            assert_eq!(reply, Ok(Outcome::Ok(WriteReply::Done)));
        }
        assert_eq!(get(&mut machine), Some(b"xyz".to_vec()));
    }
    let mut machine = open();
    assert_eq!(machine.durable_slot(), 1);
    for command in &batch {
        machine.apply(2, command);
    }
    assert_eq!(
        get(&mut machine),
        Some(b"xyz".to_vec()),
        "replay applied nothing twice"
    );
    // The next slot's first command is applied.
    machine.apply(3, &append(10, b"!"));
    assert_eq!(get(&mut machine), Some(b"xyz!".to_vec()));
}
