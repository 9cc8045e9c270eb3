//! What a channel keeps of its messages with ids: a message as history holds it (its state
//! and its state frame), and the appends its coalescing holds (`coalesce`).

use std::sync::Arc;

use tokio::time::Instant;

use crate::{
    hub::{ConnId, FramedText},
    protocol::{self, ChannelName, MessageState, MessageStatus, Offset},
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

/// A message published with an id, as it stands.
#[derive(Debug, Clone)]
pub(in crate::hub) struct Message {
    pub(in crate::hub) id: Box<str>,
    pub(in crate::hub) owner: Owner,
    pub(in crate::hub) status: MessageStatus,
    /// `data` since a finish or an update replaced it; `None`: as published (in the
    /// entry's frame), or deleted.
    pub(in crate::hub) data: Option<Box<str>>,
    /// A stream's text; `None` for a message published whole, and once deleted.
    pub(in crate::hub) text: Option<String>,
    /// The state frame, built when a replay first needs it after a change.
    pub(in crate::hub) state_frame: Option<FramedText>,
}

/// What a message costs beyond its entry: the box, its id, data, text and state frame.
const MESSAGE_OVERHEAD: usize = std::mem::size_of::<Message>() + 16;

impl Message {
    pub(in crate::hub) fn cost(&self) -> usize {
        MESSAGE_OVERHEAD
            + self.id.len()
            + self.data.as_ref().map_or(0, |data| data.len() + 16)
            + self.text.as_ref().map_or(0, |text| text.capacity() + 16)
            + self
                .state_frame
                .as_ref()
                .map_or(0, |frame| frame.len() + 26)
    }

    pub(in crate::hub) fn is_open(&self) -> bool {
        self.status == MessageStatus::Open
    }

    /// Its `data` now: `None` once deleted.
    pub(in crate::hub) fn current_data<'a>(
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

    pub(in crate::hub) fn state<'a>(
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
    pub(in crate::hub) fn build_state_frame(
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

/// One `append` frame being held.
#[derive(Debug)]
pub(super) struct Held {
    pub(super) message_id: Box<str>,
    pub(super) text: String,
    /// The offset of the last append merged in.
    pub(super) offset: Offset,
    /// When the first one was accepted, for `switchboard_publish_to_enqueue_seconds`.
    pub(super) accepted: Instant,
}

/// A channel's coalescing state, allocated on its first append.
#[derive(Debug, Default)]
pub(in crate::hub) struct Coalescing {
    pub(super) held: Vec<Held>,
    /// A subscribe came since the last hold: the next append starts a frame of its own.
    pub(super) sealed: bool,
    /// When the channel last sent an append frame.
    pub(super) last_sent: Option<Instant>,
    /// The channel waits in the coalescer's queue.
    pub(super) scheduled: bool,
}
