//! Presence, join/leave and server-side subscriptions over real sockets (one node, and two
//! nodes through a real `redis-server`).

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use switchboard::{
    auth::unix_now as now,
    config::{AuthKeyConfig, Config, NamespaceConfig, Rule},
};

use crate::{
    harness::{BinaryNode, TestClient, TestServer, TestServerBuilder, patience},
    redis_server::{RedisCluster, RedisServer},
};

const SECRET: &str = "a-presence-test-secret-of-32-bytes!";

pub(crate) fn token(sub: &str, claims: Value) -> String {
    let mut body = json!({"sub": sub, "exp": now() + 600});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), claims.as_object()) {
        body.extend(extra.clone());
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &body,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// Rooms by claim with presence and join/leave; personal channels by owner; everything
/// else open, without presence.
pub(crate) fn chat(config: &mut Config) {
    config.auth.keys = vec![AuthKeyConfig {
        algorithm: "HS256".to_owned(),
        secret: SECRET.to_owned(),
        ..AuthKeyConfig::default()
    }];
    config.presence.coalesce = Duration::from_millis(300);
    let namespace = |pattern: &str, subscribe, presence, join_leave| NamespaceConfig {
        pattern: pattern.to_owned(),
        subscribe,
        publish: Rule::None,
        history: Rule::None,
        presence,
        join_leave,
        edit: switchboard::config::EditRule::Own,
        history_size: None,
        history_ttl: None,
        slow_consumer: switchboard::config::SlowConsumer::Disconnect,
        conflate_key: None,
        queue_bytes: None,
    };
    config.namespaces = vec![
        namespace("room:*", Rule::Claim, Rule::Claim, true),
        namespace("user:{sub}:*", Rule::Owner, Rule::None, false),
        namespace("user:{sub}", Rule::Owner, Rule::None, false),
        namespace("*", Rule::Anonymous, Rule::None, false),
    ];
}

pub(crate) fn builder() -> TestServerBuilder {
    TestServer::builder().configure(chat)
}

pub(crate) async fn member(server: &TestServer, user: &str, info: &str) -> TestClient {
    let token = token(
        user,
        json!({"channels": ["room:*"], "info": {"name": info}}),
    );
    TestClient::connect(&format!("{}?token={token}", server.ws_url())).await
}

/// The answer to a request by its id: skips join/leave frames and messages.
pub(crate) async fn answer(client: &mut TestClient, request: Value) -> Value {
    let id = request["id"].clone();
    client.send(request).await;
    loop {
        let frame = client.recv().await;
        if frame["id"] == id {
            return frame;
        }
    }
}

fn users(members: &Value) -> Vec<String> {
    let mut users: Vec<String> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|member| member["user"].as_str().unwrap().to_owned())
        .collect();
    users.sort();
    users
}

