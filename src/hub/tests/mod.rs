use std::time::Duration;

use super::*;
use crate::protocol::{self, Offset};

mod remote;
mod rounds;

pub(super) fn settings(history_size: usize, queue_messages: usize) -> HubSettings {
    HubSettings {
        max_connections: 10,
        queue_messages,
        queue_bytes: 1 << 20,
        history_size,
        history_ttl: Duration::from_secs(60),
        history_max_bytes: 1 << 20,
        compression: None,
        ..HubSettings::default()
    }
}

pub(super) fn hub_with(history_size: usize, queue_messages: usize) -> HubHandle {
    Hub::new(settings(history_size, queue_messages))
}

/// A connection without a socket, and its queue as a session would read it.
pub(super) fn registered(hub: &Hub) -> (Arc<Outbound>, Reader) {
    let outbound = hub.register(None);
    let rx = Reader(Arc::clone(&outbound));
    (outbound, rx)
}

/// Reads a connection's queue as its session would.
pub(super) struct Reader(Arc<Outbound>);

impl Reader {
    pub(super) fn try_recv(&self) -> Result<Outgoing, &'static str> {
        self.0.take().ok_or("empty")
    }

    pub(super) fn try_iter(&self) -> impl Iterator<Item = Outgoing> + '_ {
        std::iter::from_fn(|| self.0.take())
    }
}

pub(super) fn name(text: &str) -> ChannelName {
    ChannelName::parse(text, 64).unwrap()
}

pub(super) fn reply(outcome: &Subscribed) -> FramedText {
    FramedText::from(format!(
        "subscribed {} {:?}",
        outcome.offset, outcome.recovered
    ))
}

pub(super) fn drain(rx: &Reader) -> Vec<String> {
    rx.try_iter()
        .map(|item| text(item).json().to_owned())
        .collect()
}

pub(super) fn text(item: Outgoing) -> FramedText {
    item.text()
        .cloned()
        .expect("expected a text frame, got a ping")
}

