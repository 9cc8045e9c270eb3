//! `[shutdown]`: drains and the grace before exit.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// Process shutdown.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// After a drain's deadline (or a second SIGTERM/SIGINT), how long the node waits for
    /// sessions still closing before exiting anyway. Default 5s.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// From the start of a drain (SIGTERM, `POST /v1/drain`) to refusing new upgrades:
    /// `/readyz` answers 503 meanwhile, so load balancers stop sending clients. Default 5s.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// Over how long a drain closes the node's connections (1012, after a `reconnect`
    /// frame), evenly paced with jitter. Default 30s.
    #[serde(with = "humantime_serde")]
    pub drain_window: Duration,
    /// When a drain gives up on connections left and the process exits, from the drain's
    /// start; 0: `drain_delay` + `drain_window` + `grace`. Default 0.
    #[serde(with = "humantime_serde")]
    pub drain_deadline: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(5),
            drain_delay: Duration::from_secs(5),
            drain_window: Duration::from_secs(30),
            drain_deadline: Duration::ZERO,
        }
    }
}

/// The longest drain window or delay accepted, in the config or from the API (a drain
/// deadline may be twice it).
pub const MAX_DRAIN: Duration = Duration::from_secs(3600);

impl ShutdownConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.grace.is_zero() {
            return Err(invalid("shutdown.grace", "must be greater than 0"));
        }
        let max = MAX_DRAIN;
        for (key, value) in [
            ("shutdown.drain_delay", self.drain_delay),
            ("shutdown.drain_window", self.drain_window),
        ] {
            if value > max {
                return Err(invalid(key, format!("at most {} s", max.as_secs())));
            }
        }
        let shortest = self.drain_delay + self.drain_window;
        if !self.drain_deadline.is_zero()
            && (self.drain_deadline < shortest || self.drain_deadline > 2 * max)
        {
            return Err(invalid(
                "shutdown.drain_deadline",
                format!(
                    "0, or from drain_delay + drain_window ({} ms) to {} s",
                    shortest.as_millis(),
                    2 * max.as_secs()
                ),
            ));
        }
        Ok(())
    }
}
