//! Webhooks in a cluster (docs/backend.md): a channel is occupied and vacated once for the
//! whole cluster, and a user added and removed once, whichever nodes their connections are
//! on; and that stays true when a node is killed (-9), restarted under the same node id,
//! or Redis is paused while the last subscriber leaves.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use serde_json::Value;
use switchboard::config::{Config, WebhookConfig, WebhookEvent};
use tokio::time::Instant;

use crate::{
    backend::Backend,
    harness::{BinaryNode, TestClient, TestServer, patience},
    presence::{chat, member_at},
    redis_server::RedisServer,
    webhooks::{SECRET, events, receiver},
};

/// The four events a cluster must agree on.
fn configure(config: &mut Config, url: String) {
    chat(config);
    config.webhooks = vec![WebhookConfig {
        url,
        events: vec![
            WebhookEvent::ChannelOccupied,
            WebhookEvent::ChannelVacated,
            WebhookEvent::MemberAdded,
            WebhookEvent::MemberRemoved,
        ],
        secret: SECRET.to_owned(),
        batch_interval: Duration::from_millis(50),
        max_backoff: Duration::from_secs(1),
        ..WebhookConfig::default()
    }];
}

/// Each event the receiver got (after dedupe by id), counted by `type channel [user]`.
fn tally(backend: &Backend) -> BTreeMap<String, usize> {
    let unique: BTreeMap<String, Value> = events(&backend.seen("/events"))
        .into_iter()
        .map(|event| (event["id"].as_str().unwrap().to_owned(), event))
        .collect();
    let mut counts = BTreeMap::new();
    for event in unique.values() {
        let mut key = format!(
            "{} {}",
            event["type"].as_str().unwrap(),
            event["channel"].as_str().unwrap_or_default()
        );
        if let Some(user) = event["user"].as_str() {
            key = format!("{key} {user}");
        }
        *counts.entry(key).or_default() += 1;
    }
    counts
}

fn count(backend: &Backend, key: &str) -> usize {
    tally(backend).get(key).copied().unwrap_or(0)
}

/// `count` in-process nodes of the cluster at `redis`, telling `backend` (see [`configure`]).
async fn in_process(redis: &RedisServer, backend: &Backend, count: usize) -> Vec<TestServer> {
    let mut nodes = Vec::new();
    for _ in 0..count {
        let url = backend.url("/events");
        nodes.push(
            TestServer::builder()
                .redis(&redis.url())
                .configure(move |config| configure(config, url))
                .start()
                .await,
        );
    }
    nodes
}