pub(super) fn seqs(frames: &[String]) -> Vec<u64> {
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
    let (a, a_rx) = registered(&hub);
    let (b, b_rx) = registered(&hub);
    hub.subscribe(&a, &news, None, None, reply).unwrap();
    hub.subscribe(&b, &news, None, None, reply).unwrap();
    drain(&a_rx);
    drain(&b_rx);
    let offset = hub.publish(&news, r#"{"n":1}"#).unwrap();
    assert_eq!(offset.seq, 1);
    let frame_a = text(a_rx.try_recv().unwrap());
    let frame_b = text(b_rx.try_recv().unwrap());
    // The same allocation, not a copy per subscriber.
    assert_eq!(frame_a.wire().as_ptr(), frame_b.wire().as_ptr());
    assert!(frame_a.json().contains(r#""data":{"n":1}"#));
}

#[test]
fn since_replays_exactly_the_missed_messages_then_goes_live() {
    let hub = hub_with(10, 64);
    let news = name("news");
    let first = hub.publish(&news, "1").unwrap();
    hub.publish(&news, "2").unwrap();
    hub.publish(&news, "3").unwrap();
    let (conn, rx) = registered(&hub);
    let outcome = hub
        .subscribe(&conn, &news, Some(first), None, reply)
        .unwrap();
    assert_eq!(outcome.recovered, Some(true));
    assert_eq!(outcome.replayed, 2);
    hub.publish(&news, "4").unwrap();
    let frames = drain(&rx);
    assert!(frames[0].starts_with("subscribed"), "{frames:?}");
    assert_eq!(seqs(&frames), vec![2, 3, 4]);
}

#[test]
fn since_at_the_current_offset_is_recovered_with_nothing_to_replay() {
    let hub = hub_with(10, 64);
    let news = name("news");
    let last = hub.publish(&news, "1").unwrap();
    let (conn, _rx) = registered(&hub);
    let outcome = hub
        .subscribe(&conn, &news, Some(last), None, reply)
        .unwrap();
    assert_eq!((outcome.recovered, outcome.replayed), (Some(true), 0));
}

#[test]
fn trimmed_foreign_or_future_offsets_are_not_recovered() {
    let hub = hub_with(3, 64);
    let news = name("news");
    let first = hub.publish(&news, "1").unwrap();
    for n in 2..=5 {
        hub.publish(&news, &n.to_string()).unwrap();
    }
    let (conn, rx) = registered(&hub);
    let trimmed = hub
        .subscribe(&conn, &news, Some(first), None, reply)
        .unwrap();
    assert_eq!((trimmed.recovered, trimmed.replayed), (Some(false), 0));
    assert_eq!(drain(&rx).len(), 1, "only the reply, no partial replay");
    hub.unsubscribe(conn.conn_id(), &news);

    let foreign = Offset {
        epoch: first.epoch ^ 1,
        seq: 1,
    };
    let outcome = hub
        .subscribe(&conn, &news, Some(foreign), None, reply)
        .unwrap();
    assert_eq!(outcome.recovered, Some(false));
    hub.unsubscribe(conn.conn_id(), &news);

    let future = Offset {
        epoch: first.epoch,
        seq: 99,
    };
    let outcome = hub
        .subscribe(&conn, &news, Some(future), None, reply)
        .unwrap();
    assert_eq!(outcome.recovered, Some(false));
}

#[test]
fn a_full_queue_closes_only_that_subscriber() {
    let hub = hub_with(0, 16);
    let news = name("news");
    let (slow, _slow_rx) = registered(&hub);
    let (fast, fast_rx) = registered(&hub);
    hub.subscribe(&slow, &news, None, None, reply).unwrap();
    hub.subscribe(&fast, &news, None, None, reply).unwrap();
    for n in 0..40 {
        hub.publish(&news, &n.to_string()).unwrap();
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
    let (conn, _rx) = registered(&hub);
    hub.subscribe(&conn, &news, None, None, reply).unwrap();
    let payload = format!("\"{}\"", "x".repeat(300));
    for _ in 0..4 {
        hub.publish(&news, &payload).unwrap();
    }
    assert_eq!(conn.close_code(), Some(protocol::CloseCode::SlowConsumer));
}

#[tokio::test(start_paused = true)]
async fn sweep_drops_idle_channels_and_a_new_instance_gets_a_new_epoch() {
    let hub = hub_with(10, 64);
    let news = name("news");
    let old = hub.publish(&news, "1").unwrap();
    assert_eq!(hub.sweep(), 0, "history keeps the channel");
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(hub.channels_dropped(), 0);
    assert_eq!(hub.sweep(), 1, "expired history frees it");
    assert_eq!(
        hub.channels_dropped(),
        1,
        "what the bus's interest looks for"
    );
    assert_eq!(hub.snapshot().history_bytes, 0);
    let new = hub.publish(&news, "2").unwrap();
    assert_ne!(old.epoch, new.epoch);
    assert_eq!(new.seq, 1);
}

#[test]
fn sweep_keeps_channels_with_subscribers() {
    let hub = hub_with(0, 64);
    let news = name("news");
    let (conn, _rx) = registered(&hub);
    hub.subscribe(&conn, &news, None, None, reply).unwrap();
    assert_eq!(hub.sweep(), 0);
    assert_eq!(hub.channels_dropped(), 0, "nothing dropped yet");
    hub.deregister(conn.conn_id(), [&news]);
    assert_eq!(
        hub.channels_dropped(),
        1,
        "the last subscriber's leaving drops it"
    );
    assert_eq!(hub.connections(), 0);
    assert_eq!(
        hub.snapshot().channels,
        0,
        "a channel with no subscribers and no history goes at once"
    );
}

#[test]
fn channels_are_charged_what_they_hold_and_freed_when_empty() {
    let hub = hub_with(10, 64);
    let payload = "\"hello\"";
    hub.publish(&name("a"), payload).unwrap();
    let one = hub.snapshot().history_bytes;
    assert!(
        one > fanout::CHANNEL_OVERHEAD + 60,
        "a channel with one message is charged {one} bytes"
    );
    // A second channel costs the same again; a second message in the first costs less.
    hub.publish(&name("b"), payload).unwrap();
    assert_eq!(hub.snapshot().history_bytes, 2 * one);
    hub.publish(&name("a"), payload).unwrap();
    let three = hub.snapshot().history_bytes;
    assert!(three < 3 * one && three > 2 * one, "{three} vs {one}");
    // History off: a publish to a channel nobody follows keeps nothing.
    let no_history = hub_with(0, 64);
    no_history.publish(&name("x"), payload).unwrap();
    assert_eq!(no_history.snapshot().channels, 0);
    assert_eq!(no_history.snapshot().history_bytes, 0);
    // Unsubscribing the last subscriber of a channel without history drops it at once.
    let (conn, _rx) = registered(&no_history);
    no_history
        .subscribe(&conn, &name("y"), None, None, reply)
        .unwrap();
    assert_eq!(no_history.snapshot().channels, 1);
    assert!(no_history.unsubscribe(conn.conn_id(), &name("y")));
    assert_eq!(no_history.snapshot().channels, 0);
}

#[test]
fn history_is_bounded_by_the_node_wide_budget() {
    let hub = Hub::new(HubSettings {
        history_max_bytes: 4000,
        per_namespace: Vec::new(),
        ..hub_with(50, 64).settings().clone()
    });
    let payload = format!("\"{}\"", "y".repeat(500));
    for n in 0..20 {
        hub.publish(&name(&format!("c{}", n % 3)), &payload)
            .unwrap();
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
        .map(|n| hub.publish(&news, &n.to_string()).unwrap())
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
    let (conn, rx) = registered(&hub);
    hub.subscribe(&conn, &news, None, None, reply).unwrap();
    drain(&rx);
    std::thread::scope(|scope| {
        for publisher in 0..4 {
            let hub = &hub;
            let news = &news;
            scope.spawn(move || {
                for n in 0..200 {
                    hub.publish(news, &format!("[{publisher},{n}]")).unwrap();
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

#[tokio::test(start_paused = true)]
async fn keepalive_pings_quiet_connections_and_closes_silent_ones() {
    let hub = hub_with(10, 64);
    let heartbeat = Duration::from_secs(25);
    let idle = Duration::from_secs(60);
    let (quiet, quiet_rx) = registered(&hub);
    let (chatty, chatty_rx) = registered(&hub);
    let pings = |rx: &Reader| {
        rx.try_iter()
            .filter(|item| matches!(item, Outgoing::Ping))
            .count()
    };

    tokio::time::advance(Duration::from_secs(24)).await;
    assert_eq!(hub.keepalive(heartbeat, idle), KeepaliveSweep::default());
    chatty.seen(hub.clock_ms());

    tokio::time::advance(Duration::from_secs(2)).await;
    let sweep = hub.keepalive(heartbeat, idle);
    assert_eq!((sweep.pinged, sweep.idle_closed), (1, 0));
    assert_eq!(pings(&quiet_rx), 1);
    assert_eq!(pings(&chatty_rx), 0, "a client heard from needs no ping");
    // One ping per heartbeat of silence, not one per pass.
    assert_eq!(hub.keepalive(heartbeat, idle).pinged, 0);

    tokio::time::advance(Duration::from_secs(25)).await;
    assert_eq!(hub.keepalive(heartbeat, idle).pinged, 2);
    tokio::time::advance(Duration::from_secs(10)).await;
    let sweep = hub.keepalive(heartbeat, idle);
    assert_eq!(sweep.idle_closed, 1, "61 s without a frame");
    assert_eq!(
        quiet.close_code(),
        Some(crate::protocol::CloseCode::IdleTimeout)
    );
    assert!(!chatty.is_closing(), "heard from 37 s ago");
}

#[tokio::test(start_paused = true)]
async fn a_deadline_set_after_a_sweep_still_closes_on_time() {
    let hub = hub_with(10, 64);
    let heartbeat = Duration::from_secs(25);
    let idle = Duration::from_secs(60);
    let (conn, _rx) = registered(&hub);
    // The sweep notes that nothing is due on this connection before its heartbeat...
    assert_eq!(hub.keepalive(heartbeat, idle), KeepaliveSweep::default());
    // ...then its session sets a deadline 3 s away (no auth in time, a token's expiry).
    hub.set_deadline(
        &conn,
        hub.clock_ms() + 3_000,
        crate::protocol::CloseCode::Unauthorized,
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(hub.keepalive(heartbeat, idle).deadline_closed, 0);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        hub.keepalive(heartbeat, idle).deadline_closed,
        1,
        "closed at its deadline, not at the heartbeat the sweep had noted"
    );
    assert_eq!(
        conn.close_code(),
        Some(crate::protocol::CloseCode::Unauthorized)
    );
}

/// What every channel costs before its name and its subscribers' entries: a larger `Slot`
/// (the state behind its locks) is a cost per channel on a node of a million (see
/// `docs/performance.md`, memory per idle connection). Grow it knowingly.
#[test]
fn a_channel_slot_stays_small() {
    assert!(
        std::mem::size_of::<super::fanout::Slot>() <= 272,
        "Slot is {} bytes",
        std::mem::size_of::<super::fanout::Slot>()
    );
}
