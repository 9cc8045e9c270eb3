//! Publishing: a message ordered here ([`Hub::publish`]) or by a remote bus
//! ([`Hub::deliver`]) is appended once (framed, in the outbox, in history) under the
//! channel's state lock; a fan-out round then delivers the outbox (see `fanout`). Events
//! (`join`, `leave`) take the same outbox without an offset.

use std::sync::Arc;

use tokio::time::Instant;

use super::{
    FramedText, Hub, Tag, WriteBatch,
    channel::Queued,
    channel::{Channel, Entry},
    fanout::start_round,
    lock, read,
};
use crate::{
    protocol::{self, ChannelName, Offset},
    telemetry,
};

/// A publish refused because the channel's fan-out is a whole queue behind its publishers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the channel's fan-out is behind its publishers; retry later")]
pub struct FanoutBehind;

impl Hub {
    /// A batch for [`Hub::publish_batched`] and [`Hub::deliver_batched`].
    #[must_use]
    pub fn write_batch(&self) -> WriteBatch {
        WriteBatch::new(self.workers.clone())
    }

    /// [`Hub::publish_batched`], written at once.
    ///
    /// # Errors
    /// As [`Hub::publish_batched`].
    pub fn publish(&self, channel: &ChannelName, data: &str) -> Result<Offset, FanoutBehind> {
        self.publish_batched(channel, data, &mut self.write_batch())
    }

    /// Publishes `data` (valid JSON) to `channel`: assigns the next offset, remembers it in
    /// history and in the channel's outbox, and starts a fan-out round unless one is running
    /// (see `fanout`). Returns once the message is ordered; never waits on a subscriber, and
    /// for a large channel not on the fan-out either. A small channel's round runs here and
    /// leaves the connections it claimed in `writes`, for the caller to write when it is
    /// done publishing.
    ///
    /// # Errors
    /// [`FanoutBehind`] when the channel's outbox already holds what one subscriber's queue
    /// may (`limits.outbound_queue_messages` or `_bytes`): the rounds cannot keep up with
    /// its publishers, and one more message would overflow every subscriber. Nothing was
    /// published.
    pub fn publish_batched(
        &self,
        channel: &ChannelName,
        data: &str,
        writes: &mut WriteBatch,
    ) -> Result<Offset, FanoutBehind> {
        let mut round = None;
        let (offset, idle) = self
            .with_channel(channel, |slot, state| {
                if state.subscribed > 0
                    && (state.outbox.len() >= self.settings.queue_messages
                        || state.outbox_bytes + data.len() > self.settings.queue_bytes)
                {
                    return Err(FanoutBehind);
                }
                let offset = state.next_offset();
                round = self
                    .append(state, channel, offset, data)
                    .map(|subscribers| (Arc::clone(slot), subscribers));
                Ok((offset, state.is_idle()))
            })
            .inspect_err(|_| {
                telemetry::metrics()
                    .publishes_refused_fanout_behind
                    .increment(1)
            })?;
        if idle {
            // Nobody listens and history is off: nothing to keep.
            self.drop_if_idle(channel);
        }
        if let Some((slot, subscribers)) = round {
            start_round(&slot, subscribers, self.workers.as_ref(), writes);
        }
        telemetry::metrics().messages_published.increment(1);
        Ok(offset)
    }

    /// Puts a message (or an event) in the channel's outbox. `Some(subscribers)` when the
    /// caller must start a round (once it let go of the channel's lock).
    pub(super) fn enqueue_round(state: &mut Channel, mut queued: Queued) -> Option<usize> {
        if state.subscribed == 0 {
            // A later subscriber skips everything up to its subscribe position anyway.
            return None;
        }
        if let (Some(delivery), None, false) = (&state.delivery, &queued.tag, queued.event) {
            // A change to a message, or one with an id: dropped for a gap, never conflated.
            queued.tag = Some(Arc::new(Tag {
                delivery: Arc::clone(delivery),
                offset: queued.offset,
                conflatable: false,
                key: None,
            }));
        }
        state.outbox_bytes += queued.frame.len();
        state.outbox.push(queued);
        if state.round_scheduled {
            return None;
        }
        state.round_scheduled = true;
        Some(state.subscribed)
    }

