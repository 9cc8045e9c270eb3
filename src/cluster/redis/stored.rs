//! A message with an id as a read found it in Redis: its state, parsed from the read
//! script's reply, and the frames and history entries made from it.

use redis::Value;

use super::values::{as_string, as_u64};
use crate::{
    hub::HistoryData,
    protocol::{self, ChannelName, MessageState, MessageStatus, Offset},
};

/// A message with an id as a read found it in Redis.
#[derive(Debug, Clone)]
pub(super) struct StoredState {
    pub(super) seq: u64,
    pub(super) id: String,
    pub(super) status: MessageStatus,
    pub(super) stream: bool,
    /// `data` since a finish or an update replaced it.
    pub(super) replaced: Option<String>,
    /// The seq of its last operation, once it changed.
    pub(super) last: Option<u64>,
    pub(super) touched_ms: u64,
    pub(super) text: Option<String>,
    /// `data` as published.
    pub(super) published: String,
}

impl StoredState {
    /// One `{seq, id, status, stream, replaced, last, touched, text, published}` of the
    /// read script's reply.
    pub(super) fn parse(value: Value) -> Option<Self> {
        let Value::Array(parts) = value else {
            return None;
        };
        let [
            seq,
            id,
            status,
            stream,
            replaced,
            last,
            touched,
            text,
            published,
        ] = <[Value; 9]>::try_from(parts).ok()?;
        let optional = |value: &Value| match value {
            Value::Nil => Some(None),
            other => as_string(other).map(Some),
        };
        Some(Self {
            seq: as_u64(&seq)?,
            id: as_string(&id)?,
            status: parse_status(&as_string(&status)?)?,
            stream: as_string(&stream)? == "1",
            replaced: optional(&replaced)?,
            last: optional(&last)?.and_then(|last| last.parse().ok()),
            touched_ms: as_u64(&touched)?,
            text: optional(&text)?,
            published: as_string(&published)?,
        })
    }

    /// The seq of its last operation.
    pub(super) fn last(&self) -> u64 {
        self.last.unwrap_or(self.seq)
    }

    fn data(&self) -> Option<&str> {
        match (&self.replaced, self.status) {
            (_, MessageStatus::Deleted) => None,
            (Some(data), _) => Some(data),
            (None, _) => Some(&self.published),
        }
    }

    fn state(&self, epoch: u64) -> MessageState<'_> {
        MessageState {
            created: Offset {
                epoch,
                seq: self.seq,
            },
            last: Offset {
                epoch,
                seq: self.last(),
            },
            message_id: &self.id,
            status: self.status,
            data: self.data(),
            text: self.text.as_deref(),
        }
    }

    /// The frame that brings a client up to it: as published until it changed, then its
    /// state frame (what a node's own history replays).
    pub(super) fn frame(&self, channel: &ChannelName, epoch: u64) -> String {
        if self.last() == self.seq {
            let offset = Offset {
                epoch,
                seq: self.seq,
            };
            protocol::encode_message_with_id(
                channel,
                offset,
                &self.id,
                self.stream,
                &self.published,
            )
        } else {
            protocol::encode_state(channel, &self.state(epoch))
        }
    }

    /// Its entry of a history answer.
    pub(super) fn history_data(&self, epoch: u64) -> HistoryData {
        HistoryData::from_state(self.published.clone(), &self.state(epoch))
    }
}

pub(super) fn parse_status(text: &str) -> Option<MessageStatus> {
    Some(match text {
        "open" => MessageStatus::Open,
        "finished" => MessageStatus::Finished,
        "abandoned" => MessageStatus::Abandoned,
        "deleted" => MessageStatus::Deleted,
        _ => return None,
    })
}
