//! `[server]` and `[server.tls]`: the WebSocket listener.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// The public WebSocket listener and the hub layout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the public WebSocket listener. Default `0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// HTTP path that upgrades to WebSocket. Default `/ws`.
    pub ws_path: String,
    /// Name of this node, sent in `welcome`. Default: empty, meaning generated at start.
    pub node_id: String,
    /// Number of hub shards, a power of two. Default 0: the smallest power of two >= 4 x cores.
    pub shards: usize,
    /// Worker threads of the runtime that runs sessions and fan-out rounds (the control API
    /// has a thread of its own beside them). Default 0: one per CPU core. At most 1024.
    pub worker_threads: usize,
    /// Origins (`scheme://host[:port]`, `*.` for subdomains, or `*` for all) whose pages may
    /// open a WebSocket; a browser upgrade from another origin gets HTTP 403. Default empty:
    /// only upgrades without an `Origin` or whose `Origin` is the requested host.
    pub allowed_origins: Vec<String>,
    /// TLS for the listener (`wss://`); off while both files are empty.
    pub tls: TlsConfig,
}

/// A certificate chain and its key, PEM. Reloaded on SIGHUP.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The certificate chain, leaf first. Empty: no TLS.
    pub cert_file: String,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
}

impl TlsConfig {
    /// Whether TLS is configured.
    #[must_use]
    pub fn is_set(&self) -> bool {
        !self.cert_file.is_empty() || !self.key_file.is_empty()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            ws_path: "/ws".to_owned(),
            node_id: String::new(),
            shards: 0,
            worker_threads: 0,
            allowed_origins: Vec::new(),
            tls: TlsConfig::default(),
        }
    }
}

impl ServerConfig {
    /// Checks the `[server]` keys (its `tls` apart); fills `shards` and `node_id` when 0 or
    /// empty.
    pub(super) fn validate(&mut self) -> Result<(), ConfigError> {
        if !self.ws_path.starts_with('/') {
            return Err(invalid("server.ws_path", "must start with '/'"));
        }
        if let Some(bad) = self
            .allowed_origins
            .iter()
            .find(|origin| !is_origin_pattern(origin))
        {
            return Err(invalid(
                "server.allowed_origins",
                format!(
                    "'{bad}' is not an origin: use scheme://host[:port], scheme://*.domain or *"
                ),
            ));
        }
        if self.shards == 0 {
            self.shards = default_shards();
        } else if !self.shards.is_power_of_two() || self.shards > 65_536 {
            return Err(invalid(
                "server.shards",
                "must be 0 (auto) or a power of two up to 65536",
            ));
        }
        if self.worker_threads > 1024 {
            return Err(invalid(
                "server.worker_threads",
                "must be 0 (one per core) or at most 1024",
            ));
        }
        if self.node_id.is_empty() {
            self.node_id = format!("node-{:08x}", rand::random::<u32>());
        } else if self.node_id.len() > 64
            && self.node_id.len() <= 253
            && self
                .node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            // A Kubernetes pod name (up to 253 characters) given through the downward API:
            // its first 47 characters and a hash of the whole, so that two long names that
            // share a beginning stay two nodes, and the same name is the same node.
            let hash = self
                .node_id
                .bytes()
                .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                    (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
                });
            self.node_id = format!("{}-{hash:016x}", &self.node_id[..47]);
        } else if self.node_id.len() > 64
            || !self
                .node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(invalid(
                "server.node_id",
                "must be 1-64 characters of A-Z a-z 0-9 - _ .",
            ));
        }
        Ok(())
    }
}

impl TlsConfig {
    /// Checks a `tls` table; `key` names it in the error.
    pub(super) fn validate(&self, key: &'static str) -> Result<(), ConfigError> {
        if self.is_set() && (self.cert_file.is_empty() || self.key_file.is_empty()) {
            return Err(invalid(
                key,
                "needs both cert_file and key_file (or neither, for no TLS)",
            ));
        }
        Ok(())
    }
}

/// `*`, or `scheme://host[:port]` with an optional `*.` before the host and no path.
pub(super) fn is_origin_pattern(pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let Some((scheme, host)) = pattern.trim_end_matches('/').split_once("://") else {
        return false;
    };
    let host = host.strip_prefix("*.").unwrap_or(host);
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

/// The smallest power of two at least four times the number of cores.
pub(super) fn default_shards() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    (cores * 4).next_power_of_two()
}
