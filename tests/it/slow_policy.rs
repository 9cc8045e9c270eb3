//! `slow_consumer` per namespace over real sockets: a subscriber that stops reading (a 4 KiB
//! receive buffer) on a `drop_oldest` channel is not closed, and what it missed is told by
//! `gap` frames whose offsets, fetched with `history`, give exactly the missing messages;
//! on a `conflate` channel it keeps the newest message per `conflate_key` value; a
//! `disconnect` channel's slow subscriber is closed with 4001 as before. Publishers and a
//! bystander keep their rate.

use std::{collections::BTreeMap, time::Duration};

use serde_json::{Value, json};
use switchboard::{
    config::{Config, EditRule, NamespaceConfig, Rule, SlowConsumer},
    protocol::ChannelName,
};

use crate::harness::{TestClient, TestServer, seq};

/// Far more than the stalled client's socket buffers (the server's send buffer grows to
/// megabytes) and its 64 KiB queue hold.
const MESSAGES: u64 = 2_000;

fn configure(config: &mut Config) {
    let namespace = |pattern: &str, slow_consumer, conflate_key: Option<&str>| NamespaceConfig {
        pattern: pattern.to_owned(),
        subscribe: Rule::Anonymous,
        publish: Rule::None,
        history: Rule::Anonymous,
        presence: Rule::None,
        join_leave: false,
        edit: EditRule::Any,
        history_size: Some(200),
        history_ttl: None,
        slow_consumer,
        conflate_key: conflate_key.map(str::to_owned),
        queue_bytes: None,
    };
    config.limits.outbound_queue_messages = 256;
    config.limits.outbound_queue_bytes = 64 * 1024;
    config.limits.max_publish_payload_bytes = 8 * 1024;
    config.history.size = 10;
    config.namespaces = vec![
        namespace("feed:*", SlowConsumer::DropOldest, None),
        namespace("ticker:*", SlowConsumer::Conflate, Some("symbol")),
        namespace("*", SlowConsumer::Disconnect, None),
    ];
}

