//! Classic shard-controller scenarios, driven through the state machine's
//! byte interface: join/leave, historical queries, move, many clients,
//! minimal transfers, split.

mod common;

use std::collections::BTreeSet;

use common::{addresses, assert_balanced, gids, moved, Admin};
use controller::{ControllerOp, ControllerReply};

#[test]
fn basic_join_and_leave() {
    let mut admin = Admin::new(10);
    let initial = admin.latest();
    assert_eq!(initial.num, 0);
    assert!(initial.groups.is_empty());
    assert_eq!(initial.shards.len(), 10);
    assert!(initial.shards.iter().all(|shard| shard.gid.is_none()));

    assert_eq!(admin.join(&[1]), 1);
    let config = admin.latest();
    assert_eq!(config.num, 1);
    assert_eq!(config.groups.get(&1), Some(&addresses(1)));
    assert!(config.shards.iter().all(|shard| shard.gid == Some(1)));

    assert_eq!(admin.join(&[2]), 2);
    let config = admin.latest();
    assert_balanced(&config);
    assert_eq!(
        config.shard_counts().values().copied().collect::<Vec<_>>(),
        [5, 5]
    );

    assert_eq!(admin.leave(&[1]), 3);
    let config = admin.latest();
    assert_eq!(gids(&config), BTreeSet::from([2]));
    assert!(config.shards.iter().all(|shard| shard.gid == Some(2)));

    assert_eq!(admin.leave(&[2]), 4);
    let config = admin.latest();
    assert!(config.groups.is_empty());
    assert!(config.shards.iter().all(|shard| shard.gid.is_none()));
    config.check().unwrap();

    // Rejoining after everyone left takes every (unowned) shard again.
    assert_eq!(admin.join(&[1, 3]), 5);
    let config = admin.latest();
    assert_balanced(&config);
    assert_eq!(
        config.shard_counts().values().copied().collect::<Vec<_>>(),
        [5, 5]
    );
}

#[test]
fn historical_queries_return_old_configurations_unchanged() {
    let mut admin = Admin::new(7);
    let mut history = vec![admin.latest()];
    admin.join(&[1]);
    history.push(admin.latest());
    admin.join(&[2, 3]);
    history.push(admin.latest());
    admin.split(b"m");
    history.push(admin.latest());
    admin.move_shard(0, 3);
    history.push(admin.latest());
    admin.leave(&[1]);
    history.push(admin.latest());
    admin.join(&[4]);
    history.push(admin.latest());

    for (num, expected) in (0..).zip(&history) {
        assert_eq!(&admin.query(Some(num)), expected, "configuration {num}");
        assert_eq!(expected.num, num);
    }
    let latest = history.last().unwrap();
    assert_eq!(&admin.query(None), latest);
    assert_eq!(&admin.query(Some(latest.num + 1)), latest);
    assert_eq!(&admin.query(Some(u64::MAX)), latest);
}

#[test]
fn move_hands_one_shard_to_a_group_without_rebalancing() {
    let mut admin = Admin::new(10);
    admin.join(&[1, 2]);
    let before = admin.latest();
    let shard = before
        .shards
        .iter()
        .find(|shard| shard.gid == Some(1))
        .unwrap()
        .id;

    admin.move_shard(shard, 2);
    let after = admin.latest();
    assert_eq!(
        moved(&before, &after).into_iter().collect::<Vec<_>>(),
        [(shard, (Some(1), Some(2)))]
    );
    assert_eq!(
        after
            .shards
            .iter()
            .map(|s| (&s.start, &s.end))
            .collect::<Vec<_>>(),
        before
            .shards
            .iter()
            .map(|s| (&s.start, &s.end))
            .collect::<Vec<_>>()
    );

    // Several moves pile shards on group 2: Move is an override, no rebalance.
    for shard in after
        .shards
        .iter()
        .filter(|shard| shard.gid == Some(1))
        .map(|s| s.id)
        .take(3)
    {
        admin.move_shard(shard, 2);
    }
    let piled = admin.latest();
    assert_eq!(
        piled.shard_counts().values().copied().collect::<Vec<_>>(),
        [1, 9]
    );
    piled.check().unwrap();

    // Moving a shard to the group that already serves it still creates a
    // configuration (every accepted change does).
    let num = admin.move_shard(shard, 2);
    assert_eq!(num, piled.num + 1);
    assert_eq!(moved(&piled, &admin.latest()).len(), 0);

    // The next join rebalances everything.
    admin.join(&[3]);
    assert_balanced(&admin.latest());
}

