//! Connections to Redis (one server or a Redis Cluster, plain or `rediss://`): opening
//! them, the shared command connection, and reopening it when it breaks.

use std::{sync::Arc, time::Duration};

use redis::{
    AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, RedisResult, Value,
    aio::{ConnectionLike, MultiplexedConnection},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
};
use tokio_util::sync::CancellationToken;

use super::{Inner, since_start_ms};
use crate::{cluster::BusError, config::RedisTarget, telemetry};

/// A connection to one Redis or to a Redis Cluster.
#[derive(Clone)]
pub(super) enum RedisConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(conn) => conn.req_packed_command(cmd),
            RedisConn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(conn) => conn.get_db(),
            RedisConn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// How to open connections.
pub(super) enum Connector {
    Single(redis::Client),
    /// Seed URLs; a client is built per connection so each can have its own response
    /// timeout (blocking reads need a longer one).
    Cluster {
        seeds: Vec<String>,
        /// The private CA for `rediss://` seeds.
        ca_pem: Option<Vec<u8>>,
    },
}

/// The trust anchors for `rediss://`: a private CA, or the system's roots when `None`.
fn tls_certificates(ca_pem: Option<&Vec<u8>>) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: ca_pem.cloned(),
    }
}

impl Connector {
    pub(super) fn new(
        target: &RedisTarget,
        ca_pem: Option<&Vec<u8>>,
    ) -> Result<Self, redis::RedisError> {
        match target {
            RedisTarget::Url(url) if ca_pem.is_some() => Ok(Connector::Single(
                redis::Client::build_with_tls(url.as_str(), tls_certificates(ca_pem))?,
            )),
            RedisTarget::Url(url) => Ok(Connector::Single(redis::Client::open(url.as_str())?)),
            RedisTarget::ClusterSeeds(seeds) => {
                let connector = Connector::Cluster {
                    seeds: seeds.clone(),
                    ca_pem: ca_pem.cloned(),
                };
                // Validate the seeds (and the CA) now, so a bad one refuses to start.
                connector.cluster_client(Duration::from_secs(1))?;
                Ok(connector)
            }
            RedisTarget::None => Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "no Redis configured",
            ))),
        }
    }

    pub(super) async fn connect(&self, response_timeout: Duration) -> RedisResult<RedisConn> {
        match self {
            Connector::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(response_timeout));
                Ok(RedisConn::Single(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                ))
            }
            Connector::Cluster { .. } => Ok(RedisConn::Cluster(
                self.cluster_client(response_timeout)?
                    .get_async_connection()
                    .await?,
            )),
        }
    }

    pub(super) fn cluster_client(&self, response_timeout: Duration) -> RedisResult<ClusterClient> {
        let Connector::Cluster { seeds, ca_pem } = self else {
            unreachable!("cluster_client is only called on Connector::Cluster");
        };
        let mut builder = ClusterClient::builder(seeds.clone())
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(response_timeout)
            .retries(2);
        if ca_pem.is_some() {
            builder = builder.certs(tls_certificates(ca_pem.as_ref()));
        }
        builder.build()
    }
}

impl Inner {
    pub(super) fn conn(&self) -> Result<RedisConn, BusError> {
        match self.conn.load_full() {
            Some(conn) => Ok((*conn).clone()),
            None => Err(BusError::Unreachable),
        }
    }

    /// Records a failed command; connection-level failures drop the connection so the keeper
    /// opens a new one.
    pub(super) fn failed(&self, op: &'static str, err: &redis::RedisError) -> BusError {
        self.health.error(op, err);
        let broken = err.is_io_error()
            || err.is_connection_dropped()
            || err.is_timeout()
            || err.is_unrecoverable_error();
        if broken && self.conn.swap(None).is_some() {
            self.health.went_down(since_start_ms(self));
            self.reconnect.notify_one();
        }
        if err.is_timeout() {
            BusError::TimedOut
        } else {
            BusError::Failed
        }
    }
}

