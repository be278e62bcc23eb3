//! At-most-once execution of retried admin changes.

mod common;

use common::{addresses, Admin};
use controller::limits::MAX_SESSIONS;
use controller::{ControllerError, ControllerOp, ControllerReply};

fn join_op(gid: u64) -> ControllerOp {
    ControllerOp::Join {
        groups: [(gid, addresses(gid))].into(),
    }
}

#[test]
fn a_retried_join_gets_the_stored_reply_and_creates_nothing() {
    let mut admin = Admin::new(4);
    let first = admin.send(7, 1, join_op(1));
    assert_eq!(first, ControllerReply::Changed { num: 1 });
    let config = admin.latest();

    // The reply was lost; the client retries the same (client, seq). Applied
    // again it would be "group exists" and, worse, a second configuration.
    let retry = admin.send(7, 1, join_op(1));
    assert_eq!(retry, first);
    assert_eq!(admin.latest(), config);
    assert_eq!(admin.sm.controller().latest_num(), 1);
}

#[test]
fn a_retried_split_returns_the_same_new_shard() {
    let mut admin = Admin::new(1);
    let first = admin.send(3, 10, ControllerOp::Split { key: b"m".to_vec() });
    assert_eq!(first, ControllerReply::Split { num: 1, shard: 1 });
    let retry = admin.send(3, 10, ControllerOp::Split { key: b"m".to_vec() });
    assert_eq!(retry, first);
    assert_eq!(admin.latest().shards.len(), 2);
    assert_eq!(admin.sm.controller().latest_num(), 1);
}

#[test]
fn a_retry_of_a_refused_request_gets_the_same_refusal() {
    let mut admin = Admin::new(4);
    let refused = admin.send(5, 1, join_op(0));
    assert_eq!(
        refused,
        ControllerReply::Error(ControllerError::ReservedGid)
    );
    assert_eq!(admin.send(5, 1, join_op(0)), refused);
    assert_eq!(admin.sm.controller().latest_num(), 0);
}

#[test]
fn an_older_seq_is_refused_and_not_applied() {
    let mut admin = Admin::new(4);
    assert_eq!(
        admin.send(9, 5, join_op(1)),
        ControllerReply::Changed { num: 1 }
    );
    assert_eq!(
        admin.send(9, 6, join_op(2)),
        ControllerReply::Changed { num: 2 }
    );
    // A delayed copy of a request older than the last one.
    let stale = admin.send(9, 4, join_op(3));
    assert_eq!(
        stale,
        ControllerReply::Error(ControllerError::StaleSeq {
            client_id: 9,
            seq: 4,
            last_seq: 6
        })
    );
    assert!(!admin.latest().groups.contains_key(&3));
    assert_eq!(admin.sm.controller().latest_num(), 2);
    // The stale request did not disturb the session: seq 6 still dedupes.
    assert_eq!(
        admin.send(9, 6, join_op(2)),
        ControllerReply::Changed { num: 2 }
    );
    assert_eq!(admin.sm.sessions().get(9).map(|s| s.seq), Some(6));
}

#[test]
fn sessions_are_per_client_and_seqs_may_skip() {
    let mut admin = Admin::new(4);
    assert_eq!(
        admin.send(1, 100, join_op(1)),
        ControllerReply::Changed { num: 1 }
    );
    // Another client's seq 1 is a new request, not a stale one.
    assert_eq!(
        admin.send(2, 1, join_op(2)),
        ControllerReply::Changed { num: 2 }
    );
    // Gaps are fine.
    assert_eq!(
        admin.send(1, 250, join_op(3)),
        ControllerReply::Changed { num: 3 }
    );
    assert_eq!(admin.sm.sessions().len(), 2);
}

#[test]
fn queries_need_no_session() {
    let mut admin = Admin::new(4);
    admin.join(&[1]);
    let config = admin.query(Some(0));
    assert_eq!(config.num, 0);
    assert_eq!(admin.sm.sessions().len(), 1, "only the joining client");
}

#[test]
fn the_table_is_bounded_and_an_evicted_client_is_applied_again() {
    let mut admin = Admin::new(4);
    assert_eq!(
        admin.send(0, 1, join_op(1)),
        ControllerReply::Changed { num: 1 }
    );
    // MAX_SESSIONS other clients each make a (refused) request later.
    for client in 1..=MAX_SESSIONS as u64 {
        admin.send(client, 1, ControllerOp::Leave { gids: vec![] });
    }
    assert_eq!(admin.sm.sessions().len(), MAX_SESSIONS);
    assert!(
        admin.sm.sessions().get(0).is_none(),
        "client 0 was least recently used"
    );
    // Documented hazard: its retry is now new, so it is applied again (and
    // here refused, since group 1 exists).
    assert_eq!(
        admin.send(0, 1, join_op(1)),
        ControllerReply::Error(ControllerError::GroupExists { gid: 1 })
    );
    assert_eq!(admin.sm.controller().latest_num(), 1);
}
