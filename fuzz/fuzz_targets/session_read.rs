//! A session's whole read path fed raw bytes as a client would send them: the upgrade
//! request, then frames, arriving a few bytes per read (the first input byte says how many).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&chunk, bytes)) = input.split_first() else {
        return;
    };
    switchboard::session::fuzz_read_path(bytes, usize::from(chunk % 64).max(1));
});
