//! `Switchboard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`: what a
//! receiver checks to know a hook request or a webhook comes from this server, and recently
//! (the timestamp is signed with the body, so an old request replayed is refused by a
//! receiver that checks its age; see `docs/backend.md`).

use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;

/// The header's name.
pub const HEADER: &str = "switchboard-signature";

/// The header's value for `body` signed with `secret` at `unix_seconds`.
#[must_use]
pub fn signature(secret: &[u8], unix_seconds: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    let t = unix_seconds.to_string();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(t.len() + 7 + 64);
    out.push_str("t=");
    out.push_str(&t);
    out.push_str(",v1=");
    for byte in digest {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 15)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    /// Checked against Python's `hmac.new(b"secret", b"1700000000.{}", "sha256").hexdigest()`.
    #[test]
    fn signs_the_timestamp_and_the_body() {
        assert_eq!(
            signature(b"secret", 1_700_000_000, b"{}"),
            "t=1700000000,v1=\
             b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }
}
