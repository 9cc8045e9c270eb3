//! `[hooks]`: the application backend asked, synchronously, who a connection is and what it
//! may do (see `docs/backend.md`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::{ConfigError, invalid};

/// When the connect hook is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectMode {
    /// For connections whose upgrade brought no token (a JWT, when given, is verified with
    /// `[auth]` as without hooks). With no `[auth]` keys, a token is passed to the hook.
    #[default]
    WithoutToken,
    /// For every connection; its token, if any, is passed to the hook as `token`.
    Always,
}

/// The hooks: URLs of the backend, and what calling them may cost the node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// Asked at connect: who the connection is (`user`, `info`, `subs`, `channels`,
    /// `publish`, `expires_in`). Empty: no connect hook.
    pub connect_url: String,
    /// Asked before an identity the connect hook gave with `expires_in` expires; a refusal
    /// closes the connection with 4004.
    pub refresh_url: String,
    /// Asked for namespace rules `"hook"` of `subscribe`, `history` and `presence` (the
    /// request's `action` says which).
    pub subscribe_url: String,
    /// Asked for namespace rules `"hook"` of `publish`: allows, refuses, or replaces `data`.
    pub publish_url: String,
    /// Asked for client `rpc` frames. Empty: `rpc` is refused with `not_found`.
    pub rpc_url: String,
    /// `without_token` (default) or `always`.
    pub connect: ConnectMode,
    /// How long a request may take, answer included. Default 2s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Requests in flight to the backend at once, per node. Default 256.
    pub max_in_flight: usize,
    /// Requests that may wait for a free slot; beyond it a request fails at once with
    /// `unavailable` (at connect: close 1013 and a `reconnect` frame). Default 20000.
    pub max_queued: usize,
    /// How long a request may wait for a slot. Default 5s.
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// Static headers sent with every request (an `Authorization` for the backend).
    pub headers: BTreeMap<String, String>,
    /// Headers of the upgrade request passed to the connect hook (`Cookie`, `User-Agent`,
    /// `X-Forwarded-For`, ...), listed explicitly. Default none.
    pub forward_headers: Vec<String>,
    /// Signs every request: `Switchboard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
    /// "<t>.<body>">`. Empty: unsigned.
    pub secret: String,
    /// Bytes an answer may have; a larger one is a failure. Default 64 KiB.
    pub max_response_bytes: usize,
    /// Speak HTTP/2 without TLS (h2c, prior knowledge) instead of HTTP/1.1. Default false.
    pub http2: bool,
    /// Consecutive failures (transport, timeout, 5xx, an answer too large or not one of the
    /// three shapes) of one hook that open its circuit breaker: requests then fail at once
    /// until a probe succeeds. A 4xx fails its request only.
    /// Default 5; 0 turns the breaker off.
    pub breaker_failures: u32,
    /// How long an open breaker waits before it lets one probe through. Default 5s.
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    /// Keep a connect hook's allowing answer for this long per `(forwarded headers, token)`,
    /// so that a reconnect storm of the same sessions asks the backend once each. 0 (the
    /// default): no cache.
    #[serde(with = "humantime_serde")]
    pub connect_cache: Duration,
    /// Entries the connect cache holds at most. Default 100000.
    pub connect_cache_entries: usize,
    /// `rpc` requests one connection may have in flight at once. Default 4.
    pub max_rpc_in_flight_per_connection: usize,
}

impl Default for HooksConfig {
    fn default() -> Self {
        Self {
            connect_url: String::new(),
            refresh_url: String::new(),
            subscribe_url: String::new(),
            publish_url: String::new(),
            rpc_url: String::new(),
            connect: ConnectMode::WithoutToken,
            timeout: Duration::from_secs(2),
            max_in_flight: 256,
            max_queued: 20_000,
            queue_timeout: Duration::from_secs(5),
            headers: BTreeMap::new(),
            forward_headers: Vec::new(),
            secret: String::new(),
            max_response_bytes: 64 * 1024,
            http2: false,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(5),
            connect_cache: Duration::ZERO,
            connect_cache_entries: 100_000,
            max_rpc_in_flight_per_connection: 4,
        }
    }
}

