//! JWT authentication over real sockets: tokens in the URL, the `Authorization` header and
//! the `auth` frame; refusals (4003), expiry (4004) and refresh; `auth.required`.

use std::time::Duration;

use futures_util::SinkExt as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use switchboard::{
    auth::unix_now as now,
    config::{AuthKeyConfig, Config, NamespaceConfig, Rule},
};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};

use crate::harness::{TestClient, TestServer, patience};

pub(crate) const SECRET: &str = "an-integration-secret-of-32-bytes!!";
const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");

pub(crate) fn hs256(sub: &str, exp: u64) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

pub(crate) fn with_hmac(config: &mut Config) {
    config.auth.keys = vec![AuthKeyConfig {
        algorithm: "HS256".to_owned(),
        secret: SECRET.to_owned(),
        ..AuthKeyConfig::default()
    }];
}

/// A node clustered through `redis` that verifies tokens signed with [`SECRET`].
pub(crate) async fn hmac_node(redis: &crate::redis_server::RedisServer) -> TestServer {
    TestServer::builder()
        .redis(&redis.url())
        .configure(with_hmac)
        .start()
        .await
}

pub(crate) async fn server(change: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::builder()
        .configure(|config| {
            with_hmac(config);
            change(config);
        })
        .start()
        .await
}

#[tokio::test]
async fn a_token_in_the_url_the_header_or_the_auth_frame_names_the_user() {
    let server = server(|_| {}).await;
    let token = hs256("alice", now() + 600);
    let by_url = TestClient::connect(&format!("{}?token={token}", server.ws_url())).await;
    assert_eq!(by_url.welcome["user"], "alice");

    let mut request = server.ws_url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut by_header = TestClient {
        ws,
        welcome: Value::Null,
    };
    by_header.welcome = by_header.recv().await;
    assert_eq!(by_header.welcome["user"], "alice");

    let mut by_frame = server.client().await;
    assert!(by_frame.welcome.get("user").is_none());
    by_frame
        .send(json!({"type": "auth", "id": 1, "token": token}))
        .await;
    let reply = by_frame.recv().await;
    assert_eq!(
        (
            reply["type"].as_str(),
            reply["id"].as_u64(),
            reply["user"].as_str()
        ),
        (Some("authenticated"), Some(1), Some("alice"))
    );
    assert!(server.metric("switchboard_auth_total{result=\"ok\"}").await >= 3.0);
    server.stop().await;
}

#[tokio::test]
async fn required_auth_refuses_other_frames_and_silence() {
    let server = server(|config| {
        config.auth.required = true;
        config.auth.timeout = Duration::from_millis(500);
    })
    .await;
    let mut eager = server.client().await;
    eager
        .send(json!({"type": "subscribe", "id": 3, "channel": "news"}))
        .await;
    let error = eager.recv().await;
    assert_eq!(
        (error["code"].as_str(), error["id"].as_u64()),
        (Some("unauthorized"), Some(3))
    );
    assert_eq!(eager.close_code().await, 4003);

    let mut silent = server.client().await;
    let started = tokio::time::Instant::now();
    assert_eq!(silent.close_code().await, 4003);
    assert!(started.elapsed() < patience(Duration::from_secs(3)));

    let mut good = server.client().await;
    good.send(json!({"type": "auth", "token": hs256("carol", now() + 600)}))
        .await;
    assert_eq!(good.recv().await["type"], "authenticated");
    good.subscribe("news").await;
    // Past the auth timeout, the authenticated connection stays.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    good.send(json!({"type": "ping", "id": 9})).await;
    assert_eq!(good.recv_type("pong").await["id"], 9);
    server.stop().await;
}

