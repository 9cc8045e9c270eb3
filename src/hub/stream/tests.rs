use serde_json::Value;

use crate::{
    hub::{
        Editor, FramedText, Hub, HubSettings, Op, Subscribed,
        tests::{drain, name, registered, settings},
    },
    protocol::Offset,
};

/// Settings with `[streams]` as validation fills them for the default limits.
fn stream_settings() -> HubSettings {
    let mut settings: HubSettings = settings(100, 1024);
    settings.streams.max_text_bytes = 256 * 1024;
    settings.streams.max_open_per_channel = 3;
    settings
}

fn streaming_hub(coalesce_ms: u64) -> std::sync::Arc<Hub> {
    let mut settings = stream_settings();
    settings.streams.coalesce = std::time::Duration::from_millis(coalesce_ms);
    Hub::new(settings)
}

fn reply(outcome: &Subscribed) -> FramedText {
    FramedText::from(format!(
        "{{\"type\":\"subscribed\",\"offset\":\"{}\"}}",
        outcome.offset
    ))
}

fn apply(hub: &Hub, channel: &str, op: Op<'_>) -> Offset {
    hub.apply(
        &name(channel),
        &op,
        &Editor::Backend,
        &mut hub.write_batch(),
    )
    .expect("applied")
    .offset
}

/// The text a subscriber rebuilds from its frames.
fn text_of(frames: &[String]) -> String {
    let mut text = String::new();
    for frame in frames {
        let frame: Value = serde_json::from_str(frame).unwrap();
        match frame["type"].as_str().unwrap() {
            "message" => text = frame["text"].as_str().unwrap_or("").to_owned(),
            "append" => text.push_str(frame["text"].as_str().unwrap()),
            _ => {}
        }
    }
    text
}

/// A subscribe that comes while appends are held takes the text so far in its state
/// frame and skips the held frame; an append after it starts a frame of its own, so the
/// new subscriber never gets text twice (merged into the held frame it would have).
#[test]
fn a_subscribe_during_a_hold_never_gets_text_twice() {
    let hub = streaming_hub(10_000);
    let chat = name("chat");
    let (early, early_rx) = registered(&hub);
    hub.subscribe(&early, &chat, None, None, reply).unwrap();
    apply(
        &hub,
        "chat",
        Op::Publish {
            data: "{}",
            message_id: Some("m"),
            stream: true,
        },
    );
    apply(
        &hub,
        "chat",
        Op::Append {
            message_id: "m",
            text: "a",
        },
    );
    // Within the interval: held.
    apply(
        &hub,
        "chat",
        Op::Append {
            message_id: "m",
            text: "b",
        },
    );
    let (late, late_rx) = registered(&hub);
    hub.subscribe(&late, &chat, None, None, reply).unwrap();
    apply(
        &hub,
        "chat",
        Op::Append {
            message_id: "m",
            text: "c",
        },
    );
    // A finish sends what is held first.
    apply(
        &hub,
        "chat",
        Op::Finish {
            message_id: "m",
            data: None,
        },
    );
    let early_frames = drain(&early_rx);
    let late_frames = drain(&late_rx);
    assert_eq!(text_of(&early_frames), "abc", "{early_frames:?}");
    assert_eq!(text_of(&late_frames), "abc", "{late_frames:?}");
    // The early subscriber got the two held appends as two frames (the subscribe sealed
    // the first), the finish last.
    let kinds: Vec<String> = early_frames
        .iter()
        .map(|frame| {
            serde_json::from_str::<Value>(frame).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "subscribed",
            "message",
            "append",
            "append",
            "append",
            "finish"
        ]
    );
}

/// Held appends go out before a plain publish to the channel: offsets stay in order.
#[test]
fn a_plain_publish_sends_held_appends_first() {
    let hub = streaming_hub(10_000);
    let chat = name("chat");
    let (conn, rx) = registered(&hub);
    hub.subscribe(&conn, &chat, None, None, reply).unwrap();
    apply(
        &hub,
        "chat",
        Op::Publish {
            data: "{}",
            message_id: Some("m"),
            stream: true,
        },
    );
    apply(
        &hub,
        "chat",
        Op::Append {
            message_id: "m",
            text: "a",
        },
    );
    apply(
        &hub,
        "chat",
        Op::Append {
            message_id: "m",
            text: "b",
        },
    );
    apply(
        &hub,
        "chat",
        Op::Append {
            message_id: "m",
            text: "c",
        },
    );
    hub.publish(&chat, "1").unwrap();
    let frames: Vec<Value> = drain(&rx)
        .iter()
        .map(|frame| serde_json::from_str(frame).unwrap())
        .collect();
    let offsets: Vec<u64> = frames[1..]
        .iter()
        .map(|frame| {
            frame["offset"]
                .as_str()
                .unwrap()
                .parse::<Offset>()
                .unwrap()
                .seq
        })
        .collect();
    assert_eq!(offsets, [1, 2, 4, 5], "{frames:?}");
    assert_eq!(frames[3]["text"], "bc", "merged");
}

/// A publisher cycling through fresh ids (a hostile client, a buggy backend) cannot grow
/// the node past `history.max_memory_bytes`: over it, its channel gives up the ids kept only
/// for deduplication, then its oldest entries; another channel's history stays.
#[test]
fn fresh_ids_cannot_grow_the_node_past_its_history_budget() {
    use std::sync::atomic::Ordering;
    let mut settings = stream_settings();
    settings.history_size = 10;
    settings.history_max_bytes = 64 << 10;
    let hub = Hub::new(settings);
    hub.publish(&name("bystander"), "\"kept\"").unwrap();
    for n in 0..20_000 {
        let id = format!("{n:0>100}");
        apply(
            &hub,
            "flood",
            Op::Publish {
                data: "1",
                message_id: Some(&id),
                stream: false,
            },
        );
        let used = hub.retention.used_bytes.load(Ordering::Relaxed);
        assert!(
            used <= (64 << 10) + 4096,
            "{used} bytes after {n} publishes"
        );
    }
    let kept = hub.history(&name("bystander"), None, 10);
    assert_eq!(kept.messages.len(), 1, "another channel's history stays");
    // The flood's own last messages are in history, and their ids still deduplicate.
    let last = format!("{:0>100}", 19_999);
    let again = hub
        .apply(
            &name("flood"),
            &Op::Publish {
                data: "1",
                message_id: Some(&last),
                stream: false,
            },
            &Editor::Backend,
            &mut hub.write_batch(),
        )
        .unwrap();
    assert!(again.duplicate);
}

/// A change naming a channel nobody holds is refused and leaves no channel behind (a
/// client cycling through channel names costs nothing until the sweep).
#[test]
fn a_refused_change_leaves_no_channel_behind() {
    let hub = streaming_hub(0);
    for n in 0..100 {
        let op = Op::Append {
            message_id: "m",
            text: "t",
        };
        let refused = hub.apply(
            &name(&format!("nobody:{n}")),
            &op,
            &Editor::Backend,
            &mut hub.write_batch(),
        );
        assert_eq!(refused, Err(crate::hub::OpError::NotFound));
    }
    let channels: usize = hub.shard_stats().iter().map(|shard| shard.channels).sum();
    assert_eq!(channels, 0);
}
