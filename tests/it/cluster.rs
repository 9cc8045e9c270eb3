//! Several nodes clustered through a real `redis-server`.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};

use crate::{
    harness::{
        BinaryNode, SteadyPublisher, TestClient, TestServer, expect_all_acknowledged, patience, seq,
    },
    redis_server::RedisServer,
};

/// `n` nodes clustered through `redis`.
pub(crate) async fn nodes(redis: &RedisServer, n: usize) -> Vec<TestServer> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(TestServer::builder().redis(&redis.url()).start().await);
    }
    nodes
}

async fn drain_all(nodes: Vec<TestServer>) {
    for node in nodes {
        node.stop().await;
    }
}

/// Reads `count` messages and checks offsets run on from `first` without gap or duplicate.
pub(crate) async fn expect_contiguous(
    client: &mut TestClient,
    first: u64,
    count: u64,
) -> Vec<Value> {
    let mut messages = Vec::new();
    for expected in first..first + count {
        let message = client.recv_type("message").await;
        assert_eq!(
            seq(&message["offset"]),
            expected,
            "gap, duplicate or reorder"
        );
        messages.push(message);
    }
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_every_message_once_in_order() {
    const PER_NODE: u64 = 60;
    let redis = RedisServer::start(false);
    let nodes = Arc::new(nodes(&redis, 3).await);
    let mut subscribers = Vec::new();
    for node in nodes.iter() {
        for _ in 0..2 {
            let mut client = node.client().await;
            let reply = client.subscribe("orders").await;
            assert_eq!(seq(&reply["offset"]), 0);
            subscribers.push(client);
        }
    }
    // Every node publishes concurrently, over HTTP and over WebSockets.
    let mut publishers = Vec::new();
    for index in 0..3 {
        let shared = Arc::clone(&nodes);
        publishers.push(tokio::spawn(async move {
            for n in 0..PER_NODE / 2 {
                shared[index].publish("orders", json!([index, n])).await;
            }
        }));
        let mut client = nodes[index].client().await;
        publishers.push(tokio::spawn(async move {
            for n in PER_NODE / 2..PER_NODE {
                client
                    .send(json!({"type":"publish","channel":"orders","data":[index, n]}))
                    .await;
                assert_eq!(client.recv_type("published").await["type"], "published");
            }
        }));
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let total = 3 * PER_NODE;
    let mut orders = Vec::new();
    for subscriber in &mut subscribers {
        let messages = expect_contiguous(subscriber, 1, total).await;
        orders.push(
            messages
                .iter()
                .map(|m| m["data"].clone())
                .collect::<Vec<_>>(),
        );
    }
    // One order for everyone, wherever they are connected.
    assert!(orders.windows(2).all(|pair| pair[0] == pair[1]));
    crate::assert_eventually!(
        nodes[0].get_json("/v1/stats?scope=cluster").await.1["nodes"] == 3,
        "every node is in the registry"
    );
    drain_all(Arc::try_unwrap(nodes).ok().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_another_node_without_gap() {
    let redis = RedisServer::start(false);
    let nodes = nodes(&redis, 3).await;
    let mut client = nodes[0].client().await;
    client.subscribe("feed").await;
    for n in 0..5 {
        nodes[1].publish("feed", json!(n)).await;
    }
    let seen = expect_contiguous(&mut client, 1, 5).await;
    let last = seen[4]["offset"].as_str().unwrap().to_owned();
    drop(client);
    // Published while the client is away, on yet another node.
    for n in 5..12 {
        nodes[2].publish("feed", json!(n)).await;
    }
    let mut client = nodes[1].client().await;
    let reply = client.subscribe_since("feed", &last).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(seq(&reply["offset"]), 12);
    let missed = expect_contiguous(&mut client, 6, 7).await;
    assert_eq!(missed[0]["data"], json!(5));
    // And it continues live.
    nodes[0].publish("feed", json!("live")).await;
    assert_eq!(
        expect_contiguous(&mut client, 13, 1).await[0]["data"],
        "live"
    );

    // The history API reads the same log from any node.
    let (status, body) = nodes[2]
        .get_json(&format!("/v1/channels/feed/history?since={last}&limit=3"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["recovered"], true);
    assert_eq!(body["messages"][0]["data"], json!(5));
    drain_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_past_trimmed_history_is_not_recovered() {
    let redis = RedisServer::start(false);
    let a = TestServer::builder()
        .redis(&redis.url())
        .configure(|c| c.history.size = 5)
        .start()
        .await;
    let b = TestServer::builder()
        .redis(&redis.url())
        .configure(|c| c.history.size = 5)
        .start()
        .await;
    let first = a.publish("short", json!(0)).await;
    for n in 1..10 {
        a.publish("short", json!(n)).await;
    }
    let mut client = b.client().await;
    let reply = client.subscribe_since("short", &first).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(seq(&reply["offset"]), 10);
    let live = a.publish("short", json!("live")).await;
    assert_eq!(client.recv_type("message").await["offset"], live.as_str());
    a.stop().await;
    b.stop().await;
}

async fn outage_case(fault: impl AsyncFnOnce(&mut RedisServer)) {
    let mut redis = RedisServer::start(true);
    let a = TestServer::builder().redis(&redis.url()).start().await;
    let b = TestServer::builder().redis(&redis.url()).start().await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    on_a.subscribe("steady").await;
    on_b.subscribe("steady").await;
    let publisher = SteadyPublisher::start(&a, "steady");
    publisher.wait_acked(10).await;
    fault(&mut redis).await;
    // Publishing goes on after the fault.
    publisher.wait_acked(20).await;
    let (acked, refused, slowest) = publisher.finish().await;
    assert!(
        slowest < patience(Duration::from_secs(3)),
        "every publish answered within the deadline (slowest {slowest:?})"
    );
    expect_all_acknowledged(&mut on_a, &acked).await;
    expect_all_acknowledged(&mut on_b, &acked).await;
    eprintln!(
        "acked {} refused {refused} slowest {slowest:?}",
        acked.len()
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_for_five_seconds_loses_no_acknowledged_message() {
    outage_case(async |redis: &mut RedisServer| {
        redis.pause();
        tokio::time::sleep(Duration::from_secs(5)).await;
        redis.resume();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_from_its_aof_loses_no_acknowledged_message() {
    outage_case(async |redis: &mut RedisServer| {
        redis.stop();
        tokio::time::sleep(Duration::from_secs(5)).await;
        redis.start_again(true);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_connections_are_reopened_without_loss() {
    outage_case(async |redis: &mut RedisServer| {
        assert!(redis.kill_clients() > 0);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(redis.kill_clients() > 0);
    })
    .await;
}

/// A resume that must read Redis pins the channel; a session closed while that read waits
/// (Redis paused) must give the pin back, or the channel is never swept and every later
/// resume of it on this node fails once its pending list overflows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_closed_during_a_resume_read_leaves_no_pin() {
    let redis = RedisServer::start(false);
    let node = TestServer::builder().redis(&redis.url()).start().await;
    let first = node.publish("inbox", json!(1)).await;
    node.publish("inbox", json!(2)).await;
    let mut client = node.client().await;
    redis.pause();
    client
        .send(json!({"type":"subscribe","id":1,"channel":"inbox","since":first}))
        .await;
    // The subscribe pinned the channel and waits for Redis; close the session meanwhile.
    crate::assert_eventually!(
        node.hub().snapshot().channels == 1,
        "the subscribe pins its channel while it reads Redis"
    );
    let (status, _) = node
        .post("/v1/disconnect", json!({"conn_id": client.conn_id()}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(client.close_code().await, 4000);
    crate::assert_eventually!(node.hub().connections() == 0, "the session ended");
    redis.resume();
    node.hub().sweep();
    assert_eq!(
        node.hub().snapshot().channels,
        0,
        "the channel was unpinned and dropped"
    );
    // Resumes of that channel still recover (once the node has reconnected to Redis).
    let mut again = node.client().await;
    let mut reply;
    let mut tries = 0;
    loop {
        again
            .send(json!({"type":"subscribe","id":2,"channel":"inbox","since":first}))
            .await;
        reply = again.recv().await;
        tries += 1;
        if reply["type"] == "subscribed" || tries == 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(again.recv_type("message").await["data"], 2);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_during_an_outage_get_503_and_readiness_reports_it() {
    let redis = RedisServer::start(false);
    let node = TestServer::builder().redis(&redis.url()).start().await;
    redis.pause();
    let started = tokio::time::Instant::now();
    let (status, body) = node
        .post("/v1/publish", json!({"channel":"x","data":1}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("unavailable"))
    );
    assert!(started.elapsed() < patience(Duration::from_secs(3)));
    let mut client = node.client().await;
    client
        .send(json!({"type":"publish","id":9,"channel":"x","data":1}))
        .await;
    let reply = client.recv().await;
    assert_eq!(
        (reply["code"].as_str(), reply["id"].as_u64()),
        (Some("unavailable"), Some(9))
    );
    // A shared outage is reported, but by default does not empty the pool.
    crate::assert_eventually!(
        node.get_json("/readyz").await.1["details"].is_array(),
        "readiness details mention the outage"
    );
    let (status, body) = node.get_json("/readyz").await;
    assert_eq!(status, 200, "{body}");
    redis.resume();
    crate::assert_eventually!(
        node.post("/v1/publish", json!({"channel":"x","data":2}))
            .await
            .0
            == 200,
        "publishing recovers"
    );
    assert!(
        node.metric("switchboard_redis_errors_total{op=\"publish\"}")
            .await
            >= 1.0
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_never_replays_wrong_data() {
    let mut redis = RedisServer::start(false);
    let a = TestServer::builder().redis(&redis.url()).start().await;
    let b = TestServer::builder().redis(&redis.url()).start().await;
    let mut watcher = b.client().await;
    watcher.subscribe("amnesia").await;
    let mut last = String::new();
    for n in 0..5 {
        last = a.publish("amnesia", json!(n)).await;
    }
    expect_contiguous(&mut watcher, 1, 5).await;
    redis.stop();
    redis.start_again(false);
    // Each node finds out on its own that Redis came back (a node whose connection broke
    // answers "unavailable" until it has reconnected): wait for both.
    for node in [&a, &b] {
        crate::assert_eventually!(
            node.post("/v1/publish", json!({"channel":"other","data":0}))
                .await
                .0
                == 200,
            "Redis is back"
        );
    }
    let after = a.publish("amnesia", json!("new epoch")).await;
    assert_ne!(
        after.split_once('-').unwrap().0,
        last.split_once('-').unwrap().0
    );
    // The live subscriber is told, then follows the new epoch.
    let (epoch, _) = after.split_once('-').unwrap();
    let reset = watcher.recv().await;
    assert_eq!(
        reset,
        json!({"type": "reset", "channel": "amnesia", "offset": format!("{epoch}-0")})
    );
    let message = watcher.recv_type("message").await;
    assert_eq!(message["offset"], after.as_str());
    // A client resuming from before the restart is told to reload, on either node.
    for node in [&a, &b] {
        let mut client = node.client().await;
        let reply = client.subscribe_since("amnesia", &last).await;
        assert_eq!(reply["recovered"], false, "{reply}");
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_and_leave_the_registry() {
    let redis = RedisServer::start(false);
    let a = TestServer::builder().redis(&redis.url()).start().await;
    let b = TestServer::builder().redis(&redis.url()).start().await;
    let _client = b.client().await;
    crate::assert_eventually!(
        a.get_json("/v1/nodes").await.1["nodes"]
            .as_array()
            .map(Vec::len)
            == Some(2),
        "both nodes listed"
    );
    crate::assert_eventually!(
        a.get_json("/v1/stats?scope=cluster").await.1["connections"] == 1,
        "cluster stats count b's connection"
    );
    b.stop().await;
    crate::assert_eventually!(
        a.get_json("/v1/nodes").await.1["nodes"]
            .as_array()
            .map(Vec::len)
            == Some(1),
        "a drained node leaves the registry"
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_bus_reader_fails_readiness_then_heals_without_loss() {
    let redis = RedisServer::start(false);
    let proxy = crate::fault_proxy::FaultProxy::start(redis.port).await;
    let publisher_node = TestServer::builder().redis(&redis.url()).start().await;
    let wedged_node = TestServer::builder().redis(&proxy.url()).start().await;
    let mut client = wedged_node.client().await;
    client.subscribe("steady").await;
    let publisher = SteadyPublisher::start(&publisher_node, "steady");

    // Redis keeps answering this node's commands; only its readers get nothing.
    proxy.wedge_readers(true);
    crate::assert_eventually!(
        wedged_node.get_json("/readyz").await.1["reasons"]
            .as_array()
            .is_some_and(|reasons| reasons
                .iter()
                .any(|r| r.as_str().unwrap().contains("stalled"))),
        "a stalled reader fails readiness"
    );
    assert_eq!(
        publisher_node.get("/readyz").await.0,
        200,
        "the healthy node stays ready"
    );
    proxy.wedge_readers(false);
    crate::assert_eventually!(
        wedged_node.get("/readyz").await.0 == 200,
        "the node heals and is ready again"
    );
    let (acked, _, _) = publisher.finish().await;
    expect_all_acknowledged(&mut client, &acked).await;
    publisher_node.stop().await;
    wedged_node.stop().await;
}

/// `rediss://` to a `redis-server` serving TLS with a private CA (`cluster.redis_ca_file`):
/// two nodes cluster through it; a node that does not trust the CA never becomes ready and
/// says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_cluster_over_rediss_with_a_private_ca() {
    let (redis, ca_pem) = RedisServer::start_tls();
    let ca_file = std::env::temp_dir().join(format!("sb-redis-ca-{}.pem", redis.port));
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let node = || {
        TestServer::builder()
            .redis(&redis.tls_url())
            .configure(|config| config.cluster.redis_ca_file = ca_file.display().to_string())
    };
    let (a, b) = (node().start().await, node().start().await);
    let mut subscriber = b.client().await;
    subscriber.subscribe("secure").await;
    let first = a.publish("secure", json!(1)).await;
    a.publish("secure", json!(2)).await;
    expect_contiguous(&mut subscriber, 1, 2).await;
    // History and resume read Redis over TLS too.
    let mut resumed = a.client().await;
    let reply = resumed.subscribe_since("secure", &first).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(resumed.recv_type("message").await["data"], 2);

    // Without the CA, the system's roots do not trust Redis's certificate.
    let untrusting = TestServer::builder()
        .redis(&redis.tls_url())
        .start_unready()
        .await;
    crate::assert_eventually!(
        untrusting.get_json("/readyz").await.1["details"]
            .to_string()
            .contains("certificate"),
        "readiness names the certificate problem"
    );
    let (status, body) = untrusting.get_json("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let (status, _) = untrusting
        .post("/v1/publish", json!({"channel": "secure", "data": 3}))
        .await;
    assert_eq!(status, 503);
    untrusting.stop().await;
    a.stop().await;
    b.stop().await;
    std::fs::remove_file(ca_file).unwrap();
}

/// A Redis restart: the node logs the outage once when it begins and once when it ends,
/// with its duration, and its readiness does not fail when Redis comes back (every node's
/// readers failed during the outage; they get a stall period from Redis's return instead
/// of all reporting "stalled" at the same moment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_is_logged_once_each_way_and_keeps_the_node_ready() {
    let mut redis = RedisServer::start(true);
    let url = redis.url();
    let node = BinaryNode::start_logged(&["--redis", &url], &[]).await;
    let readyz = format!("http://{}/readyz", node.control_addr);
    let http = reqwest::Client::new();
    let published = http
        .post(format!("http://{}/v1/publish", node.control_addr))
        .json(&json!({"channel": "news", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 200);
    redis.stop();
    // Longer than the readers' stall period (5 s).
    tokio::time::sleep(Duration::from_secs(7)).await;
    redis.start_again(true);
    // From Redis's return until well past the readers' stall period, every probe says ready.
    let mut unready = Vec::new();
    for _ in 0..80 {
        let response = http.get(&readyz).send().await.unwrap();
        if response.status() != 200 {
            unready.push(response.text().await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        unready.is_empty(),
        "{} probes unready after Redis came back, first: {:?}",
        unready.len(),
        unready.first()
    );
    let log = node.log().await;
    assert_eq!(log.matches("outage began").count(), 1, "{log}");
    assert_eq!(log.matches("outage over").count(), 1, "{log}");
    assert!(log.contains("outage_ms="), "the duration is logged: {log}");
}

/// Redis killed with SIGKILL (no persistence) while a backend publishes 50 messages a second
/// over HTTP: what Redis acknowledged but no node had read off the bus yet is gone with it.
/// A subscriber gets every acknowledged message of the old epoch up to the loss, in order,
/// then a `reset` (never a silent gap), then the new epoch from its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_kill_loses_only_what_a_reset_announces() {
    let mut redis = RedisServer::start(false);
    let a = TestServer::builder().redis(&redis.url()).start().await;
    let b = TestServer::builder().redis(&redis.url()).start().await;
    let mut watcher = b.client().await;
    watcher.subscribe("ticker").await;
    let publisher = SteadyPublisher::start(&a, "ticker");
    publisher.wait_acked(10).await;
    redis.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.start_again(false);
    // Publishing goes on into the new epoch.
    publisher.wait_acked(20).await;
    let (acked, refused, _) = publisher.finish().await;
    let last = acked.last().unwrap().clone();
    let (old_epoch, _) = acked[0].split_once('-').unwrap();
    let (new_epoch, _) = last.split_once('-').unwrap();
    assert_ne!(old_epoch, new_epoch, "Redis came back empty: a new epoch");

    let (mut old_seen, mut reset, mut new_seen) = (0, None, Vec::new());
    while new_seen.last() != Some(&last) {
        let frame = watcher.recv().await;
        match frame["type"].as_str() {
            Some("message") if reset.is_none() => {
                old_seen += 1;
                assert_eq!(
                    seq(&frame["offset"]),
                    old_seen,
                    "old epoch in order, no gap"
                );
            }
            Some("reset") => {
                assert!(reset.is_none(), "one reset");
                reset = Some(frame["offset"].as_str().unwrap().to_owned());
            }
            Some("message") => {
                let offset = frame["offset"].as_str().unwrap().to_owned();
                assert_eq!(
                    seq(&frame["offset"]),
                    new_seen.len() as u64 + 1,
                    "new epoch from 1"
                );
                new_seen.push(offset);
            }
            _ => {}
        }
    }
    assert_eq!(reset, Some(format!("{new_epoch}-0")));
    let acked_old = acked
        .iter()
        .filter(|offset| offset.starts_with(old_epoch))
        .count() as u64;
    let acked_new = acked.len() as u64 - acked_old;
    assert_eq!(new_seen.len() as u64, acked_new, "the new epoch complete");
    eprintln!(
        "acknowledged {acked_old} before the kill, {old_seen} of them delivered \
         ({} lost with Redis, announced by the reset); {refused} refused with 503 while \
         Redis was away; {acked_new} after, all delivered",
        acked_old - old_seen
    );
    a.stop().await;
    b.stop().await;
}
