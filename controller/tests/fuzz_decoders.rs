//! Fuzz targets, as proptest suites, for the decoders of untrusted bytes in
//! the controller crate: [`controller::wire::decode`] for every type that
//! implements its `WireMessage` ([`ControllerCommand`], [`ControllerQuery`],
//! [`ControllerReply`]), the controller's RPC messages (the
//! `ShardController` tarpc service's requests and responses) through the
//! shared wire codec ([`paxos_log::net::codec::WireCodec`]), and the state
//! machine's snapshot decoder ([`ControllerStateMachine`]'s `restore`,
//! which takes a snapshot a leader sent over the network).
//!
//! Why: commands come out of the replicated log, replies from the state
//! machine, snapshots and RPC frames from the network. Whatever the bytes,
//! decoding must never panic, never allocate what a length prefix claims,
//! and fail with an error that says why.
//!
//! Properties:
//!
//! * `decode`, for every message type, on arbitrary bytes and mutated valid
//!   encodings (bit flips, truncation, bytes overwritten, inserted, removed
//!   or appended, 8-byte fields set huge): no panic; the process's peak
//!   virtual memory does not grow by anything like a claimed length;
//!   an error is `Malformed` with a reason, or `RequestTooLarge` for a
//!   command or query over `MAX_REQUEST_BYTES` (and only then). Whatever
//!   decodes re-encodes to a value that decodes to itself, and, for values
//!   without a map, to exactly the bytes decoded.
//! * Valid values round-trip: `decode(encode(x)) == x`, and `encode` writes
//!   the bytes `bincode::serialize` writes (the documented format). A huge
//!   length claimed for a key or a list is refused.
//! * RPC requests and responses round-trip through the codecs; arbitrary
//!   and mutated frames never panic and fail with `InvalidData`.
//! * Snapshots: a valid snapshot (of a machine that applied random
//!   changes) restores to an equal machine; arbitrary and mutated ones
//!   either restore a machine that then answers and applies without panic
//!   and snapshots stably, or are refused with a reason, leaving the
//!   machine unchanged.
//!
//! Failing seeds are saved to `fuzz_decoders.proptest-regressions` beside
//! this file and replayed first; a crash found here becomes a named
//! `#[test]` with its exact bytes.
//!
//! Cases default to a few seconds per target on a slow 2-core machine in a
//! dev build; to fuzz longer, set `PROPTEST_CASES`, e.g.
//! `PROPTEST_CASES=100000 cargo nextest run -p controller --test fuzz_decoders`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::time::{Duration, Instant};

use controller::error::ControllerError;
use controller::limits::MAX_REQUEST_BYTES;
use controller::rpc::{
    ControllerStatus, ServiceError, ShardControllerRequest, ShardControllerResponse,
};
use controller::wire::{
    decode, encode, ControllerCommand, ControllerOp, ControllerQuery, ControllerReply, WireMessage,
};
use controller::{Configuration, ControllerStateMachine, Shard};
use fuzz_support::{bounded, config, mutated, mutations};
use paxos_log::net::codec::WireCodec;
use paxos_log::{NetLimits, StateMachine};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

// ---------------------------------------------------------------------------
// Values.
// ---------------------------------------------------------------------------

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn number() -> impl Strategy<Value = u64> {
    prop_oneof![3 => 0u64..16, 1 => any::<u64>()]
}

fn addresses() -> impl Strategy<Value = Vec<String>> {
    vec("[a-z0-9.:]{0,12}", 0..3)
}

fn groups() -> impl Strategy<Value = BTreeMap<u64, Vec<String>>> {
    proptest::collection::btree_map(number(), addresses(), 0..3)
}

fn op() -> impl Strategy<Value = ControllerOp> {
    prop_oneof![
        groups().prop_map(|groups| ControllerOp::Join { groups }),
        vec(number(), 0..3).prop_map(|gids| ControllerOp::Leave { gids }),
        (number(), number()).prop_map(|(shard, gid)| ControllerOp::Move { shard, gid }),
        bytes(12).prop_map(|key| ControllerOp::Split { key }),
        (number(), addresses())
            .prop_map(|(gid, addresses)| ControllerOp::SetAddresses { gid, addresses }),
    ]
}

