//! Amplification: one client's frames made into many times their bytes by the fan-out. A
//! publisher is refused (`rate_limited`) before its subscribers are cut off as slow
//! consumers, with a bystander that keeps its full rate.

use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::json;
use tokio::time::Instant;

use crate::{harness::TestServer, raw::with_bystander};

/// One client publishing 32 KB messages at its full frame budget (200/s) to 100 reading
/// subscribers for 3 s. Without a byte budget the node tried to write 640 MB/s and closed
/// the subscribers as slow consumers (300 of them, 890 MB in 7 s, in the report); with
/// `limits.client_publish_bytes_per_second` (64 KiB/s, burst 256 KiB) the publisher is
/// refused past its budget and every subscriber gets every published message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_publisher_is_refused_before_its_subscribers_are_cut_off() {
    const SUBSCRIBERS: usize = 100;
    let server = TestServer::start().await;
    let mut readers = Vec::with_capacity(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS {
        let mut client = server.client().await;
        client.subscribe("feed").await;
        readers.push(client);
    }
    let (published, refused) = with_bystander(&server, async {
        let mut publisher = server.client().await;
        let padding = "x".repeat(32 * 1000);
        let (mut published, mut refused) = (0_u64, 0_u64);
        let started = Instant::now();
        let mut interval = tokio::time::interval(Duration::from_millis(5));
        let mut id = 0_u64;
        while started.elapsed() < Duration::from_secs(3) {
            interval.tick().await;
            id += 1;
            publisher
                .send(json!({"type":"publish","id":id,"channel":"feed","data":{"p":padding}}))
                .await;
        }
        // Every publish is answered, published or refused.
        while published + refused < id {
            let reply = publisher.recv().await;
            match reply["type"].as_str() {
                Some("published") => published += 1,
                Some("error") => {
                    assert_eq!(reply["code"], "rate_limited", "{reply}");
                    refused += 1;
                }
                _ => {}
            }
        }
        (published, refused)
    })
    .await;
    eprintln!(
        "{published} published and {refused} refused of 32 KB messages to {SUBSCRIBERS} \
         subscribers"
    );
    assert!(refused > 0, "the byte budget refuses a fast publisher");
    assert!(
        published >= 8,
        "the burst and the rate let some through: {published}"
    );
    for (n, mut reader) in readers.into_iter().enumerate() {
        let mut received = 0;
        while received < published {
            let frame = tokio::time::timeout(Duration::from_secs(10), reader.ws.next())
                .await
                .unwrap_or_else(|_| panic!("subscriber {n} got {received} of {published}"));
            let text = frame.unwrap().unwrap();
            if text.to_text().unwrap().contains("\"type\":\"message\"") {
                received += 1;
            }
        }
    }
    assert_eq!(
        server
            .metric("switchboard_slow_consumer_closes_total")
            .await,
        0.0
    );
    assert!(
        server
            .metric("switchboard_rate_limited_total{scope=\"client_publish_bytes\"}")
            .await
            >= 1.0
    );
    server.stop().await;
}

/// A channel's byte budget holds for its clients together and, apart, for the control API:
/// past it a publish is refused (`rate_limited`; 429 with `Retry-After` over HTTP), and
/// clients that used up theirs do not make a backend's publishes fail.
#[tokio::test]
async fn a_channel_over_its_byte_budget_refuses_publishes_but_not_the_others() {
    let server = TestServer::builder()
        .configure(|c| {
            c.limits.channel_publish_bytes_per_second = 32 * 1024;
            c.limits.channel_publish_byte_burst = 64 * 1024;
        })
        .start()
        .await;
    let data = json!({"p": "x".repeat(30_000)});
    // Clients first: two 30 KB messages fit the 64 KiB burst, the third does not.
    let mut client = server.client().await;
    for id in 1..=3 {
        client
            .send(json!({"type":"publish","id":id,"channel":"bulk","data":data}))
            .await;
    }
    assert_eq!(client.recv().await["type"], "published");
    assert_eq!(client.recv().await["type"], "published");
    let refused = client.recv().await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("channel_publish_bytes_per_second"),
        "{refused}"
    );
    // The control API has a budget of its own on the same channel.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response = server
            .http
            .post(server.control_url("/v1/publish"))
            .json(&json!({"channel": "bulk", "data": data}))
            .send()
            .await
            .unwrap();
        statuses.push((
            response.status().as_u16(),
            response.headers().contains_key("retry-after"),
        ));
    }
    assert_eq!(
        statuses,
        [(200, false), (200, false), (429, true), (429, true)],
        "two 30 KB messages fit the 64 KiB burst"
    );
    // Another channel has its own budgets.
    server.publish("other", data.clone()).await;
    assert!(
        server
            .metric("switchboard_rate_limited_total{scope=\"channel_publish_bytes\"}")
            .await
            >= 3.0
    );
    server.stop().await;
}
