//! The clustered bus: Redis Streams as both the cross-node bus and the resume log.
//!
//! Keys (`P` is a channel's partition, `hash(channel) % partitions`; the `{sb:P}` hash tag puts
//! every key of a partition in one Redis Cluster slot):
//! - `sb:{sb:P}:bus`: the partition stream every node reads. Entry fields: `c` channel,
//!   `e` epoch, `s` seq, `d` data, `t` Redis time in ms.
//! - `sb:{sb:P}:meta:<channel>`: hash with the channel's epoch `e` and last seq `s`.
//! - `sb:{sb:P}:hist:<channel>`: the channel's history stream, entry id `<seq>-0`, fields `d`
//!   and `t`, capped at `history.size`.
//!
//! One Lua script per publish bumps the seq, appends to history and to the bus: the live bus
//! and the resume log cannot disagree. A channel whose meta hash is gone (Redis restarted
//! empty, or the state expired) gets a new random epoch, so stale offsets are recognised.
//!
//! Every node follows every partition with blocking `XREAD`s from the last entry id it saw
//! (never `$` after a reconnect) and hands entries to [`Hub::deliver`], which keeps those with
//! local interest and drops duplicates.

mod presence;

pub use self::presence::RedisPresence;

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use redis::{
    AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, RedisResult, Script, Value,
    aio::{ConnectionLike, MultiplexedConnection},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Bus, BusError, BusFuture};
use crate::{
    config::RedisTarget,
    hub::{History, HistoryData, HubHandle, RemoteView, SessionCommand, WriteBatch},
    protocol::{ChannelName, CloseCode, Offset},
    shutdown::Shutdown,
    telemetry,
};

/// How long one `XREAD` blocks before returning empty.
const BLOCK: Duration = Duration::from_millis(1000);
/// Entries one `XREAD` returns at most.
const READ_COUNT: usize = 512;
/// A reader whose last completed read is older than this, while Redis answers, is stuck.
const READER_STALL: Duration = Duration::from_secs(5);
/// Registry heartbeat period and entry lifetime.
const NODE_HEARTBEAT: Duration = Duration::from_secs(2);
const NODE_TTL: Duration = Duration::from_secs(10);
const REGISTRY_SET: &str = "sb:{sb:nodes}:live";
const REGISTRY_PREFIX: &str = "sb:{sb:nodes}:node:";

const PUBLISH_LUA: &str = r"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[2]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', e, 's', 0)
end
local s = redis.call('HINCRBY', KEYS[1], 's', 1)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(ARGV[3]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], string.format('%d-0', s), 'd', ARGV[1], 't', now)
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'c', ARGV[6], 'e', e, 's', s, 'd', ARGV[1], 't', now)
return {e, s}
";

const READ_LUA: &str = r"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', e, 's', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
local s = redis.call('HGET', KEYS[1], 's')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local entries
if ARGV[2] == '' then
  entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[3])
else
  entries = redis.call('XRANGE', KEYS[2], ARGV[2], '+', 'COUNT', ARGV[3])
end
return {e, s, now, entries}
";

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
    pub channel_state_ttl: Duration,
    pub history_size: usize,
    pub history_ttl: Duration,
    pub outage_fails_readiness: bool,
    pub node_id: Arc<str>,
}

