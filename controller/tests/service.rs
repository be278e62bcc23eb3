//! The controller as a service: replicas over loopback TCP with durable
//! WALs and snapshots in temporary directories, driven through the clerk
//! (and, where a test needs to, the raw tarpc client).
//!
//! Method: every replica binds 127.0.0.1 port 0 for both its peer and its
//! client address before any replica starts (so the members map is known),
//! and a restart rebinds the same ports. Every test is bounded by a tokio
//! timeout and shuts every replica down at the end. Agreement between
//! replicas is checked on their local (non-linearizable) state once they
//! have all applied the latest configuration; what clients see is checked
//! through linearizable queries.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bincode::Options;
use controller::clerk::connect;
use controller::rpc::ShardControllerRequest;
use controller::{
    ClerkError, ClerkOptions, ConfigNum, Configuration, ControllerClerk, ControllerError,
    ControllerListeners, ControllerOp, ControllerReply, ControllerServer, ControllerServerConfig,
    Gid, MemberAddrs, ServiceError,
};
use paxos_log::{DriverOptions, NodeId};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::{assert_balanced, net, node_id};

const GROUP: u64 = 9;
const SHARDS: u32 = 10;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn driver(tick_ms: u64, snapshot_every_slots: u64) -> DriverOptions {
    DriverOptions {
        tick: Duration::from_millis(tick_ms),
        request_timeout: Duration::from_secs(2),
        snapshot_every_slots,
        ..DriverOptions::default()
    }
}

fn clerk_options(client_id: u64) -> ClerkOptions {
    ClerkOptions {
        deadline: Duration::from_secs(15),
        rpc_timeout: Duration::from_secs(3),
        backoff_max: Duration::from_millis(200),
        net: net(),
        ..ClerkOptions::new(client_id)
    }
}

/// Runs `body` or fails the test after `limit`.
async fn bounded<F: Future>(limit: Duration, body: F) -> F::Output {
    tokio::time::timeout(limit, body)
        .await
        .expect("test timed out")
}

/// Join arguments: each gid with two made-up replica addresses.
fn groups(gids: &[Gid]) -> BTreeMap<Gid, Vec<String>> {
    gids.iter()
        .map(|&gid| (gid, vec![format!("g{gid}-a:1"), format!("g{gid}-b:1")]))
        .collect()
}

/// A controller group of replicas in temporary directories.
struct Cluster {
    dirs: Vec<TempDir>,
    members: BTreeMap<NodeId, MemberAddrs>,
    servers: Vec<Option<ControllerServer>>,
    driver: DriverOptions,
}

impl Cluster {
    /// Binds every replica's two ports, then starts them all.
    async fn start(replicas: usize, driver: DriverOptions) -> Cluster {
        let mut listeners = Vec::new();
        let mut members = BTreeMap::new();
        for i in 0..replicas {
            let bound = ControllerListeners::bind(
                MemberAddrs {
                    peer: loopback(),
                    client: loopback(),
                },
                &net(),
            )
            .await
            .expect("bind 127.0.0.1:0");
            members.insert(node_id(i), bound.addrs());
            listeners.push(bound);
        }
        let mut cluster = Cluster {
            dirs: (0..replicas).map(|_| TempDir::new().unwrap()).collect(),
            members,
            servers: Vec::new(),
            driver,
        };
        for (i, bound) in listeners.into_iter().enumerate() {
            let server = ControllerServer::start_with_listeners(cluster.config(i), bound)
                .await
                .expect("replica starts");
            cluster.servers.push(Some(server));
        }
        cluster
    }

    fn config(&self, i: usize) -> ControllerServerConfig {
        ControllerServerConfig {
            driver: self.driver.clone(),
            net: net(),
            ..ControllerServerConfig::new(
                node_id(i),
                self.members.clone(),
                self.dirs[i].path().to_path_buf(),
                SHARDS,
                GROUP,
            )
        }
    }

