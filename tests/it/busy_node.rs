//! A node that is busy is not a node that is gone. Node `b` runs in this process on a
//! runtime of its own with one worker, which the test blocks for 13 s (longer than the
//! registry's 10 s TTL, shorter than the presence TTL): nothing of `b`'s runtime runs, as
//! when a node is starved of CPU or stuck behind thousands of ready tasks, while the process
//! lives. Its registry heartbeat runs on a thread and a connection of its own and keeps its
//! entry, so node `a`'s watcher gets no `leave` for `b`'s members. Before, `a` removed them
//! (`leave`) and `b` wrote them back (`join`) once it caught up: 29 of the million run's 53
//! nodes did that under load.

use std::time::Duration;

use serde_json::Value;

use crate::{
    harness::{
        SteadyPublisher, TestClient, TestServer, TestServerBuilder, expect_all_acknowledged,
        patience,
    },
    presence::{builder, member_at},
    redis_server::RedisServer,
};

const ROOM: &str = "room:1";

/// Node `node_id` of the cluster at `url`, with the presence namespaces and a presence TTL
/// well beyond the stall.
fn config(url: &str, node_id: &str) -> crate::harness::TestServerBuilder {
    let node_id = node_id.to_owned();
    builder().redis(url).configure(move |config| {
        config.server.node_id = node_id;
        config.presence.ttl = Duration::from_secs(60);
        config.cluster.partitions = 4;
    })
}

/// How many of `b`'s members (users `b-N`) a `join` or `leave` frame names (one, or a
/// coalesced list).
fn named(frame: &Value) -> usize {
    let of_b = |member: &Value| {
        member["user"]
            .as_str()
            .is_some_and(|user| user.starts_with("b-"))
    };
    frame["members"].as_array().map_or_else(
        || usize::from(of_b(frame)),
        |members| members.iter().filter(|member| of_b(member)).count(),
    )
}

/// `join` and `leave` frames' members counted until nothing arrives for `quiet`.
async fn count_events(watcher: &mut TestClient, quiet: Duration) -> (usize, usize) {
    let (mut joins, mut leaves) = (0, 0);
    while let Some(frame) = watcher.try_recv_within(quiet).await {
        match frame["type"].as_str() {
            Some("join") => joins += named(&frame),
            Some("leave") => leaves += named(&frame),
            _ => {}
        }
    }
    (joins, leaves)
}

/// Blocks the runtime worker it runs on for `stall`.
#[allow(
    clippy::disallowed_methods,
    reason = "blocking the node's runtime worker is the fault under test"
)]
pub(crate) fn block_worker(stall: Duration) {
    std::thread::sleep(stall);
}

/// A node in this process on a runtime of its own with one worker, which the test can
/// block (`runtime.spawn(async { block_worker(..) })`): nothing of the node's runtime runs
/// meanwhile, as when a node is starved of CPU, while its process lives. The control API
/// and the registry heartbeat have threads of their own and go on.
pub(crate) struct StallableNode {
    pub(crate) runtime: std::sync::Arc<tokio::runtime::Runtime>,
    pub(crate) server: TestServer,
}

