//! The application backend's hooks (docs/backend.md) against a real HTTP backend
//! (`backend.rs`): cookie sessions at connect, the `hook` namespace rules, enrichment by the
//! publish hook, `rpc`, refresh, and a backend that is slow, down, failing or hostile.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use switchboard::{
    auth::unix_now as now,
    config::{AuthKeyConfig, Config, EditRule, NamespaceConfig, Rule},
};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::{
    backend::{Backend, Reply, assert_signed},
    harness::{Closed, SteadyPublisher, TestClient, TestServer, expect_all_acknowledged},
};

const SECRET: &str = "hook-signing-secret";
const JWT_SECRET: &str = "jwt-secret-for-the-bystander-0123";

/// The platform's answers: the cookie `session=<user>` names a user (`nobody` is refused),
/// members of `room:1` only, publishes stamped with their author, and `echo` rpcs.
fn platform(path: &str, body: &Value) -> Reply {
    match path {
        "/connect" => {
            let cookie = body["headers"]["Cookie"].as_str().unwrap_or("");
            let user = cookie
                .split("; ")
                .find_map(|pair| pair.strip_prefix("session="))
                .unwrap_or("");
            match user {
                "" => Reply::Json(json!({"error":{"message":"log in first"}})),
                "banned" => Reply::Json(json!({"disconnect":{"code":4100,"reason":"banned"}})),
                user => Reply::Json(json!({"result":{
                    "user": user,
                    "info": {"name": user.to_uppercase()},
                    "subs": [format!("user:{user}")],
                    "expires_in": body["query"]["ttl"].as_str().and_then(|ttl| ttl.parse::<u64>().ok()),
                }})),
            }
        }
        "/subscribe" => {
            if body["channel"] == "room:1" {
                Reply::Json(json!({"result":{}}))
            } else {
                Reply::Json(json!({"error":{"message":"not a member of this room"}}))
            }
        }
        "/publish" => {
            if body["data"]["text"] == "spam" {
                return Reply::Json(json!({"error":{"message":"moderated"}}));
            }
            Reply::Json(json!({"result":{"data":{
                "text": body["data"]["text"],
                "by": body["user"],
            }}}))
        }
        "/rpc" => {
            Reply::Json(json!({"result":{"data":{"method": body["method"], "echo": body["data"]}}}))
        }
        "/refresh" => Reply::Json(json!({"result":{"expires_in": 2}})),
        _ => Reply::Status(404),
    }
}

fn hooked(config: &mut Config, backend: &Backend) {
    config.hooks.connect_url = backend.url("/connect");
    config.hooks.refresh_url = backend.url("/refresh");
    config.hooks.subscribe_url = backend.url("/subscribe");
    config.hooks.publish_url = backend.url("/publish");
    config.hooks.rpc_url = backend.url("/rpc");
    config.hooks.secret = SECRET.to_owned();
    config.hooks.forward_headers = vec!["Cookie".to_owned(), "User-Agent".to_owned()];
    config
        .hooks
        .headers
        .insert("Authorization".to_owned(), "Bearer backend-key".to_owned());
    config.auth.keys = vec![AuthKeyConfig {
        algorithm: "HS256".to_owned(),
        secret: JWT_SECRET.to_owned(),
        ..AuthKeyConfig::default()
    }];
    let namespace = |pattern: &str, rule| NamespaceConfig {
        pattern: pattern.to_owned(),
        subscribe: rule,
        publish: rule,
        history: rule,
        presence: Rule::None,
        join_leave: false,
        edit: EditRule::Own,
        history_size: None,
        history_ttl: None,
        slow_consumer: switchboard::config::SlowConsumer::Disconnect,
        conflate_key: None,
        queue_bytes: None,
    };
    config.namespaces = vec![
        namespace("room:*", Rule::Hook),
        NamespaceConfig {
            publish: Rule::None,
            ..namespace("user:{sub}", Rule::Owner)
        },
        NamespaceConfig {
            publish: Rule::None,
            ..namespace("*", Rule::Anonymous)
        },
    ];
}

