//! Every invalid request gets its typed error and changes nothing.

mod common;

use std::collections::BTreeMap;

use common::{addresses, Admin};
use controller::limits::{
    MAX_ADDRESSES_PER_GROUP, MAX_ADDRESS_BYTES, MAX_GROUPS, MAX_INITIAL_SHARDS, MAX_KEY_BYTES,
    MAX_REQUEST_BYTES,
};
use controller::{
    encode, ControllerCommand, ControllerError, ControllerOp, ControllerReply,
    ControllerStateMachine,
};

fn join(groups: &[(u64, Vec<String>)]) -> ControllerOp {
    ControllerOp::Join {
        groups: groups.iter().cloned().collect(),
    }
}

#[test]
fn every_invalid_request_gets_its_error_and_changes_nothing() {
    let mut admin = Admin::new(8);
    admin.join(&[1, 2]);
    let latest = admin.latest();
    let long_address = "a".repeat(MAX_ADDRESS_BYTES + 1);
    let many_addresses: Vec<String> = (0..=MAX_ADDRESSES_PER_GROUP)
        .map(|i| format!("h{i}:1"))
        .collect();
    let too_many_groups: BTreeMap<u64, Vec<String>> = (100..100 + (MAX_GROUPS as u64 - 1))
        .map(|gid| (gid, vec![format!("g{gid}:1")]))
        .collect();

    use ControllerError as E;
    let cases: Vec<(ControllerOp, ControllerError)> = vec![
        (join(&[]), E::EmptyRequest),
        (join(&[(0, addresses(0))]), E::ReservedGid),
        (join(&[(1, addresses(1))]), E::GroupExists { gid: 1 }),
        // All or nothing: gid 3 is fine but gid 2 exists.
        (
            join(&[(3, addresses(3)), (2, addresses(2))]),
            E::GroupExists { gid: 2 },
        ),
        (join(&[(3, vec![])]), E::NoAddresses { gid: 3 }),
        (
            join(&[(3, vec![String::new()])]),
            E::EmptyAddress { gid: 3 },
        ),
        (
            join(&[(3, vec!["a:1".into(), "a:1".into()])]),
            E::DuplicateAddress {
                gid: 3,
                address: "a:1".into(),
            },
        ),
        (
            join(&[(3, many_addresses)]),
            E::TooManyAddresses {
                gid: 3,
                count: MAX_ADDRESSES_PER_GROUP + 1,
                max: MAX_ADDRESSES_PER_GROUP,
            },
        ),
        (
            join(&[(3, vec![long_address])]),
            E::AddressTooLong {
                gid: 3,
                len_bytes: MAX_ADDRESS_BYTES + 1,
                max_bytes: MAX_ADDRESS_BYTES,
            },
        ),
        (
            ControllerOp::Join {
                groups: too_many_groups,
            },
            E::TooManyGroups {
                count: MAX_GROUPS + 1,
                max: MAX_GROUPS,
            },
        ),
        (ControllerOp::Leave { gids: vec![] }, E::EmptyRequest),
        (
            ControllerOp::Leave { gids: vec![9] },
            E::UnknownGroup { gid: 9 },
        ),
        (
            ControllerOp::Leave { gids: vec![0] },
            E::UnknownGroup { gid: 0 },
        ),
        (
            ControllerOp::Leave { gids: vec![2, 9] },
            E::UnknownGroup { gid: 9 },
        ),
        (
            ControllerOp::Leave { gids: vec![1, 1] },
            E::DuplicateGid { gid: 1 },
        ),
        (
            ControllerOp::Move { shard: 0, gid: 9 },
            E::UnknownGroup { gid: 9 },
        ),
        (
            ControllerOp::SetAddresses {
                gid: 9,
                addresses: addresses(9),
            },
            E::UnknownGroup { gid: 9 },
        ),
        (
            ControllerOp::Move { shard: 8, gid: 1 },
            E::UnknownShard { shard: 8 },
        ),
        (
            ControllerOp::Split { key: vec![] },
            E::SplitAtBoundary { shard: 0 },
        ),
        // "+" is the first pre-split boundary: shard 1 starts there.
        (
            ControllerOp::Split { key: b"+".to_vec() },
            E::SplitAtBoundary { shard: 1 },
        ),
        (
            ControllerOp::Split { key: b"s".to_vec() },
            E::SplitAtBoundary { shard: 7 },
        ),
        (
            ControllerOp::Split {
                key: vec![b'k'; MAX_KEY_BYTES + 1],
            },
            E::KeyTooLong {
                len_bytes: MAX_KEY_BYTES + 1,
                max_bytes: MAX_KEY_BYTES,
            },
        ),
    ];
    for (op, error) in cases {
        let reply = admin.change(42, op.clone());
        assert_eq!(reply, ControllerReply::Error(error), "{op:?}");
        assert_eq!(admin.latest(), latest, "{op:?} changed the configuration");
    }
    // A key of exactly the limit is accepted.
    admin.split(&vec![b'k'; MAX_KEY_BYTES]);
}

