//! The session loop ([`Session::run`], the connection's one task after the upgrade): waits on
//! the close signal, the write side and the next inbound frame in one poll, charges every
//! frame to the client's budget, decodes client frames and acts on them.
//!
//! Every frame counts: complete messages and fragments against the client's frame budget
//! (`limits.client_messages_per_second`), pings and pongs against its control budget
//! (`limits.client_control_frames_per_second`). Over either, the frame is refused (a message
//! gets an `error` `rate_limited`, a ping goes unanswered), reading pauses until a token is
//! free, and a client still over budget after `limits.throttled_close_after` is closed with
//! 1008. Only a complete message or a pong is activity for the idle timeout: pings or an
//! unfinished fragmented message do not keep a connection alive, and a fragmented message
//! must complete within `limits.fragment_timeout`.

use std::{
    future::poll_fn,
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncWrite};

mod account;
mod budget;
mod channels;
mod events;
mod hooked;
mod messages;
mod replay;

use super::{End, SessionContext, socket::Socket, writer};
use crate::{
    auth::Identity,
    hub::{FramedText, Outbound, SessionCommand},
    protocol::{
        self, ChannelName, ClientFrame, CloseCode, ErrorCode,
        ws::{Inbound, Utf8Bytes},
    },
    telemetry,
    throttle::TokenBucket,
};
use budget::Budget;

/// What a session's poll found.
enum Event<T> {
    /// A close was requested.
    Closed,
    /// Writing to the socket failed.
    WriteFailed(std::io::Error),
    /// The hub holds commands for the session (`Hub::command_user`).
    Commands,
    /// What the session was waiting for besides: the next inbound frame, or the end of a
    /// request's handling.
    Ready(T),
}

/// One turn of the session's poll: the close signal first (a write to a client that stopped
/// reading can wait forever, and a close request must still get through), then `then`,
/// then the write side, last so that it writes (and gives the lane back after) whatever
/// `then` enqueued or owed. Nothing is dropped half done: each part keeps its progress in
/// `Coalesce`, the socket's read buffer or the queue. Called from two `poll_fn`s rather than
/// wrapped in an async helper: the helper's own state made every connection's task 160 bytes
/// larger.
fn poll_session<S, T>(
    cx: &mut Context<'_>,
    socket: &mut Socket<S>,
    outbound: &Outbound,
    commands: bool,
    then: impl FnOnce(&mut Context<'_>, &mut Socket<S>) -> Poll<T>,
) -> Poll<Event<T>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Registered before the checks, so a close or a hand-over between the two wakes us.
    outbound.session_lane().register(cx);
    if outbound.is_closing() {
        return Poll::Ready(Event::Closed);
    }
    if commands && outbound.take_commands_flag() {
        return Poll::Ready(Event::Commands);
    }
    let then = then(cx, socket);
    let wrote = writer::poll_write(cx, socket, outbound);
    // A relaxed store per poll, so that `switchboard_session_buffer_bytes` counts what sessions hold.
    outbound.report_session_bytes(socket.held_bytes());
    if let Poll::Ready(err) = wrote {
        return Poll::Ready(Event::WriteFailed(err));
    }
    then.map(Event::Ready)
}

/// What the session does after one step of its poll ([`Session::on_event`]).
enum Step {
    /// Read the next frame.
    Next,
    /// Carry out what the hub holds for the session.
    Commands,
    /// Read nothing for this long (over the client's budget); writes go on.
    Pause(Duration),
    /// Handle this text frame.
    Handle(Utf8Bytes),
    End(End),
}

