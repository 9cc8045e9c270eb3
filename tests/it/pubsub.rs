use serde_json::json;

use crate::harness::{TestServer, seq};

#[tokio::test]
async fn welcome_announces_connection_node_and_protocol() {
    let server = TestServer::start().await;
    let client = server.client().await;
    assert_eq!(client.welcome["protocol"], 1);
    assert!(client.welcome["conn_id"].as_u64().is_some());
    assert!(
        client.welcome["node"]
            .as_str()
            .unwrap()
            .starts_with("node-")
    );
    assert_eq!(client.welcome["heartbeat_ms"], 25_000);
    server.stop().await;
}

#[tokio::test]
async fn subscribe_publish_unsubscribe() {
    let server = TestServer::start().await;
    let mut alice = server.client().await;
    let mut bob = server.client().await;
    let reply = alice.subscribe("news").await;
    assert_eq!(reply["channel"], "news");
    assert_eq!(seq(&reply["offset"]), 0);
    assert!(reply.get("recovered").is_none());

    // Client publish: the publisher gets `published`, the subscriber the message.
    bob.send(json!({"type":"publish","id":3,"channel":"news","data":{"text":"hi"}}))
        .await;
    let published = bob.recv().await;
    assert_eq!(published["type"], "published");
    assert_eq!(published["id"], 3);
    let message = alice.recv().await;
    assert_eq!(message["type"], "message");
    assert_eq!(message["channel"], "news");
    assert_eq!(message["data"], json!({"text":"hi"}));
    assert_eq!(message["offset"], published["offset"]);

    // HTTP publish reaches the same subscriber, next in order.
    let offset = server.publish("news", json!([1, 2, 3])).await;
    let message = alice.recv().await;
    assert_eq!(message["offset"], offset.as_str());
    assert_eq!(seq(&message["offset"]), 2);

    alice
        .send(json!({"type":"unsubscribe","id":2,"channel":"news"}))
        .await;
    let reply = alice.recv().await;
    assert_eq!(
        reply,
        json!({"type":"unsubscribed","id":2,"channel":"news"})
    );
    server.publish("news", json!("after")).await;
    alice.send(json!({"type":"ping","id":4})).await;
    assert_eq!(
        alice.recv().await,
        json!({"type":"pong","id":4}),
        "no message after unsubscribe"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_client_publishes_null_as_null() {
    let server = TestServer::start().await;
    let mut alice = server.client().await;
    let mut bob = server.client().await;
    alice.subscribe("news").await;
    bob.send(json!({"type":"publish","id":1,"channel":"news","data":null}))
        .await;
    let published = bob.recv().await;
    assert_eq!(published["type"], "published", "{published}");
    let message = alice.recv().await;
    assert_eq!(message["type"], "message");
    assert_eq!(message.get("data"), Some(&json!(null)), "{message}");
    server.stop().await;
}

#[tokio::test]
async fn broadcast_reaches_every_named_channel() {
    let server = TestServer::start().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.subscribe("alpha").await;
    b.subscribe("beta").await;
    let (status, body) = server
        .post(
            "/v1/broadcast",
            json!({"channels":["alpha","beta"],"data":{"x":1}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let got_a = a.recv().await;
    let got_b = b.recv().await;
    assert_eq!(got_a["offset"], body["offsets"]["alpha"]);
    assert_eq!(got_b["offset"], body["offsets"]["beta"]);
    assert_eq!(got_b["data"], json!({"x":1}));
    server.stop().await;
}

#[tokio::test]
async fn per_channel_order_holds_under_concurrent_publishers() {
    const PUBLISHERS: u64 = 4;
    const PER_PUBLISHER: u64 = 150;
    let server = TestServer::builder().shards(2).start().await;
    let mut subscribers = Vec::new();
    for _ in 0..3 {
        let mut client = server.client().await;
        client.subscribe("orders").await;
        subscribers.push(client);
    }
    let mut publishers = Vec::new();
    for publisher in 0..PUBLISHERS {
        let mut client = server.client().await;
        publishers.push(tokio::spawn(async move {
            for n in 0..PER_PUBLISHER {
                client
                    .send(json!({"type":"publish","id":n,"channel":"orders","data":[publisher, n]}))
                    .await;
            }
            for _ in 0..PER_PUBLISHER {
                client.recv_type("published").await;
            }
        }));
    }
    // An HTTP publisher joins in too.
    for n in 0..50 {
        server.publish("orders", json!([99, n])).await;
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let total = PUBLISHERS * PER_PUBLISHER + 50;
    for subscriber in &mut subscribers {
        let mut last_by_publisher = std::collections::HashMap::new();
        for expected in 1..=total {
            let message = subscriber.recv().await;
            assert_eq!(
                seq(&message["offset"]),
                expected,
                "gap or reorder at {expected}"
            );
            let publisher = message["data"][0].as_u64().unwrap();
            let n = message["data"][1].as_u64().unwrap();
            if let Some(previous) = last_by_publisher.insert(publisher, n) {
                assert!(n > previous, "publisher {publisher} reordered");
            }
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn a_client_close_is_answered_with_a_close_frame() {
    use tokio_tungstenite::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.subscribe("news").await;
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    client.ws.close(Some(frame)).await.unwrap();
    // The server completes the closing handshake, echoing the code (RFC 6455 5.5.1).
    assert_eq!(client.close_code().await, 1000);
    crate::assert_eventually!(server.hub().connections() == 0, "session cleaned up");
    assert!(
        server
            .metric("switchboard_connections_closed_total{end=\"normal\"}")
            .await
            >= 1.0
    );
    server.stop().await;
}

/// Every length form of the frame header (7-bit, 16-bit, 64-bit) reaches a real client
/// intact, also when one vectored write does not take a whole batch.
#[tokio::test]
async fn messages_of_every_size_arrive_intact_and_in_order() {
    let server = TestServer::builder()
        .configure(|c| {
            c.limits.max_publish_payload_bytes = 300_000;
            c.limits.max_inbound_message_bytes = 400_000;
            // A burst holds at least one message of the largest size, and a queue four.
            c.limits.client_publish_byte_burst = 300_000;
            c.limits.outbound_queue_bytes = 1_200_000;
        })
        .start()
        .await;
    let mut client = server.client().await;
    client.subscribe("sizes").await;
    let sizes = [
        1_usize, 100, 125, 126, 1_000, 65_535, 65_536, 70_000, 250_000,
    ];
    for size in sizes {
        server.publish("sizes", json!("x".repeat(size))).await;
    }
    for size in sizes {
        let message = client.recv().await;
        assert_eq!(message["data"].as_str().map(str::len), Some(size));
    }
    server.stop().await;
}

/// `{"type":"history"}`: the newest messages, or those after `since`, within a byte budget
/// (`truncated`), refused where the namespace does not allow history.
#[tokio::test]
async fn clients_read_history_over_the_websocket() {
    let server = TestServer::builder()
        .configure(|config| {
            // A quarter of 64 KiB: 16 KiB of messages per reply.
            config.limits.outbound_queue_bytes = 64 << 10;
            config.limits.max_publish_payload_bytes = 16 << 10;
            config.namespaces.insert(
                0,
                switchboard::config::NamespaceConfig {
                    pattern: "secret:*".to_owned(),
                    subscribe: switchboard::config::Rule::Anonymous,
                    publish: switchboard::config::Rule::None,
                    history: switchboard::config::Rule::None,
                    presence: switchboard::config::Rule::None,
                    join_leave: false,
                    edit: switchboard::config::EditRule::Own,
                    history_size: None,
                    history_ttl: None,
                    slow_consumer: switchboard::config::SlowConsumer::Disconnect,
                    conflate_key: None,
                    queue_bytes: None,
                },
            );
        })
        .start()
        .await;
    let mut offsets = Vec::new();
    for n in 1..=5 {
        offsets.push(server.publish("news", json!(n)).await);
    }
    let mut bystander = server.client().await;
    bystander.subscribe("news").await;
    let mut client = server.client().await;
    client
        .send(json!({"type": "history", "id": 1, "channel": "news", "limit": 3}))
        .await;
    let reply = client.recv().await;
    assert_eq!(reply["type"], "history", "{reply}");
    assert_eq!(reply["id"], 1);
    assert_eq!(reply["offset"], offsets[4].as_str());
    assert_eq!(reply["truncated"], false);
    let data: Vec<i64> = reply["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message["data"].as_i64().unwrap())
        .collect();
    assert_eq!(data, [3, 4, 5], "the newest three, oldest first");

    client
        .send(json!({"type": "history", "id": 2, "channel": "news", "since": offsets[0]}))
        .await;
    let reply = client.recv().await;
    assert_eq!(reply["recovered"], true);
    assert_eq!(reply["messages"].as_array().unwrap().len(), 4);
    assert_eq!(reply["messages"][0]["offset"], offsets[1].as_str());

    // 8 KiB payloads: two fit in 16 KiB with their envelopes, so one reply holds two and
    // says it was truncated; paging on with its last offset gets the rest.
    let big = "x".repeat(7 << 10);
    let first = server.publish("big", json!(big)).await;
    for _ in 0..4 {
        server.publish("big", json!(big)).await;
    }
    client
        .send(json!({"type": "history", "id": 3, "channel": "big", "since": first}))
        .await;
    let reply = client.recv().await;
    assert_eq!(reply["truncated"], true, "{}", reply["truncated"]);
    assert_eq!(reply["messages"].as_array().unwrap().len(), 2);

    for (frame, code) in [
        (
            json!({"type": "history", "id": 4, "channel": "secret:x"}),
            "forbidden",
        ),
        (
            json!({"type": "history", "id": 5, "channel": "news", "limit": 0}),
            "bad_request",
        ),
        (
            json!({"type": "history", "id": 6, "channel": "news", "limit": 101}),
            "bad_request",
        ),
        (
            json!({"type": "history", "id": 7, "channel": "news", "limit": "x"}),
            "bad_request",
        ),
        (
            json!({"type": "history", "id": 8, "channel": "news", "since": "nope"}),
            "bad_request",
        ),
    ] {
        client.send(frame.clone()).await;
        let reply = client.recv().await;
        assert_eq!(reply["type"], "error", "{frame}: {reply}");
        assert_eq!(reply["code"], code, "{frame}: {reply}");
    }
    // The connection is still fine, and the bystander got every message meanwhile.
    client.subscribe("news").await;
    server.publish("news", json!(6)).await;
    assert_eq!(client.recv().await["data"], 6);
    assert_eq!(bystander.recv().await["data"], 6);
    server.stop().await;
}
