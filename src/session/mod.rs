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
mod end;
mod hooked;
mod origin;
mod run_loop;
mod settings;
mod shared_tcp;
mod socket;
mod start;
mod upgrade;
mod writer;

use self::{
    coalesce::Coalesce,
    end::End,
    shared_tcp::SharedTcp,
    socket::Socket,
    upgrade::{NotRead, Refusal},
};
pub use self::{origin::Origins, settings::SessionSettings};

use std::{net::IpAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use crate::{
    auth::Authenticator,
    cluster::Bus,
    hub::{HubHandle, Outbound, Wire},
    presence::Presence,
    protocol::{self, CloseCode, ws},
    telemetry::{self, RateScope},
    throttle::KeyedLimiter,
};

/// How long a close handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// What every session shares.
#[derive(Debug)]
pub struct SessionContext {
    pub hub: HubHandle,
    pub bus: Arc<dyn Bus>,
    pub node_id: Arc<str>,
    pub settings: SessionSettings,
    /// New connections per IP address (`limits.connects_per_ip_per_second`), if limited.
    pub connect_limiter: Option<KeyedLimiter<IpAddr>>,
    /// Bytes clients publish per channel (`limits.channel_publish_bytes_per_second`), if
    /// limited; the control API's publishes have a budget of their own.
    pub channel_budget: Option<Arc<KeyedLimiter<protocol::ChannelName>>>,
    /// Token verification; `None` when `[auth]` has no keys.
    pub auth: Option<Arc<Authenticator>>,
    /// Members of channels whose namespace tracks them, and their join/leave events.
    pub presence: Arc<Presence>,
    /// The application backend's hooks (`[hooks]`), when any is configured.
    pub hooks: Option<Arc<crate::hooks::Hooks>>,
    /// The application's webhooks (`[[webhooks]]`), when any is configured.
    pub webhooks: Option<Arc<crate::webhooks::Webhooks>>,
    /// Client publishes per user and per address (`limits.publishes_per_minute_per_*`),
    /// when either is set.
    pub publish_rates: Option<Arc<crate::rates::PublishRates>>,
    /// Channels occupied and vacated for the whole cluster, when a webhook takes them.
    pub occupancy: Option<Arc<crate::occupancy::Occupancy>>,
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
    let (peer, throttled) = accepted(&stream, &ctx);
    let stream = SharedTcp::new(stream);
    let wire = stream.wire();
    serve_upgrade(stream, ctx, peer, throttled, Some(wire), None)
}

/// Prepares an accepted socket: small frames leave at once (batching happens in the write
/// side); returns the peer's source (its address, or its IPv6 prefix: see
/// `hub::source_of`) and whether that source connects faster than
/// `limits.connects_per_ip_per_second` allows.
fn accepted(stream: &TcpStream, ctx: &SessionContext) -> (Option<IpAddr>, bool) {
    let _ = stream.set_nodelay(true);
    let source = stream
        .peer_addr()
        .ok()
        .map(|peer| crate::hub::source_of(peer.ip(), ctx.settings.ipv6_source_prefix));
    let throttled = match (&ctx.connect_limiter, source) {
        (Some(limiter), Some(source)) => {
            limiter.try_acquire(&source, ctx.hub.clock_ns(), 1).is_err()
        }
        _ => false,
    };
    (source, throttled)
}

/// Serves one accepted TCP connection over TLS: the TLS handshake (within
/// `session.handshake_timeout`, holding a pending-upgrade slot like the upgrade itself),
/// then the upgrade and the session. Publishers cannot write through TLS themselves: the
/// session task writes every frame.
pub fn serve_tls(
    stream: TcpStream,
    config: Arc<tokio_rustls::rustls::ServerConfig>,
    ctx: Arc<SessionContext>,
) -> impl Future<Output = ()> + Send + 'static {
    let (peer, throttled) = accepted(&stream, &ctx);
    async move {
        // Before the TLS handshake nothing can be answered: over a cap, just close.
        let slot = match ctx.hub.pending_upgrades().try_acquire(peer) {
            Ok(slot) => slot,
            Err(reason) => {
                telemetry::connection_rejected(reason);
                return;
            }
        };
        let settings = &ctx.settings;
        // Boxed: the handshake's state would otherwise size this task for the connection's
        // life.
        let handshake = Box::pin(async {
            let first_byte = tokio::time::timeout(settings.first_byte_timeout, stream.readable());
            if first_byte.await.is_err() {
                return Err("first_byte_timeout");
            }
            match tokio::time::timeout(
                settings.handshake_timeout,
                crate::tls::ServerTls::accept(stream, config),
            )
            .await
            {
                Ok(Ok(stream)) => Ok(stream),
                Ok(Err(_)) => Err("tls_handshake"),
                Err(_) => Err("handshake_timeout"),
            }
        });
        let handshake = tokio::select! {
            // The node needs the slot for a newcomer (`hub::PendingUpgrades`).
            () = slot.evicted() => Err("pending_evicted"),
            handshake = handshake => handshake,
        };
        let stream = match handshake {
            Ok(stream) => stream,
            Err(reason) => {
                telemetry::connection_rejected(reason);
                return;
            }
        };
        // The stream boxed on its own: a rustls connection is about 1 KB, and every future
        // that holds the stream (this one, the upgrade, the session) would otherwise keep a
        // slot of that size for the connection's life.
        Box::pin(serve_upgrade(
            Box::new(stream),
            ctx,
            peer,
            throttled,
            None,
            Some(slot),
        ))
        .await;
    }
}

