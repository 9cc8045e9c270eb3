use std::time::Duration;

use super::*;
use crate::protocol::{self, Offset};

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

fn remote_hub() -> HubHandle {
    Hub::new(HubSettings {
        remote: true,
        streams: crate::config::StreamsConfig::default(),
        compression: None,
        ..hub_with(10, 64).settings().clone()
    })
}

const EPOCH: u64 = 0xabc;

/// Registers a connection that subscribed without `since` through a bus read at `seq`.
fn joined_at(hub: &Hub, channel: &ChannelName, seq: u64) -> (Arc<Outbound>, Reader) {
    let (conn, rx) = registered(hub);
    let view = RemoteView {
        epoch: EPOCH,
        seq,
        entries: Vec::new(),
        complete: true,
        absent: false,
        open: Vec::new(),
    };
    assert_eq!(
        hub.subscribe(&conn, channel, None, None, reply),
        Err(SubscribeError::NeedRemote)
    );
    hub.subscribe(&conn, channel, None, Some(&view), reply)
        .unwrap();
    drain(&rx);
    (conn, rx)
}

fn at(seq: u64) -> Offset {
    Offset { epoch: EPOCH, seq }
}

/// A message as a bus read gives it: `(seq, frame)`.
fn bus_entry(channel: &ChannelName, seq: u64) -> (u64, String) {
    (
        seq,
        crate::protocol::encode_message(channel, at(seq), &seq.to_string()),
    )
}

#[test]
fn deliveries_skip_channels_without_local_interest_and_duplicates() {
    let hub = remote_hub();
    let news = name("news");
    assert_eq!(
        hub.deliver(news.as_str(), at(1), "1"),
        0,
        "no local channel: filtered"
    );
    let (conn, rx) = registered(&hub);
    assert_eq!(
        hub.subscribe(&conn, &news, None, None, reply),
        Err(SubscribeError::NeedRemote)
    );
    let view = RemoteView {
        epoch: EPOCH,
        seq: 1,
        entries: Vec::new(),
        complete: true,
        absent: false,
        open: Vec::new(),
    };
    hub.subscribe(&conn, &news, None, Some(&view), reply)
        .unwrap();
    assert_eq!(
        hub.deliver(news.as_str(), at(1), "1"),
        0,
        "already assigned before the subscribe"
    );
    assert_eq!(hub.deliver(news.as_str(), at(2), "2"), 1);
    assert_eq!(
        hub.deliver(news.as_str(), at(2), "2"),
        0,
        "a re-read after reconnect"
    );
    assert_eq!(seqs(&drain(&rx)), vec![2]);
}

#[test]
fn remote_resume_merges_the_bus_read_with_deliveries_made_meanwhile() {
    let hub = remote_hub();
    let news = name("news");
    let (_watcher, watcher_rx) = joined_at(&hub, &news, 7);
    hub.deliver(news.as_str(), at(8), "8");

    let (conn, rx) = registered(&hub);
    // Resuming from 5 is beyond local history (which starts at 8): read the bus.
    assert_eq!(
        hub.subscribe(&conn, &news, Some(at(5)), None, reply),
        Err(SubscribeError::NeedRemote)
    );
    // Meanwhile message 9 arrives; the bus read saw up to 8 only.
    hub.deliver(news.as_str(), at(9), "9");
    let view = RemoteView {
        epoch: EPOCH,
        seq: 8,
        entries: vec![
            bus_entry(&news, 6),
            bus_entry(&news, 7),
            bus_entry(&news, 8),
        ],
        complete: true,
        absent: false,
        open: Vec::new(),
    };
    let outcome = hub
        .subscribe(&conn, &news, Some(at(5)), Some(&view), reply)
        .unwrap();
    assert_eq!(outcome.recovered, Some(true));
    assert_eq!(outcome.offset, at(9));
    hub.deliver(news.as_str(), at(10), "10");
    assert_eq!(seqs(&drain(&rx)), vec![6, 7, 8, 9, 10]);
    assert_eq!(seqs(&drain(&watcher_rx)), vec![8, 9, 10]);
}

