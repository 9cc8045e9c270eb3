//! `limits.max_connections_per_user` over real sockets: on one node and across two nodes of
//! a cluster (real redis-server), the user's oldest connection closed with 4005 to make
//! room, or the newest refused with `limit_exceeded` and 4005; a closed connection gives its
//! place back; other users untouched; a node killed with SIGKILL and restarted under its id
//! does not keep its dead connections counted.

use std::{net::SocketAddr, time::Duration};

use serde_json::json;
use switchboard::{
    auth::unix_now as now,
    config::{Config, RefuseConnection},
};

use crate::{
    auth::{hs256, with_hmac},
    blocks::closed_within_a_second,
    harness::{BinaryNode, TestClient, TestServer},
    redis_server::RedisServer,
};

fn limited(max: usize, refuse: RefuseConnection) -> impl FnOnce(&mut Config) {
    move |config: &mut Config| {
        with_hmac(config);
        config.limits.max_connections_per_user = max;
        config.limits.max_connections_per_user_refuse = refuse;
    }
}

async fn connect(ws_url: &str, user: &str) -> TestClient {
    TestClient::connect(&format!("{ws_url}?token={}", hs256(user, now() + 600))).await
}

/// `client` is taken: its `welcome` names the user, and it answers a ping.
async fn taken(client: &mut TestClient, user: &str) {
    assert_eq!(client.welcome["user"], user, "{}", client.welcome);
    client.send(json!({"type": "ping", "id": 7})).await;
    assert_eq!(client.recv_type("pong").await["id"], 7);
}

/// A connection of `user` refused for the limit: `limit_exceeded` naming it, then 4005.
async fn refused(ws_url: &str, user: &str) {
    let mut client = connect(ws_url, user).await;
    assert!(client.welcome.get("user").is_none(), "{}", client.welcome);
    let error = client.recv().await;
    assert_eq!(error["code"], "limit_exceeded", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("limits.max_connections_per_user"),
        "{error}"
    );
    assert_eq!(client.close_code().await, 4005);
}