/// A connection to one Redis or to a Redis Cluster.
#[derive(Clone)]
enum RedisConn {
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
enum Connector {
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
    fn new(target: &RedisTarget, ca_pem: Option<&Vec<u8>>) -> Result<Self, redis::RedisError> {
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

    async fn connect(&self, response_timeout: Duration) -> RedisResult<RedisConn> {
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

    fn cluster_client(&self, response_timeout: Duration) -> RedisResult<ClusterClient> {
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

/// Health of the link to Redis and of each partition reader, for readiness and metrics.
#[derive(Debug, Default)]
struct Health {
    redis_up: AtomicBool,
    /// Milliseconds since `started` when the current outage began (Redis was up before),
    /// and when Redis last came back: readers get `READER_STALL` from then before they count
    /// as stalled, so that a Redis restart does not fail every node's readiness at once.
    down_since_ms: AtomicU64,
    up_since_ms: AtomicU64,
    /// Whether "cannot reach Redis" was logged before the first connection.
    first_failure_logged: AtomicBool,
    /// Whether the command link ever connected; the node is not ready before.
    ever_connected: AtomicBool,
    last_error: Mutex<String>,
    /// Milliseconds since `started` of each reader's last completed read.
    reader_ok_ms: Vec<AtomicU64>,
    /// Entry id (ms part) each reader has reached, for the lag gauge.
    reader_position_ms: Vec<AtomicU64>,
    /// Whether each reader has found its starting point; the node is not ready before.
    reader_started: Vec<AtomicBool>,
    /// Milliseconds since `started` of the watchdog's last restart of each reader.
    reader_restarted_ms: Vec<AtomicU64>,
    /// The last entry id each partition's reader processed. Kept outside the reader task so
    /// that a reader restarted by the watchdog goes on from there instead of skipping ahead.
    reader_cursor: Vec<Mutex<Option<String>>>,
}

impl Health {
    /// Redis answered (a new connection): logs the end of an outage, with its duration.
    fn came_up(&self, now_ms: u64) {
        self.up_since_ms.store(now_ms, Ordering::Release);
        let was_up = self.redis_up.swap(true, Ordering::AcqRel);
        let first = !self.ever_connected.swap(true, Ordering::AcqRel);
        if first {
            tracing::info!("Connected to Redis");
        } else if !was_up {
            let outage_ms = now_ms.saturating_sub(self.down_since_ms.load(Ordering::Acquire));
            tracing::warn!(outage_ms, "Redis reachable again; outage over");
        }
    }

    /// Redis is unreachable: logs once when an outage begins (and once before the first
    /// connection), not for every failed command or reconnect attempt.
    fn went_down(&self, now_ms: u64) {
        if self.redis_up.swap(false, Ordering::AcqRel) {
            self.down_since_ms.store(now_ms, Ordering::Release);
            let last = self.last_error();
            tracing::warn!(
                error = %last,
                "Redis unreachable: outage began (publishes get 503 until it is back)"
            );
        } else if !self.ever_connected.load(Ordering::Acquire)
            && !self.first_failure_logged.swap(true, Ordering::AcqRel)
        {
            let last = self.last_error();
            tracing::warn!(error = %last, "Cannot reach Redis yet; retrying");
        }
    }

    fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn error(&self, op: &'static str, err: &dyn std::fmt::Display) {
        metrics::counter!(telemetry::REDIS_ERRORS, "op" => op).increment(1);
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = format!("{op}: {err}");
    }
}

struct Inner {
    settings: RedisSettings,
    hub: HubHandle,
    connector: Connector,
    /// The shared command connection; `None` while Redis is unreachable.
    conn: ArcSwapOption<RedisConn>,
    reconnect: tokio::sync::Notify,
    publish_script: Script,
    read_script: Script,
    health: Health,
    started: Instant,
    in_flight: AtomicUsize,
    /// Nodes this node saw leave the registry without deregistering (their heartbeat
    /// expired), whose presence it removes.
    departed_nodes: Mutex<Vec<String>>,
}

/// The Redis Streams bus. Cheap to clone.
#[derive(Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("partitions", &self.inner.settings.partitions)
            .finish_non_exhaustive()
    }
}

/// What the node registry needs to say about this node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub ws_addr: std::net::SocketAddr,
    pub control_addr: std::net::SocketAddr,
}

impl RedisBus {
    /// Builds the bus and starts its tasks: the connection keeper, one reader per partition,
    /// the watchdog and the node registry heartbeat. Does not wait for Redis: a node starts
    /// while Redis is down and reports it.
    ///
    /// # Errors
    /// When the Redis URL is malformed.
    pub fn start(
        settings: RedisSettings,
        hub: HubHandle,
        node: NodeInfo,
        tasks: &Shutdown,
        stop: &CancellationToken,
    ) -> Result<Self, redis::RedisError> {
        let connector = Connector::new(&settings.target, settings.ca_pem.as_ref())?;
        let partitions = settings.partitions as usize;
        let inner = Arc::new(Inner {
            connector,
            conn: ArcSwapOption::empty(),
            reconnect: tokio::sync::Notify::new(),
            publish_script: Script::new(PUBLISH_LUA),
            read_script: Script::new(READ_LUA),
            health: Health {
                reader_ok_ms: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
                reader_position_ms: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
                reader_started: (0..partitions).map(|_| AtomicBool::new(false)).collect(),
                reader_restarted_ms: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
                reader_cursor: (0..partitions).map(|_| Mutex::new(None)).collect(),
                ..Health::default()
            },
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            departed_nodes: Mutex::new(Vec::new()),
            settings,
            hub,
        });
        tasks.spawn(keep_connected(Arc::clone(&inner), stop.clone()));
        tasks.spawn(watch_readers(
            Arc::clone(&inner),
            tasks.clone(),
            stop.clone(),
        ));
        tasks.spawn(heartbeat(Arc::clone(&inner), node, stop.clone()));
        Ok(Self { inner })
    }

    /// Cluster-wide presence in the same Redis, members kept for `ttl` past their node's
    /// last refresh.
    #[must_use]
    pub fn presence(&self, ttl: Duration) -> RedisPresence {
        RedisPresence::new(Arc::clone(&self.inner), ttl)
    }

    /// Live nodes from the registry, as JSON objects.
    async fn registered_nodes(&self) -> Result<Vec<serde_json::Value>, BusError> {
        let mut conn = self.inner.conn()?;
        let now = unix_ms();
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(REGISTRY_SET)
            .arg(now)
            .arg("+inf")
            .query_async(&mut conn)
            .await
            .map_err(|err| self.inner.failed("nodes", &err))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids
            .iter()
            .map(|id| format!("{REGISTRY_PREFIX}{id}"))
            .collect();
        let values: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .map_err(|err| self.inner.failed("nodes", &err))?;
        Ok(values
            .into_iter()
            .flatten()
            .filter_map(|text| serde_json::from_str(&text).ok())
            .collect())
    }
}

impl Inner {
    fn conn(&self) -> Result<RedisConn, BusError> {
        match self.conn.load_full() {
            Some(conn) => Ok((*conn).clone()),
            None => Err(BusError::Unreachable),
        }
    }

