//! The control listener: health, readiness, metrics and the `/v1` HTTP API.
//!
//! A small hyper service with hand-written routing; every answer is JSON (metrics aside), every
//! error is `{"error":{"code":..,"message":..}}` with a fitting status. `/v1/*` requires an API
//! key when keys are configured, and answers loopback clients only when none are.
//! `docs/http-api.md` documents each route; keep the two in step. Must not depend on `session`.

mod auth;
mod blocks;
mod channels;
mod error;
mod fields;
mod ingest;
pub mod local;
mod nodes;
mod openapi;
mod publishing;
mod request;
mod revoke;
mod routes;
mod streams;

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use self::auth::ApiKeys;
use crate::{
    cluster::Bus,
    hub::HubHandle,
    shutdown::Readiness,
    telemetry,
    throttle::{KeyedLimiter, Quota},
};

/// How long a client may take to send request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the control API needs.
#[derive(Debug)]
pub struct ControlContext {
    /// The listeners' TLS, for `POST /v1/reload-tls`.
    pub certificates: crate::tls::Certificates,
    pub hub: HubHandle,
    pub bus: Arc<dyn Bus>,
    /// Bytes the control API publishes per channel (`limits.channel_publish_bytes_per_second`),
    /// if limited; clients' publishes have a budget of their own, so they cannot use up this.
    pub channel_budget: Option<Arc<KeyedLimiter<crate::protocol::ChannelName>>>,
    pub readiness: Readiness,
    pub node_id: Arc<str>,
    pub metrics: PrometheusHandle,
    pub settings: ControlSettings,
    /// `POST`, `GET` and `DELETE /v1/drain`.
    pub drain: crate::drain::Drainer,
    /// `GET /v1/channels/{channel}/presence` and `/presence-stats`.
    pub presence: Arc<crate::presence::Presence>,
}

/// The control API's own settings: `[control]`, and the `[limits]` a publish is held to.
#[derive(Debug)]
pub struct ControlSettings {
    pub api_keys: ApiKeys,
    pub max_body_bytes: usize,
    /// Time a request body may take to arrive (`control.body_timeout`).
    pub body_timeout: Duration,
    pub max_channel_name_bytes: usize,
    pub max_publish_payload_bytes: usize,
    /// A streaming ingest that receives nothing for this long abandons its stream
    /// (`streams.idle_timeout`).
    pub stream_idle_timeout: Duration,
    /// Bytes of text one message may hold (`streams.max_text_bytes`): bounds an ingest.
    pub max_text_bytes: usize,
    /// `/v1` requests per API key (`control.requests_per_second_per_key`), if limited. The
    /// key is the index of the matched API key; loopback callers without keys share one.
    pub key_limiter: Option<KeyedLimiter<usize>>,
    /// `auth.max_token_ttl`: how long a revocation without `until` holds.
    pub max_token_ttl: Duration,
}

impl ControlSettings {
    /// From `[control]` and `[limits]`.
    #[must_use]
    pub fn from_config(config: &crate::config::Config) -> Self {
        let control = &config.control;
        Self {
            api_keys: ApiKeys::new(&control.api_keys),
            max_body_bytes: control.max_body_bytes,
            body_timeout: control.body_timeout,
            max_channel_name_bytes: config.limits.max_channel_name_bytes,
            max_publish_payload_bytes: config.limits.max_publish_payload_bytes,
            stream_idle_timeout: config.streams.idle_timeout,
            max_text_bytes: config.streams.max_text_bytes,
            key_limiter: Quota::new(
                control.requests_per_second_per_key,
                control.request_burst_per_key,
            )
            .map(KeyedLimiter::new),
            max_token_ttl: config.auth.max_token_ttl,
        }
    }
}

pub(crate) type Body = Full<Bytes>;

/// The content type of every JSON answer.
pub(crate) const JSON: &str = "application/json";

/// How long in-flight requests may take to finish once the control API is stopped.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// Serves the control API on a thread and runtime of its own until `stop` is cancelled; the
/// returned future resolves once that thread has finished (in-flight requests get
/// `STOP_GRACE`).
///
/// Why a thread of its own: a publish is answered once its frame is queued to every
/// subscriber, and the sessions' runtime then writes it out. On that runtime the next request
/// would wait behind those writes (a 5,000-subscriber fan-out is about 35 ms of syscalls on
/// this class of machine), and so would health checks. Here, requests are read, published
/// and answered while the workers write, and frames published meanwhile join the writes
/// still pending (the write lane lists a connection once), which is how writes batch under
/// load.
///
/// # Errors
/// When the runtime cannot be built, the listener not moved to it, or the thread not started.
pub async fn serve_on_own_thread(
    listener: TcpListener,
    tls: Option<Arc<crate::tls::Tls>>,
    ctx: Arc<ControlContext>,
    stop: CancellationToken,
) -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    // The 503s of the publishing routes are what an outage of the bus shows publishers;
    // exported at 0 so that an alert sees the first burst of them.
    for route in publishing::PUBLISHING_ROUTES {
        telemetry::http_requests_registered(route, 503);
    }
    let listener = listener.into_std()?;
    // The thread reports whether its runtime and listener came up, so that a failure fails
    // the start; then `done` closes when it ends.
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<std::io::Result<()>>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("switchboard-control".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    let _ = started_tx.send(Err(err));
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(err) => {
                        let _ = started_tx.send(Err(err));
                        return;
                    }
                };
                let _ = started_tx.send(Ok(()));
                let connections = crate::shutdown::TaskGroup::new();
                serve(listener, tls, ctx, stop, connections.clone()).await;
                let _ = tokio::time::timeout(STOP_GRACE, connections.wait()).await;
            });
            drop(done_tx);
        })?;
    started_rx
        .await
        .map_err(|_| std::io::Error::other("the control API's thread ended while starting"))??;
    Ok(async move {
        let _ = done_rx.await;
    })
}

