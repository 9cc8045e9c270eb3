//! WebSocket framing (RFC 6455 section 5) of what clients send, decoded from a byte buffer
//! without IO. The few frames the server builds itself (pong, close, echo replies) are
//! written by `super::frames`, re-exported here.
//!
//! The session reads the socket into a `BytesMut` and calls [`Decoder::decode`] until it
//! says how many more bytes it needs. Every frame comes out as one [`Inbound`], control and
//! continuation frames included, so that the session can charge each one to the client's
//! budget: nothing the client sends is handled out of its sight. Limits are checked on the
//! frame header, before the payload is buffered: a frame that would make a message larger
//! than allowed is refused when its first bytes arrive. A message fragmented over several
//! frames is assembled here, with its UTF-8 checked as each fragment arrives (fail fast), and
//! the number of fragments bounded.
//!
//! Never panics on client input (fuzzed by `fuzz/fuzz_targets/ws_decoder.rs`).

use bytes::{Buf as _, Bytes, BytesMut};
/// Text known to be UTF-8, sharing the frame's buffer: checked once here, read as `&str`
/// without checking again.
pub use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Longest frame header: 2 bytes, 8 of extended length, 4 of mask.
pub const MAX_HEADER_BYTES: usize = 14;
pub use super::frames::{
    MAX_CONTROL_PAYLOAD, close_frame, message_frame, pong_frame, put_server_length, server_frame,
};
use super::frames::{OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT};

/// What a decoder accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message, in payload bytes summed over its fragments; for a compressed
    /// message, what it inflates to (and, with a little slack, what it may take on the
    /// wire).
    pub max_message_bytes: usize,
    /// Most frames one message may be split into.
    pub max_fragments: u32,
    /// The connection negotiated permessage-deflate: a message whose first frame has RSV1
    /// set is compressed (`super::deflate`). Otherwise RSV1 is a protocol error.
    pub inflate: bool,
}

impl Limits {
    /// The most payload bytes a message may take on the wire: a compressed one may be
    /// larger than what it inflates to (fixed Huffman codes, which zlib's fastest level
    /// uses alone, spend 9 bits on each byte from 144 up: an eighth more).
    fn max_wire_bytes(&self, compressed: bool) -> usize {
        if compressed {
            self.max_message_bytes
                .saturating_add(self.max_message_bytes / 8 + 64)
        } else {
            self.max_message_bytes
        }
    }
}

/// One frame from the client, as the session sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// The last frame of a text message: the whole message, valid UTF-8.
    Text(Utf8Bytes),
    /// The last frame of a binary message: the whole message.
    Binary(Bytes),
    /// A frame of a fragmented message that is not complete yet.
    Fragment,
    /// A ping, with its payload (at most 125 bytes) to echo in the pong.
    Ping(Bytes),
    /// A pong.
    Pong,
    /// A close frame: the code, when it carried one (checked against section 7.4).
    Close(Option<u16>),
}

/// What [`Decoder::decode`] found at the front of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// One frame, taken off the buffer.
    Frame(Inbound),
    /// The next frame is not complete: at least this many more bytes are needed.
    Incomplete(usize),
}

/// Why the client's bytes cannot be a valid WebSocket stream; each ends the connection with
/// the close code its doc names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// 1002: the framing breaks RFC 6455.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// 1007: a text message or close reason is not UTF-8.
    #[error("invalid UTF-8")]
    BadUtf8,
    /// 1009: the message is larger than `Limits::max_message_bytes`.
    #[error("message too big")]
    TooBig,
    /// 1008: the message came in more than `Limits::max_fragments` frames.
    #[error("too many fragments")]
    TooManyFragments,
    /// 1007: a compressed message is not a valid deflate stream.
    #[error("invalid compressed data")]
    BadDeflate,
}

/// A message being assembled from fragments.
#[derive(Debug)]
struct Partial {
    text: bool,
    /// The message is compressed: its UTF-8 is checked once it is inflated.
    compressed: bool,
    data: BytesMut,
    fragments: u32,
    /// Bytes of `data` already known to be valid UTF-8 (text only).
    valid_utf8: usize,
}

/// The decoding state of one connection: only a message being assembled. 8 bytes while no
/// message is fragmented.
#[derive(Debug, Default)]
pub struct Decoder {
    partial: Option<Box<Partial>>,
}