#[tokio::test]
async fn members_are_listed_and_counted_to_whom_the_namespace_allows() {
    let server = builder().start().await;
    let mut alice = member(&server, "alice", "Ada").await;
    let mut bob_phone = member(&server, "bob", "Bob").await;
    let mut bob_laptop = member(&server, "bob", "Bob").await;
    for client in [&mut alice, &mut bob_phone, &mut bob_laptop] {
        client.subscribe("room:1").await;
    }
    let reply = answer(
        &mut alice,
        json!({"type": "presence", "id": 8, "channel": "room:1"}),
    )
    .await;
    assert_eq!(reply["type"], "presence", "{reply}");
    assert_eq!(reply["truncated"], false);
    assert_eq!(users(&reply["members"]), ["alice", "bob", "bob"]);
    let ada = reply["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|member| member["user"] == "alice")
        .unwrap();
    assert_eq!(ada["info"]["name"], "Ada");
    assert_eq!(ada["conn_id"], alice.conn_id());
    assert_eq!(ada["node"], alice.welcome["node"]);
    let stats = answer(
        &mut bob_phone,
        json!({"type": "presence_stats", "id": 9, "channel": "room:1"}),
    )
    .await;
    assert_eq!(
        (stats["connections"].as_u64(), stats["users"].as_u64()),
        (Some(3), Some(2))
    );

    // Refused: no token, a room not claimed, a namespace without presence.
    let mut anonymous = server.client().await;
    let refused = answer(
        &mut anonymous,
        json!({"type": "presence", "id": 1, "channel": "room:1"}),
    )
    .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let carol = token("carol", json!({"channels": ["room:2"]}));
    let mut carol = TestClient::connect(&format!("{}?token={carol}", server.ws_url())).await;
    let refused = answer(
        &mut carol,
        json!({"type": "presence_stats", "id": 2, "channel": "room:1"}),
    )
    .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let refused = answer(
        &mut alice,
        json!({"type": "presence", "id": 3, "channel": "lobby"}),
    )
    .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    assert!(
        server
            .metric("switchboard_forbidden_total{action=\"presence\"}")
            .await
            >= 3.0
    );

    // The control API: pages, counts, and the channel list.
    let (status, page) = server
        .get_json("/v1/channels/room%3A1/presence?limit=2")
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["members"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let (_, rest) = server
        .get_json(&format!(
            "/v1/channels/room:1/presence?cursor={}&limit=2",
            cursor.replace(' ', "%20")
        ))
        .await;
    assert_eq!(rest["members"].as_array().unwrap().len(), 1);
    assert!(rest["next_cursor"].is_null());
    let (_, stats) = server.get_json("/v1/channels/room:1/presence-stats").await;
    assert_eq!(
        (stats["connections"].as_u64(), stats["users"].as_u64()),
        (Some(3), Some(2))
    );
    let (status, bad) = server
        .get_json("/v1/channels/room:1/presence?limit=0")
        .await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    anonymous.subscribe("lobby").await;
    let (_, list) = server.get_json("/v1/channels?prefix=room%3A").await;
    assert_eq!(
        list["channels"],
        json!([{"channel": "room:1", "subscribers": 3}])
    );
    let (_, all) = server.get_json("/v1/channels?limit=1").await;
    assert_eq!(
        all["channels"],
        json!([{"channel": "lobby", "subscribers": 1}])
    );
    assert_eq!(all["next_cursor"], "lobby");

    // Leaving: an unsubscribe and a closed connection.
    answer(
        &mut bob_phone,
        json!({"type": "unsubscribe", "id": 4, "channel": "room:1"}),
    )
    .await;
    drop(bob_laptop);
    crate::assert_eventually!(
        server
            .get_json("/v1/channels/room:1/presence-stats")
            .await
            .1["connections"]
            == 1,
        "members gone"
    );
    server.stop().await;
}

#[tokio::test]
async fn join_and_leave_keep_their_place_among_messages() {
    let server = builder().start().await;
    let mut alice = member(&server, "alice", "Ada").await;
    alice.subscribe("room:1").await;
    // Alice's own join (the room was quiet).
    let own = alice.recv().await;
    assert_eq!(
        (own["type"].as_str(), own["user"].as_str()),
        (Some("join"), Some("alice"))
    );
    // Each event a coalescing interval (300 ms) after the last, so each leaves at once,
    // between the messages published before and after it.
    let quiet = || tokio::time::sleep(Duration::from_millis(400));
    quiet().await;
    server.publish("room:1", json!({"n": 1})).await;
    let mut bob = member(&server, "bob", "Bob").await;
    bob.subscribe("room:1").await;
    server.publish("room:1", json!({"n": 2})).await;
    quiet().await;
    drop(bob);
    quiet().await;
    server.publish("room:1", json!({"n": 3})).await;
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let frame = alice.recv().await;
        seen.push(match frame["type"].as_str().unwrap() {
            "message" => format!("m{}", frame["data"]["n"]),
            "join" | "leave" => format!(
                "{} {}",
                frame["type"].as_str().unwrap(),
                frame["user"]
                    .as_str()
                    .or(frame["members"][0]["user"].as_str())
                    .unwrap()
            ),
            other => panic!("unexpected {other}: {frame}"),
        });
    }
    assert_eq!(seen, ["m1", "join bob", "m2", "leave bob", "m3"]);
    server.stop().await;
}

/// A burst of joins (a mass reconnect) reaches a subscriber in a few frames, not one per
/// member, and a bystander on another channel keeps its full message rate meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_joins_and_leaves_is_coalesced() {
    const MEMBERS: usize = 60;
    let server = builder().start().await;
    let mut observer = member(&server, "observer", "O").await;
    observer.subscribe("room:big").await;
    assert_eq!(observer.recv().await["type"], "join");
    let mut bystander = server.client().await;
    bystander.subscribe("news").await;

    let mut members = Vec::new();
    for index in 0..MEMBERS {
        let mut client = member(&server, &format!("u{index}"), "x").await;
        client.subscribe("room:big").await;
        members.push(client);
        server.publish("news", json!({"n": index})).await;
    }
    // Every join reaches the observer before anyone leaves (a member that came and went
    // within one interval would be in neither list).
    let mut frames = 0;
    let mut count = |frame: &Value, kind: &str| {
        assert_eq!(frame["type"], kind, "{frame}");
        frames += 1;
        frame["members"].as_array().map_or(1, Vec::len)
    };
    let mut joined = 0;
    while joined < MEMBERS {
        joined += count(&observer.recv().await, "join");
    }
    drop(members);
    for index in MEMBERS..MEMBERS + 10 {
        server.publish("news", json!({"n": index})).await;
    }
    let mut left = 0;
    while left < MEMBERS {
        left += count(&observer.recv().await, "leave");
    }
    assert_eq!((joined, left), (MEMBERS, MEMBERS));
    assert!(
        frames <= 12,
        "{frames} frames for {MEMBERS} joins and leaves"
    );
    for expected in 0..MEMBERS + 10 {
        let message = bystander.recv_type("message").await;
        assert_eq!(message["data"]["n"], expected);
    }
    server.stop().await;
}

