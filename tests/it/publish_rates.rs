//! Client publish limits per user and per address (`limits.publishes_per_minute_per_user`,
//! `..._per_address`) over real sockets: one budget for all of a user's connections, on
//! one node and across two nodes of a cluster (real redis-server); anonymous connections of
//! one address share theirs; over the limit `rate_limited` with `retry_after_ms`, and nobody
//! else is touched; a busy user costs far fewer Redis calls than publishes.

use serde_json::{Value, json};
use switchboard::{auth::unix_now as now, config::Config};

use crate::{
    auth::{hs256, with_hmac},
    harness::{TestClient, TestServer},
    redis_server::RedisServer,
};

fn limited(per_minute: u32, burst: u32) -> impl Fn(&mut Config) + Clone {
    move |config: &mut Config| {
        with_hmac(config);
        config.limits.publishes_per_minute_per_user = per_minute;
        config.limits.publish_burst_per_user = burst;
        config.limits.publishes_per_minute_per_address = per_minute;
        config.limits.publish_burst_per_address = burst;
        // The frame budget is not what is tested here.
        config.limits.client_messages_per_second = 10_000;
        config.limits.client_message_burst = 10_000;
    }
}

async fn connect(server: &TestServer, user: &str) -> TestClient {
    TestClient::connect(&format!(
        "{}?token={}",
        server.ws_url(),
        hs256(user, now() + 600)
    ))
    .await
}

/// Publishes once to `channel`: the reply (`published`, or an `error`).
async fn publish(client: &mut TestClient, id: u64, channel: &str) -> Value {
    client
        .send(json!({"type": "publish", "id": id, "channel": channel, "data": id}))
        .await;
    loop {
        let reply = client.recv().await;
        if reply["id"] == id {
            return reply;
        }
    }
}

fn accepted(reply: &Value) -> bool {
    match reply["type"].as_str() {
        Some("published") => true,
        Some("error") if reply["code"] == "rate_limited" => false,
        _ => panic!("neither published nor rate_limited: {reply}"),
    }
}

#[tokio::test]
async fn a_users_connections_share_one_budget_and_others_go_on() {
    let server = TestServer::builder()
        .configure(limited(60, 3))
        .start()
        .await;
    let scope = r#"switchboard_rate_limited_total{scope="user_publishes"}"#;
    let before = server.metric(scope).await;
    crate::raw::with_bystander(&server, async {
        let mut phone = connect(&server, "ivy").await;
        let mut laptop = connect(&server, "ivy").await;
        let mut other = connect(&server, "jon").await;
        assert!(accepted(&publish(&mut phone, 1, "room").await));
        assert!(accepted(&publish(&mut laptop, 2, "room").await));
        assert!(accepted(&publish(&mut phone, 3, "room").await));
        let refused = publish(&mut laptop, 4, "room").await;
        assert!(!accepted(&refused));
        let retry = refused["retry_after_ms"].as_u64().unwrap();
        assert!((1..=1000).contains(&retry), "{refused}");
        let message = refused["message"].as_str().unwrap();
        assert!(
            message.contains("limits.publishes_per_minute_per_user"),
            "{refused}"
        );
        assert!(!accepted(&publish(&mut phone, 5, "room").await));
        // Another user has a budget of its own.
        assert!(accepted(&publish(&mut other, 6, "room").await));
        // A refill later, one more.
        tokio::time::sleep(std::time::Duration::from_millis(retry + 50)).await;
        assert!(accepted(&publish(&mut laptop, 7, "room").await));
    })
    .await;
    assert!(server.metric(scope).await >= before + 2.0);
    server.stop().await;
}

#[tokio::test]
async fn anonymous_connections_of_one_address_share_one_budget() {
    let server = TestServer::builder()
        .configure(limited(60, 2))
        .start()
        .await;
    let mut first = server.client().await;
    let mut second = server.client().await;
    assert!(accepted(&publish(&mut first, 1, "lobby").await));
    assert!(accepted(&publish(&mut second, 2, "lobby").await));
    let refused = publish(&mut first, 3, "lobby").await;
    assert!(!accepted(&refused));
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("limits.publishes_per_minute_per_address"),
        "{refused}"
    );
    assert!(!accepted(&publish(&mut second, 4, "lobby").await));
    // An authenticated user from the same address is counted as itself.
    let mut signed_in = connect(&server, "kim").await;
    assert!(accepted(&publish(&mut signed_in, 5, "lobby").await));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_on_two_nodes_has_one_budget_at_few_redis_calls() {
    let redis = RedisServer::start(false);
    let node = |per_minute, burst| {
        TestServer::builder()
            .redis(&redis.url())
            .configure(limited(per_minute, burst))
            .start()
    };
    // 6 a minute with a burst of 10: within the test, about 10 are taken in all.
    let (a, b) = (node(6, 10).await, node(6, 10).await);
    let mut on_a = connect(&a, "lee").await;
    let mut on_b = connect(&b, "lee").await;
    let mut taken = 0;
    for id in 0..40 {
        let client = if id % 2 == 0 { &mut on_a } else { &mut on_b };
        if accepted(&publish(client, id, "room").await) {
            taken += 1;
        }
    }
    assert!((10..=11).contains(&taken), "{taken} taken of 40");
    for server in [a, b] {
        server.stop().await;
    }

    // A busy user within its budget: leases, not one Redis call per publish.
    let busy = node(600_000, 200).await;
    let leases = r#"switchboard_rate_leases_total{result="granted"}"#;
    let before = busy.metric(leases).await;
    let mut client = connect(&busy, "max").await;
    for id in 0..1000 {
        assert!(accepted(&publish(&mut client, id, "busy").await));
    }
    let calls = busy.metric(leases).await - before;
    eprintln!("{calls} Redis calls for 1,000 client publishes");
    assert!(calls < 50.0, "{calls} Redis calls for 1,000 publishes");
    busy.stop().await;
}

/// `rate.lua` on a real redis-server through `EVAL`: a full budget hands out up to the
/// burst, a lease takes at most what is free, an empty one says when the next grant is
/// free, and the key goes once the budget is full again.
#[test]
fn the_rate_script_hands_out_the_burst_then_the_rate() {
    const SCRIPT: &str = include_str!("../../src/cluster/redis/lua/rate.lua");
    let redis = RedisServer::start(false);
    // One grant a minute (60,000,000 µs), a burst of 5.
    let take = |wanted: &str| {
        redis
            .cli(&["EVAL", SCRIPT, "1", "budget", wanted, "60000000", "5"])
            .expect("EVAL runs")
            .lines()
            .map(|line| line.parse::<u64>().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(take("3"), [3, 0]);
    assert_eq!(take("3"), [2, 0]);
    let refused = take("1");
    assert_eq!(refused[0], 0);
    assert!((59_000..=60_000).contains(&refused[1]), "{refused:?}");
    let ttl: u64 = redis.cli(&["PTTL", "budget"]).unwrap().parse().unwrap();
    assert!((299_000..=301_000).contains(&ttl), "{ttl}");
}