    /// Records a failed command; connection-level failures drop the connection so the keeper
    /// opens a new one.
    fn failed(&self, op: &'static str, err: &redis::RedisError) -> BusError {
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

    fn partition(&self, channel: &ChannelName) -> u32 {
        // FNV-1a: stable across nodes and releases, unlike std's hasher.
        let mut hash: u32 = 0x811c_9dc5;
        for byte in channel.as_str().bytes() {
            hash ^= u32::from(byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        hash % self.settings.partitions
    }

    fn channel_keys(&self, channel: &ChannelName) -> (String, String, String) {
        let partition = self.partition(channel);
        (
            format!("sb:{{sb:{partition}}}:meta:{channel}"),
            format!("sb:{{sb:{partition}}}:hist:{channel}"),
            bus_key(partition),
        )
    }

    fn state_ttl_ms(&self) -> u64 {
        u64::try_from(self.settings.channel_state_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Lifetime of the state a read creates for a channel that never had a message: as long
    /// as history would keep one (at least a second, at most `channel_state_ttl`), so that
    /// subscribes to names nobody publishes on leave nothing behind for a day. The first
    /// publish extends it to `channel_state_ttl`.
    fn fresh_state_ttl_ms(&self) -> u64 {
        let ttl = self
            .settings
            .history_ttl
            .max(Duration::from_secs(1))
            .min(self.settings.channel_state_ttl);
        u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
    }

    async fn publish(&self, channel: &ChannelName, data: &str) -> Result<Offset, BusError> {
        let mut conn = self.conn()?;
        let (meta, hist, bus) = self.channel_keys(channel);
        let depth = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::histogram!(telemetry::REDIS_PIPELINE_DEPTH).record(depth as f64);
        let mut invocation = self.publish_script.key(&meta);
        invocation
            .key(&hist)
            .key(&bus)
            .arg(data)
            .arg(format!("{:016x}", rand::random::<u64>()))
            .arg(self.settings.history_size)
            .arg(self.state_ttl_ms())
            .arg(self.settings.bus_maxlen)
            .arg(channel.as_str());
        let result = tokio::time::timeout(
            self.settings.publish_timeout,
            invocation.invoke_async::<(String, u64)>(&mut conn),
        )
        .await;
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(Ok((epoch, seq))) => Ok(Offset {
                epoch: parse_epoch(&epoch)
                    .ok_or(BusError::BadReply("redis returned a bad epoch"))?,
                seq,
            }),
            Ok(Err(err)) => Err(self.failed("publish", &err)),
            Err(_elapsed) => {
                let err = redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "publish timed out",
                ));
                Err(self.failed("publish", &err))
            }
        }
    }

    /// Runs the read script: the channel's epoch and seq, Redis time, and history entries
    /// after `since` (or the newest `limit`). A read is safe to repeat, so one that finds
    /// the connection broken waits briefly for the keeper's new one and tries once more.
    async fn read(
        &self,
        channel: &ChannelName,
        since: Option<Offset>,
        limit: usize,
    ) -> Result<ChannelRead, BusError> {
        match self.read_once(channel, since, limit).await {
            Err(BusError::Failed) => {
                let deadline = Instant::now() + self.settings.publish_timeout;
                while self.conn.load().is_none() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                self.read_once(channel, since, limit).await
            }
            other => other,
        }
    }

    async fn read_once(
        &self,
        channel: &ChannelName,
        since: Option<Offset>,
        limit: usize,
    ) -> Result<ChannelRead, BusError> {
        let mut conn = self.conn()?;
        let (meta, hist, _) = self.channel_keys(channel);
        let start = since.map_or(String::new(), |since| format!("{}-0", since.seq + 1));
        let mut invocation = self.read_script.key(&meta);
        invocation
            .key(&hist)
            .arg(format!("{:016x}", rand::random::<u64>()))
            .arg(start)
            .arg(limit.max(1))
            .arg(self.fresh_state_ttl_ms());
        let value = tokio::time::timeout(
            self.settings.publish_timeout,
            invocation.invoke_async::<Value>(&mut conn),
        )
        .await
        .map_err(|_| BusError::TimedOut)?
        .map_err(|err| self.failed("read", &err))?;
        let mut read =
            ChannelRead::parse(value).ok_or(BusError::BadReply("redis returned a bad reply"))?;
        let ttl_ms = u64::try_from(self.settings.history_ttl.as_millis()).unwrap_or(u64::MAX);
        let oldest_ms = read.now_ms.saturating_sub(ttl_ms);
        read.entries.retain(|entry| entry.time_ms >= oldest_ms);
        if since.is_none() {
            read.entries.reverse();
        }
        Ok(read)
    }
}

/// One channel read from Redis.
#[derive(Debug)]
struct ChannelRead {
    epoch: u64,
    seq: u64,
    now_ms: u64,
    entries: Vec<ReadEntry>,
}

#[derive(Debug)]
struct ReadEntry {
    seq: u64,
    time_ms: u64,
    data: String,
}

impl ChannelRead {
    fn parse(value: Value) -> Option<Self> {
        let Value::Array(mut parts) = value else {
            return None;
        };
        if parts.len() != 4 {
            return None;
        }
        let entries = parts.pop()?;
        let now_ms = as_u64(&parts.pop()?)?;
        let seq = as_u64(&parts.pop()?)?;
        let epoch = parse_epoch(&as_string(&parts.pop()?)?)?;
        let Value::Array(entries) = entries else {
            return None;
        };
        let entries = entries
            .into_iter()
            .map(|entry| {
                let Value::Array(mut pair) = entry else {
                    return None;
                };
                let fields = pair.pop()?;
                let id = as_string(&pair.pop()?)?;
                let seq = id.split_once('-')?.0.parse().ok()?;
                let mut data = None;
                let mut time_ms = 0;
                if let Value::Array(fields) = fields {
                    for pair in fields.chunks(2) {
                        match (as_string(&pair[0]).as_deref(), pair.get(1)) {
                            (Some("d"), Some(value)) => data = as_string(value),
                            (Some("t"), Some(value)) => time_ms = as_u64(value).unwrap_or(0),
                            _ => {}
                        }
                    }
                }
                Some(ReadEntry {
                    seq,
                    time_ms,
                    data: data?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            epoch,
            seq,
            now_ms,
            entries,
        })
    }

    /// Whether the entries hold every message after `since` up to `self.seq`.
    fn covers(&self, since: Offset) -> bool {
        if since.epoch != self.epoch || since.seq > self.seq {
            return false;
        }
        let needed = self.seq - since.seq;
        let contiguous = self
            .entries
            .iter()
            .zip(since.seq + 1..)
            .all(|(entry, expected)| entry.seq == expected);
        contiguous && self.entries.len() as u64 == needed
    }
}

impl RedisBus {
    /// Appends a request entry (`fields`, name-value pairs) to a bus stream: partition 0's
    /// for requests about users (every node follows it), the channel's partition's for a
    /// channel's events (so they keep its order). `op` names it in errors.
    async fn append(
        &self,
        stream: String,
        fields: &[(&str, &str)],
        op: &'static str,
    ) -> Result<(), BusError> {
        let inner = &self.inner;
        let mut conn = inner.conn()?;
        let mut command = redis::cmd("XADD");
        command
            .arg(stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(inner.settings.bus_maxlen)
            .arg("*");
        for (name, value) in fields {
            command.arg(*name).arg(*value);
        }
        tokio::time::timeout(
            inner.settings.publish_timeout,
            command.query_async::<Value>(&mut conn),
        )
        .await
        .map_err(|_| BusError::TimedOut)?
        .map_err(|err| inner.failed(op, &err))?;
        Ok(())
    }

    /// Closes `user`'s connections here, and asks every other node to (entries with `k` =
    /// `disconnect` carry no message; this node skips its own by `n`).
    async fn disconnect_user_everywhere(
        &self,
        user: &str,
        code: CloseCode,
    ) -> Result<usize, BusError> {
        let closed = self.inner.hub.disconnect_user(user, code);
        let code = code.code().to_string();
        let fields = [
            ("k", "disconnect"),
            ("u", user),
            ("n", &*self.inner.settings.node_id),
            ("x", code.as_str()),
        ];
        self.append(bus_key(0), &fields, "disconnect").await?;
        Ok(closed)
    }

    /// Tells `user`'s connections here, and every other node (this one skips its own by
    /// `n`).
    async fn command_user_everywhere(
        &self,
        user: &str,
        command: SessionCommand,
    ) -> Result<usize, BusError> {
        let told = self.inner.hub.command_user(user, &command);
        let (kind, channel) = match &command {
            SessionCommand::Subscribe(channel) => ("subscribe", channel),
            SessionCommand::Unsubscribe(channel) => ("unsubscribe", channel),
        };
        let fields = [
            ("k", kind),
            ("u", user),
            ("c", channel.as_str()),
            ("n", &*self.inner.settings.node_id),
        ];
        self.append(bus_key(0), &fields, kind).await?;
        Ok(told)
    }

    /// Appends an event frame to the channel's partition stream, where every node (this one
    /// too) reads it in order with the channel's messages and hands it to `Hub::announce`.
    async fn append_event(&self, channel: &ChannelName, text: String) -> Result<(), BusError> {
        let (_, _, stream) = self.inner.channel_keys(channel);
        let fields = [
            ("k", "event"),
            ("c", channel.as_str()),
            ("d", text.as_str()),
        ];
        self.append(stream, &fields, "announce").await
    }
}

impl Bus for RedisBus {
    fn command_user<'a>(
        &'a self,
        user: &'a str,
        command: SessionCommand,
    ) -> BusFuture<'a, Result<usize, BusError>> {
        Box::pin(self.command_user_everywhere(user, command))
    }

    fn announce<'a>(
        &'a self,
        channel: &'a ChannelName,
        text: String,
    ) -> BusFuture<'a, Result<(), BusError>> {
        Box::pin(self.append_event(channel, text))
    }

    fn disconnect_user<'a>(
        &'a self,
        user: &'a str,
        code: CloseCode,
    ) -> BusFuture<'a, Result<usize, BusError>> {
        Box::pin(self.disconnect_user_everywhere(user, code))
    }