/// Serves one connection over any byte stream (TCP, TLS, or a test pipe). Publishers cannot
/// write to such a stream themselves: the session task writes every frame.
pub fn serve<S>(stream: S, ctx: Arc<SessionContext>) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_upgrade(stream, ctx, None, false, None, None)
}

/// Releases the admission slot when the session ends, however it ends.
struct Admission(HubHandle);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.release_admission();
    }
}

/// The upgrade (refused with 429 when `throttled`: its address connects too fast), then the
/// session; `wire` is how publishers write to `stream` themselves, when they can. Until the
/// upgrade is answered the connection holds a pending-upgrade slot, not an admission slot.
async fn serve_upgrade<S>(
    mut stream: S,
    ctx: Arc<SessionContext>,
    peer: Option<IpAddr>,
    throttled: bool,
    wire: Option<Arc<dyn Wire>>,
    pending: Option<crate::hub::PendingSlot>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Boxed: needed once, so its state does not size the session task for its whole life.
    let upgrading = upgrade(&mut stream, &ctx, peer, throttled, pending);
    let Some(upgraded) = Box::pin(upgrading).await else {
        return;
    };
    // Built by a plain function, so that nothing of the upgrade's result stays in this
    // task's state while the session runs.
    let phase = session_phase(stream, ctx, wire, upgraded);
    phase.await;
}

