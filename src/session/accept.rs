//! Accepting a connection: TCP or TLS (the handshake within the upgrade's timeout), the
//! checks before the upgrade (pending upgrades, origin, rate per address, drain, memory,
//! overload, the connection limit), the upgrade itself, and the hand-over to the session
//! or the echo endpoint. An admitted connection holds an [`Admission`] until it ends.

use std::{net::IpAddr, sync::Arc};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use super::{
    SessionContext,
    coalesce::Coalesce,
    echo, hooked, run,
    shared_tcp::SharedTcp,
    socket::Socket,
    start,
    upgrade::{self, NotRead, Refusal},
};
use crate::{
    hub::{HubHandle, Wire},
    telemetry::{self, RateScope},
};

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
pub(super) struct Admission(HubHandle);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.release_admission();
    }
}

/// The upgrade (refused with 429 when `throttled`: its address connects too fast), then the
/// session; `wire` is how publishers write to `stream` themselves, when they can. Until the
/// upgrade is answered the connection holds a pending-upgrade slot, not an admission slot.
pub(super) async fn serve_upgrade<S>(
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
        Ok(Err(NotRead::Page(page))) => {
            upgrade::serve_page(stream, page).await;
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