#[tokio::test]
async fn a_tokens_subs_claim_subscribes_the_connection_itself() {
    let server = builder().start().await;
    let claims = json!({"subs": ["user:alice", "user:alice:inbox", "user:bob", "news"]});
    let token = token("alice", claims);
    let mut alice = TestClient::connect(&format!("{}?token={token}", server.ws_url())).await;
    assert_eq!(
        alice.welcome["subs"],
        json!(["user:alice", "user:alice:inbox", "user:bob", "news"])
    );
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        let frame = alice.recv().await;
        assert!(frame.get("id").is_none(), "{frame}");
        outcomes.push(match frame["type"].as_str().unwrap() {
            "subscribed" => frame["channel"].as_str().unwrap().to_owned(),
            _ => format!("{} {}", frame["type"], frame["code"]),
        });
    }
    // Bob's personal channel is not Alice's to read.
    assert_eq!(
        outcomes,
        [
            "user:alice",
            "user:alice:inbox",
            "\"error\" \"forbidden\"",
            "news"
        ]
    );
    server
        .publish("user:alice", json!({"hello": "alice"}))
        .await;
    assert_eq!(alice.recv_type("message").await["data"]["hello"], "alice");

    // The same claim through the `auth` frame: after `authenticated`.
    let mut later = server.client().await;
    later
        .send(json!({"type": "auth", "id": 1, "token": token}))
        .await;
    assert_eq!(later.recv().await["type"], "authenticated");
    assert_eq!(later.recv().await["channel"], "user:alice");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_subscribes_every_device_of_a_user_on_every_node() {
    let redis = RedisServer::start(false);
    let a = builder().redis(&redis.url()).start().await;
    let b = builder().redis(&redis.url()).start().await;
    let alice_token = token("alice", json!({}));
    let mut phone = TestClient::connect(&format!("{}?token={alice_token}", a.ws_url())).await;
    let mut laptop = TestClient::connect(&format!("{}?token={alice_token}", b.ws_url())).await;
    let mut bob = member(&b, "bob", "Bob").await;

    let (status, reply) = a
        .post(
            "/v1/subscribe",
            json!({"user": "alice", "channel": "user:alice:inbox"}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["connections_here"], 1);
    for device in [&mut phone, &mut laptop] {
        let subscribed = device.recv_type("subscribed").await;
        assert_eq!(subscribed["channel"], "user:alice:inbox");
    }
    a.publish("user:alice:inbox", json!({"text": "hi"})).await;
    for device in [&mut phone, &mut laptop] {
        assert_eq!(device.recv_type("message").await["data"]["text"], "hi");
    }
    // Join/leave across nodes: bob's join on b reaches alice's phone on a.
    a.post(
        "/v1/subscribe",
        json!({"user": "alice", "channel": "room:9"}),
    )
    .await;
    phone.recv_type("subscribed").await;
    bob.subscribe("room:9").await;
    // Alice's own join first, then bob's (in one frame or two).
    loop {
        let join = phone.recv_type("join").await;
        let joined = join["user"]
            .as_str()
            .map_or_else(|| users(&join["members"]), |user| vec![user.to_owned()]);
        if joined.contains(&"bob".to_owned()) {
            break;
        }
    }

    let (status, _) = b
        .post(
            "/v1/unsubscribe",
            json!({"user": "alice", "channel": "user:alice:inbox"}),
        )
        .await;
    assert_eq!(status, 200);
    for device in [&mut phone, &mut laptop] {
        assert_eq!(
            device.recv_type("unsubscribed").await["channel"],
            "user:alice:inbox"
        );
    }
    let (status, bad) = a
        .post("/v1/subscribe", json!({"user": "alice", "channel": ""}))
        .await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (422, Some("bad_request")),
        "{bad}"
    );
    a.stop().await;
    b.stop().await;
}

