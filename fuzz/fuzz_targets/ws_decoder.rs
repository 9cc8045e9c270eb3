//! The WebSocket frame decoder, fed arbitrary bytes in arbitrary pieces: it must never panic,
//! never hand out text that is not UTF-8 or a message over its limit, and always ask for at
//! least one more byte when it has not enough; compressed messages (RSV1) included, which
//! must never inflate past the limit.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard::protocol::ws::{Decoded, Decoder, Inbound, Limits};

const LIMITS: Limits = Limits {
    max_message_bytes: 4096,
    max_fragments: 16,
    // RSV1 frames are inflated: the fuzzer reaches the inflater through them.
    inflate: true,
};

fuzz_target!(|input: &[u8]| {
    let Some((&chunk, bytes)) = input.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::new();
    for piece in bytes.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf, &LIMITS) {
                Ok(Decoded::Frame(Inbound::Text(text))) => {
                    assert!(std::str::from_utf8(text.as_bytes()).is_ok());
                    assert!(text.len() <= LIMITS.max_message_bytes);
                }
                Ok(Decoded::Frame(Inbound::Binary(data))) => {
                    assert!(data.len() <= LIMITS.max_message_bytes);
                }
                Ok(Decoded::Frame(Inbound::Ping(payload))) => assert!(payload.len() <= 125),
                Ok(Decoded::Frame(_)) => {}
                Ok(Decoded::Incomplete(needed)) => {
                    assert!(needed >= 1);
                    break;
                }
                Err(_) => return,
            }
        }
    }
});
