//! The protocol's JSON frame decoder: any text a client sends must decode or give an error,
//! never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if let Ok(text) = std::str::from_utf8(input) {
        let _ = switchboard::protocol::decode_client_frame(text);
    }
});
