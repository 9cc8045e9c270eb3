//! A fan-out subscriber's side of the wire: how it connects (from its own source address,
//! offering permessage-deflate with `--deflate`), the stamp it reads from each delivery, and
//! the payload padding publishers send.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::LazyLock,
};

use memchr::memmem;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, tungstenite::client::IntoClientRequest as _,
};

use super::FanoutArgs;

pub(super) type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

pub(super) async fn connect(
    args: &FanoutArgs,
    server: SocketAddr,
    index: usize,
) -> anyhow::Result<Ws> {
    let source = Ipv4Addr::new(
        127,
        0,
        0,
        args.source_first + (index % usize::from(args.source_addrs.max(1))) as u8,
    );
    let socket = crate::source::bound(source)?;
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    let mut request = format!("ws://{server}/ws").into_client_request()?;
    if args.deflate {
        request.headers_mut().insert(
            "sec-websocket-extensions",
            tokio_tungstenite::tungstenite::http::HeaderValue::from_static(
                "permessage-deflate; client_max_window_bits",
            ),
        );
    }
    let (ws, response) =
        tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)).await?;
    if args.deflate && !response.headers().contains_key("sec-websocket-extensions") {
        anyhow::bail!("the server did not negotiate permessage-deflate");
    }
    Ok(ws)
}

/// Padding of `len` bytes: `x`s, or with `words` a pseudo-random run of common English words
/// (the same for every message), which deflate compresses about as it does chat text.
pub fn padding(len: usize, words: bool) -> String {
    if !words {
        return "x".repeat(len);
    }
    const WORDS: [&str; 32] = [
        "the",
        "assistant",
        "reply",
        "streams",
        "token",
        "to",
        "every",
        "device",
        "of",
        "a",
        "user",
        "in",
        "room",
        "message",
        "order",
        "resume",
        "offset",
        "channel",
        "and",
        "is",
        "with",
        "for",
        "that",
        "server",
        "client",
        "history",
        "presence",
        "publish",
        "when",
        "browser",
        "mobile",
        "network",
    ];
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut pad = String::with_capacity(len + 16);
    while pad.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        pad.push_str(WORDS[(state % 32) as usize]);
        pad.push(' ');
    }
    pad.truncate(len);
    pad
}

/// A publish's send time and sequence number (`"ts":` and the `"n":` after it), found
/// without parsing the JSON.
///
/// Every delivery goes through here, so its cost is part of every fan-out figure: a naive
/// byte-window search (one `memcmp` per position from the frame's start) took more than half
/// of a reader process's CPU at 1.25M deliveries/s, and more for a server whose envelope puts
/// more bytes before `data` (Switchboard's `type` and `offset`), which made that server look
/// slower than it was. `memmem` finders and searching `"n":` only after `"ts":` cost the same
/// for any envelope.
pub(super) fn stamp(payload: &[u8]) -> Option<(u64, Option<u64>)> {
    static TS: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"\"ts\":"));
    static N: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\"n\":"));
    let after_ts = TS.find(payload)? + TS.needle().len();
    let (ts, used) = digits(&payload[after_ts..])?;
    let rest = &payload[after_ts + used..];
    let n = N
        .find(rest)
        .and_then(|at| digits(&rest[at + N.needle().len()..]))
        .map(|(n, _)| n);
    Some((ts, n))
}

/// The decimal number at the start of `bytes`, and how many bytes it took.
fn digits(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    let mut used = 0;
    for &byte in bytes.iter().take_while(|byte| byte.is_ascii_digit()) {
        value = value.checked_mul(10)?.checked_add(u64::from(byte - b'0'))?;
        used += 1;
    }
    (used > 0).then_some((value, used))
}

#[cfg(test)]
mod tests {
    use super::stamp;

    #[test]
    fn stamp_reads_either_envelope() {
        let baseline = br#"{"channel":"c","data":{"ts":1764633600123456789,"n":42,"pad":"x"}}"#;
        let switchboard = br#"{"type":"message","channel":"c","offset":"7-42","data":{"ts":1764633600123456789,"n":42,"pad":"\"n\":9"}}"#;
        assert_eq!(stamp(baseline), Some((1_764_633_600_123_456_789, Some(42))));
        assert_eq!(
            stamp(switchboard),
            Some((1_764_633_600_123_456_789, Some(42)))
        );
        // No sequence number (the latency scenario's payload), none at all, an overflow.
        assert_eq!(stamp(br#"{"data":{"ts":5}}"#), Some((5, None)));
        assert_eq!(stamp(br#"{"type":"welcome"}"#), None);
        assert_eq!(stamp(br#"{"ts":99999999999999999999}"#), None);
    }
}