async fn connect(server: &TestServer, query: &str, cookie: Option<&str>) -> TestClient {
    let mut request = format!("{}{query}", server.ws_url())
        .into_client_request()
        .unwrap();
    if let Some(cookie) = cookie {
        request
            .headers_mut()
            .insert("cookie", cookie.parse().unwrap());
    }
    request
        .headers_mut()
        .insert("user-agent", "hook-test/1".parse().unwrap());
    TestClient::connect_request(request).await
}

fn verify(seen: &crate::backend::Seen) {
    assert_signed(seen, SECRET);
}

/// A browser's cookie session: the connect hook names the user from the forwarded cookie
/// (signed request, static headers, the query, the address), the `subs` it returns are
/// subscribed, the `hook` rule asks per room, the publish hook stamps the author on what
/// subscribers get, `rpc` is answered, and refusals carry the backend's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_session_is_decided_and_served_by_the_backend() {
    let backend = Backend::start(platform).await;
    let server = TestServer::builder()
        .configure(|config| {
            hooked(config, &backend);
            config.limits.max_publish_payload_bytes = 1024;
        })
        .start()
        .await;
    let mut alice = connect(&server, "?room=1", Some("theme=dark; session=alice")).await;
    assert_eq!(alice.welcome["user"], "alice", "{}", alice.welcome);
    let subscribed = alice.recv().await;
    assert_eq!(
        (subscribed["type"].as_str(), subscribed["channel"].as_str()),
        (Some("subscribed"), Some("user:alice"))
    );
    let asked = &backend.seen("/connect")[0];
    verify(asked);
    assert_eq!(asked.headers["authorization"], "Bearer backend-key");
    assert_eq!(asked.body["headers"]["Cookie"], "theme=dark; session=alice");
    assert_eq!(asked.body["headers"]["User-Agent"], "hook-test/1");
    assert_eq!(asked.body["query"]["room"], "1");
    assert_eq!(asked.body["remote_addr"], "127.0.0.1");
    assert_eq!(asked.body["conn_id"], alice.conn_id());
    assert!(asked.body.get("token").is_none());

    // The room rule asks the backend.
    alice.subscribe("room:1").await;
    alice
        .send(json!({"type":"subscribe","id":2,"channel":"room:2"}))
        .await;
    let refused = alice.recv().await;
    assert_eq!(
        (refused["code"].as_str(), refused["message"].as_str()),
        (Some("forbidden"), Some("not a member of this room")),
        "{refused}"
    );
    let asked = backend.seen("/subscribe");
    assert_eq!(asked[0].body["user"], "alice");
    assert_eq!(asked[0].body["action"], "subscribe");

    // Enriched by the publish hook: what subscribers get is the backend's data.
    let mut bob = connect(&server, "", Some("session=bob")).await;
    bob.recv_type("subscribed").await;
    bob.subscribe("room:1").await;
    alice
        .send(
            json!({"type":"publish","id":3,"channel":"room:1","data":{"text":"hi","by":"forged"}}),
        )
        .await;
    assert_eq!(alice.recv_type("published").await["id"], 3);
    let message = bob.recv_type("message").await;
    assert_eq!(message["data"], json!({"text":"hi","by":"alice"}));
    alice
        .send(json!({"type":"publish","id":4,"channel":"room:1","data":{"text":"spam"}}))
        .await;
    let moderated = alice.recv_type("error").await;
    assert_eq!(moderated["message"], "moderated");
    assert!(
        bob.try_recv_within(Duration::from_millis(300))
            .await
            .is_none()
    );

    // What the node refuses itself never reaches the backend: a publish too large.
    let asked = backend.seen("/publish").len();
    let large = "x".repeat(2048);
    alice
        .send(json!({"type":"publish","id":6,"channel":"room:1","data":{"text": large}}))
        .await;
    assert_eq!(alice.recv_type("error").await["code"], "limit_exceeded");
    assert_eq!(backend.seen("/publish").len(), asked, "not asked");

    // rpc over the socket the client holds.
    alice
        .send(json!({"type":"rpc","id":5,"method":"profile","data":{"x":1}}))
        .await;
    let answer = alice.recv_type("rpc_result").await;
    assert_eq!(answer["id"], 5);
    assert_eq!(answer["data"], json!({"method":"profile","echo":{"x":1}}));
    for seen in backend.seen("/rpc").iter().chain(&backend.seen("/publish")) {
        verify(seen);
    }

    // No cookie: refused with the backend's message, 4003; a banned user: its code.
    let mut stranger = connect(&server, "", None).await;
    let error = stranger.recv().await;
    assert_eq!(
        (error["code"].as_str(), error["message"].as_str()),
        (Some("unauthorized"), Some("log in first"))
    );
    assert_eq!(stranger.close_code().await, 4003);
    let mut banned = connect(&server, "", Some("session=banned")).await;
    assert_eq!(banned.recv().await["message"], "banned");
    assert_eq!(banned.close_code().await, 4100);
    server.stop().await;
}