#[tokio::test]
async fn on_one_node_the_oldest_makes_room_and_others_go_on() {
    let server = TestServer::builder()
        .configure(limited(2, RefuseConnection::Oldest))
        .start()
        .await;
    let url = server.ws_url();
    crate::raw::with_bystander(&server, async {
        let mut first = connect(&url, "ann").await;
        let mut second = connect(&url, "ann").await;
        let mut other = connect(&url, "ben").await;
        let mut third = connect(&url, "ann").await;
        assert_eq!(closed_within_a_second(&mut first).await, 4005);
        taken(&mut second, "ann").await;
        taken(&mut third, "ann").await;
        taken(&mut other, "ben").await;
        // With an `auth` frame too.
        let mut fourth = TestClient::connect(&url).await;
        fourth
            .send(json!({"type": "auth", "id": 1, "token": hs256("ann", now() + 600)}))
            .await;
        assert_eq!(fourth.recv_type("authenticated").await["user"], "ann");
        assert_eq!(closed_within_a_second(&mut second).await, 4005);
        taken(&mut third, "ann").await;
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn on_one_node_the_newest_is_refused_until_one_closes() {
    let server = TestServer::builder()
        .configure(limited(2, RefuseConnection::Newest))
        .start()
        .await;
    let url = server.ws_url();
    let first = connect(&url, "cid").await;
    let mut second = connect(&url, "cid").await;
    refused(&url, "cid").await;
    taken(&mut connect(&url, "dee").await, "dee").await;
    drop(first);
    crate::assert_eventually!(
        connect(&url, "cid").await.welcome["user"] == "cid",
        "a closed connection gives its place back"
    );
    taken(&mut second, "cid").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_nodes_the_users_oldest_closes_wherever_it_is() {
    let redis = RedisServer::start(false);
    let node = || {
        TestServer::builder()
            .redis(&redis.url())
            .configure(limited(2, RefuseConnection::Oldest))
            .start()
    };
    let (a, b) = (node().await, node().await);
    let mut oldest_on_b = connect(&b.ws_url(), "eve").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut on_a = connect(&a.ws_url(), "eve").await;
    let mut bystander = connect(&b.ws_url(), "fay").await;
    let mut newest_on_a = connect(&a.ws_url(), "eve").await;
    assert_eq!(closed_within_a_second(&mut oldest_on_b).await, 4005);
    taken(&mut on_a, "eve").await;
    taken(&mut newest_on_a, "eve").await;
    taken(&mut bystander, "fay").await;
    for server in [a, b] {
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_nodes_the_newest_is_refused_and_a_close_anywhere_gives_room() {
    let redis = RedisServer::start(false);
    let node = || {
        TestServer::builder()
            .redis(&redis.url())
            .configure(limited(2, RefuseConnection::Newest))
            .start()
    };
    let (a, b) = (node().await, node().await);
    let on_a = connect(&a.ws_url(), "gus").await;
    let mut on_b = connect(&b.ws_url(), "gus").await;
    refused(&b.ws_url(), "gus").await;
    refused(&a.ws_url(), "gus").await;
    drop(on_a);
    crate::assert_eventually!(
        connect(&b.ws_url(), "gus").await.welcome["user"] == "gus",
        "a close on one node gives room on another"
    );
    taken(&mut on_b, "gus").await;
    for server in [a, b] {
        server.stop().await;
    }
}

/// A binary node with the limit, under `node_id`, at `addrs` if given.
async fn binary(
    redis: &RedisServer,
    node_id: &str,
    addrs: Option<(SocketAddr, SocketAddr)>,
) -> BinaryNode {
    let mut config = Config::default();
    limited(1, RefuseConnection::Newest)(&mut config);
    BinaryNode::start_configured(&config, &redis.url(), node_id, addrs, &[]).await
}

/// A node killed with SIGKILL holds a user's only allowed connection; started again under
/// the same id, its predecessor's connection no longer counts, long before the key's
/// expiry: the user connects again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_connections_stop_counting_when_it_restarts_under_its_id() {
    let redis = RedisServer::start(false);
    let mut a = binary(&redis, "a", None).await;
    let b = binary(&redis, "b", None).await;
    let ghost = connect(&a.ws_url(), "hal").await;
    assert_eq!(ghost.welcome["user"], "hal");
    refused(&b.ws_url(), "hal").await;

    let addrs = (a.ws_addr, a.control_addr);
    a.child.start_kill().unwrap();
    a.child.wait().await.unwrap();
    drop(ghost);
    let _a = binary(&redis, "a", Some(addrs)).await;
    crate::assert_eventually!(
        connect(&b.ws_url(), "hal").await.welcome["user"] == "hal",
        "the dead process's connection is no longer counted"
    );
}

/// `user_conns.lua` on a real redis-server through `EVAL`: the oldest go first, a refused
/// connection changes nothing, a member of a process restarted under its node id or of an
/// unknown process counted long ago is removed, and a young one of an unknown process (one
/// started since the caller read the registry) still counts.
#[test]
fn the_user_connections_script_makes_room_refuses_and_forgets_the_dead() {
    const SCRIPT: &str = include_str!("../../src/cluster/redis/lua/user_conns.lua");
    let redis = RedisServer::start(false);
    let eval = |member: &str, max: &str, refuse: &str, live: &[&str]| {
        let mut args = vec![
            "EVAL", SCRIPT, "1", "uc", member, max, refuse, "30000", "60000",
        ];
        args.extend(live);
        redis
            .cli(&args)
            .expect("EVAL runs")
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let live = ["a:1", "b:1"];
    assert_eq!(eval("a:1:10", "2", "oldest", &live), ["1", "0"]);
    // Within one millisecond, members of equal score go by name: `a:1:10` first still.
    assert_eq!(eval("b:1:20", "2", "oldest", &live), ["1", "1"]);
    assert_eq!(eval("a:1:11", "2", "newest", &live), ["0", "2"]);
    assert_eq!(redis.cli(&["ZCARD", "uc"]).unwrap(), "2");
    // Counting the same connection twice is one connection.
    assert_eq!(eval("b:1:20", "2", "oldest", &live), ["1", "1"]);
    assert_eq!(eval("a:1:11", "2", "oldest", &live), ["1", "2", "a:1:10"]);

    // A process that was `a:0` before `a:1` started is dead; `c:1`, unknown and young,
    // counts; unknown and counted long ago, it is gone.
    let old = "1";
    redis.cli(&["ZADD", "uc", old, "c:1:5"]).unwrap();
    redis.cli(&["ZADD", "uc", "2", "a:0:3"]).unwrap();
    let young = redis.cli(&["TIME"]).unwrap();
    let young_ms = young.lines().next().unwrap().parse::<u64>().unwrap() * 1000;
    redis
        .cli(&["ZADD", "uc", &young_ms.to_string(), "d:1:6"])
        .unwrap();
    assert_eq!(eval("b:1:21", "5", "newest", &live), ["1", "3"]);
    let members = redis.cli(&["ZRANGE", "uc", "0", "-1"]).unwrap();
    assert!(
        !members.contains("a:0:3") && !members.contains("c:1:5"),
        "{members}"
    );
    assert!(members.contains("d:1:6"), "{members}");
}