#[tokio::test]
async fn an_expired_token_closes_with_4004_unless_refreshed() {
    let server = server(|config| config.auth.leeway = Duration::ZERO).await;
    let mut lapsing = TestClient::connect(&format!(
        "{}?token={}",
        server.ws_url(),
        hs256("dave", now() + 2)
    ))
    .await;
    let mut refreshed = TestClient::connect(&format!(
        "{}?token={}",
        server.ws_url(),
        hs256("erin", now() + 2)
    ))
    .await;
    refreshed
        .send(json!({"type": "refresh", "id": 4, "token": hs256("erin", now() + 600)}))
        .await;
    let reply = refreshed.recv().await;
    assert_eq!(
        (reply["type"].as_str(), reply["id"].as_u64()),
        (Some("refreshed"), Some(4))
    );
    assert_eq!(lapsing.close_code().await, 4004);
    refreshed.send(json!({"type": "ping", "id": 5})).await;
    assert_eq!(refreshed.recv_type("pong").await["id"], 5);
    // A refresh for another user is refused.
    refreshed
        .send(json!({"type": "refresh", "id": 6, "token": hs256("mallory", now() + 600)}))
        .await;
    assert_eq!(refreshed.recv().await["code"], "unauthorized");
    assert_eq!(refreshed.close_code().await, 4003);
    server.stop().await;
}

