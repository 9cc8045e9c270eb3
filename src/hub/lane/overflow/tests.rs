use std::{collections::VecDeque, sync::Arc};

use super::{Delivery, Tag, make_room};
use crate::{
    config::SlowConsumer,
    hub::{FramedText, Outgoing},
    protocol::{ChannelName, Offset},
};

fn delivery(channel: &str, policy: SlowConsumer) -> Arc<Delivery> {
    Arc::new(Delivery {
        channel: ChannelName::parse(channel, 64).unwrap(),
        group: 1,
        policy,
        conflate_key: None,
        queue_bytes: None,
        label: Arc::from("test:*"),
    })
}

fn tag(delivery: &Arc<Delivery>, seq: u64, key: Option<&str>) -> Arc<Tag> {
    Arc::new(Tag {
        delivery: Arc::clone(delivery),
        offset: Offset { epoch: 7, seq },
        conflatable: true,
        key: key.map(Box::from),
    })
}

/// The queue as `kind:channel:first-last` (gaps) or `channel:seq` (messages).
fn shape(queue: &VecDeque<Outgoing>) -> Vec<String> {
    queue
        .iter()
        .map(|item| match item {
            Outgoing::Tagged(_, tag) => format!("{}:{}", tag.delivery.channel, tag.offset.seq),
            Outgoing::Gap(gap) => {
                format!("gap:{}:{}-{}", gap.delivery.channel, gap.from, gap.to)
            }
            Outgoing::Text(frame) => frame.json().to_owned(),
            Outgoing::Ping => "ping".to_owned(),
        })
        .collect()
}

fn queue_of(items: impl IntoIterator<Item = Arc<Tag>>) -> VecDeque<Outgoing> {
    items
        .into_iter()
        .map(|tag| Outgoing::Tagged(FramedText::text("0123456789"), tag))
        .collect()
}

#[test]
fn drop_oldest_drops_the_namespaces_oldest_and_merges_a_channels_gap() {
    let a = delivery("a", SlowConsumer::DropOldest);
    let b = delivery("b", SlowConsumer::DropOldest);
    let mut queue = queue_of([tag(&a, 1, None), tag(&b, 1, None), tag(&a, 2, None)]);
    queue.push_front(Outgoing::Text(FramedText::text("reply")));
    // Room by count for one more: a gap takes the place of a:1, then of b:1, and a:2
    // widens a's gap, which frees a place.
    let room = make_room(&mut queue, &tag(&a, 3, None), 12, 100, 4, 1 << 20).unwrap();
    assert_eq!(shape(&queue), ["reply", "gap:a:1-2", "gap:b:1-1"]);
    // Three messages and the gap a:1-1 that a:1-2 replaced.
    assert!(
        room.removed_bytes > 3 * 12 && room.added_bytes > 0,
        "{room:?}"
    );
    queue.push_back(Outgoing::Tagged(
        FramedText::text("0123456789"),
        tag(&a, 3, None),
    ));
    let again = make_room(&mut queue, &tag(&a, 4, None), 12, 100, 4, 1 << 20).unwrap();
    assert_eq!(shape(&queue), ["reply", "gap:a:1-3", "gap:b:1-1"]);
    assert!(again.added_bytes > 0);
    let full = make_room(&mut queue, &tag(&a, 4, None), 12, 100, 3, 1 << 20);
    assert!(full.is_none(), "gaps and untagged frames are never dropped");
}

#[test]
fn conflate_drops_what_the_new_message_supersedes_by_key() {
    let ticker = delivery("t", SlowConsumer::Conflate);
    let mut queue = queue_of([
        tag(&ticker, 1, Some("\"A\"")),
        tag(&ticker, 2, Some("\"B\"")),
        tag(&ticker, 3, Some("\"A\"")),
    ]);
    make_room(
        &mut queue,
        &tag(&ticker, 4, Some("\"A\"")),
        12,
        100,
        3,
        1 << 20,
    )
    .unwrap();
    assert_eq!(shape(&queue), ["t:2"]);
    // A key with nothing queued: the namespace's oldest goes, no gap.
    make_room(
        &mut queue,
        &tag(&ticker, 5, Some("\"C\"")),
        12,
        100,
        1,
        1 << 20,
    )
    .unwrap();
    assert!(queue.is_empty());
}
