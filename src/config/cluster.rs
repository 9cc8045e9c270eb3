//! `[cluster]`: Redis, partitions, bus routing and what an outage does.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, HistoryConfig, invalid};

/// Clustering over Redis Streams. Off unless `redis` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Redis to cluster through: one `redis://` (or `rediss://`, TLS) URL, or a list of
    /// Redis Cluster seed URLs. Empty (the default): single node on the in-process broker.
    #[serde(skip_serializing_if = "RedisTarget::is_unset")]
    pub redis: RedisTarget,
    /// PEM file of the CA that signed Redis's certificate, for `rediss://` with a private
    /// CA. Empty (the default): the system's trusted roots.
    pub redis_ca_file: String,
    /// Bus partitions (Redis streams every node reads). Default 16. All nodes of a cluster
    /// must agree on it.
    pub partitions: u32,
    /// Longest a publish waits for Redis before answering `unavailable`. Default 2s.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: std::time::Duration,
    /// Entries kept per bus partition stream (approximate trimming). Default 100000.
    pub bus_maxlen: u64,
    /// Age past which bus partition entries are trimmed (approximately, whole stream nodes
    /// at a time), whatever `bus_maxlen` allows: a quiet partition does not keep 100,000
    /// entries for days. A node whose reader falls further behind than this loses those
    /// messages and reports it (`switchboard_bus_gaps_total`), as with `bus_maxlen`. Default 10m; at
    /// least 1m (far above a reader's stall and restart windows, 5 s each). Raise it where
    /// a node may lose Redis for longer while the others go on publishing.
    #[serde(with = "humantime_serde")]
    pub bus_max_age: std::time::Duration,
    /// How long a channel's epoch and sequence (its `meta` hash, about 100 bytes plus the
    /// name) live in Redis after its last publish; its history goes after `history.ttl`.
    /// A resume at a channel's head is `recovered` for this long, and so is one from the
    /// offset a reader of a channel without state was given. Default 24h; at least
    /// `history.ttl`.
    #[serde(with = "humantime_serde")]
    pub channel_state_ttl: std::time::Duration,
    /// Whether an outage of Redis itself (shared by every node) fails `/readyz`. Default
    /// false, so a shared outage does not empty the whole pool; it is reported either way.
    pub outage_fails_readiness: bool,
    /// How messages reach the nodes: `inbox` (the default), a publish appends each message
    /// to the inboxes of the nodes that follow its channel and a node reads only its own;
    /// `log`, every node reads every partition's log (the releases before inboxes: a
    /// rolling upgrade from one runs `log` until every node is upgraded).
    pub bus_routing: BusRouting,
    /// How long a node's interest in a channel (what routes the channel's messages to its
    /// inbox) lasts in Redis without being renewed; nodes renew theirs every third of it. A
    /// node that died without stopping costs publishes to its channels one more append each
    /// for at most this long. Default 10m; 30s to 24h.
    #[serde(with = "humantime_serde")]
    pub interest_ttl: std::time::Duration,
}

/// How a cluster's messages reach the nodes (`cluster.bus_routing`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusRouting {
    /// Each node reads its own inboxes, which hold the messages of channels it follows.
    #[default]
    Inbox,
    /// Each node reads every partition's log and drops what it does not follow.
    Log,
}

/// The shortest `cluster.bus_max_age`: well above what a bus reader may trail by without
/// being restarted (stalled after 5 s, restarted at most every 5 s, reconnecting with at most
/// 2 s of backoff), so that trimming by age never outruns a working node.
pub(super) const MIN_BUS_MAX_AGE: Duration = Duration::from_secs(60);

/// Where Redis is: nothing, one server, or Redis Cluster seeds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RedisTarget {
    /// No Redis: the in-process broker.
    #[default]
    #[serde(skip)]
    None,
    Url(String),
    ClusterSeeds(Vec<String>),
}

impl RedisTarget {
    /// Whether clustering is off.
    #[must_use]
    pub fn is_unset(&self) -> bool {
        !self.is_set()
    }

    /// Whether clustering is on.
    #[must_use]
    pub fn is_set(&self) -> bool {
        match self {
            RedisTarget::None => false,
            RedisTarget::Url(url) => !url.is_empty(),
            RedisTarget::ClusterSeeds(seeds) => !seeds.is_empty(),
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis: RedisTarget::None,
            redis_ca_file: String::new(),
            partitions: 16,
            publish_timeout: Duration::from_secs(2),
            bus_maxlen: 100_000,
            bus_max_age: Duration::from_secs(600),
            channel_state_ttl: Duration::from_secs(24 * 3600),
            outage_fails_readiness: false,
            bus_routing: BusRouting::Inbox,
            interest_ttl: Duration::from_secs(600),
        }
    }
}

impl ClusterConfig {
    /// Checks `[cluster]`; an empty `redis` (`""`, `[]`) becomes off.
    pub(super) fn validate(&mut self, history: &HistoryConfig) -> Result<(), ConfigError> {
        if !self.redis.is_set() {
            // `redis = ""` and `redis = []` mean off, like leaving the key out.
            self.redis = RedisTarget::None;
        }
        let urls: &[String] = match &self.redis {
            RedisTarget::None => &[],
            RedisTarget::Url(url) => std::slice::from_ref(url),
            RedisTarget::ClusterSeeds(seeds) => seeds,
        };
        if urls
            .iter()
            .any(|url| !url.starts_with("redis://") && !url.starts_with("rediss://"))
        {
            return Err(invalid(
                "cluster.redis",
                "must be a redis:// or rediss:// URL, or a list of them",
            ));
        }
        let tls = urls
            .iter()
            .filter(|url| url.starts_with("rediss://"))
            .count();
        if tls != 0 && tls != urls.len() {
            return Err(invalid(
                "cluster.redis",
                "mixes redis:// and rediss:// seeds: use one scheme for all",
            ));
        }
        if !self.redis_ca_file.is_empty() && tls == 0 {
            return Err(invalid(
                "cluster.redis_ca_file",
                "is set but cluster.redis is not a rediss:// URL: TLS to Redis needs rediss://",
            ));
        }
        if !(1..=1024).contains(&self.partitions) {
            return Err(invalid("cluster.partitions", "must be between 1 and 1024"));
        }
        if self.publish_timeout.is_zero() {
            return Err(invalid("cluster.publish_timeout", "must be greater than 0"));
        }
        if self.bus_maxlen < 1000 {
            return Err(invalid("cluster.bus_maxlen", "must be at least 1000"));
        }
        if self.bus_max_age < MIN_BUS_MAX_AGE {
            return Err(invalid("cluster.bus_max_age", "must be at least 1m"));
        }
        if !(Duration::from_secs(30)..=Duration::from_secs(24 * 3600)).contains(&self.interest_ttl)
        {
            return Err(invalid(
                "cluster.interest_ttl",
                "must be between 30s and 24h",
            ));
        }
        if self.channel_state_ttl < history.ttl {
            return Err(invalid(
                "cluster.channel_state_ttl",
                "must be at least history.ttl",
            ));
        }
        Ok(())
    }
}

/// `scheme://user:password@host...` with the password replaced by `<redacted>`.
pub(super) fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:<redacted>{}", &rest[at..]),
        None => url.to_owned(),
    }
}
