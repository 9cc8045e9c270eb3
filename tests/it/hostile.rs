//! Hostile clients: each test is one way a peer could make a node hold memory or burn CPU,
//! sent over a raw TCP socket (a WebSocket library would refuse to send most of it), with a
//! bystander subscriber on another connection that must keep receiving every message in
//! order at the publisher's full rate, and the metric that counts the case.

use std::time::Duration;

use serde_json::json;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::Instant,
};

use crate::{
    harness::{BinaryNode, TestServer, patience},
    raw::{UPGRADE, close_code, frame, http, rss_kib, upgraded, with_bystander},
};

/// Writes `frame` over and over for `duration` (or until the server stops reading for that
/// long or closes); how many were written whole.
async fn flood(stream: &mut TcpStream, frame: &[u8], duration: Duration) -> u64 {
    let batch: Vec<u8> = frame.repeat(64);
    let deadline = tokio::time::Instant::now() + duration;
    let mut sent = 0;
    while let Ok(Ok(())) = tokio::time::timeout_at(deadline, stream.write_all(&batch)).await {
        sent += 64;
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_refused_then_closed_with_1008() {
    let server = TestServer::builder()
        .configure(|c| c.limits.throttled_close_after = Duration::from_secs(1))
        .start()
        .await;
    let sent = with_bystander(&server, async {
        let mut attacker = upgraded(server.ws_addr).await;
        flood(
            &mut attacker,
            &frame(0x89, &[b'p'; 125]),
            Duration::from_secs(2),
        )
        .await
    })
    .await;
    // Reading paused at the control budget, so TCP pushed back on the flooder.
    assert!(sent > 0);
    assert!(
        server
            .metric("switchboard_rate_limited_total{scope=\"client_control\"}")
            .await
            >= 1.0
    );
    crate::assert_eventually!(
        server
            .metric("switchboard_connections_closed_total{end=\"frame_flood\"}")
            .await
            >= 1.0,
        "the flooder is closed once over budget for throttled_close_after"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_continuation_frames_are_charged_and_a_flood_is_closed() {
    let server = TestServer::builder()
        .configure(|c| {
            c.limits.max_fragments_per_message = 10_000_000;
            c.limits.throttled_close_after = Duration::from_secs(1);
        })
        .start()
        .await;
    let code = with_bystander(&server, async {
        let mut attacker = upgraded(server.ws_addr).await;
        attacker.write_all(&frame(0x01, b"{")).await.unwrap();
        flood(&mut attacker, &frame(0x00, b""), Duration::from_secs(2)).await;
        close_code(&mut attacker).await
    })
    .await;
    assert_eq!(code, Some(1008));
    assert!(
        server
            .metric("switchboard_rate_limited_total{scope=\"client\"}")
            .await
            >= 1.0
    );
    assert!(
        server
            .metric("switchboard_connections_closed_total{end=\"frame_flood\"}")
            .await
            >= 1.0
    );
    server.stop().await;
}

#[tokio::test]
async fn a_message_in_too_many_fragments_is_closed_with_1008() {
    let server = TestServer::start().await;
    let code = with_bystander(&server, async {
        let mut attacker = upgraded(server.ws_addr).await;
        let mut frames = frame(0x01, b"[");
        for _ in 0..64 {
            frames.extend(frame(0x00, b" "));
        }
        frames.extend(frame(0x80, b"]"));
        attacker.write_all(&frames).await.unwrap();
        close_code(&mut attacker).await
    })
    .await;
    assert_eq!(code, Some(1008));
    assert!(
        server
            .metric("switchboard_connections_closed_total{end=\"too_many_fragments\"}")
            .await
            >= 1.0
    );
    server.stop().await;
}

#[tokio::test]
async fn an_unfinished_fragmented_message_times_out_though_pings_keep_coming() {
    let server = TestServer::builder()
        .configure(|c| c.limits.fragment_timeout = Duration::from_millis(500))
        .start()
        .await;
    let (code, elapsed) = with_bystander(&server, async {
        let mut attacker = upgraded(server.ws_addr).await;
        let started = Instant::now();
        attacker
            .write_all(&frame(0x01, b"{\"type\""))
            .await
            .unwrap();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            attacker.write_all(&frame(0x89, b"alive")).await.unwrap();
        }
        (close_code(&mut attacker).await, started.elapsed())
    })
    .await;
    assert_eq!(code, Some(1008));
    assert!(
        elapsed < patience(Duration::from_secs(3)),
        "closed after {elapsed:?}"
    );
    assert!(
        server
            .metric("switchboard_connections_closed_total{end=\"fragment_timeout\"}")
            .await
            >= 1.0
    );
    server.stop().await;
}

#[tokio::test]
async fn pings_from_a_client_that_never_answers_do_not_keep_it_open() {
    let server = TestServer::builder()
        .configure(|c| {
            c.session.heartbeat = Duration::from_millis(200);
            c.session.idle_timeout = Duration::from_millis(600);
        })
        .start()
        .await;
    let code = with_bystander(&server, async {
        let mut attacker = upgraded(server.ws_addr).await;
        // Within the control budget (10/s), and never a pong back.
        let pinger = async {
            for _ in 0..30 {
                if attacker.write_all(&frame(0x89, b"")).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        };
        tokio::time::timeout(patience(Duration::from_secs(2)), pinger)
            .await
            .ok();
        close_code(&mut attacker).await
    })
    .await;
    assert_eq!(code, Some(4002));
    server.stop().await;
}

#[tokio::test]
async fn silent_sockets_take_no_connection_slot_and_are_capped_per_address() {
    let server = TestServer::builder()
        .configure(|c| {
            c.limits.max_connections = 3;
            c.limits.max_pending_upgrades_per_ip = 20;
        })
        .start()
        .await;
    with_bystander(&server, async {
        // 19 silent sockets, far more than max_connections: real clients still get in.
        let mut silent = Vec::new();
        for _ in 0..19 {
            silent.push(TcpStream::connect(server.ws_addr).await.unwrap());
        }
        let _second = server.client().await;
        let _third = server.client().await;
        let mut fourth = TcpStream::connect(server.ws_addr).await.unwrap();
        let (status, head) = http(&mut fourth, UPGRADE).await;
        assert_eq!(status, 503, "upgraded connections reached max_connections");
        assert!(head.contains("Retry-After"), "{head}");
        // The 20th silent socket of this address is allowed, the 21st is refused at once.
        silent.push(TcpStream::connect(server.ws_addr).await.unwrap());
        crate::assert_eventually!(
            server.metric("switchboard_pending_upgrades").await >= 20.0,
            "the server counts 20 pending upgrades"
        );
        let mut one_more = TcpStream::connect(server.ws_addr).await.unwrap();
        let (status, head) = http(&mut one_more, UPGRADE).await;
        assert_eq!(status, 503, "{head}");
        assert!(head.contains("Retry-After"), "{head}");
    })
    .await;
    assert!(
        server
            .metric(
                "switchboard_connections_rejected_total{reason=\"max_pending_upgrades_per_ip\"}"
            )
            .await
            >= 1.0
    );
    crate::assert_eventually!(
        server.hub().connections() == 0
            && server.metric("switchboard_pending_upgrades").await == 0.0,
        "every slot is released"
    );
    server.stop().await;
}

#[tokio::test]
async fn malformed_upgrades_get_the_http_status_that_says_why() {
    let server = TestServer::start().await;
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let cases = [
        (UPGRADE.replace(key, ""), 400, "Bad Request"),
        (
            UPGRADE.replace("Version: 13", "Version: 8"),
            426,
            "Sec-WebSocket-Version: 13",
        ),
        (
            "GET /ws HTTP/1.1\r\nHost: test\r\n\r\n".to_owned(),
            426,
            "Upgrade: websocket",
        ),
        (UPGRADE.replace("GET", "POST"), 405, "Allow: GET"),
        (UPGRADE.replace("/ws", "/nope"), 404, "Not Found"),
        (
            UPGRADE.replace("Host: test", &format!("Host: {}", "h".repeat(20_000))),
            431,
            "Too Large",
        ),
        (
            "\u{16}\u{3}\u{1} not http\r\n\r\n".to_owned(),
            400,
            "Bad Request",
        ),
    ];
    with_bystander(&server, async {
        for (request, status, needle) in &cases {
            let mut stream = TcpStream::connect(server.ws_addr).await.unwrap();
            let (got, head) = http(&mut stream, request).await;
            assert_eq!(got, *status, "{request:?}: {head}");
            assert!(head.contains(needle), "{request:?}: {head}");
        }
    })
    .await;
    assert!(
        server
            .metric("switchboard_connections_rejected_total{reason=\"unsupported_version\"}")
            .await
            >= 1.0
    );
    server.stop().await;
}

/// Cross-site WebSocket hijacking: a page from another site gets 403; pages from the host
/// itself (when it is localhost or an address: a name could be rebound, DNS rebinding),
/// clients without an `Origin` and listed origins get in; origins no browser sends and a
/// second `Origin` header are refused.
#[tokio::test]
async fn upgrades_from_other_origins_are_refused() {
    let with_origin = |origin: &str| {
        UPGRADE.replace(
            "Host: test\r\n",
            &format!("Host: test\r\nOrigin: {origin}\r\n"),
        )
    };
    let same_host = |host: &str| {
        UPGRADE.replace(
            "Host: test\r\n",
            &format!("Host: {host}\r\nOrigin: http://{host}\r\n"),
        )
    };
    let server = TestServer::start().await;
    with_bystander(&server, async {
        for (request, status) in [
            (with_origin("https://evil.example"), 403),
            (with_origin("null"), 403),
            // DNS rebinding: evil.com pointed at this server after its page loaded.
            (same_host("evil.com"), 403),
            (same_host("test"), 403),
            (same_host("localhost:8080"), 101),
            (same_host("127.0.0.1:8080"), 101),
            (
                with_origin("http://localhost:8080\r\nOrigin: https://evil.example"),
                400,
            ),
            (UPGRADE.to_owned(), 101),
        ] {
            let mut stream = TcpStream::connect(server.ws_addr).await.unwrap();
            let (got, head) = http(&mut stream, &request).await;
            assert_eq!(got, status, "{request}: {head}");
        }
    })
    .await;
    assert!(
        server
            .metric("switchboard_connections_rejected_total{reason=\"origin_not_allowed\"}")
            .await
            >= 2.0
    );
    server.stop().await;

    let server = TestServer::builder()
        .configure(|c| c.server.allowed_origins = vec!["https://*.example.com".to_owned()])
        .start()
        .await;
    for (origin, status) in [
        ("https://chat.example.com", 101),
        ("https://example.com", 403),
        ("http://test", 403),
        ("https://evil.com#.example.com", 403),
        ("https://evil.com/.example.com", 403),
    ] {
        let mut stream = TcpStream::connect(server.ws_addr).await.unwrap();
        assert_eq!(
            http(&mut stream, &with_origin(origin)).await.0,
            status,
            "{origin}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn invalid_client_close_codes_are_protocol_errors() {
    let server = TestServer::start().await;
    with_bystander(&server, async {
        for code in [999_u16, 1005, 1006, 2000] {
            let mut attacker = upgraded(server.ws_addr).await;
            attacker
                .write_all(&frame(0x88, &code.to_be_bytes()))
                .await
                .unwrap();
            assert_eq!(close_code(&mut attacker).await, Some(1002), "code {code}");
        }
        // A valid code is echoed.
        let mut client = upgraded(server.ws_addr).await;
        client
            .write_all(&frame(0x88, &4321_u16.to_be_bytes()))
            .await
            .unwrap();
        assert_eq!(close_code(&mut client).await, Some(4321));
    })
    .await;
    assert!(
        server
            .metric("switchboard_connections_closed_total{end=\"protocol_error\"}")
            .await
            >= 4.0
    );
    server.stop().await;
}

/// 300 control API requests whose bodies trickle in a byte at a time: each gets 408 at
/// `control.body_timeout` and its connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_request_bodies_get_408_and_are_closed() {
    let server = TestServer::builder()
        .configure(|c| c.control.body_timeout = Duration::from_millis(500))
        .start()
        .await;
    let started = Instant::now();
    let statuses = with_bystander(&server, async {
        let mut trickles = Vec::new();
        for _ in 0..300 {
            let addr = server.control_addr;
            trickles.push(tokio::spawn(async move {
                let stream = TcpStream::connect(addr).await.unwrap();
                let (mut read_half, mut write_half) = stream.into_split();
                let head = "POST /v1/publish HTTP/1.1\r\nHost: t\r\n\
                    Content-Type: application/json\r\nContent-Length: 100\r\n\r\n";
                write_half.write_all(head.as_bytes()).await.unwrap();
                // One byte every 200 ms: each byte would reset a per-read timeout.
                let trickle = tokio::spawn(async move {
                    for _ in 0..100 {
                        if write_half.write_all(b" ").await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                });
                let mut response = Vec::new();
                let reading = async {
                    let mut chunk = [0_u8; 1024];
                    loop {
                        match read_half.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(read) => response.extend_from_slice(&chunk[..read]),
                        }
                    }
                };
                tokio::time::timeout(patience(Duration::from_secs(5)), reading)
                    .await
                    .expect("the connection is closed, not held");
                trickle.abort();
                String::from_utf8_lossy(&response).into_owned()
            }));
        }
        let mut statuses = Vec::new();
        for trickle in trickles {
            statuses.push(trickle.await.unwrap());
        }
        statuses
    })
    .await;
    assert!(started.elapsed() < patience(Duration::from_secs(6)));
    for response in &statuses {
        assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    }
    assert!(
        server
            .metric("switchboard_http_requests_total{route=\"publish\",status=\"408\"}")
            .await
            >= 300.0
    );
    server.stop().await;
}

/// Above `limits.memory_pressure_bytes` new upgrades get 503 with Retry-After and `/readyz`
/// reports it, while an existing connection keeps its full rate; below, the node accepts again.
/// The test process grows its own memory (the server runs in it) by touching 768 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_pressure_refuses_new_upgrades_and_keeps_existing_ones() {
    let own_rss = rss_kib(std::process::id()) * 1024;
    let server = TestServer::builder()
        .configure(|c| c.limits.memory_pressure_bytes = own_rss + 384 * 1024 * 1024)
        .start()
        .await;
    with_bystander(&server, async {
        let ballast = vec![1_u8; 768 * 1024 * 1024];
        crate::assert_eventually!(
            server.metric("switchboard_memory_pressure").await == 1.0,
            "the watch sees the pressure"
        );
        let (status, body) = server.get_json("/readyz").await;
        assert_eq!(status, 503);
        assert!(
            body["reasons"].to_string().contains("memory_pressure"),
            "{body}"
        );
        let mut refused = TcpStream::connect(server.ws_addr).await.unwrap();
        let (status, head) = http(&mut refused, UPGRADE).await;
        assert_eq!(status, 503, "{head}");
        assert!(head.contains("Retry-After"), "{head}");
        assert_eq!(
            ballast
                .iter()
                .step_by(4096)
                .map(|&b| usize::from(b))
                .sum::<usize>(),
            768 * 256
        );
        drop(ballast);
        crate::assert_eventually!(
            server.metric("switchboard_memory_pressure").await == 0.0,
            "the pressure ends with the ballast"
        );
        upgraded(server.ws_addr).await;
    })
    .await;
    assert!(
        server
            .metric("switchboard_connections_rejected_total{reason=\"memory_pressure\"}")
            .await
            >= 1.0
    );
    assert_eq!(server.get("/readyz").await.0, 200);
    server.stop().await;
}

/// A 60 KiB message needs a 60 KiB read buffer while it is read; none is kept after it
/// (tungstenite kept 54-72 KB per connection for its life).
#[tokio::test]
async fn a_large_message_leaves_no_read_buffer_behind() {
    let server = TestServer::start().await;
    with_bystander(&server, async {
        let mut clients = Vec::new();
        for n in 0..20 {
            let mut client = server.client().await;
            let padded = format!("{{\"type\":\"ping\",\"id\":{n}}}{}", " ".repeat(60 * 1024));
            client.send_text(&padded).await;
            assert_eq!(client.recv().await["type"], "pong");
            clients.push(client);
        }
        // Each of the 22 connections (and the bystander's) may hold a pending write at most.
        crate::assert_eventually!(
            server.metric("switchboard_session_buffer_bytes").await < 22.0 * 1024.0,
            "read buffers were given back: {} bytes held",
            server.metric("switchboard_session_buffer_bytes").await
        );
    })
    .await;
    server.stop().await;
}

/// Channels made by a client's publishes are charged their own cost against the history
/// budget, not only their messages' bytes; a channel left with nothing is freed at once.
#[tokio::test]
async fn channels_are_charged_what_they_cost_and_freed_when_empty() {
    let server = TestServer::start().await;
    with_bystander(&server, async {
        let mut client = server.client().await;
        let before = server.metric("switchboard_history_bytes").await;
        for n in 0..100 {
            client
                .send(json!({"type":"publish","id":n,"channel":format!("made-{n}"),"data":1}))
                .await;
            assert_eq!(client.recv_type("published").await["id"], n);
        }
        let charged = (server.metric("switchboard_history_bytes").await - before) / 100.0;
        // Measured: 729 B of RSS per such channel (docs/security.md); 166 B were charged.
        assert!(
            charged > 500.0,
            "a one-message channel is charged {charged} B"
        );
        let channels = server.metric("switchboard_channels").await;
        client.subscribe("passing-through").await;
        assert_eq!(server.metric("switchboard_channels").await, channels + 1.0);
        client
            .send(json!({"type":"unsubscribe","id":1,"channel":"passing-through"}))
            .await;
        client.recv_type("unsubscribed").await;
        assert_eq!(
            server.metric("switchboard_channels").await,
            channels,
            "a channel without subscribers or history is freed at once"
        );
    })
    .await;
    server.stop().await;
}

/// The worst case for pongs: no control budget at all, and a client that pings as fast as it
/// can and never reads. Pongs coalesce into one, so the node's memory stays flat (it grew by
/// about 100 MiB/s when every pong was buffered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_without_reading_leaves_the_node_rss_flat() {
    let node = BinaryNode::start(
        &[],
        &[("SWITCHBOARD_LIMITS__CLIENT_CONTROL_FRAMES_PER_SECOND", "0")],
    )
    .await;
    let (addr, pid) = (node.ws_addr, node.pid());
    let mut attacker = upgraded(addr).await;
    // Warm up: the first pings allocate what any connection allocates.
    flood(
        &mut attacker,
        &frame(0x89, &[0; 125]),
        Duration::from_millis(300),
    )
    .await;
    let before = rss_kib(pid);
    let sent = flood(
        &mut attacker,
        &frame(0x89, &[0; 125]),
        Duration::from_secs(3),
    )
    .await;
    let after = rss_kib(pid);
    assert!(sent > 10_000, "only {sent} pings were sent");
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB over {sent} pings"
    );
    // The node still serves.
    crate::harness::TestClient::connect(&node.ws_url()).await;
}