fn command() -> impl Strategy<Value = ControllerCommand> {
    (number(), number(), op()).prop_map(|(client_id, seq, op)| ControllerCommand::Change {
        client_id,
        seq,
        op,
    })
}

fn query() -> impl Strategy<Value = ControllerQuery> {
    proptest::option::of(number()).prop_map(|num| ControllerQuery::Config { num })
}

fn configuration() -> impl Strategy<Value = Configuration> {
    let shard = (
        number(),
        bytes(8),
        proptest::option::of(bytes(8)),
        proptest::option::of(number()),
    )
        .prop_map(|(id, start, end, gid)| Shard {
            id,
            start,
            end,
            gid,
        });
    (number(), groups(), vec(shard, 0..4)).prop_map(|(num, groups, shards)| Configuration {
        num,
        groups,
        shards,
    })
}

fn controller_error() -> impl Strategy<Value = ControllerError> {
    let size = || 0usize..1 << 20;
    prop_oneof![
        Just(ControllerError::EmptyRequest),
        Just(ControllerError::ReservedGid),
        number().prop_map(|gid| ControllerError::GroupExists { gid }),
        number().prop_map(|gid| ControllerError::UnknownGroup { gid }),
        number().prop_map(|shard| ControllerError::SplitAtBoundary { shard }),
        (number(), "[a-z:0-9]{0,12}")
            .prop_map(|(gid, address)| ControllerError::DuplicateAddress { gid, address }),
        (number(), size(), size())
            .prop_map(|(gid, count, max)| ControllerError::TooManyAddresses { gid, count, max }),
        (size(), size()).prop_map(|(len_bytes, max_bytes)| ControllerError::KeyTooLong {
            len_bytes,
            max_bytes
        }),
        (any::<u32>(), any::<u32>())
            .prop_map(|(count, max)| ControllerError::InvalidInitialShards { count, max }),
        (number(), number(), number()).prop_map(|(client_id, seq, last_seq)| {
            ControllerError::StaleSeq {
                client_id,
                seq,
                last_seq,
            }
        }),
        (size(), size()).prop_map(|(len_bytes, max_bytes)| ControllerError::RequestTooLarge {
            len_bytes,
            max_bytes
        }),
        ".{0,16}".prop_map(|reason| ControllerError::Malformed { reason }),
    ]
}

fn reply() -> impl Strategy<Value = ControllerReply> {
    prop_oneof![
        number().prop_map(|num| ControllerReply::Changed { num }),
        (number(), number()).prop_map(|(num, shard)| ControllerReply::Split { num, shard }),
        configuration().prop_map(ControllerReply::Config),
        controller_error().prop_map(ControllerReply::Error),
    ]
}

/// A value of any type `decode` handles.
#[derive(Debug, Clone)]
enum Message {
    Command(ControllerCommand),
    Query(ControllerQuery),
    Reply(ControllerReply),
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        2 => command().prop_map(Message::Command),
        1 => query().prop_map(Message::Query),
        2 => reply().prop_map(Message::Reply),
    ]
}

// ---------------------------------------------------------------------------
// Checks.
// ---------------------------------------------------------------------------

/// Whether a value's encoding is the only one that decodes to it: a
/// `BTreeMap` (joining groups, a configuration's groups) also decodes from
/// keys out of order or repeated, which re-encode sorted and once.
trait Canonical {
    fn canonical(&self) -> bool;
}

impl Canonical for ControllerCommand {
    fn canonical(&self) -> bool {
        !matches!(
            self,
            ControllerCommand::Change {
                op: ControllerOp::Join { .. },
                ..
            }
        )
    }
}

impl Canonical for ControllerQuery {
    fn canonical(&self) -> bool {
        true
    }
}

impl Canonical for ControllerReply {
    fn canonical(&self) -> bool {
        !matches!(self, ControllerReply::Config(_))
    }
}

