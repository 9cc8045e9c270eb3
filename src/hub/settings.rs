//! `HubSettings`: what the hub takes from the configuration, and the rules of each
//! `[[namespaces]]` entry it applies (history, slow-consumer policy).

use std::time::Duration;

use super::HistoryLimit;

/// Settings the hub needs, taken from the configuration.
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub shards: usize,
    pub max_connections: usize,
    /// Connections not yet upgraded, on the node and per address.
    pub max_pending_upgrades: usize,
    pub max_pending_upgrades_per_ip: usize,
    pub queue_messages: usize,
    pub queue_bytes: usize,
    pub history_size: usize,
    pub history_ttl: Duration,
    pub history_max_bytes: usize,
    /// Every `[[namespaces]]` entry's pattern with what its channels keep and how their
    /// slow subscribers are treated, when any entry sets its own history or delivery policy;
    /// empty otherwise.
    pub per_namespace: Vec<NamespaceRules>,
    /// Messages are ordered by a remote bus (Redis) and arrive through [`Hub::deliver`](super::Hub::deliver);
    /// false when the hub orders them itself ([`Hub::publish`](super::Hub::publish)).
    pub remote: bool,
    /// `[streams]`.
    pub streams: crate::config::StreamsConfig,
    /// How fan-out rounds compress for connections that negotiated permessage-deflate;
    /// `None` when `[compression]` is off.
    pub compression: Option<Compression>,
}

/// `[compression]` as fan-out rounds apply it: 4 bytes, so that it sits in the padding of
/// a channel's slot (`Option` of it included) and costs no memory per channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    /// Frames with less JSON than this go out plain.
    pub min_bytes: u16,
    /// zlib level, 1-9.
    pub level: std::num::NonZeroU8,
}

impl Compression {
    /// From `[compression]`, when enabled (its validation bounds both values).
    #[must_use]
    pub fn from_config(config: &crate::config::CompressionConfig) -> Option<Self> {
        config.enabled.then(|| Self {
            min_bytes: u16::try_from(config.min_bytes).unwrap_or(u16::MAX),
            level: u8::try_from(config.level)
                .ok()
                .and_then(std::num::NonZeroU8::new)
                .unwrap_or(std::num::NonZeroU8::MIN),
        })
    }

    /// The zlib level.
    #[must_use]
    pub fn level(self) -> u32 {
        u32::from(self.level.get())
    }

    /// Whether a frame with `payload_len` bytes of JSON is compressed.
    #[must_use]
    pub fn applies_to(self, payload_len: usize) -> bool {
        payload_len >= usize::from(self.min_bytes)
    }
}

impl Default for HubSettings {
    /// The configuration's defaults, with 4 shards (the configured 0 is resolved from the
    /// cores when the configuration is validated): what tests and benchmarks start from,
    /// naming only what they change.
    fn default() -> Self {
        Self {
            shards: 4,
            ..Self::from_config(&crate::config::Config::default())
        }
    }
}

impl HubSettings {
    /// From `[server]`, `[limits]`, `[history]` and whether `[cluster]` names a Redis.
    #[must_use]
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            shards: config.server.shards,
            max_connections: config.limits.max_connections,
            max_pending_upgrades: config.limits.max_pending_upgrades,
            max_pending_upgrades_per_ip: config.limits.max_pending_upgrades_per_ip,
            queue_messages: config.limits.outbound_queue_messages,
            queue_bytes: config.limits.outbound_queue_bytes,
            history_size: config.history.size,
            history_ttl: config.history.ttl,
            history_max_bytes: config.history.max_memory_bytes,
            per_namespace: per_namespace(config),
            remote: config.cluster.redis.is_set(),
            streams: config.streams.clone(),
            compression: Compression::from_config(&config.compression),
        }
    }
}

/// One `[[namespaces]]` entry as the hub applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceRules {
    pub pattern: String,
    pub history: HistoryLimit,
    pub slow_consumer: crate::config::SlowConsumer,
    pub conflate_key: Option<String>,
    pub queue_bytes: Option<usize>,
}

/// See [`HubSettings::per_namespace`].
fn per_namespace(config: &crate::config::Config) -> Vec<NamespaceRules> {
    let namespaces = &config.namespaces;
    if namespaces.iter().all(|namespace| {
        namespace.history_size.is_none()
            && namespace.history_ttl.is_none()
            && namespace.slow_consumer == crate::config::SlowConsumer::Disconnect
    }) {
        return Vec::new();
    }
    namespaces
        .iter()
        .map(|namespace| NamespaceRules {
            pattern: namespace.pattern.clone(),
            history: HistoryLimit {
                size: namespace.history_size.unwrap_or(config.history.size),
                ttl: namespace.history_ttl.unwrap_or(config.history.ttl),
            },
            slow_consumer: namespace.slow_consumer,
            conflate_key: namespace.conflate_key.clone(),
            queue_bytes: namespace.queue_bytes,
        })
        .collect()
}