/// Keeps the shared command connection open: reconnects with backoff whenever it is lost.
pub(super) async fn keep_connected(inner: Arc<Inner>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if inner.conn.load().is_none() {
            let connected = tokio::select! {
                () = stop.cancelled() => return,
                connected = inner.connector.connect(inner.settings.publish_timeout) => connected,
            };
            match connected {
                Ok(mut conn) => match redis::cmd("PING").query_async::<String>(&mut conn).await {
                    Ok(_) => {
                        check_version(&inner, &mut conn).await;
                        // Before any read can be answered on this connection.
                        record_born(&inner, &mut conn).await;
                        inner.conn.store(Some(Arc::new(conn)));
                        inner.health.came_up(since_start_ms(&inner));
                        telemetry::redis_connected();
                        backoff = Duration::from_millis(50);
                        continue;
                    }
                    Err(err) => inner.health.error("connect", &err),
                },
                Err(err) => inner.health.error("connect", &err),
            }
            inner.health.went_down(since_start_ms(&inner));
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        }
        // Connected: wait until someone reports the connection lost, or check it now and then.
        tokio::select! {
            () = stop.cancelled() => return,
            () = inner.reconnect.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                if let Ok(mut conn) = inner.conn() {
                    let ping = tokio::time::timeout(
                        inner.settings.publish_timeout,
                        redis::cmd("PING").query_async::<String>(&mut conn),
                    )
                    .await;
                    match ping {
                        Ok(Ok(_)) => {}
                        Ok(Err(err)) => { inner.failed("ping", &err); }
                        Err(_) => {
                            let err = redis::RedisError::from(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "ping timed out",
                            ));
                            inner.failed("ping", &err);
                        }
                    }
                }
            }
        }
    }
}

/// The oldest Redis the scripts run on: `XTRIM MINID` and exclusive stream ranges came in 6.2.
const MIN_REDIS: (u32, u32) = (6, 2);

/// Checks the server's version: an older Redis fails every publish, so the node says why
/// (an error in the log, a readiness reason) instead of only counting script errors.
async fn check_version(inner: &Inner, conn: &mut RedisConn) {
    let info = tokio::time::timeout(
        inner.settings.publish_timeout,
        redis::cmd("INFO").arg("server").query_async::<String>(conn),
    )
    .await;
    let Ok(Ok(info)) = info else { return };
    let Some(version) = redis_version(&info) else {
        return;
    };
    let old = (version.0, version.1) < MIN_REDIS;
    let mut held = inner
        .health
        .too_old
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if old {
        let text = format!("{}.{}.{}", version.0, version.1, version.2);
        if held.as_deref() != Some(text.as_str()) {
            tracing::error!(
                version = %text,
                "Redis is older than 6.2: publishing fails until it is upgraded"
            );
        }
        *held = Some(text);
    } else {
        *held = None;
    }
}

/// `redis_version:7.0.15` in an `INFO server` answer.
fn redis_version(info: &str) -> Option<(u32, u32, u32)> {
    let line = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))?;
    let mut parts = line.trim().split('.').map(|part| part.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// Sets every partition's `born` key that is missing (a new or emptied Redis), so that the
/// absent epochs this node's reads answer can be proven continuous later. A failure only makes
/// such resumes answer `recovered:false`.
async fn record_born(inner: &Inner, conn: &mut RedisConn) {
    let mut born = Vec::with_capacity(inner.settings.partitions as usize);
    for partition in 0..inner.settings.partitions {
        let invocation = inner.born_script.key(super::born_key(partition));
        let result = tokio::time::timeout(
            inner.settings.publish_timeout,
            invocation.invoke_async::<String>(conn),
        )
        .await;
        match result {
            Ok(Ok(value)) => born.push(value),
            Ok(Err(err)) => {
                inner.health.error("born", &err);
                return;
            }
            Err(_elapsed) => return,
        }
    }
    let mut seen = inner
        .health
        .born_seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let lost = !seen.is_empty() && *seen != born;
    *seen = born;
    drop(seen);
    if lost {
        inner.health.state_lost("Redis lost its data");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_redis_version_is_read_from_info_server() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:00000000\r\n";
        assert_eq!(super::redis_version(info), Some((7, 0, 15)));
        assert_eq!(
            super::redis_version("redis_version:6.0\r\n"),
            Some((6, 0, 0))
        );
        assert_eq!(super::redis_version("nothing"), None);
    }
}
