//! The core cluster behaviour against a real three-master Redis Cluster.

use serde_json::json;

use crate::{
    harness::{TestServer, seq},
    redis_server::RedisCluster,
};

async fn node(cluster: &RedisCluster) -> TestServer {
    TestServer::builder()
        .configure(|c| {
            c.cluster.redis = switchboard::config::RedisTarget::ClusterSeeds(cluster.seeds());
            c.cluster.partitions = 6;
        })
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_carries_order_resume_and_registry() {
    let cluster = RedisCluster::start();
    let a = node(&cluster).await;
    let b = node(&cluster).await;
    // Channels spread over partitions, and so over the three masters.
    let channels = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"];
    let mut subscriber = b.client().await;
    for channel in channels {
        subscriber.subscribe(channel).await;
    }
    for n in 0..10 {
        for channel in channels {
            a.publish(channel, json!(n)).await;
        }
    }
    let mut next = std::collections::HashMap::new();
    for _ in 0..10 * channels.len() {
        let message = subscriber.recv_type("message").await;
        let channel = message["channel"].as_str().unwrap().to_owned();
        let expected = next.entry(channel).or_insert(1);
        assert_eq!(seq(&message["offset"]), *expected, "per-channel order");
        *expected += 1;
    }
    assert!(next.values().all(|n| *n == 11));

    // Resume on the other node.
    let (_, history) = b.get_json("/v1/channels/alpha/history?limit=10").await;
    let fifth = history["messages"][4]["offset"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut client = a.client().await;
    let reply = client.subscribe_since("alpha", &fifth).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    for expected in 6..=10 {
        assert_eq!(seq(&client.recv_type("message").await["offset"]), expected);
    }
    crate::assert_eventually!(
        a.get_json("/v1/nodes").await.1["nodes"]
            .as_array()
            .map(Vec::len)
            == Some(2),
        "both nodes registered"
    );
    a.drain().await;
    b.drain().await;
}
