use serde_json::json;

use crate::harness::{TestClient, TestServer};

#[tokio::test]
async fn subscriptions_per_connection_are_limited() {
    let server = TestServer::builder()
        .configure(|c| c.limits.max_subscriptions_per_connection = 2)
        .start()
        .await;
    let mut client = server.client().await;
    client.subscribe("one").await;
    client.subscribe("two").await;
    client
        .send(json!({"type":"subscribe","id":3,"channel":"three"}))
        .await;
    let reply = client.recv().await;
    assert_eq!(
        (reply["code"].as_str(), reply["id"].as_u64()),
        (Some("limit_exceeded"), Some(3))
    );
    // Unsubscribing frees a slot.
    client
        .send(json!({"type":"unsubscribe","id":4,"channel":"one"}))
        .await;
    assert_eq!(client.recv().await["type"], "unsubscribed");
    client.subscribe("three").await;
    // Subscribing twice is refused rather than doubling deliveries.
    client
        .send(json!({"type":"subscribe","id":5,"channel":"two"}))
        .await;
    assert_eq!(
        client.recv().await["message"],
        "already subscribed to this channel"
    );
    server.stop().await;
}

#[tokio::test]
async fn channel_names_are_limited_in_length() {
    let server = TestServer::builder()
        .configure(|c| c.limits.max_channel_name_bytes = 8)
        .start()
        .await;
    let mut client = server.client().await;
    client.subscribe("12345678").await;
    client
        .send(json!({"type":"subscribe","id":2,"channel":"123456789"}))
        .await;
    let reply = client.recv().await;
    assert_eq!(reply["code"], "bad_request");
    assert_eq!(reply["message"], "channel name is longer than 8 bytes");
    server.stop().await;
}

#[tokio::test]
async fn publish_payloads_are_limited() {
    let server = TestServer::builder()
        .configure(|c| c.limits.max_publish_payload_bytes = 100)
        .start()
        .await;
    let mut client = server.client().await;
    client
        .send(json!({"type":"publish","id":1,"channel":"c","data":"a".repeat(200)}))
        .await;
    let reply = client.recv().await;
    assert_eq!(
        (reply["code"].as_str(), reply["id"].as_u64()),
        (Some("limit_exceeded"), Some(1))
    );
    let (status, body) = server
        .post("/v1/publish", json!({"channel":"c","data":"a".repeat(200)}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("limit_exceeded"))
    );
    server.stop().await;
}

#[tokio::test]
async fn client_publishing_can_be_switched_off() {
    let server = TestServer::builder()
        .configure(|c| c.session.client_publish = false)
        .start()
        .await;
    let mut client = server.client().await;
    client
        .send(json!({"type":"publish","id":1,"channel":"c","data":1}))
        .await;
    let reply = client.recv().await;
    assert_eq!(reply["code"], "forbidden");
    // The control API still publishes.
    server.publish("c", json!(1)).await;
    server.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_get_503() {
    let server = TestServer::builder()
        .configure(|c| c.limits.max_connections = 3)
        .start()
        .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(server.client().await);
    }
    let err = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    assert!(
        server
            .metric("switchboard_connections_rejected_total{reason=\"max_connections\"}")
            .await
            >= 1.0
    );
    // A freed slot is usable again.
    drop(held.pop());
    crate::assert_eventually!(server.hub().connections() == 2, "slot freed");
    let _again = TestClient::connect(&server.ws_url()).await;
    server.stop().await;
}
