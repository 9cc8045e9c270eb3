//! How long what a cluster writes stays in Redis: a channel's history goes `history.ttl` after
//! its last publish and holds nothing older than that, its meta hash stays for resumes at its
//! head, and the bus partition streams are trimmed by age as well as by length.

use std::time::Duration;

use serde_json::json;

use crate::{
    harness::{TestServer, seq},
    redis_server::RedisServer,
};

/// The partitions `TestServerBuilder::redis` configures.
const PARTITIONS: u32 = 4;

/// The channel's partition, as `cluster::redis` computes it (FNV-1a).
fn partition(channel: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in channel.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % PARTITIONS
}

fn key(channel: &str, kind: &str) -> String {
    format!("sb:{{sb:{}}}:{kind}:{channel}", partition(channel))
}

fn bus(partition: u32) -> String {
    format!("sb:{{sb:{partition}}}:bus")
}

fn number(redis: &RedisServer, args: &[&str]) -> i64 {
    let reply = redis.cli(args).unwrap();
    reply
        .parse()
        .unwrap_or_else(|_| panic!("{args:?}: {reply}"))
}

/// The `t` field (Redis time, ms) of a history stream's first entry in `XRANGE` (`-`, `+`)
/// or `XREVRANGE` (`+`, `-`) order.
fn entry_time(redis: &RedisServer, command: &str, hist: &str) -> i64 {
    let (from, to) = if command == "XRANGE" {
        ("-", "+")
    } else {
        ("+", "-")
    };
    let reply = redis.cli(&[command, hist, from, to, "COUNT", "1"]).unwrap();
    // id, "d", data, "t", time: one per line.
    let lines: Vec<&str> = reply.lines().collect();
    assert_eq!(lines.get(3), Some(&"t"), "{reply}");
    lines[4].parse().unwrap()
}

fn config_with_history_ttl(ttl: Duration) -> impl FnOnce(&mut switchboard::config::Config) {
    move |config| config.history.ttl = ttl
}

/// A channel's history stream lives `history.ttl` past its last publish, not
/// `cluster.channel_state_ttl`; once it is gone a resume from before answers
/// `recovered:false`, while one at the channel's head stays recovered (its meta hash, which
/// outlives history, proves nothing came since) and the next message goes on in the same
/// epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_in_redis_expires_with_history_ttl() {
    const TTL: Duration = Duration::from_secs(2);
    let redis = RedisServer::start(false);
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let node = TestServer::builder()
            .redis(&redis.url())
            .configure(config_with_history_ttl(TTL))
            .start()
            .await;
        nodes.push(node);
    }
    let mut offsets = Vec::new();
    for n in 0..3 {
        offsets.push(nodes[0].publish("brief", json!(n)).await);
    }
    let (hist, meta) = (key("brief", "hist"), key("brief", "meta"));
    let ttl_ms = i64::try_from(TTL.as_millis()).unwrap();
    let hist_ttl = number(&redis, &["PTTL", &hist]);
    assert!(
        0 < hist_ttl && hist_ttl <= ttl_ms,
        "{hist} expires in {hist_ttl} ms, not within history.ttl ({ttl_ms} ms)"
    );
    let meta_ttl = number(&redis, &["PTTL", &meta]);
    assert!(
        meta_ttl > 3_600_000,
        "{meta} expires in {meta_ttl} ms, not cluster.channel_state_ttl"
    );

    crate::assert_eventually!(
        number(&redis, &["EXISTS", &hist]) == 0,
        "{hist} outlived history.ttl"
    );
    let mut client = nodes[1].client().await;
    let reply = client.subscribe_since("brief", &offsets[0]).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(seq(&reply["offset"]), 3, "{reply}");
    let mut client = nodes[1].client().await;
    let reply = client.subscribe_since("brief", &offsets[2]).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let next = nodes[0].publish("brief", json!(3)).await;
    assert_eq!(seq(&json!(next)), 4);
    assert_eq!(
        next.split_once('-').unwrap().0,
        offsets[2].split_once('-').unwrap().0,
        "the epoch changed while its meta hash lived"
    );
    assert!(number(&redis, &["PTTL", &hist]) <= ttl_ms);
    for node in nodes {
        node.stop().await;
    }
}