/// An identity with `expires_in` is renewed by the refresh hook before it expires (the
/// client gets `refreshed`); when the backend refuses, the connection closes with 4004.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_hook_renews_an_identity_or_ends_it_with_4004() {
    let backend = Backend::start(platform).await;
    let server = TestServer::builder()
        .configure(|config| hooked(config, &backend))
        .start()
        .await;
    let mut alice = connect(&server, "?ttl=2", Some("session=alice")).await;
    let refreshed = alice.recv_type("refreshed").await;
    assert_eq!(refreshed["user"], "alice");
    assert!(refreshed["exp"].as_u64().unwrap() > now());
    assert_eq!(backend.seen("/refresh")[0].body["user"], "alice");
    // Renewed again, then refused.
    alice.recv_type("refreshed").await;
    backend.answer(|path, body| match path {
        "/refresh" => Reply::Json(json!({"error":{"message":"session revoked"}})),
        _ => platform(path, body),
    });
    assert_eq!(alice.recv_type("error").await["message"], "session revoked");
    assert_eq!(alice.close_code().await, 4004);
    server.stop().await;
}

/// A backend that is slow (past `hooks.timeout`), down, answers 500, garbage or a huge
/// body: the client is told to come back later (a `reconnect` frame, close 1013), nothing
/// hangs, and a bystander with a JWT (no hook asked) keeps every message at its rate; after
/// consecutive failures the breaker answers at once without asking, and a probe closes it
/// once the backend is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_gets_clients_told_to_retry_and_spares_everyone_else() {
    let backend = Backend::start(platform).await;
    let server = TestServer::builder()
        .configure(|config| {
            hooked(config, &backend);
            config.hooks.timeout = Duration::from_millis(300);
            config.hooks.breaker_failures = 4;
            config.hooks.breaker_cooldown = Duration::from_millis(1500);
            config.hooks.max_response_bytes = 4096;
        })
        .start()
        .await;
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub":"bystander","exp": now() + 600}),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    let mut bystander = connect(&server, &format!("?token={token}"), None).await;
    assert_eq!(bystander.welcome["user"], "bystander");
    bystander.subscribe("news").await;
    let publisher = SteadyPublisher::start(&server, "news");
    fn fault(name: &str) -> Reply {
        match name {
            "slow" => Reply::Slow(Duration::from_secs(5), json!({"result":{"user":"x"}})),
            "500" => Reply::Status(500),
            "garbage" => Reply::Raw(b"<html>oops".to_vec()),
            _ => Reply::Raw(vec![b' '; 1 << 20]),
        }
    }
    // A 4xx is about the request, not the backend: its client is answered `unavailable`,
    // but six in a row leave the breaker closed.
    backend.answer(|_, _| Reply::Status(400));
    for _ in 0..6 {
        let mut client = connect(&server, "", Some("session=carol")).await;
        client.recv_type("reconnect").await;
        assert_eq!(client.close_code().await, 1013);
    }
    assert_eq!(
        server
            .metric("switchboard_hook_breaker_open{hook=\"connect\"}")
            .await,
        0.0
    );
    for name in ["slow", "500", "garbage", "huge"] {
        backend.answer(move |_, _| fault(name));
        let started = tokio::time::Instant::now();
        let mut client = connect(&server, "", Some("session=carol")).await;
        let advice = client.recv().await;
        assert_eq!(advice["type"], "reconnect", "{name}: {advice}");
        let after = advice["after_ms"].as_u64().unwrap();
        assert!((1000..5000).contains(&after), "{name}: {advice}");
        assert_eq!(client.recv().await["code"], "unavailable", "{name}");
        assert_eq!(client.close_code().await, 1013, "{name}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{name}: nothing hangs"
        );
    }
    // Four failures in a row: the breaker is open, clients are answered without a request.
    let asked = backend.seen("/connect").len();
    let mut client = connect(&server, "", Some("session=carol")).await;
    client.recv_type("reconnect").await;
    assert!(
        client.recv().await["message"]
            .as_str()
            .unwrap()
            .contains("failing"),
    );
    assert_eq!(
        backend.seen("/connect").len(),
        asked,
        "not asked while open"
    );
    assert_eq!(
        server
            .metric("switchboard_hook_breaker_open{hook=\"connect\"}")
            .await,
        1.0
    );
    // The backend is back: after the cooldown one probe closes the breaker.
    backend.answer(platform);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let carol = connect(&server, "", Some("session=carol")).await;
    assert_eq!(carol.welcome["user"], "carol");
    assert_eq!(
        server
            .metric("switchboard_hook_breaker_open{hook=\"connect\"}")
            .await,
        0.0
    );
    assert!(
        server
            .metric("switchboard_hook_requests_total{hook=\"connect\",outcome=\"timeout\"}")
            .await
            >= 1.0
    );
    assert!(
        server
            .metric("switchboard_hook_requests_total{hook=\"connect\",outcome=\"error\"}")
            .await
            >= 3.0
    );
    assert!(
        server
            .metric("switchboard_hook_requests_total{hook=\"connect\",outcome=\"busy\"}")
            .await
            >= 1.0
    );

    // Down: connection refused.
    drop(backend);
    let mut client = connect(&server, "", Some("session=dave")).await;
    client.recv_type("reconnect").await;
    assert_eq!(client.close_code().await, 1013);

    let (acked, refused, _) = publisher.finish().await;
    assert_eq!(refused, 0);
    expect_all_acknowledged(&mut bystander, &acked).await;
    server.stop().await;
}

