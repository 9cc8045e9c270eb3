//! Messages with ids: deduplicated publishes, streams that grow by appends, edits and
//! deletes (see `docs/streams.md`).
//!
//! Every operation takes the channel's next offset under its state lock, like a publish,
//! and changes the message's history entry in place: history keeps one entry per message,
//! whose `last` is the seq of its latest operation. Resume replays the entries changed
//! after its `since` (see [`Channel::changes_after`]); an entry that changed since its
//! publish is replayed as its state frame, built once and kept until it changes again.

use std::sync::{Arc, atomic::Ordering};

use tokio::time::Instant;

use super::{
    ConnId, FramedText, Hub, WriteBatch,
    channel::{Channel, Entry, ID_OVERHEAD, KnownId},
    fanout::{Queued, start_round},
};
use crate::{
    config::EditRule,
    protocol::{self, AbandonReason, ChannelName, ErrorCode, MessageState, MessageStatus, Offset},
    telemetry,
};

/// Who created a message, for the namespaces' `edit = "own"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A backend, through the control API.
    Backend,
    /// An authenticated client's user (any of its connections).
    User(Arc<str>),
    /// An anonymous client's connection.
    Conn(ConnId),
}

/// Who asks for an operation: a backend may change any message; a client what its
/// namespace's `edit` rule lets it.
#[derive(Debug, Clone)]
pub enum Editor {
    Backend,
    Client { owner: Owner, rule: EditRule },
}

impl Editor {
    fn owner(&self) -> Owner {
        match self {
            Editor::Backend => Owner::Backend,
            Editor::Client { owner, .. } => owner.clone(),
        }
    }

    fn may_change(&self, message: &Message) -> Result<(), OpError> {
        match self {
            Editor::Backend => Ok(()),
            Editor::Client { rule, owner } => match rule {
                EditRule::Any => Ok(()),
                EditRule::None => Err(OpError::EditingOff),
                EditRule::Own if *owner == message.owner => Ok(()),
                EditRule::Own => Err(OpError::NotYours),
            },
        }
    }
}

/// One operation on a channel (see `docs/streams.md`). Payloads are valid JSON (`data`) and
/// text, checked for size by the caller; ids are checked with
/// [`protocol::check_message_id`].
#[derive(Debug, Clone, Copy)]
pub enum Op<'a> {
    /// A message: with a `message_id` deduplicated, and with `stream` an open stream whose
    /// `data` is its metadata.
    Publish {
        data: &'a str,
        message_id: Option<&'a str>,
        stream: bool,
    },
    Append {
        message_id: &'a str,
        text: &'a str,
    },
    Finish {
        message_id: &'a str,
        data: Option<&'a str>,
    },
    Update {
        message_id: &'a str,
        data: Option<&'a str>,
        text: Option<&'a str>,
    },
    Delete {
        message_id: &'a str,
    },
    Abandon {
        message_id: &'a str,
        reason: AbandonReason,
    },
}

impl Op<'_> {
    /// Bytes it brings, for the fan-out's back-pressure.
    fn size(&self) -> usize {
        match *self {
            Op::Publish { data, .. } => data.len(),
            Op::Append { text, .. } => text.len(),
            Op::Finish { data, .. } => data.map_or(0, str::len),
            Op::Update { data, text, .. } => data.map_or(0, str::len) + text.map_or(0, str::len),
            Op::Delete { .. } | Op::Abandon { .. } => 0,
        }
    }

    /// The operation's name, for metric labels.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Op::Publish { .. } => "publish",
            Op::Append { .. } => "append",
            Op::Finish { .. } => "finish",
            Op::Update { .. } => "update",
            Op::Delete { .. } => "delete",
            Op::Abandon { .. } => "abandon",
        }
    }
}

/// What an operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Its offset; for a duplicate, the first one's.
    pub offset: Offset,
    /// A publish whose `message_id` the channel knew (or a delete of a deleted message):
    /// nothing was done.
    pub duplicate: bool,
}

/// Why an operation was refused. Nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// The channel's fan-out is a whole queue behind its publishers: retry later.
    #[error("the channel's fan-out is behind its publishers; retry later")]
    Behind,
    /// No message with this id in the channel's history: it never was, or it left history.
    #[error("no message with this message_id in the channel's history")]
    NotFound,
    /// The message is not open (finished, abandoned or deleted): appends and finishes are
    /// refused; an update of a deleted message too.
    #[error("the message is {}, not open", .0.as_str())]
    NotOpen(MessageStatus),
    /// Text for a message published whole: only streams have text.
    #[error("the message is not a stream: it has no text")]
    NotStream,
    /// The text would be longer than `streams.max_text_bytes`.
    #[error("the message's text would exceed streams.max_text_bytes ({0} bytes)")]
    TextTooLarge(usize),
    /// The channel holds `streams.max_open_per_channel` open streams: finish one first.
    #[error("the channel already has streams.max_open_per_channel ({0}) open streams")]
    TooManyOpen(usize),
    /// `edit = "own"` and the message is someone else's.
    #[error("the message was created by someone else (the namespace's edit rule is `own`)")]
    NotYours,
    /// `edit = "none"` in the channel's namespace.
    #[error("changing messages is off in this channel's namespace (edit = \"none\")")]
    EditingOff,
    /// `history.size` is 0: a message with an id lives in history.
    #[error("message ids and streams need history (history.size > 0)")]
    NoHistory,
    /// The clustered bus does not carry them yet.
    #[error("message ids and streams are not supported with cluster.redis in this release")]
    Clustered,
}

