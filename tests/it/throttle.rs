//! Token buckets on client frames, connects per address and API keys.

use std::time::Duration;

use serde_json::json;

use crate::harness::{TestClient, TestServer};

#[tokio::test]
async fn a_flooding_client_is_refused_and_slowed_without_harming_others() {
    let server = TestServer::builder()
        .configure(|c| {
            c.limits.client_messages_per_second = 20;
            c.limits.client_message_burst = 10;
        })
        .start()
        .await;
    let rate_limited = r#"switchboard_rate_limited_total{scope="client"}"#;
    let before = server.metric(rate_limited).await;
    let mut bystander = server.client().await;
    bystander.subscribe("news").await;

    let mut flooder = server.client().await;
    for id in 0..40 {
        flooder.send(json!({"type":"ping","id":id})).await;
    }
    // The burst goes through; the next frame is refused with its id and a hint.
    for id in 0..10 {
        let reply = flooder.recv().await;
        assert_eq!(
            (reply["type"].as_str(), reply["id"].as_u64()),
            (Some("pong"), Some(id))
        );
    }
    let refused = flooder.recv().await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "rate_limited");
    assert_eq!(refused["id"], 10);
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .starts_with("rate limit of 20 frames/s exceeded"),
        "{refused}"
    );
    // Then reading pauses until a token is free: the rest is served at about 20 frames/s,
    // every frame answered (a pong or a refusal) and the connection kept.
    let started = tokio::time::Instant::now();
    let mut pongs = 10;
    let mut refusals = 1;
    while pongs + refusals < 40 {
        match flooder.recv().await["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") => refusals += 1,
            other => panic!("unexpected reply {other:?}"),
        }
    }
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "29 more frames at 20/s took only {:?}",
        started.elapsed()
    );
    assert!(
        refusals < 29,
        "pauses let later frames through ({refusals} refused)"
    );
    assert!(server.metric(rate_limited).await >= before + f64::from(refusals));

    // Others never noticed.
    let offset = server.publish("news", json!("still here")).await;
    assert_eq!(bystander.recv().await["offset"], offset.as_str());
    // And the flooder, once it slows down, is served again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    flooder.send(json!({"type":"ping","id":99})).await;
    assert_eq!(flooder.recv().await["id"], 99);
    server.stop().await;
}

#[tokio::test]
async fn bad_json_counts_against_the_limit_too() {
    let server = TestServer::builder()
        .configure(|c| {
            c.limits.client_messages_per_second = 1;
            c.limits.client_message_burst = 2;
        })
        .start()
        .await;
    let mut client = server.client().await;
    for _ in 0..3 {
        client.send_text("{not json").await;
    }
    assert_eq!(client.recv().await["code"], "bad_request");
    assert_eq!(client.recv().await["code"], "bad_request");
    assert_eq!(client.recv().await["code"], "rate_limited");
    server.stop().await;
}

#[tokio::test]
async fn connects_per_address_are_limited_with_429() {
    let server = TestServer::builder()
        .configure(|c| {
            c.limits.connects_per_ip_per_second = 1;
            c.limits.connect_burst_per_ip = 3;
        })
        .start()
        .await;
    let ip_limited = r#"switchboard_rate_limited_total{scope="ip"}"#;
    let before = server.metric(ip_limited).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(server.client().await);
    }
    let err = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("429"), "{err}");
    // The metrics recorder is per process; other tests may count too.
    assert!(server.metric(ip_limited).await > before);
    // Connections already open are unaffected, and the address may connect again later.
    let mut first = clients.remove(0);
    first.subscribe("news").await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    TestClient::connect(&server.ws_url()).await;
    server.stop().await;
}

#[tokio::test]
async fn api_keys_are_limited_each_on_its_own() {
    let (busy, quiet) = ("busy-key-0123456789abcdef", "quiet-key-0123456789abcdef");
    let server = TestServer::builder()
        .configure(|c| {
            c.control.api_keys = vec![busy.to_owned(), quiet.to_owned()];
            c.control.requests_per_second_per_key = 1;
            c.control.request_burst_per_key = 2;
        })
        .start()
        .await;
    let key_limited = r#"switchboard_rate_limited_total{scope="api_key"}"#;
    let before = server.metric(key_limited).await;
    // Routes that do not exist cost no token: a 404 is all they get.
    for _ in 0..5 {
        let missing = server
            .http
            .get(server.control_url("/v1/nope"))
            .bearer_auth(busy);
        assert_eq!(missing.send().await.unwrap().status(), 404);
    }
    let url = server.control_url("/v1/stats");
    let status = |key: &'static str| {
        let request = server.http.get(&url).bearer_auth(key);
        async move { request.send().await.unwrap() }
    };
    assert_eq!(status(busy).await.status(), 200);
    assert_eq!(status(busy).await.status(), 200);
    let refused = status(busy).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another key has its own bucket; health checks have none.
    assert_eq!(status(quiet).await.status(), 200);
    assert_eq!(server.get("/healthz").await.0, 200);
    assert!(server.metric(key_limited).await > before);
    server.stop().await;
}
