use std::time::Duration;

use super::*;

fn hub_with(history_size: usize, queue_messages: usize) -> HubHandle {
    Hub::new(HubSettings {
        shards: 4,
        max_connections: 10,
        max_subscriptions_per_connection: 8,
        queue_messages,
        queue_bytes: 1 << 20,
        history_size,
        history_ttl: Duration::from_secs(60),
        history_max_bytes: 1 << 20,
    })
}

fn name(text: &str) -> ChannelName {
    ChannelName::parse(text, 64).unwrap()
}

fn reply(outcome: &Subscribed) -> Frame {
    Frame::from(format!(
        "subscribed {} {:?}",
        outcome.offset, outcome.recovered
    ))
}

fn drain(rx: &flume::Receiver<Frame>) -> Vec<String> {
    rx.try_iter().map(|frame| frame.to_string()).collect()
}

fn seqs(frames: &[String]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|frame| serde_json::from_str::<serde_json::Value>(frame).ok())
        .map(|value| {
            value["offset"]
                .as_str()
                .unwrap()
                .parse::<Offset>()
                .unwrap()
                .seq
        })
        .collect()
}

#[test]
fn publish_reaches_every_subscriber_with_one_shared_frame() {
    let hub = hub_with(10, 64);
    let news = name("news");
    let (a, a_rx) = hub.register();
    let (b, b_rx) = hub.register();
    hub.subscribe(&a, &news, None, reply).unwrap();
    hub.subscribe(&b, &news, None, reply).unwrap();
    drain(&a_rx);
    drain(&b_rx);
    let offset = hub.publish(&news, r#"{"n":1}"#);
    assert_eq!(offset.seq, 1);
    let frame_a = a_rx.try_recv().unwrap();
    let frame_b = b_rx.try_recv().unwrap();
    // The same allocation, not a copy per subscriber.
    assert_eq!(frame_a.as_ptr(), frame_b.as_ptr());
    assert!(frame_a.contains(r#""data":{"n":1}"#));
}

#[test]
fn since_replays_exactly_the_missed_messages_then_goes_live() {
    let hub = hub_with(10, 64);
    let news = name("news");
    let first = hub.publish(&news, "1");
    hub.publish(&news, "2");
    hub.publish(&news, "3");
    let (conn, rx) = hub.register();
    let outcome = hub.subscribe(&conn, &news, Some(first), reply).unwrap();
    assert_eq!(outcome.recovered, Some(true));
    assert_eq!(outcome.replayed, 2);
    hub.publish(&news, "4");
    let frames = drain(&rx);
    assert!(frames[0].starts_with("subscribed"), "{frames:?}");
    assert_eq!(seqs(&frames), vec![2, 3, 4]);
}

#[test]
fn since_at_the_current_offset_is_recovered_with_nothing_to_replay() {
    let hub = hub_with(10, 64);
    let news = name("news");
    let last = hub.publish(&news, "1");
    let (conn, _rx) = hub.register();
    let outcome = hub.subscribe(&conn, &news, Some(last), reply).unwrap();
    assert_eq!((outcome.recovered, outcome.replayed), (Some(true), 0));
}

#[test]
fn trimmed_foreign_or_future_offsets_are_not_recovered() {
    let hub = hub_with(3, 64);
    let news = name("news");
    let first = hub.publish(&news, "1");
    for n in 2..=5 {
        hub.publish(&news, &n.to_string());
    }
    let (conn, rx) = hub.register();
    let trimmed = hub.subscribe(&conn, &news, Some(first), reply).unwrap();
    assert_eq!((trimmed.recovered, trimmed.replayed), (Some(false), 0));
    assert_eq!(drain(&rx).len(), 1, "only the reply, no partial replay");
    hub.unsubscribe(conn.conn_id(), &news);

    let foreign = Offset {
        epoch: first.epoch ^ 1,
        seq: 1,
    };
    let outcome = hub.subscribe(&conn, &news, Some(foreign), reply).unwrap();
    assert_eq!(outcome.recovered, Some(false));
    hub.unsubscribe(conn.conn_id(), &news);

    let future = Offset {
        epoch: first.epoch,
        seq: 99,
    };
    let outcome = hub.subscribe(&conn, &news, Some(future), reply).unwrap();
    assert_eq!(outcome.recovered, Some(false));
}

#[test]
fn a_full_queue_closes_only_that_subscriber() {
    let hub = hub_with(0, 16);
    let news = name("news");
    let (slow, _slow_rx) = hub.register();
    let (fast, fast_rx) = hub.register();
    hub.subscribe(&slow, &news, None, reply).unwrap();
    hub.subscribe(&fast, &news, None, reply).unwrap();
    for n in 0..40 {
        hub.publish(&news, &n.to_string());
        drain(&fast_rx);
    }
    assert_eq!(slow.close_code(), Some(protocol::CloseCode::SlowConsumer));
    assert!(!fast.is_closing());
    // The slow one was dropped from the channel at once.
    let subscriptions = || {
        hub.shard_stats()
            .iter()
            .map(|s| s.subscriptions)
            .sum::<usize>()
    };
    assert_eq!(subscriptions(), 1);
    // The session's cleanup finds nothing left to remove and counts nothing twice.
    hub.deregister(slow.conn_id(), [&news]);
    assert_eq!(subscriptions(), 1);
}

#[test]
fn the_byte_limit_also_closes_a_slow_consumer() {
    let hub = Hub::new(HubSettings {
        queue_bytes: 1000,
        ..hub_with(0, 1024).settings().clone()
    });
    let news = name("news");
    let (conn, _rx) = hub.register();
    hub.subscribe(&conn, &news, None, reply).unwrap();
    let payload = format!("\"{}\"", "x".repeat(300));
    for _ in 0..4 {
        hub.publish(&news, &payload);
    }
    assert_eq!(conn.close_code(), Some(protocol::CloseCode::SlowConsumer));
}

#[test]
fn sweep_drops_idle_channels_and_a_new_instance_gets_a_new_epoch() {
    let hub = hub_with(0, 64);
    let news = name("news");
    let old = hub.publish(&news, "1");
    assert_eq!(hub.sweep(), 1);
    let new = hub.publish(&news, "2");
    assert_ne!(old.epoch, new.epoch);
    assert_eq!(new.seq, 1);
}

#[test]
fn sweep_keeps_channels_with_subscribers() {
    let hub = hub_with(0, 64);
    let news = name("news");
    let (conn, _rx) = hub.register();
    hub.subscribe(&conn, &news, None, reply).unwrap();
    assert_eq!(hub.sweep(), 0);
    hub.deregister(conn.conn_id(), [&news]);
    assert_eq!(hub.sweep(), 1);
    assert_eq!(hub.connections(), 0);
}

#[test]
fn history_is_bounded_by_the_node_wide_budget() {
    let hub = Hub::new(HubSettings {
        history_max_bytes: 4000,
        ..hub_with(50, 64).settings().clone()
    });
    let payload = format!("\"{}\"", "y".repeat(500));
    for n in 0..20 {
        hub.publish(&name(&format!("c{}", n % 3)), &payload);
    }
    let snapshot = hub.snapshot();
    assert!(snapshot.history_bytes <= 4000, "{snapshot:?}");
    assert!(snapshot.history_messages > 0);
}

#[test]
fn history_reads_return_the_newest_or_those_after_since() {
    let hub = hub_with(10, 64);
    let news = name("news");
    let offsets: Vec<_> = (1..=5)
        .map(|n| hub.publish(&news, &n.to_string()))
        .collect();
    let newest = hub.history(&news, None, 2);
    let data: Vec<_> = newest
        .messages
        .iter()
        .map(|(_, data)| data.as_str().to_owned())
        .collect();
    assert_eq!(data, vec!["4", "5"]);
    let after = hub.history(&news, Some(offsets[1]), 10);
    assert_eq!(after.recovered, Some(true));
    assert_eq!(
        after
            .messages
            .iter()
            .map(|(o, _)| o.seq)
            .collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
}

#[test]
fn admission_stops_at_the_limit() {
    let hub = hub_with(0, 64);
    for _ in 0..10 {
        assert!(hub.try_admit());
    }
    assert!(!hub.try_admit());
    hub.release_admission();
    assert!(hub.try_admit());
}

#[test]
fn concurrent_publishers_keep_per_channel_order_for_every_subscriber() {
    let hub = hub_with(0, 1024);
    let news = name("news");
    let (conn, rx) = hub.register();
    hub.subscribe(&conn, &news, None, reply).unwrap();
    drain(&rx);
    std::thread::scope(|scope| {
        for publisher in 0..4 {
            let hub = &hub;
            let news = &news;
            scope.spawn(move || {
                for n in 0..200 {
                    hub.publish(news, &format!("[{publisher},{n}]"));
                }
            });
        }
    });
    let frames = drain(&rx);
    assert_eq!(seqs(&frames), (1..=800).collect::<Vec<_>>());
    // Each publisher's own messages arrive in the order it sent them.
    let mut last = [-1_i64; 4];
    for frame in &frames {
        let value: serde_json::Value = serde_json::from_str(frame).unwrap();
        let publisher = usize::try_from(value["data"][0].as_u64().unwrap()).unwrap();
        let n = value["data"][1].as_i64().unwrap();
        assert!(n > last[publisher]);
        last[publisher] = n;
    }
}