#[test]
fn many_clients_interleave_joins_and_leaves() {
    // Five clients each own gids 10c+1..=10c+4; they take turns in a fixed
    // pseudo-random order, joining their gids one by one and leaving some.
    let mut admin = Admin::new(24);
    let mut script: Vec<(u64, Vec<ControllerOp>)> = (1..=5u64)
        .map(|client| {
            let gids: Vec<u64> = (1..=4).map(|i| 10 * client + i).collect();
            let mut ops: Vec<ControllerOp> = gids
                .iter()
                .map(|&gid| ControllerOp::Join {
                    groups: [(gid, addresses(gid))].into(),
                })
                .collect();
            ops.push(ControllerOp::Leave {
                gids: vec![gids[0], gids[2]],
            });
            (client, ops)
        })
        .collect();
    let mut rng: u64 = 0x5eed;
    let mut expected_groups = BTreeSet::new();
    let mut last_num = 0;
    while script.iter().any(|(_, ops)| !ops.is_empty()) {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let live: Vec<usize> = (0..script.len())
            .filter(|&i| !script[i].1.is_empty())
            .collect();
        let pick = live[usize::try_from(rng >> 33).unwrap() % live.len()];
        let (client, ops) = &mut script[pick];
        let op = ops.remove(0);
        match &op {
            ControllerOp::Join { groups } => expected_groups.extend(groups.keys().copied()),
            ControllerOp::Leave { gids } => gids.iter().for_each(|gid| {
                expected_groups.remove(gid);
            }),
            _ => unreachable!(),
        }
        let reply = admin.change(*client, op);
        let ControllerReply::Changed { num } = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(num, last_num + 1);
        last_num = num;
        let config = admin.latest();
        assert_balanced(&config);
        assert_eq!(gids(&config), expected_groups);
    }
    assert_eq!(last_num, 25);
    assert_eq!(admin.latest().groups.len(), 10);
}

#[test]
fn a_join_moves_only_shards_to_the_new_group() {
    for shards in [1, 2, 3, 5, 10, 16, 31] {
        let mut admin = Admin::new(shards);
        admin.join(&[1]);
        for gid in 2..=8 {
            let before = admin.latest();
            admin.join(&[gid]);
            let after = admin.latest();
            assert_balanced(&after);
            let moves = moved(&before, &after);
            assert!(
                moves.values().all(|&(_, to)| to == Some(gid)),
                "{shards} shards: {moves:?}"
            );
            // Minimal: exactly the new group's share moved.
            assert_eq!(
                moves.len(),
                after.shard_counts()[&gid],
                "{shards} shards, join {gid}"
            );
        }
    }
}

#[test]
fn a_leave_moves_only_the_leaving_groups_shards() {
    for shards in [1, 2, 3, 5, 10, 16, 31] {
        let mut admin = Admin::new(shards);
        admin.join(&[1, 2, 3, 4, 5, 6, 7, 8]);
        for gid in [3, 8, 1, 5, 2, 7, 4] {
            let before = admin.latest();
            admin.leave(&[gid]);
            let after = admin.latest();
            assert_balanced(&after);
            let moves = moved(&before, &after);
            assert!(
                moves.values().all(|&(from, _)| from == Some(gid)),
                "{shards} shards: {moves:?}"
            );
            assert_eq!(
                moves.len(),
                before.shard_counts()[&gid],
                "{shards} shards, leave {gid}"
            );
        }
    }
}

