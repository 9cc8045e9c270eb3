use bytes::{BufMut as _, BytesMut};
use proptest::prelude::*;

use super::*;

const LIMITS: Limits = Limits {
    max_message_bytes: 1024,
    max_fragments: 4,
    inflate: false,
};

/// A client frame: masked with `mask`, header byte `first` (FIN, RSV, opcode).
fn client_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut wire = BytesMut::new();
    wire.put_u8(first);
    match payload.len() {
        len @ 0..=125 => wire.put_u8(0x80 | u8::try_from(len).unwrap()),
        len @ 126..=0xffff => {
            wire.put_u8(0x80 | 126);
            wire.put_u16(u16::try_from(len).unwrap());
        }
        len => {
            wire.put_u8(0x80 | 127);
            wire.put_u64(len as u64);
        }
    }
    wire.put_slice(&mask);
    let mut masked = payload.to_vec();
    unmask(&mut masked, mask);
    wire.put_slice(&masked);
    wire.to_vec()
}

fn text(payload: &[u8]) -> Vec<u8> {
    client_frame(0x81, payload, [1, 2, 3, 4])
}

/// Decodes every frame in `bytes`, or the first error.
fn decode_all(bytes: &[u8], limits: &Limits) -> Result<Vec<Inbound>, WsError> {
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    while let Decoded::Frame(frame) = decoder.decode(&mut buf, limits)? {
        frames.push(frame);
    }
    Ok(frames)
}

#[test]
fn text_frames_of_every_length_form_decode() {
    for len in [0, 1, 125, 126, 1000] {
        let payload = "é".repeat(len / 2) + &"x".repeat(len % 2);
        let limits = Limits {
            max_message_bytes: 1 << 20,
            max_fragments: 4,
            inflate: false,
        };
        let frames = decode_all(&text(payload.as_bytes()), &limits).unwrap();
        assert_eq!(frames, [Inbound::Text(Utf8Bytes::from(payload))]);
    }
    let big = "y".repeat(70_000);
    let limits = Limits {
        max_message_bytes: 1 << 20,
        max_fragments: 4,
        inflate: false,
    };
    assert_eq!(
        decode_all(&text(big.as_bytes()), &limits).unwrap(),
        [Inbound::Text(Utf8Bytes::from(big))]
    );
}

#[test]
fn an_incomplete_frame_says_how_much_is_missing() {
    let wire = text(b"hello");
    let mut decoder = Decoder::new();
    for cut in 0..wire.len() {
        let mut buf = BytesMut::from(&wire[..cut]);
        match decoder.decode(&mut buf, &LIMITS).unwrap() {
            Decoded::Incomplete(needed) => {
                assert!(needed >= 1 && cut + needed <= wire.len(), "cut {cut}");
            }
            Decoded::Frame(frame) => panic!("a frame from {cut} bytes: {frame:?}"),
        }
        assert_eq!(buf.len(), cut, "nothing is consumed");
    }
}

#[test]
fn framing_errors_are_protocol_errors() {
    let unmasked = [0x81, 0x01, b'a'];
    assert!(matches!(
        decode_all(&unmasked, &LIMITS),
        Err(WsError::Protocol(_))
    ));
    for first in [0xC1, 0xA1, 0x91, 0x83, 0x8B, 0x80, 0x08, 0x09, 0x0A] {
        assert!(
            matches!(
                decode_all(&client_frame(first, b"", [0; 4]), &LIMITS),
                Err(WsError::Protocol(_))
            ),
            "first byte {first:#x}"
        );
    }
    let long_ping = client_frame(0x89, &[0; 126], [0; 4]);
    assert!(matches!(
        decode_all(&long_ping, &LIMITS),
        Err(WsError::Protocol(_))
    ));
    let mut top_bit = vec![0x81, 0xff];
    top_bit.extend_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]);
    assert!(matches!(
        decode_all(&top_bit, &LIMITS),
        Err(WsError::Protocol(_))
    ));
}

#[test]
fn a_message_too_big_is_refused_on_its_header_alone() {
    let wire = text(&[b'a'; 1025]);
    let mut buf = BytesMut::from(&wire[..8]);
    assert_eq!(
        Decoder::new().decode(&mut buf, &LIMITS),
        Err(WsError::TooBig)
    );
    // Fragments count together.
    let mut wire = client_frame(0x01, &[b'a'; 600], [9; 4]);
    wire.extend(client_frame(0x80, &[b'a'; 600], [9; 4]));
    assert_eq!(decode_all(&wire, &LIMITS), Err(WsError::TooBig));
}

