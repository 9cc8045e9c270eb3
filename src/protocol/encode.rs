//! Encoding server frames straight into a `String`.
//!
//! Channel names and offsets need no JSON escaping by their grammar; free text (error messages,
//! node ids) goes through `serde_json` escaping. `data` is the publisher's JSON, already
//! validated, copied verbatim.

use std::fmt::Write as _;

use super::{ChannelName, ErrorCode, Offset, PROTOCOL_VERSION, UnsubscribeReason};

pub(super) fn push_json_string(out: &mut String, text: &str) {
    // Writing a &str into a String cannot fail.
    let escaped = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned());
    out.push_str(&escaped);
}

fn push_id(out: &mut String, id: Option<u64>) {
    if let Some(id) = id {
        let _ = write!(out, ",\"id\":{id}");
    }
}

/// `{"type":"reconnect","reason":..,"after_ms":..}`: the server is about to close the
/// connection (1012) and asks the client to reconnect, after waiting `after_ms` (to another
/// node, through the load balancer), resuming its channels from the last offsets it saw.
#[must_use]
pub fn encode_reconnect(reason: &str, after_ms: u64) -> String {
    let mut out = String::with_capacity(64);
    out.push_str("{\"type\":\"reconnect\",\"reason\":");
    push_json_string(&mut out, reason);
    let _ = write!(out, ",\"after_ms\":{after_ms}}}");
    out
}

/// `{"type":"welcome","conn_id":..,"node":..,"heartbeat_ms":..,"protocol":1}`, with `user`
/// for an authenticated connection and `subs` when its token's `subs` claim lists channels
/// the server subscribes it to.
#[must_use]
pub fn encode_welcome(
    conn_id: u64,
    node: &str,
    heartbeat_ms: u64,
    user: Option<&str>,
    subs: &[String],
) -> String {
    let mut out = String::with_capacity(96);
    let _ = write!(
        out,
        "{{\"type\":\"welcome\",\"conn_id\":{conn_id},\"node\":"
    );
    push_json_string(&mut out, node);
    let _ = write!(
        out,
        ",\"heartbeat_ms\":{heartbeat_ms},\"protocol\":{PROTOCOL_VERSION}"
    );
    if let Some(user) = user {
        out.push_str(",\"user\":");
        push_json_string(&mut out, user);
    }
    if !subs.is_empty() {
        out.push_str(",\"subs\":[");
        for (index, channel) in subs.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            push_json_string(&mut out, channel);
        }
        out.push(']');
    }
    out.push('}');
    out
}

/// `{"type":"authenticated","id":5,"user":"42","exp":1767225600}` (after `auth`) or
/// `{"type":"refreshed",...}` (after `refresh`): the token was accepted; `exp` is when it
/// expires, in Unix seconds.
#[must_use]
pub fn encode_authenticated(kind: &str, id: Option<u64>, user: &str, exp: u64) -> String {
    let mut out = String::with_capacity(80);
    out.push_str("{\"type\":");
    push_json_string(&mut out, kind);
    push_id(&mut out, id);
    out.push_str(",\"user\":");
    push_json_string(&mut out, user);
    let _ = write!(out, ",\"exp\":{exp}}}");
    out
}

/// `{"type":"subscribed","id":1,"channel":"news","offset":"..","recovered":true}`;
/// `recovered` only when the subscribe asked for `since`.
#[must_use]
pub fn encode_subscribed(
    id: Option<u64>,
    channel: &ChannelName,
    offset: Offset,
    recovered: Option<bool>,
) -> String {
    let mut out = String::with_capacity(96 + channel.as_str().len());
    out.push_str("{\"type\":\"subscribed\"");
    push_id(&mut out, id);
    let _ = write!(out, ",\"channel\":\"{channel}\",\"offset\":\"{offset}\"");
    if let Some(recovered) = recovered {
        let _ = write!(out, ",\"recovered\":{recovered}");
    }
    out.push('}');
    out
}

/// `{"type":"unsubscribed","id":2,"channel":"news"}`, with `"reason":".."` when the server
/// unsubscribed the connection on its own.
#[must_use]
pub fn encode_unsubscribed(
    id: Option<u64>,
    channel: &ChannelName,
    reason: Option<UnsubscribeReason>,
) -> String {
    let mut out = String::with_capacity(80 + channel.as_str().len());
    out.push_str("{\"type\":\"unsubscribed\"");
    push_id(&mut out, id);
    let _ = write!(out, ",\"channel\":\"{channel}\"");
    if let Some(reason) = reason {
        let _ = write!(out, ",\"reason\":\"{}\"", reason.as_str());
    }
    out.push('}');
    out
}

