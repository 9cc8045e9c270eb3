//! The write half of a session: drains the outbound queue to the socket in batches, pings on
//! the heartbeat, and sends the close frame.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::{Sink, SinkExt as _};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::{
    self, Message,
    protocol::{CloseFrame, frame::coding::CloseCode as WsCloseCode},
};

use super::CLOSE_TIMEOUT;
use crate::{
    hub::{Frame, Outbound},
    telemetry,
};

/// Frames written per flush at most, so one busy connection yields to the others.
const MAX_BATCH: usize = 64;

enum Work {
    Frame(Frame),
    Ping,
}

/// Runs until the connection closes, then sends the close frame when a code was requested.
pub(super) async fn write_loop<S>(
    mut sink: S,
    queue_rx: flume::Receiver<Frame>,
    outbound: Arc<Outbound>,
    heartbeat: Duration,
) where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let watched = Arc::clone(&outbound);
    // Created once, so the loop does not re-register a waiter on every frame.
    let closed = watched.closed();
    tokio::pin!(closed);
    let mut ticker = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let metrics = telemetry::metrics();

    loop {
        let work = tokio::select! {
            biased;
            () = &mut closed => break,
            // Cancel safe: an unreceived message stays in the queue.
            frame = queue_rx.recv_async() => match frame {
                Ok(frame) => Work::Frame(frame),
                Err(flume::RecvError::Disconnected) => break,
            },
            _ = ticker.tick() => Work::Ping,
        };
        let write = async {
            match work {
                Work::Frame(first) => {
                    let mut bytes = first.len();
                    outbound.dequeued(first.len());
                    sink.feed(Message::Text(first)).await?;
                    for _ in 1..MAX_BATCH {
                        let Ok(frame) = queue_rx.try_recv() else {
                            break;
                        };
                        bytes += frame.len();
                        outbound.dequeued(frame.len());
                        sink.feed(Message::Text(frame)).await?;
                    }
                    sink.flush().await?;
                    metrics.bytes_sent.increment(bytes as u64);
                }
                Work::Ping => sink.send(Message::Ping(Bytes::new())).await?,
            }
            Ok::<_, tungstenite::Error>(())
        };
        // A write to a client that stopped reading can wait forever; a close request must
        // still get through, so the write races the close signal.
        let result = tokio::select! {
            biased;
            () = &mut closed => break,
            result = write => result,
        };
        if let Err(err) = result {
            tracing::debug!(conn_id = outbound.conn_id(), error = %err, "Write failed");
            outbound.abort();
            return;
        }
    }

    if let Some(code) = outbound.close_code() {
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
}
