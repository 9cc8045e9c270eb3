//! What a cluster keeps in Redis per channel: only a publish creates a channel's state, and
//! the offset a reader of a channel without state is given still resumes on any node.

use serde_json::json;

use crate::{
    cluster::{expect_contiguous, nodes},
    harness::{SteadyPublisher, TestClient, TestServer, expect_all_acknowledged, seq},
    redis_server::RedisServer,
};

fn dbsize(redis: &RedisServer) -> u64 {
    redis.cli(&["DBSIZE"]).unwrap().parse().unwrap()
}

async fn unsubscribe(client: &mut TestClient, channel: &str) {
    client
        .send(json!({"type": "unsubscribe", "id": 2, "channel": channel}))
        .await;
    assert_eq!(client.recv_type("unsubscribed").await["channel"], channel);
}

/// Anonymous clients cycling through names nobody publishes on (`subscribe`, `history`,
/// `subscribe` with `since`) must cost Redis nothing once they left (a subscribed node's
/// interest, which routes a channel's messages to it, goes within seconds of the channel's
/// last subscriber), while a real channel's subscriber keeps getting every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_unused_channels_write_nothing_to_redis() {
    const NAMES_PER_READER: usize = 25;
    let redis = RedisServer::start(false);
    let nodes = nodes(&redis, 2).await;
    let mut bystander = nodes[1].client().await;
    bystander.subscribe("real").await;
    nodes[0].publish("real", json!("first")).await;
    expect_contiguous(&mut bystander, 1, 1).await;
    // The node registry's keys come with the first heartbeats.
    crate::assert_eventually!(
        nodes[0].get_json("/v1/stats?scope=cluster").await.1["nodes"] == 2,
        "both nodes are in the registry"
    );
    let before = dbsize(&redis);
    let publisher = SteadyPublisher::start(&nodes[0], "real");

    let mut reads = 0;
    for (index, node) in nodes.iter().chain(nodes.iter()).enumerate() {
        let mut reader = node.client().await;
        for n in 0..NAMES_PER_READER {
            let name = format!("unused-{index}-{n}-subscribe");
            let reply = reader.subscribe(&name).await;
            assert_eq!(seq(&reply["offset"]), 0, "{reply}");
            unsubscribe(&mut reader, &name).await;

            let name = format!("unused-{index}-{n}-history");
            reader
                .send(json!({"type": "history", "id": 3, "channel": name, "limit": 10}))
                .await;
            let reply = reader.recv_type("history").await;
            assert_eq!(reply["messages"], json!([]), "{reply}");

            let name = format!("unused-{index}-{n}-since");
            let reply = reader.subscribe_since(&name, "3f9a2c4e1b7d8e60-42").await;
            assert_eq!(reply["recovered"], false, "{reply}");
            unsubscribe(&mut reader, &name).await;
            reads += 3;
        }
    }

    let (acked, _, _) = publisher.finish().await;
    expect_all_acknowledged(&mut bystander, &acked).await;
    crate::assert_eventually!(
        dbsize(&redis) == before,
        "the interest of nodes in unused channels is gone"
    );
    let after = dbsize(&redis);
    eprintln!(
        "{reads} reads of unused channels: {before} Redis keys before, {after} after; the \
         bystander got all {} messages published meanwhile",
        acked.len()
    );
    assert_eq!(after, before, "reads of unused channels created Redis keys");
    assert!(!acked.is_empty());
    for node in nodes {
        node.stop().await;
    }
}

/// A client subscribed before a channel's first message, and away when it came, resumes from
/// the offset it was given on either node with every message; so do the history API and a
/// resume before any message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_from_before_the_first_publish_resumes_on_any_node() {
    let redis = RedisServer::start(false);
    let nodes = nodes(&redis, 2).await;
    let mut early = nodes[0].client().await;
    let reply = early.subscribe("first-light").await;
    assert_eq!(seq(&reply["offset"]), 0, "{reply}");
    let start = reply["offset"].as_str().unwrap().to_owned();
    drop(early);

    // Nothing published yet: resuming on the other node misses nothing.
    let mut again = nodes[1].client().await;
    let reply = again.subscribe_since("first-light", &start).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(seq(&reply["offset"]), 0, "{reply}");
    drop(again);
    let mut live = nodes[1].client().await;
    live.subscribe("first-light").await;

    for n in 0..5 {
        nodes[1].publish("first-light", json!(n)).await;
    }
    expect_contiguous(&mut live, 1, 5).await;
    for node in &nodes {
        let mut client = node.client().await;
        let reply = client.subscribe_since("first-light", &start).await;
        assert_eq!(reply["recovered"], true, "{reply}");
        assert_eq!(seq(&reply["offset"]), 5, "{reply}");
        let missed = expect_contiguous(&mut client, 1, 5).await;
        assert_eq!(missed[0]["data"], json!(0));
    }
    let (status, body) = nodes[0]
        .get_json(&format!("/v1/channels/first-light/history?since={start}"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["recovered"], true, "{body}");
    assert_eq!(body["messages"].as_array().unwrap().len(), 5, "{body}");
    for node in nodes {
        node.stop().await;
    }
}

/// The offset given for a channel without state stands for the channel's first epoch only
/// while Redis provably kept everything since: after Redis restarted empty, a resume from it
/// must not claim to have replayed what was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_from_before_redis_lost_its_data_is_not_recovered() {
    let mut redis = RedisServer::start(false);
    let node = TestServer::builder().redis(&redis.url()).start().await;
    let mut early = node.client().await;
    let start = early.subscribe("amnesia").await["offset"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(early);
    for n in 0..3 {
        node.publish("amnesia", json!(n)).await;
    }
    redis.stop();
    redis.start_again(false);
    crate::assert_eventually!(
        node.post("/v1/publish", json!({"channel": "amnesia", "data": "new"}))
            .await
            .0
            == 200,
        "Redis is back"
    );
    let mut client = node.client().await;
    let reply = client.subscribe_since("amnesia", &start).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    node.stop().await;
}
