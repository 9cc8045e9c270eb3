//! The Redis bus's settings ([`RedisSettings`]), read once from `[cluster]` and `[streams]`,
//! with the CA that `rediss://` trusts.

use std::{sync::Arc, time::Duration};

use crate::config::{BusRouting, RedisTarget};

/// Settings of the Redis bus.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub target: RedisTarget,
    /// PEM of the CA that signed Redis's certificate (`cluster.redis_ca_file`), for
    /// `rediss://`; `None` trusts the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    pub partitions: u32,
    pub publish_timeout: Duration,
    pub bus_maxlen: u64,
    pub bus_max_age: Duration,
    pub channel_state_ttl: Duration,
    pub outage_fails_readiness: bool,
    pub routing: BusRouting,
    pub interest_ttl: Duration,
    pub node_id: Arc<str>,
    /// `[streams]`: the bounds the operation script checks.
    pub streams: crate::config::StreamsConfig,
}

impl RedisSettings {
    /// From `[cluster]` and `[history]` (reads `cluster.redis_ca_file`); `node_id` is this
    /// node's id.
    ///
    /// # Errors
    /// When the CA file cannot be read.
    pub fn from_config(
        config: &crate::config::Config,
        node_id: Arc<str>,
    ) -> Result<Self, CaFileError> {
        let cluster = &config.cluster;
        let ca_pem = match cluster.redis_ca_file.as_str() {
            "" => None,
            path => {
                use rustls_pki_types::{CertificateDer, pem::PemObject as _};
                let pem = std::fs::read(path).map_err(|source| CaFileError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                if !CertificateDer::pem_slice_iter(&pem).any(|cert| cert.is_ok()) {
                    return Err(CaFileError::NoCertificate {
                        path: path.to_owned(),
                    });
                }
                Some(pem)
            }
        };
        Ok(Self {
            target: cluster.redis.clone(),
            ca_pem,
            partitions: cluster.partitions,
            publish_timeout: cluster.publish_timeout,
            bus_maxlen: cluster.bus_maxlen,
            bus_max_age: cluster.bus_max_age,
            channel_state_ttl: cluster.channel_state_ttl,
            outage_fails_readiness: cluster.outage_fails_readiness,
            routing: cluster.bus_routing,
            interest_ttl: cluster.interest_ttl,
            node_id,
            streams: config.streams.clone(),
        })
    }
}

/// Why `cluster.redis_ca_file` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error("reading cluster.redis_ca_file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cluster.redis_ca_file {path} holds no PEM certificate")]
    NoCertificate { path: String },
}
