//! The `paxos_log::StateMachine` face: snapshots, reads, and garbage input.

mod common;

use common::{addresses, Admin};
use controller::{
    decode, encode, ControllerCommand, ControllerError, ControllerOp, ControllerQuery,
    ControllerReply, ControllerStateMachine, SNAPSHOT_VERSION,
};
use paxos_log::StateMachine;
use proptest::prelude::*;

/// A state machine with history: joins, leaves, moves, splits, sessions.
fn busy_admin() -> Admin {
    let mut admin = Admin::new(6);
    admin.join_as(1, &[1, 2]);
    admin.split(b"k");
    admin.join_as(2, &[3]);
    admin.move_shard(0, 3);
    admin.leave_as(3, &[1]);
    admin.split(b"\x01");
    admin.join_as(2, &[4, 5]);
    admin
}

#[test]
fn snapshot_restore_round_trip_gives_identical_answers() {
    let mut admin = busy_admin();
    let snapshot = admin
        .sm
        .snapshot()
        .expect("the controller supports snapshots");
    assert_eq!(snapshot[0], SNAPSHOT_VERSION);

    // A replica built differently (other pre-split, no history) restores it.
    let mut restored = ControllerStateMachine::new(3).unwrap();
    restored.restore(admin.slot, &snapshot).unwrap();
    assert_eq!(restored, admin.sm);

    // Every historical query answers the same bytes.
    let latest = admin.sm.controller().latest_num();
    for num in (0..=latest + 1).map(Some).chain([None]) {
        let query = encode(&ControllerQuery::Config { num });
        assert_eq!(
            restored.read(&query),
            admin.sm.read(&query),
            "query {num:?}"
        );
    }
    // The same commands afterwards get the same replies: sessions (a
    // retry, a stale seq) and the next shard id came through.
    let commands = [
        ControllerCommand::Change {
            client_id: 2,
            seq: 2,
            op: ControllerOp::Join {
                groups: [(4, addresses(4))].into(),
            },
        },
        ControllerCommand::Change {
            client_id: 1,
            seq: 1,
            op: ControllerOp::Leave { gids: vec![2] },
        },
        ControllerCommand::Change {
            client_id: 1,
            seq: 9,
            op: ControllerOp::Split { key: b"q".to_vec() },
        },
        ControllerCommand::Change {
            client_id: 8,
            seq: 1,
            op: ControllerOp::Leave { gids: vec![2, 3] },
        },
    ];
    for (slot, command) in (admin.slot + 1..).zip(&commands) {
        let bytes = encode(command);
        let expected = admin.sm.apply(slot, &bytes);
        assert_eq!(restored.apply(slot, &bytes), expected, "{command:?}");
        assert!(!matches!(
            decode::<ControllerReply>(&expected),
            Ok(ControllerReply::Error(ControllerError::Malformed { .. }))
        ));
    }
    assert_eq!(restored, admin.sm);
    assert_eq!(restored.snapshot(), admin.sm.snapshot());
}

#[test]
fn restore_refuses_corrupt_snapshots_and_keeps_the_state() {
    let mut source = busy_admin();
    let snapshot = source.sm.snapshot().unwrap();
    let mut sm = ControllerStateMachine::new(2).unwrap();
    let before = sm.clone();

    let mut wrong_version = snapshot.clone();
    wrong_version[0] = SNAPSHOT_VERSION + 1;
    let mut trailing = snapshot.clone();
    trailing.push(0);
    let mut bad: Vec<Vec<u8>> = vec![Vec::new(), wrong_version, trailing];
    for cut in [1, 2, 9, snapshot.len() / 2, snapshot.len() - 1] {
        bad.push(snapshot[..cut].to_vec());
    }
    for bytes in bad {
        assert!(
            sm.restore(10, &bytes).is_err(),
            "{} bytes restored",
            bytes.len()
        );
        assert_eq!(sm, before);
    }
}

#[test]
fn read_answers_queries_and_garbage_gets_an_error() {
    let mut admin = busy_admin();
    let before = admin.sm.clone();
    let reply = decode::<ControllerReply>(
        &admin
            .sm
            .read(&encode(&ControllerQuery::Config { num: Some(1) })),
    )
    .unwrap();
    let ControllerReply::Config(config) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(config.num, 1);
    assert_eq!(config.groups.keys().copied().collect::<Vec<_>>(), [1, 2]);

    let reply = decode::<ControllerReply>(&admin.sm.read(b"\x07garbage")).unwrap();
    assert!(
        matches!(
            reply,
            ControllerReply::Error(ControllerError::Malformed { .. })
        ),
        "{reply:?}"
    );
    // Reads never change anything.
    assert_eq!(admin.sm, before);
}

#[test]
fn durable_slot_is_zero() {
    // The state lives in memory: after a restart the driver restores the
    // snapshot and replays the log above it.
    let mut admin = busy_admin();
    assert_eq!(admin.sm.durable_slot(), 0);
    admin.apply_bytes(b"");
    assert_eq!(admin.sm.durable_slot(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random bytes as a command, a query, a reply or a snapshot: errors,
    /// never a panic, and the state keeps its invariants.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut admin = busy_admin();
        let num = admin.sm.controller().latest_num();
        let reply = admin.sm.apply(admin.slot + 1, &bytes);
        prop_assert!(decode::<ControllerReply>(&reply).is_ok());
        let reply = admin.sm.read(&bytes);
        prop_assert!(decode::<ControllerReply>(&reply).is_ok());
        let _ = decode::<ControllerReply>(&bytes);
        let _ = decode::<ControllerCommand>(&bytes);
        let before = admin.sm.clone();
        if admin.sm.restore(99, &bytes).is_err() {
            prop_assert_eq!(&admin.sm, &before);
        }
        admin.sm.controller().check().map_err(TestCaseError::fail)?;
        prop_assert!(admin.sm.controller().latest_num() <= num + 1);
    }

    /// Valid encodings with a few bytes changed reach deeper into the
    /// decoder (lengths, enum tags, strings): still never a panic.
    #[test]
    fn mutated_commands_and_snapshots_never_panic(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
    ) {
        let mut admin = busy_admin();
        let command = encode(&ControllerCommand::Change {
            client_id: 5,
            seq: 1,
            op: ControllerOp::Join { groups: [(9, addresses(9)), (10, addresses(10))].into() },
        });
        let snapshot = admin.sm.snapshot().unwrap();
        for original in [command, snapshot] {
            let mut bytes = original;
            for &(at, value) in &flips {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            let reply = admin.sm.apply(admin.slot + 1, &bytes);
            prop_assert!(decode::<ControllerReply>(&reply).is_ok());
            let before = admin.sm.clone();
            if admin.sm.restore(admin.slot + 2, &bytes).is_err() {
                prop_assert_eq!(&admin.sm, &before);
            }
            admin.sm.controller().check().map_err(TestCaseError::fail)?;
        }
    }
}
