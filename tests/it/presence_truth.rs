//! What cluster presence says stays true through the faults production brings. The
//! invariant: for a subscriber with `join_leave`, applying the `join` and `leave` frames it
//! received to the list it started from gives exactly the list `presence` answers once the
//! cluster is quiet. Checked with real node processes and a real `redis-server` through a
//! kill -9 and restart under the same node id, a node paused past the registry's TTL, Redis
//! paused for 12 s, and Redis restarted empty.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use serde_json::{Value, json};
use switchboard::config::Config;
use tokio::time::Instant;

use crate::{
    fault_proxy::FaultProxy,
    harness::{BinaryNode, TestClient, patience},
    presence::{chat, member_at},
    redis_server::RedisServer,
};

const ROOM: &str = "room:1";

/// A member: its node and connection.
type Key = (String, u64);

/// A subscriber of [`ROOM`] that keeps the member list its `join` and `leave` frames give.
struct Watcher {
    client: TestClient,
    view: BTreeSet<Key>,
    joins: usize,
    leaves: usize,
    /// Requests sent, for fresh ids.
    asked: u64,
}

fn key(member: &Value) -> Key {
    (
        member["node"].as_str().unwrap().to_owned(),
        member["conn_id"].as_u64().unwrap(),
    )
}

/// The members a `join` or `leave` frame names (one, or a coalesced list).
fn named(frame: &Value) -> Vec<Key> {
    match frame["members"].as_array() {
        Some(members) => members.iter().map(key).collect(),
        None => vec![key(frame)],
    }
}

impl Watcher {
    /// Subscribes as `user` on `url`; starts from the `presence` answer (the room is quiet).
    async fn start(url: &str, user: &str) -> Watcher {
        let mut client = member_at(url, user).await;
        client.subscribe(ROOM).await;
        let mut watcher = Watcher {
            client,
            view: BTreeSet::new(),
            joins: 0,
            leaves: 0,
            asked: 0,
        };
        watcher.view = watcher.listed().await;
        watcher.joins = 0;
        watcher.leaves = 0;
        watcher
    }

    fn apply(&mut self, frame: &Value) {
        match frame["type"].as_str() {
            Some("join") => {
                for member in named(frame) {
                    self.joins += 1;
                    self.view.insert(member);
                }
            }
            Some("leave") => {
                for member in named(frame) {
                    self.leaves += 1;
                    self.view.remove(&member);
                }
            }
            _ => {}
        }
    }

    /// Applies what arrives until nothing has for `quiet`.
    async fn drain(&mut self, quiet: Duration) {
        while let Some(frame) = self.client.try_recv_within(quiet).await {
            self.apply(&frame);
        }
    }

