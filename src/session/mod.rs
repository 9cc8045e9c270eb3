//! One client connection: upgrade, read side, write side, close.
//!
//! Each session is one task. It polls, in one hand-written poll, the close signal of its
//! [`Outbound`], the next inbound frame and, when the session holds the connection's write
//! lane, the outbound queue. Deliveries to a client whose socket has room do not wake the
//! task at all: the publisher writes them through the shared socket (see `hub::outbound`);
//! the task writes only its own frames and what a full socket left over. A request being
//! handled (a publish waiting for Redis) is polled beside the write side, so deliveries
//! never wait for it. Anyone (the hub, the control API, shutdown) asks for a close through
//! the `Outbound`. Every way a session can end is an `End`, mapped to its close code in one
//! exhaustive `match`.
//!
//! One task rather than a reader and a writer task (the house style's default) because an
//! idle connection then costs one task's state: about 0.6 KiB less per connection, the
//! difference between 3.8 and 3.2 KiB at 19,000 connections.
//!
//! Must not depend on `control` or `app`.

mod coalesce;
mod echo;
mod reader;
mod shared_tcp;
mod writer;

use self::{coalesce::Coalesce, shared_tcp::SharedTcp};

use std::{net::IpAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self,
        handshake::server::{ErrorResponse, Request, Response},
        http::StatusCode,
        protocol::WebSocketConfig,
    },
};

use crate::{
    cluster::Bus,
    hub::{FlushAfterPoll, Frame, HubHandle, Outbound, Wire},
    protocol::{self, CloseCode},
    telemetry::{self, RateScope},
    throttle::{KeyedLimiter, Quota},
};

/// How long a close handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Settings of every session, taken from the configuration.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub ws_path: String,
    pub heartbeat: Duration,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    pub client_publish: bool,
    pub max_channel_name_bytes: usize,
    pub max_publish_payload_bytes: usize,
    pub max_subscriptions: usize,
    pub max_inbound_message_bytes: usize,
    pub read_buffer_bytes: usize,
    /// Messages a `since` subscribe may replay (`history.size`).
    pub history_size: usize,
    /// Path of the conformance echo endpoint; empty when off.
    pub echo_path: String,
    /// Frames per second and burst per client; `None` when unlimited.
    pub client_quota: Option<Quota>,
}

impl SessionSettings {
    fn websocket_config(&self) -> WebSocketConfig {
        // With the echo endpoint on, the transport reads messages up to the conformance
        // suite's largest; real sessions then apply their own limit after the read.
        let max_message = if self.echo_path.is_empty() {
            self.max_inbound_message_bytes
        } else {
            self.max_inbound_message_bytes.max(echo::MAX_MESSAGE_BYTES)
        };
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_bytes)
            // Every frame goes straight through to `Coalesce`, which gathers a batch into one
            // syscall and frees its buffer once written; tungstenite's own buffer would keep
            // its high-water capacity for the connection's life.
            .write_buffer_size(0)
            .max_message_size(Some(max_message))
            .max_frame_size(Some(max_message))
    }
}

/// What every session shares.
#[derive(Debug)]
pub struct SessionContext {
    pub hub: HubHandle,
    pub bus: Arc<dyn Bus>,
    pub node_id: Arc<str>,
    pub settings: SessionSettings,
    /// New connections per IP address (`limits.connects_per_ip_per_second`), if limited.
    pub connect_limiter: Option<KeyedLimiter<IpAddr>>,
}

/// Every way a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client sent a close frame.
    ClientClosed,
    /// The hub, the control API or shutdown asked for a close with this code.
    Requested(CloseCode),
    /// A binary frame arrived.
    BinaryFrame,
    /// An inbound message was larger than allowed.
    TooBig,
    /// A text frame was not UTF-8.
    BadUtf8,
    /// The client broke RFC 6455.
    ProtocolViolation,
    /// The TCP connection failed or closed without a close frame.
    TransportLost,
}

impl End {
    /// The close code to send; `None` when the transport is gone and nothing can be sent.
    const fn close_code(self) -> Option<CloseCode> {
        match self {
            End::ClientClosed => Some(CloseCode::Normal),
            End::Requested(code) => Some(code),
            End::BinaryFrame => Some(CloseCode::UnsupportedData),
            End::TooBig => Some(CloseCode::MessageTooBig),
            End::BadUtf8 => Some(CloseCode::InvalidPayload),
            End::ProtocolViolation => Some(CloseCode::ProtocolError),
            End::TransportLost => None,
        }
    }

    /// A bounded label for metrics and logs.
    const fn label(self) -> &'static str {
        match self.close_code() {
            Some(code) => code.label(),
            None => "transport_lost",
        }
    }
}

/// Releases the admission slot when the session ends, however it ends.
struct Admission(HubHandle);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.release_admission();
    }
}

