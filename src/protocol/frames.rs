//! The WebSocket frames the server writes (RFC 6455 section 5.2): unmasked, whole, the
//! header in its shortest form. Used for the server's own control frames and echo replies
//! (`ws`), for every message frame the hub encodes (`hub::framed`) and for compressed ones
//! (`deflate`).

use bytes::{BufMut as _, Bytes, BytesMut};

/// Largest payload of a control frame (section 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

pub(super) const OP_CONTINUATION: u8 = 0x0;
pub(super) const OP_TEXT: u8 = 0x1;
pub(super) const OP_BINARY: u8 = 0x2;
pub(super) const OP_CLOSE: u8 = 0x8;
pub(super) const OP_PING: u8 = 0x9;
pub(super) const OP_PONG: u8 = 0xA;

/// Writes the second byte and extended length of an unmasked server frame whose payload is
/// `len` bytes, in the shortest form (section 5.2); returns the header's length with the
/// first byte (2, 4 or 10).
pub fn put_server_length(wire: &mut impl bytes::BufMut, len: usize) -> u8 {
    match len {
        0..=125 => {
            wire.put_u8(u8::try_from(len).expect("matched 0..=125"));
            2
        }
        126..=0xffff => {
            wire.put_u8(126);
            wire.put_u16(u16::try_from(len).expect("matched up to 0xffff"));
            4
        }
        _ => {
            wire.put_u8(127);
            wire.put_u64(len as u64);
            10
        }
    }
}

/// An unmasked server frame: FIN, `opcode` and `payload`.
#[must_use]
pub fn server_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut wire = BytesMut::with_capacity(payload.len() + 10);
    wire.put_u8(0x80 | opcode);
    put_server_length(&mut wire, payload.len());
    wire.put_slice(payload);
    wire.freeze()
}

/// The pong answering a ping with `payload`.
#[must_use]
pub fn pong_frame(payload: &[u8]) -> Bytes {
    server_frame(OP_PONG, payload)
}

/// A close frame with `code` and `reason` (cut to the 123 bytes a close frame allows).
#[must_use]
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    server_frame(OP_CLOSE, &payload)
}

/// A whole text or binary message, as the echo endpoint sends it back.
#[must_use]
pub fn message_frame(text: bool, payload: &[u8]) -> Bytes {
    server_frame(if text { OP_TEXT } else { OP_BINARY }, payload)
}
