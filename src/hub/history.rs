//! History reads (`history` frame, `GET /v1/channels/{channel}/history`): a page of what a
//! channel keeps, one entry per message, with the state of messages that have an id.

use bytes::Bytes;
use tokio::time::Instant;

use super::{
    Hub,
    channel::{Channel, Entry},
};
use crate::protocol::{self, ChannelName, MessageState, MessageStatus, Offset};

/// A history read (`history` frame, `GET /v1/history`): the channel's position and a page of
/// the messages it keeps.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// The channel's current position.
    pub offset: Offset,
    /// With `since`: whether the messages returned start right after it.
    pub recovered: Option<bool>,
    /// `(offset, data)` pairs, oldest first.
    pub messages: Vec<(Offset, HistoryData)>,
}

/// A message as history holds it: its `data`, a slice of the shared frame (no copy), and
/// for a message with an id, its state (copied: it changes).
#[derive(Debug, Clone)]
pub struct HistoryData {
    data: Bytes,
    message: Option<Box<StoredMessage>>,
}

/// A message with an id as a history read found it.
#[derive(Debug, Clone)]
struct StoredMessage {
    created: Offset,
    last: Offset,
    message_id: Box<str>,
    status: MessageStatus,
    data: Option<Box<str>>,
    text: Option<String>,
}

impl HistoryData {
    /// Wraps `data` read from elsewhere (e.g. Redis).
    #[must_use]
    pub fn from_data(data: String) -> Self {
        Self {
            data: Bytes::from(data),
            message: None,
        }
    }

    /// A message with an id read from elsewhere: `published`, its `data` as published,
    /// and its state now.
    #[must_use]
    pub fn from_state(published: String, state: &MessageState<'_>) -> Self {
        let replaced = state.data.filter(|data| *data != published);
        Self {
            message: Some(Box::new(StoredMessage {
                created: state.created,
                last: state.last,
                message_id: state.message_id.into(),
                status: state.status,
                data: replaced.map(Into::into),
                text: state.text.map(str::to_owned),
            })),
            data: Bytes::from(published),
        }
    }

    fn from_entry(entry: &Entry, state: &Channel) -> Self {
        let json = entry.frame.json_bytes();
        // `data` runs from `data_start` to the frame's closing brace.
        let data = json.slice(entry.data_start as usize..json.len() - 1);
        let message = state.message_state(entry).map(|message| {
            Box::new(StoredMessage {
                created: message.created,
                last: message.last,
                message_id: message.message_id.into(),
                status: message.status,
                data: message.data.map(Into::into),
                text: message.text.map(str::to_owned),
            })
        });
        Self { data, message }
    }

    /// `data` as published.
    #[must_use]
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.data).expect("cut at JSON token boundaries of a str")
    }

    /// The offset of the message's last operation (an append, an edit), when it changed
    /// since its publish.
    #[must_use]
    pub fn updated(&self) -> Option<Offset> {
        self.message
            .as_ref()
            .filter(|message| message.last != message.created)
            .map(|message| message.last)
    }

    /// Bytes its entry takes in a history answer, about.
    #[must_use]
    pub fn size(&self) -> usize {
        let state = self.message.as_ref().map_or(self.data.len(), |message| {
            message
                .data
                .as_ref()
                .map_or(self.data.len(), |data| data.len())
                + message.text.as_ref().map_or(0, String::len)
                + message.message_id.len()
                + 64
        });
        state + 48
    }

    /// Writes its entry of a history answer (`{"offset":..,"data":..}`, with the message's
    /// id, status, text and `updated` when it has an id).
    pub fn write_entry(&self, out: &mut String, offset: Offset) {
        let state = self.message.as_ref().map(|message| MessageState {
            created: message.created,
            last: message.last,
            message_id: &message.message_id,
            status: message.status,
            data: match &message.data {
                Some(data) => Some(data),
                None if message.status == MessageStatus::Deleted => None,
                None => Some(self.as_str()),
            },
            text: message.text.as_deref(),
        });
        protocol::push_history_entry(out, offset, self.as_str(), state.as_ref());
    }
}

impl Hub {
    /// The history `channel` keeps: its namespace's `history_size` and `history_ttl`, or
    /// `history.size` and `history.ttl`.
    #[must_use]
    pub fn history_limit(&self, channel: &str) -> super::HistoryLimit {
        self.retention.limit(self.retention.index_for(channel))
    }

    /// Reads history after `since` (or the newest messages), at most `limit`, oldest first.
    #[must_use]
    pub fn history(
        &self,
        channel: &ChannelName,
        since: Option<Offset>,
        limit: usize,
    ) -> HistoryPage {
        let read_history = |state: &mut Channel| {
            state.expire(&self.retention, Instant::now());
            let to_pair = |entry: &Entry| {
                (
                    Offset {
                        epoch: state.epoch,
                        seq: entry.seq,
                    },
                    HistoryData::from_entry(entry, state),
                )
            };
            match since {
                Some(since) => match state.changes_after(since) {
                    Some(entries) => HistoryPage {
                        offset: state.offset(),
                        recovered: Some(true),
                        messages: entries.into_iter().take(limit).map(to_pair).collect(),
                    },
                    None => HistoryPage {
                        offset: state.offset(),
                        recovered: Some(false),
                        messages: Vec::new(),
                    },
                },
                None => {
                    let skip = state.history.len().saturating_sub(limit);
                    HistoryPage {
                        offset: state.offset(),
                        recovered: None,
                        messages: state.history.range(skip..).map(to_pair).collect(),
                    }
                }
            }
        };
        // Reading history of an unknown channel creates it, so the reply carries the epoch a
        // later publish will use and clients can start from it.
        self.with_channel(channel, |_, state| read_history(state))
    }
}
