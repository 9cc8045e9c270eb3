//! The hub under a remote bus (Redis): deliveries in offset order, subscribes that merge
//! a bus read with what arrived meanwhile, epochs that change, pins given back.

use super::*;

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
