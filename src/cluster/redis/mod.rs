//! The clustered bus: Redis Streams as both the cross-node bus and the resume log.
//!
//! Keys (`P` is a channel's partition, `hash(channel) % partitions`; the `{sb:P}` hash tag puts
//! every key of a partition in one Redis Cluster slot):
//! - `sb:{sb:P}:bus`: the partition stream every node reads. Entry fields: `c` channel,
//!   `e` epoch, `s` seq, `d` data, `t` Redis time in ms. Every append trims it to about
//!   `cluster.bus_maxlen` entries and drops whole stream nodes older than
//!   `cluster.bus_max_age`.
//! - `sb:{sb:P}:meta:<channel>`: hash with the channel's epoch `e`, last seq `s` and floor
//!   `f`; expires `cluster.channel_state_ttl` after the last publish.
//! - `sb:{sb:P}:hist:<channel>`: the channel's history stream, entry id `<seq>-0`, fields `d`
//!   and `t`, capped at `history.size`; each publish drops its entries older than
//!   `history.ttl`, and it expires `history.ttl` after the last publish.
//! - `sb:{sb:P}:born`: the Redis time (ms) the partition's keys began, set once per Redis
//!   life by the first node to connect (or publish).
//! - `sb:{sb:P}:int:<channel>`: hash of the node processes following the channel (field
//!   `<node>:<incarnation>`, value: Redis ms it expires at); `int:!users` is every node's.
//! - `sb:{sb:P}:in:<node>:<incarnation>`: a process's inbox, the partition's entries for the
//!   channels it follows, under the log's entry ids.
//!
//! One Lua script per publish bumps the seq, appends to history, to the bus and to the
//! interested nodes' inboxes: the live bus and the resume log cannot disagree. A channel whose meta hash is gone (Redis restarted
//! empty, or the state expired) gets a new random epoch, so stale offsets are recognised.
//! Only a publish creates a channel's keys: a read of a channel without state writes nothing
//! and answers an *absent epoch* (the Redis time of the read) with seq 0, which a later
//! resume takes for the start of the channel's first instance while `born` and
//! `channel_state_ttl` prove no other instance came and went meanwhile.
//!
//! Every node follows each partition (its own inbox, or with `bus_routing = "log"` the log)
//! with blocking `XREAD`s from the last entry id it saw (never `$` after a reconnect) and
//! hands entries to [`Hub::deliver`], which keeps those with local interest and drops
//! duplicates.
//!
//! Files: `connection` (opening connections, the shared command connection and reopening
//! it), `scripts` (the publish and read scripts and the parsing of their replies),
//! `streams_lua` and `streams` (messages with ids: the operation script, the history trim
//! both scripts share, reading states, the sweep of idle streams), `follow` (the partition
//! readers and their watchdog), `entries` (the bus entries as read), `interest` (what routes
//! channels to this node's inboxes: renewal, removal, repair from the log), `registry` (the
//! node registry and its heartbeat), `health` (outages, stalled readers, readiness),
//! `presence` (members per channel).

mod blocks;
mod clock;
mod connection;
mod deliver;
mod entries;
mod follow;
mod health;
mod interest;
mod keys;
mod occupancy;
mod presence;
mod read;
mod registry;
mod revocations;
mod scripts;
mod settings;
mod stored;
mod streams;
mod streams_lua;
mod user_conns;
mod values;