/// Serves the control API on `listener` (HTTPS when `tls` is given) until `stop` is
/// cancelled.
///
/// # Cancel safety
/// Meant to run as its own task; after `stop`, the connections already made are served for
/// a moment before they close (`serve_connection`), and the listener closes last.
async fn serve(
    listener: TcpListener,
    tls: Option<Arc<crate::tls::Tls>>,
    ctx: Arc<ControlContext>,
    stop: CancellationToken,
    spawn: crate::shutdown::TaskGroup,
) {
    let mut failing = crate::accept::AcceptFailures::new("control", None);
    let connection = |stream, peer| {
        spawn_connection(&spawn, stream, peer, tls.as_ref(), &ctx, &stop);
    };
    loop {
        failing.restore_reserve();
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors: serve one waiting request (a health check, most
                // likely) on the reserve descriptor, so that the node can still say it is
                // unready; otherwise back off instead of spinning.
                let accepted = if failing.failed(&err) {
                    failing.release_reserve();
                    futures_util::FutureExt::now_or_never(listener.accept()).and_then(Result::ok)
                } else {
                    None
                };
                let Some(accepted) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                accepted
            }
        };
        connection(stream, peer);
    }
    // Connections the kernel has completed but nobody accepted yet would be reset when the
    // listener closes, with their callers' requests sent and unanswered: they are accepted
    // and served first. Asked of the socket itself, not of the runtime, which may not have
    // seen their readiness yet; a caller connecting after the last `accept` is refused.
    // At most a listen backlog's worth: a caller connecting without pause cannot keep the
    // listener open (this loop never yields, so nothing else runs while it accepts).
    let Ok(listener) = listener.into_std() else {
        return;
    };
    for (stream, peer) in std::iter::from_fn(|| listener.accept().ok()).take(MAX_QUEUED_AT_STOP) {
        let stream = stream
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpStream::from_std(stream));
        if let Ok(stream) = stream {
            connection(stream, peer);
        }
    }
}

/// Serves one accepted connection on a task of `spawn`, after the TLS handshake when `tls`
/// is given.
fn spawn_connection(
    spawn: &crate::shutdown::TaskGroup,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Option<&Arc<crate::tls::Tls>>,
    ctx: &Arc<ControlContext>,
    stop: &CancellationToken,
) {
    let ctx = Arc::clone(ctx);
    let stop = stop.clone();
    let acceptor = tls.map(|tls| tls.acceptor());
    spawn.spawn(async move {
        let Some(acceptor) = acceptor else {
            return serve_connection(stream, peer, ctx, stop).await;
        };
        // The handshake shares the header timeout: a client that opens a connection and
        // sends nothing holds it no longer than one that stalls its headers. A stop does
        // not cut it: the client may have its request ready behind it (the control thread
        // gives its connections `STOP_GRACE` in all).
        match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => serve_connection(stream, peer, ctx, stop).await,
            Ok(Err(err)) => tracing::debug!(%peer, error = %err, "Control TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "Control TLS handshake timed out"),
        }
    });
}

/// Connections the control listener accepts from its queue once stopped, at most (the
/// kernel's default listen backlog).
const MAX_QUEUED_AT_STOP: usize = 4096;

/// How long a connection is still read after the control API is stopped, before it closes
/// once idle: a caller's request already on its way is answered (`Connection: close`) rather
/// than cut off with the connection.
const STOP_LINGER: Duration = Duration::from_millis(250);

/// Serves HTTP/1.1 on one accepted (and, with TLS, handshaken) connection. The publishing
/// routes write a small channel's deliveries after their answer (`publishing::publishing`), so a
/// publisher does not wait for its subscribers' send calls.
///
/// While the node drains, and once `stop` is cancelled, every answer carries
/// `Connection: close`; once stopped the connection is served for `STOP_LINGER`, then
/// closed as soon as no request is in flight.
async fn serve_connection<IO>(
    io: IO,
    peer: SocketAddr,
    ctx: Arc<ControlContext>,
    stop: CancellationToken,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let stopped = stop.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let ctx = Arc::clone(&ctx);
        let stopped = stopped.clone();
        async move {
            let mut response = routes::handle(request, peer, &ctx).await;
            // A draining node exits once drained, closing idle keep-alive connections: a
            // request sent on one as it closes is neither answered nor known to be refused.
            // Answered with `Connection: close` once the drain closes connections (and once
            // stopped), every caller's next request opens a connection, which the node either
            // serves or refuses outright.
            if stopped.is_cancelled() || ctx.hub.is_draining() {
                response.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, Infallible>(response)
        }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        result = connection.as_mut() => Some(result),
        () = stop.cancelled() => {
            tokio::time::timeout(STOP_LINGER, connection.as_mut()).await.ok()
        }
    };
    let result = match ended {
        Some(result) => result,
        None => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%peer, error = %err, "Control connection failed");
    }
}

/// Whether `/v1/*` may answer a caller at `peer` without a key.
fn is_loopback(peer: SocketAddr) -> bool {
    match peer.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

pub(crate) fn response(
    status: u16,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_peers_count_as_local() {
        for peer in [
            "127.0.0.1:1",
            "127.9.9.9:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(is_loopback(peer.parse().unwrap()), "{peer}");
        }
        for peer in [
            "10.0.0.1:1",
            "192.168.1.1:1",
            "[2001:db8::1]:1",
            "[::ffff:10.0.0.1]:1",
        ] {
            assert!(!is_loopback(peer.parse().unwrap()), "{peer}");
        }
    }
}