/// Serves one accepted TCP connection: the upgrade, then the session.
///
/// A plain function returning the session's future rather than an `async fn` wrapping it:
/// a wrapper would keep its own copy of the stream's slot in the task for the connection's
/// whole life.
pub fn serve_tcp(
    stream: TcpStream,
    ctx: Arc<SessionContext>,
) -> impl Future<Output = ()> + Send + 'static {
    // Small frames should leave at once; batching happens in the write side.
    let _ = stream.set_nodelay(true);
    let throttled = match (&ctx.connect_limiter, stream.peer_addr()) {
        (Some(limiter), Ok(peer)) => limiter
            .try_acquire(&peer.ip(), ctx.hub.clock_ns(), 1)
            .is_err(),
        _ => false,
    };
    let stream = SharedTcp::new(stream);
    let wire = stream.wire();
    FlushAfterPoll::new(serve_upgrade(stream, ctx, throttled, Some(wire)))
}

/// Serves one connection over any byte stream (TCP, TLS, or a test pipe). Publishers cannot
/// write to such a stream themselves: the session task writes every frame.
pub fn serve<S>(stream: S, ctx: Arc<SessionContext>) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    FlushAfterPoll::new(serve_upgrade(stream, ctx, false, None))
}

/// The upgrade, refused with 429 when `throttled` (its address connects too fast), then the
/// session; `wire` is how publishers write to `stream` themselves, when they can.
async fn serve_upgrade<S>(
    stream: S,
    ctx: Arc<SessionContext>,
    throttled: bool,
    wire: Option<Arc<dyn Wire>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let admitted = !throttled && ctx.hub.try_admit();
    let _admission = admitted.then(|| Admission(Arc::clone(&ctx.hub)));
    let ws_path = ctx.settings.ws_path.as_str();
    let echo_path = ctx.settings.echo_path.as_str();
    let mut is_echo = false;
    #[allow(
        clippy::result_large_err,
        reason = "the handshake callback's signature is fixed by tungstenite"
    )]
    let callback = |request: &Request, response: Response| {
        let path = request.uri().path();
        is_echo = !echo_path.is_empty() && path == echo_path;
        if path != ws_path && !is_echo {
            return Err(reject(StatusCode::NOT_FOUND, "not found"));
        }
        if throttled {
            return Err(reject(
                StatusCode::TOO_MANY_REQUESTS,
                "too many new connections from this address",
            ));
        }
        if !admitted {
            return Err(reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "connection limit reached",
            ));
        }
        Ok(response)
    };
    // Boxed, with its timer, so that this state is freed once the upgrade is done instead of
    // sizing the session task for its whole life.
    let handshake = Box::pin(tokio::time::timeout(
        ctx.settings.handshake_timeout,
        tokio_tungstenite::accept_hdr_async_with_config(
            Coalesce::new(stream),
            callback,
            Some(ctx.settings.websocket_config()),
        ),
    ));
    let ws = match handshake.await {
        Ok(Ok(ws)) => ws,
        Ok(Err(err)) => {
            let reason = if throttled {
                telemetry::rate_limited(RateScope::Ip);
                "ip_rate_limited"
            } else if admitted {
                "handshake"
            } else {
                "max_connections"
            };
            telemetry::connection_rejected(reason);
            tracing::debug!(error = %err, reason, "WebSocket handshake failed");
            return;
        }
        Err(_) => {
            telemetry::connection_rejected("handshake_timeout");
            return;
        }
    };
    if is_echo {
        return Box::pin(echo::run(ws, ctx.settings.idle_timeout)).await;
    }
    // Boxed for the same reason: the task keeps only the state of the phase it is in.
    Box::pin(run(ws, ctx, wire)).await;
}

fn reject(status: StatusCode, message: &'static str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(message.to_owned()));
    *response.status_mut() = status;
    response
}

/// Runs an upgraded connection until it ends.
async fn run<S>(
    mut ws: WebSocketStream<Coalesce<S>>,
    ctx: Arc<SessionContext>,
    wire: Option<Arc<dyn Wire>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let outbound = ctx.hub.register(wire);
    ws.get_mut().share_with(Arc::clone(&outbound));
    let conn_id = outbound.conn_id();
    telemetry::metrics().connections_accepted.increment(1);
    let heartbeat_ms = u64::try_from(ctx.settings.heartbeat.as_millis()).unwrap_or(u64::MAX);
    let welcome = protocol::encode_welcome(conn_id, &ctx.node_id, heartbeat_ms);
    // A fresh queue always has room for the welcome.
    let _ = outbound.try_enqueue(&Frame::from(welcome));

    let mut reader = reader::Reader::new(Arc::clone(&ctx), Arc::clone(&outbound));
    let end = reader.run(&mut ws).await;
    match end.close_code() {
        Some(code) => {
            outbound.close(code);
        }
        None => outbound.abort(),
    }
    // Boxed: needed once, so its timers do not size the task for the connection's life.
    Box::pin(finish_close(&mut ws, &outbound, end)).await;
    let final_end = match outbound.close_code() {
        Some(code) if end != End::ClientClosed => End::Requested(code),
        _ => end,
    };
    ctx.hub.deregister(conn_id, reader.subscriptions());
    telemetry::connection_closed(final_end.label());
    tracing::debug!(conn_id, end = final_end.label(), "Session ended");
}

