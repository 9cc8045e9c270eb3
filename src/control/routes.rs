//! Routing: the route table, rate limits per key, request ids, health and metrics.

use std::net::SocketAddr;

use hyper::{Method, Request, Response, body::Incoming};
use tracing::Instrument as _;

use super::{
    Body, ControlContext, JSON,
    auth::{Caller, authorize},
    blocks, channels,
    error::{ApiError, Handled, Kind},
    ingest, nodes, publishing, response, revoke,
};
use crate::telemetry::{self, RateScope};

/// Routes one request. Never fails: every error becomes a JSON error response.
pub(super) async fn handle(
    request: Request<Incoming>,
    peer: SocketAddr,
    ctx: &ControlContext,
) -> Response<Body> {
    let started = tokio::time::Instant::now();
    let path = request.uri().path().to_owned();
    let request_id = request_id(&request);
    // Every log line about this request carries its id, as its answer does.
    // One field: the span is made for every request, and at the default level (info) each
    // field is formatted when it is; method and path are in the debug line below.
    let span = tracing::info_span!("request", request_id = request_id.as_str());
    let (route, result) = route(request, &path, peer, ctx)
        .instrument(span.clone())
        .await;
    let mut response = result.unwrap_or_else(ApiError::into_response);
    span.in_scope(|| {
        tracing::debug!(
            route,
            path,
            status = response.status().as_u16(),
            micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "Control request answered"
        );
    });
    if let Ok(value) = hyper::header::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    if path == "/v1/publish" {
        telemetry::metrics()
            .http_publish_duration
            .record(started.elapsed().as_secs_f64());
    }
    telemetry::http_request(route, response.status().as_u16());
    response
}

/// The header that names a request, in both directions.
const REQUEST_ID: &str = "x-request-id";

/// The request's id: the caller's `X-Request-Id` when it is one (1-128 bytes of letters,
/// digits and `-_.:/+=`, as load balancers and tracing systems make them), else a new random
/// one. A caller's id that is none of those is replaced, not echoed (header injection, log
/// forging).
fn request_id(request: &Request<Incoming>) -> String {
    request
        .headers()
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|id| {
            (1..=128).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(&b))
        })
        .map_or_else(
            || format!("{:016x}", rand::random::<u64>()),
            ToOwned::to_owned,
        )
}

/// One route of the control API: its path (`{channel}` stands for a percent-encoded channel
/// name), its metrics label, the methods it takes (a GET route takes HEAD too) and whether it
/// needs the API key. `docs/openapi.json` documents exactly these (a unit test compares them).
pub(super) struct RouteSpec {
    pub(super) path: &'static str,
    pub(super) label: &'static str,
    pub(super) methods: &'static str,
    pub(super) keyed: bool,
}

const fn spec(path: &'static str, label: &'static str, methods: &'static str) -> RouteSpec {
    RouteSpec {
        path,
        label,
        methods,
        keyed: true,
    }
}

const fn open(path: &'static str, label: &'static str) -> RouteSpec {
    RouteSpec {
        path,
        label,
        methods: "GET",
        keyed: false,
    }
}

/// Every route the control API serves.
pub(super) const ROUTES: [RouteSpec; 26] = [
    open("/healthz", "healthz"),
    open("/readyz", "readyz"),
    open("/metrics", "metrics"),
    open("/v1/openapi.json", "openapi"),
    spec("/v1/publish", "publish", "POST"),
    spec("/v1/broadcast", "broadcast", "POST"),
    spec("/v1/batch", "batch", "POST"),
    spec("/v1/append", "append", "POST"),
    spec("/v1/finish", "finish", "POST"),
    spec("/v1/update", "update", "POST"),
    spec("/v1/delete", "delete", "POST"),
    spec("/v1/streams", "streams", "POST"),
    spec("/v1/channels/{channel}/history", "history", "GET"),
    spec("/v1/channels/{channel}/presence", "presence", "GET"),
    spec(
        "/v1/channels/{channel}/presence-stats",
        "presence_stats",
        "GET",
    ),
    spec("/v1/channels", "channels", "GET"),
    spec("/v1/subscribe", "subscribe", "POST"),
    spec("/v1/unsubscribe", "unsubscribe", "POST"),
    spec("/v1/stats", "stats", "GET"),
    spec("/v1/nodes", "nodes", "GET"),
    spec("/v1/disconnect", "disconnect", "POST"),
    spec("/v1/drain", "drain", "GET, POST, DELETE"),
    spec("/v1/reload-tls", "reload_tls", "POST"),
    spec("/v1/block", "block", "POST, DELETE"),
    spec("/v1/blocks", "blocks", "GET"),
    spec("/v1/revoke", "revoke", "POST"),
];

