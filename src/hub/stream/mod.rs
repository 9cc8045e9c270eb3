//! Messages with ids: deduplicated publishes, streams that grow by appends, edits and
//! deletes (see `docs/streams.md`).
//!
//! Every operation takes the channel's next offset under its state lock, like a publish,
//! and changes the message's history entry in place: history keeps one entry per message,
//! whose `last` is the seq of its latest operation. Resume replays the entries changed
//! after its `since` (see [`Channel::changes_after`]); an entry that changed since its
//! publish is replayed as its state frame, built once and kept until it changes again.

mod check;
mod coalesce;
pub(super) mod message;
mod op;
mod remote;

pub use self::message::Owner;
pub use self::op::{Applied, Editor, Op, OpError};
use self::{coalesce::Appended, remote::op_frame};
pub(super) use self::{coalesce::Coalescer, message::Message};

use std::sync::{Arc, atomic::Ordering};

use tokio::time::Instant;

use super::{
    FramedText, Hub, WriteBatch,
    channel::Queued,
    channel::{Channel, Entry, ID_OVERHEAD, KnownId},
    fanout::start_round,
};
use crate::{
    protocol::{self, AbandonReason, ChannelName, MessageState, MessageStatus, Offset},
    telemetry,
};

impl Hub {
    /// Applies one operation to `channel` and fans its frame out (see `docs/streams.md`):
    /// ordered like a publish, never waiting on a subscriber. A small channel's round
    /// leaves the connections it claimed in `writes`, as [`Hub::publish_batched`] does.
    ///
    /// # Errors
    /// [`OpError`] when refused; nothing was changed then.
    pub fn apply(
        &self,
        channel: &ChannelName,
        op: &Op<'_>,
        editor: &Editor,
        writes: &mut WriteBatch,
    ) -> Result<Applied, OpError> {
        if let Op::Publish {
            data,
            message_id: None,
            stream: false,
        } = *op
        {
            let offset = self
                .publish_batched(channel, data, writes)
                .map_err(|_| OpError::Behind)?;
            return Ok(Applied {
                offset,
                duplicate: false,
            });
        }
        if self.settings.remote {
            return Err(OpError::Clustered);
        }
        if self.history_limit(channel.as_str()).size == 0 {
            return Err(OpError::NoHistory);
        }
        let mut round = None;
        let mut idle = false;
        let applied = self.with_channel(channel, |slot, state| {
            let mut subscribers = None;
            let applied = self.apply_locked(state, channel, op, editor, None, &mut subscribers);
            round = subscribers.map(|subscribers| (Arc::clone(slot), subscribers));
            idle = state.is_idle();
            applied
        });
        if idle {
            // A refused change to a channel nobody holds (a client naming random
            // channels) leaves nothing behind.
            self.drop_if_idle(channel);
        }
        let applied = applied.inspect_err(|err| {
            if *err == OpError::Behind {
                telemetry::metrics()
                    .publishes_refused_fanout_behind
                    .increment(1);
            }
            if *err != OpError::NotIdle {
                telemetry::stream_op_refused(err.code());
            }
        })?;
        if let Some((slot, subscribers)) = round {
            start_round(&slot, subscribers, self.workers.as_ref(), writes);
        }
        if !applied.duplicate {
            telemetry::stream_op(op.label());
        }
        Ok(applied)
    }

