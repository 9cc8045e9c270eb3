//! Decoding client frames.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// A decoded client frame. Strings borrow from the input unless they held JSON escapes.
#[derive(Debug)]
pub enum ClientFrame<'a> {
    /// `{"type":"subscribe","id":1,"channel":"news","since":"<offset>"}`; `since` optional.
    Subscribe {
        id: Option<u64>,
        channel: Cow<'a, str>,
        since: Option<Cow<'a, str>>,
    },
    /// `{"type":"unsubscribe","id":2,"channel":"news"}`
    Unsubscribe {
        id: Option<u64>,
        channel: Cow<'a, str>,
    },
    /// `{"type":"publish","id":3,"channel":"chat","data":<any JSON>}`, with an optional
    /// `message_id` and `"stream":true` (opens a stream; see `docs/streams.md`).
    Publish {
        id: Option<u64>,
        channel: Cow<'a, str>,
        data: &'a RawValue,
        message_id: Option<Cow<'a, str>>,
        stream: bool,
    },
    /// `{"type":"append","channel","message_id","text"}`: text at the end of an open stream.
    Append {
        id: Option<u64>,
        channel: Cow<'a, str>,
        message_id: Cow<'a, str>,
        text: Cow<'a, str>,
    },
    /// `{"type":"finish","channel","message_id","data"?}`: closes a stream.
    Finish {
        id: Option<u64>,
        channel: Cow<'a, str>,
        message_id: Cow<'a, str>,
        data: Option<&'a RawValue>,
    },
    /// `{"type":"update","channel","message_id","data"?,"text"?}`: an edit (at least one of
    /// the two).
    Update {
        id: Option<u64>,
        channel: Cow<'a, str>,
        message_id: Cow<'a, str>,
        data: Option<&'a RawValue>,
        text: Option<Cow<'a, str>>,
    },
    /// `{"type":"delete","channel","message_id"}`: makes the message a tombstone.
    Delete {
        id: Option<u64>,
        channel: Cow<'a, str>,
        message_id: Cow<'a, str>,
    },
    /// `{"type":"rpc","id":5,"method":"getProfile","data":<any JSON>}`: a request the
    /// application backend answers (`hooks.rpc_url`); `data` optional (null).
    Rpc {
        id: Option<u64>,
        method: Cow<'a, str>,
        data: Option<&'a RawValue>,
    },
    /// `{"type":"ping","id":4}`
    Ping { id: Option<u64> },
    /// `{"type":"history","id":7,"channel":"news","since":"<offset>","limit":50}`: `since`
    /// and `limit` optional.
    History {
        id: Option<u64>,
        channel: Cow<'a, str>,
        since: Option<Cow<'a, str>>,
        limit: Option<u64>,
    },
    /// `{"type":"presence","id":8,"channel":"room:7"}`: the channel's members.
    Presence {
        id: Option<u64>,
        channel: Cow<'a, str>,
    },
    /// `{"type":"presence_stats","id":9,"channel":"room:7"}`: how many connections and
    /// distinct users the channel has.
    PresenceStats {
        id: Option<u64>,
        channel: Cow<'a, str>,
    },
    /// `{"type":"auth","id":5,"token":"<JWT>"}`: authenticates a connection that brought no
    /// token in its upgrade.
    Auth {
        id: Option<u64>,
        token: Cow<'a, str>,
    },
    /// `{"type":"refresh","id":6,"token":"<JWT>"}`: a fresh token for the same user, before the
    /// current one expires.
    Refresh {
        id: Option<u64>,
        token: Cow<'a, str>,
    },
}

impl ClientFrame<'_> {
    /// The request id, echoed in the reply.
    #[must_use]
    pub fn id(&self) -> Option<u64> {
        match self {
            ClientFrame::Subscribe { id, .. }
            | ClientFrame::Unsubscribe { id, .. }
            | ClientFrame::Publish { id, .. }
            | ClientFrame::Append { id, .. }
            | ClientFrame::Finish { id, .. }
            | ClientFrame::Update { id, .. }
            | ClientFrame::Delete { id, .. }
            | ClientFrame::Ping { id }
            | ClientFrame::History { id, .. }
            | ClientFrame::Presence { id, .. }
            | ClientFrame::PresenceStats { id, .. }
            | ClientFrame::Auth { id, .. }
            | ClientFrame::Refresh { id, .. }
            | ClientFrame::Rpc { id, .. } => *id,
        }
    }
}

/// A frame that could not be understood. Recoverable: reply with an `error` frame, keep the
/// connection. `id` is the request id when it could be read, so the reply can carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    pub id: Option<u64>,
    pub message: &'static str,
}

/// Every field any frame type may carry, kept raw so that each can be checked on its own and
/// the `id` survives errors in the other fields. Unknown fields are ignored for forward
/// compatibility. `None` is an absent field; a field given as `null` is `Some("null")`, so
/// that `"data": null` publishes null and each field decides what its null means.
#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "present")]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    channel: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    since: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    token: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    limit: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    message_id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    stream: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    text: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    method: Option<&'a RawValue>,
}

/// A field that is there, whatever its value: serde's own `Option` reads `null` as `None`,
/// which made `"data": null` a missing field.
fn present<'de, D>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&'de RawValue>::deserialize(deserializer).map(Some)
}

