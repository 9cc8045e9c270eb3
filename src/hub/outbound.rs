//! One connection's outbound side as the hub sees it: a bounded queue plus a close signal.

use std::sync::{
    Arc,
    atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering},
};

use tokio::sync::Notify;

use super::Frame;
use crate::{protocol::CloseCode, telemetry};

/// Marker stored in `close_code` while no close was requested.
const OPEN: u8 = u8::MAX;
/// Marker stored in `close_code` when the transport failed and no close frame can be sent.
const ABORTED: u8 = u8::MAX - 1;

/// Identifies a connection on this node; never reused within a process.
pub type ConnId = u64;

/// What a session's writer takes off its queue.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A text frame, shared by every subscriber it goes to.
    Text(Frame),
    /// A WebSocket ping from the keepalive sweep.
    Ping,
}

/// What [`Outbound::keepalive`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keepalive {
    /// The client was heard from recently enough.
    Alive,
    /// The client was quiet for a heartbeat; a ping was enqueued.
    Pinged,
    /// The client was silent for the idle timeout; the connection is closing with 4002.
    IdleClosed,
}

/// The hub's handle on one connection: where to enqueue frames, and how to ask it to close.
///
/// Shared (`Arc`) between the hub's subscriber lists, the connection registry and the session.
#[derive(Debug)]
pub struct Outbound {
    conn_id: ConnId,
    tx: flume::Sender<Outgoing>,
    /// Bytes enqueued and not yet taken by the session's write side.
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    /// `CloseCode::index()` of the first close requested, or `OPEN`.
    close_code: AtomicU8,
    /// Wakes the session's reader and writer when a close is requested. Inline rather than
    /// a cancellation token: one allocation less per connection.
    close_notify: Notify,
    /// When the client was last heard from, in hub clock milliseconds.
    last_seen_ms: AtomicU64,
    /// When the keepalive sweep last enqueued a ping, in hub clock milliseconds.
    last_ping_ms: AtomicU64,
}

/// Why a frame was not enqueued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnqueueError {
    /// The queue was full by count or bytes; the connection is now closing as a slow consumer.
    SlowConsumer,
    /// The connection is already closing; the frame is dropped with it.
    Closing,
}

impl Outbound {
    pub(super) fn new(
        conn_id: ConnId,
        max_messages: usize,
        max_bytes: usize,
        now_ms: u64,
    ) -> (Arc<Self>, flume::Receiver<Outgoing>) {
        let (tx, rx) = flume::bounded(max_messages);
        let outbound = Arc::new(Self {
            conn_id,
            tx,
            queued_bytes: AtomicUsize::new(0),
            max_bytes,
            close_code: AtomicU8::new(OPEN),
            close_notify: Notify::new(),
            last_seen_ms: AtomicU64::new(now_ms),
            last_ping_ms: AtomicU64::new(now_ms),
        });
        (outbound, rx)
    }

    #[must_use]
    pub fn conn_id(&self) -> ConnId {
        self.conn_id
    }

    /// Enqueues a frame without waiting. A full queue closes the connection as a slow consumer:
    /// the caller (a publisher) is never delayed by a slow reader.
    ///
    /// # Errors
    /// [`EnqueueError`] when the frame was not enqueued.
    pub fn try_enqueue(&self, frame: &Frame) -> Result<(), EnqueueError> {
        if self.is_closing() {
            return Err(EnqueueError::Closing);
        }
        let len = frame.len();
        let before = self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if before + len > self.max_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            self.close_slow_consumer();
            return Err(EnqueueError::SlowConsumer);
        }
        match self.tx.try_send(Outgoing::Text(frame.clone())) {
            Ok(()) => Ok(()),
            Err(flume::TrySendError::Full(_)) => {
                self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                self.close_slow_consumer();
                Err(EnqueueError::SlowConsumer)
            }
            Err(flume::TrySendError::Disconnected(_)) => {
                self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                Err(EnqueueError::Closing)
            }
        }
    }

    /// The client was heard from (any frame, a pong included) at `now_ms` on the hub clock.
    pub fn seen(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
    }

    /// One keepalive check at `now_ms`: closes a connection silent for `idle_ms` with 4002,
    /// and pings one that was quiet for `heartbeat_ms` since it was last heard from or pinged.
    /// A client that keeps talking is never pinged; its frames already prove it alive.
    pub fn keepalive(&self, now_ms: u64, heartbeat_ms: u64, idle_ms: u64) -> Keepalive {
        if self.is_closing() {
            return Keepalive::Alive;
        }
        let last_seen = self.last_seen_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last_seen) >= idle_ms {
            self.close(CloseCode::IdleTimeout);
            return Keepalive::IdleClosed;
        }
        let last_ping = self.last_ping_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last_seen.max(last_ping)) < heartbeat_ms {
            return Keepalive::Alive;
        }
        self.last_ping_ms.store(now_ms, Ordering::Relaxed);
        // A full queue means a slow consumer, which the data path already closes; a ping
        // that does not fit is simply skipped.
        let _ = self.tx.try_send(Outgoing::Ping);
        Keepalive::Pinged
    }

    fn close_slow_consumer(&self) {
        if self.close(CloseCode::SlowConsumer) {
            telemetry::metrics().slow_consumer_closes.increment(1);
            tracing::debug!(
                conn_id = self.conn_id,
                "Outbound queue full, closing slow consumer"
            );
        }
    }

    /// The session's write side took a frame of `len` bytes off the queue.
    pub fn dequeued(&self, len: usize) {
        self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
    }

    /// Asks the session to close with `code`. The first request wins; returns whether this one
    /// did.
    pub fn close(&self, code: CloseCode) -> bool {
        let won = self
            .close_code
            .compare_exchange(OPEN, code.index(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        self.close_notify.notify_waiters();
        won
    }

    /// Marks the connection closing without a close frame (the transport failed).
    pub fn abort(&self) {
        let _ =
            self.close_code
                .compare_exchange(OPEN, ABORTED, Ordering::AcqRel, Ordering::Acquire);
        self.close_notify.notify_waiters();
    }

    #[must_use]
    pub fn is_closing(&self) -> bool {
        self.close_code.load(Ordering::Acquire) != OPEN
    }

    /// The close code requested first; `None` while open or when aborted.
    #[must_use]
    pub fn close_code(&self) -> Option<CloseCode> {
        CloseCode::from_index(self.close_code.load(Ordering::Acquire))
    }

    /// Resolves once a close was requested (at once if one already was).
    ///
    /// # Cancel safety
    /// Cancel safe. Create it once and poll it repeatedly (pinned) rather than re-creating it
    /// in a loop.
    pub async fn closed(&self) {
        let notified = self.close_notify.notified();
        tokio::pin!(notified);
        // Registered before the check, so a close between the two cannot be missed.
        notified.as_mut().enable();
        if self.is_closing() {
            return;
        }
        notified.await;
    }

    /// Messages waiting in the queue.
    #[must_use]
    pub fn queued_messages(&self) -> usize {
        self.tx.len()
    }

    /// Bytes waiting in the queue.
    #[must_use]
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }
}