/// The channel's counts as node `server` answers them (`presence_stats` of the API).
async fn stats(server: &TestServer, channel: &str) -> (u64, u64) {
    let (status, stats) = server
        .get_json(&format!("/v1/channels/{channel}/presence-stats"))
        .await;
    assert_eq!(status, 200, "{stats}");
    (
        stats["connections"].as_u64().unwrap(),
        stats["users"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_listed_and_counted_across_three_nodes() {
    let redis = RedisServer::start(false);
    let a = builder().redis(&redis.url()).start().await;
    let b = builder().redis(&redis.url()).start().await;
    let c = builder().redis(&redis.url()).start().await;
    let mut alice = member(&a, "alice", "Ada").await;
    let mut bob_phone = member(&b, "bob", "Bob").await;
    let mut bob_laptop = member(&c, "bob", "Bob").await;
    let mut carol = member(&c, "carol", "Carol").await;
    for client in [&mut alice, &mut bob_phone, &mut bob_laptop, &mut carol] {
        client.subscribe("room:1").await;
    }
    // Every node answers for all three, from counters: bob on two nodes is one user.
    for node in [&a, &b, &c] {
        crate::assert_eventually!(
            stats(node, "room:1").await == (4, 3),
            "every node counts 4 connections of 3 users"
        );
    }
    let reply = answer(
        &mut alice,
        json!({"type": "presence", "id": 1, "channel": "room:1"}),
    )
    .await;
    assert_eq!(users(&reply["members"]), ["alice", "bob", "bob", "carol"]);
    let mut nodes: Vec<&str> = reply["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|member| member["node"].as_str().unwrap())
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    assert_eq!(nodes.len(), 3, "{reply}");
    let carols = reply["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|member| member["user"] == "carol")
        .cloned()
        .unwrap();
    assert_eq!(carols["info"], json!({"name": "Carol"}));
    assert_eq!(carols["conn_id"], carol.conn_id());

    // The API pages through every node's members, one at a time.
    let mut listed = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = b
            .get_json(&format!(
                "/v1/channels/room:1/presence?limit=1&cursor={}",
                cursor.replace(' ', "%20")
            ))
            .await;
        assert_eq!(status, 200, "{page}");
        listed.extend(users(&page["members"]));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
        assert!(listed.len() <= 4, "the pages end");
    }
    listed.sort();
    assert_eq!(listed, ["alice", "bob", "bob", "carol"]);
    let (status, bad) = a.get_json("/v1/channels/room:1/presence?cursor=nope").await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );

    // Bob's laptop goes: still one bob; then his phone unsubscribes: no bob.
    drop(bob_laptop);
    crate::assert_eventually!(
        stats(&a, "room:1").await == (3, 3),
        "bob's laptop is gone, bob is not"
    );
    bob_phone
        .send(json!({"type": "unsubscribe", "id": 5, "channel": "room:1"}))
        .await;
    crate::assert_eventually!(stats(&c, "room:1").await == (2, 2), "bob is gone");
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

/// The real binary in the cluster with [`chat`]'s namespaces and `presence.ttl`, from a
/// config file; killed with SIGKILL when dropped.
async fn binary_member_node(redis: &RedisServer, ttl: Duration) -> BinaryNode {
    let mut config = Config::default();
    chat(&mut config);
    config.presence.ttl = ttl;
    let path = std::env::temp_dir().join(format!(
        "sb-presence-{}-{}.toml",
        std::process::id(),
        redis.port
    ));
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    let node = BinaryNode::start(
        &["--config", path.to_str().unwrap(), "--redis", &redis.url()],
        &[],
    )
    .await;
    let _ = std::fs::remove_file(&path);
    node
}

/// Kills `node` (SIGKILL: no goodbye to the registry, no leaves), with two members of
/// `room:1` on it, while `observer` on the surviving node `server` watches; returns how
/// long until the survivor no longer counts them and the observer heard both leave.
async fn kill_and_time_departure(
    server: &TestServer,
    observer: &mut TestClient,
    mut node: BinaryNode,
) -> Duration {
    // A node that ran a while: in the registry (its first heartbeat follows readiness).
    crate::assert_eventually!(
        server.get_json("/v1/nodes").await.1["nodes"]
            .as_array()
            .is_some_and(|nodes| nodes.len() == 2),
        "the node joins the registry"
    );
    let url = format!("ws://{}/ws", node.ws_addr);
    let mut dan = member_at(&url, "dan").await;
    let mut erin = member_at(&url, "erin").await;
    dan.subscribe("room:1").await;
    erin.subscribe("room:1").await;
    crate::assert_eventually!(
        stats(server, "room:1").await == (3, 3),
        "the survivor lists the killed node's members"
    );
    let mut heard = Vec::new();
    while heard.len() < 2 {
        let join = observer.recv_type("join").await;
        heard.extend(member_users(&join));
    }
    node.child.start_kill().unwrap();
    node.child.wait().await.unwrap();
    let killed = tokio::time::Instant::now();
    let mut left = Vec::new();
    while left.len() < 2 {
        let frame = observer
            .recv_within(patience(Duration::from_secs(30)))
            .await;
        if frame["type"] == "leave" {
            left.extend(member_users(&frame));
        }
    }
    left.sort();
    assert_eq!(left, ["dan", "erin"]);
    let (connections, users) = stats(server, "room:1").await;
    assert_eq!((connections, users), (1, 1), "only the observer is left");
    killed.elapsed()
}

pub(crate) async fn member_at(url: &str, user: &str) -> TestClient {
    let token = token(user, json!({"channels": ["room:*"]}));
    TestClient::connect(&format!("{url}?token={token}")).await
}

/// The users a `join` or `leave` frame names (one, or a coalesced list).
fn member_users(frame: &Value) -> Vec<String> {
    frame["user"]
        .as_str()
        .map_or_else(|| users(&frame["members"]), |user| vec![user.to_owned()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_members_leave_within_the_presence_ttl() {
    let redis = RedisServer::start(false);
    let server = builder()
        .redis(&redis.url())
        .configure(|config| config.presence.ttl = Duration::from_secs(3))
        .start()
        .await;
    let mut observer = member(&server, "olga", "Olga").await;
    observer.subscribe("room:1").await;
    let node = binary_member_node(&redis, Duration::from_secs(3)).await;
    let took = kill_and_time_departure(&server, &mut observer, node).await;
    // The TTL, plus the survivor's next query or refresh (a third of it) and a margin.
    assert!(took < patience(Duration::from_secs(6)), "{took:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_removes_a_killed_nodes_members_before_the_ttl() {
    let redis = RedisServer::start(false);
    let server = builder()
        .redis(&redis.url())
        .configure(|config| config.presence.ttl = Duration::from_secs(60))
        .start()
        .await;
    let mut observer = member(&server, "olga", "Olga").await;
    observer.subscribe("room:1").await;
    let node = binary_member_node(&redis, Duration::from_secs(60)).await;
    let took = kill_and_time_departure(&server, &mut observer, node).await;
    // The registry's entry lives 10 s, the survivors' heartbeat runs every 2 s.
    assert!(took < patience(Duration::from_secs(15)), "{took:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_moves_a_room_to_another_node_in_a_few_coalesced_frames() {
    const MEMBERS: usize = 40;
    let redis = RedisServer::start(false);
    let a = builder().redis(&redis.url()).start().await;
    let b = builder()
        .redis(&redis.url())
        .configure(|config| {
            config.shutdown.drain_delay = Duration::ZERO;
            config.shutdown.drain_window = Duration::from_secs(1);
        })
        .start()
        .await;
    let mut observer = member(&a, "olga", "Olga").await;
    observer.subscribe("room:1").await;
    let mut members = Vec::new();
    for index in 0..MEMBERS {
        let mut client = member_at(&b.ws_url(), &format!("user-{index}")).await;
        client.subscribe("room:1").await;
        members.push(client);
    }
    crate::assert_eventually!(
        stats(&a, "room:1").await == (MEMBERS as u64 + 1, MEMBERS as u64 + 1),
        "every member is listed"
    );
    let mut joined = 0;
    while joined < MEMBERS {
        joined += member_users(&observer.recv_type("join").await).len();
    }

    // Each member, told to go, comes back on `a` as a client does.
    let (status, _) = b.post("/v1/drain", json!({})).await;
    assert_eq!(status, 202);
    let a_url = a.ws_url();
    let movers: Vec<_> = members
        .into_iter()
        .enumerate()
        .map(|(index, mut client)| {
            let url = a_url.clone();
            tokio::spawn(async move {
                client.recv_type("reconnect").await;
                let _ = client.closed().await;
                let mut back = member_at(&url, &format!("user-{index}")).await;
                back.subscribe("room:1").await;
                back
            })
        })
        .collect();
    let (mut frames, mut left, mut came_back) = (0, 0, 0);
    while left < MEMBERS || came_back < MEMBERS {
        let frame = observer.recv().await;
        let kind = frame["type"].as_str().unwrap_or_default();
        let counted = member_users(&frame).len();
        match kind {
            "leave" => left += counted,
            "join" => came_back += counted,
            _ => continue,
        }
        frames += 1;
    }
    let mut back = Vec::new();
    for mover in movers {
        back.push(mover.await.unwrap());
    }
    assert_eq!((left, came_back), (MEMBERS, MEMBERS));
    // 80 events over a 1 s window, coalesced per 300 ms on each node: a few frames each way.
    assert!(frames <= 20, "{frames} frames for {} events", 2 * MEMBERS);
    crate::assert_eventually!(
        stats(&a, "room:1").await == (MEMBERS as u64 + 1, MEMBERS as u64 + 1),
        "the room is whole again, on a"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_works_on_redis_cluster_with_keys_in_the_channels_slot() {
    let cluster = RedisCluster::start();
    let node = || {
        builder().configure(|config| {
            config.cluster.redis = switchboard::config::RedisTarget::ClusterSeeds(cluster.seeds());
            config.cluster.partitions = 6;
        })
    };
    let a = node().start().await;
    let b = node().start().await;
    // Rooms over every partition, so every master holds some presence.
    let rooms: Vec<String> = (0..12).map(|index| format!("room:{index}")).collect();
    let mut ann = member(&a, "ann", "Ann").await;
    let mut ben = member(&b, "ben", "Ben").await;
    for (index, room) in rooms.iter().enumerate() {
        for client in [&mut ann, &mut ben] {
            let request = json!({"type": "subscribe", "id": 100 + index, "channel": room});
            assert_eq!(answer(client, request).await["type"], "subscribed");
        }
    }
    for room in &rooms {
        crate::assert_eventually!(
            stats(&a, room).await == (2, 2),
            "{room} counts both nodes' members"
        );
        let reply = answer(
            &mut ben,
            json!({"type": "presence", "id": 7, "channel": room}),
        )
        .await;
        assert_eq!(users(&reply["members"]), ["ann", "ben"], "{reply}");
    }
    drop(ann);
    for room in &rooms {
        crate::assert_eventually!(stats(&b, room).await == (1, 1), "ann left {room}");
    }
    a.stop().await;
    b.stop().await;
}