/// A parsed frame header.
struct Header {
    fin: bool,
    /// RSV1: the first frame of a compressed message.
    compressed: bool,
    opcode: u8,
    mask: [u8; 4],
    header_len: usize,
    payload_len: usize,
}

impl Decoder {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a fragmented message is being assembled.
    #[must_use]
    pub fn in_message(&self) -> bool {
        self.partial.is_some()
    }

    /// Bytes held for a message being assembled.
    #[must_use]
    pub fn assembling_bytes(&self) -> usize {
        self.partial
            .as_ref()
            .map_or(0, |partial| partial.data.capacity())
    }

    /// Takes the next frame off the front of `buf`.
    ///
    /// # Errors
    /// [`WsError`] when the stream can no longer be valid; the connection must end.
    pub fn decode(&mut self, buf: &mut BytesMut, limits: &Limits) -> Result<Decoded, WsError> {
        let header = match parse_header(buf, limits.inflate)? {
            Ok(header) => header,
            Err(needed) => return Ok(Decoded::Incomplete(needed)),
        };
        self.check(&header, limits)?;
        let frame_len = header.header_len + header.payload_len;
        if buf.len() < frame_len {
            return Ok(Decoded::Incomplete(frame_len - buf.len()));
        }
        let mut payload = buf.split_to(frame_len);
        payload.advance(header.header_len);
        unmask(&mut payload, header.mask);
        self.frame(&header, payload, limits).map(Decoded::Frame)
    }

    /// Checks a header against the protocol, the decoder's state and the limits, before its
    /// payload is read.
    fn check(&self, header: &Header, limits: &Limits) -> Result<(), WsError> {
        match header.opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if header.compressed {
                    return Err(WsError::Protocol("RSV1 set on a control frame"));
                }
                if !header.fin {
                    return Err(WsError::Protocol("fragmented control frame"));
                }
                if header.payload_len > MAX_CONTROL_PAYLOAD {
                    return Err(WsError::Protocol("control frame longer than 125 bytes"));
                }
            }
            OP_TEXT | OP_BINARY => {
                if self.partial.is_some() {
                    return Err(WsError::Protocol("new message inside a fragmented one"));
                }
                if header.payload_len > limits.max_wire_bytes(header.compressed) {
                    return Err(WsError::TooBig);
                }
            }
            OP_CONTINUATION => {
                let Some(partial) = &self.partial else {
                    return Err(WsError::Protocol("continuation frame without a message"));
                };
                if header.compressed {
                    return Err(WsError::Protocol("RSV1 set on a continuation frame"));
                }
                if partial.fragments >= limits.max_fragments {
                    return Err(WsError::TooManyFragments);
                }
                if partial.data.len().saturating_add(header.payload_len)
                    > limits.max_wire_bytes(partial.compressed)
                {
                    return Err(WsError::TooBig);
                }
            }
            _ => return Err(WsError::Protocol("reserved opcode")),
        }
        Ok(())
    }

    /// Acts on a whole frame whose header passed [`Decoder::check`].
    fn frame(
        &mut self,
        header: &Header,
        payload: BytesMut,
        limits: &Limits,
    ) -> Result<Inbound, WsError> {
        match header.opcode {
            OP_PING => Ok(Inbound::Ping(payload.freeze())),
            OP_PONG => Ok(Inbound::Pong),
            OP_CLOSE => close_code(&payload).map(Inbound::Close),
            OP_TEXT | OP_BINARY => {
                let text = header.opcode == OP_TEXT;
                if header.fin {
                    return complete(text, header.compressed, payload, limits);
                }
                let mut partial = Box::new(Partial {
                    text,
                    compressed: header.compressed,
                    data: payload,
                    fragments: 1,
                    valid_utf8: 0,
                });
                partial.check_utf8(false)?;
                self.partial = Some(partial);
                Ok(Inbound::Fragment)
            }
            _ => {
                let partial = self
                    .partial
                    .as_mut()
                    .expect("check() refuses a continuation without a message");
                partial.fragments += 1;
                partial.data.extend_from_slice(&payload);
                partial.check_utf8(header.fin)?;
                if !header.fin {
                    return Ok(Inbound::Fragment);
                }
                let partial = self.partial.take().expect("matched Some above");
                let Partial {
                    text,
                    compressed,
                    data,
                    ..
                } = *partial;
                complete(text, compressed, data, limits)
            }
        }
    }
}

