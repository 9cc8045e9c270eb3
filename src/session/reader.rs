//! The session loop and its read side: waits on the close signal, the write side and the next
//! inbound frame in one poll, decodes client frames and acts on them.

use std::{
    future::poll_fn,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{Stream, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{self, Message},
};

use super::{End, SessionContext, coalesce::Coalesce, end_for_error, writer};
use crate::{
    hub::{Frame, Outbound, SubscribeError, Subscribed},
    protocol::{self, ChannelName, ClientFrame, ErrorCode, Offset},
    telemetry::{self, RateScope},
    throttle::TokenBucket,
};

/// What a session's poll found.
enum Event<T> {
    /// A close was requested.
    Closed,
    /// Writing to the socket failed.
    WriteFailed(tungstenite::Error),
    /// What the session was waiting for besides: the next inbound frame, or the end of a
    /// request's handling.
    Ready(T),
}

/// One turn of the session's poll: the close signal first (a write to a client that stopped
/// reading can wait forever, and a close request must still get through), then `then`,
/// then the write side, last so that it writes (and gives the lane back after) whatever
/// `then` enqueued or tungstenite queued. Nothing is dropped half done: each part keeps its
/// progress in `Coalesce`, tungstenite or the queue. Called from two `poll_fn`s rather than
/// wrapped in an async helper: the helper's own state made every connection's task 160 bytes
/// larger.
fn poll_session<S, T>(
    cx: &mut Context<'_>,
    ws: &mut WebSocketStream<Coalesce<S>>,
    outbound: &Outbound,
    then: impl FnOnce(&mut Context<'_>, &mut WebSocketStream<Coalesce<S>>) -> Poll<T>,
) -> Poll<Event<T>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Registered before the checks, so a close or a hand-over between the two wakes us.
    outbound.register_session(cx);
    if outbound.is_closing() {
        return Poll::Ready(Event::Closed);
    }
    let then = then(cx, ws);
    if let Poll::Ready(err) = writer::poll_write(cx, ws, outbound) {
        return Poll::Ready(Event::WriteFailed(err));
    }
    then.map(Event::Ready)
}

pub(super) struct Reader {
    ctx: Arc<SessionContext>,
    outbound: Arc<Outbound>,
    /// Channels this connection follows. A `Vec`: it is short, and it costs no allocation
    /// until the first subscribe.
    subscriptions: Vec<ChannelName>,
    /// The client's frame budget under `settings.client_quota` (unused when that is `None`).
    throttle: TokenBucket,
}

impl Reader {
    pub(super) fn new(ctx: Arc<SessionContext>, outbound: Arc<Outbound>) -> Self {
        Self {
            ctx,
            outbound,
            subscriptions: Vec::new(),
            throttle: TokenBucket::new(),
        }
    }

    pub(super) fn subscriptions(&self) -> &[ChannelName] {
        &self.subscriptions
    }

    /// Reads, and writes what the queue holds, until the session must end; says why.
    ///
    /// One task per connection: it waits on the close signal, the write side (when it holds
    /// the lane) and the next inbound frame in one hand-written poll, so an idle connection
    /// costs one task's state, not two. Deliveries to a reading client do not wake it at
    /// all: publishers write them (see `hub::outbound`).
    pub(super) async fn run<S>(&mut self, ws: &mut WebSocketStream<Coalesce<S>>) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let outbound = Arc::clone(&self.outbound);
        // No timer here: the hub's keepalive sweep pings quiet clients and closes silent ones
        // (4002) from the last time `seen` recorded.
        loop {
            let event =
                poll_fn(|cx| poll_session(cx, ws, &outbound, |cx, ws| ws.poll_next_unpin(cx)))
                    .await;
            let message = match event {
                Event::Closed => return self.closed_end(),
                Event::WriteFailed(err) => return self.write_failed(&err),
                Event::Ready(None) => return End::TransportLost,
                Event::Ready(Some(Err(err))) => return end_for_error(&err),
                Event::Ready(Some(Ok(message))) => message,
            };
            self.outbound.seen(self.ctx.hub.clock_ms());
            match message {
                Message::Text(text) if text.len() > self.ctx.settings.max_inbound_message_bytes => {
                    // Only reachable with the echo endpoint on, which raises the transport's
                    // limit for the conformance suite.
                    return End::TooBig;
                }
                Message::Text(text) => {
                    // Boxed: its state (a bus round trip in flight, a throttle pause) is only
                    // needed while it runs, not kept in every idle connection's task. Writes
                    // go on meanwhile: a publish may wait for Redis.
                    let mut handling = Box::pin(self.on_text(text));
                    let step = poll_fn(|cx| {
                        poll_session(cx, ws, &outbound, |cx, _| handling.as_mut().poll(cx))
                    })
                    .await;
                    drop(handling);
                    match step {
                        Event::Closed => return self.closed_end(),
                        Event::WriteFailed(err) => return self.write_failed(&err),
                        Event::Ready(()) => {}
                    }
                }
                Message::Binary(_) => return End::BinaryFrame,
                Message::Close(_) => return End::ClientClosed,
                // Any frame counts as activity; tungstenite answers pings itself.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    fn write_failed(&self, err: &tungstenite::Error) -> End {
        tracing::debug!(conn_id = self.outbound.conn_id(), error = %err, "Write failed");
        self.outbound.abort();
        End::TransportLost
    }

    fn closed_end(&self) -> End {
        match self.outbound.close_code() {
            Some(code) => End::Requested(code),
            None => End::TransportLost,
        }
    }

    /// Handles one text frame, or refuses it and pauses reading when the client is over its
    /// rate limit.
    async fn on_text(&mut self, text: tungstenite::Utf8Bytes) {
        if let Some(wait) = self.throttled() {
            self.refuse(&text, wait);
            drop(text);
            // Reading nothing until a token is free bounds what a flood costs the node, and
            // TCP pushes back on the client meanwhile.
            tokio::time::sleep(wait).await;
            return;
        }
        self.handle_text(&text).await;
    }

    /// Takes a token for one frame; `Some(wait)` when none is left.
    fn throttled(&self) -> Option<Duration> {
        let quota = self.ctx.settings.client_quota.as_ref()?;
        let rejected = self
            .throttle
            .try_acquire(quota, self.ctx.hub.clock_ns(), 1)
            .err()?;
        Some(rejected.retry_after)
    }

    /// Answers a frame over the rate limit with `rate_limited`, carrying its id if it has one.
    #[cold]
    fn refuse(&self, text: &str, retry_after: Duration) {
        telemetry::rate_limited(RateScope::Client);
        let id = match protocol::decode_client_frame(text) {
            Ok(frame) => frame.id(),
            Err(err) => err.id,
        };
        let per_second = self
            .ctx
            .settings
            .client_quota
            .map_or(0, |quota| quota.per_second());
        let message = format!(
            "rate limit of {per_second} frames/s exceeded; frame dropped, retry after {} ms",
            retry_after.as_millis().max(1)
        );
        self.error(id, ErrorCode::RateLimited, &message);
    }

    async fn handle_text(&mut self, text: &str) {
        match protocol::decode_client_frame(text) {
            Err(err) => self.error(err.id, ErrorCode::BadRequest, err.message),
            Ok(ClientFrame::Ping { id }) => self.send(protocol::encode_pong(id)),
            Ok(ClientFrame::Subscribe { id, channel, since }) => {
                self.subscribe(id, &channel, since.as_deref()).await;
            }
            Ok(ClientFrame::Unsubscribe { id, channel }) => self.unsubscribe(id, &channel),
            Ok(ClientFrame::Publish { id, channel, data }) => {
                self.publish(id, &channel, data.get()).await;
            }
        }
    }

    fn channel(&self, id: Option<u64>, name: &str) -> Option<ChannelName> {
        match ChannelName::parse(name, self.ctx.settings.max_channel_name_bytes) {
            Ok(channel) => Some(channel),
            Err(err) => {
                self.error(id, ErrorCode::BadRequest, &err.to_string());
                None
            }
        }
    }

    async fn subscribe(&mut self, id: Option<u64>, name: &str, since: Option<&str>) {
        let Some(channel) = self.channel(id, name) else {
            return;
        };
        let since = match since.map(str::parse::<Offset>).transpose() {
            Ok(since) => since,
            Err(err) => return self.error(id, ErrorCode::BadRequest, &err.to_string()),
        };
        if self.subscriptions.contains(&channel) {
            return self.error(
                id,
                ErrorCode::BadRequest,
                "already subscribed to this channel",
            );
        }
        if self.subscriptions.len() >= self.ctx.settings.max_subscriptions {
            return self.error(
                id,
                ErrorCode::LimitExceeded,
                "too many subscriptions on this connection",
            );
        }
        let reply = |outcome: &Subscribed| {
            Frame::from(protocol::encode_subscribed(
                id,
                &channel,
                outcome.offset,
                outcome.recovered,
            ))
        };
        let hub = &self.ctx.hub;
        let mut result = hub.subscribe(&self.outbound, &channel, since, None, reply);
        if result == Err(SubscribeError::NeedRemote) {
            let limit = self.ctx.settings.history_size;
            match self.ctx.bus.read_channel(&channel, since, limit).await {
                Ok(view) => {
                    result = hub.subscribe(&self.outbound, &channel, since, Some(&view), reply);
                }
                Err(err) => {
                    hub.unpin(&channel);
                    return self.error(id, ErrorCode::Unavailable, &err.to_string());
                }
            }
        }
        match result {
            // Recorded even on failure: the hub may hold the subscription, and the session's
            // cleanup must find it.
            Ok(_) | Err(SubscribeError::SlowConsumer | SubscribeError::Closing) => {
                self.subscriptions.push(hub.intern(&channel));
            }
            Err(SubscribeError::NeedRemote) => {
                // A subscribe given a remote view never asks for another.
                self.error(id, ErrorCode::Internal, "subscribe could not be merged");
            }
        }
    }

    fn unsubscribe(&mut self, id: Option<u64>, name: &str) {
        let Some(channel) = self.channel(id, name) else {
            return;
        };
        let Some(position) = self.subscriptions.iter().position(|c| *c == channel) else {
            return self.error(id, ErrorCode::NotFound, "not subscribed to this channel");
        };
        self.subscriptions.swap_remove(position);
        self.ctx.hub.unsubscribe(self.outbound.conn_id(), &channel);
        self.send(protocol::encode_unsubscribed(id, &channel));
    }

    async fn publish(&mut self, id: Option<u64>, name: &str, data: &str) {
        if !self.ctx.settings.client_publish {
            return self.error(
                id,
                ErrorCode::Forbidden,
                "publishing from clients is disabled on this server",
            );
        }
        let Some(channel) = self.channel(id, name) else {
            return;
        };
        if data.len() > self.ctx.settings.max_publish_payload_bytes {
            return self.error(id, ErrorCode::LimitExceeded, "`data` is too large");
        }
        match self.ctx.bus.publish(&channel, data).await {
            Ok(offset) => self.send(protocol::encode_published(id, &channel, offset)),
            Err(err) => self.error(id, ErrorCode::Unavailable, &err.to_string()),
        }
    }

    fn error(&self, id: Option<u64>, code: ErrorCode, message: &str) {
        telemetry::metrics().protocol_error(code);
        self.send(protocol::encode_error(id, code, message));
    }

    fn send(&self, text: String) {
        // A full queue closes the connection as a slow consumer; nothing else to do here.
        let _ = self.outbound.try_enqueue(&Frame::from(text));
    }
}

/// After the server sent a close frame: reads until the client's close reply (or the end of
/// the stream), discarding anything else.
pub(super) async fn await_close_reply<S>(stream: &mut S)
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    while let Some(Ok(message)) = stream.next().await {
        if matches!(message, Message::Close(_)) {
            break;
        }
    }
}