    /// [`Hub::deliver_batched`], written at once.
    pub fn deliver(&self, channel: &str, offset: Offset, data: &str) -> usize {
        self.deliver_batched(channel, offset, data, &mut self.write_batch())
    }

    /// Delivers a message ordered by a remote bus: fans it out to local subscribers in offset
    /// order, once. Channels without local interest are skipped (each node follows every
    /// partition and filters here). Duplicates (re-reads after a reconnect) are dropped.
    /// Returns how many subscribers it goes to (a fan-out round delivers it; see `fanout`;
    /// a small channel's claimed connections are left in `writes`, as by
    /// [`Hub::publish_batched`]).
    ///
    /// `channel` is the name as read from the bus: looked up without allocating, since most
    /// entries a node reads are for channels it has no subscribers for.
    pub fn deliver_batched(
        &self,
        channel: &str,
        offset: Offset,
        data: &str,
        writes: &mut WriteBatch,
    ) -> usize {
        self.deliver_with(channel, writes, |hub, state, channel| {
            hub.deliver_locked(state, channel, offset, data)
        })
    }

    /// Runs `deliver` under the lock of `channel` if this node holds it (else 0: most of
    /// what a node reads is for channels it has no subscribers for, looked up without
    /// allocating), and starts the round it asks for. `deliver` answers `None` when it
    /// delivered nothing, else whether a round must start. Returns how many subscribers it
    /// goes to.
    pub(super) fn deliver_with(
        &self,
        channel: &str,
        writes: &mut WriteBatch,
        deliver: impl FnOnce(&Self, &mut Channel, &ChannelName) -> Option<Option<usize>>,
    ) -> usize {
        let shard = self.shard(channel);
        let Some((channel, slot)) = read(&shard.channels)
            .get_key_value(channel)
            .map(|(name, slot)| (name.clone(), Arc::clone(slot)))
        else {
            return 0;
        };
        let (subscribers, round) = {
            let mut state = lock(&slot.state);
            if state.removed {
                return 0;
            }
            let Some(round) = deliver(self, &mut state, &channel) else {
                return 0;
            };
            (state.subscribed, round)
        };
        if let Some(subscribers) = round {
            start_round(&slot, subscribers, self.workers.as_ref(), writes);
        }
        subscribers
    }

    /// Orders a delivery under the channel's lock: `None` for a duplicate, else whether the
    /// caller must start a round (see [`Hub::enqueue_round`]).
    pub(super) fn deliver_locked(
        &self,
        state: &mut Channel,
        channel: &ChannelName,
        offset: Offset,
        data: &str,
    ) -> Option<Option<usize>> {
        let reset = self.order_remote(state, channel, offset)?;
        let round = self.append(state, channel, offset, data);
        Some(reset.or(round))
    }

    /// Moves the channel to a delivery's `offset` under its lock: `None` for a duplicate
    /// (nothing to do), else whether the caller must start a round for the `reset` frame
    /// that goes first when the bus lost the channel's state.
    pub(super) fn order_remote(
        &self,
        state: &mut Channel,
        channel: &ChannelName,
        offset: Offset,
    ) -> Option<Option<usize>> {
        if !state.synced {
            state.epoch = offset.epoch;
            state.synced = true;
        } else if state.epoch != offset.epoch {
            // At seq 0 there is nothing to forget: the epoch was the bus's answer for a
            // channel without state, and this is its first message.
            if state.seq > 0 {
                tracing::warn!(%channel, "Channel epoch changed on the bus; history restarts");
            }
            self.forget_epoch(state, offset.epoch);
        } else if offset.seq <= state.seq {
            return None;
        } else if offset.seq > state.seq + 1 && state.seq > 0 {
            telemetry::metrics().bus_gaps.increment(1);
            tracing::warn!(%channel, from = state.seq, to = offset.seq, "Gap in the bus");
        }
        if offset.seq > state.seq + 1 {
            // What came before this delivery is not held here (a channel this node starts
            // following, another epoch, a gap in the bus): no resume from before it.
            state.floor = state.floor.max(offset.seq - 1);
        }
        state.seq = offset.seq;
        if !std::mem::take(&mut state.reset_owed) {
            return Some(None);
        }
        // Subscribers here followed an epoch that is gone (Redis lost the channel's state):
        // what they missed cannot be known, and their offsets name nothing. Tell them before
        // the new epoch's first message, at the position just before it.
        let position = Offset {
            epoch: offset.epoch,
            seq: offset.seq.saturating_sub(1),
        };
        telemetry::metrics().epoch_resets.increment(1);
        Some(Self::enqueue_round(
            state,
            Queued {
                offset: position,
                frame: FramedText::from(protocol::encode_reset(channel, position)),
                accepted: Instant::now(),
                event: true,
                tag: None,
            },
        ))
    }

