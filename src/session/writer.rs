//! The write half of a session: drains the outbound queue (frames and keepalive pings) to
//! the socket in batches, and sends the close frame.

use std::{
    future::{Future as _, poll_fn},
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use futures_util::{Sink, SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::{
    self, Message,
    protocol::{CloseFrame, frame::coding::CloseCode as WsCloseCode},
};

use super::CLOSE_TIMEOUT;
use crate::{
    hub::{Outbound, Outgoing},
    telemetry,
};

/// Frames written per flush at most, so one busy connection yields to the others.
const MAX_BATCH: usize = 64;

/// Runs until the connection closes, then sends the close frame when a code was requested.
/// Returns the sink, so the session can flush what tungstenite wrote last (see `run`).
pub(super) async fn write_loop<S>(
    mut sink: S,
    queue_rx: flume::Receiver<Outgoing>,
    outbound: Arc<Outbound>,
) -> S
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let watched = Arc::clone(&outbound);
    // Created once, so the loop does not re-register a waiter on every frame.
    let closed = watched.closed();
    tokio::pin!(closed);
    let mut queue = queue_rx.into_stream();
    let mut batch = Batch::default();
    // One hand-written poll rather than `select!` over `feed`/`flush` futures: the writer's
    // state lives as long as the connection, and this keeps it to the sink, the queue, the
    // close signal and one frame in hand.
    let result = poll_fn(|cx| {
        // Checked first on every wake-up: a write to a client that stopped reading can wait
        // forever, and a close request must still get through.
        if closed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        batch.poll_write(cx, &mut sink, &mut queue, &outbound)
    })
    .await;
    if let Err(err) = result {
        tracing::debug!(conn_id = outbound.conn_id(), error = %err, "Write failed");
        outbound.abort();
        return sink;
    }
    // Boxed: the close handshake's state (a timer among it) is needed once, at the end, and
    // would otherwise size every idle connection's writer.
    Box::pin(send_close(&mut sink, &outbound)).await;
    sink
}

/// The write loop's progress between wake-ups.
#[derive(Default)]
struct Batch {
    /// Taken off the queue; waits for the sink to have room.
    in_hand: Option<Message>,
    /// Frames handed to the sink since its last flush.
    unflushed: usize,
    /// Payload bytes handed to the sink since its last flush.
    unflushed_bytes: usize,
}

impl Batch {
    /// Moves frames from the queue into the sink, flushing after at most `MAX_BATCH` of them
    /// and whenever the queue runs dry. `Ready(Ok)` only when the queue is closed.
    fn poll_write<S>(
        &mut self,
        cx: &mut Context<'_>,
        sink: &mut S,
        queue: &mut flume::r#async::RecvStream<'static, Outgoing>,
        outbound: &Outbound,
    ) -> Poll<Result<(), tungstenite::Error>>
    where
        S: Sink<Message, Error = tungstenite::Error> + Unpin,
    {
        loop {
            if self.in_hand.is_none() && self.unflushed < MAX_BATCH {
                match queue.poll_next_unpin(cx) {
                    Poll::Ready(Some(item)) => {
                        self.in_hand = Some(match item {
                            Outgoing::Text(frame) => {
                                outbound.dequeued(frame.len());
                                self.unflushed_bytes += frame.len();
                                Message::Text(frame)
                            }
                            Outgoing::Ping => Message::Ping(Bytes::new()),
                        });
                    }
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => {}
                }
            }
            if let Some(message) = self.in_hand.take() {
                match sink.poll_ready_unpin(cx) {
                    Poll::Ready(Ok(())) => {
                        sink.start_send_unpin(message)?;
                        self.unflushed += 1;
                        continue;
                    }
                    Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                    Poll::Pending => {
                        self.in_hand = Some(message);
                        return Poll::Pending;
                    }
                }
            }
            // The queue is dry or the batch is full: flush what was handed over.
            if self.unflushed == 0 {
                return Poll::Pending;
            }
            ready!(sink.poll_flush_unpin(cx))?;
            telemetry::metrics()
                .bytes_sent
                .increment(self.unflushed_bytes as u64);
            self.unflushed = 0;
            self.unflushed_bytes = 0;
        }
    }
}

async fn send_close<S>(sink: &mut S, outbound: &Outbound)
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
