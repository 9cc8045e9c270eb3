//! permessage-deflate (RFC 7692): what a client's offer asks, the server's answer, and the
//! two directions of compression.
//!
//! Switchboard always answers with `server_no_context_takeover` and
//! `client_no_context_takeover`: every message is compressed and inflated on its own, with
//! no window carried from one message to the next. That is what lets a channel's message be
//! compressed **once** and the same frame go to every subscriber that negotiated the same
//! window (the fan-out frames once and shares the `Bytes`), and it keeps an idle connection
//! with compression as small as one without: no per-connection deflate or inflate state
//! (with takeover, a compressor holds its window and hash tables, about 256 KiB at zlib's
//! defaults, and an inflater its 32 KiB window).
//! The compressors and the inflater are per thread, reset before each message.
//!
//! Inflating is bounded: a message never grows past the session's
//! `limits.max_inbound_message_bytes`, whatever its compressed size (a decompression bomb
//! costs the bound and is refused with 1009).

use std::cell::RefCell;

use bytes::{BufMut as _, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The four bytes a sync flush ends with, which the sender removes and the receiver puts
/// back (section 7.2.1).
const TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Smallest and largest LZ77 window, as a base-2 logarithm (section 7.1.2).
const MIN_WINDOW_BITS: u8 = 8;
const MAX_WINDOW_BITS: u8 = 15;

/// What a connection negotiated: the window the server may compress with.
///
/// A client that offers `server_max_window_bits=N` gets frames compressed with a window of
/// at most `2^N` bytes. zlib cannot make a raw deflate stream with a 256-byte window, so 8
/// compresses with zlib's 9, whose matches reach at most 512 - 262 = 250 bytes back: within
/// the 256 the client allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// The `server_max_window_bits` the client asked for (8-15; 15 when it asked none).
    window_bits: u8,
    /// The client asked for a `server_max_window_bits`: the answer must name it to accept
    /// the offer (section 7.1.2.1), even when it is 15.
    window_asked: bool,
}

/// [`Deflate::to_byte`]'s flag for `window_asked`, above the window bits.
const WINDOW_ASKED: u8 = 0x80;

impl Deflate {
    /// The window bits the server compresses with: 9-15, one compressed frame per value.
    #[must_use]
    pub fn compress_bits(self) -> u8 {
        self.window_bits.max(9)
    }

    /// One byte for the connection's state (0 is "not negotiated").
    #[must_use]
    pub fn to_byte(self) -> u8 {
        self.window_bits | if self.window_asked { WINDOW_ASKED } else { 0 }
    }

    /// The negotiation [`Deflate::to_byte`] stored; `None` for 0 (or anything out of range).
    #[must_use]
    pub fn from_byte(byte: u8) -> Option<Self> {
        let window_bits = byte & !WINDOW_ASKED;
        (MIN_WINDOW_BITS..=MAX_WINDOW_BITS)
            .contains(&window_bits)
            .then_some(Self {
                window_bits,
                window_asked: byte & WINDOW_ASKED != 0,
            })
    }

    /// The `Sec-WebSocket-Extensions` value of the 101 response.
    #[must_use]
    pub fn response(self) -> String {
        let mut answer = String::from(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        );
        if self.window_asked {
            answer.push_str("; server_max_window_bits=");
            answer.push_str(&self.window_bits.to_string());
        }
        answer
    }
}

/// The first `permessage-deflate` offer in `headers` (the values of every
/// `Sec-WebSocket-Extensions` header, in order) that the server can accept, if any.
///
/// An offer is declined, and the next one tried, when a parameter is unknown, given twice,
/// or has a value it may not have (section 7.1): `server_max_window_bits` must be 8-15,
/// `client_max_window_bits` may be absent or 8-15, the two `no_context_takeover` take none.
/// `client_max_window_bits` needs no answer: the inflater takes any window up to 15.
#[must_use]
pub fn negotiate<'a>(headers: impl IntoIterator<Item = &'a [u8]>) -> Option<Deflate> {
    headers
        .into_iter()
        .filter_map(|value| std::str::from_utf8(value).ok())
        .flat_map(|value| value.split(','))
        .find_map(accept_offer)
}

/// One offer (`name; param; param=value`), if it is a `permessage-deflate` the server takes.
fn accept_offer(offer: &str) -> Option<Deflate> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen = [false; 4];
    let mut window_bits = MAX_WINDOW_BITS;
    let mut window_asked = false;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(unquote(value.trim())?)),
            None => (param, None),
        };
        let index = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" | "client_no_context_takeover" if value.is_some() => {
                return None;
            }
            "server_no_context_takeover" => 0,
            "client_no_context_takeover" => 1,
            "server_max_window_bits" => {
                window_bits = window_bits_value(value?)?;
                window_asked = true;
                2
            }
            "client_max_window_bits" => {
                if let Some(value) = value {
                    window_bits_value(value)?;
                }
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[index], true) {
            return None;
        }
    }
    Some(Deflate {
        window_bits,
        window_asked,
    })
}

/// A parameter's value without the quotes a quoted-string may wrap it in (section 7.1:
/// the unquoted value must still be a token, so no escapes to undo).
fn unquote(value: &str) -> Option<&str> {
    match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => Some(value),
    }
}

/// A window-bits value: 1*DIGIT from 8 to 15, no leading zero (section 7.1.2.1).
fn window_bits_value(value: &str) -> Option<u8> {
    if value.starts_with('0') || !value.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    value
        .parse()
        .ok()
        .filter(|bits| (MIN_WINDOW_BITS..=MAX_WINDOW_BITS).contains(bits))
}