    /// Appends the message at `offset` (ordered under the channel's state lock, which the
    /// caller holds): frames it once, puts it in the outbox, in history, and in what pinned
    /// subscribes keep. `Some(subscribers)` when the caller must start a round (see
    /// [`Hub::enqueue_round`]).
    pub(super) fn append(
        &self,
        state: &mut Channel,
        channel: &ChannelName,
        offset: Offset,
        data: &str,
    ) -> Option<usize> {
        let json = protocol::encode_message(channel, offset, data);
        self.append_message(state, channel, offset, json, data.len(), None)
    }

    /// [`Hub::append`] of a `message` frame already encoded (`json`, whose `data` is its
    /// last `data_len` bytes before the closing brace), with its state when it has an id.
    pub(super) fn append_message(
        &self,
        state: &mut Channel,
        channel: &ChannelName,
        offset: Offset,
        json: String,
        data_len: usize,
        message: Option<Box<super::stream::Message>>,
    ) -> Option<usize> {
        // Appends held for coalescing go first: frames leave in offset order.
        let flushed = Self::flush_held(state, channel);
        let data_start = u32::try_from(json.len() - data_len - 1)
            .expect("payload size is bounded by config far below 4 GiB");
        let frame = FramedText::from(json);
        let now = Instant::now();
        let mut queued = Queued::message(offset, &frame, now);
        if let (Some(delivery), None) = (&state.delivery, &message) {
            // A plain message: conflated with the channel's (and key's) earlier ones.
            let data = &frame.json()[data_start as usize..frame.json().len() - 1];
            queued.tag = Some(Arc::new(Tag {
                delivery: Arc::clone(delivery),
                offset,
                conflatable: true,
                key: delivery
                    .conflate_key
                    .as_deref()
                    .and_then(|key| conflate_value(data, key)),
            }));
        }
        let round = flushed.or(Self::enqueue_round(state, queued));
        let entry = Entry {
            seq: offset.seq,
            last: offset.seq,
            published_at: now,
            frame,
            data_start,
            message,
        };
        // Only a remote bus's deliveries meet pinned subscribes; a no-op otherwise.
        state.remember_pending(entry.seq, &entry.frame);
        state.remember(entry, &self.retention, now);
        round
    }

    /// Sends `text` (an event frame: `join`, `leave`) to the channel's subscribers on this
    /// node, in the channel's order: after every message ordered before it, before every
    /// message ordered after it. Not kept in history and given no offset. Returns how many
    /// subscribers it goes to; 0 when the channel has none here.
    pub fn announce(&self, channel: &str, text: String, writes: &mut WriteBatch) -> usize {
        self.deliver_with(channel, writes, |_, state, channel| {
            let flushed = Self::flush_held(state, channel);
            let event = Queued {
                offset: state.offset(),
                frame: FramedText::from(text),
                accepted: Instant::now(),
                event: true,
                tag: None,
            };
            Some(flushed.or(Self::enqueue_round(state, event)))
        })
    }
}

/// The top-level `key` of a message's `data` (an object), as its JSON text: what
/// `conflate_key` separates conflated messages by.
fn conflate_value(data: &str, key: &str) -> Option<Box<str>> {
    let object: std::collections::HashMap<&str, &serde_json::value::RawValue> =
        serde_json::from_str(data).ok()?;
    object.get(key).map(|value| Box::from(value.get()))
}