    /// The members `presence` lists, applying the events that arrive meanwhile.
    async fn listed(&mut self) -> BTreeSet<Key> {
        self.asked += 1;
        let id = 1000 + self.asked;
        self.client
            .send(json!({"type": "presence", "id": id, "channel": ROOM}))
            .await;
        loop {
            let frame = self
                .client
                .recv_within(patience(Duration::from_secs(10)))
                .await;
            if frame["id"] == id {
                assert_eq!(frame["type"], "presence", "{frame}");
                assert_eq!(frame["truncated"], false);
                return frame["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(key)
                    .collect();
            }
            self.apply(&frame);
        }
    }
}

/// Waits (up to `within`) until every watcher's view equals the list its node answers and
/// holds `expected` members; returns how long that took.
async fn settle(watchers: &mut [&mut Watcher], expected: usize, within: Duration) -> Duration {
    let start = Instant::now();
    let deadline = start + patience(within);
    loop {
        let mut agreed = true;
        let mut report = Vec::new();
        for watcher in watchers.iter_mut() {
            watcher.drain(Duration::from_millis(400)).await;
            let listed = watcher.listed().await;
            watcher.drain(Duration::from_millis(100)).await;
            agreed &= listed == watcher.view && listed.len() == expected;
            report.push(format!("listed {listed:?}, view {:?}", watcher.view));
        }
        if agreed {
            return start.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "views and lists disagree after {:?}: {report:#?}",
            start.elapsed()
        );
    }
}

/// A node process of the cluster with [`chat`]'s namespaces and `presence.ttl`, under
/// `node_id`, at `addrs` when given (a restart where clients expect it).
pub(crate) async fn node(
    redis: &RedisServer,
    node_id: &str,
    ttl: Duration,
    addrs: Option<(SocketAddr, SocketAddr)>,
) -> BinaryNode {
    node_via(&redis.url(), node_id, ttl, addrs).await
}

/// As [`node`], with Redis at `url` (e.g. a proxy in front of it).
async fn node_via(
    url: &str,
    node_id: &str,
    ttl: Duration,
    addrs: Option<(SocketAddr, SocketAddr)>,
) -> BinaryNode {
    let mut config = Config::default();
    chat(&mut config);
    config.presence.ttl = ttl;
    let env = [("SWITCHBOARD_CLUSTER__PARTITIONS", "4")];
    BinaryNode::start_configured(&config, url, node_id, addrs, &env).await
}

/// `count` members of [`ROOM`] on `node`, users `<prefix>-<n>`.
async fn members(node: &BinaryNode, prefix: &str, count: usize) -> Vec<TestClient> {
    let mut clients = Vec::new();
    for n in 0..count {
        let mut client = member_at(&node.ws_url(), &format!("{prefix}-{n}")).await;
        client.subscribe(ROOM).await;
        clients.push(client);
    }
    clients
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A node killed with SIGKILL and started again at once under the same node id (a
/// Kubernetes container restart) removes its predecessor's members at start and sends their
/// `leave`, long before the presence TTL (60 s here) would have: before, they were listed
/// for good (16 listed where 7 were real, 35 s after the restart) and no `leave` came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_under_its_id_sends_leave_for_its_predecessors_members() {
    let redis = RedisServer::start(false);
    let ttl = Duration::from_secs(60);
    let mut a = node(&redis, "a", ttl, None).await;
    let b = node(&redis, "b", ttl, None).await;
    let mut watcher = Watcher::start(&b.ws_url(), "watcher").await;
    let ghosts = members(&a, "ghost", 5).await;
    settle(&mut [&mut watcher], 6, Duration::from_secs(10)).await;
    (watcher.joins, watcher.leaves) = (0, 0);

    let addrs = (a.ws_addr, a.control_addr);
    a.child.start_kill().unwrap();
    a.child.wait().await.unwrap();
    drop(ghosts);
    let a = node(&redis, "a", ttl, Some(addrs)).await;
    let restarted = Instant::now();
    let _newcomers = members(&a, "new", 2).await;
    let took = settle(&mut [&mut watcher], 3, Duration::from_secs(10)).await;
    let took = took.max(restarted.elapsed());
    eprintln!("ghosts gone {took:?} after the restart");
    assert_eq!(watcher.leaves, 5, "one leave per ghost");
    assert_eq!(watcher.joins, 2, "one join per newcomer");
    assert!(took < patience(Duration::from_secs(10)), "{took:?}");
}

/// Redis frozen (SIGSTOP) for 12 s, longer than both the registry's TTL (10 s) and the
/// presence TTL (6 s here): every node's entries are overdue at once, and nobody may take
/// that for a departure. Before, the first node to heartbeat removed the others' members
/// with `leave` frames and their owners wrote them back without `join`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_pause_sends_no_false_leave() {
    let redis = RedisServer::start(false);
    nobody_leaves_through(&redis.url(), async {
        redis.pause();
        tokio::time::sleep(Duration::from_secs(12)).await;
        redis.resume();
    })
    .await;
}

/// Two nodes (Redis at `url`) with a watcher and three members each:
/// once every view agrees, `fault`; then, past the presence TTL (6 s) and the registry's
/// after it, when any judgment would have been made, nobody left and the views agree again.
async fn nobody_leaves_through(url: &str, fault: impl std::future::Future<Output = ()>) {
    let ttl = Duration::from_secs(6);
    let a = node_via(url, "a", ttl, None).await;
    let b = node_via(url, "b", ttl, None).await;
    let mut on_a = Watcher::start(&a.ws_url(), "watcher-a").await;
    let _members_a = members(&a, "a", 3).await;
    let mut on_b = Watcher::start(&b.ws_url(), "watcher-b").await;
    let _members_b = members(&b, "b", 3).await;
    settle(&mut [&mut on_a, &mut on_b], 8, Duration::from_secs(10)).await;
    let before = (on_a.leaves, on_b.leaves);
    fault.await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    settle(&mut [&mut on_a, &mut on_b], 8, Duration::from_secs(20)).await;
    assert_eq!((on_a.leaves, on_b.leaves), before, "nobody left");
}

/// Every node cut off from Redis for 12 s (a partition: what was in flight is lost, so no
/// heartbeat sent before the cut lands after it): every entry is overdue when the links come
/// back, and whichever node reconnects first must not take the others' silence for a
/// departure, since its own link was down as long. Nodes judge only on a link steady for the
/// whole TTL; before, the first heartbeat back removed the other node's members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_from_redis_sends_no_false_leave() {
    let redis = RedisServer::start(false);
    let proxy = FaultProxy::start(redis.port).await;
    nobody_leaves_through(&proxy.url(), async {
        proxy.cut(true);
        tokio::time::sleep(Duration::from_secs(12)).await;
        proxy.cut(false);
    })
    .await;
}

