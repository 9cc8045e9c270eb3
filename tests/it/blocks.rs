//! Blocking users (`POST /v1/block`, `DELETE /v1/block`, `GET /v1/blocks`) over real
//! sockets: live connections closed with 4003 within a second, on every node of a cluster
//! (real redis-server); tokens refused at connect and by `auth` while the block holds, on a
//! node that started after it too; lifted, and ended by `until`.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard::auth::unix_now as now;
use tokio::time::Instant;

use crate::{
    auth::{hmac_node, hs256, with_hmac},
    harness::{Closed, TestClient, TestServer},
    redis_server::RedisServer,
};

async fn connect_as(server: &TestServer, user: &str) -> TestClient {
    let url = format!("{}?token={}", server.ws_url(), hs256(user, now() + 600));
    TestClient::connect(&url).await
}

/// Waits for the close of a connection the test expects closed within a second.
pub(crate) async fn closed_within_a_second(client: &mut TestClient) -> u16 {
    let started = Instant::now();
    let code = client.close_code().await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "closed after {:?}",
        started.elapsed()
    );
    code
}

/// A connection of `user` that the node refuses: its `error` (unauthorized), then 4003.
async fn refused(server: &TestServer, user: &str) -> Value {
    let mut client = connect_as(server, user).await;
    assert!(client.welcome.get("user").is_none(), "{}", client.welcome);
    let error = client.recv().await;
    assert_eq!(client.close_code().await, 4003);
    error
}

#[tokio::test]
async fn a_blocked_user_is_closed_refused_until_lifted_and_others_go_on() {
    let server = TestServer::builder().configure(with_hmac).start().await;
    crate::raw::with_bystander(&server, async {
        let mut phone = connect_as(&server, "mallory").await;
        let mut laptop = connect_as(&server, "mallory").await;
        let mut alice = connect_as(&server, "alice").await;

        let (status, answer) = server
            .post(
                "/v1/block",
                json!({"user": "mallory", "until": now() + 600}),
            )
            .await;
        assert_eq!(
            (status, answer["disconnected_here"].as_u64()),
            (200, Some(2)),
            "{answer}"
        );
        assert_eq!(closed_within_a_second(&mut phone).await, 4003);
        assert_eq!(closed_within_a_second(&mut laptop).await, 4003);

        // Refused while blocked, at connect and by `auth`, saying why.
        let error = refused(&server, "mallory").await;
        assert_eq!(error["code"], "unauthorized");
        assert!(
            error["message"].as_str().unwrap().contains("blocked until"),
            "{error}"
        );
        let mut late = server.client().await;
        late.send(json!({"type": "auth", "id": 1, "token": hs256("mallory", now() + 600)}))
            .await;
        assert_eq!(late.recv().await["code"], "unauthorized");
        assert_eq!(late.close_code().await, 4003);

        // Everyone else goes on.
        alice.send(json!({"type": "ping", "id": 2})).await;
        assert_eq!(alice.recv_type("pong").await["id"], 2);

        let (status, listed) = server.get_json("/v1/blocks").await;
        assert_eq!(status, 200);
        assert_eq!(listed["blocks"][0]["user"], "mallory", "{listed}");
        assert_eq!(listed["next_cursor"], Value::Null);

        let (status, _) = server.delete("/v1/block", json!({"user": "mallory"})).await;
        assert_eq!(status, 200);
        assert_eq!(
            connect_as(&server, "mallory").await.welcome["user"],
            "mallory"
        );
        let (status, answer) = server.delete("/v1/block", json!({"user": "mallory"})).await;
        assert_eq!(
            (status, &answer["error"]["code"]),
            (404, &json!("not_found"))
        );
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_block_ends_at_its_until_and_bad_blocks_are_refused() {
    let server = TestServer::builder().configure(with_hmac).start().await;
    let (status, _) = server
        .post("/v1/block", json!({"user": "trudy", "until": now() + 2}))
        .await;
    assert_eq!(status, 200);
    refused(&server, "trudy").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(connect_as(&server, "trudy").await.welcome["user"], "trudy");
    assert_eq!(server.get_json("/v1/blocks").await.1["blocks"], json!([]));

    for (body, why) in [
        (
            json!({"user": "trudy", "until": now() - 1}),
            "not in the future",
        ),
        // Milliseconds where seconds belong: the year 50,000.
        (
            json!({"user": "trudy", "until": now() * 1000}),
            "past the year 9999",
        ),
        (json!({"user": ""}), "must not be empty"),
        (json!({"user": "trudy", "until": null}), "invalid type"),
        (json!({"user": "trudy", "for": 60}), "unknown field"),
    ] {
        let (status, answer) = server.post("/v1/block", body.clone()).await;
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            status == 422 && message.contains(why),
            "{body}: {status} {answer}"
        );
    }
    assert_eq!(connect_as(&server, "trudy").await.welcome["user"], "trudy");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_holds_on_every_node_and_on_a_node_that_starts_later() {
    let redis = RedisServer::start(false);
    let (a, b) = (hmac_node(&redis).await, hmac_node(&redis).await);
    let mut on_a = connect_as(&a, "mallory").await;
    let mut on_b = connect_as(&b, "mallory").await;
    let mut bystander = connect_as(&b, "alice").await;

    let (status, answer) = a.post("/v1/block", json!({"user": "mallory"})).await;
    assert_eq!(
        (status, answer["until"].clone()),
        (200, Value::Null),
        "{answer}"
    );
    assert_eq!(closed_within_a_second(&mut on_a).await, 4003);
    assert_eq!(closed_within_a_second(&mut on_b).await, 4003);
    refused(&b, "mallory").await;
    bystander.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(bystander.recv_type("pong").await["id"], 1);

    // A node that was not there reads the list from Redis.
    let c = hmac_node(&redis).await;
    crate::assert_eventually!(
        {
            let mut client = connect_as(&c, "mallory").await;
            client.welcome.get("user").is_none()
                && matches!(client.closed().await, Closed::Code(4003, _))
        },
        "a node started after the block refuses the user"
    );
    let (status, listed) = c.get_json("/v1/blocks").await;
    assert_eq!(
        (status, &listed["blocks"][0]["user"]),
        (200, &json!("mallory"))
    );

    // A block whose bus entry a node missed (written straight into the list here) reaches
    // it at its next reload, which closes the user's connections too.
    let mut missed = connect_as(&a, "eve").await;
    redis
        .cli(&["HSET", "sb:{sb:nodes}:blocks", "eve", "0"])
        .expect("redis-cli writes");
    let started = Instant::now();
    assert_eq!(missed.close_code().await, 4003);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Lifted on one node, lifted on all.
    let (status, _) = b.delete("/v1/block", json!({"user": "mallory"})).await;
    assert_eq!(status, 200);
    for server in [&a, &c] {
        crate::assert_eventually!(
            connect_as(server, "mallory").await.welcome["user"] == "mallory",
            "the block is lifted everywhere"
        );
    }
    for server in [a, b, c] {
        server.stop().await;
    }
}
