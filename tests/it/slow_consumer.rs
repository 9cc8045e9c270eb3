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
    assert!(
        server
            .metric("switchboard_slow_consumer_closes_total")
            .await
            >= 1.0
    );
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

/// A backend publishing a whole queue ahead of a big channel's fan-out gets 503
/// `unavailable` from `POST /v1/publish` before its message is ordered (the outbox holds at
/// most `limits.outbound_queue_messages`): every accepted message reaches every subscriber
/// in order, nothing refused is delivered, and publishing works again once the rounds have
/// caught up.
#[tokio::test] // One thread: the sessions' runtime, which runs this test and the rounds.
async fn an_http_publisher_a_queue_ahead_of_the_fanout_gets_503() {
    const LIMIT: u64 = 16;
    let server = TestServer::builder()
        .configure(|c| {
            c.limits.outbound_queue_messages = LIMIT as usize;
            c.history.size = 8;
        })
        .start()
        .await;
    // More than 64 subscribers: the channel's rounds run on the sessions' runtime (the
    // workers' job queue), not on the publisher's thread.
    let mut subscribers = Vec::new();
    for _ in 0..70 {
        let mut client = server.client().await;
        client.subscribe("big").await;
        subscribers.push(client);
    }
    let mut bystander = server.client().await;
    bystander.subscribe("small").await;
    // Publishing with blocking I/O from this thread keeps the runtime from running the
    // round meanwhile, so the outbox fills as behind a fan-out that cannot keep up.
    let answers = publish_blocking(server.control_addr, "big", 24);
    for (n, (status, body)) in answers.iter().enumerate() {
        if (n as u64) < LIMIT {
            assert_eq!(*status, 200, "publish {n}: {body}");
        } else {
            assert_eq!(*status, 503, "publish {n}: {body}");
            assert!(body.contains(r#""code":"unavailable""#), "{body}");
            assert!(body.contains("fan-out is behind"), "{body}");
        }
    }
    for subscriber in &mut subscribers {
        for n in 0..LIMIT {
            assert_eq!(subscriber.recv_type("message").await["data"], n);
        }
    }
    let (status, body) = server
        .post("/v1/publish", json!({"channel": "big", "data": "again"}))
        .await;
    assert_eq!(status, 200, "{body}");
    for subscriber in &mut subscribers {
        assert_eq!(subscriber.recv_type("message").await["data"], "again");
    }
    server.publish("small", json!("bystander")).await;
    assert_eq!(bystander.recv_type("message").await["data"], "bystander");
    assert!(
        server
            .metric(r#"switchboard_publishes_refused_total{reason="fanout_behind"}"#)
            .await
            >= 8.0
    );
    server.stop().await;
}

/// `n` publishes to `channel` over one keep-alive connection with blocking I/O: (status,
/// body) of each.
fn publish_blocking(control: std::net::SocketAddr, channel: &str, n: u64) -> Vec<(u16, String)> {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(control).unwrap();
    stream
        .set_read_timeout(Some(patience(Duration::from_secs(5))))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    (0..n)
        .map(|n| {
            let body = format!(r#"{{"channel":"{channel}","data":{n}}}"#);
            write!(
                stream,
                "POST /v1/publish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let status = line.split(' ').nth(1).unwrap().parse().unwrap();
            let mut length = 0;
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap();
                }
            }
            let mut answer = vec![0; length];
            reader.read_exact(&mut answer).unwrap();
            (status, String::from_utf8(answer).unwrap())
        })
        .collect()
}