/// The route `path` names, with the channel of a channel route (still percent-encoded).
fn find_route(path: &str) -> Option<(&'static RouteSpec, Option<&str>)> {
    if let Some(found) = ROUTES.iter().find(|route| route.path == path) {
        return Some((found, None));
    }
    let rest = path.strip_prefix("/v1/channels/")?;
    ROUTES.iter().find_map(|route| {
        let suffix = route.path.strip_prefix("/v1/channels/{channel}")?;
        let raw = rest
            .strip_suffix(suffix.strip_prefix('/')?)?
            .strip_suffix('/')?;
        Some((route, Some(raw)))
    })
}

async fn route(
    request: Request<Incoming>,
    path: &str,
    peer: SocketAddr,
    ctx: &ControlContext,
) -> (&'static str, Handled) {
    // HEAD is GET without the body (RFC 9110 9.3.2); hyper leaves the body out.
    let method = match request.method() {
        &Method::HEAD => Method::GET,
        method => method.clone(),
    };
    let found = find_route(path);
    let keyed = found.is_none_or(|(route, _)| route.keyed);
    if keyed && path.starts_with("/v1/") {
        // Unknown `/v1` paths too: who holds no key learns nothing of the routes.
        let caller = match authorize(&request, peer, ctx) {
            Ok(caller) => caller,
            Err(err) => return ("v1", Err(err)),
        };
        // A path that is no route gets its 404 without costing the key a token.
        if found.is_some()
            && let Some(limiter) = &ctx.settings.key_limiter
            && let Err(rejected) = limiter.try_acquire(&caller, ctx.hub.clock_ns(), 1)
        {
            telemetry::rate_limited(RateScope::ApiKey);
            return ("v1", Err(ApiError::rate_limited(rejected.retry_after)));
        }
        let Some((route, channel)) = found else {
            return ("unknown", Err(no_such_route()));
        };
        if !route.methods.split(", ").any(|allowed| allowed == method) {
            return (
                route.label,
                Err(ApiError::method_not_allowed(route.methods)),
            );
        }
        let handled = match channel {
            Some(raw) => channel_request(route.label, raw, &request, ctx).await,
            None => route_v1(request, route.label, &method, &caller, ctx).await,
        };
        return (route.label, handled);
    }
    let Some((route, _)) = found else {
        return ("unknown", Err(no_such_route()));
    };
    if method != Method::GET {
        return (
            route.label,
            Err(ApiError::method_not_allowed(route.methods)),
        );
    }
    let handled = match route.label {
        "healthz" => healthz(),
        "readyz" => readyz(ctx),
        "metrics" => metrics(ctx),
        _ => super::openapi::document(),
    };
    (route.label, Ok(handled))
}

fn no_such_route() -> ApiError {
    ApiError::new(Kind::NotFound, "no such route")
}