#[test]
fn a_bus_read_ahead_of_local_delivery_is_not_delivered_twice() {
    let hub = remote_hub();
    let news = name("news");
    let (_watcher, _watcher_rx) = joined_at(&hub, &news, 3);

    let (conn, rx) = registered(&hub);
    assert!(
        hub.subscribe(&conn, &news, Some(at(1)), None, reply)
            .is_err()
    );
    // Redis already holds 4 and 5, this node has not read them yet.
    let view = RemoteView {
        epoch: EPOCH,
        seq: 5,
        entries: vec![
            bus_entry(&news, 2),
            bus_entry(&news, 3),
            bus_entry(&news, 4),
            bus_entry(&news, 5),
        ],
        complete: true,
        absent: false,
        open: Vec::new(),
    };
    hub.subscribe(&conn, &news, Some(at(1)), Some(&view), reply)
        .unwrap();
    for seq in 4..=6 {
        hub.deliver(news.as_str(), at(seq), &seq.to_string());
    }
    assert_eq!(seqs(&drain(&rx)), vec![2, 3, 4, 5, 6]);
}

#[test]
fn an_incomplete_bus_read_is_not_recovered() {
    let hub = remote_hub();
    let news = name("news");
    let (conn, rx) = registered(&hub);
    assert!(
        hub.subscribe(&conn, &news, Some(at(1)), None, reply)
            .is_err()
    );
    let view = RemoteView {
        epoch: EPOCH,
        seq: 50,
        entries: Vec::new(),
        complete: false,
        absent: false,
        open: Vec::new(),
    };
    let outcome = hub
        .subscribe(&conn, &news, Some(at(1)), Some(&view), reply)
        .unwrap();
    assert_eq!(outcome.recovered, Some(false));
    assert_eq!(drain(&rx).len(), 1, "only the reply");
}

/// A subscribe given the bus's answer for a channel without state (an absent epoch), while
/// the channel's first messages arrived: they belong to the epoch created after the read, and
/// a resume from the absent epoch gets every one of them.
#[test]
fn a_read_of_an_absent_channel_merges_its_first_messages() {
    let hub = remote_hub();
    let news = name("news");
    let absent_epoch = 1_700_000_000_000;
    let (conn, rx) = registered(&hub);
    let since = Offset {
        epoch: absent_epoch,
        seq: 0,
    };
    assert_eq!(
        hub.subscribe(&conn, &news, Some(since), None, reply),
        Err(SubscribeError::NeedRemote)
    );
    // The first publish creates the channel after the read and reaches this node meanwhile.
    hub.deliver(news.as_str(), at(1), "1");
    hub.deliver(news.as_str(), at(2), "2");
    let view = RemoteView {
        epoch: absent_epoch,
        seq: 0,
        entries: Vec::new(),
        complete: true,
        absent: true,
        open: Vec::new(),
    };
    let outcome = hub
        .subscribe(&conn, &news, Some(since), Some(&view), reply)
        .unwrap();
    assert_eq!(outcome.recovered, Some(true));
    assert_eq!(outcome.offset, at(2));
    hub.deliver(news.as_str(), at(3), "3");
    assert_eq!(seqs(&drain(&rx)), vec![1, 2, 3]);
}

/// Redis lost the channel's state: its next message comes in a new epoch. The subscriber,
/// which followed the old one, is told with a `reset` at the position before it, once.
#[test]
fn a_new_epoch_on_the_bus_restarts_the_channel_and_resets_its_subscribers() {
    let hub = remote_hub();
    let news = name("news");
    let (_conn, rx) = joined_at(&hub, &news, 40);
    hub.deliver(news.as_str(), at(41), "41");
    let fresh = |seq| Offset {
        epoch: EPOCH + 1,
        seq,
    };
    assert_eq!(hub.deliver(news.as_str(), fresh(1), "1"), 1);
    assert_eq!(hub.deliver(news.as_str(), fresh(2), "2"), 1);
    let history = hub.history(&news, None, 10);
    assert_eq!(history.offset, fresh(2));
    assert_eq!(history.messages.len(), 2);
    let frames = drain(&rx);
    let reset = format!(
        r#"{{"type":"reset","channel":"news","offset":"{}"}}"#,
        fresh(0)
    );
    assert_eq!(frames.len(), 4, "{frames:?}");
    assert_eq!(frames[1], reset, "before the new epoch's first message");
    assert_eq!(seqs(&frames), vec![41, 0, 1, 2]);
}

/// A channel nobody here had heard a message of needs no reset: the first message's epoch
/// is simply the channel's.
#[test]
fn a_first_message_in_another_epoch_than_the_subscribe_read_sends_no_reset() {
    let hub = remote_hub();
    let news = name("news");
    let (_conn, rx) = joined_at(&hub, &news, 0);
    let fresh = Offset {
        epoch: EPOCH + 1,
        seq: 1,
    };
    hub.deliver(news.as_str(), fresh, "1");
    assert_eq!(seqs(&drain(&rx)), vec![1]);
}

