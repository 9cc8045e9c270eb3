//! Small values the Redis bus reads and writes: replies as strings and numbers, durations
//! in milliseconds, and channel epochs (drawn at random, or a read's Redis time for a channel
//! without state).

use std::time::Duration;

use redis::Value;

/// Epochs below this are not drawn at random: such an epoch is the Redis time (ms) at which
/// a read found the channel without state (the *absent epoch* a subscriber of a channel that
/// never had a message is given). Random epochs are drawn at or above it.
pub(super) const ABSENT_EPOCH_LIMIT: u64 = 1 << 48;

/// A random epoch for a channel a publish creates, never one that could be taken for an
/// absent epoch.
pub(super) fn random_epoch() -> u64 {
    rand::random::<u64>() | (1 << 63)
}

pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

pub(super) fn parse_epoch(text: &str) -> Option<u64> {
    u64::from_str_radix(text, 16).ok()
}

pub(super) fn as_string(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(super) fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => as_string(other)?.parse().ok(),
    }
}
