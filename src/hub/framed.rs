//! A server-to-client text message framed for the wire once.

use bytes::{BufMut as _, Bytes, BytesMut};

/// One WebSocket text frame as it goes on the wire: header and JSON in one shared `Bytes`.
/// Built once per message; every subscriber's queue, history and finally every socket's
/// `writev` take the same allocation, so a delivery copies nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct FramedText {
    wire: Bytes,
    /// Length of the WebSocket header in front of the JSON (2, 4 or 10 bytes).
    header: u8,
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
        let header = match len {
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
        };
        wire.put_slice(json.as_bytes());
        Self {
            wire: wire.freeze(),
            header,
        }
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

    /// The JSON text as shared bytes (no copy).
    #[must_use]
    pub fn json_bytes(&self) -> Bytes {
        self.wire.slice(usize::from(self.header)..)
    }

    /// The JSON text.
    #[must_use]
    pub fn json(&self) -> &str {
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
