//! The publishers' side of the write lane (see the module doc of `lane`): writing a claimed
//! connection's queue to its socket ([`Outbound::flush`]), and flushing what fan-outs
//! claimed: small lists on the publisher's thread, large ones in tasks every worker runs, and
//! a client's publishes within one poll of its session together ([`FlushAfterPoll`]).

use std::{
    cell::RefCell,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use std::{
    io::{self, IoSlice},
    iter,
    sync::{
        PoisonError,
        atomic::{self, Ordering},
    },
};

use bytes::Bytes;
use smallvec::SmallVec;
use tokio::runtime::Handle;

use super::{FLUSHING, IDLE, MAX_FLUSH_ROUNDS, MAX_SLICES, Outbound, Outgoing, WANT, Wire};
use crate::telemetry;

/// What one flush took off the queue.
enum Taken {
    One(Outgoing),
    All(std::collections::VecDeque<Outgoing>),
}

impl Outbound {
    /// Writes the queue to the socket; call it after [`Outbound::enqueue`] or
    /// [`Keepalive::Pinged`](super::Keepalive::Pinged) said so, and from no other place. Never waits: what the socket
    /// does not take now, and everything once the connection is closing, is handed to the
    /// session task, which waits for room.
    pub fn flush(&self) {
        debug_assert_eq!(self.lane.load(Ordering::Relaxed) & !WANT, FLUSHING);
        let Some(wire) = &self.wire else {
            return self.hand_over();
        };
        for _ in 0..MAX_FLUSH_ROUNDS {
            if self.is_closing() {
                break;
            }
            let taken = {
                let mut queue = self.queue();
                match queue.len() {
                    0 => None,
                    // One frame: the queue keeps its buffer for the next.
                    1 => queue.pop_front().map(Taken::One),
                    // More: the whole queue, buffer and all, so a queue that was deep keeps
                    // no capacity once it drains.
                    _ => Some(Taken::All(std::mem::take(&mut *queue))),
                }
            };
            let complete = match taken {
                None => true,
                Some(Taken::One(only)) => self.write_all(wire.as_ref(), &mut iter::once(only)),
                Some(Taken::All(all)) => self.write_all(wire.as_ref(), &mut all.into_iter()),
            };
            if !complete {
                return self.hand_over();
            }
            if self.release_flusher() {
                return;
            }
        }
        self.hand_over();
    }

    /// Writes `queued` (just taken off the queue) with one non-blocking `writev` per
    /// [`MAX_SLICES`] frames; whether the socket took all of it. What it did not take is
    /// kept for the session.
    fn write_all(&self, wire: &dyn Wire, queued: &mut impl Iterator<Item = Outgoing>) -> bool {
        loop {
            // On the stack, and only as many as there are: most flushes write one frame.
            let mut batch = SmallVec::<[Bytes; MAX_SLICES]>::new();
            let mut text_bytes = 0;
            for item in queued.by_ref().take(MAX_SLICES) {
                if let Outgoing::Text(frame) = &item {
                    text_bytes += frame.len();
                }
                batch.push(item.into_wire());
            }
            if batch.is_empty() {
                return true;
            }
            self.queued_bytes.fetch_sub(text_bytes, Ordering::Relaxed);
            let Some(written) = self.write(wire, &batch) else {
                return false;
            };
            if written < batch.iter().map(Bytes::len).sum() {
                self.keep_unwritten(&batch, written, queued);
                return false;
            }
        }
    }

    /// One non-blocking `writev` of `buffers`: the bytes the socket took, or `None` when the
    /// connection broke (it is then aborted).
    fn write(&self, wire: &dyn Wire, buffers: &[Bytes]) -> Option<usize> {
        let result = if let [only] = buffers {
            wire.try_write_vectored(&[IoSlice::new(only)])
        } else {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            for (slice, buffer) in slices.iter_mut().zip(buffers) {
                *slice = IoSlice::new(buffer);
            }
            wire.try_write_vectored(&slices[..buffers.len()])
        };
        match result {
            Ok(written) => {
                telemetry::metrics().bytes_sent.increment(written as u64);
                Some(written)
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Some(0),
            Err(err) => {
                tracing::debug!(conn_id = self.conn_id, error = %err, "Write failed");
                self.abort();
                None
            }
        }
    }

    /// A flusher found the queue empty: gives the lane up (or to a session that asked for
    /// it). `false` when the queue filled meanwhile and the flusher must go on.
    fn release_flusher(&self) -> bool {
        if self
            .lane
            .compare_exchange(FLUSHING, IDLE, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            // The session asked for the lane.
            self.hand_over();
            return true;
        }
        atomic::fence(Ordering::SeqCst);
        self.queue_is_empty() || !self.claim(FLUSHING)
    }

    /// Keeps what `written` bytes into `buffers` left unwritten, and the rest of what was
    /// taken off the queue, for the session.
    fn keep_unwritten(
        &self,
        buffers: &[Bytes],
        mut written: usize,
        rest: &mut impl Iterator<Item = Outgoing>,
    ) {
        let mut handoff = self.handoff.lock().unwrap_or_else(PoisonError::into_inner);
        for buffer in buffers {
            if written >= buffer.len() {
                written -= buffer.len();
                continue;
            }
            handoff.push(buffer.slice(written..));
            written = 0;
        }
        for item in rest {
            self.taken(&item);
            handoff.push(item.into_wire());
        }
    }
}

/// Connections one flushing task writes to at most: a large fan-out is split into tasks of
/// this many, which the runtime's workers share.
pub(in crate::hub) const FLUSH_CHUNK: usize = 256;

thread_local! {
    /// Connections claimed by fan-outs inside a [`FlushAfterPoll`] poll on this thread.
    static DEFERRED: RefCell<Option<Vec<Arc<Outbound>>>> = const { RefCell::new(None) };
}

/// Claimed connections up to this many are flushed on the publisher's own thread: spawning
/// a task, and waking an idle worker to steal it, cost more than these writes would move.
/// (Spawning every flush cut a 1,000-channel run, 20,000 publishes/s to 5 subscribers each,
/// from 100,000 to 64,000-86,000 deliveries/s, with the workers ping-ponging on wakeups.)
pub(in crate::hub) const FLUSH_INLINE: usize = 64;

/// Flushes connections whose lane a fan-out claimed: up to [`FLUSH_INLINE`] on this thread,
/// more in tasks of at most [`FLUSH_CHUNK`] connections on `workers` (the runtime the
/// sessions run on), so that every core writes and the publisher is held neither for a large
/// fan-out's syscalls nor behind them. Inside a [`FlushAfterPoll`], only collects them for
/// the end of the poll. Without `workers` (a hub built outside a runtime), everything is
/// written on this thread.
pub(in crate::hub) fn flush_all(mut to_flush: Vec<Arc<Outbound>>, workers: Option<&Handle>) {
    if to_flush.is_empty() {
        return;
    }
    let deferred = DEFERRED.with_borrow_mut(|deferred| match deferred {
        Some(deferred) => {
            deferred.append(&mut to_flush);
            true
        }
        None => false,
    });
    if deferred {
        return;
    }
    let runtime = match workers {
        Some(runtime) if to_flush.len() > FLUSH_INLINE => runtime,
        _ => {
            for outbound in &to_flush {
                outbound.flush();
            }
            return;
        }
    };
    while !to_flush.is_empty() {
        let chunk = to_flush.split_off(to_flush.len().saturating_sub(FLUSH_CHUNK));
        // Not through the app's task tracker: these tasks never await, finish in one poll,
        // and a shutdown loses nothing by dropping one (its connections are closing).
        runtime.spawn(async move {
            for outbound in &chunk {
                outbound.flush();
            }
        });
    }
}

pin_project_lite::pin_project! {
    /// Runs a future (a publishing client's session) so that the fan-outs of every message
    /// it publishes within one poll are flushed together when the poll ends: a connection
    /// that several of them reach gets one `writev` of all its frames instead of one each,
    /// as the baseline broadcaster writes what one read of the publisher brought. The lane
    /// already lists each connection once however many messages it was claimed for.
    pub struct FlushAfterPoll<F> {
        #[pin]
        inner: F,
    }
}

impl<F> FlushAfterPoll<F> {
    pub fn new(inner: F) -> Self {
        Self { inner }
    }
}

impl<F: Future> Future for FlushAfterPoll<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _scope = DeferScope::enter();
        self.project().inner.poll(cx)
    }
}

/// Collects fan-outs' claims on this thread until dropped, then flushes them; on drop, so a
/// panicking poll cannot leave claimed connections unflushed.
struct DeferScope {
    /// The enclosing scope's list (nested scopes flush their own claims).
    outer: Option<Vec<Arc<Outbound>>>,
}

impl DeferScope {
    fn enter() -> Self {
        Self {
            outer: DEFERRED.with_borrow_mut(|deferred| deferred.replace(Vec::new())),
        }
    }
}

impl Drop for DeferScope {
    fn drop(&mut self) {
        let claimed =
            DEFERRED.with_borrow_mut(|deferred| std::mem::replace(deferred, self.outer.take()));
        // Scopes are entered by tasks on the sessions' runtime: its workers flush.
        flush_all(
            claimed.unwrap_or_default(),
            Handle::try_current().ok().as_ref(),
        );
    }
}
