use std::time::Duration;

use serde_json::json;

use crate::harness::{Closed, TestClient, TestServer, patience, seq};

#[tokio::test]
async fn slow_consumer_is_disconnected_while_others_keep_full_rate() {
    const MESSAGES: u64 = 2_000;
    let server = TestServer::builder()
        .configure(|c| {
            c.limits.outbound_queue_messages = 256;
            c.limits.outbound_queue_bytes = 1024 * 1024;
            c.history.size = 10;
        })
        .start()
        .await;
    // The slow client subscribes and then never reads.
    let mut slow = TestClient::connect_with_small_buffer(server.ws_addr, "/ws").await;
    slow.subscribe("firehose").await;
    let mut fast = Vec::new();
    for _ in 0..3 {
        let mut client = server.client().await;
        client.subscribe("firehose").await;
        fast.push(client);
    }
    let readers: Vec<_> = fast
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                for expected in 1..=MESSAGES {
                    let message = client.recv().await;
                    assert_eq!(seq(&message["offset"]), expected);
                }
                client
            })
        })
        .collect();

    let payload = "x".repeat(4096);
    let started = tokio::time::Instant::now();
    for n in 0..MESSAGES {
        server
            .hub()
            .publish(
                &switchboard::protocol::ChannelName::parse("firehose", 64).unwrap(),
                &json!({"n": n, "pad": payload}).to_string(),
            )
            .expect("a small channel's round runs inline, so its outbox never fills");
        // About 5,000 messages (20 MB) a second: a rate a reading client keeps up with, and
        // far more than the stalled client's socket buffers and queue can hold.
        if n % 5 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    for reader in readers {
        tokio::time::timeout(patience(Duration::from_secs(20)), reader)
            .await
            .expect("fast subscribers get every message promptly")
            .unwrap();
    }
    let elapsed = started.elapsed();
    assert!(server.metric("ws_slow_consumer_closes_total").await >= 1.0);
    // Once it reads again, the slow client finds the 4001 close after its backlog.
    match slow.closed().await {
        Closed::Code(code, reason) => assert_eq!((code, reason.as_str()), (4001, "slow consumer")),
        Closed::NoCloseFrame => {
            // The close frame is best effort when the client's buffers stayed full past the
            // close timeout; the metric above already proved the close.
        }
    }
    assert!(
        elapsed < patience(Duration::from_secs(20)),
        "fan-out took {elapsed:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_slow_consumer_does_not_block_the_publisher() {
    let server = TestServer::builder()
        .configure(|c| {
            c.limits.outbound_queue_messages = 32;
            c.history.size = 10;
        })
        .start()
        .await;
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut client = TestClient::connect_with_small_buffer(server.ws_addr, "/ws").await;
        client.subscribe("stall").await;
        stalled.push(client);
    }
    // Every publish is acknowledged even though nobody reads.
    // 8 MB per subscriber: more than kernel socket buffers and the queue together hold.
    for n in 0..2_000 {
        let offset = tokio::time::timeout(
            Duration::from_secs(2),
            server.publish("stall", json!({"n": n, "pad": "y".repeat(4096)})),
        )
        .await
        .expect("publish is never blocked by subscribers");
        assert!(!offset.is_empty());
    }
    crate::assert_eventually!(
        server.hub().connections() == 0,
        "all stalled subscribers were closed"
    );
    drop(stalled);
    server.stop().await;
}
