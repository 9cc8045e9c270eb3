//! One connection's outbound side as the hub sees it: a bounded queue plus a close signal.

use std::sync::{
    Arc,
    atomic::{AtomicU8, AtomicUsize, Ordering},
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

/// The hub's handle on one connection: where to enqueue frames, and how to ask it to close.
///
/// Shared (`Arc`) between the hub's subscriber lists, the connection registry and the session.
#[derive(Debug)]
pub struct Outbound {
    conn_id: ConnId,
    tx: flume::Sender<Frame>,
    /// Bytes enqueued and not yet taken by the writer.
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    /// `CloseCode::index()` of the first close requested, or `OPEN`.
    close_code: AtomicU8,
    /// Wakes the session's reader and writer when a close is requested. Inline rather than
    /// a cancellation token: one allocation less per connection.
    close_notify: Notify,
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
    ) -> (Arc<Self>, flume::Receiver<Frame>) {
        let (tx, rx) = flume::bounded(max_messages);
        let outbound = Arc::new(Self {
            conn_id,
            tx,
            queued_bytes: AtomicUsize::new(0),
            max_bytes,
            close_code: AtomicU8::new(OPEN),
            close_notify: Notify::new(),
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
        match self.tx.try_send(frame.clone()) {
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

    fn close_slow_consumer(&self) {
        if self.close(CloseCode::SlowConsumer) {
            telemetry::metrics().slow_consumer_closes.increment(1);
            tracing::debug!(
                conn_id = self.conn_id,
                "Outbound queue full, closing slow consumer"
            );
        }
    }

    /// The writer took a frame of `len` bytes off the queue.
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