#[test]
fn fragments_are_assembled_and_counted() {
    let mut wire = client_frame(0x01, b"ab", [5; 4]);
    wire.extend(client_frame(0x89, b"p", [6; 4]));
    wire.extend(client_frame(0x00, b"", [7; 4]));
    wire.extend(client_frame(0x80, b"cd", [8; 4]));
    assert_eq!(
        decode_all(&wire, &LIMITS).unwrap(),
        [
            Inbound::Fragment,
            Inbound::Ping(Bytes::from_static(b"p")),
            Inbound::Fragment,
            Inbound::Text(Utf8Bytes::from_static("abcd")),
        ]
    );
    let mut too_many = client_frame(0x02, b"", [0; 4]);
    for _ in 0..4 {
        too_many.extend(client_frame(0x00, b"", [0; 4]));
    }
    assert_eq!(
        decode_all(&too_many, &LIMITS),
        Err(WsError::TooManyFragments)
    );
    let mut nested = client_frame(0x01, b"a", [0; 4]);
    nested.extend(text(b"b"));
    assert!(matches!(
        decode_all(&nested, &LIMITS),
        Err(WsError::Protocol(_))
    ));
    assert!(matches!(
        decode_all(&client_frame(0x80, b"a", [0; 4]), &LIMITS),
        Err(WsError::Protocol(_))
    ));
}

#[test]
fn utf8_is_checked_per_fragment_and_may_split_a_code_point() {
    let euro = "€".as_bytes();
    let mut split = client_frame(0x01, &euro[..1], [1; 4]);
    split.extend(client_frame(0x80, &euro[1..], [2; 4]));
    assert_eq!(
        decode_all(&split, &LIMITS).unwrap(),
        [
            Inbound::Fragment,
            Inbound::Text(Utf8Bytes::from_static("€"))
        ]
    );
    // Invalid in the first fragment: refused before the message completes.
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::from(&client_frame(0x01, &[0xff], [1; 4])[..]);
    assert_eq!(decoder.decode(&mut buf, &LIMITS), Err(WsError::BadUtf8));
    // A code point still incomplete at the end.
    let mut truncated = client_frame(0x01, &euro[..1], [1; 4]);
    truncated.extend(client_frame(0x80, &euro[1..2], [2; 4]));
    assert_eq!(decode_all(&truncated, &LIMITS), Err(WsError::BadUtf8));
    assert_eq!(decode_all(&text(&[0xc0]), &LIMITS), Err(WsError::BadUtf8));
}

#[test]
fn close_codes_are_checked() {
    let close = |payload: &[u8]| decode_all(&client_frame(0x88, payload, [3; 4]), &LIMITS);
    assert_eq!(close(b"").unwrap(), [Inbound::Close(None)]);
    for code in [1000_u16, 1001, 1003, 1007, 1011, 3000, 4999] {
        assert_eq!(
            close(&code.to_be_bytes()).unwrap(),
            [Inbound::Close(Some(code))]
        );
    }
    for code in [0_u16, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000] {
        assert!(
            matches!(close(&code.to_be_bytes()), Err(WsError::Protocol(_))),
            "{code}"
        );
    }
    assert!(matches!(close(b"x"), Err(WsError::Protocol(_))));
    assert_eq!(close(&[0x03, 0xe8, 0xff]), Err(WsError::BadUtf8));
}

#[test]
fn server_frames_have_minimal_headers() {
    assert_eq!(&pong_frame(b"ab")[..], &[0x8A, 2, b'a', b'b']);
    let close = close_frame(1000, "bye");
    assert_eq!(&close[..], &[0x88, 5, 0x03, 0xe8, b'b', b'y', b'e']);
    assert_eq!(close_frame(1000, &"é".repeat(100)).len(), 2 + 2 + 122);
    assert_eq!(&message_frame(false, &[0; 200])[..4], &[0x82, 126, 0, 200]);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_all(&bytes, &LIMITS);
    }

    #[test]
    fn frames_decode_the_same_however_the_bytes_arrive(
        payloads in proptest::collection::vec(proptest::collection::vec(0x20_u8..0x7f, 0..300), 1..6),
        cuts in proptest::collection::vec(1_usize..64, 1..40),
    ) {
        let limits = Limits { max_message_bytes: 4096, max_fragments: 8 , inflate: false};
        let mut wire = Vec::new();
        for (n, payload) in payloads.iter().enumerate() {
            let mask = [n as u8, 7, 11, 13];
            wire.extend(client_frame(0x81, payload, mask));
            wire.extend(client_frame(0x89, &payload[..payload.len().min(10)], mask));
        }
        let whole = decode_all(&wire, &limits).unwrap();
        let mut decoder = Decoder::new();
        let mut buf = BytesMut::new();
        let mut pieces = Vec::new();
        let mut rest = &wire[..];
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at((*cut).min(rest.len()));
            rest = later;
            buf.extend_from_slice(now);
            while let Decoded::Frame(frame) = decoder.decode(&mut buf, &limits).unwrap() {
                pieces.push(frame);
            }
        }
        prop_assert_eq!(whole.len(), payloads.len() * 2);
        prop_assert_eq!(pieces, whole);
    }
}

/// Independent of this module's own masking: the RFC's example (section 5.7) and a frame
/// Python's `websockets` sent.
#[test]
fn frames_masked_by_other_clients_decode() {
    let hello = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    assert_eq!(
        decode_all(&hello, &LIMITS).unwrap(),
        [Inbound::Text(Utf8Bytes::from_static("Hello"))]
    );
    let hex = "8196e522e41f9e0090669547c625c7528d718200c83d8c46c625d45f";
    let python: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    assert_eq!(
        decode_all(&python, &LIMITS).unwrap(),
        [Inbound::Text(Utf8Bytes::from_static(
            r#"{"type":"ping","id":1}"#
        ))]
    );
}