#[test]
fn multi_join_and_multi_leave_move_minimally() {
    let mut admin = Admin::new(20);
    admin.join(&[1, 2]);
    let before = admin.latest();
    admin.join(&[3, 4, 5]);
    let after = admin.latest();
    assert_balanced(&after);
    let joined = BTreeSet::from([3, 4, 5]);
    let moves = moved(&before, &after);
    assert!(moves
        .values()
        .all(|(_, to)| to.is_some_and(|gid| joined.contains(&gid))));
    assert_eq!(
        moves.len(),
        joined
            .iter()
            .map(|gid| after.shard_counts()[gid])
            .sum::<usize>()
    );
    assert_eq!(moves.len(), 12);

    let before = after;
    admin.leave(&[1, 4]);
    let after = admin.latest();
    assert_balanced(&after);
    assert_eq!(gids(&after), BTreeSet::from([2, 3, 5]));
    let moves = moved(&before, &after);
    assert!(moves
        .values()
        .all(|&(from, _)| from == Some(1) || from == Some(4)));
    assert_eq!(
        moves.len(),
        before.shard_counts()[&1] + before.shard_counts()[&4]
    );
}

#[test]
fn split_makes_a_new_shard_on_the_same_group_and_a_join_counts_it() {
    let mut admin = Admin::new(8);
    admin.join(&[1, 2]);
    let before = admin.latest();
    // "k" falls in shard 6 ["g", "s") under the 8-shard pre-split.
    let old = before.shard_for_key(b"k").unwrap().clone();
    assert_eq!(
        (old.id, old.start.as_slice(), old.end.as_deref()),
        (6, &b"g"[..], Some(&b"s"[..]))
    );

    let (num, new_id) = admin.split(b"k");
    assert_eq!(num, before.num + 1);
    assert_eq!(new_id, 8, "fresh id after the pre-split ids 0..8");
    let after = admin.latest();
    after.check().unwrap();
    assert_eq!(after.shards.len(), 9);
    let lower = after.shard(6).unwrap();
    let upper = after.shard(new_id).unwrap();
    assert_eq!(
        (lower.start.as_slice(), lower.end.as_deref()),
        (&b"g"[..], Some(&b"k"[..]))
    );
    assert_eq!(
        (upper.start.as_slice(), upper.end.as_deref()),
        (&b"k"[..], Some(&b"s"[..]))
    );
    assert_eq!(upper.gid, old.gid);
    assert_eq!(lower.gid, old.gid);
    assert_eq!(after.shard_for_key(b"j").unwrap().id, 6);
    assert_eq!(after.shard_for_key(b"k").unwrap().id, new_id);
    assert_eq!(after.shard_for_key(b"k\0").unwrap().id, new_id);
    // No rebalance: nobody else changed owner; the splitting group has 5.
    assert!(moved(&before, &after).is_empty());
    assert_eq!(after.shard_counts()[&old.gid.unwrap()], 5);

    // Split the last shard (open end) too, then a join rebalances 10 shards.
    let (_, last_id) = admin.split(b"zz");
    let after = admin.latest();
    assert_eq!(after.shards.last().unwrap().id, last_id);
    assert_eq!(after.shards.last().unwrap().end, None);
    assert_eq!(
        after.shard_counts().values().copied().collect::<Vec<_>>(),
        [4, 6]
    );
    admin.join(&[3]);
    let joined = admin.latest();
    assert_balanced(&joined);
    assert_eq!(joined.shards.len(), 10);
    // 10 on 3 groups: the ceil slot stays with the most loaded group (2),
    // so only 3 shards move, all to the new group.
    assert_eq!(
        joined.shard_counts().values().copied().collect::<Vec<_>>(),
        [3, 4, 3]
    );
    let moves = moved(&after, &joined);
    assert_eq!(moves.len(), 3);
    assert!(moves.values().all(|&(_, to)| to == Some(3)));
}

#[test]
fn split_works_before_any_group_joined() {
    let mut admin = Admin::new(1);
    let (_, id) = admin.split(b"m");
    assert_eq!(id, 1);
    let config = admin.latest();
    config.check().unwrap();
    assert!(config.shards.iter().all(|shard| shard.gid.is_none()));
    admin.join(&[7, 9]);
    let config = admin.latest();
    // Unowned shards go to the joining groups in gid order, ids ascending.
    assert_eq!(config.shard(0).unwrap().gid, Some(7));
    assert_eq!(config.shard(1).unwrap().gid, Some(9));
}
