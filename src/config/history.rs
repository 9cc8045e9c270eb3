//! `[history]`: how many messages, and for how long, each channel keeps.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, LimitsConfig, invalid};

/// In-process message history, used for `since` resume and the history API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Messages kept per channel. 0 turns history off. Default 100.
    pub size: usize,
    /// How long a message stays in history; with Redis, also how long a channel's history
    /// stream outlives its last publish. Default 5m.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Bytes of history kept by the whole node; past it, publishes trim their channel's oldest
    /// entries first. Default 256 MiB.
    pub max_memory_bytes: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            size: 100,
            ttl: Duration::from_secs(300),
            max_memory_bytes: 256 * 1024 * 1024,
        }
    }
}

impl HistoryConfig {
    pub(super) fn validate(&self, limits: &LimitsConfig) -> Result<(), ConfigError> {
        if self.size >= limits.outbound_queue_messages {
            // A `since` replay enqueues up to history.size messages at once; a queue that
            // cannot hold them would close every resuming client as a slow consumer.
            return Err(invalid(
                "history.size",
                "must be smaller than limits.outbound_queue_messages",
            ));
        }
        if self.size > 0 && self.ttl.is_zero() {
            return Err(invalid("history.ttl", "must be greater than 0"));
        }
        Ok(())
    }
}