    /// [`Hub::apply`] under the channel's state lock: checks, then changes and enqueues.
    /// `ordered`: the operation was checked and ordered by a remote bus at this offset
    /// (the channel's seq already stands there): applied without checks; see
    /// [`Hub::deliver_op_batched`].
    pub(super) fn apply_locked(
        &self,
        state: &mut Channel,
        channel: &ChannelName,
        op: &Op<'_>,
        editor: &Editor,
        ordered: Option<Offset>,
        round: &mut Option<usize>,
    ) -> Result<Applied, OpError> {
        let now = Instant::now();
        let limits = &self.settings.streams;
        let behind = |state: &Channel| {
            state.subscribed > 0
                && (state.outbox.len() >= self.settings.queue_messages
                    || state.outbox_bytes + op.size() > self.settings.queue_bytes)
        };
        if let Op::Publish {
            data,
            message_id: Some(message_id),
            stream,
        } = *op
        {
            if let Some(known) = state.ids.get(message_id).filter(|_| ordered.is_none()) {
                let held = state.find(message_id).is_some();
                if held || now.duration_since(known.at) < self.retention.dedupe_window {
                    telemetry::metrics().publishes_deduplicated.increment(1);
                    return Ok(Applied {
                        offset: Offset {
                            epoch: state.epoch,
                            seq: known.seq,
                        },
                        duplicate: true,
                    });
                }
            }
            if ordered.is_none() {
                if stream && state.open as usize >= limits.max_open_per_channel {
                    return Err(OpError::TooManyOpen(limits.max_open_per_channel));
                }
                if behind(state) {
                    return Err(OpError::Behind);
                }
            }
            let offset = ordered.unwrap_or_else(|| state.next_offset());
            let json = protocol::encode_message_with_id(channel, offset, message_id, stream, data);
            let message = Box::new(Message {
                id: message_id.into(),
                owner: editor.owner(),
                status: if stream {
                    MessageStatus::Open
                } else {
                    MessageStatus::Finished
                },
                data: None,
                text: stream.then(String::new),
                state_frame: None,
            });
            state.open += u32::from(stream);
            *round = self.append_message(state, channel, offset, json, data.len(), Some(message));
            let known = KnownId {
                seq: offset.seq,
                at: now,
            };
            if state.ids.insert(message_id.into(), known) {
                self.retention
                    .used_bytes
                    .fetch_add(message_id.len() + ID_OVERHEAD, Ordering::Relaxed);
            }
            return Ok(Applied {
                offset,
                duplicate: false,
            });
        }
        let message_id = match *op {
            Op::Publish { .. } => unreachable!("publishes without an id go to publish_batched"),
            Op::Append { message_id, .. }
            | Op::Finish { message_id, .. }
            | Op::Update { message_id, .. }
            | Op::Delete { message_id }
            | Op::Abandon { message_id, .. } => message_id,
        };
        let index = match (state.find(message_id), ordered) {
            (Some(index), _) => index,
            (None, Some(offset)) => {
                *round = Self::apply_unheld(state, channel, op, offset, now);
                return Ok(Applied {
                    offset,
                    duplicate: false,
                });
            }
            (None, None) => return Err(OpError::NotFound),
        };
        if let Some(offset) = ordered {
            // What a pinned subscribe merges: the operation's own frame.
            if state.pins > 0 {
                let frame = FramedText::from(op_frame(channel, offset, op));
                state.remember_pending(offset.seq, &frame);
            }
        } else {
            self.check(state, index, op, editor, now)?;
            if let Some(duplicate) = Self::deleted_already(state, index, op) {
                return Ok(duplicate);
            }
            if behind(state) {
                return Err(OpError::Behind);
            }
        }
        let offset = ordered.unwrap_or_else(|| state.next_offset());
        let before = state.history[index].cost();
        let entry = &mut state.history[index];
        let message = entry
            .message
            .as_deref_mut()
            .expect("ids name entries with a message");
        let was_open = message.is_open();
        let text = match *op {
            Op::Publish { .. } => unreachable!("handled above"),
            Op::Append { text, .. } => {
                message.text.get_or_insert_default().push_str(text);
                // Framed below, unless coalescing holds it.
                String::new()
            }
            Op::Finish { data, .. } => {
                message.status = MessageStatus::Finished;
                if let Some(data) = data {
                    message.data = Some(data.into());
                }
                protocol::encode_finish(channel, offset, message_id, data)
            }
            Op::Update { data, text, .. } => {
                if let Some(data) = data {
                    message.data = Some(data.into());
                }
                if let Some(text) = text {
                    message.text = Some(text.to_owned());
                }
                protocol::encode_update(channel, offset, message_id, data, text)
            }
            Op::Delete { .. } => {
                message.status = MessageStatus::Deleted;
                message.data = None;
                message.text = None;
                protocol::encode_delete(channel, offset, message_id)
            }
            Op::Abandon { reason, .. } => {
                message.status = MessageStatus::Abandoned;
                protocol::encode_abandon(channel, offset, message_id, reason)
            }
        };
        let closed = was_open && !message.is_open();
        message.state_frame = None;
        let first_change = entry.last == entry.seq;
        entry.last = offset.seq;
        entry.published_at = now;
        let after = entry.cost();
        state.changed += u32::from(first_change);
        state.open -= u32::from(closed);
        if after >= before {
            self.retention
                .used_bytes
                .fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.retention
                .used_bytes
                .fetch_sub(before - after, Ordering::Relaxed);
        }
        *round = match *op {
            Op::Append { text, .. } => {
                match self.coalesce_append(state, channel, message_id, text, offset, now) {
                    Appended::Held => None,
                    Appended::Now => {
                        let frame = FramedText::from(protocol::encode_append(
                            channel, offset, message_id, text,
                        ));
                        Self::enqueue_round(state, Queued::message(offset, &frame, now))
                    }
                }
            }
            _ => {
                let flushed = Self::flush_held(state, channel);
                let frame = FramedText::from(text);
                flushed.or(Self::enqueue_round(
                    state,
                    Queued::message(offset, &frame, now),
                ))
            }
        };
        // A message that grew may take the node past its history budget.
        state.trim_to_budget(&self.retention);
        Ok(Applied {
            offset,
            duplicate: false,
        })
    }

    /// Adds the open streams of `channel` that got no operation for
    /// `streams.idle_timeout` to `stale`; the sweep calls it under the channel's lock.
    pub(super) fn find_idle_streams(
        &self,
        name: &ChannelName,
        state: &Channel,
        now: Instant,
        stale: &mut Vec<(ChannelName, Box<str>)>,
    ) {
        if state.open == 0 || self.settings.remote {
            return;
        }
        let idle = self.settings.streams.idle_timeout;
        for entry in &state.history {
            if let Some(message) = &entry.message
                && message.is_open()
                && now.duration_since(entry.published_at) >= idle
            {
                stale.push((name.clone(), message.id.clone()));
            }
        }
    }

    /// Abandons the streams the sweep found idle, unless one got an operation since
    /// (checked again under the channel's lock).
    pub(super) fn abandon_idle(&self, stale: &[(ChannelName, Box<str>)]) {
        let mut writes = self.write_batch();
        for (channel, message_id) in stale {
            let op = Op::Abandon {
                message_id,
                reason: AbandonReason::Idle,
            };
            let _ = self.apply(channel, &op, &Editor::Backend, &mut writes);
        }
    }
}

impl Channel {
    /// The state of the message in history with this id, as history reads give it.
    pub(super) fn message_state<'a>(&self, entry: &'a Entry) -> Option<MessageState<'a>> {
        let message = entry.message.as_deref()?;
        Some(message.state(
            self.epoch,
            entry.seq,
            entry.last,
            &entry.frame,
            entry.data_start,
        ))
    }
}

#[cfg(test)]
mod tests;