    fn publish<'a>(
        &'a self,
        channel: &'a ChannelName,
        data: &'a str,
        // Nothing to write here: this node's subscribers get the message from its partition
        // reader, in bus order.
        _writes: &'a mut WriteBatch,
    ) -> BusFuture<'a, Result<Offset, BusError>> {
        Box::pin(async move {
            let offset = self.inner.publish(channel, data).await?;
            telemetry::metrics().messages_published.increment(1);
            Ok(offset)
        })
    }

    fn read_channel<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: Option<Offset>,
        limit: usize,
    ) -> BusFuture<'a, Result<RemoteView, BusError>> {
        Box::pin(async move {
            let read = self.inner.read(channel, since, limit).await?;
            let complete = since.is_some_and(|since| read.covers(since));
            Ok(RemoteView {
                epoch: read.epoch,
                seq: read.seq,
                complete,
                entries: read
                    .entries
                    .into_iter()
                    .map(|entry| (entry.seq, entry.data))
                    .collect(),
            })
        })
    }

    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: Option<Offset>,
        limit: usize,
    ) -> BusFuture<'a, Result<History, BusError>> {
        Box::pin(async move {
            let read = self.inner.read(channel, since, limit).await?;
            let offset = Offset {
                epoch: read.epoch,
                seq: read.seq,
            };
            // Like a resume: the messages returned must start right after `since`.
            let recovered = since.map(|since| {
                since.epoch == read.epoch
                    && (since.seq == read.seq
                        || read
                            .entries
                            .first()
                            .is_some_and(|first| first.seq == since.seq + 1))
            });
            let messages = if recovered == Some(false) {
                Vec::new()
            } else {
                read.entries
                    .into_iter()
                    .map(|entry| {
                        (
                            Offset {
                                epoch: read.epoch,
                                seq: entry.seq,
                            },
                            HistoryData::from_data(entry.data),
                        )
                    })
                    .collect()
            };
            Ok(History {
                offset,
                recovered,
                messages,
            })
        })
    }

    fn unready_reasons(&self) -> Vec<String> {
        let health = &self.inner.health;
        let mut reasons = Vec::new();
        // A node that has not yet found its place in every partition cannot deliver what is
        // published elsewhere: never ready before that, outage or not.
        let starting = health
            .reader_started
            .iter()
            .filter(|started| !started.load(Ordering::Acquire))
            .count();
        if starting > 0 {
            reasons.push(format!("{starting} bus partition readers starting"));
        }
        if !health.ever_connected.load(Ordering::Acquire) {
            reasons.push("connecting to redis".to_owned());
        }
        let redis_up = health.redis_up.load(Ordering::Acquire);
        if !redis_up && self.inner.settings.outage_fails_readiness {
            reasons.push("redis unreachable".to_owned());
        }
        if redis_up {
            for partition in stalled_readers(&self.inner) {
                reasons.push(format!("bus reader for partition {partition} is stalled"));
            }
        }
        reasons
    }

    fn details(&self) -> Vec<String> {
        let health = &self.inner.health;
        if health.redis_up.load(Ordering::Acquire) {
            return Vec::new();
        }
        vec![format!("redis unreachable ({})", health.last_error())]
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn nodes(&self) -> BusFuture<'_, Result<Vec<serde_json::Value>, BusError>> {
        Box::pin(self.registered_nodes())
    }
}

