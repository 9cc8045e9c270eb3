//! A session's end of the connection after the upgrade: the byte stream (through
//! `Coalesce`), the read buffer, the frame decoder and the one pong owed.
//!
//! Everything a client can make the server hold here is bounded: the read buffer by the
//! largest frame the decoder lets through (its limits are checked on the header, before the
//! payload is read) and by what the client really sent (it grows as bytes arrive, at most
//! doubling, never on the length a header declares), the message being assembled by `limits.max_inbound_message_bytes`, and
//! pongs by one: only the newest ping is answered when several arrive before the pong could
//! be written (RFC 6455 section 5.5.3 allows it), so a client that pings without reading
//! costs 127 bytes, not a growing buffer. The read buffer is freed whenever it is empty and
//! shrunk back after a large message, so a connection keeps nothing of one large message;
//! an idle connection waits for its next bytes with no buffer at all (the first read goes
//! to the stack).

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{End, coalesce::Coalesce};
use crate::protocol::ws::{self, Decoded, Decoder, Inbound, Limits, WsError};

/// Frames read past a close frame while waiting for the client's close reply, at most.
const MAX_CLOSE_DRAIN_FRAMES: usize = 32;

/// Bytes an idle connection's first read takes onto the stack, at most (when
/// `session.read_buffer_bytes` is larger; the rest follows into the heap buffer).
const STACK_READ: usize = 4096;

#[derive(Debug)]
pub(super) struct Socket<S> {
    pub(super) stream: Coalesce<S>,
    read_buf: BytesMut,
    decoder: Decoder,
    /// The pong answering the newest ping not answered yet.
    owed_pong: Option<Bytes>,
    /// Bytes read at once when the next frame's size is not known; the buffer's size after
    /// a large frame shrinks back to at most four times this.
    read_chunk: usize,
}

impl<S> Socket<S> {
    /// `leftover`: bytes that came after the upgrade request (the first frames, pipelined).
    pub(super) fn new(stream: Coalesce<S>, leftover: BytesMut, read_chunk: usize) -> Self {
        Self {
            stream,
            // An empty leftover may still hold the upgrade's buffer.
            read_buf: if leftover.is_empty() {
                BytesMut::new()
            } else {
                leftover
            },
            decoder: Decoder::new(),
            owed_pong: None,
            read_chunk,
        }
    }

    /// Owes the client a pong for `payload`, replacing any pong not written yet.
    pub(super) fn owe_pong(&mut self, payload: &[u8]) {
        self.owed_pong = Some(ws::pong_frame(payload));
    }

    pub(super) fn owes_pong(&self) -> bool {
        self.owed_pong.is_some()
    }

    pub(super) fn take_pong(&mut self) -> Option<Bytes> {
        self.owed_pong.take()
    }

    /// Whether a fragmented message is being assembled.
    pub(super) fn in_message(&self) -> bool {
        self.decoder.in_message()
    }

    /// Bytes held for this connection: the read buffer, a message being assembled, and what
    /// waits in `Coalesce` to be written.
    pub(super) fn held_bytes(&self) -> usize {
        self.read_buf.capacity() + self.decoder.assembling_bytes() + self.stream.unwritten()
    }

    /// After a frame was taken: frees an empty buffer, and gives back the space a large
    /// frame needed once what is left fits a few chunks.
    fn tidy(&mut self) {
        if self.read_buf.is_empty() {
            self.read_buf = BytesMut::new();
        } else if self.read_buf.capacity() > 4 * self.read_chunk
            && self.read_buf.len() <= self.read_chunk
        {
            self.read_buf = BytesMut::from(&self.read_buf[..]);
        }
    }
}

