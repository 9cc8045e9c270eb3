//! Connections to Redis (one server or a Redis Cluster, plain or `rediss://`): opening
//! them, the shared command connection, and reopening it when it breaks.

use std::{sync::Arc, time::Duration};

use redis::{
    AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, RedisResult, Value,
    aio::{ConnectionLike, MultiplexedConnection},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Inner, since_start_ms};
use crate::{cluster::BusError, config::RedisTarget, hub::LagClock, telemetry};

/// A connection to one Redis or to a Redis Cluster, whose commands wait for their replies
/// as its [`Patience`] says.
#[derive(Clone)]
pub(super) struct RedisConn {
    link: Link,
    patience: Patience,
}

#[derive(Clone)]
enum Link {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// How many times its limit a command may wait in all, when the node's event loop ran late
/// meanwhile.
const LATE_ALLOWANCE: u32 = 4;

/// How long a command waits for its reply: `limit` of the node's on-time running. The time
/// the node's event loop ran late meanwhile ([`LagClock`]) is added, up to `LATE_ALLOWANCE`
/// times `limit` in all: a node starved of CPU (issue 27's million run on two cores) runs
/// the task that reads Redis's replies seconds late, and its commands timed out with their
/// replies unread in the socket, each one taken for a Redis outage (the link dropped,
/// subscribes refused `unavailable`, clients retrying). A reply late on an on-time node is
/// still a timeout after `limit`.
#[derive(Clone)]
pub(super) struct Patience {
    limit: Duration,
    /// The event loop's clock; `None` for a connection used from a runtime of its own (the
    /// registry heartbeat's thread), which that clock does not measure.
    clock: Option<Arc<LagClock>>,
}

impl Patience {
    pub(super) fn new(limit: Duration, clock: Option<Arc<LagClock>>) -> Self {
        Self { limit, clock }
    }

    /// The longest any reply is waited for: the driver's own response timeout, a backstop
    /// behind [`Patience::wait`].
    fn backstop(&self) -> Duration {
        if self.clock.is_some() {
            self.limit * LATE_ALLOWANCE + Duration::from_secs(1)
        } else {
            self.limit + Duration::from_secs(1)
        }
    }

    /// Waits for `reply` up to `limit` plus the event loop's lateness meanwhile (see
    /// [`Patience`]); a timeout is an I/O `TimedOut` error, as the driver's own.
    async fn wait<T>(&self, reply: RedisFuture<'_, T>) -> RedisResult<T> {
        let started = Instant::now();
        let late_before = self.clock.as_ref().map(|clock| clock.late());
        let cap = started + self.limit * LATE_ALLOWANCE;
        let mut deadline = started + self.limit;
        let mut reply = reply;
        let mut extended = false;
        loop {
            if let Ok(result) = tokio::time::timeout_at(deadline, &mut reply).await {
                return result;
            }
            let (Some(clock), Some(before)) = (&self.clock, late_before) else {
                break;
            };
            let late = clock.late().saturating_sub(before);
            let later = (started + self.limit + late).min(cap);
            if later <= deadline {
                break;
            }
            if !extended {
                extended = true;
                telemetry::redis_wait_extended();
            }
            deadline = later;
        }
        Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "Redis did not answer in time",
        )))
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let Self { link, patience } = self;
        let reply = match link {
            Link::Single(conn) => conn.req_packed_command(cmd),
            Link::Cluster(conn) => conn.req_packed_command(cmd),
        };
        Box::pin(patience.wait(reply))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let Self { link, patience } = self;
        let replies = match link {
            Link::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            Link::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        };
        Box::pin(patience.wait(replies))
    }

    fn get_db(&self) -> i64 {
        match &self.link {
            Link::Single(conn) => conn.get_db(),
            Link::Cluster(conn) => conn.get_db(),
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

    /// Opens a connection whose commands wait for replies as `patience` says.
    pub(super) async fn connect(&self, patience: Patience) -> RedisResult<RedisConn> {
        let backstop = patience.backstop();
        let link = match self {
            Connector::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(backstop));
                Link::Single(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            }
            Connector::Cluster { .. } => Link::Cluster(
                self.cluster_client(backstop)?
                    .get_async_connection()
                    .await?,
            ),
        };
        Ok(RedisConn { link, patience })
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
    /// Patience for a connection used from the node's runtime: `limit`, plus the event
    /// loop's lateness.
    pub(super) fn patience(&self, limit: Duration) -> Patience {
        Patience::new(limit, Some(Arc::clone(self.hub.lag_clock())))
    }

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
                connected = inner.connector.connect(inner.patience(inner.settings.publish_timeout)) => connected,
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
                if let Ok(mut conn) = inner.conn()
                    && let Err(err) = redis::cmd("PING").query_async::<String>(&mut conn).await
                {
                    inner.failed("ping", &err);
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
    let info = redis::cmd("INFO")
        .arg("server")
        .query_async::<String>(conn)
        .await;
    let Ok(info) = info else { return };
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
        match invocation.invoke_async::<String>(conn).await {
            Ok(value) => born.push(value),
            Err(err) => {
                inner.health.error("born", &err);
                return;
            }
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
mod tests;