/// `{"type":"published","id":3,"channel":"chat","offset":".."}`
#[must_use]
pub fn encode_published(id: Option<u64>, channel: &ChannelName, offset: Offset) -> String {
    let mut out = String::with_capacity(96 + channel.as_str().len());
    out.push_str("{\"type\":\"published\"");
    push_id(&mut out, id);
    let _ = write!(out, ",\"channel\":\"{channel}\",\"offset\":\"{offset}\"}}");
    out
}

/// `{"type":"history","id":7,"channel":"news","offset":"..","recovered":true,
/// "messages":[{"offset":"..","data":..}],"truncated":false}`: `recovered` only for a read
/// with `since`; `write_messages` writes the entries, comma-separated (see
/// [`push_history_entry`](super::push_history_entry)); `size` is about their length.
#[must_use]
pub fn encode_history(
    id: Option<u64>,
    channel: &ChannelName,
    position: Offset,
    recovered: Option<bool>,
    size: usize,
    write_messages: impl FnOnce(&mut String),
    truncated: bool,
) -> String {
    let mut out = String::with_capacity(128 + channel.as_str().len() + size);
    out.push_str("{\"type\":\"history\"");
    push_id(&mut out, id);
    let _ = write!(out, ",\"channel\":\"{channel}\",\"offset\":\"{position}\"");
    if let Some(recovered) = recovered {
        let _ = write!(out, ",\"recovered\":{recovered}");
    }
    out.push_str(",\"messages\":[");
    write_messages(&mut out);
    let _ = write!(out, "],\"truncated\":{truncated}}}");
    out
}

/// `{"type":"pong","id":4}`
#[must_use]
pub fn encode_pong(id: Option<u64>) -> String {
    let mut out = String::with_capacity(32);
    out.push_str("{\"type\":\"pong\"");
    push_id(&mut out, id);
    out.push('}');
    out
}

/// `{"type":"rpc_result","id":..,"data":..}`: the application backend's answer to an `rpc`
/// (`data` is raw JSON).
#[must_use]
pub fn encode_rpc_result(id: Option<u64>, data: &str) -> String {
    let mut out = String::with_capacity(48 + data.len());
    out.push_str("{\"type\":\"rpc_result\"");
    push_id(&mut out, id);
    out.push_str(",\"data\":");
    out.push_str(data);
    out.push('}');
    out
}

/// `{"type":"error","id":5,"code":"bad_request","message":".."}`
#[must_use]
pub fn encode_error(id: Option<u64>, code: ErrorCode, message: &str) -> String {
    let mut out = String::with_capacity(64 + message.len());
    out.push_str("{\"type\":\"error\"");
    push_id(&mut out, id);
    let _ = write!(out, ",\"code\":\"{}\",\"message\":", code.as_str());
    push_json_string(&mut out, message);
    out.push('}');
    out
}

/// `{"type":"gap","channel":"prices","from":"..","to":".."}`: messages the connection's queue
/// dropped under `slow_consumer = "drop_oldest"`, to be fetched with `history`.
#[must_use]
pub fn encode_gap(channel: &ChannelName, from: Offset, to: Offset) -> String {
    let mut out = String::with_capacity(96 + channel.as_str().len());
    out.push_str("{\"type\":\"gap\",\"channel\":");
    push_json_string(&mut out, channel.as_str());
    let _ = write!(out, ",\"from\":\"{from}\",\"to\":\"{to}\"}}");
    out
}

/// `{"type":"error","code":"rate_limited","message":..,"retry_after_ms":N}`: an `error` that
/// says when the refused request would be taken.
#[must_use]
pub fn encode_rate_limited(id: Option<u64>, message: &str, retry_after_ms: u64) -> String {
    let mut out = encode_error(id, ErrorCode::RateLimited, message);
    out.pop();
    let _ = write!(out, ",\"retry_after_ms\":{retry_after_ms}}}");
    out
}

/// `{"type":"message","channel":"news","offset":"..","data":<JSON>}`: built once per published
/// message and shared by every subscriber.
#[must_use]
pub fn encode_message(channel: &ChannelName, offset: Offset, data: &str) -> String {
    let mut out = String::with_capacity(72 + channel.as_str().len() + data.len());
    let _ = write!(
        out,
        "{{\"type\":\"message\",\"channel\":\"{channel}\",\"offset\":\"{offset}\",\"data\":"
    );
    out.push_str(data);
    out.push('}');
    out
}

/// `{"type":"reset","channel":..,"offset":..}`: the channel's history restarted in a new
/// epoch (the bus lost its state); `offset` is the position just before the next message.
/// What the subscriber missed cannot be known: it is told, as a resume answers
/// `recovered: false`.
#[must_use]
pub fn encode_reset(channel: &ChannelName, offset: Offset) -> String {
    format!("{{\"type\":\"reset\",\"channel\":\"{channel}\",\"offset\":\"{offset}\"}}")
}