impl OpError {
    /// The error code clients and the HTTP API see.
    #[must_use]
    pub fn code(self) -> ErrorCode {
        match self {
            OpError::Behind => ErrorCode::Unavailable,
            OpError::NotFound => ErrorCode::NotFound,
            OpError::NotOpen(_) => ErrorCode::Conflict,
            OpError::NotStream | OpError::NoHistory | OpError::Clustered => ErrorCode::BadRequest,
            OpError::TextTooLarge(_) | OpError::TooManyOpen(_) => ErrorCode::LimitExceeded,
            OpError::NotYours | OpError::EditingOff => ErrorCode::Forbidden,
        }
    }

    /// The HTTP status of the control API's answer.
    #[must_use]
    pub fn status(self) -> u16 {
        match self {
            OpError::Behind => 503,
            OpError::NotFound => 404,
            OpError::NotOpen(_) => 409,
            OpError::NotStream
            | OpError::NoHistory
            | OpError::Clustered
            | OpError::TooManyOpen(_) => 422,
            OpError::TextTooLarge(_) => 413,
            OpError::NotYours | OpError::EditingOff => 403,
        }
    }
}

/// A message published with an id, as it stands.
#[derive(Debug, Clone)]
pub(super) struct Message {
    pub(super) id: Box<str>,
    pub(super) owner: Owner,
    pub(super) status: MessageStatus,
    /// `data` since a finish or an update replaced it; `None`: as published (in the
    /// entry's frame), or deleted.
    pub(super) data: Option<Box<str>>,
    /// A stream's text; `None` for a message published whole, and once deleted.
    pub(super) text: Option<String>,
    /// The state frame, built when a replay first needs it after a change.
    pub(super) state_frame: Option<FramedText>,
}

/// What a message costs beyond its entry: the box, its id, data, text and state frame.
const MESSAGE_OVERHEAD: usize = std::mem::size_of::<Message>() + 16;

impl Message {
    pub(super) fn cost(&self) -> usize {
        MESSAGE_OVERHEAD
            + self.id.len()
            + self.data.as_ref().map_or(0, |data| data.len() + 16)
            + self.text.as_ref().map_or(0, |text| text.capacity() + 16)
            + self
                .state_frame
                .as_ref()
                .map_or(0, |frame| frame.len() + 26)
    }

    pub(super) fn is_open(&self) -> bool {
        self.status == MessageStatus::Open
    }

