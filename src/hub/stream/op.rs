//! The operations on messages with ids, who asks for them, and what they answer.

use super::message::{Message, Owner};
use crate::{
    config::EditRule,
    protocol::{AbandonReason, ErrorCode, MessageStatus, Offset},
};

/// Who asks for an operation: a backend may change any message; a client what its
/// namespace's `edit` rule lets it.
#[derive(Debug, Clone)]
pub enum Editor {
    Backend,
    Client { owner: Owner, rule: EditRule },
}

impl Editor {
    pub(super) fn owner(&self) -> Owner {
        match self {
            Editor::Backend => Owner::Backend,
            Editor::Client { owner, .. } => owner.clone(),
        }
    }

    pub(super) fn may_change(&self, message: &Message) -> Result<(), OpError> {
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
/// [`crate::protocol::check_message_id`].
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
    pub(super) fn size(&self) -> usize {
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
    /// An abandon for idleness found the stream active again (an append came after the
    /// sweep saw it idle): nothing done. The server's own; never answered to a client.
    #[error("the stream is no longer idle")]
    NotIdle,
    /// Asked of the hub of a clustered node, where Redis orders and checks operations
    /// (`Bus::apply`): the server's own; never answered to a client.
    #[error("on a clustered node, operations go through the bus")]
    Clustered,
}

impl OpError {
    /// The error code a client's `error` frame says (the control API answers with the
    /// same code and the status `control::error` gives it).
    #[must_use]
    pub fn code(self) -> ErrorCode {
        match self {
            OpError::Behind => ErrorCode::Unavailable,
            OpError::NotFound => ErrorCode::NotFound,
            OpError::NotOpen(_) | OpError::NotIdle | OpError::NotStream => ErrorCode::Conflict,
            OpError::NoHistory | OpError::Clustered => ErrorCode::BadRequest,
            OpError::TextTooLarge(_) | OpError::TooManyOpen(_) => ErrorCode::LimitExceeded,
            OpError::NotYours | OpError::EditingOff => ErrorCode::Forbidden,
        }
    }
}
