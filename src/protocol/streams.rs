//! Message ids and the frames of message streams: appends, finishes, edits, deletes and the
//! state frame that carries a message whole (see `docs/streams.md`).

use std::fmt::Write as _;

use super::{ChannelName, Offset, encode::push_json_string};

/// The longest `message_id`, in bytes.
pub const MAX_MESSAGE_ID_BYTES: usize = 128;

/// Why a `message_id` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageIdError {
    /// Empty or longer than 128 bytes: send 1 to 128 bytes.
    #[error("`message_id` must be 1 to 128 bytes")]
    Length,
    /// A character outside the channel-name alphabet: use only A-Z a-z 0-9 _ - . : @ / =.
    #[error("`message_id` may contain only A-Z a-z 0-9 _ - . : @ / =")]
    BadCharacter,
}

/// Checks a `message_id`: 1 to 128 bytes of the channel-name alphabet, so it needs no JSON
/// escaping and is safe in a URL query.
///
/// ```
/// use switchboard::protocol::check_message_id;
/// assert!(check_message_id("reply-42").is_ok());
/// assert!(check_message_id("").is_err());
/// assert!(check_message_id("no spaces").is_err());
/// ```
///
/// # Errors
/// [`MessageIdError`] saying which rule failed.
pub fn check_message_id(id: &str) -> Result<(), MessageIdError> {
    if id.is_empty() || id.len() > MAX_MESSAGE_ID_BYTES {
        return Err(MessageIdError::Length);
    }
    if !id.bytes().all(super::names::is_channel_byte) {
        return Err(MessageIdError::BadCharacter);
    }
    Ok(())
}

/// Where a message with an id stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageStatus {
    /// A stream that still takes appends.
    Open,
    /// A finished stream, or a message published whole.
    Finished,
    /// A stream the server closed: no append came in time, or its ingest broke off.
    Abandoned,
    /// Deleted: a tombstone that keeps its offset.
    Deleted,
}

impl MessageStatus {
    /// The status as it appears on the wire.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Finished => "finished",
            Self::Abandoned => "abandoned",
            Self::Deleted => "deleted",
        }
    }
}

/// Why the server abandoned a stream: the `reason` of an `abandon` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbandonReason {
    /// No append came for `streams.idle_timeout`.
    Idle,
    /// Its streaming-ingest request broke off (or broke a limit).
    Ingest,
}

impl AbandonReason {
    /// The reason as it appears on the wire.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Ingest => "ingest",
        }
    }
}

fn head(
    kind: &str,
    channel: &ChannelName,
    offset: Offset,
    message_id: &str,
    size: usize,
) -> String {
    let mut out = String::with_capacity(96 + channel.as_str().len() + message_id.len() + size);
    let _ = write!(
        out,
        "{{\"type\":\"{kind}\",\"channel\":\"{channel}\",\"offset\":\"{offset}\",\"message_id\":\"{message_id}\""
    );
    out
}

/// `{"type":"message","channel","offset","message_id","stream":"open"?,"data"}`: a message
/// published with an id (`stream`: it opens a stream). `data` comes last, as in every
/// `message` frame, so that it can be sliced out of the frame.
#[must_use]
pub fn encode_message_with_id(
    channel: &ChannelName,
    offset: Offset,
    message_id: &str,
    stream: bool,
    data: &str,
) -> String {
    let mut out = head("message", channel, offset, message_id, data.len());
    if stream {
        out.push_str(",\"stream\":\"open\"");
    }
    out.push_str(",\"data\":");
    out.push_str(data);
    out.push('}');
    out
}

/// `{"type":"append","channel","offset","message_id","text"}`: `text` goes at the end of the
/// message's text.
#[must_use]
pub fn encode_append(
    channel: &ChannelName,
    offset: Offset,
    message_id: &str,
    text: &str,
) -> String {
    let mut out = head("append", channel, offset, message_id, text.len() + 16);
    out.push_str(",\"text\":");
    push_json_string(&mut out, text);
    out.push('}');
    out
}

/// `{"type":"finish","channel","offset","message_id","data"?}`: the stream is complete;
/// `data`, when given, replaces its metadata.
#[must_use]
pub fn encode_finish(
    channel: &ChannelName,
    offset: Offset,
    message_id: &str,
    data: Option<&str>,
) -> String {
    let mut out = head(
        "finish",
        channel,
        offset,
        message_id,
        data.map_or(0, str::len),
    );
    if let Some(data) = data {
        out.push_str(",\"data\":");
        out.push_str(data);
    }
    out.push('}');
    out
}

