//! Fuzz targets, as proptest suites, for the decoders of untrusted bytes in
//! the shardkv crate: [`shardkv::wire::decode`] for every type that
//! implements its `WireMessage` ([`Command`], [`ReadOp`], and the
//! [`Outcome`]s the group answers with: `Outcome<WriteReply>`,
//! `Outcome<ReadReply>`, `Outcome<bool>`), and the group's RPC messages
//! (the `ShardKv` tarpc service's requests and responses, migration and
//! export included) through the shared wire codec
//! ([`paxos_log::net::codec::WireCodec`]).
//!
//! Why: commands come out of the replicated log, answers from the state
//! machine, RPC frames from any process that can reach a replica's client
//! port. Whatever the bytes, decoding must never panic, never allocate what
//! a length prefix claims, and fail with an error that says why.
//!
//! Properties, for every message type:
//!
//! * Arbitrary bytes and mutated valid encodings (bit flips, truncation,
//!   bytes overwritten, inserted, removed or appended, 8-byte fields set
//!   huge): no panic; the process's peak virtual memory does not
//!   grow by anything like a claimed length; an error is
//!   `KvError::Malformed` with a reason (for RPC frames, `InvalidData`).
//! * Whatever decodes re-encodes to a value that decodes to itself, and,
//!   for every type without a map, to exactly the bytes decoded (no byte
//!   ignored, trailing bytes refused).
//! * Valid values round-trip: `decode(encode(x)) == x`, and `encode` writes
//!   the bytes `bincode::serialize` writes (the documented format). RPC
//!   requests and responses round-trip through the codecs.
//! * A length prefix claiming a huge `Vec` (a key, a value, the records of
//!   a chunk, the shards of a configuration) is refused.
//!
//! Failing seeds are saved to `fuzz_decoders.proptest-regressions` beside
//! this file and replayed first; a crash found here becomes a named
//! `#[test]` with its exact bytes.
//!
//! Cases default to a few seconds per target on a slow 2-core machine in a
//! dev build; to fuzz longer, set `PROPTEST_CASES`, e.g.
//! `PROPTEST_CASES=100000 cargo nextest run -p shardkv --test fuzz_decoders`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::time::{Duration, Instant};

use controller::{Configuration, Shard};
use fuzz_support::{bounded, config, mutated, mutations};
use paxos_log::net::codec::WireCodec;
use paxos_log::NetLimits;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use shardkv::export::{ExportBegin, ExportChunk, ExportImage};
use shardkv::limits::ApplyLimits;
use shardkv::rpc::{
    PeerAddrs, PullReply, ReplicaStatus, ServiceError, ShardKvRequest, ShardKvResponse, ShardReport,
};
use shardkv::wire::{
    decode, encode, Command, Cursor, Outcome, ReadOp, ReadReply, Record, RecordSpace, WireMessage,
    WriteOp, WriteReply,
};
use shardkv::KvError;

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

// ---------------------------------------------------------------------------
// Values.
// ---------------------------------------------------------------------------

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn number() -> impl Strategy<Value = u64> {
    prop_oneof![3 => 0u64..64, 1 => any::<u64>()]
}

fn write_op() -> impl Strategy<Value = WriteOp> {
    prop_oneof![
        (bytes(16), bytes(24)).prop_map(|(key, value)| WriteOp::Put { key, value }),
        (bytes(16), bytes(24)).prop_map(|(key, value)| WriteOp::Append { key, value }),
        bytes(16).prop_map(|key| WriteOp::Delete { key }),
        (bytes(16), proptest::option::of(bytes(24)), bytes(24))
            .prop_map(|(key, expected, new)| WriteOp::Cas { key, expected, new }),
        (bytes(16), bytes(24)).prop_map(|(key, value)| WriteOp::PutHash { key, value }),
    ]
}

fn write_reply() -> impl Strategy<Value = WriteReply> {
    prop_oneof![
        Just(WriteReply::Done),
        (any::<bool>(), proptest::option::of(bytes(24)))
            .prop_map(|(swapped, current)| WriteReply::Cas { swapped, current }),
        proptest::option::of(bytes(24)).prop_map(WriteReply::Previous),
    ]
}

fn read_op() -> impl Strategy<Value = ReadOp> {
    prop_oneof![
        bytes(16).prop_map(|key| ReadOp::Get { key }),
        (bytes(16), proptest::option::of(bytes(16)), any::<u32>())
            .prop_map(|(start, end, limit)| ReadOp::Scan { start, end, limit }),
    ]
}

