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
