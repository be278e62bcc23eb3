//! The tarpc network transport: real replicas talking only over loopback
//! TCP.
//!
//! Method: every server binds 127.0.0.1 port 0 (the restart test rebinds
//! the same port), every replica's only transport is a `TarpcTransport`,
//! and every test stops its servers and nodes. Time is bounded by tokio
//! timeouts. The hostile-input test writes raw bytes on a `TcpStream` and
//! checks both that the server closes that connection and that the rest of
//! the server keeps working; the filtering test checks through the
//! replica's promised ballot that dropped envelopes never reach it.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bincode::Options;
use paxos_log::net::rpc::{PaxosPeerClient, PaxosPeerRequest};
use paxos_log::net::{connect, PeerListener, ServerHandle, ServerStats};
use paxos_log::store::wal::WalAcceptorStore;
use paxos_log::{
    AcceptorStore, Ballot, ChannelTransport, Config, DriverOptions, Envelope, MemAcceptorStore,
    Message, NetLimits, Node, NodeHandle, NodeId, Slot, SlotValue, TarpcTransport, Transport,
    Value,
};
use storage::wal::WalOptions;
use storage::RealFs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod cluster;
use cluster::{assert_prefix, assert_same_logs, commit, wait_applied, wait_for_leader, LogMachine};

const GROUP: u64 = 42;

fn options() -> DriverOptions {
    DriverOptions {
        tick: Duration::from_millis(10),
        request_timeout: Duration::from_secs(5),
        ..DriverOptions::default()
    }
}

fn limits() -> NetLimits {
    NetLimits {
        backoff_max: Duration::from_millis(200),
        ..NetLimits::default()
    }
}

/// A 1 MiB frame limit, well below tokio-util's 8 MiB default, so a test
/// can tell the configured limit is the one enforced.
fn small_frames() -> NetLimits {
    NetLimits {
        max_frame_bytes: 1 << 20,
        ..limits()
    }
}

fn members() -> Vec<NodeId> {
    (1..=3).map(NodeId).collect()
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Runs `body` or fails the test after `limit`.
async fn bounded<F: Future>(limit: Duration, body: F) -> F::Output {
    tokio::time::timeout(limit, body)
        .await
        .expect("test timed out")
}

/// Runs `send` on a plain thread, like the driver's sends, and resolves
/// when it returns. The test awaits it instead of joining the thread, so
/// `bounded` still fails the test if `send` blocks (leaving the thread).
async fn on_plain_thread(send: impl FnOnce() + Send + 'static) {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::spawn(move || {
        send();
        let _ = done_tx.send(());
    });
    done_rx.await.expect("the sending thread panicked");
    thread.join().expect("the sending thread ends");
}

/// One replica: its node, its server, and its transport's address book.
struct Member {
    node: Node<LogMachine>,
    server: ServerHandle,
    transport: Arc<TarpcTransport>,
}

/// Binds a listener per member, so every address is known before any
/// replica starts.
async fn bind_all(limits: &NetLimits) -> (Vec<PeerListener>, BTreeMap<NodeId, SocketAddr>) {
    let mut listeners = Vec::new();
    let mut addrs = BTreeMap::new();
    for id in members() {
        let listener = PeerListener::bind(loopback(), limits.clone())
            .await
            .expect("bind 127.0.0.1:0");
        addrs.insert(id, listener.local_addr());
        listeners.push(listener);
    }
    (listeners, addrs)
}

/// Starts replica `id` on `store`, talking only through a `TarpcTransport`
/// to `addrs`, and serving on `listener`.
fn start_member<S: AcceptorStore + Send + 'static>(
    id: NodeId,
    store: S,
    listener: PeerListener,
    addrs: &BTreeMap<NodeId, SocketAddr>,
    limits: &NetLimits,
) -> Member {
    let peers = addrs
        .iter()
        .filter(|(peer, _)| **peer != id)
        .map(|(peer, addr)| (*peer, *addr))
        .collect();
    let transport = TarpcTransport::new(
        &tokio::runtime::Handle::current(),
        peers,
        GROUP,
        limits.clone(),
    );
    let transport = Arc::new(transport);
    let config = Config {
        rng_seed: 7,
        ..Config::new(id, members())
    };
    let node = Node::start(
        config,
        store,
        LogMachine::default(),
        Arc::clone(&transport),
        options(),
    )
    .expect("replica starts");
    let server = listener.start(node.handle(), GROUP);
    Member {
        node,
        server,
        transport,
    }
}

