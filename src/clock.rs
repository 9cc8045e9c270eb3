//! Wall-clock time since the Unix epoch, the one reading every part of the server uses for
//! what leaves the process or is compared with what came in: token `exp`/`iat`, block and
//! revocation ends, bus entry times, webhook and event times. Before 1970 (a clock set
//! wrong) reads as 0. Durations inside the process use `tokio::time` instead.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix seconds: the clock tokens' `exp`, `nbf` and `iat`, blocks' and revocations'
/// `until` are read against.
#[must_use]
pub fn unix_now() -> u64 {
    since_epoch().as_secs()
}

/// Now, in Unix milliseconds.
#[must_use]
pub fn unix_ms() -> u64 {
    u64::try_from(since_epoch().as_millis()).unwrap_or(u64::MAX)
}

/// Now, in Unix microseconds.
#[must_use]
pub fn unix_micros() -> u64 {
    u64::try_from(since_epoch().as_micros()).unwrap_or(u64::MAX)
}

fn since_epoch() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}
