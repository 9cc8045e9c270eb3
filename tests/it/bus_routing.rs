//! Inbox routing (`cluster.bus_routing = "inbox"`): a publish appends a message to the inbox
//! of each node that follows its channel, and a node reads only its own inboxes. Shown with
//! real nodes and a real `redis-server`: what Redis holds, and that every message still
//! arrives once and in order when the routing is lost, and beside nodes that read the log.

use std::time::Duration;

use serde_json::json;
use switchboard::config::BusRouting;

use crate::{
    cluster::expect_contiguous,
    harness::{SteadyPublisher, TestServer, expect_all_acknowledged},
    redis_server::RedisServer,
};

async fn node(redis: &RedisServer, id: &str, routing: BusRouting) -> TestServer {
    let id = id.to_owned();
    TestServer::builder()
        .redis(&redis.url())
        .configure(move |config| {
            config.server.node_id = id;
            config.cluster.bus_routing = routing;
            config.cluster.interest_ttl = Duration::from_secs(30);
        })
        .start()
        .await
}

/// The keys matching `pattern`, sorted.
fn keys(redis: &RedisServer, pattern: &str) -> Vec<String> {
    let mut keys: Vec<String> = redis
        .cli(&["--scan", "--pattern", pattern])
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    keys.sort();
    keys
}

/// The nodes (without their incarnation) whose inboxes a channel's messages go to.
fn interested(redis: &RedisServer, channel: &str) -> Vec<String> {
    let hashes = keys(redis, &format!("sb:*:int:{channel}"));
    assert!(hashes.len() <= 1, "{hashes:?}");
    let Some(hash) = hashes.first() else {
        return Vec::new();
    };
    let mut nodes: Vec<String> = redis
        .cli(&["HKEYS", hash])
        .unwrap_or_default()
        .lines()
        .map(|field| field.rsplit_once(':').unwrap().0.to_owned())
        .collect();
    nodes.sort();
    nodes
}

/// A channel's messages go only to the nodes with subscribers for it: a node without any
/// has no inbox at all, and each subscriber still gets every message in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_reads_only_the_channels_it_follows() {
    let redis = RedisServer::start(false);
    let a = node(&redis, "route-a", BusRouting::Inbox).await;
    let b = node(&redis, "route-b", BusRouting::Inbox).await;
    let idle = node(&redis, "route-idle", BusRouting::Inbox).await;
    let mut only_a = a.client().await;
    only_a.subscribe("only-a").await;
    let mut both_a = a.client().await;
    both_a.subscribe("both").await;
    let mut both_b = b.client().await;
    both_b.subscribe("both").await;

    for n in 0..30 {
        idle.publish("only-a", json!(n)).await;
        idle.publish("both", json!(n)).await;
        idle.publish("nobody", json!(n)).await;
    }
    expect_contiguous(&mut only_a, 1, 30).await;
    expect_contiguous(&mut both_a, 1, 30).await;
    expect_contiguous(&mut both_b, 1, 30).await;

    assert_eq!(interested(&redis, "only-a"), ["route-a"]);
    assert_eq!(interested(&redis, "both"), ["route-a", "route-b"]);
    assert_eq!(interested(&redis, "nobody"), Vec::<String>::new());
    let idle_inboxes = keys(&redis, "sb:*:in:route-idle:*");
    assert!(idle_inboxes.is_empty(), "{idle_inboxes:?}");
    // The log still holds every message (resumes and history read it).
    let logged: u64 = keys(&redis, "sb:*:bus")
        .iter()
        .map(|key| redis.cli(&["XLEN", key]).unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(logged >= 90, "{logged} entries in the partitions' logs");
    for node in [a, b, idle] {
        node.stop().await;
    }
}

/// Interest that Redis lost (here deleted by hand, as a Redis restarted empty or a node
/// stalled past `interest_ttl` would lose it) is written again at the node's next renewal,
/// and what its inbox missed meanwhile is read from the log: the subscriber gets every
/// acknowledged message, once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_interest_is_written_again_and_nothing_is_missed() {
    let redis = RedisServer::start(false);
    let subscribed = node(&redis, "lossy-sub", BusRouting::Inbox).await;
    let publishing = node(&redis, "lossy-pub", BusRouting::Inbox).await;
    let mut client = subscribed.client().await;
    client.subscribe("lossy").await;
    let lost_before = subscribed
        .metric("switchboard_bus_interest_lost_total")
        .await;
    let publisher = SteadyPublisher::start(&publishing, "lossy");
    publisher.wait_acked(10).await;
    let hash = keys(&redis, "sb:*:int:lossy");
    assert_eq!(hash.len(), 1, "{hash:?}");
    redis.cli(&["DEL", &hash[0]]).unwrap();

    // Renewals run every third of interest_ttl (30 s here).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    while subscribed
        .metric("switchboard_bus_interest_lost_total")
        .await
        <= lost_before
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node never noticed its interest was gone"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (acked, refused, _) = publisher.finish().await;
    assert_eq!(refused, 0);
    expect_all_acknowledged(&mut client, &acked).await;
    assert_eq!(interested(&redis, "lossy"), ["lossy-sub"]);
    assert!(
        subscribed
            .metric("switchboard_bus_replayed_entries_total")
            .await
            > 0.0
    );
    eprintln!(
        "{} messages acknowledged across the loss of the routing, all delivered in order",
        acked.len()
    );
    subscribed.stop().await;
    publishing.stop().await;
}

/// Nodes that read the log (`bus_routing = "log"`, as during an upgrade from a release
/// without inboxes) and nodes that read their inboxes exchange messages both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_and_inbox_nodes_share_one_cluster() {
    let redis = RedisServer::start(false);
    let log = node(&redis, "mixed-log", BusRouting::Log).await;
    let inbox = node(&redis, "mixed-inbox", BusRouting::Inbox).await;
    let mut on_log = log.client().await;
    on_log.subscribe("mixed").await;
    let mut on_inbox = inbox.client().await;
    on_inbox.subscribe("mixed").await;
    for n in 0..20 {
        let via = if n % 2 == 0 { &log } else { &inbox };
        via.publish("mixed", json!(n)).await;
    }
    expect_contiguous(&mut on_log, 1, 20).await;
    expect_contiguous(&mut on_inbox, 1, 20).await;
    // Only the inbox reader registered interest.
    assert_eq!(interested(&redis, "mixed"), ["mixed-inbox"]);
    log.stop().await;
    inbox.stop().await;
}