#[test]
fn a_failed_bus_read_unpins_the_channel() {
    let hub = remote_hub();
    let news = name("news");
    let (conn, _rx) = registered(&hub);
    assert!(hub.subscribe(&conn, &news, None, None, reply).is_err());
    assert_eq!(hub.sweep(), 0, "pinned channels stay");
    hub.unpin(&news);
    assert_eq!(hub.snapshot().channels, 0);
}

#[tokio::test]
async fn an_adopted_pin_is_given_back_when_the_read_is_cancelled() {
    let hub = remote_hub();
    let news = name("news");
    let (conn, _rx) = registered(&hub);
    let subscribing = async {
        assert!(hub.subscribe(&conn, &news, None, None, reply).is_err());
        let _pin = hub.adopt_pin(&news);
        // A bus read that never answers (Redis paused), cancelled by the session's end.
        std::future::pending::<()>().await;
    };
    assert!(
        tokio::time::timeout(Duration::from_millis(10), subscribing)
            .await
            .is_err()
    );
    assert_eq!(
        hub.snapshot().channels,
        0,
        "the cancelled read left no pin behind"
    );
    // A consumed pin is not given back twice.
    assert!(hub.subscribe(&conn, &news, None, None, reply).is_err());
    let other = name("other");
    assert!(hub.subscribe(&conn, &other, None, None, reply).is_err());
    let pin = hub.adopt_pin(&other);
    hub.unpin(&other);
    pin.consumed();
    drop(hub.adopt_pin(&news));
    assert_eq!(
        hub.snapshot().channels,
        0,
        "unpinned idle channels go at once"
    );
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

/// Fan-out rounds (`fanout`): a large channel's deliveries run on the workers (their job
/// queue, `lane::workers`), after the publish returned.
#[allow(
    clippy::disallowed_methods,
    reason = "the test's own threads sleep, beside the runtime, never on its workers"
)]
mod rounds {
    use super::*;

    /// More subscribers than a round runs inline for, so rounds go to the workers.
    const STABLE: usize = 100;
    const MESSAGES: u64 = 3000;