/// Reads and answers the upgrade request. `None` when it was refused or failed; otherwise
/// the admission slot (none on the echo endpoint), whether this is the echo endpoint, the
/// bytes that followed the request, and the token it brought.
async fn upgrade<S>(
    stream: &mut S,
    ctx: &SessionContext,
    peer: Option<IpAddr>,
    throttled: bool,
    pending: Option<crate::hub::PendingSlot>,
) -> Option<Upgraded>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let settings = &ctx.settings;
    // Taken here unless the caller took it before a TLS handshake.
    let pending = match pending.map_or_else(|| ctx.hub.pending_upgrades().try_acquire(peer), Ok) {
        Ok(slot) => slot,
        Err(reason) => {
            upgrade::refuse(stream, Refusal::pending(reason)).await;
            return None;
        }
    };
    let paths = [settings.ws_path.as_str(), settings.echo_path.as_str()];
    let paths = if settings.echo_path.is_empty() {
        &paths[..1]
    } else {
        &paths[..]
    };
    let read = tokio::time::timeout(
        settings.handshake_timeout,
        upgrade::read_request(
            stream,
            settings.max_upgrade_request_bytes,
            Some(settings.first_byte_timeout),
            paths,
            settings.demo,
        ),
    );
    let read = tokio::select! {
        // The node needs the slot for a newcomer (`hub::PendingUpgrades`).
        () = pending.evicted() => {
            telemetry::connection_rejected("pending_evicted");
            return None;
        }
        read = read => read,
    };
    let (request, leftover) = match read {
        Ok(Ok(read)) => read,
        Ok(Err(NotRead::Refuse(refusal))) => {
            upgrade::refuse(stream, refusal).await;
            return None;
        }
        Ok(Err(NotRead::Ended)) => {
            telemetry::connection_rejected("handshake");
            return None;
        }
        Ok(Err(NotRead::Silent)) => {
            telemetry::connection_rejected("first_byte_timeout");
            return None;
        }
        Err(_) => {
            telemetry::connection_rejected("handshake_timeout");
            return None;
        }
    };
    let is_echo = request.path == settings.echo_path;
    let refusal = if !settings
        .origins
        .allows(request.origin.as_deref(), &request.host)
    {
        if let Some(suppressed) = telemetry::refusal_loggable(telemetry::Refused::Origin) {
            tracing::info!(
                origin = %String::from_utf8_lossy(request.origin.as_deref().unwrap_or_default()),
                host = %String::from_utf8_lossy(&request.host),
                suppressed,
                "Upgrade refused with 403: this Origin is not in server.allowed_origins"
            );
        }
        Some(upgrade::ORIGIN_NOT_ALLOWED)
    } else if throttled {
        telemetry::rate_limited(RateScope::Ip);
        Some(upgrade::IP_RATE_LIMITED)
    } else if ctx.hub.is_draining() {
        Some(upgrade::DRAINING)
    } else if is_echo {
        None
    } else if ctx.hub.under_memory_pressure() {
        Some(upgrade::MEMORY_PRESSURE)
    } else if ctx.hub.is_overloaded() {
        Some(upgrade::OVERLOADED)
    } else if !ctx.hub.try_admit() {
        Some(upgrade::MAX_CONNECTIONS)
    } else {
        None
    };
    if let Some(refusal) = refusal {
        upgrade::refuse(stream, refusal).await;
        return None;
    }
    // Admitted above (`try_admit`), except on the echo endpoint.
    let admission = (!is_echo).then(|| Admission(Arc::clone(&ctx.hub)));
    let deflate = request.deflate.filter(|_| settings.compression.is_some());
    let answered = tokio::time::timeout(
        settings.handshake_timeout,
        upgrade::accept(stream, &request, deflate),
    );
    if !matches!(answered.await, Ok(Ok(()))) {
        telemetry::connection_rejected("handshake");
        return None;
    }
    telemetry::deflate_negotiated(deflate.is_some());
    let token = request
        .bearer_token
        .clone()
        .or(request.query_token.clone().filter(|_| settings.token_query));
    // What the connect hook is sent, for the connections it is asked about.
    let connect = ctx
        .hooks
        .as_ref()
        .filter(|hooks| {
            !is_echo
                && hooks.has(crate::hooks::Hook::Connect)
                && (token.is_none()
                    || ctx.auth.is_none()
                    || hooks.config().connect == crate::config::ConnectMode::Always)
        })
        .map(|hooks| {
            let (headers, query) =
                upgrade::hook_inputs(&request.head, &hooks.config().forward_headers);
            Box::new(hooked::ConnectInputs {
                headers,
                query,
                peer,
            })
        });
    Some(Upgraded {
        admission,
        is_echo,
        deflate,
        leftover,
        token,
        connect,
        source: peer,
    })
}