    /// Its `data` now: `None` once deleted.
    pub(super) fn current_data<'a>(
        &'a self,
        frame: &'a FramedText,
        data_start: u32,
    ) -> Option<&'a str> {
        if self.status == MessageStatus::Deleted {
            return None;
        }
        Some(match &self.data {
            Some(data) => data,
            None => {
                let json = frame.json();
                &json[data_start as usize..json.len() - 1]
            }
        })
    }

    pub(super) fn state<'a>(
        &'a self,
        epoch: u64,
        seq: u64,
        last: u64,
        frame: &'a FramedText,
        data_start: u32,
    ) -> MessageState<'a> {
        MessageState {
            created: Offset { epoch, seq },
            last: Offset { epoch, seq: last },
            message_id: &self.id,
            status: self.status,
            data: self.current_data(frame, data_start),
            text: self.text.as_deref(),
        }
    }

    /// Builds the state frame unless it has one. Its bytes count against the history
    /// budget with the message (the caller settles the charge).
    pub(super) fn build_state_frame(
        &mut self,
        channel: &ChannelName,
        epoch: u64,
        seq: u64,
        last: u64,
        frame: &FramedText,
        data_start: u32,
    ) -> usize {
        if self.state_frame.is_some() {
            return 0;
        }
        let text =
            protocol::encode_state(channel, &self.state(epoch, seq, last, frame, data_start));
        let built = FramedText::from(text);
        let added = built.len() + 26;
        self.state_frame = Some(built);
        added
    }
}

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
        if self.retention.size == 0 {
            return Err(OpError::NoHistory);
        }
        let mut round = None;
        let applied = self.with_channel(channel, |slot, state| {
            let mut subscribers = None;
            let applied = self.apply_locked(state, channel, op, editor, &mut subscribers)?;
            round = subscribers.map(|subscribers| (Arc::clone(slot), subscribers));
            Ok::<_, OpError>(applied)
        });
        let applied = applied.inspect_err(|err| {
            if *err == OpError::Behind {
                telemetry::metrics()
                    .publishes_refused_fanout_behind
                    .increment(1);
            }
            telemetry::stream_op_refused(err.code());
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
    fn apply_locked(
        &self,
        state: &mut Channel,
        channel: &ChannelName,
        op: &Op<'_>,
        editor: &Editor,
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
            if let Some(known) = state.ids.get(message_id) {
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
            if stream && state.open >= limits.max_open_per_channel {
                return Err(OpError::TooManyOpen(limits.max_open_per_channel));
            }
            if behind(state) {
                return Err(OpError::Behind);
            }
            let offset = state.next_offset();
            let text = protocol::encode_message_with_id(channel, offset, message_id, stream, data);
            let data_start = u32::try_from(text.len() - data.len() - 1)
                .expect("payload size is bounded by config far below 4 GiB");
            let frame = FramedText::from(text);
            *round = Self::enqueue_round(state, Queued::message(offset, &frame, now));
            let entry = Entry {
                seq: offset.seq,
                last: offset.seq,
                published_at: now,
                frame,
                data_start,
                message: Some(Box::new(Message {
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
                })),
            };
            let known = KnownId {
                seq: offset.seq,
                at: now,
            };
            if state.ids.insert(message_id.into(), known).is_none() {
                self.retention
                    .used_bytes
                    .fetch_add(message_id.len() + ID_OVERHEAD, Ordering::Relaxed);
            }
            state.open += usize::from(stream);
            state.remember(entry, &self.retention, now);
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
        let index = state.find(message_id).ok_or(OpError::NotFound)?;
        let entry = &state.history[index];
        let message = entry
            .message
            .as_deref()
            .expect("ids name entries with a message");
        editor.may_change(message)?;
        // Check everything before changing anything.
        let status = message.status;
        let text_len = message.text.as_ref().map(String::len);
        match *op {
            Op::Append { text, .. } => {
                if status != MessageStatus::Open {
                    return Err(OpError::NotOpen(status));
                }
                let len = text_len.ok_or(OpError::NotStream)?;
                if len + text.len() > limits.max_text_bytes {
                    return Err(OpError::TextTooLarge(limits.max_text_bytes));
                }
            }
            Op::Finish { .. } | Op::Abandon { .. } if status != MessageStatus::Open => {
                return Err(OpError::NotOpen(status));
            }
            Op::Update { text, .. } => {
                if status == MessageStatus::Deleted {
                    return Err(OpError::NotOpen(status));
                }
                if let Some(text) = text {
                    text_len.ok_or(OpError::NotStream)?;
                    if text.len() > limits.max_text_bytes {
                        return Err(OpError::TextTooLarge(limits.max_text_bytes));
                    }
                }
            }
            Op::Delete { .. } if status == MessageStatus::Deleted => {
                return Ok(Applied {
                    offset: Offset {
                        epoch: state.epoch,
                        seq: entry.last,
                    },
                    duplicate: true,
                });
            }
            _ => {}
        }
        if behind(state) {
            return Err(OpError::Behind);
        }
        let offset = state.next_offset();
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
                protocol::encode_append(channel, offset, message_id, text)
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
        state.changed += usize::from(first_change);
        state.open -= usize::from(closed);
        if after >= before {
            self.retention
                .used_bytes
                .fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.retention
                .used_bytes
                .fetch_sub(before - after, Ordering::Relaxed);
        }
        let frame = FramedText::from(text);
        *round = Self::enqueue_round(state, Queued::message(offset, &frame, now));
        // A message that grew may take the node past its history budget.
        state.trim_to_budget(&self.retention);
        Ok(Applied {
            offset,
            duplicate: false,
        })
    }

    /// Abandons the open streams that got no operation for `streams.idle_timeout`; run by
    /// the sweep. Returns how many.
    pub(super) fn abandon_idle(&self, now: Instant) -> usize {
        if self.settings.remote {
            return 0;
        }
        let idle = self.settings.streams.idle_timeout;
        let mut stale: Vec<(ChannelName, Box<str>)> = Vec::new();
        for shard in &self.shards {
            let slots: Vec<_> = super::read(&shard.channels)
                .iter()
                .map(|(name, slot)| (name.clone(), Arc::clone(slot)))
                .collect();
            for (name, slot) in slots {
                let state = super::lock(&slot.state);
                if state.open == 0 {
                    continue;
                }
                for entry in &state.history {
                    if let Some(message) = &entry.message
                        && message.is_open()
                        && now.duration_since(entry.published_at) >= idle
                    {
                        stale.push((name.clone(), message.id.clone()));
                    }
                }
            }
        }
        let mut writes = self.write_batch();
        let mut abandoned = 0;
        for (channel, message_id) in &stale {
            let op = Op::Abandon {
                message_id,
                reason: AbandonReason::Idle,
            };
            if self
                .apply(channel, &op, &Editor::Backend, &mut writes)
                .is_ok()
            {
                abandoned += 1;
            }
        }
        abandoned
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
