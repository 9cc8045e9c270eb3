//! Webhooks (docs/backend.md) against a real receiver (`backend.rs`): the events of a
//! session's life, batched and signed; a receiver down for 10 s gets every event afterwards
//! (once each after dedupe by id), from two nodes; a full queue drops and counts.

use std::{collections::BTreeMap, time::Duration};

use serde_json::{Value, json};
use switchboard::config::{Config, EditRule, NamespaceConfig, Rule, WebhookConfig, WebhookEvent};

use crate::{
    assert_eventually,
    backend::{Backend, Reply, Seen, assert_signed},
    harness::TestServer,
    redis_server::RedisServer,
};

pub(crate) const SECRET: &str = "webhook-secret";

pub(crate) fn receiver(_: &str, _: &Value) -> Reply {
    Reply::Json(json!({}))
}

fn webhooked(config: &mut Config, url: String, events: Vec<WebhookEvent>) {
    config.webhooks = vec![WebhookConfig {
        url,
        events,
        secret: SECRET.to_owned(),
        batch_interval: Duration::from_millis(50),
        max_backoff: Duration::from_secs(1),
        ..WebhookConfig::default()
    }];
    config.namespaces = vec![NamespaceConfig {
        pattern: "*".to_owned(),
        subscribe: Rule::Anonymous,
        publish: Rule::Anonymous,
        history: Rule::Anonymous,
        presence: Rule::Anonymous,
        join_leave: false,
        edit: EditRule::Own,
        history_size: None,
        history_ttl: None,
        slow_consumer: switchboard::config::SlowConsumer::Disconnect,
        conflate_key: None,
        queue_bytes: None,
    }];
}

/// Every event the receiver got, in order, each batch's signature checked.
pub(crate) fn events(seen: &[Seen]) -> Vec<Value> {
    let mut all = Vec::new();
    for batch in seen {
        assert_signed(batch, SECRET);
        all.extend(batch.body["events"].as_array().unwrap().iter().cloned());
    }
    all
}