/// A reconnect storm against a connect hook answering in 20 ms: the backend never has more
/// than `hooks.max_in_flight` requests at once, every client within the queue bound is
/// connected, and those beyond it are told at once to come back later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_is_a_bounded_queue_not_a_request_storm() {
    let backend = Backend::start(|path, body| match path {
        "/connect" => Reply::Slow(
            Duration::from_millis(20),
            json!({"result":{"user": body["query"]["n"]}}),
        ),
        _ => platform(path, body),
    })
    .await;
    let server = TestServer::builder()
        .configure(|config| {
            hooked(config, &backend);
            config.hooks.max_in_flight = 8;
            config.hooks.max_queued = 400;
        })
        .start()
        .await;
    let started = tokio::time::Instant::now();
    let clients: Vec<_> = (0..400)
        .map(|n| {
            let url = format!("{}?n={n}", server.ws_url());
            tokio::spawn(async move { TestClient::connect_request(url).await })
        })
        .collect();
    let mut users = Vec::new();
    for client in clients {
        let client = client.await.unwrap();
        users.push(client.welcome["user"].as_str().unwrap().to_owned());
    }
    let took = started.elapsed();
    assert_eq!(users.len(), 400, "every client connected");
    assert!(
        backend.most_at_once() <= 8,
        "{} at once",
        backend.most_at_once()
    );
    // 400 requests of 20 ms, 8 at a time: 1 s, and some room for a busy machine.
    assert!(took < Duration::from_secs(6), "{took:?}");
    assert_eq!(backend.in_flight(), 0);

    // A queue bound of 10: a burst beyond it is told at once, the rest connect.
    drop(users);
    server.stop().await;
    let server = TestServer::builder()
        .configure(|config| {
            hooked(config, &backend);
            config.hooks.max_in_flight = 2;
            config.hooks.max_queued = 10;
        })
        .start()
        .await;
    let clients: Vec<_> = (0..60)
        .map(|n| {
            let url = format!("{}?n={n}", server.ws_url());
            tokio::spawn(async move {
                let mut client = TestClient::connect_request(url).await;
                if client.welcome["user"].is_string() {
                    return true;
                }
                assert_eq!(client.recv().await["type"], "reconnect");
                client.recv().await;
                assert_eq!(
                    client.closed().await,
                    Closed::Code(1013, "try again later".into())
                );
                false
            })
        })
        .collect();
    let mut connected = 0;
    for client in clients {
        connected += usize::from(client.await.unwrap());
    }
    assert!((12..60).contains(&connected), "{connected} connected");
    assert!(
        server
            .metric("switchboard_hook_requests_total{hook=\"connect\",outcome=\"busy\"}")
            .await
            >= 1.0
    );
    server.stop().await;
}