/// A channel published to without pause keeps history only as old as `history.ttl`: each
/// publish trims older entries, however far `history.size` is from full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_history_stream_keeps_nothing_older_than_history_ttl() {
    const TTL: Duration = Duration::from_secs(2);
    let redis = RedisServer::start(false);
    let node = TestServer::builder()
        .redis(&redis.url())
        .configure(config_with_history_ttl(TTL))
        .start()
        .await;
    let hist = key("busy", "hist");
    let started = tokio::time::Instant::now();
    let mut published = 0;
    // Publishes every 100 ms for 1.75 times the TTL: about 35 messages, well below
    // history.size (100).
    while started.elapsed() < TTL.mul_f64(1.75) {
        node.publish("busy", json!(published)).await;
        published += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.publish("busy", json!(published)).await;
    published += 1;
    let (oldest, newest) = (
        entry_time(&redis, "XRANGE", &hist),
        entry_time(&redis, "XREVRANGE", &hist),
    );
    let kept = number(&redis, &["XLEN", &hist]);
    eprintln!(
        "{published} published over {:?}; the stream keeps {kept}, spanning {} ms",
        started.elapsed(),
        newest - oldest
    );
    let ttl_ms = i64::try_from(TTL.as_millis()).unwrap();
    assert!(
        newest - oldest <= ttl_ms,
        "an entry {} ms older than the last publish is kept (history.ttl {ttl_ms} ms)",
        newest - oldest
    );
    assert!(kept < published);
    node.stop().await;
}

/// Bus partition streams lose entries older than `cluster.bus_max_age` whenever they are
/// appended to, by a publish or by a request to every node, however far below
/// `cluster.bus_maxlen` they are; partitions nobody appends to are left as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_streams_are_trimmed_by_age() {
    const OLD_ENTRIES: i64 = 300;
    let redis = RedisServer::start(false);
    // Entries from twice the default bus_max_age (10 m) ago, written before any node reads
    // the streams (a reader's first start begins after the newest entry).
    let redis_now_ms = {
        let time = redis.cli(&["TIME"]).unwrap();
        let seconds: i64 = time.lines().next().unwrap().parse().unwrap();
        seconds * 1000
    };
    let old_ms = (redis_now_ms - 20 * 60 * 1000).to_string();
    let seed = "for i = 1, tonumber(ARGV[2]) do \
                redis.call('XADD', KEYS[1], ARGV[1] .. '-' .. i, 'c', 'old', 'd', '0') end";
    for partition in 0..PARTITIONS {
        redis
            .cli(&[
                "EVAL",
                seed,
                "1",
                &bus(partition),
                &old_ms,
                &OLD_ENTRIES.to_string(),
            ])
            .unwrap();
    }
    let node = TestServer::builder().redis(&redis.url()).start().await;
    // A channel outside partition 0, which the request below appends to.
    let channel = (0..)
        .map(|n| format!("aging-{n}"))
        .find(|name| partition(name) != 0)
        .unwrap();
    node.publish(&channel, json!("new")).await;
    let (status, body) = node.post("/v1/disconnect", json!({"user": "nobody"})).await;
    assert_eq!(status, 200, "{body}");

    let appended = [partition(&channel), 0];
    for partition in 0..PARTITIONS {
        let len = number(&redis, &["XLEN", &bus(partition)]);
        if appended.contains(&partition) {
            // Approximate trimming drops whole stream nodes (100 entries by default) that
            // hold nothing newer than the bound.
            assert!(
                len <= 101,
                "partition {partition}: {len} entries kept, {OLD_ENTRIES} of them older \
                 than cluster.bus_max_age"
            );
            assert!(len >= 1, "partition {partition}: the new entry is gone");
        } else {
            assert_eq!(len, OLD_ENTRIES, "partition {partition} was trimmed");
        }
    }
    node.stop().await;
}
