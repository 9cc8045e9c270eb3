//! Routing and the handlers of the control API.

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr, time::Duration};

use http_body_util::{BodyExt as _, Limited};
use hyper::{Method, Request, Response, body::Incoming, header};
use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::Instrument as _;

use super::{Body, ControlContext, blocks, fields, ingest, is_loopback, response, streams};
use crate::{
    cluster::BusError,
    hub::{Applied, Editor, Op, SessionCommand, WriteBatch},
    presence::PresenceError,
    protocol::{ChannelName, CloseCode, ErrorCode, Offset},
    telemetry::{self, RateScope},
};

pub(super) const JSON: &str = "application/json";
/// Channels one broadcast may name.
const MAX_BROADCAST_CHANNELS: usize = 1000;
/// Commands one `POST /v1/batch` may hold.
const MAX_BATCH_COMMANDS: usize = 1000;
/// Messages one history read may return.
const MAX_HISTORY_LIMIT: usize = 1000;

/// An HTTP error: status, code and message, rendered as `{"error":{..}}`.
#[derive(Debug)]
pub(super) struct ApiError {
    status: u16,
    code: ErrorCode,
    message: String,
    /// Seconds for a `Retry-After` header (429).
    retry_after_secs: Option<u64>,
    /// Close the connection after answering (a body that stalled).
    close: bool,
}

impl ApiError {
    pub(super) fn new(status: u16, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
            close: false,
        }
    }

    /// The HTTP status it answers with.
    pub(super) fn status(&self) -> u16 {
        self.status
    }

    /// The `Retry-After` of a 429, in seconds.
    pub(super) fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after_secs
    }

    fn rate_limited(retry_after: Duration) -> Self {
        let millis = retry_after.as_millis().max(1);
        Self {
            retry_after_secs: Some(
                retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0),
            ),
            ..Self::new(
                429,
                ErrorCode::RateLimited,
                format!("rate limit of this API key exceeded; retry after {millis} ms"),
            )
        }
    }

    /// 408: the body did not arrive within `control.body_timeout`; the connection closes.
    fn body_timeout(timeout: Duration) -> Self {
        Self {
            close: true,
            ..Self::new(
                408,
                ErrorCode::BadRequest,
                format!(
                    "the request body did not arrive within {} ms",
                    timeout.as_millis()
                ),
            )
        }
    }

    fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({
            "error": { "code": self.code.as_str(), "message": self.message }
        });
        let mut response = response(self.status, JSON, body.to_string());
        if self.status == 401 {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        if self.close {
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

impl From<BusError> for ApiError {
    fn from(err: BusError) -> Self {
        // Whatever went wrong, nothing was done and a retry may succeed.
        ApiError::new(503, ErrorCode::Unavailable, err.to_string())
    }
}

impl From<PresenceError> for ApiError {
    fn from(err: PresenceError) -> Self {
        match err {
            PresenceError::BadCursor => ApiError::new(400, ErrorCode::BadRequest, err.to_string()),
            PresenceError::Unavailable(err) => err.into(),
        }
    }
}

pub(super) type Handled = Result<Response<Body>, ApiError>;

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
    if ctx.hub.is_draining() {
        // The node exits once drained, closing idle keep-alive connections: a request sent
        // on one as it closes is neither answered nor known to be refused. Answered with
        // `Connection: close`, every caller's next request opens a connection, which the
        // node either serves or refuses outright.
        response.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
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

/// A body declared larger than `control.max_body_bytes`, up to this many times that, is read
/// and dropped (within `control.body_timeout`) before the 413 is sent. Closing a connection
/// with request bytes still unread makes the kernel reset it, and a client still sending
/// would then see the reset instead of the answer; larger bodies are not worth the bandwidth
/// and get the answer at once.
const DISCARD_FACTOR: usize = 4;

/// Reads and drops `body` (at most `length` bytes, within `timeout`).
async fn discard_body(mut body: Incoming, length: usize, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, async {
        let mut seen = 0;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, bytes::Bytes::len);
            if seen >= length {
                break;
            }
        }
    })
    .await;
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
pub(super) const ROUTES: [RouteSpec; 25] = [
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
            return (route.label, method_not_allowed(route.methods));
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
        return (route.label, method_not_allowed(route.methods));
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
    ApiError::new(404, ErrorCode::NotFound, "no such route")
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
        "publish" => publishing(ctx, async |writes| publish(request, ctx, writes).await).await,
        "batch" => {
            publishing(ctx, async |writes| {
                batch(request, caller, ctx, writes).await
            })
            .await
        }
        "append" | "finish" | "update" | "delete" => {
            publishing(ctx, async |writes| {
                change(request, ctx, writes, label).await
            })
            .await
        }
        "streams" => ingest::ingest(request, ctx).await,
        "broadcast" => publishing(ctx, async |writes| broadcast(request, ctx, writes).await).await,
        "disconnect" => disconnect(request, ctx).await,
        "stats" => stats(&query, ctx).await,
        "nodes" => nodes(ctx).await,
        "drain" if method == Method::POST => start_drain(request, ctx).await,
        "drain" if method == Method::DELETE => cancel_drain(ctx),
        "drain" => Ok(drain_status(200, &ctx.drain.status())),
        "reload_tls" => reload_tls(ctx),
        "block" if method == Method::POST => blocks::block(request, ctx).await,
        "block" => blocks::unblock(request, ctx).await,
        "blocks" => blocks::list(&query, ctx),
        "channels" => channels(&query, ctx).await,
        "subscribe" => server_subscribe(request, ctx, true).await,
        "unsubscribe" => server_subscribe(request, ctx, false).await,
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
    // In a path `+` is itself, not a space (that is a form's rule), and a `%` that starts
    // no escape stays as it is, for the channel grammar to refuse.
    let channel = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| {
            ApiError::new(
                400,
                ErrorCode::BadRequest,
                "the channel in the path is not percent-encoded UTF-8",
            )
        })?;
    let query = request.uri().query().unwrap_or("");
    match label {
        "history" => history(&channel, query, ctx).await,
        "presence" => presence(&channel, query, ctx).await,
        _ => presence_stats(&channel, query, ctx).await,
    }
}