/// `hooks.connect_cache`: a reconnect storm of the same 100 sessions asks the backend
/// once per session, and each gets its own identity back from the cache; a refusal is not
/// cached (a user who logs in after being refused is let in at once), nor is anything for a
/// session the backend has not seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_the_same_sessions_is_answered_from_the_connect_cache() {
    let backend = Backend::start(platform).await;
    let server = TestServer::builder()
        .configure(|config| {
            hooked(config, &backend);
            config.hooks.connect_cache = Duration::from_secs(30);
        })
        .start()
        .await;
    let storm = |server_url: String| async move {
        let clients: Vec<_> = (0..100)
            .map(|n| {
                let url = server_url.clone();
                tokio::spawn(async move {
                    let mut request = url.into_client_request().unwrap();
                    request
                        .headers_mut()
                        .insert("cookie", format!("session=u{n}").parse().unwrap());
                    let client = TestClient::connect_request(request).await;
                    (n, client.welcome["user"].as_str().unwrap().to_owned())
                })
            })
            .collect();
        for client in clients {
            let (n, user) = client.await.unwrap();
            assert_eq!(user, format!("u{n}"), "each session its own identity");
        }
    };
    storm(server.ws_url()).await;
    assert_eq!(backend.seen("/connect").len(), 100);
    storm(server.ws_url()).await;
    assert_eq!(
        backend.seen("/connect").len(),
        100,
        "the second storm was answered from the cache"
    );
    assert!(
        server
            .metric("switchboard_hook_requests_total{hook=\"connect\",outcome=\"cached\"}")
            .await
            >= 100.0
    );

    // Refused, then logged in: asked each time.
    for cookie in [None, Some("session=late")] {
        drop(connect(&server, "", cookie).await);
    }
    assert_eq!(backend.seen("/connect").len(), 102);
    let mut late = connect(&server, "", Some("session=late")).await;
    assert_eq!(late.welcome["user"], "late");
    late.send(json!({"type":"ping"})).await;
    assert_eq!(
        backend.seen("/connect").len(),
        102,
        "cached after the allow"
    );
    server.stop().await;
}