pub use self::{occupancy::RedisOccupancy, presence::RedisPresence, settings::RedisSettings};

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize},
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use redis::{Script, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::{
    clock::{on_time_ms, since_start_ms, unix_ms},
    connection::{Connector, RedisConn, keep_connected},
    follow::watch_readers,
    health::Health,
    keys::{ChannelKeys, USERS_INTEREST, born_key, bus_key, inbox_prefix, interest_key, open_key},
    registry::start_heartbeat,
    scripts::{APPEND_LUA, BORN_LUA, FORGET_LUA, INTEREST_LUA, PUBLISH_LUA, READ_LUA, ROUTE_LUA},
    streams_lua::{HISTORY_LUA, OP_LUA},
};
use super::{ApplyError, Bus, BusError, BusFuture, NodeEntry, NodeInfo, RevokeFailed, UserLimit};
use crate::revocations::Revocation;
use crate::{
    config::BusRouting,
    hub::{
        Applied, ConnId, Editor, HistoryPage, HubHandle, Op, RemoteView, SessionCommand, WriteBatch,
    },
    protocol::{ChannelName, CloseCode, Offset},
    shutdown::TaskGroup,
    telemetry,
};

struct Inner {
    settings: RedisSettings,
    hub: HubHandle,
    connector: Connector,
    /// The shared command connection; `None` while Redis is unreachable.
    conn: ArcSwapOption<RedisConn>,
    reconnect: tokio::sync::Notify,
    publish_script: Script,
    op_script: Script,
    append_script: Script,
    interest_script: Script,
    forget_script: Script,
    read_script: Script,
    born_script: Script,
    /// `revoke.lua`: takes a revocation into the cluster's list and logs it.
    revoke_script: Script,
    /// `user_conns.lua`: counts a connection as its user's (`limits.max_connections_per_user`).
    user_conns_script: Script,
    /// `rate.lua`: hands out grants of a rate budget (`crate::rates`).
    rate_script: Script,
    /// The processes the registry said were alive, for `user_conns_script`.
    live_processes: Mutex<user_conns::LiveProcesses>,
    /// Connections counted as their user's that closed, for `user_conns::forget_closed`.
    closed_users: tokio::sync::mpsc::UnboundedSender<(Arc<str>, ConnId)>,
    health: Health,
    started: Instant,
    in_flight: AtomicUsize,
    /// Nodes this node saw leave the registry without deregistering (their heartbeat
    /// expired), whose presence it removes.
    departed_nodes: Mutex<Vec<String>>,
    /// Per partition, the channels this node has written its interest in (before the
    /// subscribe's read that writes it): what its renewals keep alive, and what the readers
    /// remove from Redis once the hub no longer holds the channel.
    interest: Vec<Mutex<HashSet<ChannelName>>>,
    /// This process's id among the processes that ran under this node id (a random number in
    /// 2^47..2^48): what an earlier process left in Redis (presence, the registry entry) is
    /// told apart by it.
    incarnation: Arc<str>,
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
        tasks: &TaskGroup,
        stop: &CancellationToken,
    ) -> Result<Self, redis::RedisError> {
        let connector = Connector::new(&settings.target, settings.ca_pem.as_ref())?;
        telemetry::redis_registered();
        let partitions = settings.partitions as usize;
        let (closed_users, closed_users_rx) = tokio::sync::mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            connector,
            conn: ArcSwapOption::empty(),
            reconnect: tokio::sync::Notify::new(),
            publish_script: Script::new(&format!("{ROUTE_LUA}{HISTORY_LUA}{PUBLISH_LUA}")),
            op_script: Script::new(&format!("{ROUTE_LUA}{HISTORY_LUA}{OP_LUA}")),
            append_script: Script::new(&format!("{ROUTE_LUA}{APPEND_LUA}")),
            interest_script: Script::new(INTEREST_LUA),
            forget_script: Script::new(FORGET_LUA),
            read_script: Script::new(&format!("{HISTORY_LUA}{READ_LUA}")),
            born_script: Script::new(BORN_LUA),
            revoke_script: Script::new(include_str!("lua/revoke.lua")),
            user_conns_script: Script::new(include_str!("lua/user_conns.lua")),
            rate_script: Script::new(include_str!("lua/rate.lua")),
            live_processes: Mutex::default(),
            closed_users,
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
            interest: (0..partitions)
                .map(|_| Mutex::new(HashSet::new()))
                .collect(),
            // A number above 2^47: see the `pn` hash in `presence`.
            incarnation: ((rand::random::<u64>() >> 17) | (1 << 47))
                .to_string()
                .into(),
            settings,
            hub,
        });
        tasks.spawn(keep_connected(Arc::clone(&inner), stop.clone()));
        tasks.spawn(watch_readers(
            Arc::clone(&inner),
            tasks.clone(),
            stop.clone(),
        ));
        start_heartbeat(Arc::clone(&inner), node, tasks, stop);
        tasks.spawn(blocks::keep_blocks(Arc::clone(&inner), stop.clone()));
        tasks.spawn(user_conns::forget_closed(
            Arc::clone(&inner),
            closed_users_rx,
            stop.clone(),
        ));
        tasks.spawn(revocations::keep_revocations(
            Arc::clone(&inner),
            stop.clone(),
        ));
        tasks.spawn(streams::sweep_idle_streams(
            Arc::clone(&inner),
            stop.clone(),
        ));
        Ok(Self { inner })
    }

    /// Cluster-wide presence in the same Redis, members kept for `ttl` past their node's
    /// last refresh.
    #[must_use]
    pub fn presence(&self, ttl: Duration) -> RedisPresence {
        RedisPresence::new(Arc::clone(&self.inner), ttl)
    }

    /// Which nodes hold subscribers of each channel, in the same Redis.
    #[must_use]
    pub fn occupancy(&self) -> RedisOccupancy {
        RedisOccupancy::new(Arc::clone(&self.inner))
    }
}

