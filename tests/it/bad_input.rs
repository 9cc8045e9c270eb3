use futures_util::SinkExt as _;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::{
    Message,
    protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    },
};

use crate::harness::TestServer;

/// After each bad input, a bystander on the same server still gets messages.
async fn bystander_still_served(server: &TestServer, bystander: &mut crate::harness::TestClient) {
    let offset = server.publish("bystander", json!("still here")).await;
    let message = bystander.recv().await;
    assert_eq!(message["offset"], offset.as_str());
}

#[tokio::test]
async fn malformed_frames_get_bad_request_and_keep_the_connection() {
    let server = TestServer::start().await;
    let mut bystander = server.client().await;
    bystander.subscribe("bystander").await;
    let mut client = server.client().await;
    for (text, id, message) in [
        ("{not json", None, "frame is not valid JSON"),
        ("42", None, "frame must be a JSON object"),
        (r#"{"type":"dance","id":5}"#, Some(5), "unknown frame type"),
        (
            r#"{"type":"subscribe","id":6}"#,
            Some(6),
            "missing field `channel`",
        ),
        (
            r#"{"type":"publish","id":7,"channel":"x"}"#,
            Some(7),
            "missing field `data`",
        ),
        (r#"{"id":8}"#, Some(8), "missing field `type`"),
        (
            r#"{"type":"subscribe","id":9,"channel":"no spaces"}"#,
            Some(9),
            "channel name may contain only A-Z a-z 0-9 _ - . : @ / =",
        ),
        (
            r#"{"type":"subscribe","id":10,"channel":"ok","since":"bogus"}"#,
            Some(10),
            "offset must look like \"<16 hex digits>-<decimal>\", as the server sent it",
        ),
        (
            r#"{"type":"unsubscribe","id":11,"channel":"never"}"#,
            Some(11),
            "not subscribed to this channel",
        ),
    ] {
        client.send_text(text).await;
        let reply = client.recv().await;
        assert_eq!(reply["type"], "error", "{text}");
        assert_eq!(
            reply.get("id").and_then(serde_json::Value::as_u64),
            id,
            "{text}"
        );
        assert_eq!(reply["message"], message, "{text}");
        let expected_code = if text.contains("unsubscribe") {
            "not_found"
        } else {
            "bad_request"
        };
        assert_eq!(reply["code"], expected_code, "{text}");
    }
    // Still usable after all that.
    client.send(json!({"type":"ping","id":1})).await;
    assert_eq!(client.recv().await["type"], "pong");
    bystander_still_served(&server, &mut bystander).await;
    assert!(
        server
            .metric("switchboard_protocol_errors_total{code=\"bad_request\"}")
            .await
            >= 8.0
    );
    server.stop().await;
}

#[tokio::test]
async fn binary_frames_close_with_1003() {
    let server = TestServer::start().await;
    let mut bystander = server.client().await;
    bystander.subscribe("bystander").await;
    let mut client = server.client().await;
    client
        .ws
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(client.close_code().await, 1003);
    bystander_still_served(&server, &mut bystander).await;
    server.stop().await;
}

#[tokio::test]
async fn oversize_messages_close_with_1009() {
    let server = TestServer::builder()
        .configure(|c| {
            c.limits.max_inbound_message_bytes = 1024;
            c.limits.max_publish_payload_bytes = 512;
        })
        .start()
        .await;
    let mut bystander = server.client().await;
    bystander.subscribe("bystander").await;
    let mut client = server.client().await;
    let big = json!({"type":"publish","channel":"x","data":"z".repeat(2000)});
    client.send(big).await;
    assert_eq!(client.close_code().await, 1009);
    bystander_still_served(&server, &mut bystander).await;
    assert!(
        server
            .metric("switchboard_connections_closed_total{end=\"message_too_big\"}")
            .await
            >= 1.0
    );
    server.stop().await;
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let server = TestServer::start().await;
    let mut bystander = server.client().await;
    bystander.subscribe("bystander").await;
    let mut client = server.client().await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    client.ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(client.close_code().await, 1007);
    bystander_still_served(&server, &mut bystander).await;
    server.stop().await;
}

#[tokio::test]
async fn a_dropped_connection_is_cleaned_up_and_harms_nobody() {
    let server = TestServer::start().await;
    let mut bystander = server.client().await;
    bystander.subscribe("bystander").await;
    let mut dropped = server.client().await;
    dropped.subscribe("bystander").await;
    let lost = "switchboard_connections_closed_total{end=\"transport_lost\"}";
    let lost_before = server.metric(lost).await;
    drop(dropped);
    crate::assert_eventually!(
        server.hub().connections() == 1,
        "the dropped connection is gone"
    );
    // Counted as a lost transport, not as a protocol error.
    assert!(server.metric(lost).await > lost_before);
    bystander_still_served(&server, &mut bystander).await;
    server.stop().await;
}

#[tokio::test]
async fn a_silent_client_is_closed_with_4002() {
    let server = TestServer::builder()
        .configure(|c| {
            c.session.heartbeat = std::time::Duration::from_millis(100);
            c.session.idle_timeout = std::time::Duration::from_millis(400);
        })
        .start()
        .await;
    let mut client = server.client().await;
    // Not reading means not answering pings: the server hears nothing.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(client.close_code().await, 4002);

    // A client that reads (and so answers pings) stays connected past the timeout.
    let mut lively = server.client().await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(900);
    while tokio::time::Instant::now() < deadline {
        lively.send(json!({"type":"ping"})).await;
        assert_eq!(lively.recv().await["type"], "pong");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_quiet_client_is_pinged_and_its_pongs_keep_it_open() {
    use futures_util::StreamExt as _;

    let server = TestServer::builder()
        .configure(|c| {
            c.session.heartbeat = std::time::Duration::from_millis(200);
            c.session.idle_timeout = std::time::Duration::from_millis(600);
        })
        .start()
        .await;
    let mut client = server.client().await;
    let started = tokio::time::Instant::now();
    let mut pings = 0;
    // The client only reads; tungstenite answers each ping with a pong while it does.
    while pings < 5 {
        let message = tokio::time::timeout(std::time::Duration::from_secs(2), client.ws.next())
            .await
            .expect("a ping within the idle timeout")
            .expect("the connection stays open")
            .expect("a frame");
        if matches!(message, Message::Ping(_)) {
            pings += 1;
        }
    }
    // Five heartbeats outlast the 600 ms idle timeout: the pongs counted as activity.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= std::time::Duration::from_millis(900),
        "five pings came faster than five heartbeats: {elapsed:?}"
    );
    client.send(json!({"type":"ping"})).await;
    assert_eq!(client.recv().await["type"], "pong");
    server.stop().await;
}

#[tokio::test]
async fn wrong_path_and_plain_http_are_refused() {
    let server = TestServer::start().await;
    let err = tokio_tungstenite::connect_async(format!("ws://{}/nope", server.ws_addr))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    // A plain HTTP request (no upgrade) to the WebSocket path: 426 saying what to send.
    let mut socket = tokio::net::TcpStream::connect(server.ws_addr)
        .await
        .unwrap();
    socket
        .write_all(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nAccept: text/html\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    socket.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
        "{answer}"
    );
    assert!(answer.contains("Upgrade: websocket\r\n"), "{answer}");
    assert!(answer.contains("only speaks WebSocket"), "{answer}");
    // The listener keeps serving.
    server.client().await;
    server.stop().await;
}
