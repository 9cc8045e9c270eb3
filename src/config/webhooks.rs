//! `[[webhooks]]`: events POSTed to the application, batched and signed (see
//! `docs/backend.md`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// What a webhook may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEvent {
    /// A channel got its first subscriber.
    ChannelOccupied,
    /// A channel lost its last subscriber.
    ChannelVacated,
    /// A user's first connection joined a channel whose namespace tracks presence.
    MemberAdded,
    /// A user's last connection left such a channel.
    MemberRemoved,
    /// A client published (the data as published, after a publish hook).
    ClientPublish,
    /// A connection closed.
    ConnectionClosed,
}

/// One `[[webhooks]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Where the batches go: `http://host[:port]/path`.
    pub url: String,
    /// The events this webhook is sent. Empty: none (the entry is refused).
    pub events: Vec<WebhookEvent>,
    /// Only events of channels this pattern matches (`*`, a prefix ending in `*`, or an
    /// exact name); events without a channel (`connection_closed`) always. Default `*`.
    pub channels: String,
    /// Signs every batch: `Switchboard-Signature`, as hook requests. Empty: unsigned.
    pub secret: String,
    /// Events per batch, at most. Default 100.
    pub batch_max: usize,
    /// How long the first event of a batch waits for others. Default 250ms.
    #[serde(with = "humantime_serde")]
    pub batch_interval: Duration,
    /// Events held while the endpoint is slow or down; beyond it new events are dropped
    /// (counted and logged). Default 10000.
    pub max_queued: usize,
    /// How long one POST may take. Default 5s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The longest wait between two tries of a failing batch (the wait doubles from 250ms).
    /// Default 30s.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            events: Vec::new(),
            channels: "*".to_owned(),
            secret: String::new(),
            batch_max: 100,
            batch_interval: Duration::from_millis(250),
            max_queued: 10_000,
            timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl WebhookConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let Ok(uri) = self.url.parse::<hyper::Uri>() else {
            return Err(invalid(
                "webhooks",
                format!("url '{}' is not a URL", self.url),
            ));
        };
        if uri.scheme_str() != Some("http") || uri.host().is_none_or(str::is_empty) {
            return Err(invalid(
                "webhooks",
                format!(
                    "url '{}' must be http://host[:port]/path (a local TLS proxy for https)",
                    self.url
                ),
            ));
        }
        if self.events.is_empty() {
            return Err(invalid("webhooks", "`events` lists none"));
        }
        let pattern = self.channels.as_str();
        if pattern.is_empty() || pattern.trim_end_matches('*').contains('*') {
            return Err(invalid(
                "webhooks",
                format!("channels '{pattern}': `*`, a prefix ending in `*`, or a name"),
            ));
        }
        if !(1..=10_000).contains(&self.batch_max) {
            return Err(invalid("webhooks", "batch_max must be from 1 to 10000"));
        }
        if self.batch_interval > Duration::from_secs(60) {
            return Err(invalid("webhooks", "batch_interval must be at most 60s"));
        }
        if !(1..=10_000_000).contains(&self.max_queued) {
            return Err(invalid("webhooks", "max_queued must be from 1 to 10000000"));
        }
        if self.timeout < Duration::from_millis(10) || self.timeout > Duration::from_secs(120) {
            return Err(invalid("webhooks", "timeout must be from 10ms to 120s"));
        }
        if self.max_backoff < Duration::from_millis(250)
            || self.max_backoff > Duration::from_secs(3600)
        {
            return Err(invalid("webhooks", "max_backoff must be from 250ms to 1h"));
        }
        Ok(())
    }
}