/// The session after a successful upgrade (the echo endpoint's, or a real one), boxed: the
/// task keeps only the state of the phase it is in.
fn session_phase<S>(
    stream: S,
    ctx: Arc<SessionContext>,
    wire: Option<Arc<dyn Wire>>,
    upgraded: Upgraded,
) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Upgraded {
        admission,
        is_echo,
        deflate,
        leftover,
        token,
        connect,
        source,
    } = upgraded;
    // Kept only where a limit per address needs it.
    let source = source.filter(|_| {
        ctx.publish_rates
            .as_ref()
            .is_some_and(|rates| rates.limits_addresses())
    });
    let socket = Socket::new(
        Coalesce::new(stream),
        leftover,
        ctx.settings.read_buffer_bytes,
    );
    if is_echo {
        let compression = ctx.settings.compression.zip(deflate);
        Box::pin(echo::run(socket, ctx.settings.idle_timeout, compression))
    } else {
        let start = (token.is_some() || connect.is_some() || source.is_some()).then(|| {
            Box::new(start::Start {
                token,
                connect,
                source,
            })
        });
        Box::pin(run(socket, ctx, wire, admission, start, deflate))
    }
}

/// What a successful upgrade hands to the session.
struct Upgraded {
    admission: Option<Admission>,
    is_echo: bool,
    /// permessage-deflate, when negotiated.
    deflate: Option<crate::protocol::deflate::Deflate>,
    leftover: bytes::BytesMut,
    token: Option<String>,
    /// What the connect hook is sent, when it is asked about this connection.
    connect: Option<Box<hooked::ConnectInputs>>,
    /// The peer's source (address or IPv6 prefix), for `limits.publishes_per_minute_per_address`.
    source: Option<IpAddr>,
}

/// Runs an upgraded connection until it ends.
///
/// A plain function returning an `async move` block, not an `async fn`: an `async fn` keeps
/// its arguments in the state as well as the locals they are moved into (the socket alone
/// is 144 bytes), for the connection's whole life.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would store its arguments twice"
)]
fn run<S>(
    mut socket: Socket<S>,
    ctx: Arc<SessionContext>,
    wire: Option<Arc<dyn Wire>>,
    admission: Option<Admission>,
    start: Option<Box<start::Start>>,
    deflate: Option<crate::protocol::deflate::Deflate>,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async move {
        let _admission = admission;
        let outbound = ctx.hub.register(wire);
        outbound.negotiated(deflate);
        socket.stream.share_with(Arc::clone(&outbound));
        let conn_id = outbound.conn_id();
        telemetry::metrics().connections_accepted.increment(1);
        let mut session = Registered(run_loop::Session::new(
            Arc::clone(&ctx),
            Arc::clone(&outbound),
        ));
        let session = &mut session.0;
        // Boxed: needed once, so its state does not size the task for the connection's life.
        Box::pin(start::greet(session, &ctx, &outbound, start)).await;
        // Boxed: needed once, so its state does not size the task for the connection's life.
        Box::pin(session.subscribe_server_side()).await;

        let end = session.run(&mut socket).await;
        match end.close_code() {
            Some(code) => {
                outbound.close(code);
            }
            None => outbound.abort(),
        }
        // The first close requested wins: a slow-consumer close, say, before the session saw
        // the client's frame that broke a limit.
        let final_end = match outbound.close_code() {
            Some(code)
                if !matches!(end, End::ClientClosed(_)) && Some(code) != end.close_code() =>
            {
                End::Requested(code)
            }
            _ => end,
        };
        // Boxed: needed once, so its timers do not size the task for the connection's life.
        Box::pin(finish_close(
            &mut socket,
            &outbound,
            final_end,
            &ctx.settings,
        ))
        .await;
        // The connection leaves the hub when `Registered` is dropped, here or in a panic.
        telemetry::connection_closed(final_end.label());
        tracing::debug!(conn_id, end = final_end.label(), "Session ended");
    }
}

/// A registered session: takes the connection out of the hub (its channels, its user, its
/// presence) when dropped, however the session ends. A panic in a handler unwinds through
/// here too (tokio drops a panicked task's future), so it cannot leave a connection in
/// `hub.conns` for every later drain to wait for.
struct Registered(run_loop::Session);

