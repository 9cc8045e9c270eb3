use flate2::{Decompress, FlushDecompress};

use super::*;

fn offer(value: &str) -> Option<Deflate> {
    negotiate([value.as_bytes()])
}

/// What browsers and the common clients send is accepted, and answered with both
/// `no_context_takeover` parameters.
#[test]
fn browser_offers_are_accepted() {
    // Chromium, and Python's `websockets`.
    let chromium = offer("permessage-deflate; client_max_window_bits").unwrap();
    assert_eq!(chromium.compress_bits(), 15);
    assert_eq!(
        chromium.response(),
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
    // Firefox.
    assert!(offer("permessage-deflate").is_some());
    // Safari's older form first, then the standard one.
    assert!(
        offer("x-webkit-deflate-frame, permessage-deflate; client_max_window_bits=15").is_some()
    );
    assert!(offer("x-webkit-deflate-frame").is_none());
}

#[test]
fn a_server_window_is_kept_and_answered() {
    let small = offer("permessage-deflate; server_max_window_bits=10").unwrap();
    assert_eq!(small.compress_bits(), 10);
    assert!(small.response().ends_with("; server_max_window_bits=10"));
    // zlib's raw deflate cannot use 256 bytes; 9 never reaches further back than 250.
    let tiny = offer("permessage-deflate; server_max_window_bits=8").unwrap();
    assert_eq!(tiny.compress_bits(), 9);
    assert!(tiny.response().ends_with("; server_max_window_bits=8"));
    assert_eq!(
        offer(r#"permessage-deflate; server_max_window_bits="12""#).map(Deflate::compress_bits),
        Some(12)
    );
    assert_eq!(Deflate::from_byte(small.to_byte()), Some(small));
    assert_eq!(Deflate::from_byte(0), None);
    // Asked for 15: accepted by naming it (section 7.1.2.1), as websockets' client requires.
    let fifteen = offer("permessage-deflate; server_max_window_bits=15").unwrap();
    assert_eq!(fifteen.compress_bits(), 15);
    assert!(fifteen.response().ends_with("; server_max_window_bits=15"));
    assert_eq!(Deflate::from_byte(fifteen.to_byte()), Some(fifteen));
    assert!(
        !offer("permessage-deflate")
            .unwrap()
            .response()
            .contains("window_bits")
    );
}

/// Section 7.1: an offer with an unknown parameter, a parameter twice or a value out of
/// range is declined, and the next offer is tried.
#[test]
fn offers_the_server_cannot_take_are_declined() {
    for bad in [
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; client_max_window_bits=99",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
        "permessage-deflate; mux",
        r#"permessage-deflate; server_max_window_bits="10"#,
        "deflate-stream",
    ] {
        assert_eq!(offer(bad), None, "{bad}");
    }
    let second = offer(
        "permessage-deflate; server_max_window_bits=16, permessage-deflate; server_max_window_bits=11",
    );
    assert_eq!(second.map(Deflate::compress_bits), Some(11));
    // Several headers are one list, in order.
    let headers: [&[u8]; 2] = [b"permessage-deflate; foo", b"permessage-deflate"];
    assert!(negotiate(headers).is_some());
}

/// Inflates `body` (a payload without its trailer) with a plain inflater of `window_bits`.
fn reference_inflate(body: &[u8], window_bits: u8) -> Vec<u8> {
    let mut inflater = Decompress::new_with_window_bits(false, window_bits);
    let mut input = body.to_vec();
    input.extend_from_slice(&TRAILER);
    let mut out = Vec::with_capacity(1 << 20);
    inflater
        .decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    assert_eq!(inflater.total_in(), input.len() as u64);
    out
}

fn chat_json(len: usize) -> String {
    let mut json = String::from(
        r#"{"type":"message","channel":"room:lobby","offset":"1:42","data":{"text":""#,
    );
    let words = [
        "hello",
        "assistant",
        "token",
        "stream",
        "reply",
        "the",
        "of",
        "channel",
    ];
    let mut index = 0;
    while json.len() < len {
        json.push_str(words[index % words.len()]);
        json.push(' ');
        index = (index * 7 + 3) % 1009;
    }
    json.push_str(r#""}}"#);
    json
}

/// A compressed frame is a FIN text frame with RSV1, whose payload inflates back with any
/// client's inflater of the window negotiated; and it is smaller.
#[test]
fn frames_compress_and_inflate_back_for_every_window() {
    let json = chat_json(2048);
    for bits in 9..=15 {
        let frame = compress_frame(0x81, json.as_bytes(), bits, 6).unwrap();
        assert_eq!(frame[0], 0x81 | RSV1);
        let (header, len) = match frame[1] {
            126 => (4, usize::from(u16::from_be_bytes([frame[2], frame[3]]))),
            short => (2, usize::from(short)),
        };
        assert_eq!(frame.len(), header + len);
        assert!(
            frame.len() < json.len() / 2,
            "{} of {}",
            frame.len(),
            json.len()
        );
        assert_eq!(reference_inflate(&frame[header..], bits), json.as_bytes());
        // And with Switchboard's own inflater.
        assert_eq!(
            &inflate(&frame[header..], 1 << 20).unwrap()[..],
            json.as_bytes()
        );
    }
}

/// What compresses to no gain goes out plain.
#[test]
fn incompressible_payloads_are_not_compressed() {
    assert_eq!(compress_frame(0x81, b"{\"type\":\"pong\"}", 15, 6), None);
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[3]
        })
        .collect();
    assert_eq!(compress_frame(0x82, &random, 15, 6), None);
}

fn compressed_body(data: &[u8]) -> Vec<u8> {
    let mut compressor = Compress::new_with_window_bits(Compression::new(9), false, 15);
    let mut out = Vec::new();
    deflate_into(&mut compressor, data, &mut out).unwrap();
    out.strip_suffix(&TRAILER).unwrap().to_vec()
}

/// A decompression bomb (16 MiB of zeros in about 16 KiB) is refused at the bound, having
/// produced no more than the bound.
#[test]
fn a_bomb_is_refused_at_the_bound() {
    let bomb = compressed_body(&vec![0_u8; 16 << 20]);
    assert!(bomb.len() < 32 * 1024, "{}", bomb.len());
    assert_eq!(inflate(&bomb, 64 * 1024), Err(InflateError::TooBig));
    // Exactly at the bound is allowed.
    let exact = compressed_body(&[b'a'; 4096]);
    assert_eq!(inflate(&exact, 4096).unwrap().len(), 4096);
    assert_eq!(inflate(&exact, 4095), Err(InflateError::TooBig));
}

#[test]
fn broken_streams_are_invalid() {
    // Block type 3 is reserved.
    assert_eq!(
        inflate(&[0xff, 0xff, 0xff], 1024),
        Err(InflateError::Invalid)
    );
    // A final block, then more bytes.
    let mut compressor = Compress::new_with_window_bits(Compression::new(6), false, 15);
    let mut finished = Vec::with_capacity(1024);
    compressor
        .compress_vec(b"hello", &mut finished, FlushCompress::Finish)
        .unwrap();
    assert_eq!(&inflate(&finished, 1024).unwrap()[..], b"hello");
    finished.extend_from_slice(b"more");
    assert_eq!(inflate(&finished, 1024), Err(InflateError::Invalid));
    // An empty message (section 7.2.3.6: a single empty stored block, trailer removed).
    assert_eq!(inflate(&[0x00], 1024).unwrap().len(), 0);
    assert_eq!(inflate(&[], 1024).unwrap().len(), 0);
}
