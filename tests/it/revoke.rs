//! Revoking tokens (`POST /v1/revoke`) over real sockets: a token by its `jti`, or a user's
//! tokens issued before a time; live connections holding one closed with 4003 within a
//! second, on every node of a cluster (real redis-server); such tokens refused at connect,
//! by `auth` and by `refresh`, on a node that started after the revocation too; a change a
//! node missed found by reading the whole list; `auth.max_token_ttl` bounding tokens.

use serde_json::{Value, json};
use switchboard::auth::unix_now as now;

use crate::{
    auth::{hmac_node, hs256_claims, with_hmac},
    blocks::closed_within_a_second,
    harness::{TestClient, TestServer},
    redis_server::RedisServer,
};

/// A token of `user` with `jti` (if any) issued at `iat` (if any), valid for ten minutes.
fn token(user: &str, jti: Option<&str>, iat: Option<u64>) -> String {
    let mut claims = json!({"sub": user, "exp": now() + 600});
    if let Some(jti) = jti {
        claims["jti"] = jti.into();
    }
    if let Some(iat) = iat {
        claims["iat"] = iat.into();
    }
    hs256_claims(&claims)
}

async fn connect(server: &TestServer, token: &str) -> TestClient {
    TestClient::connect(&format!("{}?token={token}", server.ws_url())).await
}

/// The node refuses `token` at connect: the `error` it says, after which it closes 4003.
async fn refused(server: &TestServer, token: &str) -> Value {
    let mut client = connect(server, token).await;
    assert!(client.welcome.get("user").is_none(), "{}", client.welcome);
    let error = client.recv().await;
    assert_eq!(error["code"], "unauthorized", "{error}");
    assert_eq!(client.close_code().await, 4003);
    error
}