/// `decode::<T>(bytes)`: no panic, bounded; `RequestTooLarge`
/// exactly when the input is over `T::MAX_BYTES`, else `Malformed` with a
/// reason, or a value that re-encodes stably (to `bytes` exactly if the
/// value has one encoding only).
fn check_decode<T>(bytes: &[u8]) -> Result<Option<T>, TestCaseError>
where
    T: WireMessage + Canonical + PartialEq + Debug + Clone,
{
    let result = bounded(|| decode::<T>(bytes))?;
    if bytes.len() > T::MAX_BYTES {
        prop_assert_eq!(
            result,
            Err(ControllerError::RequestTooLarge {
                len_bytes: bytes.len(),
                max_bytes: T::MAX_BYTES
            })
        );
        return Ok(None);
    }
    match result {
        Ok(value) => {
            let again = encode(&value);
            prop_assert_eq!(
                decode::<T>(&again),
                Ok(value.clone()),
                "unstable re-encoding"
            );
            if value.canonical() {
                prop_assert_eq!(
                    &again[..],
                    bytes,
                    "bytes ignored or reinterpreted: {:?}",
                    value
                );
            }
            Ok(Some(value))
        }
        Err(ControllerError::Malformed { reason }) => {
            prop_assert!(!reason.is_empty(), "an error without a reason");
            Ok(None)
        }
        Err(other) => Err(TestCaseError::fail(format!("not Malformed: {other:?}"))),
    }
}

fn check_decode_all(bytes: &[u8]) -> Result<(), TestCaseError> {
    check_decode::<ControllerCommand>(bytes)?;
    check_decode::<ControllerQuery>(bytes)?;
    check_decode::<ControllerReply>(bytes)?;
    Ok(())
}

/// `decode(encode(x)) == x`, and `encode` is `bincode::serialize`.
fn check_round_trip<T>(value: &T) -> Result<Vec<u8>, TestCaseError>
where
    T: WireMessage + PartialEq + Debug + Clone,
{
    let bytes = encode(value);
    prop_assert_eq!(
        &bytes,
        &bincode::serialize(value).expect("encodes"),
        "not the documented encoding"
    );
    prop_assert_eq!(decode::<T>(&bytes), Ok(value.clone()));
    Ok(bytes)
}

impl Message {
    fn round_trip(&self) -> Result<Vec<u8>, TestCaseError> {
        match self {
            Message::Command(value) => check_round_trip(value),
            Message::Query(value) => check_round_trip(value),
            Message::Reply(value) => check_round_trip(value),
        }
    }
}

/// Replaces the 8-byte little-endian length prefix `len` that directly
/// precedes `following` in a fixed-width bincode encoding with `claim`.
/// `None` if no such prefix is found.
fn claim_length(bytes: &[u8], len: u64, following: &[u8], claim: u64) -> Option<Vec<u8>> {
    let prefix = len.to_le_bytes();
    let at = (0..bytes.len().saturating_sub(7))
        .find(|&at| bytes[at..at + 8] == prefix && bytes[at + 8..].starts_with(following))?;
    let mut claimed = bytes.to_vec();
    claimed[at..at + 8].copy_from_slice(&claim.to_le_bytes());
    Some(claimed)
}

