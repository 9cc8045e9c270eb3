//! The write side of a session: drains the outbound queue (frames and keepalive pings) to
//! the socket in batches, and sends the close frame. The session's one task polls it beside
//! the read side (see `reader`).

use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::{Sink, SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::{
    self, Message,
    protocol::{CloseFrame, frame::coding::CloseCode as WsCloseCode},
};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;

use super::{CLOSE_TIMEOUT, coalesce::Coalesce};
use crate::{
    hub::{Outbound, Outgoing},
    telemetry,
};

/// Frames written per flush at most, so one busy connection yields to the others.
const MAX_BATCH: usize = 64;

/// A connection's outbound queue, as the session polls it.
pub(super) type Queue = flume::r#async::RecvStream<'static, Outgoing>;

/// The write side's progress between wake-ups.
#[derive(Default)]
pub(super) struct Batch {
    /// Taken off the queue; waits for room in the socket's queue.
    in_hand: Option<Outgoing>,
    /// Frames handed over since the last flush.
    unflushed: usize,
    /// Bytes handed over since the last flush.
    unflushed_bytes: usize,
}

impl Batch {
    /// Moves frames from the queue to the socket, flushing after at most `MAX_BATCH` of them
    /// and whenever the queue runs dry. Text frames go to `Coalesce` as the hub framed them
    /// (no copy); pings go through tungstenite. `Ready(Ok)` only when the queue is closed.
    pub(super) fn poll_write<S>(
        &mut self,
        cx: &mut Context<'_>,
        ws: &mut WebSocketStream<Coalesce<S>>,
        queue: &mut Queue,
        outbound: &Outbound,
    ) -> Poll<Result<(), tungstenite::Error>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            if self.in_hand.is_none() && self.unflushed < MAX_BATCH {
                match queue.poll_next_unpin(cx) {
                    Poll::Ready(Some(item)) => {
                        if let Outgoing::Text(frame) = &item {
                            outbound.dequeued(frame.len());
                        }
                        self.in_hand = Some(item);
                    }
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => {}
                }
            }
            match self.in_hand.take() {
                Some(Outgoing::Text(frame)) => {
                    let socket = ws.get_mut();
                    match socket.poll_reserve(cx) {
                        Poll::Ready(Ok(())) => {
                            self.unflushed_bytes += frame.len();
                            socket.push(frame.wire().clone());
                            self.unflushed += 1;
                            continue;
                        }
                        Poll::Ready(Err(err)) => return Poll::Ready(Err(err.into())),
                        Poll::Pending => {
                            self.in_hand = Some(Outgoing::Text(frame));
                            return Poll::Pending;
                        }
                    }
                }
                Some(Outgoing::Ping) => match ws.poll_ready_unpin(cx) {
                    Poll::Ready(Ok(())) => {
                        ws.start_send_unpin(Message::Ping(Bytes::new()))?;
                        self.unflushed += 1;
                        continue;
                    }
                    Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                    Poll::Pending => {
                        self.in_hand = Some(Outgoing::Ping);
                        return Poll::Pending;
                    }
                },
                None => {}
            }
            // The queue is dry or the batch is full: flush what was handed over.
            if self.unflushed == 0 {
                return Poll::Pending;
            }
            ready!(ws.poll_flush_unpin(cx))?;
            telemetry::metrics()
                .bytes_sent
                .increment(self.unflushed_bytes as u64);
            self.unflushed = 0;
            self.unflushed_bytes = 0;
        }
    }
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
