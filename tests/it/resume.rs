use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde_json::json;

use crate::harness::{TestServer, seq};

#[tokio::test]
async fn resume_with_since_has_no_gap_and_no_duplicate_under_concurrent_publishing() {
    let server = Arc::new(
        TestServer::builder()
            .configure(|c| c.history.size = 1000)
            .start()
            .await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    // A steady publisher for the whole test, at about 1,000 messages a second so that a
    // reconnecting client stays within the history window.
    let publisher = {
        let server = Arc::clone(&server);
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut n = 0_u64;
            while !stop.load(Ordering::Relaxed) && n < 5_000 {
                server.publish("live", json!(n)).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            n
        })
    };

    let mut seen = Vec::new();
    let mut client = server.client().await;
    client.subscribe("live").await;
    for round in 0..5 {
        // Read a few, drop the connection, reconnect with the last offset seen.
        let mut last = None;
        for _ in 0..20 {
            let message = client.recv_type("message").await;
            seen.push(seq(&message["offset"]));
            last = Some(message["offset"].as_str().unwrap().to_owned());
        }
        drop(client);
        tokio::time::sleep(Duration::from_millis(20 * round)).await;
        client = server.client().await;
        let reply = client
            .subscribe_since("live", last.as_deref().unwrap())
            .await;
        assert_eq!(reply["recovered"], true, "{reply}");
    }
    for _ in 0..20 {
        let message = client.recv_type("message").await;
        seen.push(seq(&message["offset"]));
    }
    stop.store(true, Ordering::Relaxed);
    let published = publisher.await.unwrap();
    assert!(
        published > 100,
        "the publisher kept publishing ({published})"
    );
    let first = seen[0];
    let expected: Vec<u64> = (first..first + seen.len() as u64).collect();
    assert_eq!(seen, expected, "every message exactly once, in order");
}

#[tokio::test]
async fn resume_from_a_trimmed_offset_says_not_recovered() {
    let server = TestServer::builder()
        .configure(|c| c.history.size = 5)
        .start()
        .await;
    let first = server.publish("short", json!(0)).await;
    for n in 1..10 {
        server.publish("short", json!(n)).await;
    }
    let mut client = server.client().await;
    let reply = client.subscribe_since("short", &first).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(seq(&reply["offset"]), 10);
    // Nothing is replayed after recovered:false; live messages follow.
    let live = server.publish("short", json!("live")).await;
    let message = client.recv().await;
    assert_eq!(message["offset"], live.as_str());
}

#[tokio::test]
async fn resume_from_another_epoch_says_not_recovered() {
    let server = TestServer::start().await;
    server.publish("epochs", json!(1)).await;
    let mut client = server.client().await;
    let reply = client.subscribe_since("epochs", "00000000deadbeef-1").await;
    assert_eq!(reply["recovered"], false);
    assert!(
        server
            .metric("switchboard_resumes_total{recovered=\"false\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn history_api_returns_messages_after_since() {
    let server = TestServer::start().await;
    let mut offsets = Vec::new();
    for n in 0..5 {
        offsets.push(server.publish("hist", json!({"n": n})).await);
    }
    let (status, body) = server
        .get_json(&format!(
            "/v1/channels/hist/history?since={}&limit=2",
            offsets[1]
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["recovered"], true);
    assert_eq!(body["offset"], offsets[4].as_str());
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["offset"], offsets[2].as_str());
    assert_eq!(messages[0]["data"], json!({"n": 2}));

    let (status, body) = server.get_json("/v1/channels/hist/history").await;
    assert_eq!(status, 200);
    assert_eq!(body["messages"].as_array().unwrap().len(), 5);
    assert!(body.get("recovered").is_none());

    let (status, body) = server
        .get_json("/v1/channels/hist/history?since=garbage")
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let (status, _) = server.get_json("/v1/channels/hist/history?limit=0").await;
    assert_eq!(status, 400);
    let (status, _) = server.get_json("/v1/channels/bad%20name/history").await;
    assert_eq!(status, 422);
    // A channel name with a slash, percent-encoded in the path.
    server.publish("user/42", json!(1)).await;
    let (status, body) = server.get_json("/v1/channels/user%2F42/history").await;
    assert_eq!((status, body["channel"].as_str()), (200, Some("user/42")));
}

/// A resume that needs more than a subscriber's queue: 40 messages of 30 KB (1.2 MB, the
/// queue holds 1 MiB). Every such resume ended in `recovered:true`, 34 messages and 4001,
/// however fast the client read; now the replay goes ahead in pages the client reads one
/// after another, and it gets all 40 in order, then live messages, on a single node and in
/// a cluster, while a bystander keeps its full rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_larger_than_the_queue_is_replayed_in_pages() {
    let redis = crate::redis_server::RedisServer::start(false);
    for server in [
        TestServer::start().await,
        TestServer::builder().redis(&redis.url()).start().await,
    ] {
        // History keeps the channel (and its epoch) from here on.
        let since = server.publish("big", json!("before")).await;
        let padding = "p".repeat(30_000);
        let mut offsets = Vec::new();
        for n in 0..40 {
            offsets.push(server.publish("big", json!({"n": n, "p": padding})).await);
        }
        crate::raw::with_bystander(&server, async {
            let mut client = server.client().await;
            client
                .send(json!({"type": "subscribe", "id": 1, "channel": "big", "since": since}))
                .await;
            // The first pages come ahead of the reply, the rest after it.
            let mut got = Vec::new();
            let reply = loop {
                let frame = client.recv().await;
                match frame["type"].as_str() {
                    Some("message") => got.push(frame["offset"].as_str().unwrap().to_owned()),
                    Some("subscribed") => break frame,
                    _ => panic!("unexpected {frame}"),
                }
            };
            assert_eq!(reply["recovered"], true, "{reply}");
            assert!(!got.is_empty(), "pages went ahead");
            while got.len() < 40 {
                let message = client.recv_type("message").await;
                got.push(message["offset"].as_str().unwrap().to_owned());
            }
            assert_eq!(got, offsets, "every message, in order, once");
            let live = server.publish("big", json!("live")).await;
            assert_eq!(client.recv_type("message").await["offset"], live);
        })
        .await;
        assert!(server.metric("switchboard_replay_pages_total").await >= 3.0);
        assert_eq!(
            server
                .metric("switchboard_slow_consumer_closes_total")
                .await,
            0.0
        );
        server.stop().await;
    }
}