/// Waits up to `limit` (stretched on a slow machine) until every `(key, count)` of `want`
/// holds; panics with the tally otherwise.
async fn expect(backend: &Backend, want: &[(&str, usize)], limit: Duration) -> Duration {
    let start = Instant::now();
    let deadline = start + patience(limit);
    loop {
        if want.iter().all(|(key, n)| count(backend, key) == *n) {
            return start.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "after {:?}, wanted {want:?}, got {:#?}",
            start.elapsed(),
            tally(backend)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three nodes, six users each connected to every node: the room is occupied once and each
/// user added once, however many connections join at once on however many nodes; when
/// they all leave at once the room is vacated once and each user removed once. Three
/// rounds in the same room, so occupied and vacated alternate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_on_three_nodes_is_occupied_and_vacated_once_and_each_user_added_once() {
    let redis = RedisServer::start(false);
    let backend = Backend::start(receiver).await;
    let mut nodes = in_process(&redis, &backend, 3).await;
    let users: Vec<String> = (0..6).map(|n| format!("u{n}")).collect();
    for round in 1..=3 {
        let mut joining = Vec::new();
        for node in &nodes {
            for user in &users {
                let url = node.ws_url();
                let user = user.clone();
                joining.push(tokio::spawn(async move {
                    let mut client = member_at(&url, &user).await;
                    client.subscribe("room:1").await;
                    client
                }));
            }
        }
        let mut clients: Vec<TestClient> = Vec::new();
        for joined in joining {
            clients.push(joined.await.unwrap());
        }
        let mut want = vec![("channel_occupied room:1".to_owned(), round)];
        want.extend(
            users
                .iter()
                .map(|user| (format!("member_added room:1 {user}"), round)),
        );
        let want_ref: Vec<(&str, usize)> = want.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        expect(&backend, &want_ref, Duration::from_secs(10)).await;

        drop(clients);
        let mut want = vec![("channel_vacated room:1".to_owned(), round)];
        want.extend(
            users
                .iter()
                .map(|user| (format!("member_removed room:1 {user}"), round)),
        );
        let want_ref: Vec<(&str, usize)> = want.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        expect(&backend, &want_ref, Duration::from_secs(10)).await;
    }
    // Nothing more comes late.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let total: usize = tally(&backend).values().sum();
    assert_eq!(total, 3 * (2 + 2 * users.len()), "{:#?}", tally(&backend));
    // Told by whichever nodes made them, they alternate in the order of their `seq`.
    let mut changes: Vec<(u64, String)> = events(&backend.seen("/events"))
        .into_iter()
        .filter(|event| event["channel"] == "room:1" && event["seq"].is_u64())
        .map(|event| {
            (
                event["seq"].as_u64().unwrap(),
                event["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    changes.sort();
    changes.dedup();
    let kinds: Vec<&str> = changes.iter().map(|(_, kind)| kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "channel_occupied",
            "channel_vacated",
            "channel_occupied",
            "channel_vacated",
            "channel_occupied",
            "channel_vacated"
        ]
    );

    // A node stopped (as after a drain) with the only subscriber of a room: its last
    // writes and its webhooks' last try tell the room vacated and the user removed.
    let last = nodes.pop().unwrap();
    let mut client = member_at(&last.ws_url(), "zoe").await;
    client.subscribe("room:2").await;
    expect(
        &backend,
        &[
            ("channel_occupied room:2", 1),
            ("member_added room:2 zoe", 1),
        ],
        Duration::from_secs(10),
    )
    .await;
    // The client answers the server's close, as a browser does.
    let closing = tokio::spawn(async move { client.close_code().await });
    last.stop().await;
    assert_eq!(closing.await.unwrap(), 1001);
    expect(
        &backend,
        &[
            ("channel_vacated room:2", 1),
            ("member_removed room:2 zoe", 1),
        ],
        Duration::from_secs(2),
    )
    .await;
    for node in nodes {
        node.stop().await;
    }
}

/// A node process of the cluster under `node_id` with [`configure`]'s webhooks, at `addrs`
/// when given.
async fn process(
    redis: &RedisServer,
    node_id: &str,
    url: &str,
    addrs: Option<(SocketAddr, SocketAddr)>,
) -> BinaryNode {
    let mut config = Config::default();
    configure(&mut config, url.to_owned());
    BinaryNode::start_configured(&config, &redis.url(), node_id, addrs, &[]).await
}

async fn subscribed(node: &BinaryNode, user: &str, room: &str) -> TestClient {
    let mut client = member_at(&node.ws_url(), user).await;
    client.subscribe(room).await;
    client
}

/// Node `a` killed with SIGKILL: `b` sees it leave the registry and vacates the room only
/// `a` held, removes `a`'s users, and leaves alone the room and the user `b` still holds.
/// Then `a`, started again, is killed and started at once under the same id (a container
/// restart): the new process vacates what the old one held and removes its users at start,
/// long before the registry's TTL would have told anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_or_restarted_node_has_its_rooms_vacated_and_users_removed_once() {
    let redis = RedisServer::start(false);
    let backend = Backend::start(receiver).await;
    let url = backend.url("/events");
    let mut a = process(&redis, "a", &url, None).await;
    let b = process(&redis, "b", &url, None).await;
    let on_a = vec![
        subscribed(&a, "alice", "room:1").await,
        subscribed(&a, "carol", "room:2").await,
    ];
    let dave = subscribed(&b, "dave", "room:2").await;
    expect(
        &backend,
        &[
            ("channel_occupied room:1", 1),
            ("channel_occupied room:2", 1),
            ("member_added room:1 alice", 1),
            ("member_added room:2 carol", 1),
            ("member_added room:2 dave", 1),
        ],
        Duration::from_secs(10),
    )
    .await;

    a.child.start_kill().unwrap();
    a.child.wait().await.unwrap();
    drop(on_a);
    let took = expect(
        &backend,
        &[
            ("channel_vacated room:1", 1),
            ("member_removed room:1 alice", 1),
            ("member_removed room:2 carol", 1),
        ],
        Duration::from_secs(40),
    )
    .await;
    eprintln!("the killed node's room vacated {took:?} after the kill");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&backend, "channel_vacated room:2"), 0);
    assert_eq!(count(&backend, "member_removed room:2 dave"), 0);
    assert_eq!(count(&backend, "channel_vacated room:1"), 1);

    // Restarted under the same id, twice: the second start finds the first's leftovers.
    let mut a = process(&redis, "a", &url, None).await;
    let eve = subscribed(&a, "eve", "room:3").await;
    expect(
        &backend,
        &[
            ("channel_occupied room:3", 1),
            ("member_added room:3 eve", 1),
        ],
        Duration::from_secs(10),
    )
    .await;
    let addrs = (a.ws_addr, a.control_addr);
    a.child.start_kill().unwrap();
    a.child.wait().await.unwrap();
    drop(eve);
    let a = process(&redis, "a", &url, Some(addrs)).await;
    let took = expect(
        &backend,
        &[
            ("channel_vacated room:3", 1),
            ("member_removed room:3 eve", 1),
        ],
        Duration::from_secs(8),
    )
    .await;
    eprintln!("the previous process's room vacated {took:?} after the restart");
    assert!(
        took < patience(Duration::from_secs(8)),
        "before the registry's TTL: {took:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&backend, "channel_vacated room:3"), 1);
    assert_eq!(count(&backend, "channel_vacated room:2"), 0);
    drop(dave);
    expect(
        &backend,
        &[
            ("channel_vacated room:2", 1),
            ("member_removed room:2 dave", 1),
        ],
        Duration::from_secs(10),
    )
    .await;
    drop((a, b));
}

/// Redis frozen (SIGSTOP) for 4 s while the last subscriber of a room leaves: the change
/// waits, is written when Redis answers again, and the room is vacated and the user
/// removed once each, no more (a write whose answer was lost and was sent again is
/// answered as the first time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_pause_delays_the_vacancy_and_tells_it_once() {
    let redis = RedisServer::start(false);
    let backend = Backend::start(receiver).await;
    let nodes = in_process(&redis, &backend, 2).await;
    let mut clients = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        let mut client = member_at(&node.ws_url(), &format!("p{index}")).await;
        client.subscribe(&format!("room:p{index}")).await;
        clients.push(client);
    }
    expect(
        &backend,
        &[
            ("channel_occupied room:p0", 1),
            ("channel_occupied room:p1", 1),
            ("member_added room:p0 p0", 1),
        ],
        Duration::from_secs(10),
    )
    .await;
    redis.pause();
    drop(clients.remove(0));
    tokio::time::sleep(Duration::from_secs(4)).await;
    redis.resume();
    expect(
        &backend,
        &[
            ("channel_vacated room:p0", 1),
            ("member_removed room:p0 p0", 1),
        ],
        Duration::from_secs(20),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(&backend, "channel_vacated room:p0"), 1);
    assert_eq!(count(&backend, "member_removed room:p0 p0"), 1);
    assert_eq!(count(&backend, "channel_vacated room:p1"), 0);
    assert_eq!(count(&backend, "channel_occupied room:p0"), 1);
    drop(clients);
    for node in nodes {
        node.stop().await;
    }
}