/// A node frozen for 14 s is gone as far as the cluster can tell: its members' `leave` is
/// sent. When it wakes up it writes them back and sends their `join` (before, it wrote them
/// back silently, and every watcher's list lacked them for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_is_removed_and_comes_back_with_join() {
    let redis = RedisServer::start(false);
    let ttl = Duration::from_secs(6);
    let a = node(&redis, "a", ttl, None).await;
    let b = node(&redis, "b", ttl, None).await;
    let mut watcher = Watcher::start(&a.ws_url(), "watcher").await;
    let _sleepers = members(&b, "sleeper", 3).await;
    settle(&mut [&mut watcher], 4, Duration::from_secs(10)).await;
    (watcher.joins, watcher.leaves) = (0, 0);

    signal(b.pid(), "-STOP");
    let paused = Instant::now();
    // Removed within the presence TTL (or the registry's) and a refresh: only the watcher.
    settle(&mut [&mut watcher], 1, Duration::from_secs(20)).await;
    let removed = paused.elapsed();
    assert_eq!(watcher.leaves, 3);
    tokio::time::sleep(Duration::from_secs(14).saturating_sub(paused.elapsed())).await;
    signal(b.pid(), "-CONT");
    let woke = Instant::now();
    settle(&mut [&mut watcher], 4, Duration::from_secs(20)).await;
    eprintln!(
        "removed {removed:?} after the pause, back {:?} after waking",
        woke.elapsed()
    );
    assert_eq!(watcher.joins, 3, "a join for each member back");
}

/// Redis restarted empty (kill -9, no persistence) loses every node's members; each node
/// writes its own back, and no `leave` is sent: nobody went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_keeps_presence_true() {
    let mut redis = RedisServer::start(false);
    let url = redis.url();
    nobody_leaves_through(&url, async {
        redis.stop();
        tokio::time::sleep(Duration::from_secs(2)).await;
        redis.start_again(false);
    })
    .await;
}

/// A member lists itself as soon as `subscribed` arrives, and whoever receives a `join`
/// finds the joiner in `presence` at once: events about a node's members leave after the
/// write that lists them. Before, in a cluster the list lagged its own events by a write
/// (every 50 ms), so a client that refreshed its list on `join` missed the joiner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_lists_a_member_by_the_time_its_join_arrives() {
    let redis = RedisServer::start(false);
    let a = crate::presence::builder().redis(&redis.url()).start().await;
    let b = crate::presence::builder().redis(&redis.url()).start().await;
    let mut watcher = Watcher::start(&a.ws_url(), "watcher").await;
    let mut joiners = Vec::new();
    for n in 0..10 {
        let joiner = Watcher::start(&b.ws_url(), &format!("joiner-{n}")).await;
        let me = (
            joiner.client.welcome["node"].as_str().unwrap().to_owned(),
            joiner.client.conn_id(),
        );
        assert!(joiner.view.contains(&me), "lists itself: {:?}", joiner.view);
        // The watcher's `join` for it; the list then holds it.
        let join = loop {
            let frame = watcher
                .client
                .recv_within(patience(Duration::from_secs(10)))
                .await;
            watcher.apply(&frame);
            if frame["type"] == "join" {
                break frame;
            }
        };
        let listed = watcher.listed().await;
        for member in named(&join) {
            assert!(listed.contains(&member), "{member:?} not in {listed:?}");
        }
        joiners.push(joiner);
    }
    let expected = joiners.len() + 1;
    let mut all: Vec<&mut Watcher> = joiners.iter_mut().collect();
    all.push(&mut watcher);
    settle(&mut all, expected, Duration::from_secs(10)).await;
}

/// Pages of the control API list every member exactly once from any node, though each node
/// puts its own members into the store's pages as it holds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_list_every_member_once_from_any_node() {
    let redis = RedisServer::start(false);
    let a = crate::presence::builder().redis(&redis.url()).start().await;
    let b = crate::presence::builder().redis(&redis.url()).start().await;
    let (mut clients, mut held) = (Vec::new(), Vec::new());
    for (node, count) in [(&a, 7), (&b, 5)] {
        for n in 0..count {
            let mut client = member_at(&node.ws_url(), &format!("user-{n}")).await;
            client.subscribe(ROOM).await;
            clients.push((
                client.welcome["node"].as_str().unwrap().to_owned(),
                client.conn_id(),
            ));
            held.push(client);
        }
    }
    let mut expected: Vec<Key> = clients;
    expected.sort();
    for node in [&a, &b] {
        // Written to the store by now (the merge would hide a lag on the asking node only).
        let mut listed: Vec<Key> = Vec::new();
        crate::assert_eventually!(
            {
                listed.clear();
                let mut cursor = String::new();
                loop {
                    let (status, page) = node
                        .get_json(&format!(
                            "/v1/channels/{ROOM}/presence?limit=3&cursor={}",
                            cursor.replace(' ', "%20")
                        ))
                        .await;
                    assert_eq!(status, 200, "{page}");
                    listed.extend(page["members"].as_array().unwrap().iter().map(key));
                    assert!(listed.len() <= 24, "the pages end");
                    match page["next_cursor"].as_str() {
                        Some(next) => cursor = next.to_owned(),
                        None => break,
                    }
                }
                listed == expected
            },
            "pages from a node list every member once, in order: {listed:?}"
        );
    }
}