proptest! {
    #![proptest_config(config(4096))]

    /// Arbitrary bytes, decoded as every message type.
    #[test]
    fn wire_decodes_arbitrary_bytes_without_panic(
        bytes in prop_oneof![
            bytes(160),
            // A plausible start (a small variant index), then anything.
            (0u32..5, bytes(160)).prop_map(|(variant, tail)| {
                let mut bytes = variant.to_le_bytes().to_vec();
                bytes.extend(tail);
                bytes
            }),
        ],
    ) {
        check_decode_all(&bytes)?;
    }

    /// Valid values round-trip.
    #[test]
    fn wire_round_trips_every_message_type(message in message()) {
        message.round_trip()?;
    }

    /// Valid encodings, mutated, decoded as every message type.
    #[test]
    fn wire_decodes_mutated_messages_without_panic(
        message in message(),
        mutations in mutations(),
    ) {
        let bytes = message.round_trip()?;
        check_decode_all(&mutated(&bytes, &mutations))?;
    }

    /// A huge length claimed for a split key, a list of gids or a
    /// configuration's shards: refused.
    #[test]
    fn wire_refuses_huge_length_prefixes(
        key in bytes(8),
        claim in prop_oneof![Just(u64::MAX), (1u64 << 16)..=u64::MAX],
        which in 0usize..3,
    ) {
        // Distinctive contents, so their length prefixes are found.
        let key = [b"SPLIT-KEY-".as_slice(), &key].concat();
        let shard = Shard { id: 3, start: key.clone(), end: None, gid: Some(1) };
        let (bytes, len, following) = match which {
            0 => (
                encode(&ControllerCommand::Change { client_id: 1, seq: 2, op: ControllerOp::Split { key: key.clone() } }),
                u64::try_from(key.len()).expect("small"),
                key.clone(),
            ),
            1 => (
                encode(&ControllerCommand::Change { client_id: 1, seq: 2, op: ControllerOp::Leave { gids: vec![0x0123_4567_89ab_cdef] } }),
                1,
                0x0123_4567_89ab_cdef_u64.to_le_bytes().to_vec(),
            ),
            _ => (
                encode(&ControllerReply::Config(Configuration { num: 1, groups: BTreeMap::new(), shards: vec![shard.clone()] })),
                1,
                bincode::serialize(&shard).expect("encodes"),
            ),
        };
        let claimed = claim_length(&bytes, len, &following, claim).expect("the length prefix is found");
        prop_assert_ne!(&claimed, &bytes);
        prop_assert!(check_decode::<ControllerCommand>(&claimed)?.is_none(), "decoded as a command");
        prop_assert!(check_decode::<ControllerReply>(&claimed)?.is_none(), "decoded as a reply");
    }

    /// Commands and queries over the request limit are refused before
    /// decoding, whatever they hold; replies have no limit but the input.
    #[test]
    fn wire_refuses_oversized_requests(
        extra in 1usize..64,
        fill in any::<u8>(),
        message in message(),
    ) {
        let mut bytes = message.round_trip()?;
        bytes.resize(MAX_REQUEST_BYTES + extra, fill);
        check_decode_all(&bytes)?;
    }
}

// ---------------------------------------------------------------------------
// RPC messages (the `ShardController` service).
// ---------------------------------------------------------------------------

fn limits() -> NetLimits {
    NetLimits {
        max_frame_bytes: 1 << 20,
        ..NetLimits::default()
    }
}

type Request = tarpc::ClientMessage<ShardControllerRequest>;
type Response = tarpc::Response<ShardControllerResponse>;

fn server_decode(bytes: &[u8]) -> io::Result<Request> {
    WireCodec::server(&limits()).decode(bytes)
}

fn client_decode(bytes: &[u8]) -> io::Result<Response> {
    WireCodec::client(&limits()).decode(bytes)
}

fn encode_request(message: ShardControllerRequest) -> Vec<u8> {
    let mut context = tarpc::context::current();
    context.deadline = Instant::now() + Duration::from_secs(5);
    let request = tarpc::ClientMessage::Request(tarpc::Request {
        context,
        id: 11,
        message,
    });
    WireCodec::client(&limits())
        .encode(&request)
        .expect("a request encodes")
}

fn encode_response(message: ShardControllerResponse) -> Vec<u8> {
    let response = tarpc::Response {
        request_id: 11,
        message: Ok(message),
    };
    WireCodec::server(&limits())
        .encode(&response)
        .expect("a response encodes")
}

fn check_codec<T>(
    decoded: Result<io::Result<T>, TestCaseError>,
) -> Result<Option<T>, TestCaseError> {
    match decoded? {
        Ok(value) => Ok(Some(value)),
        Err(error) => {
            prop_assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{}", error);
            Ok(None)
        }
    }
}

/// A `ShardControllerRequest` to build (tarpc's generated type is not
/// `Clone`, which proptest needs of generated values).
#[derive(Debug, Clone)]
enum RequestSpec {
    Change(u64, u64, ControllerOp),
    Query(Option<u64>),
    Status,
}

impl RequestSpec {
    fn build(&self) -> ShardControllerRequest {
        match self.clone() {
            RequestSpec::Change(client_id, seq, op) => {
                ShardControllerRequest::Change { client_id, seq, op }
            }
            RequestSpec::Query(num) => ShardControllerRequest::Query { num },
            RequestSpec::Status => ShardControllerRequest::Status {},
        }
    }
}

fn request() -> impl Strategy<Value = RequestSpec> {
    prop_oneof![
        (number(), number(), op())
            .prop_map(|(client_id, seq, op)| RequestSpec::Change(client_id, seq, op)),
        proptest::option::of(number()).prop_map(RequestSpec::Query),
        Just(RequestSpec::Status),
    ]
}

