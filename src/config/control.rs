//! `[control]`: the control API's listener, keys and request limits (its TLS is a
//! `TlsConfig`, with `[server.tls]`'s).

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

use super::{ConfigError, TlsConfig, invalid, is_placeholder};

/// The control (HTTP API) listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Address of the control listener. Default `127.0.0.1:9090`: on any other address it
    /// needs `api_keys` (or `allow_no_api_keys`).
    pub listen: SocketAddr,
    /// Accepted API keys for `/v1/*`. Default empty: only loopback clients may call `/v1/*`.
    pub api_keys: Vec<String>,
    /// Start with a control listener that is not on loopback and no `api_keys`. `/v1/*` then
    /// answers every loopback caller without a key, which is unsafe wherever something on
    /// the host forwards others' requests from loopback (a sidecar proxy, an SSH tunnel).
    /// Default false: such a configuration refuses to start.
    pub allow_no_api_keys: bool,
    /// Largest request body accepted, in bytes. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Time a request body may take to arrive once the headers are in; a slower one gets 408
    /// and the connection is closed. Default 10s. (Headers have their own 10 s.)
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// `/v1/*` requests per second per API key (all loopback callers share one bucket when
    /// no keys are configured); over it, HTTP 429 with `Retry-After`. Default 0: off. Set it
    /// so that one runaway service cannot starve the others.
    pub requests_per_second_per_key: u32,
    /// Requests one key may make at once above that rate. Default 1000.
    pub request_burst_per_key: u32,
    /// HTTPS on the control listener; off when absent.
    pub tls: TlsConfig,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            api_keys: Vec::new(),
            allow_no_api_keys: false,
            max_body_bytes: 1024 * 1024,
            body_timeout: Duration::from_secs(10),
            requests_per_second_per_key: 0,
            request_burst_per_key: 1000,
            tls: TlsConfig::default(),
        }
    }
}

impl ControlConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.tls.validate("control.tls")?;
        if let Some(placeholder) = self.api_keys.iter().find(|key| is_placeholder(key)) {
            return Err(invalid(
                "control.api_keys",
                format!(
                    "`{placeholder}` is a placeholder from an example: generate a key (e.g. \
                     `openssl rand -base64 32`) and put it in your secret"
                ),
            ));
        }
        if self.api_keys.iter().any(|key| key.len() < 16) {
            return Err(invalid(
                "control.api_keys",
                "every key must be at least 16 characters",
            ));
        }
        if self.api_keys.is_empty() && !self.listen.ip().is_loopback() && !self.allow_no_api_keys {
            return Err(invalid(
                "control.api_keys",
                format!(
                    "must not be empty when control.listen ({}) is not a loopback address: \
                     callers could publish, disconnect and drain without a key (set api_keys, \
                     listen on 127.0.0.1, or set control.allow_no_api_keys = true)",
                    self.listen
                ),
            ));
        }
        if self.max_body_bytes < 1024 {
            return Err(invalid("control.max_body_bytes", "must be at least 1024"));
        }
        if self.body_timeout.is_zero() {
            return Err(invalid("control.body_timeout", "must be greater than 0"));
        }
        if self.request_burst_per_key == 0 {
            return Err(invalid(
                "control.request_burst_per_key",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