/// `{"type":"update","channel","offset","message_id","data"?,"text"?}`: an edit; what it
/// gives replaces the message's.
#[must_use]
pub fn encode_update(
    channel: &ChannelName,
    offset: Offset,
    message_id: &str,
    data: Option<&str>,
    text: Option<&str>,
) -> String {
    let size = data.map_or(0, str::len) + text.map_or(0, str::len);
    let mut out = head("update", channel, offset, message_id, size + 16);
    if let Some(text) = text {
        out.push_str(",\"text\":");
        push_json_string(&mut out, text);
    }
    if let Some(data) = data {
        out.push_str(",\"data\":");
        out.push_str(data);
    }
    out.push('}');
    out
}

/// `{"type":"delete","channel","offset","message_id"}`: the message is a tombstone now.
#[must_use]
pub fn encode_delete(channel: &ChannelName, offset: Offset, message_id: &str) -> String {
    let mut out = head("delete", channel, offset, message_id, 0);
    out.push('}');
    out
}

/// `{"type":"abandon","channel","offset","message_id","reason"}`: the server closed the
/// stream unfinished; its text so far stays.
#[must_use]
pub fn encode_abandon(
    channel: &ChannelName,
    offset: Offset,
    message_id: &str,
    reason: AbandonReason,
) -> String {
    let mut out = head("abandon", channel, offset, message_id, 16);
    let _ = write!(out, ",\"reason\":\"{}\"}}", reason.as_str());
    out
}

/// A message with an id as it stands now, for a state frame or a history entry.
#[derive(Debug, Clone, Copy)]
pub struct MessageState<'a> {
    /// The message's own offset (its publish).
    pub created: Offset,
    /// The offset of its last operation.
    pub last: Offset,
    pub message_id: &'a str,
    pub status: MessageStatus,
    /// `None` once deleted.
    pub data: Option<&'a str>,
    /// A stream's text (or one an update gave); `None` for a message published whole.
    pub text: Option<&'a str>,
}

/// `{"type":"message","channel","offset":<last>,"created","message_id","status",
/// "stream":"open"?,"text"?,"data"?}`: the message whole, as it stands; a client that holds
/// a message with this id replaces it.
#[must_use]
pub fn encode_state(channel: &ChannelName, state: &MessageState<'_>) -> String {
    let size = state.data.map_or(0, str::len) + state.text.map_or(0, str::len);
    let mut out = head("message", channel, state.last, state.message_id, size + 64);
    let _ = write!(
        out,
        ",\"created\":\"{}\",\"status\":\"{}\"",
        state.created,
        state.status.as_str()
    );
    if state.status == MessageStatus::Open {
        out.push_str(",\"stream\":\"open\"");
    }
    if let Some(text) = state.text {
        out.push_str(",\"text\":");
        push_json_string(&mut out, text);
    }
    if let Some(data) = state.data {
        out.push_str(",\"data\":");
        out.push_str(data);
    }
    out.push('}');
    out
}

/// One entry of a history answer (the `history` frame, `GET /v1/channels/{c}/history`):
/// `{"offset","data"}`, and for a message with an id `message_id`, `status`, `text` (a
/// stream's) and `updated` (its last operation, when it changed since its publish). A
/// deleted message has no `data`.
pub fn push_history_entry(
    out: &mut String,
    offset: Offset,
    data: &str,
    state: Option<&MessageState<'_>>,
) {
    let _ = write!(out, "{{\"offset\":\"{offset}\"");
    if let Some(state) = state {
        let _ = write!(
            out,
            ",\"message_id\":\"{}\",\"status\":\"{}\"",
            state.message_id,
            state.status.as_str()
        );
        if state.last != state.created {
            let _ = write!(out, ",\"updated\":\"{}\"", state.last);
        }
        if let Some(text) = state.text {
            out.push_str(",\"text\":");
            push_json_string(out, text);
        }
        if let Some(data) = state.data {
            out.push_str(",\"data\":");
            out.push_str(data);
        }
    } else {
        out.push_str(",\"data\":");
        out.push_str(data);
    }
    out.push('}');
}

/// `{"type":"published","id","channel","offset","duplicate":true}`: a publish whose
/// `message_id` the channel already had; nothing was published, `offset` is the first's.
#[must_use]
pub fn encode_published_duplicate(
    id: Option<u64>,
    channel: &ChannelName,
    offset: Offset,
) -> String {
    let mut out = super::encode_published(id, channel, offset);
    out.pop();
    out.push_str(",\"duplicate\":true}");
    out
}
