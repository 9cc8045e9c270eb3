//! The presence frames: `join`, `leave`, `presence` and `presence_stats`.

use std::sync::Arc;

use serde::Serialize;

use super::{Change, Member, Page, Stats};
use crate::protocol::ChannelName;

fn kind(change: Change) -> &'static str {
    match change {
        Change::Join => "join",
        Change::Leave => "leave",
    }
}

/// `{"type":"join","channel":..,"node":..,"conn_id":..,"user":..,"info":..}`
pub(super) fn encode_one(change: Change, channel: &ChannelName, member: &Member) -> String {
    #[derive(Serialize)]
    struct One<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        #[serde(flatten)]
        member: &'a Member,
    }
    serde_json::to_string(&One {
        kind: kind(change),
        channel: channel.as_str(),
        member,
    })
    .unwrap_or_default()
}

/// `{"type":"join","channel":..,"members":[{"node":..,"conn_id":..,"user":..,"info":..},..]}`
pub(super) fn encode_many(change: Change, channel: &ChannelName, members: &[&Member]) -> String {
    #[derive(Serialize)]
    struct Many<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        members: &'a [&'a Member],
    }
    serde_json::to_string(&Many {
        kind: kind(change),
        channel: channel.as_str(),
        members,
    })
    .unwrap_or_default()
}

/// `{"type":"presence","id":..,"channel":..,"members":[..],"truncated":false}`
#[must_use]
pub fn encode_presence(id: Option<u64>, channel: &ChannelName, page: &Page) -> String {
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
        members: &page.members,
        truncated: page.next_cursor.is_some(),
    })
    .unwrap_or_default()
}

/// `{"type":"presence_stats","id":..,"channel":..,"connections":N,"users":M}`
#[must_use]
pub fn encode_presence_stats(id: Option<u64>, channel: &ChannelName, stats: Stats) -> String {
    #[derive(Serialize)]
    struct Reply<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        channel: &'a str,
        #[serde(flatten)]
        stats: Stats,
    }
    serde_json::to_string(&Reply {
        kind: "presence_stats",
        id,
        channel: channel.as_str(),
        stats,
    })
    .unwrap_or_default()
}