impl Partial {
    /// Checks the UTF-8 of what arrived since the last check; a code point split over
    /// fragments may stay incomplete until the last one.
    fn check_utf8(&mut self, last: bool) -> Result<(), WsError> {
        if !self.text || self.compressed {
            return Ok(());
        }
        match std::str::from_utf8(&self.data[self.valid_utf8..]) {
            Ok(_) => {
                self.valid_utf8 = self.data.len();
                Ok(())
            }
            Err(err) if err.error_len().is_none() && !last => {
                self.valid_utf8 += err.valid_up_to();
                Ok(())
            }
            Err(_) => Err(WsError::BadUtf8),
        }
    }
}

/// A whole message, inflated when it is compressed (to at most `limits.max_message_bytes`).
/// Text is checked for UTF-8 here, once (a fragmented plain message was also checked
/// fragment by fragment, to fail fast).
fn complete(
    text: bool,
    compressed: bool,
    payload: BytesMut,
    limits: &Limits,
) -> Result<Inbound, WsError> {
    let payload = if compressed {
        super::deflate::inflate(&payload, limits.max_message_bytes).map_err(|err| match err {
            super::deflate::InflateError::TooBig => WsError::TooBig,
            super::deflate::InflateError::Invalid => WsError::BadDeflate,
        })?
    } else {
        payload.freeze()
    };
    if !text {
        return Ok(Inbound::Binary(payload));
    }
    Utf8Bytes::try_from(payload)
        .map(Inbound::Text)
        .map_err(|_| WsError::BadUtf8)
}

/// The header at the front of `buf`: `Ok(Err(needed))` when it is not complete.
/// `inflate`: permessage-deflate was negotiated, so RSV1 may be set (where, `check` says).
fn parse_header(buf: &[u8], inflate: bool) -> Result<Result<Header, usize>, WsError> {
    let [first, second, ..] = *buf else {
        return Ok(Err(2 - buf.len()));
    };
    let reserved = if inflate { 0x30 } else { 0x70 };
    if first & reserved != 0 {
        // No extension uses RSV2 and RSV3; RSV1 only permessage-deflate.
        return Err(WsError::Protocol("reserved bits set"));
    }
    if second & 0x80 == 0 {
        return Err(WsError::Protocol("unmasked client frame"));
    }
    let (length_bytes, short_len) = match second & 0x7f {
        126 => (2, None),
        127 => (8, None),
        len => (0, Some(usize::from(len))),
    };
    let header_len = 2 + length_bytes + 4;
    if buf.len() < header_len {
        return Ok(Err(header_len - buf.len()));
    }
    let payload_len = match short_len {
        Some(len) => len,
        None if length_bytes == 2 => usize::from(u16::from_be_bytes([buf[2], buf[3]])),
        None => {
            let mut bytes = [0_u8; 8];
            bytes.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(bytes);
            if len >> 63 != 0 {
                return Err(WsError::Protocol("64-bit length with the top bit set"));
            }
            // Beyond usize on 32-bit targets: larger than any limit anyway.
            usize::try_from(len).unwrap_or(usize::MAX)
        }
    };
    let mut mask = [0_u8; 4];
    mask.copy_from_slice(&buf[header_len - 4..header_len]);
    Ok(Ok(Header {
        fin: first & 0x80 != 0,
        compressed: first & 0x40 != 0,
        opcode: first & 0x0f,
        mask,
        header_len,
        payload_len: payload_len.min(usize::MAX - header_len),
    }))
}

/// XORs `payload` with the client's masking key (section 5.3), eight bytes at a time.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(chunk.try_into().expect("chunks of 8")) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (byte, key) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

/// The code of a close frame's payload, checked: empty, or a code a peer may send
/// (section 7.4: 1000-1003, 1007-1014, 3000-4999) and a UTF-8 reason.
fn close_code(payload: &[u8]) -> Result<Option<u16>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::Protocol("close frame with a 1-byte payload")),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return Err(WsError::Protocol("close code a peer may not send"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(WsError::BadUtf8);
            }
            Ok(Some(code))
        }
    }
}

#[cfg(test)]
mod tests;
