//! `POST /v1/block`, `DELETE /v1/block`, `GET /v1/blocks`: blocking users on every node
//! (see `crate::blocks`).

use hyper::{Request, body::Incoming};
use serde::Deserialize;

use super::{
    ControlContext, JSON,
    error::{ApiError, Handled, Kind},
    fields,
    request::{json_body, parse_limit, query_pairs},
    response,
};
use crate::blocks::{BlockError, unix_now};

/// Blocks one `GET /v1/blocks` page lists at most, and by default.
const MAX_PAGE: usize = 10_000;
const DEFAULT_PAGE: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockRequest {
    user: String,
    /// Unix seconds; absent: until lifted.
    #[serde(default, deserialize_with = "fields::whole_number")]
    until: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnblockRequest {
    user: String,
}

/// `POST /v1/block`: blocks the user on every node; answers how many of its connections
/// this node closed.
pub(super) async fn block(request: Request<Incoming>, ctx: &ControlContext) -> Handled {
    let body: BlockRequest = json_body(request, ctx).await?;
    ctx.hub
        .blocks()
        .check(&body.user, body.until, unix_now())
        .map_err(|err| {
            let kind = match err {
                BlockError::Full => Kind::Full,
                _ => Kind::Invalid,
            };
            ApiError::new(kind, err.to_string())
        })?;
    let closed = ctx.bus.block(&body.user, body.until).await?;
    let answer = serde_json::json!({
        "user": body.user,
        "until": body.until,
        "disconnected_here": closed,
    });
    Ok(response(200, JSON, answer.to_string()))
}

/// `DELETE /v1/block`: lifts the user's block on every node; 404 when there was none.
pub(super) async fn unblock(request: Request<Incoming>, ctx: &ControlContext) -> Handled {
    let body: UnblockRequest = json_body(request, ctx).await?;
    if body.user.is_empty() {
        return Err(ApiError::new(Kind::Invalid, "`user` must not be empty"));
    }
    if !ctx.bus.unblock(&body.user).await? {
        return Err(ApiError::new(
            Kind::NotFound,
            format!("user `{:.64}` is not blocked", body.user),
        ));
    }
    let answer = serde_json::json!({ "user": body.user, "unblocked": true });
    Ok(response(200, JSON, answer.to_string()))
}

/// `GET /v1/blocks?cursor=&limit=`: the blocks in force, by user, a page at a time.
pub(super) fn list(query: &str, ctx: &ControlContext) -> Handled {
    let (mut cursor, mut limit) = (None, DEFAULT_PAGE);
    for (key, value) in query_pairs(query, &["cursor", "limit"])? {
        match key.as_str() {
            "cursor" => cursor = Some(value).filter(|value| !value.is_empty()),
            _ => limit = parse_limit(&value, MAX_PAGE)?,
        }
    }
    let (blocks, more) = ctx.hub.blocks().list(unix_now(), cursor.as_deref(), limit);
    let next_cursor = more
        .then(|| blocks.last().map(|block| block.user.clone()))
        .flatten();
    let answer = serde_json::json!({ "blocks": blocks, "next_cursor": next_cursor });
    Ok(response(200, JSON, answer.to_string()))
}