/// A real browser logs in with an HttpOnly session cookie (its script cannot read it) and
/// opens a WebSocket with no token: the connect hook names the user from the cookie, the
/// room hook lets it in, and its publish reaches it enriched; logged out, the next
/// connection is refused with the backend's message and 4003.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_logs_in_with_a_session_cookie_and_no_token() {
    let backend = Backend::start(platform).await;
    let page_port = crate::harness::free_port();
    let server = TestServer::builder()
        .configure(|config| {
            hooked(config, &backend);
            config.server.allowed_origins = vec![format!("http://127.0.0.1:{page_port}")];
        })
        .start()
        .await;
    let ws_url = server.ws_url();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser"))
            .arg("cookie.mjs")
            .arg(ws_url)
            .arg(page_port.to_string())
            .arg("grace")
            .output()
            .expect("node runs (tests/run.sh installs nodejs and playwright-core)")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "cookie.mjs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(&output.stdout).expect("cookie.mjs prints JSON");
    assert_eq!(seen["readable"], "", "an HttpOnly cookie: {seen}");
    let frames = seen["loggedIn"]["frames"].as_array().unwrap();
    assert_eq!(seen["loggedIn"]["outcome"], "done", "{seen}");
    assert_eq!(frames[0]["user"], "grace", "{seen}");
    let message = frames
        .iter()
        .find(|frame| frame["type"] == "message")
        .unwrap();
    assert_eq!(
        message["data"],
        json!({"text":"hi from chromium","by":"grace"})
    );
    let asked = &backend.seen("/connect")[0];
    assert_eq!(asked.body["headers"]["Cookie"], "session=grace");
    assert!(
        asked.body["headers"]["User-Agent"]
            .as_str()
            .unwrap()
            .contains("Chrome")
    );
    let out = &seen["loggedOut"];
    assert_eq!(
        (out["outcome"].as_str(), out["code"].as_u64()),
        (Some("closed"), Some(4003)),
        "{seen}"
    );
    assert_eq!(out["frames"][1]["message"], "log in first", "{seen}");
    server.stop().await;
}

/// A client cannot hold more than `hooks.max_rpc_in_flight_per_connection` rpcs in flight:
/// the next is refused at once (`limit_exceeded`) while the session reads on (a ping is
/// answered meanwhile), and the slots come back once the answers have come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpcs_in_flight_are_capped_per_connection_and_the_session_reads_on() {
    let backend = Backend::start(|path, body| match path {
        "/rpc" => Reply::Slow(
            Duration::from_millis(800),
            json!({"result":{"data": body["data"]}}),
        ),
        _ => platform(path, body),
    })
    .await;
    let server = TestServer::builder()
        .configure(|config| {
            hooked(config, &backend);
            config.hooks.max_rpc_in_flight_per_connection = 2;
        })
        .start()
        .await;
    let mut alice = connect(&server, "", Some("session=alice")).await;
    alice.recv_type("subscribed").await;
    for n in 1..=3 {
        alice
            .send(json!({"type":"rpc","id":n,"method":"slow","data":n}))
            .await;
    }
    let refused = alice.recv().await;
    assert_eq!(
        (refused["id"].as_u64(), refused["code"].as_str()),
        (Some(3), Some("limit_exceeded")),
        "{refused}"
    );
    alice.send(json!({"type":"ping","id":9})).await;
    assert_eq!(alice.recv().await["type"], "pong", "the session reads on");
    let mut answered: Vec<u64> = Vec::new();
    for _ in 0..2 {
        let answer = alice.recv_type("rpc_result").await;
        answered.push(answer["id"].as_u64().unwrap());
        assert_eq!(answer["data"], answer["id"]);
    }
    answered.sort_unstable();
    assert_eq!(answered, [1, 2]);
    alice
        .send(json!({"type":"rpc","id":4,"method":"slow","data":4}))
        .await;
    assert_eq!(
        alice.recv_type("rpc_result").await["id"],
        4,
        "the slots came back"
    );
    server.stop().await;
}

/// `hooks.http2`: the hooks speak HTTP/2 without TLS (h2c) to a backend that speaks only
/// that, many requests over one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_speak_h2c_to_a_backend_that_speaks_only_that() {
    let backend = Backend::start_h2c(platform).await;
    let server = TestServer::builder()
        .configure(|config| {
            hooked(config, &backend);
            config.hooks.http2 = true;
        })
        .start()
        .await;
    for user in ["ada", "grace", "alan"] {
        let client = connect(&server, "", Some(&format!("session={user}"))).await;
        assert_eq!(client.welcome["user"], user, "{}", client.welcome);
    }
    let asked = backend.seen("/connect");
    assert_eq!(asked.len(), 3);
    for seen in &asked {
        verify(seen);
    }
    server.stop().await;
}