fn read_reply() -> impl Strategy<Value = ReadReply> {
    prop_oneof![
        proptest::option::of(bytes(24)).prop_map(ReadReply::Value),
        (
            vec((bytes(12), bytes(16)), 0..4),
            proptest::option::of(bytes(12))
        )
            .prop_map(|(items, resume)| ReadReply::Items { items, resume }),
    ]
}

fn space() -> impl Strategy<Value = RecordSpace> {
    prop_oneof![Just(RecordSpace::Data), Just(RecordSpace::Aux)]
}

fn cursor() -> impl Strategy<Value = Cursor> {
    (space(), bytes(12)).prop_map(|(space, key)| Cursor { space, key })
}

fn record() -> impl Strategy<Value = Record> {
    (space(), bytes(12), bytes(16)).prop_map(|(space, key, value)| Record { space, key, value })
}

fn apply_limits() -> impl Strategy<Value = ApplyLimits> {
    (number(), number(), number(), number()).prop_map(
        |(value_bytes_max, sessions_per_shard_max, session_ttl_ms, request_max_age_ms)| {
            ApplyLimits {
                value_bytes_max,
                sessions_per_shard_max,
                session_ttl_ms,
                request_max_age_ms,
            }
        },
    )
}

fn configuration() -> impl Strategy<Value = Configuration> {
    let groups = proptest::collection::btree_map(number(), vec(".{0,12}", 0..3), 0..3);
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
    (number(), groups, vec(shard, 0..4)).prop_map(|(num, groups, shards)| Configuration {
        num,
        groups,
        shards,
    })
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (number(), number(), number(), apply_limits(), write_op()).prop_map(
            |(client_id, seq, stamp_ms, limits, op)| Command::Write {
                client_id,
                seq,
                stamp_ms,
                limits,
                op,
            }
        ),
        configuration().prop_map(|config| Command::InstallConfig { config }),
        (
            number(),
            number(),
            proptest::option::of(cursor()),
            vec(record(), 0..4),
            any::<bool>()
        )
            .prop_map(|(shard, num, after, records, done)| Command::InstallChunk {
                shard,
                num,
                after,
                records,
                done,
            }),
        (number(), number()).prop_map(|(shard, num)| Command::DeleteShard { shard, num }),
        (number(), number()).prop_map(|(shard, num)| Command::GcDone { shard, num }),
    ]
}

fn kv_error() -> impl Strategy<Value = KvError> {
    prop_oneof![
        number().prop_map(|num| KvError::WrongGroup { num }),
        (0usize..1 << 20, 0usize..1 << 20).prop_map(|(len_bytes, max_bytes)| {
            KvError::KeyTooLarge {
                len_bytes,
                max_bytes,
            }
        }),
        (number(), number()).prop_map(|(len_bytes, max_bytes)| KvError::ValueTooLarge {
            len_bytes,
            max_bytes
        }),
        Just(KvError::EmptyRange),
        (number(), number(), number()).prop_map(|(client_id, seq, last_seq)| {
            KvError::StaleRequest {
                client_id,
                seq,
                last_seq,
            }
        }),
        number().prop_map(|client_id| KvError::SessionExpired { client_id }),
        (number(), number()).prop_map(|(shard, max)| KvError::TooManySessions { shard, max }),
        ".{0,16}".prop_map(|reason| KvError::Malformed { reason }),
    ]
}

fn outcome<T: Debug + Clone>(inner: impl Strategy<Value = T>) -> impl Strategy<Value = Outcome<T>> {
    prop_oneof![
        inner.prop_map(Outcome::Ok),
        kv_error().prop_map(Outcome::Refused),
        ".{0,16}".prop_map(Outcome::Failed),
    ]
}

/// A value of any type `decode` handles.
#[derive(Debug, Clone)]
enum Message {
    Command(Command),
    ReadOp(ReadOp),
    Write(Outcome<WriteReply>),
    Read(Outcome<ReadReply>),
    Bool(Outcome<bool>),
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        2 => command().prop_map(Message::Command),
        1 => read_op().prop_map(Message::ReadOp),
        1 => outcome(write_reply()).prop_map(Message::Write),
        1 => outcome(read_reply()).prop_map(Message::Read),
        1 => outcome(any::<bool>()).prop_map(Message::Bool),
    ]
}

// ---------------------------------------------------------------------------
// Checks.
// ---------------------------------------------------------------------------