#[test]
fn oversized_and_garbage_commands_are_refused() {
    let mut admin = Admin::new(2);
    let reply = admin.apply_bytes(&vec![0; MAX_REQUEST_BYTES + 1]);
    assert_eq!(
        reply,
        ControllerReply::Error(ControllerError::RequestTooLarge {
            len_bytes: MAX_REQUEST_BYTES + 1,
            max_bytes: MAX_REQUEST_BYTES,
        })
    );
    for garbage in [&b""[..], &[0xff; 3], &[9, 0, 0, 0]] {
        let reply = admin.apply_bytes(garbage);
        assert!(
            matches!(
                reply,
                ControllerReply::Error(ControllerError::Malformed { .. })
            ),
            "{garbage:?}: {reply:?}"
        );
    }
    // Trailing bytes after a valid command are refused too.
    let mut bytes = encode(&ControllerCommand::Change {
        client_id: 1,
        seq: 1,
        op: ControllerOp::Split { key: b"m".to_vec() },
    });
    bytes.push(0);
    assert!(matches!(
        admin.apply_bytes(&bytes),
        ControllerReply::Error(ControllerError::Malformed { .. })
    ));
    assert_eq!(admin.sm.controller().latest_num(), 0);
}

/// The range itself is `config.rs`'s unit test (`presplit_boundaries`);
/// this is the state machine a replica starts with.
#[test]
fn initial_shard_counts_outside_1_to_1024_are_refused() {
    for count in [0, MAX_INITIAL_SHARDS + 1] {
        let expected = ControllerError::InvalidInitialShards {
            count,
            max: MAX_INITIAL_SHARDS,
        };
        assert_eq!(ControllerStateMachine::new(count).unwrap_err(), expected);
    }
    assert!(ControllerStateMachine::new(MAX_INITIAL_SHARDS).is_ok());
}

#[test]
fn errors_round_trip_through_the_wire_with_their_text() {
    let error = ControllerError::UnknownShard { shard: 12 };
    assert_eq!(error.to_string(), "unknown shard 12");
    let bytes = encode(&ControllerReply::Error(error.clone()));
    assert_eq!(
        controller::decode::<ControllerReply>(&bytes),
        Ok(ControllerReply::Error(error))
    );
}

#[test]
fn set_addresses_replaces_one_groups_addresses_and_moves_no_shard() {
    let mut admin = Admin::new(8);
    admin.join(&[1, 2]);
    let before = admin.latest();
    let new = vec!["10.0.0.1:1".to_string(), "10.0.0.2:1".to_string()];
    let reply = admin.change(
        7,
        ControllerOp::SetAddresses {
            gid: 2,
            addresses: new.clone(),
        },
    );
    assert_eq!(
        reply,
        ControllerReply::Changed {
            num: before.num + 1
        }
    );
    let after = admin.latest();
    assert_eq!(after.groups[&2], new);
    assert_eq!(after.groups[&1], before.groups[&1]);
    assert_eq!(common::owners(&after), common::owners(&before));
}
