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
    /// Bytes of text one message may hold. Default 256 KiB.
    pub max_text_bytes: usize,
    /// Open streams one channel may hold at once. Default 64.
    pub max_open_per_channel: usize,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        Self {
            dedupe_window: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(60),
            coalesce: Duration::from_millis(40),
            max_text_bytes: 256 * 1024,
            max_open_per_channel: 64,
        }
    }
}

impl StreamsConfig {
    pub(super) fn validate(&self, limits: &LimitsConfig) -> Result<(), ConfigError> {
        if self.idle_timeout < Duration::from_secs(1) {
            return Err(invalid("streams.idle_timeout", "must be at least 1s"));
        }
        if self.coalesce > Duration::from_secs(1) {
            return Err(invalid("streams.coalesce", "must be at most 1s"));
        }
        if self.max_text_bytes == 0 || self.max_text_bytes > 64 * 1024 * 1024 {
            return Err(invalid(
                "streams.max_text_bytes",
                "must be between 1 and 67108864",
            ));
        }
        // A message's state frame carries its whole text: it must fit a subscriber's queue.
        if self.max_text_bytes + limits.max_publish_payload_bytes + 1024
            > limits.outbound_queue_bytes
        {
            return Err(invalid(
                "streams.max_text_bytes",
                "plus limits.max_publish_payload_bytes must fit limits.outbound_queue_bytes",
            ));
        }
        if self.max_open_per_channel == 0 {
            return Err(invalid(
                "streams.max_open_per_channel",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