/// Makes room to read into `buf` when the frame being read needs `needed` more bytes: as
/// bytes arrive, never on a declared length (a header that announces 64 KiB and sends
/// nothing more costs a chunk, not 64 KiB). The room at most doubles what has arrived, so a
/// large frame takes few reads, and never exceeds the frame (plus a chunk): allocated
/// exactly, since `BytesMut::reserve` rounds up to twice the capacity, and the last bytes
/// of a 64 KiB frame would make a 128 KiB buffer.
fn grow(buf: &mut BytesMut, needed: usize, chunk: usize) {
    let room = needed.min(buf.len()).max(chunk);
    let spare = buf.capacity() - buf.len();
    // Room for the rest of the frame, or for this step of growth: read into it.
    if spare > 0 && spare >= room.min(needed) {
        return;
    }
    let mut grown = BytesMut::with_capacity(buf.len() + room);
    grown.extend_from_slice(buf);
    *buf = grown;
}

impl<S: AsyncRead + Unpin> Socket<S> {
    /// The next frame from the client. `Err` ends the session: a frame that breaks the
    /// protocol or a limit (with its close code), or the end of the stream.
    pub(super) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
        limits: &Limits,
    ) -> Poll<Result<Inbound, End>> {
        loop {
            match self.decoder.decode(&mut self.read_buf, limits) {
                Ok(Decoded::Frame(frame)) => {
                    self.tidy();
                    return Poll::Ready(Ok(frame));
                }
                Ok(Decoded::Incomplete(_)) if self.read_buf.is_empty() => {
                    ready!(self.poll_first_read(cx))?;
                }
                Ok(Decoded::Incomplete(needed)) => {
                    grow(&mut self.read_buf, needed, self.read_chunk);
                    let read = ready!(tokio_util::io::poll_read_buf(
                        Pin::new(&mut self.stream),
                        cx,
                        &mut self.read_buf
                    ));
                    match read {
                        Ok(0) | Err(_) => return Poll::Ready(Err(End::TransportLost)),
                        Ok(_) => {}
                    }
                }
                Err(err) => return Poll::Ready(Err(End::from(err))),
            }
        }
    }

    /// Between frames, with nothing buffered: waits for the client's next bytes without
    /// holding a read buffer (an idle connection would keep a chunk for nothing), reading
    /// up to a chunk onto the stack and moving it into a buffer allocated once they arrive.
    fn poll_first_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), End>> {
        let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); STACK_READ];
        let mut first = ReadBuf::uninit(&mut stack[..self.read_chunk.min(STACK_READ)]);
        match ready!(Pin::new(&mut self.stream).poll_read(cx, &mut first)) {
            Ok(()) if !first.filled().is_empty() => {
                let mut buf = BytesMut::with_capacity(self.read_chunk.max(first.filled().len()));
                buf.extend_from_slice(first.filled());
                self.read_buf = buf;
                Poll::Ready(Ok(()))
            }
            Ok(()) | Err(_) => Poll::Ready(Err(End::TransportLost)),
        }
    }

    /// After the server sent a close frame: reads until the client's close reply, the end of
    /// the stream, an invalid frame, or [`MAX_CLOSE_DRAIN_FRAMES`], discarding everything else.
    pub(super) async fn await_close_reply(&mut self, limits: &Limits) {
        for _ in 0..MAX_CLOSE_DRAIN_FRAMES {
            match std::future::poll_fn(|cx| self.poll_frame(cx, limits)).await {
                Ok(Inbound::Close(_)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> Socket<S> {
    /// Writes everything queued in `Coalesce`, then sends FIN.
    pub(super) async fn flush_and_shutdown(&mut self) -> std::io::Result<()> {
        std::future::poll_fn(|cx| self.stream.poll_write_out(cx)).await?;
        std::future::poll_fn(|cx| self.stream.poll_shutdown(cx)).await
    }
}

impl From<WsError> for End {
    fn from(err: WsError) -> Self {
        match err {
            WsError::Protocol(_) => End::ProtocolViolation,
            WsError::BadUtf8 => End::BadUtf8,
            WsError::TooBig => End::TooBig,
            WsError::TooManyFragments => End::TooManyFragments,
            WsError::BadDeflate => End::BadDeflate,
        }
    }
}

#[cfg(test)]
mod tests;
