//! `[streams]`: message ids, open messages that grow by appends, and their bounds (see
//! `docs/streams.md`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, LimitsConfig, invalid};

/// Message ids, streams (messages that grow by appends) and what they may cost.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// How long after a publish its `message_id` is remembered for deduplication (a retried
    /// publish answers the first offset), beyond the time its message stays in history.
    /// Default 10m.
    #[serde(with = "humantime_serde")]
    pub dedupe_window: Duration,
    /// An open stream that gets no append for this long is abandoned. Default 60s.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Appends to a channel closer together than this are sent to subscribers as one frame
    /// (the first after a quiet interval goes at once). 0 sends every append as it comes.
    /// Default 40ms.
    #[serde(with = "humantime_serde")]
    pub coalesce: Duration,
    /// Bytes of text one message may hold. 0 (the default): 256 KiB, or less when that and
    /// a payload would not fit `limits.outbound_queue_bytes` (a resume sends a message
    /// whole, in one frame).
    pub max_text_bytes: usize,
    /// Open streams one channel may hold at once. A subscribe gets them all whole at once,
    /// so with the text they may hold they must fit a subscriber's queue. 0 (the default):
    /// as many as fit `limits.outbound_queue_bytes`, from 1 to 64 (3 with the defaults).
    pub max_open_per_channel: usize,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        Self {
            dedupe_window: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(60),
            coalesce: Duration::from_millis(40),
            max_text_bytes: 0,
            max_open_per_channel: 0,
        }
    }
}

/// `max_text_bytes` when derived, at most.
const DEFAULT_MAX_TEXT_BYTES: usize = 256 * 1024;
/// `max_open_per_channel` when derived, at most.
const DEFAULT_MAX_OPEN: usize = 64;
/// What a state frame adds to a message's text and data, at most (its envelope, escaping
/// aside).
const ENVELOPE: usize = 1024;

impl StreamsConfig {
    /// Checks the keys and fills the derived ones (those left at 0).
    pub(super) fn validate(&mut self, limits: &LimitsConfig) -> Result<(), ConfigError> {
        if self.idle_timeout < Duration::from_secs(1) {
            return Err(invalid("streams.idle_timeout", "must be at least 1s"));
        }
        if self.coalesce > Duration::from_secs(1) {
            return Err(invalid("streams.coalesce", "must be at most 1s"));
        }
        let queue = limits.outbound_queue_bytes;
        let payload = limits.max_publish_payload_bytes;
        if self.max_text_bytes == 0 {
            self.max_text_bytes = DEFAULT_MAX_TEXT_BYTES
                .min(queue.saturating_sub(payload + ENVELOPE))
                .max(1);
        } else if self.max_text_bytes > 64 * 1024 * 1024 {
            return Err(invalid(
                "streams.max_text_bytes",
                "must be at most 67108864",
            ));
        } else if self.max_text_bytes + payload + ENVELOPE > queue {
            // A message's state frame carries its whole text: it must fit a queue.
            return Err(invalid(
                "streams.max_text_bytes",
                "plus limits.max_publish_payload_bytes and 1 KiB must fit \
                 limits.outbound_queue_bytes",
            ));
        }
        let whole = self.max_text_bytes + payload + ENVELOPE;
        if self.max_open_per_channel == 0 {
            self.max_open_per_channel = (queue / whole).clamp(1, DEFAULT_MAX_OPEN);
        } else if self.max_open_per_channel.saturating_mul(whole) > queue {
            // A subscribe gets every open stream whole at once: all of them must fit, or a
            // channel's publisher could have every new subscriber closed as a slow consumer.
            return Err(invalid(
                "streams.max_open_per_channel",
                "times (streams.max_text_bytes + limits.max_publish_payload_bytes + 1 KiB) \
                 must fit limits.outbound_queue_bytes",
            ));
        }
        Ok(())
    }
}