/// A session's life as events: the room occupied by its first subscriber, members added
/// once per user, a client's publish with its data and offset, members removed, the room
/// vacated by its last subscriber, and both connections closed with their codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_life_reaches_the_webhook_in_signed_batches() {
    let backend = Backend::start(receiver).await;
    let all = vec![
        WebhookEvent::ChannelOccupied,
        WebhookEvent::ChannelVacated,
        WebhookEvent::MemberAdded,
        WebhookEvent::MemberRemoved,
        WebhookEvent::ClientPublish,
        WebhookEvent::ConnectionClosed,
    ];
    let server = TestServer::builder()
        .configure(|config| webhooked(config, backend.url("/events"), all))
        .start()
        .await;
    let mut first = server.client().await;
    let mut second = server.client().await;
    first.subscribe("room:1").await;
    second.subscribe("room:1").await;
    // Occupancy changes gather for a moment (a channel left and joined again within it was
    // never vacant): the room is told occupied before anyone publishes.
    assert_eventually!(
        events(&backend.seen("/events"))
            .iter()
            .any(|event| event["type"] == "channel_occupied"),
        "room occupied"
    );
    first
        .send(json!({"type":"publish","id":2,"channel":"room:1","data":{"text":"hi"}}))
        .await;
    let published = first.recv_type("published").await;
    drop(second);
    first
        .send(json!({"type":"unsubscribe","id":3,"channel":"room:1"}))
        .await;
    first.recv_type("unsubscribed").await;
    drop(first);
    assert_eventually!(
        events(&backend.seen("/events"))
            .iter()
            .filter(|event| event["type"] == "connection_closed")
            .count()
            == 2,
        "both connections closed"
    );
    let got = events(&backend.seen("/events"));
    let kinds: Vec<&str> = got
        .iter()
        .map(|event| event["type"].as_str().unwrap())
        .collect();
    let position = |kind: &str| kinds.iter().position(|k| *k == kind).unwrap();
    assert_eq!(
        kinds.iter().filter(|k| **k == "channel_occupied").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "channel_vacated").count(),
        1,
        "{kinds:?}"
    );
    assert!(position("channel_occupied") < position("client_publish"));
    assert!(position("client_publish") < position("channel_vacated"));
    let publish = &got[position("client_publish")];
    assert_eq!(publish["data"], json!({"text":"hi"}));
    assert_eq!(publish["offset"], published["offset"]);
    assert_eq!(publish["channel"], "room:1");
    // Anonymous connections are one user (""): added once, removed once.
    assert_eq!(
        kinds.iter().filter(|k| **k == "member_added").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "member_removed").count(),
        1,
        "{kinds:?}"
    );
    let ids: std::collections::BTreeSet<&str> = got
        .iter()
        .map(|event| event["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), got.len(), "unique ids");
    for event in &got {
        assert!(event["time"].as_u64().unwrap() > 1_700_000_000_000);
        assert!(event["node"].is_string());
    }
    server.stop().await;
}

/// The receiver is down (connection refused) for 10 s while two clustered nodes publish
/// and close connections: once it is back every event arrives, once each after dedupe by
/// id; a node whose queue is full drops the rest and counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_10_s_gets_every_event_afterwards() {
    let redis = RedisServer::start(false);
    let backend = Backend::start(receiver).await;
    let port = backend.port;
    let url = backend.url("/events");
    drop(backend);
    let events_wanted = vec![WebhookEvent::ClientPublish, WebhookEvent::ConnectionClosed];
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let url = url.clone();
        let events_wanted = events_wanted.clone();
        nodes.push(
            TestServer::builder()
                .redis(&redis.url())
                .configure(move |config| webhooked(config, url, events_wanted))
                .start()
                .await,
        );
    }
    let mut published = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        for n in 0..20 {
            let mut client = node.client().await;
            client
                .send(
                    json!({"type":"publish","id":1,"channel":"room:9","data":{"node":index,"n":n}}),
                )
                .await;
            published.push(client.recv_type("published").await["offset"].clone());
        }
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let backend = Backend::start_on(port, receiver).await;
    assert_eventually!(
        {
            let got = events(&backend.seen("/events"));
            let unique: BTreeMap<String, Value> = got
                .into_iter()
                .map(|event| (event["id"].as_str().unwrap().to_owned(), event))
                .collect();
            unique.len() == 80
        },
        "every event, after dedupe"
    );
    let got = events(&backend.seen("/events"));
    let unique: BTreeMap<String, Value> = got
        .into_iter()
        .map(|event| (event["id"].as_str().unwrap().to_owned(), event))
        .collect();
    let mut offsets: Vec<Value> = unique
        .values()
        .filter(|event| event["type"] == "client_publish")
        .map(|event| event["offset"].clone())
        .collect();
    offsets.sort_by_key(|offset| offset.to_string());
    published.sort_by_key(|offset| offset.to_string());
    assert_eq!(offsets, published);
    assert!(
        nodes[0]
            .metric("switchboard_webhook_failures_total{webhook=\"0\"}")
            .await
            >= 1.0
    );
    for node in nodes {
        node.stop().await;
    }

    // A queue of 5 while the receiver is down: the rest are dropped and counted.
    drop(backend);
    let server = TestServer::builder()
        .configure(|config| {
            webhooked(config, url, vec![WebhookEvent::ConnectionClosed]);
            config.webhooks[0].max_queued = 5;
            config.webhooks[0].batch_max = 1;
        })
        .start()
        .await;
    for _ in 0..20 {
        drop(server.client().await);
    }
    assert_eventually!(
        server
            .metric("switchboard_webhook_events_dropped_total{webhook=\"0\"}")
            .await
            >= 10.0,
        "events beyond the queue dropped"
    );
    server.stop().await;
}

/// The only subscriber of a channel stops reading and is dropped by the fan-out as a slow
/// consumer (4001) before its session leaves: the channel is still reported vacated, once,
/// and a newcomer occupies it again, so occupied and vacated alternate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_dropped_by_the_fan_out_still_vacates_its_channel() {
    let backend = Backend::start(receiver).await;
    let server = TestServer::builder()
        .configure(|config| {
            webhooked(
                config,
                backend.url("/events"),
                vec![WebhookEvent::ChannelOccupied, WebhookEvent::ChannelVacated],
            );
            config.limits.outbound_queue_messages = 64;
            config.history.size = 10;
            config.limits.outbound_queue_bytes = 256 * 1024;
        })
        .start()
        .await;
    let mut slow =
        crate::harness::TestClient::connect_with_small_buffer(server.ws_addr, "/ws").await;
    slow.subscribe("firehose").await;
    let channel = switchboard::protocol::ChannelName::parse("firehose", 64).unwrap();
    let payload = "x".repeat(4096);
    for n in 0..2_000 {
        if server
            .hub()
            .publish(&channel, &json!({"n": n, "pad": payload}).to_string())
            .is_err()
        {
            break;
        }
        if n % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(slow.close_code().await, 4001);
    drop(slow);
    let kinds = || {
        events(&backend.seen("/events"))
            .iter()
            .map(|event| event["type"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eventually!(kinds().len() == 2, "occupied, then vacated: {:?}", kinds());
    let mut newcomer = server.client().await;
    newcomer.subscribe("firehose").await;
    assert_eventually!(kinds().len() == 3, "occupied again: {:?}", kinds());
    drop(newcomer);
    assert_eventually!(kinds().len() == 4, "four events: {:?}", kinds());
    assert_eq!(
        kinds(),
        [
            "channel_occupied",
            "channel_vacated",
            "channel_occupied",
            "channel_vacated"
        ]
    );
    server.stop().await;
}
