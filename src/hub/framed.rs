//! A server-to-client text message framed for the wire once.

use bytes::{BufMut as _, Bytes, BytesMut};

use crate::protocol::{deflate, ws};

/// One WebSocket text frame as it goes on the wire: header and JSON in one shared `Bytes`.
/// Built once per message; every subscriber's queue, history and finally every socket's
/// `writev` take the same allocation, so a delivery copies nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct FramedText {
    wire: Bytes,
    /// Length of the WebSocket header in front of the JSON (2, 4 or 10 bytes).
    header: u8,
    /// The payload is the JSON compressed (permessage-deflate, RSV1 set): it goes only to
    /// connections that negotiated it, and has no JSON to read.
    deflated: bool,
}

impl FramedText {
    /// Frames `json` as one unfragmented, unmasked text frame (RFC 6455 section 5.2: a server
    /// never masks).
    #[must_use]
    pub fn text(json: &str) -> Self {
        let len = json.len();
        let mut wire = BytesMut::with_capacity(len + 10);
        // FIN and opcode 1 (text).
        wire.put_u8(0x81);
        let header = ws::put_server_length(&mut wire, len);
        wire.put_slice(json.as_bytes());
        Self {
            wire: wire.freeze(),
            header,
            deflated: false,
        }
    }

    /// This message compressed for connections that negotiated permessage-deflate with a
    /// window of `window_bits`, at `level`; `None` when that would not make it smaller.
    /// Each subscriber that negotiated the same window gets the same frame.
    #[must_use]
    pub fn deflated(&self, window_bits: u8, level: u32) -> Option<Self> {
        debug_assert!(!self.deflated, "compressing a compressed frame");
        let wire = deflate::compress_frame(0x81, self.json().as_bytes(), window_bits, level)?;
        let header = match wire[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        Some(Self {
            wire,
            header,
            deflated: true,
        })
    }

    /// Whether this is a compressed frame ([`FramedText::deflated`]).
    #[must_use]
    pub fn is_deflated(&self) -> bool {
        self.deflated
    }

    /// Bytes of JSON (or of compressed JSON) after the header.
    #[must_use]
    pub fn payload_len(&self) -> usize {
        self.wire.len() - usize::from(self.header)
    }

    /// The bytes to write: header and JSON.
    #[must_use]
    pub fn wire(&self) -> &Bytes {
        &self.wire
    }

    /// The bytes to write, taking this handle's share of them.
    #[must_use]
    pub fn into_wire(self) -> Bytes {
        self.wire
    }

    /// Bytes on the wire; what outbound queues count.
    #[must_use]
    pub fn len(&self) -> usize {
        self.wire.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.wire.is_empty()
    }

    /// The JSON text as shared bytes (no copy). Not of a deflated frame (it panics).
    #[must_use]
    pub fn json_bytes(&self) -> Bytes {
        assert!(!self.deflated, "a deflated frame has no JSON to read");
        self.wire.slice(usize::from(self.header)..)
    }

    /// The JSON text. Not of a deflated frame (it panics): those only go to sockets.
    #[must_use]
    pub fn json(&self) -> &str {
        assert!(!self.deflated, "a deflated frame has no JSON to read");
        std::str::from_utf8(&self.wire[usize::from(self.header)..])
            .expect("a FramedText is built from a &str")
    }
}

impl From<String> for FramedText {
    fn from(json: String) -> Self {
        Self::text(&json)
    }
}

impl std::fmt::Debug for FramedText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.deflated {
            return f
                .debug_tuple("FramedText")
                .field(&format_args!("<{} bytes deflated>", self.payload_len()))
                .finish();
        }
        f.debug_tuple("FramedText").field(&self.json()).finish()
    }
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::protocol::frame::{FrameHeader, coding::OpCode};

    use super::*;

    /// tungstenite's own parser agrees with the header for every length form.
    #[test]
    fn headers_parse_as_text_frames_of_the_right_length() {
        for len in [0, 1, 125, 126, 300, 0xffff, 0x1_0000] {
            let json = "x".repeat(len);
            let frame = FramedText::text(&json);
            let mut cursor = std::io::Cursor::new(frame.wire().as_ref());
            let (header, payload_len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(header.is_final);
            assert!(header.mask.is_none());
            assert_eq!(
                header.opcode,
                OpCode::Data(tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text)
            );
            assert_eq!(payload_len, len as u64);
            assert_eq!(frame.json(), json);
            assert_eq!(
                frame.len(),
                len + usize::try_from(cursor.position()).unwrap()
            );
        }
    }
}
