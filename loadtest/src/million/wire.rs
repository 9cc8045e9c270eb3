//! The client side of a WebSocket, as small as a socket held for minutes can be: a hand-written
//! upgrade (so no byte the server sends after its `101` is left in another library's buffer,
//! which would make a message look lost), frames parsed from a buffer shared by every socket
//! of the process, and masked frames written with a zero key.
//!
//! A socket keeps only the bytes of a frame that has not fully arrived (usually none): with
//! 19,000 sockets per process a 4 KiB buffer each, as `lean` keeps, would be 76 MiB of the
//! machine memory the run measures per socket.

use std::{cell::RefCell, io, net::SocketAddr};

use tokio::{io::AsyncWriteExt as _, net::TcpStream};

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;

/// Bytes read at once into the shared buffer.
const READ_CHUNK: usize = 16 * 1024;

/// How an upgrade ended.
#[derive(Debug)]
pub enum Upgrade {
    /// `101`: the socket speaks WebSocket; the bytes that followed the response head.
    Open(Vec<u8>),
    /// Any other status (`503` when the node is draining or full).
    Refused(u16),
}

/// Sends the upgrade request and reads the response head.
///
/// # Errors
/// The socket failed, or the answer was not HTTP.
pub async fn upgrade(stream: &mut TcpStream, server: SocketAddr) -> anyhow::Result<Upgrade> {
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(256);
    loop {
        stream.readable().await?;
        let mut chunk = [0_u8; 1024];
        match stream.try_read(&mut chunk) {
            Ok(0) => anyhow::bail!("the server closed the connection during the upgrade"),
            Ok(read) => head.extend_from_slice(&chunk[..read]),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err.into()),
        }
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(used) = response.parse(&head)? {
            let status = response.code.unwrap_or(0);
            if status != 101 {
                return Ok(Upgrade::Refused(status));
            }
            return Ok(Upgrade::Open(head.split_off(used)));
        }
        if head.len() > 16 * 1024 {
            anyhow::bail!("an upgrade response head over 16 KiB");
        }
    }
}

/// What the server sent, frame by frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A text frame's payload.
    Text(&'a [u8]),
    /// A close frame's code (1005 when it carried none).
    Close(u16),
}

/// One complete frame at the start of `buf`: FIN and opcode, where the payload starts, its
/// length; `None` while it has not fully arrived.
fn frame(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let (first, header, len) = crate::lean::header(buf)?;
    (buf.len() >= header + len).then_some((first, header, len))
}

/// Hands every complete frame of `buf` to `on_event`, answering pings into `replies`;
/// returns how many bytes it used. A close frame ends the parse (what follows it is never
/// read).
pub fn parse(buf: &[u8], replies: &mut Vec<u8>, on_event: &mut impl FnMut(Event<'_>)) -> usize {
    let mut start = 0;
    while let Some((first, header, len)) = frame(&buf[start..]) {
        let payload = &buf[start + header..start + header + len];
        start += header + len;
        match first & 0x0f {
            // The server never fragments its frames; a continuation is read as text.
            OP_TEXT | OP_CONTINUATION => on_event(Event::Text(payload)),
            OP_PING => masked(0x8A, payload, replies),
            OP_CLOSE => {
                let code = payload
                    .get(..2)
                    .map_or(1005, |code| u16::from_be_bytes([code[0], code[1]]));
                on_event(Event::Close(code));
                return buf.len();
            }
            _ => {}
        }
    }
    start
}

/// Appends a masked frame (FIN, `first`'s opcode, a zero masking key) with `payload` to `out`.
fn masked(first: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(first);
    match payload.len() {
        len @ 0..=125 => out.push(0x80 | len as u8),
        len @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    // A zero key leaves the payload as it is.
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
}

/// A masked text frame.
pub fn text(payload: &str, out: &mut Vec<u8>) {
    masked(0x81, payload.as_bytes(), out);
}

/// A masked close frame with `code`, the answer to the server's close.
pub fn close(code: u16, out: &mut Vec<u8>) {
    masked(0x88, &code.to_be_bytes(), out);
}

/// How one read went.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// Frames (or part of one) were read.
    More,
    /// The connection ended without a close frame.
    Eof,
}

/// Reads once from `stream` into `scratch` (shared by the process's sockets), after the
/// partial frame `left` from the last read, hands the complete frames to `on_event` and
/// keeps what is left of an incomplete one in `left`; ping answers go to `replies`.
///
/// # Cancel safety
/// Cancel safe: bytes are only taken from the socket after readiness, without awaiting.
pub async fn read(
    stream: &TcpStream,
    scratch: &RefCell<Vec<u8>>,
    left: &mut Vec<u8>,
    replies: &mut Vec<u8>,
    on_event: &mut impl FnMut(Event<'_>),
) -> io::Result<Read> {
    loop {
        stream.readable().await?;
        // Held only between awaits: the process runs one thread.
        let mut buf = scratch.borrow_mut();
        let kept = left.len();
        if buf.len() < kept + READ_CHUNK {
            buf.resize(kept + READ_CHUNK, 0);
        }
        buf[..kept].copy_from_slice(left);
        match stream.try_read(&mut buf[kept..]) {
            Ok(0) => return Ok(Read::Eof),
            Ok(read) => {
                let filled = kept + read;
                let used = parse(&buf[..filled], replies, on_event);
                left.clear();
                left.extend_from_slice(&buf[used..filled]);
                if left.is_empty() && left.capacity() > 1024 {
                    *left = Vec::new();
                }
                return Ok(Read::More);
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(buf: &[u8]) -> (usize, Vec<String>, Vec<u8>) {
        let mut seen = Vec::new();
        let mut replies = Vec::new();
        let used = parse(buf, &mut replies, &mut |event| {
            seen.push(match event {
                Event::Text(text) => String::from_utf8_lossy(text).into_owned(),
                Event::Close(code) => format!("close {code}"),
            });
        });
        (used, seen, replies)
    }

    #[test]
    fn frames_are_read_whole_and_partial_ones_kept() {
        let mut buf = vec![0x81, 2, b'h', b'i', 0x81, 126, 0, 200];
        buf.extend(std::iter::repeat_n(b'x', 100));
        let (used, seen, _) = collect(&buf);
        assert_eq!(used, 4, "the second frame has 100 of its 200 bytes");
        assert_eq!(seen, ["hi"]);
        buf.extend(std::iter::repeat_n(b'x', 100));
        let (used, seen, _) = collect(&buf);
        assert_eq!(used, buf.len());
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].len(), 200);
    }

    #[test]
    fn pings_are_answered_and_a_close_ends_the_parse() {
        let buf = [0x89, 1, b'p', 0x88, 2, 0x03, 0xf4, 0x81, 1, b'z'];
        let (used, seen, replies) = collect(&buf);
        assert_eq!(used, buf.len());
        assert_eq!(seen, ["close 1012"]);
        assert_eq!(replies, [0x8A, 0x81, 0, 0, 0, 0, b'p']);
    }

    #[test]
    fn client_frames_are_masked_with_each_length_form() {
        let mut out = Vec::new();
        text("hi", &mut out);
        assert_eq!(out, [0x81, 0x82, 0, 0, 0, 0, b'h', b'i']);
        out.clear();
        text(&"y".repeat(300), &mut out);
        assert_eq!(&out[..4], [0x81, 0x80 | 126, 1, 44]);
        assert_eq!(out.len(), 4 + 4 + 300);
        out.clear();
        close(1012, &mut out);
        assert_eq!(out, [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xf4]);
    }
}