impl Drop for Registered {
    fn drop(&mut self) {
        let session = &self.0;
        let outbound = session.outbound();
        if std::thread::panicking() {
            // The session never closed: its socket goes with the task, and flushers must
            // stop writing to it.
            outbound.abort();
            telemetry::connection_closed("panic");
        }
        let conn_id = outbound.conn_id();
        let hub = &session.context().hub;
        session.leave_all();
        let vacated = hub.deregister(conn_id, session.subscriptions());
        session.vacated(&vacated);
        // After what it left, also after a panic; with the close code requested (none
        // when the transport was lost or the session panicked).
        session.closed_event(outbound.close_code().map(CloseCode::code));
        if let Some(identity) = session.identity() {
            hub.remove_user(&identity.user, conn_id);
            session.index_token(identity, false);
            if session.context().settings.user_limit.is_some() {
                session.context().bus.user_left(&identity.user, conn_id);
            }
        }
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The close handshake: what is queued for the client (unless it is a slow consumer), the
/// close frame, then (bounded) the client's reply when the server closed first.
async fn finish_close<S>(
    socket: &mut Socket<S>,
    outbound: &Outbound,
    end: End,
    settings: &SessionSettings,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(close_frame) = end.close_frame() else {
        return;
    };
    let flush_queue = end != End::Requested(CloseCode::SlowConsumer);
    let sent = tokio::time::timeout(CLOSE_TIMEOUT, async {
        writer::write_final(socket, outbound, flush_queue, close_frame).await
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    if !matches!(end, End::ClientClosed(_)) {
        let _ = tokio::time::timeout(
            CLOSE_TIMEOUT,
            socket.await_close_reply(&settings.limits(outbound.deflate().is_some())),
        )
        .await;
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.flush_and_shutdown()).await;
}

/// Feeds `input` to a session's read path as a client would send it: the upgrade request
/// (read and checked as `serve_tcp` does), then WebSocket frames through the same socket
/// reader and decoder a session uses, arriving `chunk` bytes per read. Returns the frames
/// read. For the fuzzer (`fuzz/fuzz_targets/session_read.rs`); not part of the API.
///
/// # Panics
/// Only on a bug: the read path must take any input.
#[doc(hidden)]
pub fn fuzz_read_path(input: &[u8], chunk: usize) -> usize {
    /// An in-memory client that hands over at most `chunk` bytes per read.
    struct Trickle<'a> {
        data: &'a [u8],
        chunk: usize,
    }
    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = self.data.len().min(self.chunk.max(1)).min(buf.remaining());
            let (now, rest) = self.data.split_at(n);
            buf.put_slice(now);
            self.data = rest;
            std::task::Poll::Ready(Ok(()))
        }
    }
    let limits = ws::Limits {
        max_message_bytes: 4096,
        max_fragments: 16,
        // The fuzzer's RSV1 frames reach the inflater.
        inflate: true,
    };
    let run = async {
        let mut client = Trickle { data: input, chunk };
        let Ok((_, leftover)) =
            upgrade::read_request(&mut client, 4096, None, &["/ws"], false).await
        else {
            return 0;
        };
        let mut socket = Socket::new(Coalesce::new(client), leftover, 256);
        let mut frames = 0;
        while let Ok(frame) = std::future::poll_fn(|cx| socket.poll_frame(cx, &limits)).await {
            if let ws::Inbound::Text(text) = &frame {
                let _ = protocol::decode_client_frame(text.as_str());
            }
            frames += 1;
        }
        frames
    };
    // Nothing here waits: the client never returns `Pending`.
    let mut run = std::pin::pin!(run);
    match run
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        std::task::Poll::Ready(frames) => frames,
        std::task::Poll::Pending => unreachable!("an in-memory client never makes the reader wait"),
    }
}

#[cfg(test)]
mod tests;