/// Runs a `/v1` route other than the channel routes (`label`, with a method it takes).
async fn route_v1(
    request: Request<Incoming>,
    label: &'static str,
    method: &Method,
    caller: &Caller,
    ctx: &ControlContext,
) -> Handled {
    let query = request.uri().query().unwrap_or("").to_owned();
    match label {
        "publish" => {
            publishing::publishing(ctx, async |writes| {
                publishing::publish(request, ctx, writes).await
            })
            .await
        }
        "batch" => {
            publishing::publishing(ctx, async |writes| {
                publishing::batch(request, caller, ctx, writes).await
            })
            .await
        }
        "append" | "finish" | "update" | "delete" => {
            publishing::publishing(ctx, async |writes| {
                publishing::change(request, ctx, writes, label).await
            })
            .await
        }
        "streams" => ingest::ingest(request, ctx).await,
        "broadcast" => {
            publishing::publishing(ctx, async |writes| {
                publishing::broadcast(request, ctx, writes).await
            })
            .await
        }
        "disconnect" => nodes::disconnect(request, ctx).await,
        "stats" => nodes::stats(&query, ctx).await,
        "nodes" => nodes::nodes(ctx).await,
        "drain" if method == Method::POST => nodes::start_drain(request, ctx).await,
        "drain" if method == Method::DELETE => nodes::cancel_drain(ctx),
        "drain" => Ok(nodes::drain_status(200, &ctx.drain.status())),
        "reload_tls" => nodes::reload_tls(ctx),
        "block" if method == Method::POST => blocks::block(request, ctx).await,
        "block" => blocks::unblock(request, ctx).await,
        "blocks" => blocks::list(&query, ctx),
        "revoke" => revoke::revoke(request, ctx).await,
        "channels" => channels::channels(&query, ctx).await,
        "subscribe" => channels::server_subscribe(request, ctx, true).await,
        "unsubscribe" => channels::server_subscribe(request, ctx, false).await,
        _ => Err(no_such_route()),
    }
}

/// Runs a channel route (`label`) for the percent-encoded channel `raw`.
async fn channel_request(
    label: &'static str,
    raw: &str,
    request: &Request<Incoming>,
    ctx: &ControlContext,
) -> Handled {
    let channel = channel_in_path(raw)?;
    let query = request.uri().query().unwrap_or("");
    match label {
        "history" => channels::history(&channel, query, ctx).await,
        "presence" => channels::presence(&channel, query, ctx).await,
        _ => channels::presence_stats(&channel, query, ctx).await,
    }
}

/// The channel a path segment names, percent-decoded. In a path `+` is itself, not a space
/// (that is a form's rule), and a `%` that starts no escape stays as it is, for the channel
/// grammar to refuse.
fn channel_in_path(raw: &str) -> Result<std::borrow::Cow<'_, str>, ApiError> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| {
            ApiError::new(
                Kind::BadRequest,
                "the channel in the path is not percent-encoded UTF-8",
            )
        })
}

fn healthz() -> Response<Body> {
    response(200, JSON, r#"{"status":"ok"}"#)
}

fn readyz(ctx: &ControlContext) -> Response<Body> {
    let mut reasons: Vec<String> = ctx
        .readiness
        .reasons()
        .into_iter()
        .map(str::to_owned)
        .collect();
    reasons.extend(ctx.bus.unready_reasons());
    let details = ctx.bus.details();
    let mut body = serde_json::json!({ "ready": reasons.is_empty() });
    if !reasons.is_empty() {
        body["reasons"] = serde_json::json!(reasons);
    }
    if !details.is_empty() {
        body["details"] = serde_json::json!(details);
    }
    let status = if reasons.is_empty() { 200 } else { 503 };
    response(status, JSON, body.to_string())
}

/// Renders the metrics. The per-connection sums and the process metrics (which count open
/// descriptors) are gathered every few seconds by `app`'s sweep, not here, so a scrape costs
/// the same at 10 or 1,000,000 connections.
fn metrics(ctx: &ControlContext) -> Response<Body> {
    telemetry::record_snapshot(&ctx.hub.snapshot());
    response(200, "text/plain; version=0.0.4", ctx.metrics.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_in_a_path_is_percent_decoded_as_a_path_not_a_form() {
        assert_eq!(channel_in_path("chat%3Aroom-1").unwrap(), "chat:room-1");
        assert_eq!(
            channel_in_path("a+b").unwrap(),
            "a+b",
            "`+` is itself in a path"
        );
        assert_eq!(channel_in_path("a%2Fb").unwrap(), "a/b");
        assert_eq!(
            channel_in_path("50%").unwrap(),
            "50%",
            "left for the grammar to refuse"
        );
        assert_eq!(
            channel_in_path("%+f").unwrap(),
            "%+f",
            "no escape, not a space"
        );
        assert_eq!(channel_in_path("caf%C3%A9").unwrap(), "café");
        let err = channel_in_path("%FF%FE").unwrap_err();
        assert_eq!(err.kind(), Kind::BadRequest);
    }
}