/// Decodes one text frame.
///
/// # Errors
/// [`DecodeError`] with a fixed message for malformed JSON, non-object frames, unknown types,
/// missing or mistyped fields.
pub fn decode_client_frame(text: &str) -> Result<ClientFrame<'_>, DecodeError> {
    let trimmed = text.trim_start();
    if !trimmed.starts_with('{') {
        let message = if serde_json::from_str::<&RawValue>(text).is_ok() {
            "frame must be a JSON object"
        } else {
            "frame is not valid JSON"
        };
        return Err(DecodeError { id: None, message });
    }
    let raw: RawFrame<'_> = serde_json::from_str(text).map_err(|err| DecodeError {
        id: None,
        message: if err.is_data() {
            "frame has a duplicate field"
        } else {
            "frame is not valid JSON"
        },
    })?;
    let id = match raw.id {
        None => None,
        Some(value) if value.get() == "null" => None,
        Some(value) => Some(value.get().parse::<u64>().map_err(|_| DecodeError {
            id: None,
            message: "`id` must be an integer from 0 to 2^64-1",
        })?),
    };
    let fail = |message| DecodeError { id, message };
    let kind = raw.kind.ok_or(fail("missing field `type`"))?;
    let kind = string(kind).ok_or(fail("`type` must be a string"))?;
    let channel = || -> Result<Cow<'_, str>, DecodeError> {
        let value = raw.channel.ok_or(fail("missing field `channel`"))?;
        string(value).ok_or(fail("`channel` must be a string"))
    };
    let since = || -> Result<Option<Cow<'_, str>>, DecodeError> {
        match raw.since {
            None => Ok(None),
            Some(value) if value.get() == "null" => Ok(None),
            Some(value) => Ok(Some(string(value).ok_or(fail("`since` must be a string"))?)),
        }
    };
    let message_id = || -> Result<Cow<'_, str>, DecodeError> {
        optional_string(raw.message_id)
            .map_err(|()| fail("`message_id` must be a string"))?
            .ok_or(fail("missing field `message_id`"))
    };
    match &*kind {
        "subscribe" => Ok(ClientFrame::Subscribe {
            id,
            channel: channel()?,
            since: since()?,
        }),
        "history" => {
            let limit = match raw.limit {
                None => None,
                Some(value) if value.get() == "null" => None,
                Some(value) => Some(
                    value
                        .get()
                        .parse::<u64>()
                        .map_err(|_| fail("`limit` must be a positive integer"))?,
                ),
            };
            Ok(ClientFrame::History {
                id,
                channel: channel()?,
                since: since()?,
                limit,
            })
        }
        "unsubscribe" => Ok(ClientFrame::Unsubscribe {
            id,
            channel: channel()?,
        }),
        "publish" => Ok(ClientFrame::Publish {
            id,
            channel: channel()?,
            data: raw.data.ok_or(fail("missing field `data`"))?,
            message_id: optional_string(raw.message_id)
                .map_err(|()| fail("`message_id` must be a string"))?,
            stream: match raw.stream.map(RawValue::get) {
                None | Some("null" | "false") => false,
                Some("true") => true,
                Some(_) => return Err(fail("`stream` must be true or false")),
            },
        }),
        "append" => Ok(ClientFrame::Append {
            id,
            channel: channel()?,
            message_id: message_id()?,
            text: optional_string(raw.text)
                .map_err(|()| fail("`text` must be a string"))?
                .ok_or(fail("missing field `text`"))?,
        }),
        "finish" => Ok(ClientFrame::Finish {
            id,
            channel: channel()?,
            message_id: message_id()?,
            data: raw.data,
        }),
        "update" => {
            let text = optional_string(raw.text).map_err(|()| fail("`text` must be a string"))?;
            if raw.data.is_none() && text.is_none() {
                return Err(fail("`update` needs `data`, `text` or both"));
            }
            Ok(ClientFrame::Update {
                id,
                channel: channel()?,
                message_id: message_id()?,
                data: raw.data,
                text,
            })
        }
        "delete" => Ok(ClientFrame::Delete {
            id,
            channel: channel()?,
            message_id: message_id()?,
        }),
        "ping" => Ok(ClientFrame::Ping { id }),
        "rpc" => {
            let method = optional_string(raw.method)
                .map_err(|()| fail("`method` must be a string"))?
                .ok_or(fail("missing field `method`"))?;
            if method.is_empty() || method.len() > MAX_METHOD_BYTES {
                return Err(fail("`method` must have 1 to 128 bytes"));
            }
            Ok(ClientFrame::Rpc {
                id,
                method,
                data: raw.data,
            })
        }
        "presence" => Ok(ClientFrame::Presence {
            id,
            channel: channel()?,
        }),
        "presence_stats" => Ok(ClientFrame::PresenceStats {
            id,
            channel: channel()?,
        }),
        "auth" | "refresh" => {
            let token = raw.token.ok_or(fail("missing field `token`"))?;
            let token = string(token).ok_or(fail("`token` must be a string"))?;
            Ok(if &*kind == "auth" {
                ClientFrame::Auth { id, token }
            } else {
                ClientFrame::Refresh { id, token }
            })
        }
        _ => Err(fail("unknown frame type")),
    }
}

/// The bytes an `rpc` frame's `method` may have.
pub const MAX_METHOD_BYTES: usize = 128;

/// A field that must be a string when present and not `null`.
fn optional_string(value: Option<&RawValue>) -> Result<Option<Cow<'_, str>>, ()> {
    match value {
        None => Ok(None),
        Some(value) if value.get() == "null" => Ok(None),
        Some(value) => string(value).map(Some).ok_or(()),
    }
}

/// Reads a JSON string, borrowing when it holds no escapes.
fn string(value: &RawValue) -> Option<Cow<'_, str>> {
    let text = value.get();
    if let Ok(borrowed) = serde_json::from_str::<&str>(text) {
        return Some(Cow::Borrowed(borrowed));
    }
    serde_json::from_str::<String>(text).ok().map(Cow::Owned)
}