/// Stops a member: its server first (waiting for every connection task),
/// then its node, then its transport (aborting its peer tasks).
async fn stop_member(member: Member) -> (LogMachine, ServerStats) {
    let stats = member.server.shutdown().await;
    let machine = member.node.stop().expect("replica thread ends cleanly");
    drop(member.transport);
    (machine, stats)
}

fn open_wal(dir: &Path) -> WalAcceptorStore {
    WalAcceptorStore::open(RealFs::shared(), dir, WalOptions::default()).expect("WAL opens")
}

/// Proposes `command` through `leader` and returns its slot.
async fn propose(leader: &NodeHandle, command: Vec<u8>) -> Slot {
    let slot = leader.propose(command).await.expect("proposal committed");
    u64::from_le_bytes(slot.try_into().expect("slot answer is 8 bytes"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_agree_over_tcp() {
    bounded(Duration::from_secs(60), async {
        let net = limits();
        let (listeners, addrs) = bind_all(&net).await;
        let members_: Vec<Member> = members()
            .into_iter()
            .zip(listeners)
            .map(|(id, listener)| start_member(id, MemAcceptorStore::new(), listener, &addrs, &net))
            .collect();
        let handles: Vec<NodeHandle> = members_.iter().map(|m| m.node.handle()).collect();
        let leader = wait_for_leader(&handles).await;

        // 200 proposals at once, each from its own task.
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let leader = leader.clone();
            tasks.push(tokio::spawn(async move {
                leader.propose(i.to_le_bytes().to_vec()).await
            }));
        }
        for task in tasks {
            task.await
                .expect("proposer task")
                .expect("proposal committed over TCP");
        }
        let count = leader.read(vec![]).await.expect("linearizable read");
        assert_eq!(
            u64::from_le_bytes(count.try_into().unwrap()),
            200,
            "the read sees every write"
        );

        let last = leader.metrics().applied_slot;
        wait_applied(&handles, last).await;
        // Before anything stops (a peer going away mid-frame counts as a
        // failed connection): every replica received its messages over
        // TCP, and no connection failed.
        for member in &members_ {
            let stats = member.server.stats();
            assert!(
                stats.envelopes_delivered > 0 && stats.connections.connections_accepted >= 1,
                "{stats:?}"
            );
            assert_eq!(stats.connections.connections_failed, 0, "{stats:?}");
            // A follower sends little, and its first call may still be on
            // its way on a loaded machine: wait for it.
            let deadline = Instant::now() + Duration::from_secs(5);
            while member.transport.stats().envelopes_sent == 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let sent = member.transport.stats();
            assert!(sent.envelopes_sent > 0, "{sent:?}");
            assert_eq!(sent.rpc_failures + sent.connect_failures, 0, "{sent:?}");
        }
        let mut machines = Vec::new();
        for member in members_ {
            let (machine, stats) = stop_member(member).await;
            assert_eq!(stats.connections.connection_panics, 0, "{stats:?}");
            machines.push(machine);
        }
        assert_no_tasks_left().await;
        assert_eq!(assert_same_logs(&machines).len(), 200);
    })
    .await;
}

/// Membership change over TCP: the transports learn the added replica's
/// address with `set_peer` (without it, nothing reaches n4 and it never
/// catches up), and forget the removed one with `remove_peer`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_added_over_tcp_is_reached_once_its_address_is_set() {
    bounded(Duration::from_secs(60), async {
        let net = limits();
        let (listeners, mut addrs) = bind_all(&net).await;
        let mut members_: Vec<Member> = members()
            .into_iter()
            .zip(listeners)
            .map(|(id, listener)| start_member(id, MemAcceptorStore::new(), listener, &addrs, &net))
            .collect();
        // n4 is not in the genesis {n1, n2, n3}; it knows their addresses,
        // they do not know its own yet.
        let listener = PeerListener::bind(loopback(), net.clone())
            .await
            .expect("bind 127.0.0.1:0");
        let n4_addr = listener.local_addr();
        addrs.insert(NodeId(4), n4_addr);
        members_.push(start_member(
            NodeId(4),
            MemAcceptorStore::new(),
            listener,
            &addrs,
            &net,
        ));
        let handles: Vec<NodeHandle> = members_.iter().map(|m| m.node.handle()).collect();
        for i in 0..20u8 {
            commit(&handles[..3], &[i]).await;
        }

        for member in &members_[..3] {
            member.transport.set_peer(NodeId(4), n4_addr);
        }
        let leader = wait_for_leader(&handles[..3]).await;
        let new_members = vec![NodeId(1), NodeId(2), NodeId(4)];
        leader
            .reconfigure(new_members.clone())
            .await
            .expect("the change is in force");
        for member in &members_ {
            member.transport.remove_peer(NodeId(3));
        }
        let stopped = members_.remove(2);
        stop_member(stopped).await;

        let current: Vec<NodeHandle> = members_.iter().map(|m| m.node.handle()).collect();
        let mut last = 0;
        for i in 20..40u8 {
            last = commit(&current, &[i]).await;
        }
        wait_applied(&current, last).await;
        for handle in &current {
            assert_eq!(handle.metrics().members, new_members, "{}", handle.id());
        }
        let mut machines = Vec::new();
        for member in members_ {
            machines.push(stop_member(member).await.0);
        }
        assert_eq!(assert_same_logs(&machines).len(), 40);
    })
    .await;
}

/// Asserts every task spawned on this test's runtime (accept loops,
/// connections, peer tasks, tarpc dispatches) ends once its server, node,
/// transport or client is stopped or dropped.
async fn assert_no_tasks_left() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let deadline = Instant::now() + Duration::from_secs(5);
    while metrics.num_alive_tasks() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(metrics.num_alive_tasks(), 0, "tasks leaked");
}