    fn server(&self, i: usize) -> &ControllerServer {
        self.servers[i].as_ref().expect("replica is running")
    }

    fn running(&self) -> impl Iterator<Item = &ControllerServer> {
        self.servers.iter().flatten()
    }

    fn client_addrs(&self) -> Vec<SocketAddr> {
        self.members.values().map(|addrs| addrs.client).collect()
    }

    fn clerk(&self, client_id: u64) -> ControllerClerk {
        ControllerClerk::new(self.client_addrs(), clerk_options(client_id))
    }

    /// The replica whose client address is `addr`.
    fn index_of(&self, addr: SocketAddr) -> usize {
        self.members
            .values()
            .position(|addrs| addrs.client == addr)
            .expect("a member's client address")
    }

    /// Stops replica `i` and waits until its ports are free.
    async fn stop(&mut self, i: usize) {
        let server = self.servers[i].take().expect("replica is running");
        server.shutdown().await;
    }

    /// Starts replica `i` again from its directory, on the same ports.
    async fn restart(&mut self, i: usize) {
        let addrs = self.members[&node_id(i)];
        let deadline = Instant::now() + Duration::from_secs(5);
        let bound = loop {
            match ControllerListeners::bind(addrs, &net()).await {
                Ok(bound) => break bound,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding {addrs:?}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot rebind {addrs:?}: {e}"),
            }
        };
        let server = ControllerServer::start_with_listeners(self.config(i), bound)
            .await
            .expect("replica restarts");
        self.servers[i] = Some(server);
    }