/// The presence scripts of the release before incarnations (dc78205), as a node of that
/// release runs them beside new ones during a rolling upgrade: its prune reads every value
/// of `pn` as an expiry, and must neither fail nor remove a live node's members.
const PREVIOUS_RELEASE_STATS_LUA: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function forget(id, user)
  if redis.call('HINCRBY', KEYS[3], user, -1) <= 0 then redis.call('HDEL', KEYS[3], user) end
  redis.call('HDEL', KEYS[2], id)
end
local function drop(node, departed)
  local ids = redis.call('ZRANGEBYLEX', KEYS[1], '[' .. node .. ' ', '(' .. node .. '!')
  for _, id in ipairs(ids) do
    local json = redis.call('HGET', KEYS[2], id)
    local user = ''
    if json then
      local ok, member = pcall(cjson.decode, json)
      if ok and type(member) == 'table' and type(member.user) == 'string' then
        user = member.user
      end
      if departed then table.insert(departed, json) end
    end
    forget(id, user)
    redis.call('ZREM', KEYS[1], id)
  end
  redis.call('HDEL', KEYS[4], node)
end
local function prune(now, forced, departed)
  if forced then drop(forced, departed) end
  local nodes = redis.call('HGETALL', KEYS[4])
  for i = 1, #nodes, 2 do
    if tonumber(nodes[i + 1]) < now and nodes[i] ~= ARGV[1] then drop(nodes[i], departed) end
  end
end
local departed = {}
prune(now_ms(), nil, departed)
return {#departed, redis.call('ZCARD', KEYS[1]), redis.call('HLEN', KEYS[3])}
";

/// A rolling upgrade runs both releases on one Redis: the previous release's scripts read
/// what this one writes (every `pn` value a number), and this one lists what a node of the
/// previous release wrote (a bare expiry, no incarnation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_keys_stay_readable_across_a_rolling_upgrade() {
    let redis = RedisServer::start(false);
    let node = crate::presence::builder().redis(&redis.url()).start().await;
    let mut watcher = Watcher::start(&node.ws_url(), "ada").await;
    let mut bob = member_at(&node.ws_url(), "bob").await;
    bob.subscribe(ROOM).await;
    settle(&mut [&mut watcher], 2, Duration::from_secs(10)).await;
    let pn = redis
        .cli(&["--scan", "--pattern", "sb:*:pn:room:1"])
        .unwrap();
    assert!(pn.starts_with("sb:"), "{pn:?}");
    let key = |kind: &str| pn.replace(":pn:", &format!(":{kind}:"));
    let fields = redis.cli(&["HGETALL", &pn]).unwrap();
    assert!(fields.lines().any(|line| line.starts_with('!')), "{fields}");

    // A node of the previous release, counting: no error, nobody removed.
    let (pm, pd, pu) = (key("pm"), key("pd"), key("pu"));
    let previous = redis
        .cli(&[
            "EVAL",
            PREVIOUS_RELEASE_STATS_LUA,
            "4",
            &pm,
            &pd,
            &pu,
            &pn,
            "old-node",
        ])
        .unwrap();
    assert_eq!(
        previous.lines().collect::<Vec<_>>(),
        ["0", "2", "2"],
        "the previous release's prune ran, removed nobody and counted both"
    );

    // A member a node of the previous release wrote: listed, and counted.
    let expiry = (switchboard::auth::unix_now() + 60) * 1000;
    let id = "old-node 00000000000000000007";
    let json = r#"{"node":"old-node","conn_id":7,"user":"cy"}"#;
    for command in [
        vec!["ZADD", &pm, "0", id],
        vec!["HSET", &pd, id, json],
        vec!["HINCRBY", &pu, "cy", "1"],
        vec!["HSET", &pn, "old-node", &expiry.to_string()],
    ] {
        redis.cli(&command).unwrap();
    }
    let listed = watcher.listed().await;
    assert!(listed.contains(&("old-node".to_owned(), 7)), "{listed:?}");
    assert_eq!(listed.len(), 3);
}
