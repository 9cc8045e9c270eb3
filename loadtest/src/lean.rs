//! A lean WebSocket reader for subscribers: frames are parsed straight from the socket
//! into one reusable buffer, with no UTF-8 validation and no allocation per message.
//!
//! With thousands of subscribers in one process, the load generator's own cost per
//! delivery bounds every fan-out figure; tokio-tungstenite clients validated and copied each
//! frame and took most of the two cores. This reader understands what a server sends a
//! client (RFC 6455 section 5: unmasked frames, control frames of at most 125 bytes) and
//! answers pings with masked pongs, as a client must. A reader made with
//! [`FrameReader::inflating`] inflates the head of each compressed message (permessage-deflate,
//! negotiated with no context takeover: each message on its own) and hands that on: the
//! envelope and the stamp the fan-out reads are in the first bytes, and a device inflates its
//! messages on a CPU of its own where here thousands of subscribers share two cores (whole
//! 2 KiB messages at 500,000 a second took the generators more CPU than the server).

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;

/// What one read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Frames were handled (or a partial one buffered); read again.
    More,
    /// The server sent a close frame with this code (1005 when it carried none).
    Closed(u16),
    /// The connection ended without a close frame.
    Eof,
}

/// Bytes read but not yet parsed, kept between reads.
pub struct FrameReader {
    buf: Vec<u8>,
    filled: usize,
    /// For compressed messages: the inflater (reset per message) and its output.
    inflater: Option<Box<(flate2::Decompress, Vec<u8>)>>,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self {
            buf: vec![0; 4096],
            filled: 0,
            inflater: None,
        }
    }
}

impl FrameReader {
    /// A reader for a connection that negotiated permessage-deflate.
    pub fn inflating() -> Self {
        Self {
            inflater: Some(Box::new((flate2::Decompress::new(false), Vec::new()))),
            ..Self::default()
        }
    }
}

/// How much of each compressed message is inflated: the envelope and `data`'s first fields.
const INFLATED_HEAD: usize = 512;

/// The first [`INFLATED_HEAD`] bytes of `body` (a compressed message without its trailer,
/// or all of it if shorter) inflated into `out`.
fn inflate_head(
    inflater: &mut flate2::Decompress,
    body: &[u8],
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    inflater.reset(false);
    out.clear();
    out.reserve_exact(INFLATED_HEAD);
    for input in [body, &[0, 0, 0xff, 0xff][..]] {
        if out.len() == out.capacity() {
            break;
        }
        inflater
            .decompress_vec(input, out, flate2::FlushDecompress::Sync)
            .map_err(std::io::Error::other)?;
    }
    Ok(())
}

/// The header of the frame at the start of a buffer, once it has arrived: opcode, where the
/// payload starts, its length (the payload may not have arrived yet).
#[cfg(test)]
fn parse(buf: &[u8]) -> Option<(u8, usize, usize)> {
    header(buf).map(|(first, header, len)| (first & 0x0f, header, len))
}

/// As [`parse`], with the whole first byte (FIN, RSV and opcode).
pub(crate) fn header(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let (&first, rest) = buf.split_first()?;
    let (&second, _) = rest.split_first()?;
    let masked = second & 0x80 != 0;
    let (len, mut header) = match second & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (
            usize::try_from(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)).ok()?,
            10,
        ),
        short => (usize::from(short), 2),
    };
    if masked {
        header += 4;
    }
    Some((first, header, len))
}

impl FrameReader {
    /// Reads once from `stream` and hands every complete text (or continuation) payload to
    /// `on_text`, and says whether the connection goes on.
    ///
    /// # Cancel safety
    /// Cancel safe while waiting for bytes (the common case); cancelled while answering a
    /// ping, the pong may be cut short.
    pub async fn read(
        &mut self,
        stream: &mut TcpStream,
        on_text: &mut impl FnMut(&[u8]),
    ) -> std::io::Result<Read> {
        let n = stream.read(&mut self.buf[self.filled..]).await?;
        if n == 0 {
            return Ok(Read::Eof);
        }
        self.filled += n;
        let mut start = 0;
        while let Some((first, header, len)) = header(&self.buf[start..self.filled]) {
            let opcode = first & 0x0f;
            let end = start + header + len;
            if end > self.filled {
                if end - start > self.buf.len() {
                    self.buf.resize(end - start, 0);
                }
                break;
            }
            let payload = &self.buf[start + header..end];
            match opcode {
                OP_TEXT if first & 0x40 != 0 => {
                    let Some(inflater) = self.inflater.as_deref_mut() else {
                        return Err(std::io::Error::other("a compressed frame, not negotiated"));
                    };
                    let (inflater, out) = (&mut inflater.0, &mut inflater.1);
                    inflate_head(inflater, payload, out)?;
                    on_text(out);
                }
                OP_TEXT | OP_CONTINUATION => on_text(payload),
                OP_PING => {
                    // Masked with a zero key, so the payload is sent as is.
                    let mut pong = vec![0x8A, 0x80 | payload.len() as u8, 0, 0, 0, 0];
                    pong.extend_from_slice(payload);
                    stream.write_all(&pong).await?;
                }
                OP_CLOSE => {
                    let code = payload
                        .get(..2)
                        .map_or(1005, |code| u16::from_be_bytes([code[0], code[1]]));
                    return Ok(Read::Closed(code));
                }
                _ => {}
            }
            start = end;
        }
        self.buf.copy_within(start..self.filled, 0);
        self.filled -= start;
        Ok(Read::More)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_length_form() {
        assert_eq!(parse(&[0x81, 5]), Some((OP_TEXT, 2, 5)));
        assert_eq!(parse(&[0x81, 126, 1, 0]), Some((OP_TEXT, 4, 256)));
        assert_eq!(
            parse(&[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
            Some((OP_TEXT, 10, 65_536))
        );
        assert_eq!(parse(&[0x89, 0x80]), Some((OP_PING, 6, 0)));
        assert_eq!(parse(&[0x81]), None);
        assert_eq!(parse(&[0x81, 126, 1]), None);
    }
}
