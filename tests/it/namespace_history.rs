//! History per namespace (`[[namespaces]]` `history_size`, `history_ttl`) over real
//! sockets, on one node and on a cluster (real redis-server): an ephemeral namespace keeps
//! none (nothing written to Redis's history, a resume answers `recovered: false`, messages
//! with ids refused), another keeps fewer and for less long than `history.*`, and channels
//! of no such namespace keep the defaults.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard::config::{Config, EditRule, NamespaceConfig, Rule};

use crate::{
    harness::{TestClient, TestServer},
    redis_server::RedisServer,
};

fn namespaces(config: &mut Config) {
    let namespace = |pattern: &str, size, ttl| NamespaceConfig {
        pattern: pattern.to_owned(),
        subscribe: Rule::Anonymous,
        publish: Rule::Anonymous,
        history: Rule::Anonymous,
        presence: Rule::None,
        join_leave: false,
        edit: EditRule::Any,
        history_size: size,
        history_ttl: ttl,
        slow_consumer: switchboard::config::SlowConsumer::Disconnect,
        conflate_key: None,
        queue_bytes: None,
    };
    config.history.size = 100;
    config.namespaces = vec![
        namespace("typing:*", Some(0), None),
        namespace("inbox:*", Some(3), Some(Duration::from_secs(2))),
        namespace("*", None, None),
    ];
}

async fn history(server: &TestServer, channel: &str) -> Vec<Value> {
    let (status, page) = server
        .get_json(&format!("/v1/channels/{channel}/history"))
        .await;
    assert_eq!(status, 200, "{page}");
    page["messages"].as_array().unwrap().clone()
}

/// Publishes 5 messages to each of the three kinds of channel through `server`; the first
/// offset of the typing channel.
async fn publish_all(server: &TestServer) -> String {
    let first = server.publish("typing:t1", json!(0)).await;
    for n in 1..5 {
        server.publish("typing:t1", json!(n)).await;
    }
    for n in 0..5 {
        server.publish("inbox:u1", json!(n)).await;
        server.publish("room:r1", json!(n)).await;
    }
    first
}

/// What each namespace keeps, read through `reader`.
async fn check_kept(reader: &TestServer, first_typing: &str) {
    assert!(history(reader, "typing:t1").await.is_empty());
    let inbox: Vec<Value> = history(reader, "inbox:u1")
        .await
        .iter()
        .map(|message| message["data"].clone())
        .collect();
    assert_eq!(inbox, [json!(2), json!(3), json!(4)]);
    assert_eq!(history(reader, "room:r1").await.len(), 5);

    // A resume on the ephemeral channel says honestly that nothing was recovered.
    let mut client = TestClient::connect(&reader.ws_url()).await;
    client
        .send(json!({"type": "subscribe", "id": 1, "channel": "typing:t1", "since": first_typing}))
        .await;
    let subscribed = client.recv_type("subscribed").await;
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    // A message with an id needs history.
    let (status, answer) = reader
        .post(
            "/v1/publish",
            json!({"channel": "typing:t1", "data": 1, "message_id": "m-1"}),
        )
        .await;
    assert!(matches!(status, 409 | 422), "{status} {answer}");
    // The inbox's history ends after its own ttl (2 s), not history.ttl.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(history(reader, "inbox:u1").await.is_empty());
    assert_eq!(history(reader, "room:r1").await.len(), 5);
}

#[tokio::test]
async fn on_one_node_each_namespace_keeps_its_own_history() {
    let server = TestServer::builder().configure(namespaces).start().await;
    let first = publish_all(&server).await;
    check_kept(&server, &first).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_an_ephemeral_namespace_writes_no_history_to_redis() {
    let redis = RedisServer::start(false);
    let node = || {
        TestServer::builder()
            .redis(&redis.url())
            .configure(namespaces)
            .start()
    };
    let (a, b) = (node().await, node().await);
    let first = publish_all(&a).await;
    let keys = redis.cli(&["--scan", "--pattern", "*:hist:*"]).unwrap();
    assert!(!keys.contains("typing:t1"), "{keys}");
    assert!(
        keys.contains("inbox:u1") && keys.contains("room:r1"),
        "{keys}"
    );
    check_kept(&b, &first).await;
    for server in [a, b] {
        server.stop().await;
    }
}