impl StallableNode {
    pub(crate) async fn start(builder: TestServerBuilder) -> StallableNode {
        let runtime = std::sync::Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap(),
        );
        let server = {
            let runtime = std::sync::Arc::clone(&runtime);
            tokio::task::spawn_blocking(move || runtime.block_on(builder.start()))
                .await
                .unwrap()
        };
        StallableNode { runtime, server }
    }

    /// Stops the node on its runtime, then the runtime (off the test's runtime).
    pub(crate) async fn stop(self) {
        let StallableNode { runtime, server } = self;
        tokio::task::spawn_blocking(move || {
            runtime.block_on(server.stop());
            drop(runtime);
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_runtime_is_not_taken_for_a_departed_node() {
    let redis = RedisServer::start(false);
    let url = redis.url();
    let a = config(&url, "a").start().await;

    // Node b on a runtime the test can stall.
    let b = StallableNode::start(config(&url, "b")).await;
    let mut watcher = member_at(&a.ws_url(), "watcher").await;
    watcher.subscribe(ROOM).await;
    let mut members = Vec::new();
    for n in 0..3 {
        let mut member = member_at(&b.server.ws_url(), &format!("b-{n}")).await;
        member.subscribe(ROOM).await;
        members.push(member);
    }
    let (joins, _) = count_events(&mut watcher, patience(Duration::from_secs(2))).await;
    assert_eq!(joins, 3, "the watcher saw b's members join");

    // b's only worker blocked: its tasks, timers and sockets wait; the process lives.
    let stall = Duration::from_secs(13);
    b.runtime.spawn(async move { block_worker(stall) });
    tokio::time::sleep(stall).await;
    // Past the stall, the time a's heartbeat needs to judge (2 s) and b's catching up.
    let (joins, leaves) = count_events(&mut watcher, Duration::from_secs(6)).await;
    assert_eq!(
        (joins, leaves),
        (0, 0),
        "b was busy, not gone: no leave, no join back"
    );
    let listed = a.get_json("/v1/nodes").await.1;
    assert_eq!(
        listed["nodes"].as_array().map(Vec::len),
        Some(2),
        "both nodes listed: {listed}"
    );

    drop(members);
    b.stop().await;
}

/// The ids of the connections Redis holds, but the one that asks.
fn redis_clients(redis: &RedisServer) -> Vec<u64> {
    let list = redis.cli(&["CLIENT", "LIST"]).expect("CLIENT LIST");
    let mut ids: Vec<u64> = list
        .lines()
        .filter(|line| !line.contains("cmd=client|list"))
        .filter_map(|line| line.strip_prefix("id=")?.split(' ').next()?.parse().ok())
        .collect();
    ids.sort_unstable();
    ids
}

/// A node whose event loop runs late does not take the replies it has not read yet for a
/// Redis outage, nor its late readers for stuck ones. The node's only worker is blocked 6 s
/// at a time, past its 2 s `cluster.publish_timeout` and the readers' 5 s stall limit, while
/// a backend publishes through its control API (a thread of its own, on time): Redis
/// answers each publish at once, but the task that reads the replies waits for the worker.
/// Before, the publish timed out, was answered 503, the node dropped its link to Redis as if
/// Redis were gone, and the watchdog restarted every reader (issue 27's million run: 1,140
/// such "outages", none of them Redis's, and 542,194 subscribes refused `unavailable`). Now
/// waits and silences are measured in the event loop's on-time running: every publish is
/// acknowledged, no connection to Redis is replaced, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_event_loop_is_not_taken_for_a_redis_outage() {
    let redis = RedisServer::start(false);
    let node = StallableNode::start(builder().redis(&redis.url()).configure(|config| {
        config.cluster.publish_timeout = Duration::from_secs(2);
        config.cluster.partitions = 4;
    }))
    .await;
    let mut subscriber = node.server.client().await;
    subscriber.subscribe("feed").await;
    // Once its registry heartbeat has its connection too.
    crate::assert_eventually!(
        node.server.get_json("/v1/nodes").await.1["nodes"]
            .as_array()
            .is_some_and(|nodes| nodes.len() == 1),
        "the node registered"
    );
    let links = redis_clients(&redis);

    let publisher = SteadyPublisher::start(&node.server, "feed");
    // Within four times the timeout (the most a wait is extended), twice.
    let stalls = node.runtime.spawn(async {
        for _ in 0..2 {
            block_worker(Duration::from_secs(6));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    stalls.await.unwrap();
    let (acked, refused, _) = publisher.finish().await;

    assert_eq!(
        refused, 0,
        "no publish refused: Redis answered, the node read its replies late"
    );
    assert_eq!(
        redis_clients(&redis),
        links,
        "the node kept its links to Redis: no reconnect, no reader restarted"
    );
    expect_all_acknowledged(&mut subscriber, &acked).await;
    drop(subscriber);
    node.stop().await;
}