pub(crate) fn hs256_claims(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// A refresh re-checks the connection's subscriptions against the new token: a channel its
/// claims no longer grant is unsubscribed (`unsubscribed` with a reason) and its messages
/// stop, the others keep flowing with the new `info` in presence, and what a backend
/// subscribed the connection to stays. Another connection keeps its full message rate.
#[tokio::test]
async fn a_refresh_drops_the_channels_the_new_token_no_longer_grants() {
    let server = server(|config| {
        let mut rooms = namespace("room:*", Rule::Claim, Rule::Claim, Rule::Claim);
        rooms.presence = Rule::Claim;
        config.namespaces = vec![
            rooms,
            namespace("*", Rule::Anonymous, Rule::None, Rule::Anonymous),
        ];
    })
    .await;
    let token = |channels: &[&str], name: &str| {
        hs256_claims(&json!({
            "sub": "alice", "exp": now() + 600, "channels": channels, "info": {"name": name}
        }))
    };
    let mut alice = TestClient::connect(&format!(
        "{}?token={}",
        server.ws_url(),
        token(&["room:7", "room:8"], "Ada")
    ))
    .await;
    let bob_token =
        hs256_claims(&json!({"sub": "bob", "exp": now() + 600, "channels": ["room:7"]}));
    let mut bob = TestClient::connect(&format!("{}?token={bob_token}", server.ws_url())).await;
    alice.subscribe("room:7").await;
    alice.subscribe("room:8").await;
    // A backend's subscription needs no claim, and a refresh does not take it back.
    let (status, body) = server
        .post(
            "/v1/subscribe",
            json!({"user": "alice", "channel": "room:9"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(alice.recv_type("subscribed").await["channel"], "room:9");

    crate::raw::with_bystander(&server, async {
        let refresh = json!({"type": "refresh", "id": 6, "token": token(&["room:8"], "Grace")});
        assert_eq!(outcome(&mut alice, refresh).await, "refreshed");
        assert_eq!(
            alice.recv().await,
            json!({"type": "unsubscribed", "channel": "room:7", "reason": "forbidden"})
        );
        // room:7's messages stop; room:8's and room:9's go on.
        for channel in ["room:7", "room:8", "room:9"] {
            server.publish(channel, json!(channel)).await;
        }
        alice.send(json!({"type": "ping", "id": 7})).await;
        let mut received = Vec::new();
        loop {
            let frame = alice.recv().await;
            match frame["type"].as_str() {
                Some("pong") => break,
                Some("message") => received.push(frame["channel"].as_str().unwrap().to_owned()),
                _ => panic!("unexpected {frame}"),
            }
        }
        received.sort();
        assert_eq!(received, ["room:8", "room:9"]);
        // Presence: gone from room:7, with the new token's `info` in room:8.
        let ask =
            |id: u64, channel: &str| json!({"type": "presence", "id": id, "channel": channel});
        bob.send(ask(1, "room:7")).await;
        let reply = bob.recv_type("presence").await;
        assert_eq!(reply["members"], json!([]), "{reply}");
        alice.send(ask(2, "room:8")).await;
        let reply = alice.recv_type("presence").await;
        assert_eq!(
            reply["members"][0]["info"],
            json!({"name": "Grace"}),
            "{reply}"
        );
        // As before, the history of a channel no longer granted is refused.
        let history = json!({"type": "history", "id": 3, "channel": "room:7"});
        assert_eq!(outcome(&mut alice, history).await, "forbidden");
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn public_key_algorithms_and_the_url_switch() {
    let server = TestServer::builder()
        .configure(|config| {
            config.auth.token_query = false;
            config.auth.keys = vec![AuthKeyConfig {
                kid: "ec-1".to_owned(),
                algorithm: "ES256".to_owned(),
                public_key_file: format!("{KEYS}/ec256.pub"),
                ..AuthKeyConfig::default()
            }];
        })
        .start()
        .await;
    let pem = std::fs::read(format!("{KEYS}/ec256.key")).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("ec-1".to_owned());
    let token = jsonwebtoken::encode(
        &header,
        &json!({"sub": "frank", "exp": now() + 600}),
        &EncodingKey::from_ec_pem(&pem).unwrap(),
    )
    .unwrap();
    // token_query = false: the URL's token is ignored, the frame's is taken.
    let mut client = TestClient::connect(&format!("{}?token={token}", server.ws_url())).await;
    assert!(client.welcome.get("user").is_none());
    client
        .ws
        .send(Message::Text(
            json!({"type": "auth", "id": 1, "token": token})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    assert_eq!(client.recv().await["user"], "frank");
    server.stop().await;
}

fn token_with(sub: &str, channels: &[&str], publish: &[&str]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "exp": now() + 600, "channels": channels, "publish": publish}),
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn namespace(pattern: &str, subscribe: Rule, publish: Rule, history: Rule) -> NamespaceConfig {
    NamespaceConfig {
        pattern: pattern.to_owned(),
        subscribe,
        publish,
        history,
        presence: Rule::None,
        join_leave: false,
        edit: switchboard::config::EditRule::Own,
        history_size: None,
        history_ttl: None,
        slow_consumer: switchboard::config::SlowConsumer::Disconnect,
        conflate_key: None,
        queue_bytes: None,
    }
}

/// The answer to a request: its `type` (`subscribed`, `published`, ...) or error `code`.
async fn outcome(client: &mut TestClient, request: Value) -> String {
    let id = request["id"].as_u64();
    client.send(request).await;
    loop {
        let reply = client.recv().await;
        if reply["id"].as_u64() == id {
            return match reply["type"].as_str() {
                Some("error") => reply["code"].as_str().unwrap().to_owned(),
                other => other.unwrap().to_owned(),
            };
        }
    }
}

/// The chat of docs/security.md: public rooms, private rooms by claim, an inbox per user.
#[tokio::test]
async fn namespaces_decide_who_may_subscribe_publish_and_resume() {
    let server = server(|config| {
        config.namespaces = vec![
            namespace(
                "public:*",
                Rule::Anonymous,
                Rule::Authenticated,
                Rule::Anonymous,
            ),
            namespace("room:*", Rule::Claim, Rule::Claim, Rule::Claim),
            namespace("user:{sub}", Rule::Owner, Rule::None, Rule::Owner),
            namespace("live:*", Rule::Anonymous, Rule::None, Rule::None),
        ];
    })
    .await;
    let connect = |token: Option<String>| {
        let url = match token {
            Some(token) => format!("{}?token={token}", server.ws_url()),
            None => server.ws_url(),
        };
        async move { TestClient::connect(&url).await }
    };
    let mut anonymous = connect(None).await;
    let mut alice = connect(Some(token_with("alice", &["room:7"], &["room:7"]))).await;
    let mut bob = connect(Some(token_with("bob", &["room:8"], &[]))).await;
    let sub = |id: u64, channel: &str| json!({"type": "subscribe", "id": id, "channel": channel});
    let publish = |id: u64, channel: &str| json!({"type": "publish", "id": id, "channel": channel, "data": id});

    assert_eq!(
        outcome(&mut anonymous, sub(1, "public:lobby")).await,
        "subscribed"
    );
    assert_eq!(
        outcome(&mut anonymous, publish(2, "public:lobby")).await,
        "forbidden"
    );
    assert_eq!(
        outcome(&mut alice, publish(3, "public:lobby")).await,
        "published"
    );
    assert_eq!(outcome(&mut alice, sub(4, "room:7")).await, "subscribed");
    assert_eq!(outcome(&mut bob, sub(5, "room:7")).await, "forbidden");
    assert_eq!(outcome(&mut bob, publish(6, "room:8")).await, "forbidden");
    assert_eq!(outcome(&mut anonymous, sub(7, "room:7")).await, "forbidden");
    assert_eq!(
        outcome(&mut alice, sub(8, "user:alice")).await,
        "subscribed"
    );
    assert_eq!(outcome(&mut bob, sub(9, "user:alice")).await, "forbidden");
    assert_eq!(
        outcome(&mut anonymous, sub(10, "user:alice")).await,
        "forbidden"
    );
    assert_eq!(
        outcome(&mut alice, publish(11, "user:alice")).await,
        "forbidden"
    );
    assert_eq!(outcome(&mut alice, sub(12, "nowhere")).await, "forbidden");
    // Resuming follows `history`: live:* may be followed, not replayed.
    let offset = server.publish("live:score", json!(1)).await;
    let resume = json!({"type": "subscribe", "id": 13, "channel": "live:score", "since": offset});
    assert_eq!(outcome(&mut anonymous, resume).await, "forbidden");
    assert_eq!(
        outcome(&mut anonymous, sub(14, "live:score")).await,
        "subscribed"
    );
    // Backends publish anywhere; the owner gets it.
    server.publish("user:alice", json!("for alice")).await;
    assert_eq!(alice.recv_type("message").await["data"], "for alice");
    assert!(
        server
            .metric("switchboard_forbidden_total{action=\"subscribe\"}")
            .await
            >= 5.0
    );
    assert!(
        server
            .metric("switchboard_forbidden_total{action=\"history\"}")
            .await
            >= 1.0
    );
    server.stop().await;
}

/// `{sub}` is the token's whole `sub`: a user whose `sub` holds a colon owns its inbox with
/// the documented order (`user:{sub}:*` first), and nobody else's channel falls through to
/// the catch-all after them.
#[tokio::test]
async fn a_sub_with_a_colon_owns_its_inbox() {
    let server = server(|config| {
        config.namespaces = vec![
            namespace("user:{sub}:*", Rule::Owner, Rule::Owner, Rule::Owner),
            namespace("user:{sub}", Rule::Owner, Rule::None, Rule::Owner),
            namespace("*", Rule::Anonymous, Rule::Anonymous, Rule::Anonymous),
        ];
    })
    .await;
    let connect = |sub: &str| {
        let url = format!("{}?token={}", server.ws_url(), token_with(sub, &[], &[]));
        async move { TestClient::connect(&url).await }
    };
    let mut colon = connect("a:b").await;
    let mut other = connect("c").await;
    let mut anonymous = server.client().await;
    let sub = |id: u64, channel: &str| json!({"type": "subscribe", "id": id, "channel": channel});
    let publish = |id: u64, channel: &str| json!({"type": "publish", "id": id, "channel": channel, "data": id});

    assert_eq!(outcome(&mut colon, sub(1, "user:a:b")).await, "subscribed");
    // The inbox's own rules: only backends write to it.
    assert_eq!(
        outcome(&mut colon, publish(2, "user:a:b")).await,
        "forbidden"
    );
    assert_eq!(
        outcome(&mut colon, sub(3, "user:a:b:drafts")).await,
        "subscribed"
    );
    assert_eq!(outcome(&mut colon, sub(4, "user:a")).await, "forbidden");
    // Someone else's inbox stays refused, although `*` would let anyone in.
    assert_eq!(outcome(&mut other, sub(5, "user:a:b")).await, "forbidden");
    assert_eq!(
        outcome(&mut anonymous, sub(6, "user:a:b")).await,
        "forbidden"
    );
    assert_eq!(outcome(&mut anonymous, sub(7, "news")).await, "subscribed");
    server.publish("user:a:b", json!("for a:b")).await;
    let message = colon.recv_type("message").await;
    assert_eq!(
        (message["channel"].as_str(), message["data"].as_str()),
        (Some("user:a:b"), Some("for a:b"))
    );
    server.stop().await;
}

#[tokio::test]
async fn the_default_namespace_lets_anyone_follow_and_only_backends_publish() {
    let server = server(|config| config.namespaces = Config::default().namespaces).await;
    let mut client = server.client().await;
    let sub = json!({"type": "subscribe", "id": 1, "channel": "news"});
    assert_eq!(outcome(&mut client, sub).await, "subscribed");
    let publish = json!({"type": "publish", "id": 2, "channel": "news", "data": 1});
    assert_eq!(outcome(&mut client, publish).await, "forbidden");
    server.publish("news", json!("from a backend")).await;
    assert_eq!(client.recv_type("message").await["data"], "from a backend");
    server.stop().await;
}

#[tokio::test]
async fn disconnect_by_user_closes_every_connection_of_that_user() {
    let server = server(|_| {}).await;
    let url = |user: &str| format!("{}?token={}", server.ws_url(), hs256(user, now() + 600));
    let mut first = TestClient::connect(&url("alice")).await;
    let mut second = TestClient::connect(&url("alice")).await;
    let mut other = TestClient::connect(&url("bob")).await;
    let (status, body) = server
        .post("/v1/disconnect", json!({"user": "alice"}))
        .await;
    assert_eq!(
        (status, body["disconnected_here"].as_u64()),
        (200, Some(2)),
        "{body}"
    );
    assert_eq!(first.close_code().await, 4000);
    assert_eq!(second.close_code().await, 4000);
    other.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(other.recv_type("pong").await["id"], 1);
    let (status, _) = server
        .post("/v1/disconnect", json!({"user": "alice", "conn_id": 1}))
        .await;
    assert_eq!(status, 422);
    // The request may name the close code; reserved and out-of-range codes are refused.
    let mut third = TestClient::connect(&url("alice")).await;
    for code in [1005, 1006, 1015, 2999, 5000, 0] {
        let (status, body) = server
            .post("/v1/disconnect", json!({"user": "alice", "code": code}))
            .await;
        assert_eq!(status, 422, "{code}: {body}");
    }
    let (status, _) = server
        .post("/v1/disconnect", json!({"user": "alice", "code": 4321}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(third.close_code().await, 4321);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_by_user_reaches_every_node_of_a_cluster() {
    let redis = crate::redis_server::RedisServer::start(false);
    let (a, b) = (hmac_node(&redis).await, hmac_node(&redis).await);
    let token = hs256("carol", now() + 600);
    let mut on_a = TestClient::connect(&format!("{}?token={token}", a.ws_url())).await;
    let mut on_b = TestClient::connect(&format!("{}?token={token}", b.ws_url())).await;
    let mut bystander = b.client().await;
    let (status, body) = a
        .post("/v1/disconnect", json!({"user": "carol", "code": 4003}))
        .await;
    assert_eq!(
        (status, body["disconnected_here"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    assert_eq!(on_a.close_code().await, 4003);
    assert_eq!(
        on_b.close_code().await,
        4003,
        "closed through the bus on the other node, with the requested code"
    );
    bystander.send(json!({"type": "ping", "id": 2})).await;
    assert_eq!(bystander.recv_type("pong").await["id"], 2);
    a.stop().await;
    b.stop().await;
}
