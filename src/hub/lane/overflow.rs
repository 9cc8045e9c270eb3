//! What an outbound queue holds ([`Outgoing`]: frames, tagged with their channel's policy
//! when it has one, gaps, pings), and a full queue under a namespace's `slow_consumer`
//! policy: `drop_oldest` drops the connection's oldest queued messages of the namespace and
//! puts a `gap` frame (the first and last offsets dropped) where each channel's first
//! dropped message was; `conflate` drops the queued messages the new one supersedes (same
//! channel, and same `conflate_key` value), then, still full, the namespace's oldest. What
//! cannot be made room for closes the connection with 4001, as under `disconnect`. All under
//! the queue's lock, on the slow path only: a queue with room never comes here.

use std::{collections::VecDeque, sync::Arc};

use bytes::Bytes;

use super::super::FramedText;
use crate::{
    config::SlowConsumer,
    protocol::{self, ChannelName, Offset},
    telemetry,
};

/// An unmasked WebSocket ping with no payload (RFC 6455 section 5.5.2).
const PING_FRAME: &[u8] = &[0x89, 0x00];

/// What a session's writer takes off its queue.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A text frame, shared by every subscriber it goes to.
    Text(FramedText),
    /// A message of a channel whose namespace drops or conflates for slow subscribers (see
    /// `overflow`), with what that needs to know of it.
    Tagged(FramedText, Arc<Tag>),
    /// A `gap` frame put where `drop_oldest` dropped messages.
    Gap(Box<Gap>),
    /// A WebSocket ping from the keepalive sweep.
    Ping,
}

impl Outgoing {
    /// The bytes that go on the wire; taken, not cloned, so a delivery costs no extra
    /// reference-count round trip.
    #[must_use]
    pub fn into_wire(self) -> Bytes {
        match self {
            Self::Text(frame) | Self::Tagged(frame, _) => frame.into_wire(),
            Self::Gap(gap) => gap.frame.into_wire(),
            Self::Ping => Bytes::from_static(PING_FRAME),
        }
    }

    /// The text frame, if it is one (a ping is not).
    #[must_use]
    pub fn text(&self) -> Option<&FramedText> {
        match self {
            Self::Text(frame) | Self::Tagged(frame, _) => Some(frame),
            Self::Gap(gap) => Some(&gap.frame),
            Self::Ping => None,
        }
    }

    /// The bytes queues count for it (a ping: none).
    #[must_use]
    pub fn text_len(&self) -> usize {
        self.text().map_or(0, FramedText::len)
    }
}

/// A channel's delivery policy (its namespace's), shared by its messages' tags.
#[derive(Debug)]
pub struct Delivery {
    pub channel: ChannelName,
    /// The namespace (its index): what `drop_oldest` and `conflate` may drop from.
    pub group: u16,
    pub policy: SlowConsumer,
    /// With `conflate`: the `data` field whose value separates what is conflated.
    pub conflate_key: Option<Box<str>>,
    /// The bytes of a connection's queue the namespace's messages may hold at most.
    pub queue_bytes: Option<usize>,
    /// The namespace's pattern, for metrics.
    pub label: Arc<str>,
}

/// One queued message's place under its channel's policy.
#[derive(Debug)]
pub struct Tag {
    pub delivery: Arc<Delivery>,
    pub offset: Offset,
    /// With `conflate`: whether it may be superseded (a plain message, not a change to a
    /// message with an id), and the value of its `conflate_key`.
    pub conflatable: bool,
    pub key: Option<Box<str>>,
}

/// A `gap` frame in a queue: its channel and the seqs it covers, so that a later drop of
/// the same channel extends it.
#[derive(Debug, Clone)]
pub struct Gap {
    pub delivery: Arc<Delivery>,
    pub epoch: u64,
    pub from: u64,
    pub to: u64,
    pub frame: FramedText,
}

impl Gap {
    fn new(delivery: Arc<Delivery>, epoch: u64, from: u64, to: u64) -> Self {
        let frame = FramedText::from(protocol::encode_gap(
            &delivery.channel,
            Offset { epoch, seq: from },
            Offset { epoch, seq: to },
        ));
        Self {
            delivery,
            epoch,
            from,
            to,
            frame,
        }
    }
}

/// What making room did to a queue: bytes taken out and put in.
#[derive(Debug, Default)]
pub(super) struct Room {
    pub(super) removed_bytes: usize,
    pub(super) added_bytes: usize,
}

/// The bytes `queue` holds of namespace `group` (its messages and gaps).
pub(super) fn group_bytes(queue: &VecDeque<Outgoing>, group: u16) -> usize {
    queue
        .iter()
        .map(|item| match item {
            Outgoing::Tagged(frame, tag) if tag.delivery.group == group => frame.len(),
            Outgoing::Gap(gap) if gap.delivery.group == group => gap.frame.len(),
            _ => 0,
        })
        .sum()
}