fn bus_key(partition: u32) -> String {
    format!("sb:{{sb:{partition}}}:bus")
}

fn parse_epoch(text: &str) -> Option<u64> {
    u64::from_str_radix(text, 16).ok()
}

fn as_string(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => as_string(other)?.parse().ok(),
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

fn since_start_ms(inner: &Inner) -> u64 {
    u64::try_from(inner.started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn stalled_readers(inner: &Inner) -> Vec<usize> {
    let now = since_start_ms(inner);
    let stall = u64::try_from(READER_STALL.as_millis()).unwrap_or(u64::MAX);
    // Readers failed during an outage; they get a stall period from Redis's return.
    let up_since = inner.health.up_since_ms.load(Ordering::Acquire);
    inner
        .health
        .reader_ok_ms
        .iter()
        .enumerate()
        .filter(|(_, ok)| now.saturating_sub(ok.load(Ordering::Relaxed).max(up_since)) > stall)
        .map(|(partition, _)| partition)
        .collect()
}

/// Keeps the shared command connection open: reconnects with backoff whenever it is lost.
async fn keep_connected(inner: Arc<Inner>, stop: CancellationToken) {
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
                        inner.conn.store(Some(Arc::new(conn)));
                        inner.health.came_up(since_start_ms(&inner));
                        metrics::counter!(telemetry::REDIS_RECONNECTS).increment(1);
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

/// Starts one reader per partition and restarts any that is stuck while Redis answers.
async fn watch_readers(inner: Arc<Inner>, tasks: Shutdown, stop: CancellationToken) {
    let partitions = inner.settings.partitions;
    let mut readers: Vec<_> = (0..partitions)
        .map(|partition| tasks.spawn(read_partition(Arc::clone(&inner), partition, stop.clone())))
        .collect();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !inner.health.redis_up.load(Ordering::Acquire) {
            continue;
        }
        let now = since_start_ms(&inner);
        let grace = u64::try_from(READER_STALL.as_millis()).unwrap_or(u64::MAX);
        for partition in stalled_readers(&inner) {
            // Readiness stays failed until the reader completes a read again; restarts are
            // spaced by the stall period so a reader that cannot get through is not
            // restarted every second.
            let restarted = &inner.health.reader_restarted_ms[partition];
            if now.saturating_sub(restarted.load(Ordering::Relaxed)) < grace {
                continue;
            }
            restarted.store(now, Ordering::Relaxed);
            tracing::warn!(
                partition,
                "Bus reader stalled while Redis answers; restarting it"
            );
            metrics::counter!(telemetry::BUS_READER_RESTARTS).increment(1);
            readers[partition].abort();
            let partition_u32 = u32::try_from(partition).expect("partitions fit in u32");
            readers[partition] = tasks.spawn(read_partition(
                Arc::clone(&inner),
                partition_u32,
                stop.clone(),
            ));
        }
        record_partition_lag(&inner).await;
    }
}

/// Sets each partition's lag gauge: how far (by entry time, which Redis assigns, so no clock
/// skew enters) the entry this node has read trails the newest entry of the stream.
async fn record_partition_lag(inner: &Inner) {
    let Ok(mut conn) = inner.conn() else { return };
    for (partition, position) in inner.health.reader_position_ms.iter().enumerate() {
        let key = bus_key(u32::try_from(partition).unwrap_or(u32::MAX));
        let newest = tokio::time::timeout(
            inner.settings.publish_timeout,
            redis::cmd("XREVRANGE")
                .arg(&key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async::<Value>(&mut conn),
        )
        .await;
        let Ok(Ok(Value::Array(entries))) = newest else {
            return;
        };
        let newest_ms = entries
            .first()
            .and_then(|entry| match entry {
                Value::Array(pair) => pair.first().and_then(as_string),
                _ => None,
            })
            .and_then(|id| {
                id.split_once('-')
                    .and_then(|(ms, _)| ms.parse::<u64>().ok())
            })
            .unwrap_or(0);
        let position = position.load(Ordering::Relaxed);
        let lag = newest_ms.saturating_sub(position) as f64 / 1000.0;
        metrics::gauge!(telemetry::BUS_PARTITION_AGE, "partition" => partition.to_string())
            .set(lag);
    }
}

/// Follows one partition stream from the last entry seen, across reconnects.
async fn read_partition(inner: Arc<Inner>, partition: u32, stop: CancellationToken) {
    let key = bus_key(partition);
    let index = partition as usize;
    let saved_cursor = &inner.health.reader_cursor[index];
    let mut last_id: Option<String> = saved_cursor
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut backoff = Duration::from_millis(50);
    let read_timeout = BLOCK + inner.settings.publish_timeout + Duration::from_secs(1);
    loop {
        if stop.is_cancelled() {
            return;
        }
        // A dedicated connection: a blocking XREAD would stall a shared one.
        let connected = tokio::select! {
            () = stop.cancelled() => return,
            connected = inner.connector.connect(read_timeout) => connected,
        };
        let mut conn = match connected {
            Ok(conn) => conn,
            Err(err) => {
                inner.health.error("read_connect", &err);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if last_id.is_none() {
            // First start: begin after the newest entry. Later reconnects go on from the last
            // entry seen, so nothing published during an outage is skipped.
            let newest: RedisResult<Value> = redis::cmd("XREVRANGE")
                .arg(&key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await;
            match newest {
                Ok(Value::Array(entries)) => {
                    last_id = Some(
                        entries
                            .first()
                            .and_then(|entry| match entry {
                                Value::Array(pair) => pair.first().and_then(as_string),
                                _ => None,
                            })
                            .unwrap_or_else(|| "0-0".to_owned()),
                    );
                }
                Ok(_) => last_id = Some("0-0".to_owned()),
                Err(err) => {
                    inner.health.error("read", &err);
                    continue;
                }
            }
        }
        backoff = Duration::from_millis(50);
        saved_cursor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone_from(&last_id);
        inner.health.reader_started[index].store(true, Ordering::Release);
        if let Some(ms) = last_id
            .as_deref()
            .and_then(|id| id.split_once('-'))
            .and_then(|(ms, _)| ms.parse().ok())
        {
            inner.health.reader_position_ms[index].fetch_max(ms, Ordering::Relaxed);
        }
        loop {
            let cursor = last_id.clone().unwrap_or_else(|| "0-0".to_owned());
            let mut xread = redis::cmd("XREAD");
            xread
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(u64::try_from(BLOCK.as_millis()).unwrap_or(1000))
                .arg("STREAMS")
                .arg(&key)
                .arg(&cursor);
            let read = tokio::select! {
                () = stop.cancelled() => return,
                read = tokio::time::timeout(read_timeout, xread.query_async::<Value>(&mut conn)) => read,
            };
            let value = match read {
                Ok(Ok(value)) => value,
                Ok(Err(err)) => {
                    inner.health.error("read", &err);
                    break;
                }
                Err(_) => {
                    inner.health.error("read", &"XREAD timed out");
                    break;
                }
            };
            inner.health.reader_ok_ms[index].store(since_start_ms(&inner), Ordering::Relaxed);
            if let Some(new_last) = deliver_batch(&inner, value) {
                if let Some(ms) = new_last.split_once('-').and_then(|(ms, _)| ms.parse().ok()) {
                    inner.health.reader_position_ms[index].store(ms, Ordering::Relaxed);
                }
                // A short critical section, never across an await.
                *saved_cursor.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(new_last.clone());
                last_id = Some(new_last);
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Hands one `XREAD` reply to the hub. Returns the last entry id, if any.
fn deliver_batch(inner: &Inner, value: Value) -> Option<String> {
    // Reply shape: [[key, [[id, [field, value, ...]], ...]]], or nil on timeout.
    let Value::Array(streams) = value else {
        return None;
    };
    let mut last_id = None;
    let now_ms = unix_ms();
    let mut n_entries = 0_u32;
    // Written when the reply is handed over: a connection that several of its entries
    // reach gets one `writev`.
    let mut writes = inner.hub.write_batch();
    for stream in streams {
        let Value::Array(mut key_and_entries) = stream else {
            continue;
        };
        let Some(Value::Array(entries)) = key_and_entries.pop() else {
            continue;
        };
        for entry in entries {
            let Value::Array(mut pair) = entry else {
                continue;
            };
            let Some(fields) = pair.pop() else { continue };
            let Some(id) = pair.pop().as_ref().and_then(as_string) else {
                continue;
            };
            n_entries += 1;
            if let Some(request) = Request::parse(&fields, &inner.settings.node_id) {
                match request {
                    Request::Event { channel, text } => {
                        inner.hub.announce(&channel, text, &mut writes);
                    }
                    Request::Command { user, command } => {
                        inner.hub.command_user(&user, &command);
                    }
                    Request::Disconnect { user, code } => {
                        let closed = inner.hub.disconnect_user(&user, code);
                        tracing::info!(
                            %user,
                            closed,
                            code = code.code(),
                            "Disconnect of a user requested through the bus"
                        );
                    }
                    Request::Own => {}
                }
            } else if let Some(message) = BusEntry::parse(&fields) {
                let offset = Offset {
                    epoch: message.epoch,
                    seq: message.seq,
                };
                if inner
                    .hub
                    .deliver_batched(&message.channel, offset, &message.data, &mut writes)
                    > 0
                {
                    let lag = now_ms.saturating_sub(message.time_ms) as f64 / 1000.0;
                    metrics::histogram!(telemetry::BUS_LAG).record(lag);
                }
            } else {
                tracing::warn!(%id, "Malformed bus entry skipped");
            }
            last_id = Some(id);
        }
    }
    metrics::histogram!(telemetry::BUS_READ_BATCH).record(f64::from(n_entries));
    last_id
}

/// What a bus entry with a `k` field asks every node to do (entries without one are
/// messages, [`BusEntry`]).
enum Request {
    /// A channel's `join`/`leave` frame (`k=event`, `c`, `d`), for `Hub::announce`.
    Event { channel: String, text: String },
    /// `k=disconnect`, `u`, `x`: close a user's connections.
    Disconnect { user: String, code: CloseCode },
    /// `k=subscribe|unsubscribe`, `u`, `c`: for a user's sessions.
    Command {
        user: String,
        command: SessionCommand,
    },
    /// A request about users this node wrote: it acted on it already.
    Own,
}

impl Request {
    /// `None` for an entry without `k` (a message), or one that does not parse (the caller
    /// then reports it as malformed).
    fn parse(fields: &Value, node_id: &str) -> Option<Self> {
        let Value::Array(fields) = fields else {
            return None;
        };
        let (mut kind, mut user, mut node, mut channel, mut text, mut code) =
            (None, None, None, None, None, None);
        for pair in fields.chunks(2) {
            let value = pair.get(1)?;
            match as_string(&pair[0])?.as_str() {
                "k" => kind = as_string(value),
                "u" => user = as_string(value),
                "n" => node = as_string(value),
                "c" => channel = as_string(value),
                "d" => text = as_string(value),
                "x" => code = as_u64(value),
                _ => {}
            }
        }
        let kind = kind?;
        if node.as_deref() == Some(node_id) && kind != "event" {
            return Some(Self::Own);
        }
        match kind.as_str() {
            "event" => channel
                .zip(text)
                .map(|(channel, text)| Self::Event { channel, text }),
            "disconnect" => user.map(|user| Self::Disconnect {
                user,
                code: code
                    .and_then(|code| u16::try_from(code).ok())
                    .and_then(CloseCode::from_code)
                    .unwrap_or(CloseCode::Disconnected),
            }),
            "subscribe" | "unsubscribe" => user
                .zip(channel.and_then(|channel| ChannelName::parse(&channel, usize::MAX).ok()))
                .map(|(user, channel)| Self::Command {
                    user,
                    command: if kind == "subscribe" {
                        SessionCommand::Subscribe(channel)
                    } else {
                        SessionCommand::Unsubscribe(channel)
                    },
                }),
            _ => None,
        }
    }
}

struct BusEntry {
    channel: String,
    epoch: u64,
    seq: u64,
    data: String,
    time_ms: u64,
}

impl BusEntry {
    fn parse(fields: &Value) -> Option<Self> {
        let Value::Array(fields) = fields else {
            return None;
        };
        let (mut channel, mut epoch, mut seq, mut data, mut time_ms) = (None, None, None, None, 0);
        for pair in fields.chunks(2) {
            let value = pair.get(1)?;
            match as_string(&pair[0])?.as_str() {
                "c" => channel = as_string(value),
                "e" => epoch = as_string(value).as_deref().and_then(parse_epoch),
                "s" => seq = as_u64(value),
                "d" => data = as_string(value),
                "t" => time_ms = as_u64(value).unwrap_or(0),
                _ => {}
            }
        }
        Some(Self {
            channel: channel?,
            epoch: epoch?,
            seq: seq?,
            data: data?,
            time_ms,
        })
    }
}

/// Takes nodes whose registry entry expired (they died without deregistering) out of the
/// registry; the one node whose `ZREM` removes a node's entry also removes its presence.
async fn remove_expired(inner: &Inner, conn: &mut RedisConn, expired: Vec<String>) {
    for node in expired {
        match redis::cmd("ZREM")
            .arg(REGISTRY_SET)
            .arg(&node)
            .query_async::<u64>(conn)
            .await
        {
            Ok(1) => {
                tracing::warn!(%node, "A node left the registry without deregistering");
                inner
                    .departed_nodes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(node);
            }
            Ok(_) => {}
            Err(err) => {
                inner.failed("heartbeat", &err);
                return;
            }
        }
    }
}

/// Registers this node in Redis every `NODE_HEARTBEAT`, with a TTL.
async fn heartbeat(inner: Arc<Inner>, node: NodeInfo, stop: CancellationToken) {
    let started_unix_ms = unix_ms();
    let ttl_ms = u64::try_from(NODE_TTL.as_millis()).unwrap_or(10_000);
    let mut registered = false;
    loop {
        // Until the first registration succeeds, retry soon: a new node should be listed as
        // soon as Redis can be reached.
        let pause = if registered {
            NODE_HEARTBEAT
        } else {
            Duration::from_millis(100)
        };
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
        let Ok(mut conn) = inner.conn() else { continue };
        let id = &*inner.settings.node_id;
        let info = serde_json::json!({
            "node": id,
            "ws_addr": node.ws_addr.to_string(),
            "control_addr": node.control_addr.to_string(),
            "connections": inner.hub.connections(),
            "started_unix_ms": started_unix_ms,
        });
        let now = unix_ms();
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(format!("{REGISTRY_PREFIX}{id}"))
            .arg(info.to_string())
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("ZADD")
            .arg(REGISTRY_SET)
            .arg(now + ttl_ms)
            .arg(id)
            .ignore()
            .cmd("ZRANGEBYSCORE")
            .arg(REGISTRY_SET)
            .arg("-inf")
            .arg(format!("({now}"));
        match pipe.query_async::<(Vec<String>,)>(&mut conn).await {
            Ok((expired,)) => {
                registered = true;
                remove_expired(&inner, &mut conn, expired).await;
            }
            Err(err) => {
                inner.failed("heartbeat", &err);
            }
        }
    }
    // Leave the registry at once on shutdown rather than after the TTL.
    if let Ok(mut conn) = inner.conn() {
        let id = &*inner.settings.node_id;
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(format!("{REGISTRY_PREFIX}{id}"))
            .ignore();
        pipe.cmd("ZREM").arg(REGISTRY_SET).arg(id).ignore();
        let _ =
            tokio::time::timeout(Duration::from_secs(1), pipe.query_async::<()>(&mut conn)).await;
    }
}
