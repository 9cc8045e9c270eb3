//! The metrics of permessage-deflate: connections that negotiated it, and what the fan-out
//! compressed (once per message and window size, whatever the number of subscribers).

use metrics::{Unit, describe_counter};

/// Counter: upgrades answered, by `deflate` (`yes`: permessage-deflate negotiated, `no`:
/// not offered, not acceptable, or `[compression]` off).
pub const DEFLATE_NEGOTIATED: &str = "switchboard_deflate_negotiated_total";
/// Counter: messages the fan-out compressed, by `result` (`compressed`, or `not_smaller`:
/// sent plain because deflate did not make them smaller).
pub const DEFLATE_MESSAGES: &str = "switchboard_deflate_messages_total";
/// Counter: JSON bytes the fan-out compressed (`stage="in"`) and the bytes deflate
/// subscribers were sent of them (`stage="out"`: the compressed payload, or the JSON of a
/// message sent plain because compressing did not make it smaller): their ratio is what
/// compression saves per delivery.
pub const DEFLATE_BYTES: &str = "switchboard_deflate_bytes_total";

/// Counts an upgrade's answer: with or without permessage-deflate.
pub fn deflate_negotiated(negotiated: bool) {
    let deflate = if negotiated { "yes" } else { "no" };
    metrics::counter!(DEFLATE_NEGOTIATED, "deflate" => deflate).increment(1);
}

/// Counts one message compressed by the fan-out: `json_bytes` in, and the bytes of its
/// compressed payload (`None`: not smaller, sent plain).
pub fn deflated(json_bytes: usize, compressed_bytes: Option<usize>) {
    let result = if compressed_bytes.is_some() {
        "compressed"
    } else {
        "not_smaller"
    };
    metrics::counter!(DEFLATE_MESSAGES, "result" => result).increment(1);
    metrics::counter!(DEFLATE_BYTES, "stage" => "in").increment(json_bytes as u64);
    let out = compressed_bytes.unwrap_or(json_bytes);
    metrics::counter!(DEFLATE_BYTES, "stage" => "out").increment(out as u64);
}

pub(super) fn describe() {
    describe_counter!(
        DEFLATE_NEGOTIATED,
        "WebSocket upgrades answered, by whether permessage-deflate was negotiated (deflate)"
    );
    describe_counter!(
        DEFLATE_MESSAGES,
        "Messages the fan-out compressed once for its deflate subscribers, by result \
         (compressed, not_smaller)"
    );
    describe_counter!(
        DEFLATE_BYTES,
        Unit::Bytes,
        "JSON bytes the fan-out compressed (stage=in) and the compressed bytes they became \
         (stage=out)"
    );
}