#[tokio::test]
async fn a_revoked_jti_closes_its_connections_and_is_refused_everywhere_it_is_shown() {
    let server = TestServer::builder().configure(with_hmac).start().await;
    crate::raw::with_bystander(&server, async {
        let leaked = token("mallory", Some("t-leaked"), Some(now()));
        let mut first = connect(&server, &leaked).await;
        let mut second = connect(&server, &leaked).await;
        let mut other_device = connect(&server, &token("mallory", Some("t-2"), None)).await;

        let (status, answer) = server.post("/v1/revoke", json!({"jti": "t-leaked"})).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["checked_here"], 2, "{answer}");
        let until = answer["until"].as_u64().unwrap();
        let week = 7 * 24 * 3600;
        assert!(
            (now() + week - 5..=now() + week).contains(&until),
            "{answer}"
        );
        assert_eq!(closed_within_a_second(&mut first).await, 4003);
        assert_eq!(closed_within_a_second(&mut second).await, 4003);

        // The same user's other token is not revoked.
        other_device.send(json!({"type": "ping", "id": 1})).await;
        assert_eq!(other_device.recv_type("pong").await["id"], 1);

        // Refused at connect, by `auth`, and by `refresh`, saying why.
        let error = refused(&server, &leaked).await;
        assert_eq!(error["message"], "the token is revoked");
        let mut late = server.client().await;
        late.send(json!({"type": "auth", "id": 2, "token": leaked}))
            .await;
        assert_eq!(late.recv().await["code"], "unauthorized");
        assert_eq!(late.close_code().await, 4003);
        other_device
            .send(json!({"type": "refresh", "id": 3, "token": leaked}))
            .await;
        assert_eq!(other_device.recv().await["code"], "unauthorized");
        assert_eq!(other_device.close_code().await, 4003);

        // Revoked again with a later end: taken, nothing else changes.
        let (status, _) = server
            .post(
                "/v1/revoke",
                json!({"jti": "t-leaked", "until": now() + 2 * week}),
            )
            .await;
        assert_eq!(status, 200);
        let fresh = connect(&server, &token("mallory", Some("t-3"), None)).await;
        assert_eq!(fresh.welcome["user"], "mallory");
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn revoking_a_users_older_tokens_keeps_the_newer_ones() {
    let server = TestServer::builder().configure(with_hmac).start().await;
    let issued = now();
    let mut old = connect(&server, &token("bob", None, Some(issued - 100))).await;
    let mut without_iat = connect(&server, &token("bob", None, None)).await;
    let mut newer = connect(&server, &token("bob", None, Some(issued + 10))).await;
    let mut alice = connect(&server, &token("alice", None, Some(issued - 100))).await;

    let (status, answer) = server
        .post(
            "/v1/revoke",
            json!({"user": "bob", "issued_before": issued}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (
            answer["issued_before"].as_u64(),
            answer["checked_here"].as_u64()
        ),
        (Some(issued), Some(3)),
        "{answer}"
    );
    assert_eq!(closed_within_a_second(&mut old).await, 4003);
    assert_eq!(closed_within_a_second(&mut without_iat).await, 4003);
    for client in [&mut newer, &mut alice] {
        client.send(json!({"type": "ping", "id": 1})).await;
        assert_eq!(client.recv_type("pong").await["id"], 1);
    }
    let error = refused(&server, &token("bob", None, Some(issued - 1))).await;
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains(&format!("issued before {issued}")),
        "{error}"
    );
    assert_eq!(
        connect(&server, &token("bob", None, Some(issued)))
            .await
            .welcome["user"],
        "bob"
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_revocations_and_overlong_tokens_are_refused() {
    let server = TestServer::builder().configure(with_hmac).start().await;
    for (body, why) in [
        (json!({"jti": "a", "user": "b"}), "either `jti` or `user`"),
        (json!({}), "either `jti` or `user`"),
        (json!({"jti": ""}), "must not be empty"),
        (json!({"jti": "j".repeat(257)}), "longer than 256 bytes"),
        (json!({"user": ""}), "must not be empty"),
        (json!({"jti": "a", "until": now() - 1}), "not in the future"),
        (
            json!({"jti": "a", "until": now() * 1000}),
            "past the year 9999",
        ),
        (
            json!({"jti": "a", "issued_before": now()}),
            "goes with `user`",
        ),
        (
            json!({"user": "b", "issued_before": now() + 3600}),
            "ahead of this node's clock",
        ),
        (json!({"jti": null}), "invalid type"),
        (json!({"jti": "a", "for": 60}), "unknown field"),
    ] {
        let (status, answer) = server.post("/v1/revoke", body.clone()).await;
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            status == 422 && message.contains(why),
            "{body}: {status} {answer}"
        );
    }
    // A token that would outlive auth.max_token_ttl (7 days by default), which bounds how
    // long a revocation must hold, is refused.
    let forever = hs256_claims(&json!({"sub": "carol", "exp": now() + 30 * 24 * 3600}));
    let error = refused(&server, &forever).await;
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("auth.max_token_ttl"),
        "{error}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_holds_on_every_node_and_on_a_node_that_starts_later() {
    let redis = RedisServer::start(false);
    let (a, b) = (hmac_node(&redis).await, hmac_node(&redis).await);
    let leaked = token("mallory", Some("t-cluster"), None);
    let mut on_a = connect(&a, &leaked).await;
    let mut on_b = connect(&b, &leaked).await;
    let mut old_on_b = connect(&b, &token("bob", None, Some(now() - 60))).await;
    let mut bystander = connect(&b, &token("alice", Some("t-alice"), None)).await;

    let (status, answer) = a.post("/v1/revoke", json!({"jti": "t-cluster"})).await;
    assert_eq!((status, answer["checked_here"].as_u64()), (200, Some(1)));
    assert_eq!(closed_within_a_second(&mut on_a).await, 4003);
    assert_eq!(closed_within_a_second(&mut on_b).await, 4003);
    let (status, _) = a
        .post("/v1/revoke", json!({"user": "bob", "issued_before": now()}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(closed_within_a_second(&mut old_on_b).await, 4003);
    refused(&b, &leaked).await;
    bystander.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(bystander.recv_type("pong").await["id"], 1);

    // A node that was not there reads the whole list from Redis before it is ready (the
    // harness waits for `/readyz`): it refuses both at once.
    let c = hmac_node(&redis).await;
    refused(&c, &leaked).await;
    refused(&c, &token("bob", None, Some(now() - 3600))).await;

    // A change a node missed (here: one written behind the log's back, then a log entry
    // whose number skips it) makes it read the whole list, which closes what it revokes.
    let mut missed = connect(&c, &token("eve", Some("t-missed"), None)).await;
    let until = (now() + 600).to_string();
    redis
        .cli(&["ZADD", "sb:{sb:nodes}:revoked:tokens", &until, "t-missed"])
        .expect("redis-cli writes");
    redis
        .cli(&["INCR", "sb:{sb:nodes}:revoked:seq"])
        .expect("redis-cli writes");
    let (status, _) = a.post("/v1/revoke", json!({"jti": "t-other"})).await;
    assert_eq!(status, 200);
    assert_eq!(closed_within_a_second(&mut missed).await, 4003);
    bystander.send(json!({"type": "ping", "id": 2})).await;
    assert_eq!(bystander.recv_type("pong").await["id"], 2);
    for server in [a, b, c] {
        server.stop().await;
    }
}

/// `revoke.lua` on a real redis-server through `EVAL`: later ends and later `issued_before`
/// win, every change is numbered and logged, ended entries are removed (users with their
/// `issued_before`), and a full list refuses a new entry but still lengthens one it holds.
#[test]
fn the_revoke_script_merges_logs_prunes_and_caps() {
    const SCRIPT: &str = include_str!("../../src/cluster/redis/lua/revoke.lua");
    const KEYS: [&str; 5] = ["t", "u", "b", "log", "seq"];
    let redis = RedisServer::start(false);
    let eval = |kind: &str, id: &str, until: u64, before: u64, now: u64, cap: u64| {
        let (until, before, now, cap) = (
            until.to_string(),
            before.to_string(),
            now.to_string(),
            cap.to_string(),
        );
        let mut args = vec!["EVAL", SCRIPT, "5"];
        args.extend(KEYS);
        args.extend([kind, id, &until, &before, &now, &cap, "100"]);
        redis.cli(&args).expect("EVAL runs")
    };
    let lines = |text: String| text.lines().map(str::to_owned).collect::<Vec<_>>();

    assert_eq!(
        lines(eval("t", "j1", 500, 0, 100, 3)),
        ["1", "500", "0", "1"]
    );
    // A shorter end keeps the longer one; the change is still numbered.
    assert_eq!(
        lines(eval("t", "j1", 300, 0, 100, 3)),
        ["1", "500", "0", "2"]
    );
    assert_eq!(
        lines(eval("u", "bob", 400, 50, 100, 3)),
        ["1", "400", "50", "3"]
    );
    assert_eq!(
        lines(eval("u", "bob", 350, 40, 100, 3)),
        ["1", "400", "50", "4"]
    );
    assert_eq!(
        lines(eval("u", "bob", 450, 60, 100, 3)),
        ["1", "450", "60", "5"]
    );
    assert_eq!(redis.cli(&["XLEN", "log"]).unwrap(), "5");
    let last = redis
        .cli(&["XREVRANGE", "log", "+", "-", "COUNT", "1"])
        .unwrap();
    assert_eq!(
        lines(last)[1..],
        ["k", "u", "i", "bob", "x", "450", "b", "60", "s", "5"]
    );

    // Full at a cap of 3 tokens: a new one refused, a held one lengthened.
    eval("t", "j2", 500, 0, 100, 3);
    eval("t", "j3", 500, 0, 100, 3);
    assert_eq!(lines(eval("t", "j4", 500, 0, 100, 3)), ["0"]);
    assert_eq!(lines(eval("t", "j3", 900, 0, 100, 3))[..2], ["1", "900"]);
    // Once the clock passes 500, what ended goes, users with their `issued_before`.
    assert_eq!(lines(eval("t", "j4", 900, 0, 501, 3))[0], "1");
    assert_eq!(redis.cli(&["ZCARD", "t"]).unwrap(), "2");
    eval("u", "eve", 900, 10, 460, 3);
    assert_eq!(redis.cli(&["HEXISTS", "b", "bob"]).unwrap(), "0");
    assert_eq!(redis.cli(&["ZSCORE", "u", "bob"]).unwrap(), "");
    assert_eq!(redis.cli(&["HGET", "b", "eve"]).unwrap(), "10");
}