/// Binds `addr` again, retrying briefly in case the old socket lingers.
async fn rebind(addr: SocketAddr) -> PeerListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match PeerListener::bind(addr, limits()).await {
            Ok(listener) => return listener,
            Err(e) if Instant::now() < deadline => {
                eprintln!("rebinding {addr}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot rebind {addr}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_follower_reconnects_and_catches_up() {
    bounded(Duration::from_secs(60), async {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let net = limits();
        let (listeners, addrs) = bind_all(&net).await;
        let mut members_: Vec<Option<Member>> = members()
            .into_iter()
            .zip(listeners)
            .zip(&dirs)
            .map(|((id, listener), dir)| {
                Some(start_member(
                    id,
                    open_wal(dir.path()),
                    listener,
                    &addrs,
                    &net,
                ))
            })
            .collect();
        let handles: Vec<NodeHandle> = members_.iter().flatten().map(|m| m.node.handle()).collect();
        let leader = wait_for_leader(&handles).await;
        for i in 0..20u32 {
            propose(&leader, [b"a".as_slice(), &i.to_le_bytes()].concat()).await;
        }

        // Stop a follower: its server and its node.
        let victim = handles
            .iter()
            .position(|h| h.id() != leader.id())
            .expect("a follower");
        let victim_id = handles[victim].id();
        let victim_addr = addrs[&victim_id];
        let stopped = members_[victim].take().expect("running");
        stop_member(stopped).await;

        // Two of three still form a quorum.
        let mut last = 0;
        for i in 0..50u32 {
            last = propose(&leader, [b"b".as_slice(), &i.to_le_bytes()].concat()).await;
        }

        // Restart it on the same port, from its WAL, with an empty state
        // machine: it must re-learn every slot from the others, which needs
        // the leader's transport to reconnect to the new server.
        let listener = rebind(victim_addr).await;
        assert_eq!(listener.local_addr(), victim_addr);
        let restarted = start_member(
            victim_id,
            open_wal(dirs[victim].path()),
            listener,
            &addrs,
            &net,
        );
        let restarted_handle = restarted.node.handle();
        members_[victim] = Some(restarted);
        let caught_up = restarted_handle
            .wait_for(Duration::from_secs(20), |m| m.applied_slot >= last)
            .await;
        assert!(
            caught_up.is_some(),
            "restarted replica did not catch up to slot {last}: {:?}",
            restarted_handle.metrics()
        );

        // The leader's link to the victim broke when the victim stopped; it
        // must have reconnected to the new server on the same port.
        let original = members_
            .iter()
            .flatten()
            .position(|m| m.node.handle().id() == leader.id())
            .expect("original leader still runs");
        let original_stats = members_[original].as_ref().unwrap().transport.stats();
        assert!(
            original_stats.connects >= 3 && original_stats.rpc_failures >= 1,
            "the original leader did not reconnect to the restarted replica: \
             {original_stats:?}"
        );

        // Functionally: stop the third replica, so the original leader and
        // the restarted one must form a quorum by themselves, in both
        // directions.
        let third = (0..3)
            .find(|&i| i != victim && i != original)
            .expect("a third replica");
        let (third_machine, _) = stop_member(members_[third].take().unwrap()).await;
        let pair = handles_of(&members_);
        // The pair may still be electing: `commit` retries until one commits.
        let last = commit(&pair, b"after restart").await;
        wait_applied(&pair, last).await;

        let mut machines = Vec::new();
        for member in members_.into_iter().flatten() {
            let (machine, stats) = stop_member(member).await;
            assert_eq!(stats.connections.connection_panics, 0, "{stats:?}");
            machines.push(machine);
        }
        let reference = assert_same_logs(&machines);
        assert_eq!(reference.len(), 71, "20 + 50 + 1 commands");
        assert_no_tasks_left().await;
        assert_prefix(&third_machine, &reference, "the stopped replica");
    })
    .await;
}

fn handles_of(members_: &[Option<Member>]) -> Vec<NodeHandle> {
    members_.iter().flatten().map(|m| m.node.handle()).collect()
}

/// Writes `bytes` on a fresh raw connection to `addr` (then half-closes it
/// if `half_close`), and asserts the server closes the connection within
/// 5 s: a read returns end of stream or an error (a reset), not a timeout.
async fn assert_server_closes(addr: SocketAddr, bytes: &[u8], half_close: bool, case: &str) {
    let mut stream = TcpStream::connect(addr).await.expect("raw connect");
    stream.write_all(bytes).await.expect("raw write");
    if half_close {
        stream.shutdown().await.expect("half close");
    }
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.read(&mut buf).await {
                // The server never answers garbage with data, but keep
                // reading until the end in case it ever did.
                Ok(n) if n > 0 => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(read.is_ok(), "{case}: the server kept the connection open");
}

/// A bincode `tarpc::ClientMessage::Request` for `deliver` whose deadline
/// is `deadline` away, framed with its 4-byte length.
fn request_frame(deadline: Duration) -> Vec<u8> {
    let mut context = tarpc::context::current();
    context.deadline = Instant::now() + deadline;
    let message = tarpc::ClientMessage::Request(tarpc::Request {
        context,
        id: 1,
        message: PaxosPeerRequest::Deliver {
            group: GROUP,
            batch: Vec::new(),
        },
    });
    let body = bincode::DefaultOptions::new()
        .serialize(&message)
        .expect("encodes");
    let mut frame = u32::try_from(body.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    frame.extend_from_slice(&body);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_closes_only_its_connection() {
    bounded(Duration::from_secs(60), async {
        let net = small_frames();
        let (listeners, addrs) = bind_all(&net).await;
        let members_: Vec<Member> = members()
            .into_iter()
            .zip(listeners)
            .map(|(id, listener)| start_member(id, MemAcceptorStore::new(), listener, &addrs, &net))
            .collect();
        let handles: Vec<NodeHandle> = members_.iter().map(|m| m.node.handle()).collect();
        let leader = wait_for_leader(&handles).await;
        let target = members_
            .iter()
            .find(|m| m.node.handle().id() == leader.id())
            .expect("leader's member");
        let addr = target.server.local_addr();
        propose(&leader, b"before".to_vec()).await;

        // A well-behaved client on its own connection, open throughout.
        let client: PaxosPeerClient = connect(addr, &net).await.expect("client connects");
        let max = net.max_frame_bytes;
        // A request that decodes fine is accepted: the frame helper is right.
        assert_server_answers(&client).await;
        // A frame just under the limit passes (addressed to no replica, so
        // it is dropped after decoding).
        let mut context = tarpc::context::current();
        context.deadline = Instant::now() + Duration::from_secs(5);
        client
            .deliver(context, GROUP, vec![big_envelope(99, max - 4096)])
            .await
            .expect("a frame under the limit is accepted");

        let mut oversized = u32::try_from(max + 1).unwrap().to_be_bytes().to_vec();
        oversized.extend_from_slice(&[0u8; 64]);
        let mut truncated = 100u32.to_be_bytes().to_vec();
        truncated.extend_from_slice(&[0u8; 10]);
        let mut garbage = 16u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(&[0xFF; 16]);
        // tarpc would panic on this deadline (in its timer wheel); the
        // codec must refuse it first.
        let far_deadline = request_frame(Duration::from_secs(3 * 365 * 24 * 3600));
        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            ("garbage frame body", garbage, false),
            ("length above the frame limit", oversized, false),
            ("truncated frame then end of stream", truncated, true),
            ("request deadline three years away", far_deadline, false),
            (
                "plain text",
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                false,
            ),
        ];
        for (i, (case, bytes, half_close)) in cases.into_iter().enumerate() {
            assert_server_closes(addr, &bytes, half_close, case).await;
            // The failure is counted (so it was this code that closed it),
            // and no connection task panicked.
            let failed = u64::try_from(i + 1).unwrap();
            let stats = wait_stats(&target.server, |s| {
                s.connections.connections_failed >= failed
            })
            .await;
            assert_eq!(
                stats.connections.connections_failed, failed,
                "{case}: {stats:?}"
            );
            assert_eq!(stats.connections.connection_panics, 0, "{case}: {stats:?}");
            // The other connections still work: the open client is
            // answered, and the cluster (over its own connections) commits.
            assert_server_answers(&client).await;
            propose(&leader, case.as_bytes().to_vec()).await;
        }

        drop(client);
        for member in members_ {
            let (_, stats) = stop_member(member).await;
            assert_eq!(stats.connections.connection_panics, 0, "{stats:?}");
        }
        assert_no_tasks_left().await;
    })
    .await;
}

/// An envelope to `n<to>` whose encoding is a little over `bytes`.
fn big_envelope(to: u64, bytes: usize) -> Envelope {
    Envelope {
        from: NodeId(2),
        to: NodeId(to),
        message: Message::Chosen {
            entries: vec![SlotValue {
                slot: 1,
                value: Value::Commands(vec![vec![7u8; bytes]]),
            }],
        },
    }
}

async fn assert_server_answers(client: &PaxosPeerClient) {
    let mut context = tarpc::context::current();
    context.deadline = Instant::now() + Duration::from_secs(5);
    client
        .deliver(context, GROUP, Vec::new())
        .await
        .expect("a well-formed request on another connection is answered");
}

/// Waits (up to 5 s) until the server's statistics satisfy `condition`.
async fn wait_stats(
    server: &ServerHandle,
    condition: impl Fn(&ServerStats) -> bool,
) -> ServerStats {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = server.stats();
        if condition(&stats) || Instant::now() >= deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn prepare(round: u64, to: u64) -> Envelope {
    Envelope {
        from: NodeId(2),
        to: NodeId(to),
        message: Message::Prepare {
            ballot: Ballot {
                round,
                node_id: NodeId(2),
            },
            first_slot: 1,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_groups_and_other_nodes_are_dropped() {
    bounded(Duration::from_secs(30), async {
        // Replica n1 of {n1, n2, n3}, alone: its replies go nowhere. Alone it
        // only ever raises its own ballot by one per election timeout, so a
        // promise at round 1_000_000 or more can only come from a Prepare.
        let (node, server) = lone_replica(&limits()).await;
        let handle = node.handle();
        let client = connect(server.local_addr(), &limits())
            .await
            .expect("connect");
        let call = |group: u64, batch: Vec<Envelope>| {
            let client = client.clone();
            async move {
                let mut context = tarpc::context::current();
                context.deadline = Instant::now() + Duration::from_secs(5);
                client
                    .deliver(context, group, batch)
                    .await
                    .expect("the server answers");
            }
        };

        // Calls on one connection are handled in order, and each answer
        // comes after its batch is queued for the replica; the replica takes
        // its queue in order. So once the last (valid) Prepare shows in the
        // metrics, the earlier ones were either stepped or dropped.
        call(GROUP + 1, vec![prepare(3_000_000, 1)]).await;
        call(GROUP, vec![prepare(2_000_000, 3)]).await;
        call(GROUP, vec![prepare(1_000_000, 1)]).await;
        let promised = handle
            .wait_for(Duration::from_secs(10), |m| m.promised.round >= 1_000_000)
            .await
            .expect("the valid Prepare reaches the replica")
            .promised;
        assert!(
            promised.round < 2_000_000,
            "a dropped Prepare reached the replica: promised {promised}"
        );

        drop(client);
        let stats = server.shutdown().await;
        assert_eq!(stats.batches_wrong_group, 1, "{stats:?}");
        assert_eq!(stats.envelopes_wrong_node, 1, "{stats:?}");
        assert_eq!(stats.envelopes_delivered, 1, "{stats:?}");
        assert_eq!(stats.batches_received, 2, "{stats:?}");
        node.stop().expect("replica thread ends cleanly");
        assert_no_tasks_left().await;
    })
    .await;
}

/// A lone replica n1 of {n1, n2, n3} serving on loopback with `net`'s
/// limits; its own messages go nowhere.
async fn lone_replica(net: &NetLimits) -> (Node<LogMachine>, ServerHandle) {
    let node = Node::start(
        Config::new(NodeId(1), members()),
        MemAcceptorStore::new(),
        LogMachine::default(),
        Arc::new(ChannelTransport::new()),
        options(),
    )
    .expect("replica starts");
    let listener = PeerListener::bind(loopback(), net.clone())
        .await
        .expect("bind");
    let server = listener.start(node.handle(), GROUP);
    (node, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_drops_messages_over_the_frame_limit() {
    bounded(Duration::from_secs(30), async {
        let net = small_frames();
        let (node, server) = lone_replica(&net).await;
        let handle = node.handle();
        let transport = TarpcTransport::new(
            &tokio::runtime::Handle::current(),
            BTreeMap::from([(NodeId(1), server.local_addr())]),
            GROUP,
            net.clone(),
        );
        let transport = Arc::new(transport);
        let sender = Arc::clone(&transport);
        on_plain_thread(move || {
            sender.send(vec![
                big_envelope(1, net.max_frame_bytes),
                prepare(1_000_000, 1),
            ]);
        })
        .await;
        // The message after the oversized one still arrives, on a healthy
        // connection.
        handle
            .wait_for(Duration::from_secs(10), |m| m.promised.round >= 1_000_000)
            .await
            .expect("the Prepare after the oversized message arrives");
        // The call's answer may still be on its way back.
        let deadline = Instant::now() + Duration::from_secs(5);
        while transport.stats().envelopes_sent == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let sent = transport.stats();
        assert_eq!(sent.envelopes_dropped_oversize, 1, "{sent:?}");
        assert_eq!(sent.envelopes_sent, 1, "{sent:?}");
        assert_eq!(sent.rpc_failures, 0, "{sent:?}");
        assert_eq!(sent.connects, 1, "{sent:?}");
        drop(transport);
        let stats = server.shutdown().await;
        assert_eq!(stats.connections.connections_failed, 0, "{stats:?}");
        assert_eq!(stats.envelopes_delivered, 1, "{stats:?}");
        node.stop().expect("replica thread ends cleanly");
        assert_no_tasks_left().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_never_blocks_on_a_dead_peer() {
    bounded(Duration::from_secs(30), async {
        // A port nobody listens on any more.
        let dead = {
            let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
            listener.local_addr().unwrap()
        };
        let net = NetLimits {
            peer_queue_depth: 64,
            ..limits()
        };
        let transport = Arc::new(TarpcTransport::new(
            &tokio::runtime::Handle::current(),
            BTreeMap::from([(NodeId(2), dead)]),
            GROUP,
            net,
        ));
        // A send that blocked on the full queue of a peer that never drains
        // would never return; the bound only catches that, not slowness.
        let sender = Arc::clone(&transport);
        on_plain_thread(move || {
            for round in 0..1_000u64 {
                sender.send((0..100).map(|_| prepare(round, 2)).collect());
                // And one for a peer the transport does not know.
                sender.send(vec![prepare(round, 9)]);
            }
        })
        .await;
        let stats = transport.stats();
        assert_eq!(
            stats.envelopes_queued + stats.envelopes_dropped_queue_full,
            100_000,
            "{stats:?}"
        );
        assert!(
            stats.envelopes_dropped_queue_full > 90_000,
            "the bounded queue overflows instead of growing: {stats:?}"
        );
        assert_eq!(stats.envelopes_dropped_unknown_peer, 1_000, "{stats:?}");
        assert_eq!(stats.envelopes_sent, 0, "{stats:?}");
        drop(transport);
        assert_no_tasks_left().await;
    })
    .await;
}
