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
mod tests {
    use std::future::poll_fn;

    use tokio::io::AsyncWriteExt as _;

    use super::*;

    fn masked_text(payload: &[u8]) -> Vec<u8> {
        let mut wire = vec![0x81, 0x80 | 127];
        wire.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        wire.extend_from_slice(&[0; 4]);
        wire.extend_from_slice(payload);
        wire
    }

    /// Over a real TCP connection: a 60 KiB message needs a 60 KiB buffer while it is read,
    /// and none is kept after it.
    #[tokio::test]
    async fn the_read_buffer_is_given_back_after_a_large_message() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut socket = Socket::new(Coalesce::new(server), BytesMut::new(), 256);
        let limits = Limits {
            max_message_bytes: 64 * 1024,
            max_fragments: 4,
            inflate: false,
        };
        let large = vec![b'a'; 60 * 1024];
        client.write_all(&masked_text(&large)).await.unwrap();
        let frame = poll_fn(|cx| socket.poll_frame(cx, &limits)).await.unwrap();
        assert_eq!(
            frame,
            Inbound::Text(String::from_utf8(large).unwrap().into())
        );
        assert_eq!(socket.read_buf.capacity(), 0, "an empty buffer is freed");

        // A large message with the start of the next frame behind it: the rest moves to a
        // small buffer.
        let mut two = masked_text(&[b'b'; 50 * 1024]);
        two.extend_from_slice(&masked_text(b"next")[..5]);
        client.write_all(&two).await.unwrap();
        let frame = poll_fn(|cx| socket.poll_frame(cx, &limits)).await.unwrap();
        assert!(matches!(frame, Inbound::Text(text) if text.len() == 50 * 1024));
        assert!(
            socket.read_buf.capacity() <= 4 * 256,
            "kept {} bytes",
            socket.read_buf.capacity()
        );
        client.write_all(&masked_text(b"next")[5..]).await.unwrap();
        let frame = poll_fn(|cx| socket.poll_frame(cx, &limits)).await.unwrap();
        assert_eq!(frame, Inbound::Text("next".into()));
    }

    /// An idle connection, before its first frame and between frames, waits with no read
    /// buffer; frames that arrive whole, in pieces or several at once are read as before.
    #[tokio::test]
    async fn an_idle_connection_holds_no_read_buffer() {
        let (near, mut far) = tokio::io::duplex(64 * 1024);
        let mut socket = Socket::new(Coalesce::new(near), BytesMut::with_capacity(1024), 256);
        let limits = Limits {
            max_message_bytes: 64 * 1024,
            max_fragments: 4,
            inflate: false,
        };
        let idle = |socket: &mut Socket<_>| {
            let pending = socket
                .poll_frame(&mut Context::from_waker(std::task::Waker::noop()), &limits)
                .is_pending();
            assert!(pending);
            assert_eq!(
                socket.read_buf.capacity(),
                0,
                "an idle connection holds no buffer"
            );
        };
        idle(&mut socket);

        far.write_all(&masked_text(b"one")).await.unwrap();
        let frame = poll_fn(|cx| socket.poll_frame(cx, &limits)).await.unwrap();
        assert_eq!(frame, Inbound::Text("one".into()));
        idle(&mut socket);

        // A frame in two pieces: the first piece is kept in a buffer until the rest comes.
        let two = masked_text(&[b'2'; 600]);
        far.write_all(&two[..100]).await.unwrap();
        let pending = poll_fn(|cx| Poll::Ready(socket.poll_frame(cx, &limits).is_pending())).await;
        assert!(pending);
        assert_eq!(socket.read_buf.len(), 100);
        far.write_all(&two[100..]).await.unwrap();
        let frame = poll_fn(|cx| socket.poll_frame(cx, &limits)).await.unwrap();
        assert!(matches!(frame, Inbound::Text(text) if text.len() == 600));

        // Two frames in one write, the first larger than the stack read.
        let mut both = masked_text(&[b'3'; 5000]);
        both.extend_from_slice(&masked_text(b"four"));
        far.write_all(&both).await.unwrap();
        let frame = poll_fn(|cx| socket.poll_frame(cx, &limits)).await.unwrap();
        assert!(matches!(frame, Inbound::Text(text) if text.len() == 5000));
        let frame = poll_fn(|cx| socket.poll_frame(cx, &limits)).await.unwrap();
        assert_eq!(frame, Inbound::Text("four".into()));
        idle(&mut socket);

        drop(far);
        let end = poll_fn(|cx| socket.poll_frame(cx, &limits)).await;
        assert!(matches!(end, Err(End::TransportLost)));
    }

    /// A header that declares 65,530 bytes and sends none of them reserves nothing for
    /// them: the buffer grows with what arrives (it reserved the whole frame on the header,
    /// 64 KiB per connection for 14 bytes sent).
    #[tokio::test]
    async fn a_declared_length_reserves_nothing_until_bytes_arrive() {
        let (near, mut far) = tokio::io::duplex(256 * 1024);
        let mut socket = Socket::new(Coalesce::new(near), BytesMut::new(), 256);
        let limits = Limits {
            max_message_bytes: 64 * 1024,
            max_fragments: 4,
            inflate: false,
        };
        let wire = masked_text(&[b'x'; 65_530]);
        far.write_all(&wire[..14]).await.unwrap();
        let pending = poll_fn(|cx| Poll::Ready(socket.poll_frame(cx, &limits).is_pending())).await;
        assert!(pending, "only a header has arrived");
        assert!(
            socket.read_buf.capacity() <= 1024,
            "{} bytes reserved for a 14-byte header",
            socket.read_buf.capacity()
        );
        far.write_all(&wire[14..30_014]).await.unwrap();
        let pending = poll_fn(|cx| Poll::Ready(socket.poll_frame(cx, &limits).is_pending())).await;
        assert!(pending, "half of the payload has arrived");
        assert!(
            socket.read_buf.capacity() <= 2 * 30_014 + 256,
            "{} bytes reserved for 30,014 received",
            socket.read_buf.capacity()
        );
        far.write_all(&wire[30_014..65_000]).await.unwrap();
        let pending = poll_fn(|cx| Poll::Ready(socket.poll_frame(cx, &limits).is_pending())).await;
        assert!(pending, "most of the payload has arrived");
        assert!(
            socket.read_buf.capacity() <= wire.len() + 256,
            "{} bytes reserved for a {}-byte frame",
            socket.read_buf.capacity(),
            wire.len()
        );
        far.write_all(&wire[65_000..]).await.unwrap();
        let frame = poll_fn(|cx| socket.poll_frame(cx, &limits)).await.unwrap();
        assert!(matches!(frame, Inbound::Text(text) if text.len() == 65_530));
    }

    #[tokio::test]
    async fn only_the_newest_ping_is_owed_a_pong() {
        let (near, _far) = tokio::io::duplex(64);
        let mut socket = Socket::new(Coalesce::new(near), BytesMut::new(), 256);
        for n in 0..1000_u32 {
            socket.owe_pong(&n.to_be_bytes());
        }
        assert_eq!(
            &socket.take_pong().unwrap()[..],
            &[0x8A, 4, 0, 0, 0x03, 0xe7]
        );
        assert!(!socket.owes_pong());
    }
}
