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

mod accept;
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

use self::{accept::Admission, coalesce::Coalesce, end::End, socket::Socket};
pub use self::{
    accept::{serve, serve_tcp, serve_tls},
    origin::Origins,
    settings::SessionSettings,
};

use std::{net::IpAddr, sync::Arc, time::Duration};

use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    auth::Authenticator,
    cluster::Bus,
    hub::{HubHandle, Outbound, Wire},
    presence::Presence,
    protocol::{self, CloseCode, ws},
    telemetry,
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