/// A `ShardControllerResponse` to build.
#[derive(Debug, Clone)]
enum ResponseSpec {
    Change(Result<ControllerReply, ServiceError>),
    Query(Result<Configuration, ServiceError>),
    Status(ControllerStatus),
}

impl ResponseSpec {
    fn build(&self) -> ShardControllerResponse {
        match self.clone() {
            ResponseSpec::Change(answer) => ShardControllerResponse::Change(answer),
            ResponseSpec::Query(answer) => ShardControllerResponse::Query(answer),
            ResponseSpec::Status(status) => ShardControllerResponse::Status(status),
        }
    }
}

fn service_error() -> impl Strategy<Value = ServiceError> {
    prop_oneof![
        proptest::option::of(".{0,12}")
            .prop_map(|leader_hint| ServiceError::NotLeader { leader_hint }),
        Just(ServiceError::Busy),
        ".{0,12}".prop_map(ServiceError::Indeterminate),
        Just(ServiceError::Stopped),
        controller_error().prop_map(ServiceError::Controller),
    ]
}

fn response() -> impl Strategy<Value = ResponseSpec> {
    let status = (
        number(),
        ".{0,8}",
        proptest::option::of(number()),
        number(),
        number(),
    )
        .prop_map(
            |(node_id, role, leader_hint, applied_slot, num)| ControllerStatus {
                node_id,
                role,
                leader_hint,
                applied_slot,
                num,
            },
        );
    prop_oneof![
        prop_oneof![reply().prop_map(Ok), service_error().prop_map(Err)]
            .prop_map(ResponseSpec::Change),
        prop_oneof![configuration().prop_map(Ok), service_error().prop_map(Err)]
            .prop_map(ResponseSpec::Query),
        status.prop_map(ResponseSpec::Status),
    ]
}

proptest! {
    #![proptest_config(config(4096))]

    /// Arbitrary frame bodies: no panic, bounded, `InvalidData` on
    /// failure, on the server (requests) and the client (responses).
    #[test]
    fn rpc_decodes_arbitrary_frames_without_panic(
        bytes in prop_oneof![
            bytes(160),
            // Past the request's header (variant, a short deadline).
            bytes(160).prop_map(|tail| [vec![0, 5, 0], tail].concat()),
        ],
    ) {
        check_codec(bounded(|| server_decode(&bytes)))?;
        check_codec(bounded(|| client_decode(&bytes)))?;
    }

    /// Every request and response round-trips through the codecs (compared
    /// through `Debug`: tarpc's generated types have no `PartialEq`), and
    /// its encoding, mutated, decodes or fails without panic.
    #[test]
    fn rpc_round_trips_and_survives_mutation(
        request in request(),
        response in response(),
        mutations in mutations(),
    ) {
        let request = request.build();
        let sent = format!("{request:?}");
        let bytes = encode_request(request);
        match check_codec(bounded(|| server_decode(&bytes)))? {
            Some(tarpc::ClientMessage::Request(decoded)) => {
                prop_assert_eq!(decoded.id, 11);
                prop_assert_eq!(format!("{:?}", decoded.message), sent);
            }
            other => return Err(TestCaseError::fail(format!("decoded {other:?}"))),
        }
        check_codec(bounded(|| server_decode(&mutated(&bytes, &mutations))))?;

        let response = response.build();
        let sent = format!("{response:?}");
        let bytes = encode_response(response);
        match check_codec(bounded(|| client_decode(&bytes)))? {
            Some(decoded) => {
                prop_assert_eq!(decoded.request_id, 11);
                let message = decoded.message.map_err(|error| error.to_string());
                prop_assert_eq!(message.map(|message| format!("{message:?}")), Ok(sent));
            }
            None => return Err(TestCaseError::fail("a valid response did not decode")),
        }
        check_codec(bounded(|| client_decode(&mutated(&bytes, &mutations))))?;
    }
}

// ---------------------------------------------------------------------------
// State machine snapshots.
// ---------------------------------------------------------------------------

