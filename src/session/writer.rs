//! The write side of a session: when the session holds its lane, writes what a flusher left,
//! the pong owed, and the outbound queue (frames and keepalive pings) to the socket in
//! batches; and, at the end, the close frame. The session's one task polls it beside the read
//! side (see `reader`).
//!
//! Order on the wire: what a flusher left unwritten goes first (its first buffer may be the
//! end of a frame), then the pong, then the queue, so frames never interleave.

use std::{
    future::poll_fn,
    io,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::socket::Socket;
use crate::hub::Outbound;

/// While the session holds the lane (the socket filled up under a flusher, the session
/// enqueued frames of its own, or the connection has no `Wire`), or owes a pong: writes what
/// a flusher left unwritten, the pong, then the queue, through `Coalesce` in batches of one
/// `writev`, and gives the lane up once everything is written. Pending otherwise, and while
/// the socket is full (its readiness then wakes the task). `Ready` only when writing failed.
///
/// Takes from the queue only while `Coalesce` is under its high-water mark: a client that
/// does not read fills its bounded queue (and is closed as a slow consumer), not a buffer.
pub(super) fn poll_write<S>(
    cx: &mut Context<'_>,
    socket: &mut Socket<S>,
    outbound: &Outbound,
) -> Poll<io::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if socket.owes_pong() && !outbound.session_lane().writes() {
        // Pending while a flusher writes; it hands the lane over when done and wakes us.
        ready!(outbound.session_lane().poll_claim(cx));
    }
    while outbound.session_lane().writes() {
        for rest in outbound.session_lane().take_handoff() {
            socket.stream.push(rest);
        }
        if socket.stream.has_room() {
            if let Some(pong) = socket.take_pong() {
                socket.stream.push(pong);
            }
            let stream = &mut socket.stream;
            outbound.session_lane().take_while(|bytes| {
                stream.push(bytes);
                stream.has_room()
            });
        }
        if let Err(err) = ready!(socket.stream.poll_write_out(cx)) {
            return Poll::Ready(err);
        }
        if outbound.queued_messages() == 0
            && !socket.owes_pong()
            && outbound.session_lane().release()
        {
            break;
        }
    }
    Poll::Pending
}

/// Writes the last frames of a session once it is closing: what a flusher left, the queue
/// when `flush_queue` (a drain delivers what was published before it), then `close_frame`.
/// Unbounded in time: the caller bounds it.
///
/// # Errors
/// When the socket fails.
pub(super) async fn write_final<S>(
    socket: &mut Socket<S>,
    outbound: &Outbound,
    flush_queue: bool,
    close_frame: Bytes,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    poll_fn(|cx| outbound.session_lane().poll_claim(cx)).await;
    for rest in outbound.session_lane().take_handoff() {
        socket.stream.push(rest);
    }
    if flush_queue {
        loop {
            let stream = &mut socket.stream;
            outbound.session_lane().take_while(|bytes| {
                stream.push(bytes);
                stream.has_room()
            });
            poll_fn(|cx| socket.stream.poll_write_out(cx)).await?;
            if outbound.queued_messages() == 0 {
                break;
            }
        }
    }
    socket.stream.push(close_frame);
    poll_fn(|cx| socket.stream.poll_write_out(cx)).await
}