/// 405 with the `Allow` header naming the methods the route takes (GET routes take HEAD too).
fn method_not_allowed(allowed: &'static str) -> Handled {
    let mut response = ApiError::new(
        405,
        ErrorCode::BadRequest,
        format!("method not allowed; use {allowed}"),
    )
    .into_response();
    let allow = if allowed == "GET" {
        "GET, HEAD"
    } else {
        allowed
    };
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    Ok(response)
}

/// Who is calling, as far as rate limits go: the index of the API key presented, or
/// `LOOPBACK_CALLER` when no keys are configured.
type Caller = usize;
const LOOPBACK_CALLER: Caller = usize::MAX;

fn authorize(
    request: &Request<Incoming>,
    peer: SocketAddr,
    ctx: &ControlContext,
) -> Result<Caller, ApiError> {
    if ctx.settings.api_keys.is_empty() {
        if is_loopback(peer) {
            return Ok(LOOPBACK_CALLER);
        }
        return Err(ApiError::new(
            403,
            ErrorCode::Forbidden,
            "no API key is configured, so /v1 answers loopback clients only",
        ));
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token);
    match presented.map(|key| ctx.settings.api_keys.position(key.trim().as_bytes())) {
        Some(Some(caller)) => Ok(caller),
        Some(None) => Err(ApiError::new(
            401,
            ErrorCode::Unauthorized,
            "invalid API key",
        )),
        None => Err(ApiError::new(
            401,
            ErrorCode::Unauthorized,
            "missing `Authorization: Bearer <key>` header",
        )),
    }
}

/// The credentials of an `Authorization: Bearer <token>` header; the scheme is
/// case-insensitive (RFC 9110 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
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

async fn nodes(ctx: &ControlContext) -> Handled {
    let nodes = ctx.bus.nodes().await?;
    Ok(response(
        200,
        JSON,
        serde_json::json!({ "nodes": nodes }).to_string(),
    ))
}

/// Renders the metrics. The per-connection sums and the process metrics (which count open
/// descriptors) are gathered every few seconds by `app`'s sweep, not here, so a scrape costs
/// the same at 10 or 1,000,000 connections.
fn metrics(ctx: &ControlContext) -> Response<Body> {
    telemetry::record_snapshot(&ctx.hub.snapshot());
    response(200, "text/plain; version=0.0.4", ctx.metrics.render())
}