/// Changes that a controller mostly accepts: small gids and shards, a few
/// addresses, split keys.
fn plausible_op() -> impl Strategy<Value = ControllerOp> {
    let gid = 1u64..6;
    let addresses = vec("[a-z]{1,4}:[0-9]{1,4}", 1..3);
    prop_oneof![
        3 => proptest::collection::btree_map(gid.clone(), addresses.clone(), 1..3)
            .prop_map(|groups| ControllerOp::Join { groups }),
        1 => vec(gid.clone(), 1..2).prop_map(|gids| ControllerOp::Leave { gids }),
        1 => (0u64..8, gid.clone()).prop_map(|(shard, gid)| ControllerOp::Move { shard, gid }),
        2 => bytes(6).prop_map(|key| ControllerOp::Split { key }),
        1 => (gid, addresses)
            .prop_map(|(gid, addresses)| ControllerOp::SetAddresses { gid, addresses }),
    ]
}

/// A machine after applying `ops` (as commands of clients 1 to 3) from
/// slot 1 on.
fn machine_after(initial_shards: u32, ops: &[ControllerOp]) -> ControllerStateMachine {
    let mut machine = ControllerStateMachine::new(initial_shards).expect("valid initial shards");
    for (slot, op) in (1u64..).zip(ops) {
        let command = ControllerCommand::Change {
            client_id: slot % 3 + 1,
            seq: slot,
            op: op.clone(),
        };
        machine.apply(slot, &encode(&command));
    }
    machine
}

/// Restores `snapshot` into a copy of `machine`: no panic, bounded;
/// a refusal says why and leaves the machine unchanged; a restored machine
/// answers queries, applies commands, and snapshots stably.
fn check_restore(
    machine: &ControllerStateMachine,
    snapshot: &[u8],
) -> Result<Option<ControllerStateMachine>, TestCaseError> {
    let mut restored = machine.clone();
    match bounded(|| restored.restore(7, snapshot))? {
        Err(reason) => {
            prop_assert!(!reason.is_empty());
            prop_assert_eq!(&restored, machine, "a refused snapshot changed the machine");
            Ok(None)
        }
        Ok(()) => {
            let again = restored.snapshot().expect("a restored machine snapshots");
            let mut twice = machine.clone();
            prop_assert_eq!(twice.restore(8, &again), Ok(()));
            prop_assert_eq!(
                &twice,
                &restored,
                "the snapshot of a restored machine differs"
            );
            let mut probe = restored.clone();
            let answer = probe.read(&encode(&ControllerQuery::Config { num: None }));
            prop_assert!(matches!(
                decode::<ControllerReply>(&answer),
                Ok(ControllerReply::Config(_))
            ));
            let command = ControllerCommand::Change {
                client_id: 99,
                seq: 1,
                op: ControllerOp::Join {
                    groups: BTreeMap::from([(9, vec!["x:1".to_string()])]),
                },
            };
            let reply = probe.apply(100, &encode(&command));
            prop_assert!(decode::<ControllerReply>(&reply).is_ok());
            Ok(Some(restored))
        }
    }
}

proptest! {
    #![proptest_config(config(4096))]

    /// A valid snapshot restores to an equal machine; mutated, it restores
    /// a working machine or is refused without a change.
    #[test]
    fn snapshot_restores_or_is_refused_without_a_change(
        initial_shards in 1u32..6,
        ops in vec(plausible_op(), 0..8),
        mutations in mutations(),
    ) {
        let mut original = machine_after(initial_shards, &ops);
        let snapshot = original.snapshot().expect("a snapshot");
        let fresh = ControllerStateMachine::new(initial_shards).expect("valid initial shards");
        let restored = check_restore(&fresh, &snapshot)?.expect("a valid snapshot restores");
        prop_assert_eq!(&restored, &original);
        check_restore(&fresh, &mutated(&snapshot, &mutations))?;
    }

    /// Arbitrary bytes, with and without the version byte.
    #[test]
    fn snapshot_of_arbitrary_bytes_is_refused_or_works(
        body in bytes(160),
        versioned in any::<bool>(),
    ) {
        let mut snapshot = Vec::new();
        if versioned {
            snapshot.push(controller::SNAPSHOT_VERSION);
        }
        snapshot.extend(body);
        let fresh = ControllerStateMachine::new(2).expect("valid initial shards");
        check_restore(&fresh, &snapshot)?;
    }
}