/// Whether a value's encoding is the only one that decodes to it: a
/// `BTreeMap` (the groups of a configuration) also decodes from keys out of
/// order or repeated, which re-encode sorted and once.
trait Canonical {
    fn canonical(&self) -> bool {
        true
    }
}

impl Canonical for Command {
    fn canonical(&self) -> bool {
        !matches!(self, Command::InstallConfig { .. })
    }
}
impl Canonical for ReadOp {}
impl<T> Canonical for Outcome<T> {}

/// `decode::<T>(bytes)`: no panic, bounded; `Malformed` with a
/// reason, or a value that re-encodes stably (to `bytes` exactly if the
/// value has one encoding only).
fn check_decode<T>(bytes: &[u8]) -> Result<Option<T>, TestCaseError>
where
    T: WireMessage + Canonical + PartialEq + Debug + Clone,
{
    match bounded(|| decode::<T>(bytes))? {
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
        Err(KvError::Malformed { reason }) => {
            prop_assert!(!reason.is_empty(), "an error without a reason");
            Ok(None)
        }
        Err(other) => Err(TestCaseError::fail(format!("not Malformed: {other:?}"))),
    }
}

/// Decodes `bytes` as every type `decode` handles.
fn check_decode_all(bytes: &[u8]) -> Result<(), TestCaseError> {
    check_decode::<Command>(bytes)?;
    check_decode::<ReadOp>(bytes)?;
    check_decode::<Outcome<WriteReply>>(bytes)?;
    check_decode::<Outcome<ReadReply>>(bytes)?;
    check_decode::<Outcome<bool>>(bytes)?;
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
            Message::ReadOp(value) => check_round_trip(value),
            Message::Write(value) => check_round_trip(value),
            Message::Read(value) => check_round_trip(value),
            Message::Bool(value) => check_round_trip(value),
        }
    }
}

