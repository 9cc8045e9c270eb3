//! The channel routes: history, presence and presence counts, the channel listing, and
//! server-side subscriptions.

use std::fmt::Write as _;

use hyper::{Request, body::Incoming};
use serde::Deserialize;

use super::{
    ControlContext, JSON,
    error::{ApiError, Handled, Kind},
    request::{channel_name, json_body, parse_limit, query_pairs},
    response,
};
use crate::{hub::SessionCommand, protocol::Offset};

/// Messages one history read may return.
pub(super) const MAX_HISTORY_LIMIT: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SubscribeRequest {
    user: String,
    channel: String,
}

/// `POST /v1/subscribe` (`subscribe`) and `POST /v1/unsubscribe`: every connection of
/// `user` on every node; answers how many were told on this node.
pub(super) async fn server_subscribe(
    request: Request<Incoming>,
    ctx: &ControlContext,
    subscribe: bool,
) -> Handled {
    let body: SubscribeRequest = json_body(request, ctx).await?;
    if body.user.is_empty() {
        return Err(ApiError::new(Kind::Invalid, "`user` must not be empty"));
    }
    let channel = channel_name(&body.channel, ctx)?;
    let command = if subscribe {
        SessionCommand::Subscribe(channel)
    } else {
        SessionCommand::Unsubscribe(channel)
    };
    let told = ctx.bus.command_user(&body.user, command).await?;
    let body = serde_json::json!({
        "user": body.user,
        "channel": body.channel,
        "connections_here": told,
    });
    Ok(response(200, JSON, body.to_string()))
}

/// Members one presence page lists at most, and by default.
pub(super) const MAX_PRESENCE_PAGE: usize = 1000;
pub(super) const DEFAULT_PRESENCE_PAGE: usize = 100;

/// `GET /v1/channels/{channel}/presence?cursor=&limit=`: the channel's members (on every
/// node in a cluster), by node and connection, a page at a time.
pub(super) async fn presence(raw_channel: &str, query: &str, ctx: &ControlContext) -> Handled {
    let channel = channel_name(raw_channel, ctx)?;
    let mut cursor = None;
    let mut limit = DEFAULT_PRESENCE_PAGE;
    for (key, value) in query_pairs(query, &["cursor", "limit"])? {
        match key.as_str() {
            "cursor" if value.is_empty() => {}
            "cursor" => cursor = Some(value),
            _ => limit = parse_limit(&value, MAX_PRESENCE_PAGE)?,
        }
    }
    let page = ctx
        .presence
        .page(&channel, cursor.as_deref(), limit)
        .await?;
    let body = serde_json::json!({
        "channel": channel.as_str(),
        "node": &*ctx.node_id,
        "members": page.members,
        "next_cursor": page.next_cursor,
    });
    Ok(response(200, JSON, body.to_string()))
}

/// `GET /v1/channels/{channel}/presence-stats`: the channel's member counts (on every node
/// in a cluster), from counters.
pub(super) async fn presence_stats(
    raw_channel: &str,
    query: &str,
    ctx: &ControlContext,
) -> Handled {
    let channel = channel_name(raw_channel, ctx)?;
    query_pairs(query, &[])?;
    let stats = ctx.presence.stats(&channel).await?;
    let body = serde_json::json!({
        "channel": channel.as_str(),
        "node": &*ctx.node_id,
        "connections": stats.connections,
        "users": stats.users,
    });
    Ok(response(200, JSON, body.to_string()))
}

/// Channels one `GET /v1/channels` page lists at most, and by default.
pub(super) const MAX_CHANNELS_PAGE: usize = 10_000;
pub(super) const DEFAULT_CHANNELS_PAGE: usize = 1000;

/// `GET /v1/channels?prefix=&cursor=&limit=`: channels with subscribers on this node, in
/// name order, with their subscriber counts.
/// One `/v1/channels` listing at a time: each walks and sorts every channel.
pub(super) static LISTING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// `GET /v1/channels`. The walk over every channel runs on a blocking thread, one listing at
/// a time, so that probes and publishes on the control API's one thread never wait behind it.
pub(super) async fn channels(query: &str, ctx: &ControlContext) -> Handled {
    let (mut prefix, mut cursor, mut limit) = (String::new(), None, DEFAULT_CHANNELS_PAGE);
    for (key, value) in query_pairs(query, &["prefix", "cursor", "limit"])? {
        match key.as_str() {
            "prefix" => prefix = value,
            "cursor" => cursor = Some(value).filter(|value| !value.is_empty()),
            _ => limit = parse_limit(&value, MAX_CHANNELS_PAGE)?,
        }
    }
    let _listing = LISTING
        .acquire()
        .await
        .map_err(|_| ApiError::new(Kind::Unavailable, "shutting down"))?;
    let hub = std::sync::Arc::clone(&ctx.hub);
    let (found, more) =
        tokio::task::spawn_blocking(move || hub.channels(&prefix, cursor.as_deref(), limit))
            .await
            .map_err(|_| ApiError::new(Kind::Internal, "the listing failed"))?;
    let next_cursor = more
        .then(|| found.last().map(|(name, _)| name.as_str().to_owned()))
        .flatten();
    let channels: Vec<_> = found
        .iter()
        .map(|(name, subscribers)| {
            serde_json::json!({ "channel": name.as_str(), "subscribers": subscribers })
        })
        .collect();
    let body = serde_json::json!({
        "node": &*ctx.node_id,
        "channels": channels,
        "next_cursor": next_cursor,
    });
    Ok(response(200, JSON, body.to_string()))
}

pub(super) async fn history(raw_channel: &str, query: &str, ctx: &ControlContext) -> Handled {
    let channel = channel_name(raw_channel, ctx)?;
    let mut since = None;
    let mut limit = 100;
    for (key, value) in query_pairs(query, &["since", "limit"])? {
        match key.as_str() {
            "since" if value.is_empty() => {}
            "since" => {
                since =
                    Some(value.parse::<Offset>().map_err(|err| {
                        ApiError::new(Kind::BadRequest, format!("`since`: {err}"))
                    })?);
            }
            _ => limit = parse_limit(&value, MAX_HISTORY_LIMIT)?,
        }
    }
    let history = ctx.bus.history(&channel, since, limit).await?;
    let mut body = String::with_capacity(128 + history.messages.len() * 64);
    let _ = write!(
        body,
        r#"{{"channel":"{channel}","offset":"{}""#,
        history.offset
    );
    if let Some(recovered) = history.recovered {
        let _ = write!(body, r#","recovered":{recovered}"#);
    }
    body.push_str(r#","messages":["#);
    for (index, (offset, data)) in history.messages.iter().enumerate() {
        if index > 0 {
            body.push(',');
        }
        data.write_entry(&mut body, *offset);
    }
    body.push_str("]}");
    Ok(response(200, JSON, body))
}