pub(super) struct Session {
    ctx: Arc<SessionContext>,
    outbound: Arc<Outbound>,
    /// Channels this connection follows. A `Vec`: it is short, and it costs no allocation
    /// until the first subscribe.
    subscriptions: Vec<ChannelName>,
    /// The client's frame budget under `settings.client_quota` (unused when that is `None`).
    throttle: TokenBucket,
    /// The client's control-frame budget under `settings.control_quota`.
    control: TokenBucket,
    /// The client's publish budget in bytes under `settings.publish_byte_quota`.
    publish_bytes: TokenBucket,
    /// When the client's current stretch over budget began (hub clock ms), 0 when it is
    /// within budget; and when it was last refused.
    throttled_since_ms: u64,
    last_refused_ms: u64,
    /// Who the connection is, once a token was accepted. Boxed: most of it is needed only
    /// for permission checks, and an anonymous connection pays 8 bytes.
    account: Option<Box<Account>>,
    /// The peer's source, kept only where `limits.publishes_per_minute_per_address` needs
    /// it: boxed, so that others pay 8 bytes.
    source: Option<Box<IpAddr>>,
}

/// An authenticated connection's token, and the subscriptions no token granted.
struct Account {
    identity: Identity,
    /// Channels a backend subscribed the connection to (`POST /v1/subscribe`, which only
    /// reaches authenticated connections): granted without the namespaces, so a `refresh`
    /// does not take them back.
    by_backend: Vec<ChannelName>,
}

impl Session {
    pub(super) fn new(ctx: Arc<SessionContext>, outbound: Arc<Outbound>) -> Self {
        Self {
            ctx,
            outbound,
            subscriptions: Vec::new(),
            throttle: TokenBucket::new(),
            control: TokenBucket::new(),
            publish_bytes: TokenBucket::new(),
            throttled_since_ms: 0,
            last_refused_ms: 0,
            account: None,
            source: None,
        }
    }

    /// Keeps the peer's source for the publish limit per address.
    pub(super) fn set_source(&mut self, source: Option<IpAddr>) {
        self.source = source.map(Box::new);
    }

    pub(super) fn context(&self) -> &SessionContext {
        &self.ctx
    }

    pub(super) fn outbound(&self) -> &Outbound {
        &self.outbound
    }

    /// Who the connection is, once a token was accepted.
    pub(super) fn identity(&self) -> Option<&Identity> {
        self.account.as_deref().map(|account| &account.identity)
    }

    /// The authenticated user, if any.
    pub(super) fn user(&self) -> Option<&str> {
        self.identity().map(|identity| &*identity.user)
    }

