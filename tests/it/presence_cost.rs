//! What presence costs Redis, measured with a real node process and a real `redis-server`
//! (`INFO commandstats`): a Redis that was only slow is not sent every channel again, and a
//! node's periodic refresh is spread over its period instead of one burst.

use std::time::Duration;

use serde_json::json;

use crate::{
    harness::TestClient, presence::member_at, presence_truth::node, redis_server::RedisServer,
};

/// Redis calls to presence scripts and all scripts since `CONFIG RESETSTAT`.
fn script_calls(redis: &RedisServer) -> u64 {
    let stats = redis.cli(&["INFO", "commandstats"]).unwrap_or_default();
    stats
        .lines()
        .filter(|line| line.starts_with("cmdstat_evalsha:") || line.starts_with("cmdstat_eval:"))
        .filter_map(|line| {
            let calls = line.split("calls=").nth(1)?;
            calls.split(',').next()?.parse::<u64>().ok()
        })
        .sum()
}

/// A Redis that answered too slowly for a moment (here paused past `publish_timeout`, so
/// the node drops its link and reconnects) still holds every member: the node does not
/// write all its channels again. It used to, on every such blip, and with every node doing
/// so at once an overloaded Redis became an unavailable one (issue 27's million run).
/// Members of a Redis that lost its data are written again at once (see
/// `presence_truth::redis_restarted_empty_keeps_presence_true`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_is_not_sent_every_channel_again() {
    const ROOMS: usize = 60;
    let redis = RedisServer::start(false);
    // A 10 min TTL: the steady refresh (a slice every 3 s) stays out of the count.
    let node = node(&redis, "blip", Duration::from_secs(600), None).await;
    let mut clients = Vec::new();
    for n in 0..ROOMS {
        let mut client = member_at(&node.ws_url(), &format!("blip-{n}")).await;
        client.subscribe(&format!("room:blip-{n}")).await;
        clients.push(client);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.cli(&["CONFIG", "RESETSTAT"]).unwrap();
    // Past the node's 2 s publish timeout: the link is dropped and opened again.
    redis.pause();
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.resume();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let calls = script_calls(&redis);
    eprintln!("{calls} script calls in the 4 s after a 3 s pause, with {ROOMS} rooms held");
    assert!(
        calls < ROOMS as u64 / 2,
        "{calls} script calls after a blip: every room written again"
    );
    // And the members are still listed.
    let first = &mut clients[0];
    first
        .send(json!({"type": "presence", "id": 9, "channel": "room:blip-0"}))
        .await;
    let reply = first.recv_type("presence").await;
    assert_eq!(
        reply["members"].as_array().map(Vec::len),
        Some(1),
        "{reply}"
    );
    drop(node);
}

/// A node refreshes its channels' presence a slice at a time, evenly over the refresh
/// period: 120 rooms, `presence.ttl` 30 s (a refresh every 10 s, in 10 slices of a second),
/// script calls counted each second for 12 s. In one burst, one second held all 120 (at a
/// million sockets every node's burst held Redis for seconds; issue 27); spread, every room
/// is refreshed within the 12 s and no second holds more than a third of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_refreshes_are_spread_over_their_period() {
    const ROOMS: usize = 120;
    let redis = RedisServer::start(false);
    let node = node(&redis, "spread", Duration::from_secs(30), None).await;
    let mut clients: Vec<TestClient> = Vec::new();
    for n in 0..4 {
        let mut client = member_at(&node.ws_url(), &format!("spread-{n}")).await;
        for room in 0..ROOMS / 4 {
            let channel = format!("room:spread-{}", room * 4 + n);
            client
                .send(json!({"type": "subscribe", "id": 1, "channel": channel}))
                .await;
            // Its own `join` may come first.
            assert_eq!(client.recv_type("subscribed").await["channel"], channel);
        }
        clients.push(client);
    }
    // The joins' writes done.
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.cli(&["CONFIG", "RESETSTAT"]).unwrap();
    let mut per_second = Vec::new();
    let mut before = 0;
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let calls = script_calls(&redis);
        per_second.push(calls - before);
        before = calls;
    }
    eprintln!("script calls per second: {per_second:?}");
    assert!(
        before >= ROOMS as u64,
        "every room refreshed within 12 s: {per_second:?}"
    );
    let most = per_second.iter().copied().max().unwrap_or(0);
    assert!(
        most <= ROOMS as u64 / 3,
        "one second held {most} of {ROOMS} refreshes: {per_second:?}"
    );
    drop(clients);
    drop(node);
}