    /// A runtime with two workers, which the hub built inside it takes for its rounds.
    fn two_workers() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap()
    }

    /// [`STABLE`] connections subscribed to `channel`, their replies read.
    fn subscribed(hub: &Hub, channel: &ChannelName) -> Vec<(Arc<Outbound>, Reader)> {
        (0..STABLE)
            .map(|_| {
                let (conn, rx) = registered(hub);
                hub.subscribe(&conn, channel, None, None, reply).unwrap();
                rx.try_recv().unwrap();
                (conn, rx)
            })
            .collect()
    }

    /// Reads `readers` into `got` until each holds `n` seqs (or 5 s passed: the caller's
    /// assertion then says what is missing).
    fn read_until(readers: &[(Arc<Outbound>, Reader)], got: &mut [Vec<u64>], n: usize) {
        for _ in 0..500 {
            for ((_, rx), seen) in readers.iter().zip(got.iter_mut()) {
                seen.extend(seqs(&drain(rx)));
            }
            if got.iter().all(|seen| seen.len() >= n) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Publishes on one thread while another keeps joining with `since` (reply, replay, live)
    /// and leaving: every stable subscriber gets 1..=MESSAGES once, in order, and every
    /// joiner a gapless run after its `since`, without duplicates, until it leaves.
    #[test]
    fn rounds_keep_order_and_joins_see_no_gap_or_duplicate() {
        let runtime = two_workers();
        let hub = runtime.block_on(async { hub_with(MESSAGES as usize, 2 * MESSAGES as usize) });
        assert!(hub.workers.is_some(), "the hub took the runtime's handle");
        let news = name("news");
        let stable = subscribed(&hub, &news);
        // Joins done so far: the publisher waits for one per hundred messages, so joins
        // interleave with rounds however the two threads are scheduled (a loaded machine
        // once let the publisher finish after 10 joins).
        let joined = Arc::new(AtomicUsize::new(0));
        let publisher = std::thread::spawn({
            let (hub, news, joined) = (Arc::clone(&hub), news.clone(), Arc::clone(&joined));
            move || {
                for n in 1..=MESSAGES {
                    assert_eq!(hub.publish(&news, &n.to_string()).unwrap().seq, n);
                    if n % 10 == 0 {
                        // Let joins interleave with rounds in flight.
                        std::thread::sleep(Duration::from_micros(100));
                    }
                    let wanted = usize::try_from(n / 100).unwrap();
                    for _ in 0..50_000 {
                        if joined.load(Ordering::SeqCst) >= wanted {
                            break;
                        }
                        std::thread::sleep(Duration::from_micros(100));
                    }
                }
            }
        });
        let mut joins = 0;
        while !publisher.is_finished() || joins == 0 {
            let (conn, rx) = registered(&hub);
            let position = hub.history(&news, None, 0).offset;
            let since = Offset {
                epoch: position.epoch,
                seq: position.seq.saturating_sub(joins % 50),
            };
            hub.subscribe(&conn, &news, Some(since), None, reply)
                .unwrap();
            std::thread::sleep(Duration::from_micros(300));
            hub.unsubscribe(conn.conn_id(), &news);
            let frames = drain(&rx);
            assert!(frames[0].starts_with("subscribed"), "{frames:?}");
            let seen = seqs(&frames[1..]);
            let expected: Vec<u64> = (since.seq + 1..since.seq + 1 + seen.len() as u64).collect();
            assert_eq!(seen, expected, "joiner {joins} from {since}");
            joins += 1;
            joined.store(joins as usize, Ordering::SeqCst);
        }
        publisher.join().unwrap();
        let mut got = vec![Vec::new(); stable.len()];
        read_until(&stable, &mut got, MESSAGES as usize);
        for seen in &got {
            assert_eq!(seen, &(1..=MESSAGES).collect::<Vec<_>>());
        }
        assert!(
            joins >= MESSAGES / 100,
            "joins raced the publisher ({joins})"
        );
    }

    /// A channel whose rounds cannot run refuses publishes once its outbox holds a whole
    /// subscriber queue (nothing ordered, no offset taken), other channels go on, and once
    /// the round ran the channel takes publishes again, every one delivered once, in order.
    #[test]
    fn a_full_outbox_refuses_publishes_until_its_round_ran() {
        // A runtime nobody drives: spawned rounds wait until the test runs it.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let hub = runtime.block_on(async { hub_with(0, 8) });
        let (hot, other) = (name("hot"), name("other"));
        let readers = subscribed(&hub, &hot);
        let (bystander, bystander_rx) = registered(&hub);
        hub.subscribe(&bystander, &other, None, None, reply)
            .unwrap();
        bystander_rx.try_recv().unwrap();
        for n in 1..=8 {
            assert_eq!(hub.publish(&hot, &n.to_string()).unwrap().seq, n);
        }
        assert_eq!(hub.publish(&hot, "9"), Err(FanoutBehind));
        assert_eq!(hub.history(&hot, None, 0).offset.seq, 8, "no offset taken");
        // Another channel (inline round) is not held up.
        hub.publish(&other, "1").unwrap();
        assert_eq!(seqs(&drain(&bystander_rx)), vec![1]);

        runtime.block_on(tokio::task::yield_now());
        for (_, rx) in &readers {
            assert_eq!(seqs(&drain(rx)), (1..=8).collect::<Vec<u64>>());
        }
        assert_eq!(hub.publish(&hot, "9").unwrap().seq, 9);
        runtime.block_on(tokio::task::yield_now());
        for (conn, rx) in &readers {
            assert_eq!(seqs(&drain(rx)), vec![9]);
            assert!(!conn.is_closing());
        }
    }

    /// A subscriber that unsubscribed gets nothing published afterwards, and one whose queue
    /// overflowed is dropped by the round, the others unaffected.
    #[test]
    fn a_round_drops_slow_consumers_and_nothing_follows_an_unsubscribe() {
        let runtime = two_workers();
        let hub = runtime.block_on(async { hub_with(0, 8) });
        let news = name("news");
        let subscribers = subscribed(&hub, &news);
        let (leaver, leaver_rx) = &subscribers[0];
        hub.unsubscribe(leaver.conn_id(), &news);
        let (slow, _) = &subscribers[1];
        for n in 1..=6 {
            hub.publish(&news, &n.to_string()).unwrap();
        }
        // Readers keep up; the slow one never reads and its queue holds 8.
        let readers = &subscribers[2..];
        let mut got = vec![Vec::new(); readers.len()];
        read_until(readers, &mut got, 6);
        for n in 7..=12 {
            hub.publish(&news, &n.to_string()).unwrap();
        }
        read_until(readers, &mut got, 12);
        for seen in &got {
            assert_eq!(seen, &(1..=12).collect::<Vec<u64>>());
        }
        assert!(drain(leaver_rx).is_empty(), "nothing after the unsubscribe");
        assert_eq!(slow.close_code(), Some(protocol::CloseCode::SlowConsumer));
    }
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
