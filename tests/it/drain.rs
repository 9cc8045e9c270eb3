//! Draining a node: readiness first, then upgrades refused, then connections closed paced
//! over the window with a `reconnect` frame and 1012, messages flowing until each close.

use std::time::Duration;

use tokio::time::Instant;

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{Closed, TestClient, TestServer, patience};

/// A server whose drains announce for `delay` and close over `window` by default.
async fn server(delay: Duration, window: Duration) -> TestServer {
    TestServer::builder()
        .configure(|config| {
            config.shutdown.drain_delay = delay;
            config.shutdown.drain_window = window;
        })
        .start()
        .await
}

/// `DELETE /v1/drain`: status and JSON body.
async fn cancel(server: &TestServer) -> (u16, Value) {
    let response = server
        .http
        .delete(server.control_url("/v1/drain"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Reads until the close: every `message` frame's data, the `reconnect` frame, the close.
async fn read_to_close(client: &mut TestClient) -> (Vec<u64>, Option<Value>, Closed, Instant) {
    let mut data = Vec::new();
    let mut reconnect = None;
    loop {
        let next = tokio::time::timeout(patience(Duration::from_secs(10)), client.ws.next())
            .await
            .expect("the drain closes the connection in time");
        let closed = match next {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                match frame["type"].as_str() {
                    Some("message") => data.push(frame["data"].as_u64().unwrap()),
                    Some("reconnect") => {
                        assert!(reconnect.is_none(), "one reconnect frame");
                        reconnect = Some(frame);
                    }
                    _ => {}
                }
                continue;
            }
            Some(Ok(Message::Close(Some(frame)))) => {
                Closed::Code(frame.code.into(), frame.reason.to_string())
            }
            Some(Ok(Message::Close(None)) | Err(_)) | None => Closed::NoCloseFrame,
            Some(Ok(_)) => continue,
        };
        return (data, reconnect, closed, Instant::now());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_is_announced_then_closes_clients_paced_with_reconnect_and_1012() {
    let server = server(Duration::from_millis(300), Duration::from_millis(1500)).await;
    let mut clients = Vec::new();
    for _ in 0..12 {
        let mut client = server.client().await;
        client.subscribe("news").await;
        clients.push(client);
    }
    // A publisher at a steady rate throughout: every client must get every message
    // published before its close, in order.
    let published = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let publisher = {
        let http = server.http.clone();
        let url = server.control_url("/v1/publish");
        let published = std::sync::Arc::clone(&published);
        tokio::spawn(async move {
            for n in 0..150_u64 {
                let status = http
                    .post(&url)
                    .json(&json!({"channel": "news", "data": n}))
                    .send()
                    .await
                    .unwrap()
                    .status();
                assert_eq!(status, 200);
                published.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    // The drain starts with the publisher under way.
    crate::assert_eventually!(
        published.load(std::sync::atomic::Ordering::Relaxed) >= 5,
        "the publisher publishes"
    );
    let started = Instant::now();
    let (status, body) = server.post("/v1/drain", json!({})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["state"], "announcing");
    assert_eq!(body["started_by"], "api");
    assert_eq!(body["window_ms"], 1500);
    // Unready at once; alive throughout.
    assert_eq!(server.get("/readyz").await.0, 503);
    assert_eq!(server.get("/healthz").await.0, 200);
    // Still accepting while the load balancers notice.
    let mut late = server.client().await;
    late.subscribe("news").await;
    clients.push(late);
    let (status, again) = server.post("/v1/drain", json!({})).await;
    assert_eq!(status, 409, "{again}");

    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| tokio::spawn(async move { read_to_close(&mut client).await }))
        .collect();
    // Past the delay: upgrades refused with 503 and Retry-After.
    crate::assert_eventually!(
        server.get_json("/v1/drain").await.1["state"] == "closing",
        "the drain passes its delay"
    );
    let refused = tokio_tungstenite::connect_async(server.ws_url()).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503);
            assert_eq!(response.headers()["retry-after"], "1");
        }
        other => panic!("an upgrade during the drain is refused: {other:?}"),
    }
    let (_, nodes) = server.get_json("/v1/nodes").await;
    assert_eq!(nodes["nodes"][0]["draining"], true, "{nodes}");
    let (_, status) = server.get_json("/v1/drain").await;
    assert_eq!(status["state"], "closing", "{status}");
    assert_eq!(status["connections_at_start"], 13);

    let mut close_times = Vec::new();
    for reader in readers {
        let (data, reconnect, closed, at) = reader.await.unwrap();
        let reconnect = reconnect.expect("a reconnect frame before the close");
        assert_eq!(reconnect["reason"], "draining");
        assert!(
            reconnect["after_ms"].as_u64().unwrap() < 1000,
            "{reconnect}"
        );
        match closed {
            Closed::Code(code, _) => assert_eq!(code, 1012),
            Closed::NoCloseFrame => panic!("closed without a close frame"),
        }
        // In order, no gap: the messages up to the close.
        let first = data.first().copied().unwrap_or(0);
        let expected: Vec<u64> = (first..first + data.len() as u64).collect();
        assert_eq!(data, expected, "in order and without a gap");
        close_times.push(at.duration_since(started));
    }
    close_times.sort();
    let (first, last) = (close_times[0], close_times[close_times.len() - 1]);
    assert!(
        first >= Duration::from_millis(300),
        "nothing is closed before the delay: {close_times:?}"
    );
    assert!(
        last - first >= Duration::from_millis(700),
        "closes are spread over the window, not at once: {close_times:?}"
    );
    tokio::time::timeout(
        patience(Duration::from_secs(5)),
        server.drainer().finished(),
    )
    .await
    .expect("the drain finishes once every connection is closed");
    let (_, status) = server.get_json("/v1/drain").await;
    assert_eq!(status["state"], "closed", "{status}");
    assert_eq!(status["closed"], 13);
    assert_eq!(
        server
            .metric("switchboard_connections_closed_total{end=\"service_restart\"}")
            .await,
        13.0
    );
    publisher.abort();
    server.stop().await;
}

#[tokio::test]
async fn a_drain_started_through_the_api_can_be_cancelled() {
    let server = server(Duration::from_secs(30), Duration::from_secs(30)).await;
    let mut bystander = server.client().await;
    bystander.subscribe("news").await;
    let (status, body) = server
        .post(
            "/v1/drain",
            json!({"window_ms": 60000, "deadline_ms": 120000}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["deadline_ms"], 120_000);
    assert_eq!(server.get("/readyz").await.0, 503);
    let (status, body) = cancel(&server).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "serving");
    assert_eq!(server.get("/readyz").await.0, 200);
    // Serving as before: new clients, and the bystander still receives.
    let mut newcomer = server.client().await;
    newcomer.subscribe("news").await;
    server.publish("news", json!(1)).await;
    assert_eq!(bystander.recv().await["data"], 1);
    assert_eq!(newcomer.recv().await["data"], 1);
    assert_eq!(cancel(&server).await.0, 404, "nothing to cancel");
    server.stop().await;
}

#[tokio::test]
async fn bad_drain_requests_are_refused_and_change_nothing() {
    let server = server(Duration::from_secs(1), Duration::from_secs(2)).await;
    for (body, status) in [
        (json!({"window_ms": 10_000_000}), 422),
        (json!({"window_ms": 5000, "deadline_ms": 1000}), 422),
        (json!({"window": 5}), 422),
        (json!({"window_ms": "soon"}), 422),
    ] {
        let (got, reply) = server.post("/v1/drain", body.clone()).await;
        assert_eq!(got, status, "{body}: {reply}");
        assert!(reply["error"]["message"].is_string(), "{reply}");
    }
    assert_eq!(server.get("/readyz").await.0, 200);
    let (_, status) = server.get_json("/v1/drain").await;
    assert_eq!(status["state"], "serving");
    let response = server
        .http
        .put(server.control_url("/v1/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    server.stop().await;
}

/// What became of one publish sent to a node while it drains and exits.
#[derive(Debug, Default)]
struct Outcomes {
    /// 200, or 503: the node said whether it published.
    answered: u64,
    /// The connection was refused: nothing was sent.
    refused: u64,
    /// Sent, and the connection ended without an answer: the publisher cannot know.
    unknown: Vec<String>,
}

/// Publishers on new and on kept-alive connections, sending as fast as the node answers while
/// it drains and exits: every publish is answered or its connection refused, none is closed
/// without an answer (a publisher would not know whether to retry it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_drains_and_exits_answers_or_refuses_every_control_request() {
    let mut node = crate::harness::BinaryNode::start(
        &[],
        &[
            ("SWITCHBOARD_SHUTDOWN__DRAIN_DELAY", "300ms"),
            ("SWITCHBOARD_SHUTDOWN__DRAIN_WINDOW", "100ms"),
        ],
    )
    .await;
    let url = format!("http://{}/v1/publish", node.control_addr);
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let publishers: Vec<_> = (0..8)
        .map(|publisher| {
            let url = url.clone();
            let running = std::sync::Arc::clone(&running);
            let answered = std::sync::Arc::clone(&answered);
            tokio::spawn(async move {
                let mut http = reqwest::Client::builder().timeout(Duration::from_secs(5));
                if publisher % 2 == 0 {
                    http = http.pool_max_idle_per_host(0);
                }
                let http = http.build().unwrap();
                let mut outcomes = Outcomes::default();
                while running.load(std::sync::atomic::Ordering::Relaxed) {
                    let sent = http
                        .post(&url)
                        .json(&json!({"channel": "news", "data": publisher}))
                        .send()
                        .await;
                    match sent {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            assert!(status == 200 || status == 503, "answered {status}");
                            outcomes.answered += 1;
                            answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(err) if err.is_connect() => {
                            outcomes.refused += 1;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        Err(err) => outcomes.unknown.push(format!("{err:?}")),
                    }
                }
                outcomes
            })
        })
        .collect();
    // The drain starts with every kind of publisher under way.
    crate::assert_eventually!(
        answered.load(std::sync::atomic::Ordering::Relaxed) >= 40,
        "the publishers are answered"
    );
    let status = reqwest::Client::new()
        .post(format!("http://{}/v1/drain", node.control_addr))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 202);
    let exit = tokio::time::timeout(patience(Duration::from_secs(10)), node.child.wait())
        .await
        .expect("exits once drained")
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut total = Outcomes::default();
    for publisher in publishers {
        let outcomes = publisher.await.unwrap();
        total.answered += outcomes.answered;
        total.refused += outcomes.refused;
        total.unknown.extend(outcomes.unknown);
    }
    assert!(total.answered > 100, "{total:?}");
    assert!(total.refused > 0, "{total:?}");
    assert!(
        total.unknown.is_empty(),
        "{} publishes closed without an answer ({} answered, {} refused): {:?}",
        total.unknown.len(),
        total.answered,
        total.refused,
        &total.unknown[..total.unknown.len().min(3)]
    );
}

/// Once a drain closes connections, every control API answer says `Connection: close`, so
/// that no caller sends its next request on a kept-alive connection the exiting node may
/// close under it; a cancelled drain keeps connections alive again.
#[tokio::test]
async fn a_draining_node_asks_every_caller_to_reconnect() {
    let server = server(Duration::from_millis(100), Duration::from_secs(30)).await;
    let _held = server.client().await;
    let connection = |response: &reqwest::Response| {
        response
            .headers()
            .get("connection")
            .map(|value| value.to_str().unwrap().to_owned())
    };
    let before = server
        .http
        .get(server.control_url("/v1/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(connection(&before), None);
    let (status, _) = server.post("/v1/drain", json!({})).await;
    assert_eq!(status, 202);
    crate::assert_eventually!(
        server.get_json("/v1/drain").await.1["state"] == "closing",
        "the drain closes connections"
    );
    for path in ["/v1/stats", "/v1/drain", "/readyz"] {
        let during = server
            .http
            .get(server.control_url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(connection(&during).as_deref(), Some("close"), "{path}");
    }
    assert_eq!(cancel(&server).await.0, 200);
    let after = server
        .http
        .get(server.control_url("/v1/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(connection(&after), None);
    server.stop().await;
}