impl Inner {
    fn partition(&self, channel: &ChannelName) -> u32 {
        channel.stable_hash() % self.settings.partitions
    }

    /// The keys a publish or a read of `channel` touches, its partition hashed once.
    fn channel_keys(&self, channel: &ChannelName) -> ChannelKeys {
        ChannelKeys::new(self.partition(channel), channel)
    }

    /// Whether this node reads its inboxes (`cluster.bus_routing = "inbox"`) rather than the
    /// partitions' logs.
    fn reads_inbox(&self) -> bool {
        self.settings.routing == BusRouting::Inbox
    }

    /// This process's name in interest hashes, and its inboxes' name after the partition's
    /// inbox prefix: `<node>:<incarnation>`, so that a process restarted under the same id
    /// starts from empty inboxes and its predecessor's interest simply expires.
    fn inbox_name(&self) -> String {
        format!("{}:{}", self.settings.node_id, self.incarnation)
    }

    /// The stream a partition reader follows: this process's inbox, or the partition's log.
    fn reader_key(&self, partition: u32) -> String {
        if self.reads_inbox() {
            format!("{}{}", inbox_prefix(partition), self.inbox_name())
        } else {
            bus_key(partition)
        }
    }

    fn interest_ttl_ms(&self) -> u64 {
        u64::try_from(self.settings.interest_ttl.as_millis()).unwrap_or(u64::MAX)
    }
}