async fn stats(query: &str, ctx: &ControlContext) -> Handled {
    let mut cluster = false;
    for (_, scope) in query_pairs(query, &["scope"])? {
        cluster = match scope.as_str() {
            "node" => false,
            "cluster" => true,
            _ => {
                return Err(ApiError::new(
                    400,
                    ErrorCode::BadRequest,
                    "`scope` must be node or cluster",
                ));
            }
        };
    }
    if !cluster {
        return Ok(node_stats(ctx));
    }
    let nodes = ctx.bus.nodes().await?;
    let connections: u64 = nodes
        .iter()
        .filter_map(|node| node["connections"].as_u64())
        .sum();
    let body = serde_json::json!({
        "scope": "cluster",
        "nodes": nodes.len(),
        "connections": connections,
        "per_node": nodes,
    });
    Ok(response(200, JSON, body.to_string()))
}

fn node_stats(ctx: &ControlContext) -> Response<Body> {
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

/// Reads a JSON body: checks the content type and the size limit, then parses it.
pub(super) async fn json_body<T: for<'de> Deserialize<'de>>(
    request: Request<Incoming>,
    ctx: &ControlContext,
) -> Result<T, ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    // What `curl -d` and `requests.post(data=...)` send with a JSON string: taken when the
    // body is JSON. Any other declared type is a mistake worth saying.
    let undeclared = media_type.is_empty()
        || media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded");
    if !media_type.eq_ignore_ascii_case(JSON) && !undeclared {
        return Err(ApiError::new(
            415,
            ErrorCode::BadRequest,
            format!("Content-Type must be application/json (got {media_type:.64})"),
        ));
    }
    let too_large = || {
        ApiError::new(
            413,
            ErrorCode::LimitExceeded,
            format!(
                "request body is larger than {} bytes",
                ctx.settings.max_body_bytes
            ),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if let Some(length) = declared.filter(|length| *length > ctx.settings.max_body_bytes) {
        if length <= ctx.settings.max_body_bytes.saturating_mul(DISCARD_FACTOR) {
            discard_body(request.into_body(), length, ctx.settings.body_timeout).await;
        }
        return Err(too_large());
    }
    let read = Limited::new(request.into_body(), ctx.settings.max_body_bytes).collect();
    let Ok(body) = tokio::time::timeout(ctx.settings.body_timeout, read).await else {
        return Err(ApiError::body_timeout(ctx.settings.body_timeout));
    };
    let body = body
        .map_err(|err| {
            if err.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                ApiError::new(
                    400,
                    ErrorCode::BadRequest,
                    "could not read the request body",
                )
            }
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|err| {
        if err.is_data() {
            ApiError::new(422, ErrorCode::BadRequest, err.to_string())
        } else if undeclared {
            ApiError::new(
                400,
                ErrorCode::BadRequest,
                format!(
                    "body is not valid JSON: {err} (send JSON with Content-Type: \
                     application/json; a form-encoded body is not taken)"
                ),
            )
        } else {
            ApiError::new(
                400,
                ErrorCode::BadRequest,
                format!("body is not valid JSON: {err}"),
            )
        }
    })
}

pub(super) fn channel_name(name: &str, ctx: &ControlContext) -> Result<ChannelName, ApiError> {
    ChannelName::parse(name, ctx.settings.max_channel_name_bytes).map_err(|err| {
        ApiError::new(
            422,
            ErrorCode::BadRequest,
            format!("channel `{name}`: {err}"),
        )
    })
}

pub(super) fn check_payload(data: &RawValue, ctx: &ControlContext) -> Result<(), ApiError> {
    if data.get().len() > ctx.settings.max_publish_payload_bytes {
        return Err(ApiError::new(
            413,
            ErrorCode::LimitExceeded,
            format!(
                "`data` is larger than {} bytes",
                ctx.settings.max_publish_payload_bytes
            ),
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    channel: String,
    data: Box<RawValue>,
    /// Deduplicates the publish, and names the message for later changes.
    #[serde(default, deserialize_with = "fields::present")]
    message_id: Option<String>,
    /// Opens a stream (needs `message_id`).
    #[serde(default)]
    stream: bool,
}

/// The routes that publish (through [`publishing`]): their answer is 503 while the bus is
/// unavailable.
pub(super) const PUBLISHING_ROUTES: [&str; 8] = [
    "publish",
    "batch",
    "broadcast",
    "append",
    "finish",
    "update",
    "delete",
    "streams",
];

/// Runs a route that publishes with one [`WriteBatch`] for all it publishes, written after
/// the answer: the answer leaves first, then a small channel's deliveries (a large channel's
/// are written by its round's task anyway).
async fn publishing(
    ctx: &ControlContext,
    route: impl AsyncFnOnce(&mut WriteBatch) -> Handled,
) -> Handled {
    let mut writes = ctx.hub.write_batch();
    let handled = route(&mut writes).await;
    writes.flush_later();
    handled
}

async fn publish(
    request: Request<Incoming>,
    ctx: &ControlContext,
    writes: &mut WriteBatch,
) -> Handled {
    let body: PublishRequest = json_body(request, ctx).await?;
    let applied = publish_one(&body, ctx, writes).await?;
    Ok(streams::answer(applied))
}

/// Checks one publish and hands it to the bus: its offset.
async fn publish_one(
    body: &PublishRequest,
    ctx: &ControlContext,
    writes: &mut WriteBatch,
) -> Result<Applied, ApiError> {
    let channel = channel_name(&body.channel, ctx)?;
    check_payload(&body.data, ctx)?;
    if let Some(id) = &body.message_id {
        streams::message_id(id)?;
    } else if body.stream {
        return Err(ApiError::new(
            422,
            ErrorCode::BadRequest,
            "a stream needs a `message_id`",
        ));
    }
    charge_channel(&channel, body.data.get().len(), ctx)?;
    let op = Op::Publish {
        data: body.data.get(),
        message_id: body.message_id.as_deref(),
        stream: body.stream,
    };
    Ok(ctx
        .bus
        .apply(&channel, op, &Editor::Backend, writes)
        .await?)
}

/// Takes `bytes` from the channel's publish budget for the control API
/// (`limits.channel_publish_bytes_per_second`; clients have their own): 429 with
/// `Retry-After` when it refuses.
pub(super) fn charge_channel(
    channel: &ChannelName,
    bytes: usize,
    ctx: &ControlContext,
) -> Result<(), ApiError> {
    let Some(budget) = &ctx.channel_budget else {
        return Ok(());
    };
    let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
    let Err(rejected) = budget.try_acquire(channel, ctx.hub.clock_ns(), bytes) else {
        return Ok(());
    };
    telemetry::rate_limited(RateScope::ChannelPublishBytes);
    let mut err = ApiError::rate_limited(rejected.retry_after);
    err.message = format!(
        "channel {channel} is over {} bytes/s (limits.channel_publish_bytes_per_second); \
         retry after {} ms",
        budget.quota().per_second(),
        rejected.retry_after.as_millis().max(1)
    );
    Err(err)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastRequest {
    channels: Vec<String>,
    data: Box<RawValue>,
}

async fn broadcast(
    request: Request<Incoming>,
    ctx: &ControlContext,
    writes: &mut WriteBatch,
) -> Handled {
    let body: BroadcastRequest = json_body(request, ctx).await?;
    match broadcast_one(&body, ctx, writes).await {
        Ok(offsets) => Ok(response(
            200,
            JSON,
            serde_json::json!({ "offsets": offsets }).to_string(),
        )),
        // Say which channels did get the message, so the caller can retry the rest.
        Err((err, offsets)) if err.status == 503 => {
            let body = serde_json::json!({
                "error": { "code": err.code.as_str(), "message": err.message },
                "offsets": offsets,
            });
            Ok(response(503, JSON, body.to_string()))
        }
        Err((err, _)) => Err(err),
    }
}

/// Offsets of one message, by channel.
type Offsets = BTreeMap<String, String>;

/// Checks one broadcast and hands it to the bus channel by channel: the offsets, or the error
/// and the channels that got the message before it.
async fn broadcast_one(
    body: &BroadcastRequest,
    ctx: &ControlContext,
    writes: &mut WriteBatch,
) -> Result<Offsets, (ApiError, Offsets)> {
    if body.channels.is_empty() || body.channels.len() > MAX_BROADCAST_CHANNELS {
        let message = format!("`channels` must list 1 to {MAX_BROADCAST_CHANNELS} channels");
        return Err((
            ApiError::new(422, ErrorCode::BadRequest, message),
            Offsets::new(),
        ));
    }
    let channels = body
        .channels
        .iter()
        .map(|name| channel_name(name, ctx))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| (err, Offsets::new()))?;
    check_payload(&body.data, ctx).map_err(|err| (err, Offsets::new()))?;
    let mut offsets = Offsets::new();
    for channel in &channels {
        if offsets.contains_key(channel.as_str()) {
            continue;
        }
        charge_channel(channel, body.data.get().len(), ctx)
            .map_err(|err| (err, offsets.clone()))?;
        match ctx.bus.publish(channel, body.data.get(), writes).await {
            Ok(offset) => {
                offsets.insert(channel.as_str().to_owned(), offset.to_string());
            }
            Err(err) => return Err((err.into(), offsets)),
        }
    }
    Ok(offsets)
}

/// One command of `POST /v1/batch`: `{"publish": {..}}`, `{"broadcast": {..}}`, or a change
/// to a message (`append`, `finish`, `update`, `delete`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum BatchCommand {
    Publish(PublishRequest),
    Broadcast(BroadcastRequest),
    Append(streams::AppendRequest),
    Finish(streams::FinishRequest),
    Update(streams::UpdateRequest),
    Delete(streams::DeleteRequest),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    commands: Vec<BatchCommand>,
}

/// `POST /v1/batch`: publishes and broadcasts in the order given, one reply each, in order.
/// A command that fails gets an error reply and the others still run; the envelope itself
/// must be well formed (else 400/422 and nothing runs).
async fn batch(
    request: Request<Incoming>,
    caller: &Caller,
    ctx: &ControlContext,
    writes: &mut WriteBatch,
) -> Handled {
    let body: BatchRequest = json_body(request, ctx).await?;
    let n = body.commands.len();
    if n == 0 || n > MAX_BATCH_COMMANDS {
        return Err(ApiError::new(
            422,
            ErrorCode::BadRequest,
            format!("`commands` must list 1 to {MAX_BATCH_COMMANDS} commands"),
        ));
    }
    // The request itself took one token of the key's rate; each further command takes one.
    if let Some(limiter) = &ctx.settings.key_limiter {
        let extra = u32::try_from(n - 1).unwrap_or(u32::MAX);
        if extra >= limiter.quota().burst() {
            return Err(ApiError::new(
                422,
                ErrorCode::BadRequest,
                format!(
                    "a batch may hold at most control.request_burst_per_key ({}) commands",
                    limiter.quota().burst()
                ),
            ));
        }
        if extra > 0
            && let Err(rejected) = limiter.try_acquire(caller, ctx.hub.clock_ns(), extra)
        {
            telemetry::rate_limited(RateScope::ApiKey);
            return Err(ApiError::rate_limited(rejected.retry_after));
        }
    }
    let error = |err: ApiError| serde_json::json!({ "error": { "code": err.code.as_str(), "message": err.message } });
    let mut replies = Vec::with_capacity(n);
    for command in body.commands {
        replies.push(match command {
            BatchCommand::Publish(publish) => match publish_one(&publish, ctx, writes).await {
                Ok(applied) => streams::applied_json(applied),
                Err(err) => error(err),
            },
            BatchCommand::Append(body) => {
                change_reply(streams::Change::Append(body), ctx, writes).await
            }
            BatchCommand::Finish(body) => {
                change_reply(streams::Change::Finish(body), ctx, writes).await
            }
            BatchCommand::Update(body) => {
                change_reply(streams::Change::Update(body), ctx, writes).await
            }
            BatchCommand::Delete(body) => {
                change_reply(streams::Change::Delete(body), ctx, writes).await
            }
            BatchCommand::Broadcast(broadcast) => {
                match broadcast_one(&broadcast, ctx, writes).await {
                    Ok(offsets) => serde_json::json!({ "offsets": offsets }),
                    Err((err, offsets)) => {
                        let mut reply = error(err);
                        reply["offsets"] = serde_json::json!(offsets);
                        reply
                    }
                }
            }
        });
    }
    Ok(response(
        200,
        JSON,
        serde_json::json!({ "replies": replies }).to_string(),
    ))
}

/// A batch's reply to a change: `{"offset"}` or `{"error"}`.
async fn change_reply(
    change: streams::Change,
    ctx: &ControlContext,
    writes: &mut WriteBatch,
) -> serde_json::Value {
    match streams::change_one(&change, ctx, writes).await {
        Ok(applied) => streams::applied_json(applied),
        Err(err) => {
            serde_json::json!({ "error": { "code": err.code.as_str(), "message": err.message } })
        }
    }
}

/// `POST /v1/append`, `/v1/finish`, `/v1/update`, `/v1/delete`: one change to a message.
async fn change(
    request: Request<Incoming>,
    ctx: &ControlContext,
    writes: &mut WriteBatch,
    route: &'static str,
) -> Handled {
    let change = match route {
        "append" => streams::Change::Append(json_body(request, ctx).await?),
        "finish" => streams::Change::Finish(json_body(request, ctx).await?),
        "update" => streams::Change::Update(json_body(request, ctx).await?),
        _ => streams::Change::Delete(json_body(request, ctx).await?),
    };
    let applied = streams::change_one(&change, ctx, writes).await?;
    Ok(streams::answer(applied))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectRequest {
    #[serde(default, deserialize_with = "fields::whole_number")]
    conn_id: Option<u64>,
    /// Every connection of this user, on every node.
    #[serde(default, deserialize_with = "fields::present")]
    user: Option<String>,
    /// The close code sent to the client: 1000, 1001 or 3000-4999; 4000 when absent.
    #[serde(default, deserialize_with = "fields::whole_number")]
    code: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeRequest {
    user: String,
    channel: String,
}

/// `POST /v1/subscribe` (`subscribe`) and `POST /v1/unsubscribe`: every connection of
/// `user` on every node; answers how many were told on this node.
async fn server_subscribe(
    request: Request<Incoming>,
    ctx: &ControlContext,
    subscribe: bool,
) -> Handled {
    let body: SubscribeRequest = json_body(request, ctx).await?;
    if body.user.is_empty() {
        return Err(ApiError::new(
            422,
            ErrorCode::BadRequest,
            "`user` must not be empty",
        ));
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

async fn disconnect(request: Request<Incoming>, ctx: &ControlContext) -> Handled {
    let body: DisconnectRequest = json_body(request, ctx).await?;
    let code = match body.code {
        None => CloseCode::Disconnected,
        Some(code @ (1000 | 1001 | 3000..=4999)) => {
            CloseCode::from_code(code).unwrap_or(CloseCode::Disconnected)
        }
        Some(code) => {
            return Err(ApiError::new(
                422,
                ErrorCode::BadRequest,
                format!("`code` {code} is not one a server may send: use 1000, 1001 or 3000-4999"),
            ));
        }
    };
    let conn_id = match (body.conn_id, body.user) {
        (Some(conn_id), None) => conn_id,
        (None, Some(user)) if user.is_empty() => {
            return Err(ApiError::new(
                422,
                ErrorCode::BadRequest,
                "`user` must not be empty",
            ));
        }
        (None, Some(user)) => {
            let closed = ctx.bus.disconnect_user(&user, code).await?;
            let body = serde_json::json!({ "user": user, "disconnected_here": closed });
            return Ok(response(200, JSON, body.to_string()));
        }
        _ => {
            return Err(ApiError::new(
                422,
                ErrorCode::BadRequest,
                "give exactly one of `conn_id` and `user`",
            ));
        }
    };
    if ctx.hub.disconnect(conn_id, code) {
        Ok(response(200, JSON, r#"{"disconnected":true}"#))
    } else {
        Err(ApiError::new(
            404,
            ErrorCode::NotFound,
            format!("no connection {conn_id} on this node"),
        ))
    }
}

/// The optional body of `POST /v1/drain`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    /// Over how long to close the connections; `shutdown.drain_window` when absent.
    #[serde(default, deserialize_with = "fields::whole_number")]
    window_ms: Option<u64>,
    /// When to exit with connections left, from now; `shutdown.drain_deadline` when absent.
    #[serde(default, deserialize_with = "fields::whole_number")]
    deadline_ms: Option<u64>,
}

fn drain_status(status: u16, drain: &crate::drain::DrainStatus) -> Response<Body> {
    let body = serde_json::to_string(drain).unwrap_or_else(|_| "{}".to_owned());
    response(status, JSON, body)
}

fn drain_error(err: &crate::drain::DrainError) -> ApiError {
    use crate::drain::DrainError;
    let status = match err {
        DrainError::Invalid(_) => 422,
        DrainError::NotDraining => 404,
        DrainError::AlreadyDraining | DrainError::StartedBySignal => 409,
    };
    let code = match err {
        DrainError::Invalid(_) => ErrorCode::BadRequest,
        DrainError::NotDraining => ErrorCode::NotFound,
        DrainError::AlreadyDraining | DrainError::StartedBySignal => ErrorCode::Conflict,
    };
    ApiError::new(status, code, err.to_string())
}

/// `POST /v1/drain`: starts draining this node (see `drain`); the body is optional.
async fn start_drain(request: Request<Incoming>, ctx: &ControlContext) -> Handled {
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
fn cancel_drain(ctx: &ControlContext) -> Handled {
    match ctx.drain.cancel() {
        Ok(status) => Ok(drain_status(200, &status)),
        Err(err) => Err(drain_error(&err)),
    }
}

fn reload_tls(ctx: &ControlContext) -> Handled {
    if ctx.certificates.is_empty() {
        return Err(ApiError::new(
            404,
            ErrorCode::NotFound,
            "neither server.tls nor control.tls is configured",
        ));
    }
    match ctx.certificates.reload() {
        Ok(reloaded) => {
            let body = serde_json::json!({ "reloaded": true, "sections": reloaded });
            Ok(response(200, JSON, body.to_string()))
        }
        Err((section, err)) => Err(ApiError::new(
            422,
            ErrorCode::BadRequest,
            format!("{section}: {err}; the old certificate stays"),
        )),
    }
}

/// A query's `key=value` pairs, decoded; `allowed` names the keys the route takes.
pub(super) fn query_pairs(
    query: &str,
    allowed: &[&str],
) -> Result<Vec<(String, String)>, ApiError> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(key, value)| {
            if allowed.contains(&key.as_ref()) {
                Ok((key.into_owned(), value.into_owned()))
            } else {
                Err(ApiError::new(
                    400,
                    ErrorCode::BadRequest,
                    format!("unknown query parameter `{key:.64}`"),
                ))
            }
        })
        .collect()
}

/// A `limit` parameter from 1 to `max`.
pub(super) fn parse_limit(value: &str, max: usize) -> Result<usize, ApiError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|limit| (1..=max).contains(limit))
        .ok_or_else(|| {
            ApiError::new(
                400,
                ErrorCode::BadRequest,
                format!("`limit` must be an integer from 1 to {max}"),
            )
        })
}

/// Members one presence page lists at most, and by default.
const MAX_PRESENCE_PAGE: usize = 1000;
const DEFAULT_PRESENCE_PAGE: usize = 100;

/// `GET /v1/channels/{channel}/presence?cursor=&limit=`: the channel's members (on every
/// node in a cluster), by node and connection, a page at a time.
async fn presence(raw_channel: &str, query: &str, ctx: &ControlContext) -> Handled {
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
async fn presence_stats(raw_channel: &str, query: &str, ctx: &ControlContext) -> Handled {
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
const MAX_CHANNELS_PAGE: usize = 10_000;
const DEFAULT_CHANNELS_PAGE: usize = 1000;

/// `GET /v1/channels?prefix=&cursor=&limit=`: channels with subscribers on this node, in
/// name order, with their subscriber counts.
/// One `/v1/channels` listing at a time: each walks and sorts every channel.
static LISTING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// `GET /v1/channels`. The walk over every channel runs on a blocking thread, one listing at
/// a time, so that probes and publishes on the control API's one thread never wait behind it.
async fn channels(query: &str, ctx: &ControlContext) -> Handled {
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
        .map_err(|_| ApiError::new(503, ErrorCode::Unavailable, "shutting down"))?;
    let hub = std::sync::Arc::clone(&ctx.hub);
    let (found, more) =
        tokio::task::spawn_blocking(move || hub.channels(&prefix, cursor.as_deref(), limit))
            .await
            .map_err(|_| ApiError::new(500, ErrorCode::Internal, "the listing failed"))?;
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

async fn history(raw_channel: &str, query: &str, ctx: &ControlContext) -> Handled {
    let channel = channel_name(raw_channel, ctx)?;
    let mut since = None;
    let mut limit = 100;
    for (key, value) in query_pairs(query, &["since", "limit"])? {
        match key.as_str() {
            "since" if value.is_empty() => {}
            "since" => {
                since = Some(value.parse::<Offset>().map_err(|err| {
                    ApiError::new(400, ErrorCode::BadRequest, format!("`since`: {err}"))
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
