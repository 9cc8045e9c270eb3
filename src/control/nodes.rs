//! The node routes: stats, the node registry, disconnects, drains and certificate reloads.

use std::time::Duration;

use hyper::{Request, Response, body::Incoming, header};
use serde::Deserialize;

use super::{
    Body, ControlContext, JSON,
    error::{ApiError, Handled, Kind},
    fields,
    request::{json_body, query_pairs},
    response,
};
use crate::protocol::CloseCode;

pub(super) async fn nodes(ctx: &ControlContext) -> Handled {
    let nodes = ctx.bus.nodes().await?;
    Ok(response(
        200,
        JSON,
        serde_json::json!({ "nodes": nodes }).to_string(),
    ))
}

pub(super) async fn stats(query: &str, ctx: &ControlContext) -> Handled {
    let mut cluster = false;
    for (_, scope) in query_pairs(query, &["scope"])? {
        cluster = match scope.as_str() {
            "node" => false,
            "cluster" => true,
            _ => {
                return Err(ApiError::new(
                    Kind::BadRequest,
                    "`scope` must be node or cluster",
                ));
            }
        };
    }
    if !cluster {
        return Ok(node_stats(ctx));
    }
    let nodes = ctx.bus.nodes().await?;
    let connections: u64 = nodes.iter().map(|node| node.connections).sum();
    let body = serde_json::json!({
        "scope": "cluster",
        "nodes": nodes.len(),
        "connections": connections,
        "per_node": nodes,
    });
    Ok(response(200, JSON, body.to_string()))
}

pub(super) fn node_stats(ctx: &ControlContext) -> Response<Body> {
    let shards = ctx.hub.shard_stats();
    let snapshot = ctx.hub.snapshot();
    let body = serde_json::json!({
        "node": &*ctx.node_id,
        "bus": ctx.bus.kind(),
        "uptime_seconds": ctx.hub.uptime().as_secs(),
        "connections": snapshot.connections,
        "subscriptions": snapshot.subscriptions,
        "channels": snapshot.channels,
        "history": { "messages": snapshot.history_messages, "bytes": snapshot.history_bytes },
        "shards": shards,
    });
    response(200, JSON, body.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DisconnectRequest {
    #[serde(default, deserialize_with = "fields::whole_number")]
    conn_id: Option<u64>,
    /// Every connection of this user, on every node.
    #[serde(default, deserialize_with = "fields::present")]
    user: Option<String>,
    /// The close code sent to the client: 1000, 1001 or 3000-4999; 4000 when absent.
    #[serde(default, deserialize_with = "fields::whole_number")]
    code: Option<u16>,
}

pub(super) async fn disconnect(request: Request<Incoming>, ctx: &ControlContext) -> Handled {
    let body: DisconnectRequest = json_body(request, ctx).await?;
    let code = match body.code {
        None => CloseCode::Disconnected,
        Some(code @ (1000 | 1001 | 3000..=4999)) => {
            CloseCode::from_code(code).unwrap_or(CloseCode::Disconnected)
        }
        Some(code) => {
            return Err(ApiError::new(
                Kind::Invalid,
                format!("`code` {code} is not one a server may send: use 1000, 1001 or 3000-4999"),
            ));
        }
    };
    let conn_id = match (body.conn_id, body.user) {
        (Some(conn_id), None) => conn_id,
        (None, Some(user)) if user.is_empty() => {
            return Err(ApiError::new(Kind::Invalid, "`user` must not be empty"));
        }
        (None, Some(user)) => {
            let closed = ctx.bus.disconnect_user(&user, code).await?;
            let body = serde_json::json!({ "user": user, "disconnected_here": closed });
            return Ok(response(200, JSON, body.to_string()));
        }
        _ => {
            return Err(ApiError::new(
                Kind::Invalid,
                "give exactly one of `conn_id` and `user`",
            ));
        }
    };
    if ctx.hub.disconnect(conn_id, code) {
        Ok(response(200, JSON, r#"{"disconnected":true}"#))
    } else {
        Err(ApiError::new(
            Kind::NotFound,
            format!("no connection {conn_id} on this node"),
        ))
    }
}

/// The optional body of `POST /v1/drain`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct DrainBody {
    /// Over how long to close the connections; `shutdown.drain_window` when absent.
    #[serde(default, deserialize_with = "fields::whole_number")]
    window_ms: Option<u64>,
    /// When to exit with connections left, from now; `shutdown.drain_deadline` when absent.
    #[serde(default, deserialize_with = "fields::whole_number")]
    deadline_ms: Option<u64>,
}

pub(super) fn drain_status(status: u16, drain: &crate::drain::DrainStatus) -> Response<Body> {
    let body = serde_json::to_string(drain).unwrap_or_else(|_| "{}".to_owned());
    response(status, JSON, body)
}

pub(super) fn drain_error(err: &crate::drain::DrainError) -> ApiError {
    use crate::drain::DrainError;
    let kind = match err {
        DrainError::TooLong { .. } | DrainError::DeadlineTooSoon { .. } => Kind::Invalid,
        DrainError::NotDraining => Kind::NotFound,
        DrainError::AlreadyDraining | DrainError::StartedBySignal => Kind::Conflict,
    };
    ApiError::new(kind, err.to_string())
}

/// `POST /v1/drain`: starts draining this node (see `drain`); the body is optional.
pub(super) async fn start_drain(request: Request<Incoming>, ctx: &ControlContext) -> Handled {
    let has_body = request.headers().contains_key(header::CONTENT_TYPE)
        || request
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0");
    let body: DrainBody = if has_body {
        json_body(request, ctx).await?
    } else {
        DrainBody::default()
    };
    let request = crate::drain::DrainRequest {
        window: body.window_ms.map(Duration::from_millis),
        deadline: body.deadline_ms.map(Duration::from_millis),
    };
    match ctx.drain.start(crate::drain::Origin::Api, request) {
        Ok(status) => Ok(drain_status(202, &status)),
        Err(err) => Err(drain_error(&err)),
    }
}

/// `DELETE /v1/drain`: cancels a drain started through the API.
pub(super) fn cancel_drain(ctx: &ControlContext) -> Handled {
    match ctx.drain.cancel() {
        Ok(status) => Ok(drain_status(200, &status)),
        Err(err) => Err(drain_error(&err)),
    }
}

pub(super) fn reload_tls(ctx: &ControlContext) -> Handled {
    if ctx.certificates.is_empty() {
        return Err(ApiError::new(
            Kind::NotFound,
            "neither server.tls nor control.tls is configured",
        ));
    }
    match ctx.certificates.reload() {
        Ok(reloaded) => {
            let body = serde_json::json!({ "reloaded": true, "sections": reloaded });
            Ok(response(200, JSON, body.to_string()))
        }
        Err((section, err)) => Err(ApiError::new(
            Kind::Invalid,
            format!("{section}: {err}; the old certificate stays"),
        )),
    }
}