/// The most a thread's compression buffer keeps between messages.
const MAX_KEPT_SCRATCH: usize = 256 * 1024;

thread_local! {
    /// One raw-deflate compressor per window size (9-15) and level, made when first used.
    static COMPRESSORS: RefCell<Vec<(u8, u32, Compress)>> = const { RefCell::new(Vec::new()) };
    /// Where a message is compressed before it is framed; kept between messages.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The inflater, reset before each message.
    static INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// `payload` compressed as one message and framed with `first_byte | RSV1` (FIN and the
/// opcode in `first_byte`); `None` when compressing would not make the frame smaller (the
/// plain frame is then sent: compression is chosen per message, section 6).
#[must_use]
pub fn compress_frame(
    first_byte: u8,
    payload: &[u8],
    window_bits: u8,
    level: u32,
) -> Option<Bytes> {
    let window_bits = window_bits.clamp(9, MAX_WINDOW_BITS);
    SCRATCH.with_borrow_mut(|out| {
        COMPRESSORS.with_borrow_mut(|compressors| {
            let index = match compressors
                .iter()
                .position(|(bits, lvl, _)| *bits == window_bits && *lvl == level)
            {
                Some(index) => index,
                None => {
                    compressors.push((
                        window_bits,
                        level,
                        Compress::new_with_window_bits(Compression::new(level), false, window_bits),
                    ));
                    compressors.len() - 1
                }
            };
            let compressor = &mut compressors[index].2;
            compressor.reset();
            deflate_into(compressor, payload, out)
        })?;
        let frame = out
            .strip_suffix(&TRAILER)
            .filter(|body| body.len() + 2 < payload.len())
            .map(|body| {
                let mut frame = BytesMut::with_capacity(body.len() + 10);
                frame.put_u8(first_byte | RSV1);
                super::frames::put_server_length(&mut frame, body.len());
                frame.put_slice(body);
                frame.freeze()
            });
        // A large message (the echo endpoint takes 32 MiB) leaves no large buffer behind.
        if out.capacity() > MAX_KEPT_SCRATCH {
            *out = Vec::new();
        }
        frame
    })
}

/// The RSV1 bit of a frame's first byte: set on the first frame of a compressed message.
pub const RSV1: u8 = 0x40;

/// Compresses `payload` with a sync flush into `out` (cleared first); `None` if the
/// compressor fails, which it does not on valid state.
fn deflate_into(compressor: &mut Compress, payload: &[u8], out: &mut Vec<u8>) -> Option<()> {
    out.clear();
    out.reserve(payload.len() / 2 + 64);
    loop {
        let consumed = usize::try_from(compressor.total_in()).ok()?;
        compressor
            .compress_vec(&payload[consumed..], out, FlushCompress::Sync)
            .ok()?;
        let consumed = usize::try_from(compressor.total_in()).ok()?;
        // A sync flush is complete once the compressor returns with output room left.
        if consumed == payload.len() && out.len() < out.capacity() {
            return Some(());
        }
        out.reserve(out.capacity().max(64));
    }
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// It inflates to more than the bound: close with 1009.
    #[error("inflated message too big")]
    TooBig,
    /// It is not a valid deflate stream (or has bytes after its final block): close with
    /// 1007.
    #[error("invalid compressed data")]
    Invalid,
}

/// Inflates one compressed message (its payload without the sync-flush trailer) into at
/// most `max_bytes`. Memory used is bounded by `max_bytes` plus one step of growth, never
/// by what the compressed data claims.
///
/// # Errors
/// [`InflateError`]: the message is refused and the connection ends.
pub fn inflate(compressed: &[u8], max_bytes: usize) -> Result<Bytes, InflateError> {
    INFLATER.with_borrow_mut(|inflater| {
        let inflater = inflater
            .get_or_insert_with(|| Decompress::new_with_window_bits(false, MAX_WINDOW_BITS));
        inflater.reset(false);
        // Most messages compress 2-5 times: start there, and grow as output arrives.
        let mut out = Vec::with_capacity(
            compressed
                .len()
                .saturating_mul(4)
                .clamp(64, max_bytes.saturating_add(1).max(64)),
        );
        let mut ended = false;
        for (input, trailer) in [(compressed, false), (&TRAILER[..], true)] {
            let mut read = 0;
            loop {
                if ended {
                    // Nothing may follow the final block but the trailer put back here.
                    if read < input.len() && !trailer {
                        return Err(InflateError::Invalid);
                    }
                    break;
                }
                if out.len() == out.capacity() {
                    // Double, but never past the bound plus the one byte that tells "too big".
                    let room = out.len().max(64).min(max_bytes + 1 - out.len());
                    out.reserve_exact(room);
                }
                let (before_in, before_out) = (inflater.total_in(), inflater.total_out());
                let status = inflater
                    .decompress_vec(&input[read..], &mut out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Invalid)?;
                read += usize::try_from(inflater.total_in() - before_in)
                    .map_err(|_| InflateError::Invalid)?;
                if out.len() > max_bytes {
                    return Err(InflateError::TooBig);
                }
                let stuck = inflater.total_in() == before_in && inflater.total_out() == before_out;
                if status == Status::StreamEnd {
                    ended = true;
                } else if read == input.len() && (out.len() < out.capacity() || stuck) {
                    break;
                } else if stuck {
                    return Err(InflateError::Invalid);
                }
            }
        }
        Ok(Bytes::from(out))
    })
}

#[cfg(test)]
mod tests;