proptest! {
    #![proptest_config(config(4096))]

    /// Arbitrary bytes, decoded as every message type.
    #[test]
    fn wire_decodes_arbitrary_bytes_without_panic(
        bytes in prop_oneof![
            bytes(160),
            // A plausible start (a small variant index), then anything.
            (0u32..6, bytes(160)).prop_map(|(variant, tail)| {
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

    /// A huge length claimed for a key, a value, a chunk's records or a
    /// configuration's shards: refused.
    #[test]
    fn wire_refuses_huge_length_prefixes(
        key in bytes(8),
        value in bytes(8),
        claim in prop_oneof![Just(u64::MAX), (1u64 << 16)..=u64::MAX],
        which in 0usize..4,
    ) {
        // Distinctive contents, so their length prefixes are found.
        let key = [b"KEY-".as_slice(), &key].concat();
        let value = [b"VALUE-".as_slice(), &value].concat();
        let record = Record { space: RecordSpace::Data, key: key.clone(), value: value.clone() };
        let shard = Shard { id: 3, start: key.clone(), end: None, gid: Some(1) };
        let (bytes, content) = match which {
            0 => (encode(&Command::Write {
                client_id: 1,
                seq: 2,
                stamp_ms: 3,
                limits: ApplyLimits {
                    value_bytes_max: 4,
                    sessions_per_shard_max: 5,
                    session_ttl_ms: 6,
                    request_max_age_ms: 7,
                },
                op: WriteOp::Put { key: key.clone(), value: value.clone() },
            }), key.clone()),
            1 => (encode(&Outcome::Ok(ReadReply::Value(Some(value.clone())))), value.clone()),
            2 => {
                let command = Command::InstallChunk {
                    shard: 1,
                    num: 2,
                    after: None,
                    records: vec![record.clone()],
                    done: false,
                };
                // The records' length prefix precedes the first record.
                (encode(&command), bincode::serialize(&record).expect("encodes"))
            }
            _ => {
                let config = Configuration { num: 1, groups: BTreeMap::new(), shards: vec![shard.clone()] };
                (encode(&Command::InstallConfig { config }), bincode::serialize(&shard).expect("encodes"))
            }
        };
        // The length prefix of bytes is their length, of a one-element Vec 1.
        let len = if which >= 2 { 1 } else { u64::try_from(content.len()).expect("small") };
        let claimed = claim_length(&bytes, len, &content, claim);
        let claimed = claimed.expect("the length prefix is found");
        prop_assert_ne!(&claimed, &bytes);
        prop_assert!(check_decode::<Command>(&claimed)?.is_none(), "decoded as a command");
        prop_assert!(check_decode::<Outcome<ReadReply>>(&claimed)?.is_none(), "decoded as a reply");
    }
}

// ---------------------------------------------------------------------------
// RPC messages (the `ShardKv` service).
// ---------------------------------------------------------------------------

fn limits() -> NetLimits {
    NetLimits {
        max_frame_bytes: 1 << 20,
        ..NetLimits::default()
    }
}

type Request = tarpc::ClientMessage<ShardKvRequest>;
type Response = tarpc::Response<ShardKvResponse>;

fn server_decode(bytes: &[u8]) -> io::Result<Request> {
    WireCodec::server(&limits()).decode(bytes)
}

fn client_decode(bytes: &[u8]) -> io::Result<Response> {
    WireCodec::client(&limits()).decode(bytes)
}

fn encode_request(message: ShardKvRequest) -> Vec<u8> {
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

fn encode_response(message: ShardKvResponse) -> Vec<u8> {
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

fn service_error() -> impl Strategy<Value = ServiceError> {
    prop_oneof![
        proptest::option::of(".{0,12}")
            .prop_map(|leader_hint| ServiceError::NotLeader { leader_hint }),
        Just(ServiceError::Busy),
        ".{0,12}".prop_map(ServiceError::Indeterminate),
        ".{0,12}".prop_map(ServiceError::Stopped),
        kv_error().prop_map(ServiceError::Refused),
        ".{0,12}".prop_map(ServiceError::NotReady),
    ]
}

fn answer<T: Debug + Clone>(
    inner: impl Strategy<Value = T>,
) -> impl Strategy<Value = Result<T, ServiceError>> {
    prop_oneof![inner.prop_map(Ok), service_error().prop_map(Err)]
}

fn peer_addrs() -> impl Strategy<Value = PeerAddrs> {
    (number(), ".{0,12}", ".{0,12}").prop_map(|(node_id, peer_addr, client_addr)| PeerAddrs {
        node_id,
        peer_addr,
        client_addr,
    })
}

/// A `ShardKvRequest` to build (tarpc's generated type is not `Clone`,
/// which proptest needs of generated values).
#[derive(Debug, Clone)]
enum RequestSpec {
    Write(u64, u64, WriteOp),
    Read(ReadOp),
    PullShard(u64, u64, Option<Cursor>, u64),
    DeleteShard(u64, u64),
    Status,
    ExportBegin(u64),
    ExportChunk(u64, Option<Vec<u8>>, u64),
    ExportEnd(u64),
    SetPeers(Vec<PeerAddrs>),
    Reconfigure(Vec<u64>),
}

impl RequestSpec {
    fn build(&self) -> ShardKvRequest {
        match self.clone() {
            RequestSpec::Write(client_id, seq, op) => ShardKvRequest::Write { client_id, seq, op },
            RequestSpec::Read(op) => ShardKvRequest::Read { op },
            RequestSpec::PullShard(shard, num, after, max_bytes) => ShardKvRequest::PullShard {
                shard,
                num,
                after,
                max_bytes,
            },
            RequestSpec::DeleteShard(shard, num) => ShardKvRequest::DeleteShard { shard, num },
            RequestSpec::Status => ShardKvRequest::Status {},
            RequestSpec::ExportBegin(shard) => ShardKvRequest::ExportBegin { shard },
            RequestSpec::ExportChunk(image, after, max_bytes) => ShardKvRequest::ExportChunk {
                image,
                after,
                max_bytes,
            },
            RequestSpec::ExportEnd(image) => ShardKvRequest::ExportEnd { image },
            RequestSpec::SetPeers(peers) => ShardKvRequest::SetPeers { peers },
            RequestSpec::Reconfigure(members) => ShardKvRequest::Reconfigure { members },
        }
    }
}

fn request() -> impl Strategy<Value = RequestSpec> {
    prop_oneof![
        (number(), number(), write_op())
            .prop_map(|(client_id, seq, op)| RequestSpec::Write(client_id, seq, op)),
        read_op().prop_map(RequestSpec::Read),
        (number(), number(), proptest::option::of(cursor()), number()).prop_map(
            |(shard, num, after, max_bytes)| RequestSpec::PullShard(shard, num, after, max_bytes)
        ),
        (number(), number()).prop_map(|(shard, num)| RequestSpec::DeleteShard(shard, num)),
        Just(RequestSpec::Status),
        number().prop_map(RequestSpec::ExportBegin),
        (number(), proptest::option::of(bytes(12)), number()).prop_map(
            |(image, after, max_bytes)| RequestSpec::ExportChunk(image, after, max_bytes)
        ),
        number().prop_map(RequestSpec::ExportEnd),
        vec(peer_addrs(), 0..3).prop_map(RequestSpec::SetPeers),
        vec(number(), 0..4).prop_map(RequestSpec::Reconfigure),
    ]
}

fn replica_status() -> impl Strategy<Value = ReplicaStatus> {
    let report = (number(), ".{0,8}", number(), number(), number()).prop_map(
        |(id, state, num, sessions, sessions_expired)| ShardReport {
            id,
            state,
            num,
            sessions,
            sessions_expired,
        },
    );
    (
        (number(), number(), ".{0,8}", proptest::option::of(number())),
        (
            number(),
            number(),
            vec(report, 0..3),
            proptest::option::of(".{0,8}"),
        ),
    )
        .prop_map(
            |((gid, node_id, role, leader_hint), (num, applied_slot, shards, failed))| {
                ReplicaStatus {
                    gid,
                    node_id,
                    role,
                    leader_hint,
                    num,
                    applied_slot,
                    shards,
                    failed,
                }
            },
        )
}

fn export_begin() -> impl Strategy<Value = ExportBegin> {
    let image = (
        (number(), ".{0,12}", number(), number()),
        (bytes(8), proptest::option::of(bytes(8)), number(), number()),
    )
        .prop_map(
            |((image, replica, shard, num), (start, end, items, bytes))| ExportImage {
                image,
                replica,
                shard,
                num,
                start,
                end,
                items,
                bytes,
            },
        );
    prop_oneof![
        image.prop_map(ExportBegin::Image),
        (number(), number())
            .prop_map(|(shard, max_bytes)| ExportBegin::TooLarge { shard, max_bytes }),
    ]
}

/// A `ShardKvResponse` to build (tarpc's generated type is not `Clone`).
#[derive(Debug, Clone)]
enum ResponseSpec {
    Write(Result<WriteReply, ServiceError>),
    Read(Result<ReadReply, ServiceError>),
    PullShard(Result<PullReply, ServiceError>),
    DeleteShard(Result<(), ServiceError>),
    Status(Result<ReplicaStatus, ServiceError>),
    ExportBegin(Result<ExportBegin, ServiceError>),
    ExportChunk(Result<ExportChunk, ServiceError>),
    ExportEnd(Result<(), ServiceError>),
    SetPeers(Result<(), ServiceError>),
    Reconfigure(Result<u64, ServiceError>),
}

impl ResponseSpec {
    fn build(&self) -> ShardKvResponse {
        match self.clone() {
            ResponseSpec::Write(answer) => ShardKvResponse::Write(answer),
            ResponseSpec::Read(answer) => ShardKvResponse::Read(answer),
            ResponseSpec::PullShard(answer) => ShardKvResponse::PullShard(answer),
            ResponseSpec::DeleteShard(answer) => ShardKvResponse::DeleteShard(answer),
            ResponseSpec::Status(answer) => ShardKvResponse::Status(answer),
            ResponseSpec::ExportBegin(answer) => ShardKvResponse::ExportBegin(answer),
            ResponseSpec::ExportChunk(answer) => ShardKvResponse::ExportChunk(answer),
            ResponseSpec::ExportEnd(answer) => ShardKvResponse::ExportEnd(answer),
            ResponseSpec::SetPeers(answer) => ShardKvResponse::SetPeers(answer),
            ResponseSpec::Reconfigure(answer) => ShardKvResponse::Reconfigure(answer),
        }
    }
}

fn response() -> impl Strategy<Value = ResponseSpec> {
    let pull = (vec(record(), 0..3), any::<bool>())
        .prop_map(|(records, done)| PullReply { records, done });
    let chunk = (vec((bytes(8), bytes(12)), 0..3), any::<bool>())
        .prop_map(|(items, done)| ExportChunk { items, done });
    prop_oneof![
        answer(write_reply()).prop_map(ResponseSpec::Write),
        answer(read_reply()).prop_map(ResponseSpec::Read),
        answer(pull).prop_map(ResponseSpec::PullShard),
        answer(Just(())).prop_map(ResponseSpec::DeleteShard),
        answer(replica_status()).prop_map(ResponseSpec::Status),
        answer(export_begin()).prop_map(ResponseSpec::ExportBegin),
        answer(chunk).prop_map(ResponseSpec::ExportChunk),
        answer(Just(())).prop_map(ResponseSpec::ExportEnd),
        answer(Just(())).prop_map(ResponseSpec::SetPeers),
        answer(number()).prop_map(ResponseSpec::Reconfigure),
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
