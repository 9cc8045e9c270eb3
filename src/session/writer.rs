//! The write side of a session: when the session holds its lane, drains the outbound queue
//! (frames and keepalive pings) to the socket in batches; and sends the close frame. The
//! session's one task polls it beside the read side (see `reader`).

use std::task::{Context, Poll, ready};

use futures_util::{Sink, SinkExt as _};
use tokio_tungstenite::tungstenite::{
    self, Message,
    protocol::{CloseFrame, frame::coding::CloseCode as WsCloseCode},
};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;

use super::{CLOSE_TIMEOUT, coalesce::Coalesce};
use crate::hub::Outbound;

/// While the session holds the lane (the socket filled up under a flusher, the session
/// enqueued frames of its own, or the connection has no `Wire`): writes what a flusher
/// left unwritten, then the queue, through `Coalesce` in batches of one `writev`, and
/// gives the lane up once everything is written. Pending otherwise, and while the socket
/// is full (its readiness then wakes the task). `Ready` only when writing failed.
pub(super) fn poll_write<S>(
    cx: &mut Context<'_>,
    ws: &mut WebSocketStream<Coalesce<S>>,
    outbound: &Outbound,
) -> Poll<tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let socket = ws.get_mut();
    while outbound.session_writes() {
        for rest in outbound.take_handoff() {
            socket.push(rest);
        }
        if socket.has_room() {
            outbound.take_while(|bytes| {
                socket.push(bytes);
                socket.has_room()
            });
        }
        if let Err(err) = ready!(socket.poll_write_out(cx)) {
            return Poll::Ready(err.into());
        }
        if outbound.queued_messages() == 0 && outbound.release_session() {
            break;
        }
    }
    Poll::Pending
}

/// Sends the close frame when a code was requested, bounded by `CLOSE_TIMEOUT`.
pub(super) async fn send_close<S>(sink: &mut S, outbound: &Outbound)
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let Some(code) = outbound.close_code() else {
        return;
    };
    let frame = CloseFrame {
        code: WsCloseCode::from(code.code()),
        reason: code.reason().into(),
    };
    // Bounded: a client that reads nothing would otherwise hold the task forever.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        // When the client closed first, tungstenite refuses a second close frame and has
        // already queued its reply (echoing the client's code); closing the sink flushes
        // that reply either way.
        let _ = sink.send(Message::Close(Some(frame))).await;
        sink.close().await
    })
    .await;
}