    /// Reads, and writes what the queue holds, until the session must end; says why.
    ///
    /// One task per connection: it waits on the close signal, the write side (when it holds
    /// the lane) and the next inbound frame in one hand-written poll, so an idle connection
    /// costs one task's state, not two. Deliveries to a reading client do not wake it at
    /// all: publishers write them (see `hub::lane`).
    pub(super) async fn run<S>(&mut self, socket: &mut Socket<S>) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let outbound = Arc::clone(&self.outbound);
        let limits = self.ctx.settings.limits(outbound.deflate().is_some());
        // Armed only while a fragmented message is being assembled.
        let mut fragment_deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
        // No idle timer here: the hub's keepalive sweep pings quiet clients and closes silent
        // ones (4002) from the last time `seen` recorded.
        loop {
            let event = poll_fn(|cx| {
                poll_session(cx, socket, &outbound, true, |cx, socket| {
                    if let Some(deadline) = fragment_deadline.as_mut()
                        && deadline.as_mut().poll(cx).is_ready()
                    {
                        return Poll::Ready(Err(End::FragmentTimeout));
                    }
                    socket.poll_frame(cx, &limits)
                })
            })
            .await;
            // Decided without awaiting, so that neither the event nor the frame is kept in
            // the task's state while a text frame is handled.
            let pause = match self.on_event(event, socket, &mut fragment_deadline) {
                Step::Next => continue,
                Step::End(end) => return end,
                Step::Commands => match Box::pin(self.commands_beside_writes(socket)).await {
                    Some(end) => return end,
                    None => continue,
                },
                Step::Pause(wait) => wait,
                Step::Handle(text) => {
                    // Boxed, the text moved in: an idle connection's state does not carry
                    // room for a handler's.
                    match Box::pin(self.handle_beside_writes(socket, text)).await {
                        Some(end) => return end,
                        None => continue,
                    }
                }
            };
            // Reading nothing until a token is free bounds what a flood costs the node, and
            // TCP pushes back on the client meanwhile. Writes go on.
            // Commands wait for the end of the pause (it is short).
            let mut sleep = Box::pin(tokio::time::sleep(pause));
            let step = poll_fn(|cx| {
                poll_session(cx, socket, &outbound, false, |cx, _| {
                    sleep.as_mut().poll(cx)
                })
            })
            .await;
            match step {
                Event::Closed => return self.closed_end(),
                Event::WriteFailed(err) => return self.write_failed(&err),
                Event::Commands | Event::Ready(()) => {}
            }
        }
    }

    /// What to do after one step of the session's poll: go on reading, pause reading
    /// (over the client's budget), end, or handle a text frame.
    fn on_event<S>(
        &mut self,
        event: Event<Result<Inbound, End>>,
        socket: &mut Socket<S>,
        fragment_deadline: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    ) -> Step {
        let frame = match event {
            Event::Commands => return Step::Commands,
            Event::Closed => return Step::End(self.closed_end()),
            Event::WriteFailed(err) => return Step::End(self.write_failed(&err)),
            Event::Ready(Err(end)) => return Step::End(end),
            Event::Ready(Ok(frame)) => frame,
        };
        if !socket.in_message() {
            *fragment_deadline = None;
        } else if fragment_deadline.is_none() {
            *fragment_deadline = Some(Box::pin(tokio::time::sleep(
                self.ctx.settings.fragment_timeout,
            )));
        }
        let charged = match frame {
            Inbound::Text(text) => {
                self.outbound.seen(self.ctx.hub.clock_ms());
                return match self.charge(Budget::Frames) {
                    Ok(None) => Step::Handle(text),
                    Ok(Some(wait)) => {
                        self.refuse(text.as_str(), wait);
                        Step::Pause(wait)
                    }
                    Err(end) => Step::End(end),
                };
            }
            Inbound::Binary(_) => return Step::End(End::BinaryFrame),
            Inbound::Close(code) => return Step::End(End::ClientClosed(code)),
            Inbound::Fragment => self.charge(Budget::Frames),
            Inbound::Ping(payload) => {
                let charged = self.charge(Budget::Control);
                // Unanswered over budget: a pong is owed only for pings within budget.
                if matches!(charged, Ok(None)) {
                    socket.owe_pong(&payload);
                }
                charged
            }
            Inbound::Pong => {
                self.outbound.seen(self.ctx.hub.clock_ms());
                self.charge(Budget::Control)
            }
        };
        match charged {
            Ok(None) => Step::Next,
            Ok(Some(wait)) => Step::Pause(wait),
            Err(end) => Step::End(end),
        }
    }

    /// Handles one text frame while the write side goes on (a publish may wait for Redis);
    /// `Some` when the session must end meanwhile.
    async fn handle_beside_writes<S>(
        &mut self,
        socket: &mut Socket<S>,
        text: Utf8Bytes,
    ) -> Option<End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let outbound = Arc::clone(&self.outbound);
        let step = {
            let mut handling = std::pin::pin!(self.handle_text(text.as_str()));
            poll_fn(|cx| {
                poll_session(cx, socket, &outbound, false, |cx, _| {
                    handling.as_mut().poll(cx)
                })
            })
            .await
        };
        self.handled(step)
    }

    /// Carries out the commands the hub holds for the session (`POST /v1/subscribe`,
    /// `/v1/unsubscribe`) while the write side goes on; `Some` when the session must end
    /// meanwhile.
    async fn commands_beside_writes<S>(&mut self, socket: &mut Socket<S>) -> Option<End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let outbound = Arc::clone(&self.outbound);
        let commands = self.ctx.hub.take_commands(outbound.conn_id());
        let step = {
            let mut handling = std::pin::pin!(self.run_commands(commands));
            poll_fn(|cx| {
                poll_session(cx, socket, &outbound, false, |cx, _| {
                    handling.as_mut().poll(cx)
                })
            })
            .await
        };
        self.handled(step)
    }

    async fn run_commands(&mut self, commands: Vec<SessionCommand>) {
        for command in commands {
            match command {
                SessionCommand::Subscribe(channel) => {
                    if !self.subscriptions.contains(&channel) {
                        self.subscribe_checked(None, channel.clone(), None, false)
                            .await;
                    }
                    // Also when the client had subscribed itself: the backend wants the
                    // connection there whatever its token says.
                    if let (true, Some(account)) = (
                        self.subscriptions.contains(&channel),
                        self.account.as_deref_mut(),
                    ) && !account.by_backend.contains(&channel)
                    {
                        account.by_backend.push(channel);
                    }
                }
                SessionCommand::Unsubscribe(channel) => {
                    if self.subscriptions.contains(&channel) {
                        self.unsubscribe(None, channel.as_str());
                    }
                }
                SessionCommand::RefreshIdentity => self.refresh_by_hook().await,
                SessionCommand::CheckRevoked => self.check_revoked(),
            }
        }
    }

    /// What a step of handling beside writes means for the session.
    fn handled(&self, step: Event<()>) -> Option<End> {
        match step {
            Event::Closed => Some(self.closed_end()),
            Event::WriteFailed(err) => Some(self.write_failed(&err)),
            Event::Commands | Event::Ready(()) => None,
        }
    }

    fn write_failed(&self, err: &std::io::Error) -> End {
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

    async fn handle_text(&mut self, text: &str) {
        let frame = protocol::decode_client_frame(text);
        if self.ctx.settings.auth_required
            && self.account.is_none()
            && !matches!(frame, Ok(ClientFrame::Auth { .. }))
        {
            // `auth.required`: nothing but `auth` before a token was accepted.
            let id = match &frame {
                Ok(frame) => frame.id(),
                Err(err) => err.id,
            };
            telemetry::auth("missing");
            self.error(
                id,
                ErrorCode::Unauthorized,
                "authentication required: send {\"type\":\"auth\",\"token\":..} first",
            );
            self.outbound.close(CloseCode::Unauthorized);
            return;
        }
        match frame {
            Err(err) => self.error(err.id, ErrorCode::BadRequest, err.message),
            Ok(ClientFrame::Ping { id }) => self.send(protocol::encode_pong(id)),
            Ok(ClientFrame::History {
                id,
                channel,
                since,
                limit,
            }) => self.history(id, &channel, since.as_deref(), limit).await,
            Ok(ClientFrame::Subscribe { id, channel, since }) => {
                self.subscribe(id, &channel, since.as_deref()).await;
            }
            Ok(ClientFrame::Unsubscribe { id, channel }) => self.unsubscribe(id, &channel),
            Ok(
                frame @ (ClientFrame::Publish { .. }
                | ClientFrame::Append { .. }
                | ClientFrame::Finish { .. }
                | ClientFrame::Update { .. }
                | ClientFrame::Delete { .. }),
            ) => {
                self.publishing_frame(&frame).await;
            }
            Ok(ClientFrame::Presence { id, channel }) => self.presence(id, &channel).await,
            Ok(ClientFrame::PresenceStats { id, channel }) => {
                self.presence_stats(id, &channel).await;
            }
            Ok(ClientFrame::Auth { id, token }) => self.authenticate(id, &token).await,
            Ok(ClientFrame::Refresh { id, token }) => self.refresh(id, &token).await,
            Ok(ClientFrame::Rpc { id, method, data }) => {
                // An rpc the server cannot serve costs nothing; one it can is a publish's worth.
                if !self.serves_rpc() || self.charge_publish_rate(id).await {
                    self.rpc(id, &method, data);
                }
            }
        }
    }

    pub(super) fn error(&self, id: Option<u64>, code: ErrorCode, message: &str) {
        telemetry::metrics().protocol_error(code);
        self.send(protocol::encode_error(id, code, message));
    }

    pub(super) fn send(&self, text: String) {
        // A full queue closes the connection as a slow consumer; nothing else to do here.
        let _ = self.outbound.try_enqueue(&FramedText::from(text));
    }
}