/// Publishes [`MESSAGES`] of 4 KiB to `channel` straight into the hub, `data` made by
/// `make` from the message's number.
async fn flood(server: &TestServer, channel: &str, make: impl Fn(u64) -> Value) {
    let channel = ChannelName::parse(channel, 64).unwrap();
    let pad = "x".repeat(4096);
    for n in 1..=MESSAGES {
        let mut data = make(n);
        data["pad"] = pad.clone().into();
        server
            .hub()
            .publish(&channel, &data.to_string())
            .expect("a small channel's round runs inline");
        if n % 5 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// What `server`'s history holds of `gap` (its part within the channel's last 200
/// messages): its first and last seq and the seqs history returns for them; `None` when
/// none of the gap is still held.
async fn held_of(server: &TestServer, gap: &Value) -> Option<(u64, u64, Vec<u64>)> {
    let (from, to) = (seq(&gap["from"]).max(MESSAGES - 199), seq(&gap["to"]));
    if from > to {
        return None;
    }
    let epoch = gap["from"].as_str().unwrap().split('-').next().unwrap();
    let channel = gap["channel"].as_str().unwrap();
    let (status, page) = server
        .get_json(&format!(
            "/v1/channels/{channel}/history?since={epoch}-{}&limit={}",
            from - 1,
            to - from + 1
        ))
        .await;
    assert_eq!(status, 200, "{page}");
    let got = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| seq(&message["offset"]))
        .collect();
    Some((from, to, got))
}

/// A subscriber of `channel` that reads nothing until told to.
async fn stalled(server: &TestServer, channel: &str) -> TestClient {
    let mut client = TestClient::connect_with_small_buffer(server.ws_addr, "/ws").await;
    client.subscribe(channel).await;
    client
}

#[tokio::test]
async fn drop_oldest_sends_gaps_whose_history_is_exactly_what_was_missed() {
    let server = TestServer::builder().configure(configure).start().await;
    let mut slow = stalled(&server, "feed:news").await;
    crate::raw::with_bystander(&server, flood(&server, "feed:news", |n| json!({"n": n}))).await;

    // Now it reads: messages and gaps, in order, covering every offset once.
    let mut covered = Vec::new();
    let mut gaps = Vec::new();
    while covered.last() != Some(&MESSAGES) {
        let frame = tokio::time::timeout(Duration::from_secs(10), slow.recv())
            .await
            .expect("the stalled subscriber gets the rest once it reads");
        match frame["type"].as_str() {
            Some("message") => {
                let n = seq(&frame["offset"]);
                assert_eq!(frame["data"]["n"], n);
                covered.push(n);
            }
            Some("gap") => {
                let (from, to) = (seq(&frame["from"]), seq(&frame["to"]));
                assert!(from <= to, "{frame}");
                covered.extend(from..=to);
                gaps.push(frame);
            }
            _ => panic!("unexpected {frame}"),
        }
    }
    assert_eq!(covered, (1..=MESSAGES).collect::<Vec<_>>());
    assert!(!gaps.is_empty(), "the queue never overflowed");
    // Counted by namespace (only this test uses `feed:*`), and never closed.
    let counted = r#"switchboard_slow_consumer_gaps_total{namespace="feed:*"}"#;
    assert!(server.metric(counted).await >= 1.0);
    let closed = r#"switchboard_slow_consumer_policy_closes_total{namespace="feed:*"}"#;
    assert!(server.metric(closed).await < 1.0);

    // What history still holds of each gap (its last 200 messages) is there, exactly.
    let mut checked = 0;
    for gap in &gaps {
        if let Some((from, to, got)) = held_of(&server, gap).await {
            assert_eq!(got, (from..=to).collect::<Vec<_>>(), "{gap}");
            checked += 1;
        }
    }
    assert!(checked > 0, "no gap within history: {gaps:?}");
    slow.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(slow.recv_type("pong").await["id"], 1);
    server.stop().await;
}

#[tokio::test]
async fn conflate_keeps_the_newest_message_per_key() {
    let server = TestServer::builder().configure(configure).start().await;
    let mut slow = stalled(&server, "ticker:prices").await;
    let symbol = |n: u64| if n.is_multiple_of(2) { "AAA" } else { "BBB" };
    crate::raw::with_bystander(
        &server,
        flood(
            &server,
            "ticker:prices",
            |n| json!({"symbol": symbol(n), "n": n}),
        ),
    )
    .await;

    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut received = 0;
    while last.values().max() != Some(&MESSAGES) || last.len() < 2 {
        let frame = tokio::time::timeout(Duration::from_secs(10), slow.recv())
            .await
            .expect("the stalled subscriber gets the newest once it reads");
        assert_eq!(frame["type"], "message", "{frame}");
        let n = seq(&frame["offset"]);
        let symbol = frame["data"]["symbol"].as_str().unwrap().to_owned();
        assert!(last.get(&symbol).is_none_or(|before| *before < n));
        last.insert(symbol, n);
        received += 1;
    }
    // The newest of each symbol arrived; older ones were skipped, not all sent.
    assert_eq!(last["AAA"], MESSAGES);
    assert_eq!(last["BBB"], MESSAGES - 1);
    assert!(received < MESSAGES, "nothing was conflated ({received})");
    let conflated = r#"switchboard_messages_conflated_total{namespace="ticker:*"}"#;
    assert!(server.metric(conflated).await >= 1.0);
    server.stop().await;
}

/// A namespace's `queue_bytes`: a noisy `drop_oldest` feed may hold 16 KiB of a stalled
/// connection's 64 KiB queue, so the quiet room beside it on the same connection, whose
/// policy is `disconnect`, never finds the queue full: the connection is not closed and
/// gets every room message.
#[tokio::test]
async fn a_noisy_namespace_keeps_to_its_share_of_the_queue() {
    let server = TestServer::builder()
        .configure(|config| {
            configure(config);
            config.namespaces[0].queue_bytes = Some(16 * 1024);
        })
        .start()
        .await;
    let mut slow = stalled(&server, "feed:noisy").await;
    slow.subscribe("room:quiet").await;
    let (feed, room) = (
        ChannelName::parse("feed:noisy", 64).unwrap(),
        ChannelName::parse("room:quiet", 64).unwrap(),
    );
    // 8,000 feed messages of 1 KiB (8 MB: more than the socket buffers hold), and every
    // 400th a room message of 1.5 KiB: larger than the slack a full queue of feed messages
    // leaves, and all 20 together well within what the share leaves the room (48 KiB).
    let pad = "x".repeat(1024);
    for n in 1..=8_000_u64 {
        let data = json!({"n": n, "pad": pad}).to_string();
        server.hub().publish(&feed, &data).unwrap();
        if n % 400 == 0 {
            let data = json!({"n": n / 400, "pad": "y".repeat(1536)});
            server.hub().publish(&room, &data.to_string()).unwrap();
        }
        if n % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let mut room_seen = Vec::new();
    while room_seen.len() < 20 {
        let frame = tokio::time::timeout(Duration::from_secs(10), slow.recv())
            .await
            .expect("the connection stays open and gets the room's messages");
        if frame["channel"] == "room:quiet" {
            assert_eq!(frame["type"], "message", "{frame}");
            room_seen.push(frame["data"]["n"].as_u64().unwrap());
        }
    }
    assert_eq!(room_seen, (1..=20).collect::<Vec<_>>());
    let gaps = r#"switchboard_slow_consumer_gaps_total{namespace="feed:*"}"#;
    assert!(server.metric(gaps).await >= 1.0);
    server.stop().await;
}

/// `drop_oldest` on a cluster: messages published on node a reach a stalled subscriber on
/// node b through Redis; b's queue drops for gaps, and what Redis's history still holds of
/// each gap, read through b, is exactly the missing messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_drop_oldest_gaps_are_exact_too() {
    let redis = crate::redis_server::RedisServer::start(false);
    let node = || {
        TestServer::builder()
            .redis(&redis.url())
            .configure(configure)
            .start()
    };
    let (a, b) = (node().await, node().await);
    let mut slow = stalled(&b, "feed:cluster").await;
    let pad = "x".repeat(4096);
    // In batches of 100 (400 KB, within the control API's body limit).
    for first in (1..=MESSAGES).step_by(100) {
        let commands: Vec<Value> = (first..first + 100)
            .map(|n| json!({"publish": {"channel": "feed:cluster", "data": {"n": n, "pad": pad}}}))
            .collect();
        let (status, answer) = a.post("/v1/batch", json!({ "commands": commands })).await;
        assert_eq!(status, 200, "{answer}");
    }
    let mut covered = Vec::new();
    let mut gaps = Vec::new();
    while covered.last() != Some(&MESSAGES) {
        let frame = tokio::time::timeout(Duration::from_secs(20), slow.recv())
            .await
            .expect("the stalled subscriber gets the rest once it reads");
        match frame["type"].as_str() {
            Some("message") => covered.push(seq(&frame["offset"])),
            Some("gap") => {
                covered.extend(seq(&frame["from"])..=seq(&frame["to"]));
                gaps.push(frame);
            }
            _ => panic!("unexpected {frame}"),
        }
    }
    assert_eq!(covered, (1..=MESSAGES).collect::<Vec<_>>());
    let last = gaps.last().expect("the queue overflowed");
    let (from, to, got) = held_of(&b, last)
        .await
        .unwrap_or_else(|| panic!("the last gap left history before it was read: {last}"));
    assert_eq!(got, (from..=to).collect::<Vec<_>>(), "{last}");
    for server in [a, b] {
        server.stop().await;
    }
}
