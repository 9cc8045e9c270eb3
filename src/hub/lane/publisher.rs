//! The publishers' side of the write lane (see the module doc of `lane`): writing a claimed
//! connection's queue to its socket ([`Outbound::flush`]), and what one caller published
//! together ([`WriteBatch`]: small lists written on the caller's thread, large ones by the
//! workers, see `workers`).

use std::sync::Arc;

use std::{
    collections::VecDeque,
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

use super::{
    FLUSHING, IDLE, MAX_FLUSH_ROUNDS, MAX_SLICES, Outbound, Outgoing, WANT, Wire,
    workers::{FLUSH_CHUNK, Workers, flush_all},
};
use crate::telemetry;

/// What one flush took off the queue.
enum Taken {
    One(Outgoing),
    All(VecDeque<Outgoing>),
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
                text_bytes += item.text_len();
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

/// The connections a publisher's fan-outs claimed (see `Hub::publish_batched`), written
/// when the publisher says so: a caller that publishes several messages (a batch request, a
/// `XREAD` reply from the bus) gives them one batch, and a connection that several of them
/// reach gets one `writev` of all its frames instead of one each. The lane lists each
/// connection once however many messages it was claimed for.
///
/// Dropping the batch writes what it holds, so a caller that returns early (or panics)
/// cannot leave claimed connections unwritten.
#[derive(Debug)]
pub struct WriteBatch {
    claimed: Vec<Arc<Outbound>>,
    /// The runtime the sessions run on, which large batches are spread over.
    workers: Option<Workers>,
}

impl WriteBatch {
    pub(in crate::hub) fn new(workers: Option<Workers>) -> Self {
        Self {
            claimed: Vec::new(),
            workers,
        }
    }

    /// Adds a connection whose lane was claimed. With a runtime to spread over, every
    /// [`FLUSH_CHUNK`] go to the workers' queue at once, so other workers write while a large
    /// fan-out enqueues to the rest.
    pub(in crate::hub) fn push(&mut self, outbound: Arc<Outbound>) {
        self.claimed.push(outbound);
        if self.claimed.len() == FLUSH_CHUNK && self.workers.is_some() {
            self.flush();
        }
    }

    /// Whether nothing waits to be written.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.claimed.is_empty()
    }

    /// Writes what the batch holds now: a few connections on this thread, more in tasks
    /// on the sessions' runtime.
    pub fn flush(&mut self) {
        if !self.claimed.is_empty() {
            flush_all(std::mem::take(&mut self.claimed), self.workers.as_ref());
        }
    }

    /// Writes what the batch holds from a new task on the current runtime, so after the
    /// caller's current poll: a control connection on its own single-threaded runtime
    /// writes its answer first, then the deliveries of a small channel. Outside a runtime,
    /// writes at once.
    pub fn flush_later(mut self) {
        if self.claimed.is_empty() {
            return;
        }
        match Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { drop(self) });
            }
            Err(_) => self.flush(),
        }
    }
}

impl Drop for WriteBatch {
    fn drop(&mut self) {
        self.flush();
    }
}
