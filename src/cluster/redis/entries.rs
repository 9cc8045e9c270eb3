//! The entries of a partition's bus as a reader finds them: messages, operations on
//! messages with ids, and requests (events, commands and disconnects about users).

use redis::Value;

use super::values::{as_string, as_u64, parse_epoch};
use crate::{
    hub::{Op, SessionCommand},
    protocol::{AbandonReason, ChannelName, CloseCode},
};

/// What a bus entry with a `k` field asks every node to do (entries without one are
/// messages, [`BusEntry`]).
pub(super) enum Request {
    /// A channel's `join`/`leave` frame (`k=event`, `c`, `d`), for `Hub::announce`.
    Event { channel: String, text: String },
    /// `k=disconnect`, `u`, `x`: close a user's connections.
    Disconnect { user: String, code: CloseCode },
    /// `k=subscribe|unsubscribe`, `u`, `c`: for a user's sessions.
    Command {
        user: String,
        command: SessionCommand,
    },
    /// `k=block`, `u`, `x` (Unix seconds, 0: until lifted): block a user.
    Block { user: String, until: Option<u64> },
    /// `k=unblock`, `u`: lift a user's block.
    Unblock { user: String },
    /// `k=kick`, `p` (`<node>:<incarnation>`), `c`: the process named closes that
    /// connection with 4005 (its user is over `limits.max_connections_per_user`).
    Kick { process: String, conn_id: u64 },
    /// A request about users this node wrote: it acted on it already.
    Own,
}

impl Request {
    /// `None` for an entry without `k` (a message), or one that does not parse (the caller
    /// then reports it as malformed).
    pub(super) fn parse(fields: &Value, node_id: &str) -> Option<Self> {
        let Value::Array(fields) = fields else {
            return None;
        };
        let (mut kind, mut user, mut node, mut channel, mut text, mut code) =
            (None, None, None, None, None, None);
        let mut process = None;
        for pair in fields.chunks(2) {
            let value = pair.get(1)?;
            match as_string(&pair[0])?.as_str() {
                "k" => kind = as_string(value),
                "u" => user = as_string(value),
                "n" => node = as_string(value),
                "c" => channel = as_string(value),
                "d" => text = as_string(value),
                "x" => code = as_u64(value),
                "p" => process = as_string(value),
                _ => {}
            }
        }
        let kind = kind?;
        if node.as_deref() == Some(node_id) && kind != "event" {
            return Some(Self::Own);
        }
        match kind.as_str() {
            "event" => channel
                .zip(text)
                .map(|(channel, text)| Self::Event { channel, text }),
            "disconnect" => user.map(|user| Self::Disconnect {
                user,
                code: code
                    .and_then(|code| u16::try_from(code).ok())
                    .and_then(CloseCode::from_code)
                    .unwrap_or(CloseCode::Disconnected),
            }),
            "block" => user.map(|user| Self::Block {
                user,
                until: code.filter(|until| *until > 0),
            }),
            "unblock" => user.map(|user| Self::Unblock { user }),
            "kick" => process
                .zip(channel.and_then(|conn_id| conn_id.parse().ok()))
                .map(|(process, conn_id)| Self::Kick { process, conn_id }),
            "subscribe" | "unsubscribe" => user
                .zip(channel.and_then(|channel| ChannelName::parse(&channel, usize::MAX).ok()))
                .map(|(user, channel)| Self::Command {
                    user,
                    command: if kind == "subscribe" {
                        SessionCommand::Subscribe(channel)
                    } else {
                        SessionCommand::Unsubscribe(channel)
                    },
                }),
            _ => None,
        }
    }
}

pub(super) struct BusEntry {
    pub(super) channel: String,
    pub(super) epoch: u64,
    pub(super) seq: u64,
    pub(super) data: String,
    pub(super) time_ms: u64,
}

impl BusEntry {
    pub(super) fn parse(fields: &Value) -> Option<Self> {
        let Value::Array(fields) = fields else {
            return None;
        };
        let (mut channel, mut epoch, mut seq, mut data, mut time_ms) = (None, None, None, None, 0);
        for pair in fields.chunks(2) {
            let value = pair.get(1)?;
            match as_string(&pair[0])?.as_str() {
                "c" => channel = as_string(value),
                "e" => epoch = as_string(value).as_deref().and_then(parse_epoch),
                "s" => seq = as_u64(value),
                "d" => data = as_string(value),
                "t" => time_ms = as_u64(value).unwrap_or(0),
                _ => {}
            }
        }
        Some(Self {
            channel: channel?,
            epoch: epoch?,
            seq: seq?,
            data: data?,
            time_ms,
        })
    }
}

/// An operation on a message with an id (an entry with an `o` field, written by the
/// operation script): `c e s t` as a message's, `o` the operation (`p a f u x b`), `m` the
/// id, `d` data, `x` text, `k` `1` for a stream, `r` an abandon's reason.
pub(super) struct OpEntry {
    pub(super) channel: String,
    pub(super) epoch: u64,
    pub(super) seq: u64,
    pub(super) time_ms: u64,
    kind: String,
    id: String,
    data: Option<String>,
    text: Option<String>,
    stream: bool,
    reason: Option<String>,
}

impl OpEntry {
    /// `None` for an entry without `o`, or one without the fields every entry has.
    pub(super) fn parse(fields: &Value) -> Option<Self> {
        let Value::Array(fields) = fields else {
            return None;
        };
        let mut entry = Self {
            channel: String::new(),
            epoch: 0,
            seq: 0,
            time_ms: 0,
            kind: String::new(),
            id: String::new(),
            data: None,
            text: None,
            stream: false,
            reason: None,
        };
        let (mut channel, mut epoch, mut seq, mut kind) = (None, None, None, None);
        for pair in fields.chunks(2) {
            let value = pair.get(1)?;
            match as_string(&pair[0])?.as_str() {
                "c" => channel = as_string(value),
                "e" => epoch = as_string(value).as_deref().and_then(parse_epoch),
                "s" => seq = as_u64(value),
                "t" => entry.time_ms = as_u64(value).unwrap_or(0),
                "o" => kind = as_string(value),
                "m" => entry.id = as_string(value)?,
                "d" => entry.data = as_string(value),
                "x" => entry.text = as_string(value),
                "k" => entry.stream = as_string(value).as_deref() == Some("1"),
                "r" => entry.reason = as_string(value),
                _ => {}
            }
        }
        entry.kind = kind?;
        entry.channel = channel?;
        entry.epoch = epoch?;
        entry.seq = seq?;
        Some(entry)
    }

    /// The operation it carries; `None` when malformed.
    pub(super) fn op(&self) -> Option<Op<'_>> {
        let message_id = self.id.as_str();
        if message_id.is_empty() {
            return None;
        }
        Some(match self.kind.as_str() {
            "p" => Op::Publish {
                data: self.data.as_deref()?,
                message_id: Some(message_id),
                stream: self.stream,
            },
            "a" => Op::Append {
                message_id,
                text: self.text.as_deref()?,
            },
            "f" => Op::Finish {
                message_id,
                data: self.data.as_deref(),
            },
            "u" => Op::Update {
                message_id,
                data: self.data.as_deref(),
                text: self.text.as_deref(),
            },
            "x" => Op::Delete { message_id },
            "b" => Op::Abandon {
                message_id,
                reason: match self.reason.as_deref()? {
                    "idle" => AbandonReason::Idle,
                    "ingest" => AbandonReason::Ingest,
                    _ => return None,
                },
            },
            _ => return None,
        })
    }
}