impl HooksConfig {
    /// Whether any hook is configured.
    #[must_use]
    pub fn any(&self) -> bool {
        [
            &self.connect_url,
            &self.refresh_url,
            &self.subscribe_url,
            &self.publish_url,
            &self.rpc_url,
        ]
        .iter()
        .any(|url| !url.is_empty())
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (key, url) in [
            ("hooks.connect_url", &self.connect_url),
            ("hooks.refresh_url", &self.refresh_url),
            ("hooks.subscribe_url", &self.subscribe_url),
            ("hooks.publish_url", &self.publish_url),
            ("hooks.rpc_url", &self.rpc_url),
        ] {
            if !url.is_empty() {
                check_url(key, url)?;
            }
        }
        if !self.refresh_url.is_empty() && self.connect_url.is_empty() {
            return Err(invalid(
                "hooks.refresh_url",
                "needs hooks.connect_url (only identities from the connect hook are refreshed)",
            ));
        }
        if self.timeout < Duration::from_millis(10) || self.timeout > Duration::from_secs(60) {
            return Err(invalid("hooks.timeout", "must be from 10ms to 60s"));
        }
        if !(1..=65_536).contains(&self.max_in_flight) {
            return Err(invalid("hooks.max_in_flight", "must be from 1 to 65536"));
        }
        if self.max_queued > 1_000_000 {
            return Err(invalid("hooks.max_queued", "must be at most 1000000"));
        }
        if self.queue_timeout > Duration::from_secs(60) {
            return Err(invalid("hooks.queue_timeout", "must be at most 60s"));
        }
        if !(256..=16 * 1024 * 1024).contains(&self.max_response_bytes) {
            return Err(invalid(
                "hooks.max_response_bytes",
                "must be from 256 to 16777216",
            ));
        }
        for (name, value) in &self.headers {
            if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(invalid(
                    "hooks.headers",
                    format!("'{name}' is not a valid header name"),
                ));
            }
            if hyper::header::HeaderValue::from_str(value).is_err() {
                return Err(invalid(
                    "hooks.headers",
                    format!("the value of '{name}' is not a valid header value"),
                ));
            }
        }
        for name in &self.forward_headers {
            if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(invalid(
                    "hooks.forward_headers",
                    format!("'{name}' is not a valid header name"),
                ));
            }
        }
        if self.forward_headers.len() > 32 {
            return Err(invalid("hooks.forward_headers", "at most 32 headers"));
        }
        if self.breaker_cooldown < Duration::from_millis(100) {
            return Err(invalid("hooks.breaker_cooldown", "must be at least 100ms"));
        }
        if self.connect_cache > Duration::from_secs(3600) {
            return Err(invalid("hooks.connect_cache", "must be at most 1h"));
        }
        if !(1..=10_000_000).contains(&self.connect_cache_entries) {
            return Err(invalid(
                "hooks.connect_cache_entries",
                "must be from 1 to 10000000",
            ));
        }
        if !(1..=256).contains(&self.max_rpc_in_flight_per_connection) {
            return Err(invalid(
                "hooks.max_rpc_in_flight_per_connection",
                "must be from 1 to 256",
            ));
        }
        Ok(())
    }
}

/// A hook's URL: `http://host[:port]/path`. TLS to the backend is not spoken here (a
/// backend on another network sits behind a local TLS proxy; see `docs/backend.md`).
fn check_url(key: &'static str, url: &str) -> Result<(), ConfigError> {
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        return Err(invalid(key, format!("'{url}' is not a URL")));
    };
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(invalid(
                key,
                "https is not supported: reach the backend over http on a trusted network or \
                 through a local TLS proxy",
            ));
        }
        _ => return Err(invalid(key, format!("'{url}' must start with http://"))),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid(key, format!("'{url}' has no host")));
    }
    Ok(())
}
