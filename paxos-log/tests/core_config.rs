//! Engine tests of `Config::validate` (and `Replica::new`, which runs it).
//!
//! Goal: every setting that cannot work is refused before a replica
//! starts, with a message that names the setting so an operator can fix
//! it: an empty member list or one with a node twice, a zero
//! heartbeat interval or bound, election timeouts not above the heartbeat
//! interval (a leader would be deposed between two heartbeats) or an empty
//! timeout range.
//!
//! Method: start from the default configuration (valid), break ONE setting,
//! and check the error text.

mod common;

use common::*;
use paxos_log::{Config, ConfigError, RecoveredState, Replica};

#[track_caller]
fn assert_rejected(edit: impl FnOnce(&mut Config), names: &[&str]) {
    let mut config = config(1, 3);
    edit(&mut config);
    let Err(ConfigError(message)) = config.validate() else {
        panic!("accepted a configuration that breaks {names:?}");
    };
    for name in names {
        assert!(
            message.contains(name),
            "error {message:?} does not name {name:?}"
        );
    }
    // `Replica::new` refuses it with the same error.
    let error = Replica::new(config, RecoveredState::default(), 0).unwrap_err();
    assert_eq!(error, ConfigError(message));
}

#[test]
fn default_configuration_is_valid() {
    assert_eq!(config(1, 3).validate(), Ok(()));
    assert_eq!(Config::new(n(7), vec![n(7)]).validate(), Ok(()));
}

#[test]
fn a_replica_outside_the_genesis_members_is_valid() {
    // A replica added by a membership change starts with the group's
    // genesis members, which do not include it.
    let mut config = config(4, 3);
    config.node_id = n(4);
    assert_eq!(config.validate(), Ok(()));
}

#[test]
fn members_must_not_be_empty() {
    assert_rejected(|c| c.members = vec![], &["members", "at least one"]);
}

#[test]
fn members_must_not_repeat_a_node() {
    assert_rejected(
        |c| c.members = vec![n(1), n(2), n(1)],
        &["members", "twice"],
    );
}

#[test]
fn node_id_zero_is_reserved() {
    assert_rejected(|c| c.node_id = n(0), &["node_id", "reserved"]);
    assert_rejected(|c| c.members = vec![n(0), n(1)], &["members", "reserved"]);
}

#[test]
fn heartbeat_interval_must_be_positive() {
    assert_rejected(
        |c| c.heartbeat_interval_ticks = 0,
        &["heartbeat_interval_ticks", "positive"],
    );
}

#[test]
fn election_timeout_min_must_exceed_twice_the_heartbeat_interval() {
    assert_rejected(
        |c| {
            c.heartbeat_interval_ticks = 5;
            c.election_timeout_ticks_min = 10;
        },
        &["election_timeout_ticks_min", "heartbeat_interval_ticks"],
    );
    assert_rejected(
        |c| c.election_timeout_ticks_min = 1,
        &["election_timeout_ticks_min"],
    );
    let mut edge = config(1, 3);
    edge.heartbeat_interval_ticks = 5;
    edge.election_timeout_ticks_min = 11;
    assert_eq!(edge.validate(), Ok(()));
}

#[test]
fn election_timeout_max_must_exceed_min() {
    assert_rejected(
        |c| c.election_timeout_ticks_max = c.election_timeout_ticks_min,
        &["election_timeout_ticks_max", "election_timeout_ticks_min"],
    );
    assert_rejected(
        |c| c.election_timeout_ticks_max = 0,
        &["election_timeout_ticks_max"],
    );
}

type Edit = fn(&mut Config);

const ZERO_BOUNDS: [(&str, Edit); 6] = [
    ("inflight_slots_max", |c| c.inflight_slots_max = 0),
    ("batch_commands_max", |c| c.batch_commands_max = 0),
    ("batch_bytes_max", |c| c.batch_bytes_max = 0),
    ("pending_commands_max", |c| c.pending_commands_max = 0),
    ("message_slots_max", |c| c.message_slots_max = 0),
    ("reconfig_window_slots", |c| c.reconfig_window_slots = 0),
];

#[test]
fn every_zero_bound_is_rejected() {
    for (name, edit) in ZERO_BOUNDS {
        assert_rejected(edit, &[name, "must be positive"]);
    }
}

#[test]
fn error_text_says_it_is_a_configuration_error() {
    let mut config = config(1, 3);
    config.members.push(n(2));
    assert_eq!(
        config.validate().unwrap_err().to_string(),
        "invalid paxos-log configuration: members (the genesis configuration): a configuration \
         must not name a member twice"
    );
}