    /// Waits until every running replica has applied configuration `num`
    /// (and none beyond), then checks they all hold the same latest one.
    async fn converged(&self, num: ConfigNum) -> Configuration {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let latest: Vec<Configuration> =
                self.running().map(ControllerServer::local_latest).collect();
            if latest.iter().all(|config| config.num == num) {
                for config in &latest[1..] {
                    assert_eq!(config, &latest[0], "replicas disagree on {num}");
                }
                return latest[0].clone();
            }
            assert!(
                latest.iter().all(|config| config.num <= num),
                "a replica went past configuration {num}: {:?}",
                latest.iter().map(|c| c.num).collect::<Vec<_>>()
            );
            assert!(
                Instant::now() < deadline,
                "replicas did not converge on configuration {num}: {:?}",
                latest.iter().map(|c| c.num).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every running replica holds exactly `history` (configuration n at
    /// index n).
    async fn assert_history(&self, history: &[Configuration]) {
        let last = history.last().expect("history").num;
        self.converged(last).await;
        for server in self.running() {
            for (num, expected) in history.iter().enumerate() {
                let num = ConfigNum::try_from(num).unwrap();
                assert_eq!(
                    server.local_config(num).as_ref(),
                    Some(expected),
                    "replica {} differs at configuration {num}",
                    server.node_id()
                );
            }
            assert_eq!(server.local_config(last + 1), None);
        }
    }

    /// Stops every replica, then checks nothing of the servers, the log
    /// nodes, the transports or the clerks (which the caller has dropped)
    /// is left running on the runtime.
    async fn shutdown(self) {
        for server in self.servers.into_iter().flatten() {
            server.shutdown().await;
        }
        let metrics = tokio::runtime::Handle::current().metrics();
        let deadline = Instant::now() + Duration::from_secs(5);
        while metrics.num_alive_tasks() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(metrics.num_alive_tasks(), 0, "tasks leaked");
    }
}

/// Every configuration from 0 to `last`, through linearizable queries.
async fn history(clerk: &mut ControllerClerk, last: ConfigNum) -> Vec<Configuration> {
    let mut configs = Vec::new();
    for num in 0..=last {
        let config = clerk.query(Some(num)).await.expect("historical query");
        assert_eq!(config.num, num);
        configs.push(config);
    }
    configs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_serve_every_operation_and_agree() {
    bounded(Duration::from_secs(60), async {
        let cluster = Cluster::start(3, driver(10, 0)).await;
        let mut clerk = cluster.clerk(1);

        assert_eq!(clerk.join(groups(&[1])).await, Ok(1));
        assert_eq!(clerk.join(groups(&[2, 3])).await, Ok(2));
        let config = clerk.query(None).await.unwrap();
        assert_eq!(config.num, 2);
        assert_eq!(config.groups, groups(&[1, 2, 3]));
        assert_balanced(&config);

        assert_eq!(clerk.leave(vec![2]).await, Ok(3));
        let config = clerk.query(None).await.unwrap();
        assert_eq!(config.groups, groups(&[1, 3]));
        assert!(config.shards.iter().all(|shard| shard.gid != Some(2)));
        assert_balanced(&config);

        assert_eq!(clerk.move_shard(0, 3).await, Ok(4));
        let config = clerk.query(None).await.unwrap();
        assert_eq!(config.shard(0).and_then(|shard| shard.gid), Some(3));

        assert_eq!(clerk.split(Vec::from("m")).await, Ok((5, 10)));
        let config = clerk.query(None).await.unwrap();
        assert_eq!(config.shards.len(), 11);
        assert_eq!(config.shard_for_key(b"m").map(|shard| shard.id), Some(10));
        assert_eq!(config.shard_for_key(b"mzz").map(|shard| shard.id), Some(10));

        // Refusals are typed, definite, and create nothing.
        assert_eq!(
            clerk.join(groups(&[1])).await,
            Err(ClerkError::Refused(ControllerError::GroupExists { gid: 1 }))
        );
        assert_eq!(
            clerk.leave(vec![99]).await,
            Err(ClerkError::Refused(ControllerError::UnknownGroup {
                gid: 99
            }))
        );
        assert_eq!(
            clerk.move_shard(999, 1).await,
            Err(ClerkError::Refused(ControllerError::UnknownShard {
                shard: 999
            }))
        );
        assert_eq!(
            clerk.split(Vec::from("m")).await,
            Err(ClerkError::Refused(ControllerError::SplitAtBoundary {
                shard: 10
            }))
        );
        assert_eq!(clerk.query(None).await.unwrap().num, 5);

        // Historical queries: every configuration stays as it was made.
        let past = history(&mut clerk, 5).await;
        assert!(past[0].groups.is_empty());
        assert_eq!(past[0].shards.len(), usize::try_from(SHARDS).unwrap());
        assert!(past[0].shards.iter().all(|shard| shard.gid.is_none()));
        assert_eq!(past[1].groups, groups(&[1]));
        assert!(past[1].shards.iter().all(|shard| shard.gid == Some(1)));
        assert_eq!(past[2].groups, groups(&[1, 2, 3]));
        assert_eq!(past[4].shards.len(), 10);
        assert_eq!(clerk.query(Some(1000)).await.unwrap(), past[5]);

        // A follower refuses with the leader's *client* address.
        let leader = cluster.index_of(clerk.leader().expect("a leader answered"));
        let follower = (leader + 1) % 3;
        let leader_addr = cluster.server(leader).client_addr();
        let raw = connect(cluster.server(follower).client_addr(), &net())
            .await
            .unwrap();
        let op = ControllerOp::Leave { gids: vec![1] };
        let answer = raw
            .change(tarpc::context::current(), 555, 1, op)
            .await
            .unwrap();
        assert_eq!(
            answer,
            Err(ServiceError::NotLeader {
                leader_hint: Some(leader_addr.to_string())
            })
        );
        let answer = raw.query(tarpc::context::current(), None).await.unwrap();
        assert!(
            matches!(answer, Err(ServiceError::NotLeader { .. })),
            "{answer:?}"
        );
        drop(raw);

        // A clerk that only knows the follower follows the hint.
        let follower_addr = cluster.server(follower).client_addr();
        let mut lost = ControllerClerk::new(vec![follower_addr], clerk_options(2));
        assert_eq!(lost.join(groups(&[4])).await, Ok(6));
        assert_eq!(lost.leader(), Some(leader_addr));

        let mut all = past;
        all.push(clerk.query(None).await.unwrap());
        assert_balanced(&all[6]);
        cluster.assert_history(&all).await;
        drop((clerk, lost));
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_every_replica_keeps_every_configuration() {
    bounded(Duration::from_secs(60), async {
        let mut cluster = Cluster::start(3, driver(10, 0)).await;
        let mut clerk = cluster.clerk(1);
        assert_eq!(clerk.join(groups(&[1, 2])).await, Ok(1));
        assert_eq!(clerk.split(Vec::from("k")).await, Ok((2, 10)));
        assert_eq!(clerk.join(groups(&[3])).await, Ok(3));
        assert_eq!(clerk.move_shard(10, 3).await, Ok(4));
        assert_eq!(clerk.leave(vec![1]).await, Ok(5));
        let before = history(&mut clerk, 5).await;
        cluster.assert_history(&before).await;
        drop(clerk);

        for i in 0..3 {
            cluster.stop(i).await;
        }
        for i in 0..3 {
            cluster.restart(i).await;
        }

        // A new clerk (new session) sees the same history, linearizably.
        let mut clerk = cluster.clerk(2);
        assert_eq!(history(&mut clerk, 5).await, before);
        assert_eq!(clerk.query(None).await.unwrap(), before[5]);
        cluster.assert_history(&before).await;
        // And the controller goes on from there.
        assert_eq!(clerk.join(groups(&[4])).await, Ok(6));
        drop(clerk);
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_stopped_mid_series_then_restarted_catches_up() {
    bounded(Duration::from_secs(60), async {
        let mut cluster = Cluster::start(3, driver(10, 0)).await;
        let mut clerk = cluster.clerk(1);
        assert_eq!(clerk.join(groups(&[1])).await, Ok(1));
        let leader = cluster.index_of(clerk.leader().expect("a leader answered"));

        // Ten more joins in a task; the leader stops after the third.
        let (progress, mut done) = tokio::sync::mpsc::unbounded_channel();
        let series = tokio::spawn(async move {
            let mut nums = Vec::new();
            for gid in 2..=11 {
                let num = clerk.join(groups(&[gid])).await;
                nums.push(num.clone());
                let _ = progress.send(num);
            }
            (clerk, nums)
        });
        for _ in 0..3 {
            done.recv().await.expect("series makes progress").unwrap();
        }
        cluster.stop(leader).await;
        let (mut clerk, nums) = series.await.expect("series task");

        // Every join applied exactly once, in order, despite the retries
        // the failover caused.
        let expected: Vec<Result<ConfigNum, ClerkError>> = (2..=11).map(Ok).collect();
        assert_eq!(nums, expected);
        assert_ne!(
            clerk.leader(),
            Some(cluster.members[&node_id(leader)].client),
            "the series finished against a new leader"
        );
        let latest = clerk.query(None).await.unwrap();
        assert_eq!(latest.num, 11);
        assert_eq!(latest.groups, groups(&(1..=11).collect::<Vec<_>>()));
        assert_balanced(&latest);
        let all = history(&mut clerk, 11).await;
        cluster.assert_history(&all).await;

        // The old leader comes back from its directory and catches up.
        cluster.restart(leader).await;
        cluster.assert_history(&all).await;
        drop(clerk);
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clerks_leave_a_consistent_balanced_configuration() {
    bounded(Duration::from_secs(60), async {
        let cluster = Cluster::start(3, driver(10, 0)).await;
        // Clerk c owns gids 10c+1..=10c+3 and runs its own fixed script.
        let script: [(bool, Gid); 8] = [
            (true, 1),
            (true, 2),
            (false, 1),
            (true, 3),
            (true, 1),
            (false, 2),
            (false, 3),
            (true, 2),
        ];
        let mut tasks = Vec::new();
        for c in 1..=5u64 {
            let mut clerk = cluster.clerk(100 + c);
            let script = script
                .iter()
                // Rotate per clerk so they do not move in lockstep.
                .map(|&(join, offset)| (join, 10 * c + (offset + c) % 3 + 1))
                .collect::<Vec<_>>();
            tasks.push(tokio::spawn(async move {
                let mut present = BTreeSet::new();
                let mut nums = Vec::new();
                for (join, gid) in script {
                    let num = if join {
                        present.insert(gid);
                        clerk.join(groups(&[gid])).await
                    } else {
                        present.remove(&gid);
                        clerk.leave(vec![gid]).await
                    };
                    nums.push(num.expect("own gids: never refused, never lost"));
                }
                (present, nums)
            }));
        }
        let mut present = BTreeSet::new();
        let mut nums = Vec::new();
        for task in tasks {
            let (mine, created) = task.await.expect("clerk task");
            present.extend(mine);
            nums.extend(created);
        }
        // Each of the 40 changes created exactly one configuration.
        nums.sort_unstable();
        assert_eq!(nums, (1..=40).collect::<Vec<_>>());

        let mut clerk = cluster.clerk(1);
        let latest = clerk.query(None).await.unwrap();
        assert_eq!(latest.num, 40);
        assert_eq!(
            latest.groups.keys().copied().collect::<BTreeSet<_>>(),
            present,
            "a gid is present iff its last operation was a join"
        );
        assert_balanced(&latest);
        let all = history(&mut clerk, 40).await;
        for config in &all {
            assert_balanced(config);
        }
        cluster.assert_history(&all).await;
        drop(clerk);
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_change_is_applied_once() {
    bounded(Duration::from_secs(60), async {
        let cluster = Cluster::start(3, driver(10, 0)).await;
        let mut clerk = cluster.clerk(1);
        assert_eq!(clerk.join(groups(&[1])).await, Ok(1));
        let leader = clerk.leader().expect("a leader answered");

        // The same (client_id, seq) twice over the raw RPC: one new
        // configuration, and the retry gets the first reply.
        let raw = connect(leader, &net()).await.unwrap();
        let join = ControllerOp::Join {
            groups: groups(&[2]),
        };
        for _ in 0..2 {
            let answer = raw
                .change(tarpc::context::current(), 77, 1, join.clone())
                .await
                .unwrap();
            assert_eq!(answer, Ok(ControllerReply::Changed { num: 2 }));
            assert_eq!(clerk.query(None).await.unwrap().num, 2);
        }
        // After a later request, an old copy is refused, not applied.
        let leave = ControllerOp::Leave { gids: vec![2] };
        let answer = raw
            .change(tarpc::context::current(), 77, 2, leave)
            .await
            .unwrap();
        assert_eq!(answer, Ok(ControllerReply::Changed { num: 3 }));
        let answer = raw
            .change(tarpc::context::current(), 77, 1, join)
            .await
            .unwrap();
        assert_eq!(
            answer,
            Ok(ControllerReply::Error(ControllerError::StaleSeq {
                client_id: 77,
                seq: 1,
                last_seq: 2
            }))
        );
        assert_eq!(clerk.query(None).await.unwrap().num, 3);
        drop(raw);

        // A clerk whose first two replies are lost retries twice and still
        // gets the configuration its single application created.
        let mut unlucky = ControllerClerk::new(
            cluster.client_addrs(),
            ClerkOptions {
                lose_replies_for_testing: 2,
                ..clerk_options(2)
            },
        );
        assert_eq!(unlucky.join(groups(&[3])).await, Ok(4));
        assert_eq!(clerk.query(None).await.unwrap().num, 4);
        // A retried refusal is the same refusal.
        let mut unlucky = ControllerClerk::new(
            cluster.client_addrs(),
            ClerkOptions {
                lose_replies_for_testing: 1,
                ..clerk_options(3)
            },
        );
        assert_eq!(
            unlucky.join(groups(&[3])).await,
            Err(ClerkError::Refused(ControllerError::GroupExists { gid: 3 }))
        );
        let latest = clerk.query(None).await.unwrap();
        assert_eq!(latest.num, 4);
        let all = history(&mut clerk, 4).await;
        cluster.assert_history(&all).await;
        drop((clerk, unlucky));
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_compact_the_log_and_keep_the_history() {
    bounded(Duration::from_secs(60), async {
        let mut cluster = Cluster::start(3, driver(10, 4)).await;
        let mut clerk = cluster.clerk(1);
        let mut num = 0;
        for gid in 1..=8 {
            num += 1;
            assert_eq!(clerk.join(groups(&[gid])).await, Ok(num));
            num += 1;
            let key = format!("key{gid}").into_bytes();
            assert_eq!(clerk.split(key).await.map(|(n, _)| n), Ok(num));
        }
        for gid in 1..=4 {
            num += 1;
            assert_eq!(clerk.leave(vec![gid]).await, Ok(num));
        }
        let all = history(&mut clerk, num).await;
        cluster.assert_history(&all).await;
        // Every replica took snapshots and compacted its log below them.
        for server in cluster.running() {
            let handle = server.node_handle();
            let metrics = handle
                .wait_for(Duration::from_secs(10), |m| {
                    m.log_start > 1 && m.snapshots_taken + m.snapshots_installed > 0
                })
                .await;
            assert!(
                metrics.is_some(),
                "replica {} never compacted: {:?}",
                server.node_id(),
                server.metrics()
            );
        }
        drop(clerk);

        // Restarted from snapshot + WAL, every replica has every
        // configuration, not just those after the snapshot.
        for i in 0..3 {
            cluster.stop(i).await;
        }
        for i in 0..3 {
            cluster.restart(i).await;
        }
        for server in cluster.running() {
            let restored = server
                .node_handle()
                .wait_for(Duration::from_secs(5), |m| m.log_start > 1)
                .await;
            assert!(restored.is_some(), "{:?}", server.metrics());
        }
        let mut clerk = cluster.clerk(2);
        assert_eq!(history(&mut clerk, num).await, all);
        cluster.assert_history(&all).await;
        drop(clerk);
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_a_change_is_indeterminate_within_the_deadline() {
    bounded(Duration::from_secs(60), async {
        // 25 ms ticks: the leader notices its quorum is gone only after
        // 500 ms, long after the change below has reached it.
        let mut cluster = Cluster::start(3, driver(25, 0)).await;
        let mut clerk = ControllerClerk::new(
            cluster.client_addrs(),
            ClerkOptions {
                deadline: Duration::from_secs(3),
                rpc_timeout: Duration::from_secs(1),
                ..clerk_options(1)
            },
        );
        assert_eq!(clerk.join(groups(&[1])).await, Ok(1));
        let leader = cluster.index_of(clerk.leader().expect("a leader answered"));
        let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        for &i in &followers {
            cluster.stop(i).await;
        }

        let started = Instant::now();
        let outcome = clerk.join(groups(&[2])).await;
        let took = started.elapsed();
        assert!(
            matches!(outcome, Err(ClerkError::Indeterminate(_))),
            "{outcome:?}"
        );
        // The clerk keeps trying until its deadline (a hang is caught by
        // the test's own bound).
        assert!(took >= Duration::from_secs(3), "{took:?}");
        // A query changes nothing: it is unavailable, never indeterminate.
        let outcome = clerk.query(None).await;
        assert!(
            matches!(outcome, Err(ClerkError::Unavailable(_))),
            "{outcome:?}"
        );
        // A change that reached no replica at all certainly did not happen.
        let dead: Vec<SocketAddr> = followers
            .iter()
            .map(|&i| cluster.members[&node_id(i)].client)
            .collect();
        let mut stranded = ControllerClerk::new(
            dead,
            ClerkOptions {
                deadline: Duration::from_millis(500),
                ..clerk_options(2)
            },
        );
        let outcome = stranded.join(groups(&[3])).await;
        assert!(
            matches!(outcome, Err(ClerkError::Unavailable(_))),
            "{outcome:?}"
        );

        // With the quorum back the clerk goes on; the indeterminate join
        // took effect or not, but at most once and consistently everywhere.
        for &i in &followers {
            cluster.restart(i).await;
        }
        let num = clerk.join(groups(&[4])).await.expect("quorum is back");
        let latest = clerk.query(None).await.unwrap();
        let applied = latest.groups.contains_key(&2);
        assert_eq!(num, if applied { 3 } else { 2 });
        assert_eq!(latest.num, num);
        let all = history(&mut clerk, num).await;
        cluster.assert_history(&all).await;
        drop((clerk, stranded));
        cluster.shutdown().await;
    })
    .await;
}

/// Writes `bytes` on a fresh connection and waits for the server to close
/// it.
async fn assert_server_closes(addr: SocketAddr, bytes: &[u8], case: &str) {
    let mut stream = TcpStream::connect(addr).await.expect("raw connect");
    stream.write_all(bytes).await.expect("raw write");
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(n) if n > 0 => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(read.is_ok(), "{case}: the server kept the connection open");
}

/// A bincode `tarpc::ClientMessage::Request` for `query` whose deadline is
/// `deadline` away, framed with its 4-byte length.
fn request_frame(deadline: Duration) -> Vec<u8> {
    let mut context = tarpc::context::current();
    context.deadline = Instant::now() + deadline;
    let message = tarpc::ClientMessage::Request(tarpc::Request {
        context,
        id: 1,
        message: ShardControllerRequest::Query { num: None },
    });
    let body = bincode::DefaultOptions::new()
        .serialize(&message)
        .expect("encodes");
    let mut frame = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_admin_input_closes_only_its_connection() {
    bounded(Duration::from_secs(60), async {
        let cluster = Cluster::start(1, driver(10, 0)).await;
        let server = cluster.server(0);
        let addr = server.client_addr();
        let mut clerk = cluster.clerk(1);
        assert_eq!(clerk.join(groups(&[1])).await, Ok(1));

        let max = net().max_frame_bytes;
        let mut oversized = u32::try_from(max + 1).unwrap().to_be_bytes().to_vec();
        oversized.extend_from_slice(&[0u8; 64]);
        let mut garbage = 16u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(&[0xFF; 16]);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("garbage frame body", garbage),
            ("length above the frame limit", oversized),
            // tarpc would panic on this deadline; the codec refuses it.
            (
                "request deadline three years away",
                request_frame(Duration::from_secs(3 * 365 * 24 * 3600)),
            ),
        ];
        let case_count = u64::try_from(cases.len()).unwrap();
        for (case, bytes) in cases {
            assert_server_closes(addr, &bytes, case).await;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.client_stats().connections_failed < case_count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let stats = server.client_stats();
        assert_eq!(stats.connections_failed, case_count, "{stats:?}");
        assert_eq!(stats.connection_panics, 0, "{stats:?}");
        // A sane request with a near deadline on the same kind of frame is
        // answered (so the frame helper is right), and the clerk's own
        // connection still works.
        let near = request_frame(Duration::from_secs(5));
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&near).await.unwrap();
        let mut length = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut length))
            .await
            .expect("answered in time")
            .expect("an answer frame");
        assert_eq!(clerk.join(groups(&[2])).await, Ok(2));
        drop((clerk, stream));
        cluster.shutdown().await;
    })
    .await;
}
