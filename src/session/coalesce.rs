//! The session's byte stream, and its way to the socket: whole buffers (`Bytes`) wait in a
//! short queue and go out with one vectored write (`writev`) per batch. A message's frame is
//! built once by the hub and the same allocation reaches every subscriber's socket: a
//! delivery copies nothing in user space. The session's own frames (pongs, the close frame)
//! are small buffers of their own.
//!
//! The session writes only while it holds its connection's lane (see `hub::lane`), and
//! takes from its queue only while the unwritten bytes here are under the high-water mark,
//! so a client that does not read fills its outbound queue (and is closed as a slow
//! consumer) instead of this buffer.
//!
//! Nothing is kept once written: the queue is freed when it empties (a 300-message burst to
//! 10,000 subscribers left the node 215 MB larger when a write buffer kept its high-water
//! capacity for the connection's life).

use std::{
    collections::VecDeque,
    io::{self, IoSlice},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::{hub::Outbound, telemetry};

/// Unwritten bytes past which nothing more is taken until the socket has taken some: the
/// queue holds at most this plus one buffer.
const HIGH_WATER: usize = 64 * 1024;
/// Buffers handed to one `writev` at most (the kernel's limit is 1,024).
const MAX_SLICES: usize = 64;

#[derive(Debug)]
pub(super) struct Coalesce<S> {
    inner: S,
    /// Buffers waiting for the socket, oldest first; the first may be partly written.
    pending: VecDeque<Bytes>,
    /// How much of the first buffer the socket has taken.
    front_written: usize,
    /// Bytes in `pending` not yet written.
    unwritten: usize,
    /// The connection's lane, once it is registered with the hub; `None` during the
    /// upgrade and on the echo endpoint, where nobody else writes.
    lane: Option<Arc<Outbound>>,
}

impl<S> Coalesce<S> {
    pub(super) fn new(inner: S) -> Self {
        Self {
            inner,
            pending: VecDeque::new(),
            front_written: 0,
            unwritten: 0,
            lane: None,
        }
    }

    /// From now on, writes wait for the session to hold `outbound`'s lane.
    pub(super) fn share_with(&mut self, outbound: Arc<Outbound>) {
        self.lane = Some(outbound);
    }

    /// Bytes queued and not yet written.
    pub(super) fn unwritten(&self) -> usize {
        self.unwritten
    }

    /// Whether the queue is under the high-water mark.
    pub(super) fn has_room(&self) -> bool {
        self.unwritten < HIGH_WATER
    }

    /// Queues `bytes` (a shared frame) behind what is already queued; check
    /// [`Coalesce::has_room`] first.
    pub(super) fn push(&mut self, bytes: Bytes) {
        self.unwritten += bytes.len();
        self.pending.push_back(bytes);
    }

    fn advance(&mut self, mut written: usize) {
        self.unwritten -= written;
        while written > 0 {
            let front = self.pending[0].len() - self.front_written;
            if written < front {
                self.front_written += written;
                return;
            }
            written -= front;
            self.pending.pop_front();
            self.front_written = 0;
        }
    }
}

impl<S: AsyncWrite + Unpin> Coalesce<S> {
    /// Writes everything queued; frees the queue once all of it is written.
    pub(super) fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if let Some(lane) = &self.lane {
            ready!(lane.session_lane().poll_claim(cx));
        }
        while !self.pending.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            for (slot, buffer) in slices.iter_mut().zip(&self.pending) {
                let start = if count == 0 { self.front_written } else { 0 };
                *slot = IoSlice::new(&buffer[start..]);
                count += 1;
            }
            let written =
                ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &slices[..count]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            telemetry::metrics().bytes_sent.increment(written as u64);
            self.advance(written);
        }
        // Nothing queued: let the queue's storage go too.
        self.pending = VecDeque::new();
        Poll::Ready(Ok(()))
    }

    /// Sends FIN (after [`Coalesce::poll_write_out`]).
    pub(super) fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests;
