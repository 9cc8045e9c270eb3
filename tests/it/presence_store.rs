//! The cluster's presence store (`RedisPresence`) against a real `redis-server`, driven
//! directly: rooms of thousands of members are written through the store's own scripts
//! instead of opening a connection per member.

use std::{sync::Arc, time::Duration};

use serde_json::json;
use switchboard::{
    cluster::{NodeInfo, PresenceStore, PresenceWrite, RedisBus, RedisSettings},
    config::{Config, NamespaceConfig, RedisTarget, Rule},
    protocol::ChannelName,
    shutdown::TaskGroup,
};
use tokio_util::sync::CancellationToken;

use crate::{harness::TestServer, redis_server::RedisServer};

/// More members than Lua's C stack holds as `unpack`ed arguments (about 8,000).
const MEMBERS: u64 = 9_000;

fn rooms_with_presence(config: &mut Config) {
    config.presence.max_listed = 100_000;
    config.namespaces = vec![NamespaceConfig {
        pattern: "room:*".to_owned(),
        subscribe: Rule::Anonymous,
        publish: Rule::None,
        history: Rule::None,
        presence: Rule::Anonymous,
        join_leave: false,
        edit: switchboard::config::EditRule::Own,
        history_size: None,
        history_ttl: None,
        slow_consumer: switchboard::config::SlowConsumer::Disconnect,
        conflate_key: None,
        queue_bytes: None,
    }];
}

/// A presence page as large as `presence.max_listed` allows lists every member of a room of
/// 9,000, and a client's `presence` request on it gets members, not `unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_more_members_than_lua_can_unpack_lists_them_all() {
    let redis = RedisServer::start(false);
    let server = TestServer::builder()
        .redis(&redis.url())
        .configure(rooms_with_presence)
        .start()
        .await;
    let mut config = Config::default();
    config.cluster.redis = RedisTarget::Url(redis.url());
    config.cluster.partitions = 4;
    let settings = RedisSettings::from_config(&config, Arc::from("writer")).unwrap();
    let tasks = TaskGroup::new();
    let stop = CancellationToken::new();
    let loopback = "127.0.0.1:0".parse().unwrap();
    let node = NodeInfo {
        ws_addr: loopback,
        control_addr: loopback,
    };
    let bus = RedisBus::start(settings, server.hub().clone(), node, &tasks, &stop).unwrap();
    let store = bus.presence(Duration::from_secs(60));
    let room = ChannelName::parse("room:crowd", 200).unwrap();
    crate::assert_eventually!(
        store.page(&room, None, 1).await.is_ok(),
        "the store reaches Redis"
    );

    let joins = (1..=MEMBERS)
        .map(|conn_id| {
            let user: Arc<str> = Arc::from(format!("user-{conn_id}"));
            let member = json!({"node": "writer", "conn_id": conn_id, "user": &*user});
            (conn_id, user, member.to_string())
        })
        .collect();
    let write = PresenceWrite {
        channel: room.clone(),
        full: true,
        expect: false,
        joins,
        leaves: Vec::new(),
    };
    let outcomes = store.write(vec![write]).await;
    assert!(
        outcomes
            .iter()
            .all(|outcome| *outcome == switchboard::cluster::WriteOutcome::Done),
        "{outcomes:?}"
    );

    let page = store.page(&room, None, 100_000).await.unwrap();
    assert_eq!(page.members.len() as u64, MEMBERS);
    assert_eq!(page.next_cursor, None);
    let last: serde_json::Value = serde_json::from_str(page.members.last().unwrap()).unwrap();
    assert_eq!(last["user"], format!("user-{MEMBERS}"));

    // Over a socket: as many as fit in one reply, not an error.
    let mut client = server.client().await;
    client
        .send(json!({"type": "presence", "id": 4, "channel": "room:crowd"}))
        .await;
    let reply = client.recv().await;
    assert_eq!(reply["type"], "presence", "{reply}");
    assert!(!reply["members"].as_array().unwrap().is_empty(), "{reply}");

    stop.cancel();
    tasks.wait().await;
    server.stop().await;
}