impl RedisBus {
    /// Appends a request entry (`fields`, name-value pairs) to a bus stream: partition 0's
    /// for requests about users (every node follows it), the channel's partition's for a
    /// channel's events (so they keep its order). `op` names it in errors.
    async fn append(
        &self,
        partition: u32,
        interest: &str,
        fields: &[(&str, &str)],
        op: &'static str,
    ) -> Result<(), BusError> {
        let inner = &self.inner;
        let mut conn = inner.conn()?;
        let mut invocation = inner.append_script.key(bus_key(partition));
        invocation
            .key(interest_key(partition, interest))
            .arg(inner.settings.bus_maxlen)
            .arg(inner.bus_max_age_ms())
            .arg(inbox_prefix(partition))
            .arg(inner.interest_ttl_ms());
        for (name, value) in fields {
            invocation.arg(*name).arg(*value);
        }
        invocation
            .invoke_async::<Value>(&mut conn)
            .await
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
        self.append(0, USERS_INTEREST, &fields, "disconnect")
            .await?;
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
            // A connection's own, or sent by the revocation log: never through the bus.
            SessionCommand::RefreshIdentity | SessionCommand::CheckRevoked => return Ok(told),
        };
        let fields = [
            ("k", kind),
            ("u", user),
            ("c", channel.as_str()),
            ("n", &*self.inner.settings.node_id),
        ];
        self.append(0, USERS_INTEREST, &fields, kind).await?;
        Ok(told)
    }

    /// Appends an event frame to the channel's partition stream, where every node (this one
    /// too) reads it in order with the channel's messages and hands it to `Hub::announce`.
    async fn append_event(&self, channel: &ChannelName, text: String) -> Result<(), BusError> {
        let fields = [
            ("k", "event"),
            ("c", channel.as_str()),
            ("d", text.as_str()),
        ];
        let partition = self.inner.partition(channel);
        self.append(partition, channel.as_str(), &fields, "announce")
            .await
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

    fn block<'a>(
        &'a self,
        user: &'a str,
        until: Option<u64>,
    ) -> BusFuture<'a, Result<usize, BusError>> {
        Box::pin(self.block_everywhere(user, until))
    }

    fn unblock<'a>(&'a self, user: &'a str) -> BusFuture<'a, Result<bool, BusError>> {
        Box::pin(self.unblock_everywhere(user))
    }

    fn revoke<'a>(
        &'a self,
        revocation: &'a Revocation,
    ) -> BusFuture<'a, Result<usize, RevokeFailed>> {
        Box::pin(self.revoke_everywhere(revocation))
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

    fn apply<'a>(
        &'a self,
        channel: &'a ChannelName,
        op: Op<'a>,
        editor: &'a Editor,
        _writes: &'a mut WriteBatch,
    ) -> BusFuture<'a, Result<Applied, ApplyError>> {
        Box::pin(async move {
            if let Op::Publish {
                data,
                message_id: None,
                stream: false,
            } = op
            {
                let offset = self.inner.publish(channel, data).await?;
                telemetry::metrics().messages_published.increment(1);
                return Ok(Applied {
                    offset,
                    duplicate: false,
                });
            }
            // Checked and applied by the operation script; this node's subscribers get it
            // from its partition reader, in bus order, like a publish.
            self.inner.apply_op(channel, &op, editor).await
        })
    }

    fn read_channel<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: Option<Offset>,
        limit: usize,
    ) -> BusFuture<'a, Result<RemoteView, BusError>> {
        Box::pin(async move {
            // A subscribe's read: from it on, the channel's messages reach this node.
            // Without `since` nothing is replayed but the open streams, which the read
            // gives whatever its limit: no entries (and their texts) to read.
            let limit = if since.is_some() { limit } else { 1 };
            let mut read = self.inner.read(channel, since, limit, true).await?;
            if since.is_some() && !read.covers() {
                // A resume the history cannot recover goes on from now, with the open
                // streams whole: read as without `since`, for their states and a position
                // they are consistent with.
                read = self.inner.read(channel, None, 1, false).await?;
                return Ok(RemoteView {
                    epoch: read.epoch,
                    seq: read.seq,
                    absent: read.absent,
                    complete: false,
                    entries: Vec::new(),
                    open: read.open_frames(channel),
                });
            }
            Ok(RemoteView {
                epoch: read.epoch,
                seq: read.seq,
                absent: read.absent,
                complete: read.covers(),
                entries: read.frames(channel, read.since),
                open: if since.is_none() {
                    read.open_frames(channel)
                } else {
                    Vec::new()
                },
            })
        })
    }

    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: Option<Offset>,
        limit: usize,
    ) -> BusFuture<'a, Result<HistoryPage, BusError>> {
        Box::pin(async move {
            // A page after `since` ends before the first message it left out could come;
            // when every message read was changed after that one, the page would be empty
            // and a pager stuck: read more (16 times, then all of the history) and keep the
            // first `limit` of the page.
            const ALL: usize = 1 << 20;
            let mut read_limit = limit;
            let (read, mut messages) = loop {
                let read = self.inner.read(channel, since, read_limit, false).await?;
                let recovered = read.since.map(|since| read.recoverable_page(since));
                let messages = if recovered == Some(false) {
                    Vec::new()
                } else {
                    read.history_items(read.since)
                };
                if !messages.is_empty() || !read.truncated || read_limit >= ALL {
                    break (read, messages);
                }
                read_limit = if read_limit == limit {
                    limit.saturating_mul(16).min(ALL)
                } else {
                    ALL
                };
            };
            messages.truncate(limit.max(1));
            let offset = Offset {
                epoch: read.epoch,
                seq: read.seq,
            };
            let recovered = read.since.map(|since| read.recoverable_page(since));
            Ok(HistoryPage {
                offset,
                recovered,
                messages,
            })
        })
    }

    fn admit_user<'a>(
        &'a self,
        user: &'a Arc<str>,
        conn_id: ConnId,
        limit: UserLimit,
    ) -> BusFuture<'a, bool> {
        Box::pin(self.admit_user_everywhere(user, conn_id, limit))
    }

    fn take_grants<'a>(
        &'a self,
        key: &'a str,
        wanted: u32,
        interval: std::time::Duration,
        burst: u32,
    ) -> BusFuture<'a, Result<super::Grant, BusError>> {
        Box::pin(self.take_grants_from_redis(key, wanted, interval, burst))
    }

    fn user_left(&self, user: &str, conn_id: ConnId) {
        // The receiver lives as long as the bus's tasks; after them nothing needs it.
        let _ = self.inner.closed_users.send((Arc::from(user), conn_id));
    }

    fn unready_reasons(&self) -> Vec<String> {
        self.inner.unready_reasons()
    }

    fn details(&self) -> Vec<String> {
        self.inner.details()
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn nodes(&self) -> BusFuture<'_, Result<Vec<NodeEntry>, BusError>> {
        Box::pin(self.registered_nodes())
    }
}