/// The close handshake: the close frame when a code was requested, then (bounded) the
/// client's reply.
async fn finish_close<S>(ws: &mut WebSocketStream<S>, outbound: &Outbound, end: End)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    writer::send_close(ws, outbound).await;
    // When the client closed first, tungstenite queues its close reply and reports the
    // connection closed without flushing the stream under it, so the reply would stay in
    // `Coalesce`: flush it here.
    let _ =
        tokio::time::timeout(CLOSE_TIMEOUT, tokio::io::AsyncWriteExt::flush(ws.get_mut())).await;
    // After a server-initiated close, wait (bounded) for the client's reply so the close
    // handshake completes before the socket is dropped.
    if !matches!(end, End::ClientClosed | End::TransportLost) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, reader::await_close_reply(ws)).await;
    }
}

/// Maps a read error to how the session ends.
fn end_for_error(err: &tungstenite::Error) -> End {
    use tungstenite::{
        Error,
        error::{CapacityError, ProtocolError},
    };
    match err {
        Error::Capacity(CapacityError::MessageTooLong { .. } | CapacityError::TooManyHeaders) => {
            End::TooBig
        }
        Error::Utf8(_) => End::BadUtf8,
        // The peer's TCP connection ended without a close frame: it vanished, it did not
        // break the protocol, and there is nobody left to send a close frame to.
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => End::TransportLost,
        Error::Protocol(_) => End::ProtocolViolation,
        Error::ConnectionClosed
        | Error::AlreadyClosed
        | Error::Io(_)
        | Error::Tls(_)
        | Error::WriteBufferFull(_)
        | Error::Url(_)
        | Error::Http(_)
        | Error::HttpFormat(_)
        | Error::AttackAttempt => End::TransportLost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn session_task_states_stay_small() {
        use crate::{
            cluster::LocalBus,
            hub::{Hub, HubSettings},
        };
        let hub = Hub::new(HubSettings {
            shards: 2,
            max_connections: 10,
            max_subscriptions_per_connection: 10,
            queue_messages: 64,
            queue_bytes: 1 << 20,
            history_size: 10,
            history_ttl: Duration::from_secs(60),
            history_max_bytes: 1 << 20,
            remote: false,
        });
        let ctx = Arc::new(SessionContext {
            bus: Arc::new(LocalBus::new(Arc::clone(&hub))),
            hub: Arc::clone(&hub),
            node_id: Arc::from("n"),
            settings: SessionSettings {
                ws_path: "/ws".into(),
                heartbeat: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(2),
                handshake_timeout: Duration::from_secs(1),
                client_publish: true,
                max_channel_name_bytes: 64,
                max_publish_payload_bytes: 1024,
                max_subscriptions: 8,
                max_inbound_message_bytes: 4096,
                read_buffer_bytes: 1024,
                history_size: 10,
                echo_path: String::new(),
                client_quota: Quota::new(100, 100),
            },
            connect_limiter: None,
        });
        // The accept loop spawns `serve_tcp`: that future is the session task's state.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let serve = serve_tcp(tcp, Arc::clone(&ctx));
        let (stream, _other) = tokio::io::duplex(64);
        let mut ws = WebSocketStream::from_raw_socket(
            Coalesce::new(stream),
            tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let outbound = hub.register(None);
        let mut reader = reader::Reader::new(Arc::clone(&ctx), outbound);
        let read = reader.run(&mut ws);
        // Each connection holds these task states for its whole life; a regression here
        // multiplies by a million sockets. Bounds leave about 25% headroom.
        let run_size = std::mem::size_of_val(&run(
            WebSocketStream::from_raw_socket(
                Coalesce::new(tokio::io::duplex(64).0),
                tungstenite::protocol::Role::Server,
                None,
            )
            .await,
            Arc::clone(&ctx),
            None,
        ));
        let sizes = [
            ("serve", std::mem::size_of_val(&serve), 150),
            ("run", run_size, 1250),
            ("reader", std::mem::size_of_val(&read), 240),
        ];
        for (name, size, bound) in sizes {
            assert!(
                size <= bound,
                "the {name} future grew to {size} bytes (bound {bound})"
            );
        }
    }

    #[test]
    fn every_end_but_transport_loss_sends_a_close_code() {
        assert_eq!(End::TransportLost.close_code(), None);
        assert_eq!(
            End::Requested(CloseCode::IdleTimeout).close_code(),
            Some(CloseCode::IdleTimeout)
        );
        assert_eq!(End::ClientClosed.close_code(), Some(CloseCode::Normal));
        assert_eq!(End::TooBig.close_code().map(CloseCode::code), Some(1009));
        assert_eq!(
            End::BinaryFrame.close_code().map(CloseCode::code),
            Some(1003)
        );
    }
}