/// Whether a frame of `need` bytes tagged `tag` fits `queue` as it is: within
/// `max_messages`, `max_bytes` (the queue holding `queued`), and the namespace's share.
pub(super) fn fits_now(
    queue: &VecDeque<Outgoing>,
    tag: &Tag,
    need: usize,
    queued: usize,
    max_messages: usize,
    max_bytes: usize,
) -> bool {
    queue.len() < max_messages
        && queued + need <= max_bytes
        && tag.delivery.queue_bytes.is_none_or(|share| {
            // The whole queue within the share: its part of it is too.
            queued + need <= share || group_bytes(queue, tag.delivery.group) + need <= share
        })
}

/// Makes room in `queue` for a frame of `need` bytes tagged `tag`, within `max_messages`,
/// (counting `queued` bytes now) `max_bytes`, and the namespace's share of the queue;
/// `None` when it cannot.
pub(super) fn make_room(
    queue: &mut VecDeque<Outgoing>,
    tag: &Tag,
    need: usize,
    queued: usize,
    max_messages: usize,
    max_bytes: usize,
) -> Option<Room> {
    let mut room = Room::default();
    // What the namespace holds; everything make_room removes or adds is its own.
    let group = tag
        .delivery
        .queue_bytes
        .map(|share| (share, group_bytes(queue, tag.delivery.group)));
    let fits = |queue: &VecDeque<Outgoing>, room: &Room| {
        let after = |held: usize| (held + room.added_bytes).saturating_sub(room.removed_bytes);
        queue.len() < max_messages
            && after(queued) + need <= max_bytes
            && group.is_none_or(|(share, held)| after(held) + need <= share)
    };
    let delivery = &tag.delivery;
    if delivery.policy == SlowConsumer::Conflate && tag.conflatable {
        // What the new message supersedes: the same channel's (and key's) plain messages.
        let mut superseded = 0;
        queue.retain(|item| {
            let Outgoing::Tagged(frame, held) = item else {
                return true;
            };
            let same = held.conflatable
                && held.delivery.channel == delivery.channel
                && held.key == tag.key;
            if same {
                room.removed_bytes += frame.len();
                superseded += 1;
            }
            !same
        });
        telemetry::messages_conflated(&delivery.label, superseded);
        if fits(queue, &room) {
            return Some(room);
        }
    }
    // The namespace's oldest, until the new one fits.
    let mut index = 0;
    let mut dropped = 0;
    while !fits(queue, &room) && index < queue.len() {
        let droppable = matches!(&queue[index], Outgoing::Tagged(_, held)
            if held.delivery.group == delivery.group
                && held.delivery.policy == delivery.policy
                && (delivery.policy == SlowConsumer::DropOldest || held.conflatable));
        if !droppable {
            index += 1;
            continue;
        }
        let Some(Outgoing::Tagged(frame, held)) = queue.remove(index) else {
            unreachable!("matched a tagged item at this index");
        };
        room.removed_bytes += frame.len();
        dropped += 1;
        if delivery.policy == SlowConsumer::DropOldest {
            index = note_gap(queue, index, &held, &mut room);
        }
    }
    if delivery.policy == SlowConsumer::Conflate {
        telemetry::messages_conflated(&delivery.label, dropped);
    }
    fits(queue, &room).then_some(room)
}

/// Records the dropped message `held` (which was at `index`) in a gap: the channel's gap
/// just before it is extended, else a new one goes in its place. Returns the index to go
/// on from.
fn note_gap(queue: &mut VecDeque<Outgoing>, index: usize, held: &Tag, room: &mut Room) -> usize {
    let seq = held.offset.seq;
    // The channel's last gap before this point, if nothing of the channel lies between.
    let previous = queue.iter().take(index).rposition(|item| match item {
        Outgoing::Gap(gap) => gap.delivery.channel == held.delivery.channel,
        Outgoing::Tagged(_, other) => other.delivery.channel == held.delivery.channel,
        _ => false,
    });
    if let Some(at) = previous
        && let Outgoing::Gap(gap) = &mut queue[at]
        && gap.epoch == held.offset.epoch
    {
        let wider = Gap::new(Arc::clone(&gap.delivery), gap.epoch, gap.from, seq);
        room.removed_bytes += gap.frame.len();
        room.added_bytes += wider.frame.len();
        **gap = wider;
        return index;
    }
    let gap = Gap::new(Arc::clone(&held.delivery), held.offset.epoch, seq, seq);
    room.added_bytes += gap.frame.len();
    telemetry::slow_consumer_gap(&held.delivery.label);
    queue.insert(index, Outgoing::Gap(Box::new(gap)));
    index + 1
}

#[cfg(test)]
mod tests;
