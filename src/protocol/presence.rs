//! The presence frames: `join` and `leave` (one member or several), and the answers to
//! `presence` and `presence_stats`, with the member as they list it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::ChannelName;

/// One subscriber of a channel whose namespace tracks members.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    pub node: Arc<str>,
    /// Its connection's id on its node (`hub::ConnId`).
    pub conn_id: u64,
    /// The token's `sub`; empty for an anonymous connection.
    pub user: Arc<str>,
    /// The token's `info` claim, as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
}

impl Member {
    /// The `user` of anonymous members, one allocation shared by all of them (32 bytes a
    /// member otherwise).
    #[must_use]
    pub fn anonymous_user() -> Arc<str> {
        static ANONYMOUS: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
        Arc::clone(ANONYMOUS.get_or_init(|| Arc::from("")))
    }
}

/// `{"type":"join","channel":..,"node":..,"conn_id":..,"user":..,"info":..}` (`kind` is
/// `join` or `leave`).
#[must_use]
pub fn encode_presence_change(
    kind: &'static str,
    channel: &ChannelName,
    member: &Member,
) -> String {
    #[derive(Serialize)]
    struct One<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        #[serde(flatten)]
        member: &'a Member,
    }
    serde_json::to_string(&One {
        kind,
        channel: channel.as_str(),
        member,
    })
    .unwrap_or_default()
}

/// `{"type":"join","channel":..,"members":[{"node":..,"conn_id":..,"user":..,"info":..},..]}`
#[must_use]
pub fn encode_presence_changes(
    kind: &'static str,
    channel: &ChannelName,
    members: &[&Member],
) -> String {
    #[derive(Serialize)]
    struct Many<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        members: &'a [&'a Member],
    }
    serde_json::to_string(&Many {
        kind,
        channel: channel.as_str(),
        members,
    })
    .unwrap_or_default()
}

/// `{"type":"presence","id":..,"channel":..,"members":[..],"truncated":false}`
#[must_use]
pub fn encode_presence(
    id: Option<u64>,
    channel: &ChannelName,
    members: &[Arc<Member>],
    truncated: bool,
) -> String {
    #[derive(Serialize)]
    struct Reply<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        channel: &'a str,
        members: &'a [Arc<Member>],
        truncated: bool,
    }
    serde_json::to_string(&Reply {
        kind: "presence",
        id,
        channel: channel.as_str(),
        members,
        truncated,
    })
    .unwrap_or_default()
}

/// `{"type":"presence_stats","id":..,"channel":..,"connections":N,"users":M}`
#[must_use]
pub fn encode_presence_stats(
    id: Option<u64>,
    channel: &ChannelName,
    connections: usize,
    users: usize,
) -> String {
    #[derive(Serialize)]
    struct Reply<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        channel: &'a str,
        connections: usize,
        users: usize,
    }
    serde_json::to_string(&Reply {
        kind: "presence_stats",
        id,
        channel: channel.as_str(),
        connections,
        users,
    })
    .unwrap_or_default()
}
