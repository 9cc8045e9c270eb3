//! `[presence]`: presence and join/leave, and what they may cost.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// Presence and join/leave events (namespaces opt in with `presence` and `join_leave`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// Join/leave events of one channel closer together than this are sent as one `join`
    /// and one `leave` frame listing every member that came or went, at the end of the
    /// interval: a mass reconnect of N members then costs each subscriber a few frames,
    /// not N. The first event after a quiet interval goes out at once. 0 sends every event
    /// on its own. Default 200ms; at most 10s.
    #[serde(with = "humantime_serde")]
    pub coalesce: Duration,
    /// Members one `presence` frame's reply lists at most (the reply says `truncated`
    /// beyond it; the control API pages through all). Default 1000; 1 to 100000.
    pub max_listed: usize,
    /// With Redis: how long a node's members stay listed after its last refresh (it
    /// refreshes every third of this). A node that dies without deregistering disappears
    /// from presence after this at most, sooner when the node registry sees it gone (about
    /// 10s). Default 30s; 3s to 1h.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            coalesce: Duration::from_millis(200),
            max_listed: 1000,
            ttl: Duration::from_secs(30),
        }
    }
}

impl PresenceConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.coalesce > Duration::from_secs(10) {
            return Err(invalid("presence.coalesce", "must be at most 10s"));
        }
        if !(Duration::from_secs(3)..=Duration::from_secs(3600)).contains(&self.ttl) {
            return Err(invalid("presence.ttl", "must be between 3s and 1h"));
        }
        if !(1..=100_000).contains(&self.max_listed) {
            return Err(invalid(
                "presence.max_listed",
                "must be between 1 and 100000",
            ));
        }
        Ok(())
    }
}
