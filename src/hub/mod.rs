//! The sharded hub: which connections exist, which channels they follow, and fan-out.
//!
//! Channels are spread over a power-of-two number of [`Shard`]s by a hash of their name; each
//! shard maps names to channels under a `RwLock` held only to look a channel up, add or drop
//! it. A channel's ordered state (offset, history, outbox) and its subscribers sit behind its
//! own two mutexes, so publishers to different channels never contend, and no lock is
//! global. Connections live in a `DashMap` (itself sharded) keyed by [`ConnId`].
//!
//! Invariants:
//! - Publishing orders a message into the channel's outbox; fan-out rounds (`fanout`)
//!   deliver it. The hub never awaits: rounds enqueue into bounded queues with `try_send`,
//!   and a full queue closes that one connection as a slow consumer. It writes to a socket
//!   only through a connection's non-blocking [`Wire`], after letting go of every lock (see
//!   `outbound`).
//! - A message is encoded once per publish; every subscriber's queue gets the same `Bytes`.
//! - Lock order is shard lock, then a channel's subscriber mutex, then its state mutex;
//!   nothing takes a shard lock while holding a channel mutex.
//! - No lock is held across an `.await` (there are none here).

mod admission;
mod channel;
mod fanout;
mod frame;
mod lane;

use std::{
    collections::hash_map::{DefaultHasher, HashMap},
    hash::{Hash, Hasher},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use dashmap::DashMap;
use indexmap::IndexMap;
use smallvec::SmallVec;
use tokio::time::Instant;

pub use self::admission::{PendingSlot, PendingUpgrades};
pub use self::frame::Frame;
use self::lane::flush_all;
pub use self::lane::{
    ConnId, EnqueueError, Keepalive, Outbound, Outgoing, SessionLane, Wire, WriteBatch,
};
use self::{
    channel::{Channel, Entry, HistoryPolicy},
    fanout::{Queued, Slot, Subscriber, start_round},
};
use crate::{
    protocol::{self, ChannelName, Offset},
    telemetry,
};

/// Settings the hub needs, taken from the configuration.
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub shards: usize,
    pub max_connections: usize,
    /// Connections not yet upgraded, on the node and per address.
    pub max_pending_upgrades: usize,
    pub max_pending_upgrades_per_ip: usize,
    pub max_subscriptions_per_connection: usize,
    pub queue_messages: usize,
    pub queue_bytes: usize,
    pub history_size: usize,
    pub history_ttl: Duration,
    pub history_max_bytes: usize,
    /// Messages are ordered by a remote bus (Redis) and arrive through [`Hub::deliver`];
    /// false when the hub orders them itself ([`Hub::publish`]).
    pub remote: bool,
}

/// A cheap, clonable handle on the hub.
pub type HubHandle = Arc<Hub>;

#[derive(Debug)]
pub struct Hub {
    shards: Box<[Shard]>,
    conns: DashMap<ConnId, Arc<Outbound>>,
    /// Authenticated connections by user, for disconnecting a user.
    users: DashMap<Arc<str>, SmallVec<[ConnId; 2]>>,
    /// Commands for sessions (`command_user`), until each takes its own.
    commands: DashMap<ConnId, Vec<SessionCommand>>,
    next_conn_id: AtomicU64,
    /// Connections admitted: counted when the upgrade is answered, before the session is
    /// registered, so the limit holds under a burst.
    admitted: AtomicUsize,
    /// Connections accepted and not yet upgraded.
    pending: Arc<PendingUpgrades>,
    /// The process is above `limits.memory_pressure_bytes`: new upgrades are refused.
    memory_pressure: AtomicBool,
    /// The node is draining (past `shutdown.drain_delay`): new upgrades are refused.
    draining: AtomicBool,
    settings: HubSettings,
    history: HistoryPolicy,
    started: Instant,
    /// The runtime sessions run on, captured when the hub is built: large fan-outs are
    /// written by its workers, whichever thread published (the control API has its own).
    workers: Option<tokio::runtime::Handle>,
}

/// One slice of the channel space.
#[derive(Debug, Default)]
pub struct Shard {
    // Held only for a map lookup, insert or remove; never while fanning out.
    channels: RwLock<HashMap<ChannelName, Arc<Slot>>>,
    /// Shared with the shard's slots, whose fan-out rounds drop closed subscribers.
    subscriptions: Arc<AtomicUsize>,
}

/// What one [`Hub::keepalive`] pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepaliveSweep {
    pub pinged: usize,
    pub idle_closed: usize,
    /// Closed at their deadline: token expired (4004), or no `auth` in time (4003).
    pub deadline_closed: usize,
}

/// What the control API asks a user's sessions to do (`POST /v1/subscribe`,
/// `/v1/unsubscribe`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCommand {
    Subscribe(ChannelName),
    Unsubscribe(ChannelName),
}

/// Commands one connection holds at most; more are dropped (its session is not taking them).
const MAX_SESSION_COMMANDS: usize = 64;

/// Per-shard figures for `/v1/stats`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ShardStats {
    pub channels: usize,
    pub subscriptions: usize,
}

/// What a subscribe did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    /// The channel's position when the subscription took effect.
    pub offset: Offset,
    /// With `since`: whether every message after it was replayed.
    pub recovered: Option<bool>,
    /// Messages replayed from history.
    pub replayed: usize,
}

/// A channel pinned by a subscribe waiting for the bus; see [`Hub::adopt_pin`].
#[derive(Debug)]
#[must_use = "dropping the guard gives the pin back at once"]
pub struct ChannelPin {
    hub: HubHandle,
    channel: ChannelName,
    held: bool,
}

impl ChannelPin {
    /// The subscribe given the bus's view gave the pin back itself (it always does).
    pub fn consumed(mut self) {
        self.held = false;
    }
}

impl Drop for ChannelPin {
    fn drop(&mut self) {
        if self.held {
            self.hub.unpin(&self.channel);
        }
    }
}

/// A history read.
#[derive(Debug, Clone)]
pub struct History {
    /// The channel's current position.
    pub offset: Offset,
    /// With `since`: whether the messages returned start right after it.
    pub recovered: Option<bool>,
    /// `(offset, data)` pairs, oldest first.
    pub messages: Vec<(Offset, HistoryData)>,
}

/// A message's `data` as stored in history: a slice of the shared frame, no copy.
#[derive(Debug, Clone)]
pub struct HistoryData(Bytes);

impl HistoryData {
    /// Wraps `data` read from elsewhere (e.g. Redis).
    #[must_use]
    pub fn from_data(data: String) -> Self {
        Self(Bytes::from(data))
    }

    fn from_entry(entry: &Entry) -> Self {
        let json = entry.frame.json_bytes();
        // `data` runs from `data_start` to the frame's closing brace.
        Self(json.slice(entry.data_start as usize..json.len() - 1))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("cut at JSON token boundaries of a str")
    }
}

/// A channel's position and recent messages as read from a remote bus, for a subscribe to
/// merge with what this node delivered meanwhile.
#[derive(Debug, Clone)]
pub struct RemoteView {
    pub epoch: u64,
    /// The last sequence number the bus had assigned when read.
    pub seq: u64,
    /// `(seq, data)` after the subscribe's `since`, oldest first.
    pub entries: Vec<(u64, String)>,
    /// Whether `entries` hold every message after `since` up to `seq` (none trimmed,
    /// expired or from another epoch).
    pub complete: bool,
}

/// A publish refused because the channel's fan-out is a whole queue behind its publishers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the channel's fan-out is behind its publishers; retry later")]
pub struct FanoutBehind;

/// Why a subscribe failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The connection's queue overflowed during the replay; it is closing as a slow consumer.
    #[error("outbound queue overflowed")]
    SlowConsumer,
    /// The connection is closing.
    #[error("connection is closing")]
    Closing,
    /// The hub cannot answer alone: read the channel from the bus ([`RemoteView`]) and call
    /// `subscribe` again with it. The channel is pinned until then: hold the pin with
    /// [`Hub::adopt_pin`] meanwhile.
    #[error("the channel must be read from the bus first")]
    NeedRemote,
}

impl From<EnqueueError> for SubscribeError {
    fn from(err: EnqueueError) -> Self {
        match err {
            EnqueueError::SlowConsumer => SubscribeError::SlowConsumer,
            EnqueueError::Closing => SubscribeError::Closing,
        }
    }
}

impl Hub {
    #[must_use]
    pub fn new(settings: HubSettings) -> HubHandle {
        assert!(
            settings.shards.is_power_of_two(),
            "config validation makes shards a power of two"
        );
        let shards = (0..settings.shards).map(|_| Shard::default()).collect();
        Arc::new(Self {
            shards,
            conns: DashMap::with_shard_amount(settings.shards.max(2)),
            users: DashMap::with_shard_amount(settings.shards.max(2)),
            commands: DashMap::with_shard_amount(settings.shards.max(2)),
            next_conn_id: AtomicU64::new(1),
            admitted: AtomicUsize::new(0),
            memory_pressure: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            pending: PendingUpgrades::new(
                settings.max_pending_upgrades,
                settings.max_pending_upgrades_per_ip,
            ),
            history: HistoryPolicy {
                size: settings.history_size,
                ttl: settings.history_ttl,
                max_bytes: settings.history_max_bytes,
                used_bytes: AtomicUsize::new(0),
                used_messages: AtomicUsize::new(0),
            },
            settings,
            started: Instant::now(),
            workers: tokio::runtime::Handle::try_current().ok(),
        })
    }

    #[must_use]
    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    /// Reserves room for one more connection; `false` when the node is full.
    /// Pair every `true` with [`Hub::release_admission`].
    pub fn try_admit(&self) -> bool {
        self.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.settings.max_connections).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn release_admission(&self) {
        self.admitted.fetch_sub(1, Ordering::AcqRel);
    }

    /// Connections accepted and not yet upgraded.
    #[must_use]
    pub fn pending_upgrades(&self) -> &Arc<PendingUpgrades> {
        &self.pending
    }

    /// Whether the process is above its memory threshold, so that new upgrades are refused
    /// (existing connections go on).
    #[must_use]
    pub fn under_memory_pressure(&self) -> bool {
        self.memory_pressure.load(Ordering::Relaxed)
    }

    /// Set by the node's memory watch.
    pub fn set_memory_pressure(&self, pressure: bool) {
        self.memory_pressure.store(pressure, Ordering::Relaxed);
    }

    /// Whether a drain refuses new upgrades (see `drain`).
    #[must_use]
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Set by a drain when it starts closing connections, cleared when it is cancelled.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    /// Every open connection, for a drain to close them one by one.
    #[must_use]
    pub fn connections_snapshot(&self) -> Vec<Arc<Outbound>> {
        self.conns
            .iter()
            .map(|entry| Arc::clone(entry.value()))
            .collect()
    }

    /// Registers a connection and returns its outbound handle. With a `wire`, publishers
    /// write to the socket themselves while it has room; without one, the session task
    /// writes everything.
    pub fn register(&self, wire: Option<Arc<dyn Wire>>) -> Arc<Outbound> {
        let conn_id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let outbound = Outbound::new(
            conn_id,
            wire,
            self.settings.queue_messages,
            self.settings.queue_bytes,
            self.clock_ms(),
        );
        self.conns.insert(conn_id, Arc::clone(&outbound));
        outbound
    }

    /// Removes a connection and its subscriptions. O(number of its subscriptions).
    pub fn deregister<'a>(
        &self,
        conn_id: ConnId,
        channels: impl IntoIterator<Item = &'a ChannelName>,
    ) {
        for channel in channels {
            self.unsubscribe(conn_id, channel);
        }
        self.conns.remove(&conn_id);
        self.commands.remove(&conn_id);
    }

    /// Records that connection `conn_id` is `user`'s (after its token was accepted).
    pub fn add_user(&self, user: &Arc<str>, conn_id: ConnId) {
        self.users
            .entry(Arc::clone(user))
            .or_default()
            .push(conn_id);
    }

    /// Forgets `conn_id` as `user`'s (the session ended).
    pub fn remove_user(&self, user: &str, conn_id: ConnId) {
        self.users.remove_if_mut(user, |_, conns| {
            conns.retain(|conn| *conn != conn_id);
            conns.is_empty()
        });
    }

    /// Asks every connection of `user` on this node to close with `code`; how many.
    pub fn disconnect_user(&self, user: &str, code: protocol::CloseCode) -> usize {
        let conns: SmallVec<[ConnId; 2]> = match self.users.get(user) {
            Some(conns) => conns.clone(),
            None => return 0,
        };
        conns
            .into_iter()
            .filter(|conn_id| self.disconnect(*conn_id, code))
            .count()
    }

    /// Hands `command` to every session of `user` on this node; how many.
    pub fn command_user(&self, user: &str, command: &SessionCommand) -> usize {
        let conns: SmallVec<[ConnId; 2]> = match self.users.get(user) {
            Some(conns) => conns.clone(),
            None => return 0,
        };
        let mut told = 0;
        for conn_id in conns {
            let Some(outbound) = self.conns.get(&conn_id).map(|entry| Arc::clone(&entry)) else {
                continue;
            };
            {
                let mut held = self.commands.entry(conn_id).or_default();
                if held.len() >= MAX_SESSION_COMMANDS {
                    telemetry::session_command_dropped();
                    continue;
                }
                held.push(command.clone());
            }
            if !self.conns.contains_key(&conn_id) {
                // Deregistered meanwhile: nobody will take them.
                self.commands.remove(&conn_id);
                continue;
            }
            outbound.notify_commands();
            told += 1;
        }
        told
    }

    /// The commands held for connection `conn_id`, in order.
    #[must_use]
    pub fn take_commands(&self, conn_id: ConnId) -> Vec<SessionCommand> {
        self.commands
            .remove(&conn_id)
            .map(|(_, commands)| commands)
            .unwrap_or_default()
    }

    /// Asks one connection to close. Returns `false` when no such connection exists.
    pub fn disconnect(&self, conn_id: ConnId, code: protocol::CloseCode) -> bool {
        match self.conns.get(&conn_id) {
            Some(outbound) => {
                outbound.close(code);
                true
            }
            None => false,
        }
    }

    /// Milliseconds since the hub started: the clock of [`Outbound::seen`] and
    /// [`Hub::keepalive`]. Follows `tokio::time`, so tests can pause it.
    #[must_use]
    pub fn clock_ms(&self) -> u64 {
        self.clock_ns() / 1_000_000
    }

    /// Nanoseconds since the hub started: the clock the node's token buckets run on.
    #[must_use]
    pub fn clock_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// One keepalive pass over every connection (see [`Outbound::keepalive`]). One periodic
    /// task does this for the whole node instead of two timers in every connection: a timer
    /// costs each connection memory and each inbound frame a reset.
    pub fn keepalive(&self, heartbeat: Duration, idle_timeout: Duration) -> KeepaliveSweep {
        let now_ms = self.clock_ms();
        let heartbeat_ms = u64::try_from(heartbeat.as_millis()).unwrap_or(u64::MAX);
        let idle_ms = u64::try_from(idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let mut sweep = KeepaliveSweep::default();
        let mut to_flush = Vec::new();
        for entry in &self.conns {
            match entry.value().keepalive(now_ms, heartbeat_ms, idle_ms) {
                Keepalive::Alive => {}
                Keepalive::Pinged { flush } => {
                    sweep.pinged += 1;
                    if flush {
                        to_flush.push(Arc::clone(entry.value()));
                    }
                }
                Keepalive::IdleClosed => sweep.idle_closed += 1,
                Keepalive::DeadlineClosed => sweep.deadline_closed += 1,
            }
        }
        flush_all(to_flush, self.workers.as_ref());
        sweep
    }

    /// Asks every connection to close with `code` (shutdown).
    pub fn disconnect_all(&self, code: protocol::CloseCode) -> usize {
        let mut n = 0;
        for entry in &self.conns {
            entry.value().close(code);
            n += 1;
        }
        n
    }

    /// The shard of a channel; `name` is a `ChannelName` or its text (both hash alike).
    fn shard<Q: Hash + ?Sized>(&self, name: &Q) -> &Shard {
        let mut hasher = DefaultHasher::new();
        name.hash(&mut hasher);
        // Truncating the hash is fine: only its low bits pick the shard.
        let index = (hasher.finish() as usize) & (self.shards.len() - 1);
        &self.shards[index]
    }

    /// The channel's slot, created when absent.
    fn slot(&self, name: &ChannelName) -> Arc<Slot> {
        let shard = self.shard(name);
        if let Some(slot) = read(&shard.channels).get(name) {
            return Arc::clone(slot);
        }
        Arc::clone(
            write(&shard.channels)
                .entry(name.clone())
                .or_insert_with(|| {
                    Arc::new(Slot::new(
                        Channel::new(!self.settings.remote, name.as_str().len()),
                        Arc::clone(&shard.subscriptions),
                    ))
                }),
        )
    }

    /// Runs `f` on the channel's slot and its locked state, creating the channel when absent.
    fn with_channel<R>(
        &self,
        name: &ChannelName,
        f: impl FnOnce(&Arc<Slot>, &mut Channel) -> R,
    ) -> R {
        let mut f = Some(f);
        loop {
            let slot = self.slot(name);
            let mut channel = lock(&slot.state);
            if channel.removed {
                // The sweeper dropped it between our lookup and our lock: look again.
                continue;
            }
            let f = f.take().expect("the loop returns right after the one call");
            return f(&slot, &mut channel);
        }
    }

    /// Runs `f` on the channel's subscribers and state (the lock order), creating the
    /// channel when absent.
    fn with_subscribers<R>(
        &self,
        name: &ChannelName,
        f: impl FnOnce(&mut IndexMap<ConnId, Subscriber>, &mut Channel) -> R,
    ) -> R {
        let mut f = Some(f);
        loop {
            let slot = self.slot(name);
            let mut subscribers = lock(&slot.subscribers);
            let mut channel = lock(&slot.state);
            if channel.removed {
                continue;
            }
            let f = f.take().expect("the loop returns right after the one call");
            return f(&mut subscribers, &mut channel);
        }
    }

    /// Runs `f` on the channel's state if the channel exists.
    fn with_existing_channel<R>(
        &self,
        name: &ChannelName,
        f: impl FnOnce(&mut Channel) -> R,
    ) -> Option<R> {
        let slot = read(&self.shard(name).channels).get(name).cloned()?;
        let mut channel = lock(&slot.state);
        if channel.removed {
            return None;
        }
        Some(f(&mut channel))
    }

    /// A batch for [`Hub::publish_batched`] and [`Hub::deliver_batched`].
    #[must_use]
    pub fn write_batch(&self) -> WriteBatch {
        WriteBatch::new(self.workers.clone())
    }

    /// [`Hub::publish_batched`], written at once.
    ///
    /// # Errors
    /// As [`Hub::publish_batched`].
    pub fn publish(&self, channel: &ChannelName, data: &str) -> Result<Offset, FanoutBehind> {
        self.publish_batched(channel, data, &mut self.write_batch())
    }

    /// Publishes `data` (valid JSON) to `channel`: assigns the next offset, remembers it in
    /// history and in the channel's outbox, and starts a fan-out round unless one is running
    /// (see `fanout`). Returns once the message is ordered; never waits on a subscriber, and
    /// for a large channel not on the fan-out either. A small channel's round runs here and
    /// leaves the connections it claimed in `writes`, for the caller to write when it is
    /// done publishing.
    ///
    /// # Errors
    /// [`FanoutBehind`] when the channel's outbox already holds what one subscriber's queue
    /// may (`limits.outbound_queue_messages` or `_bytes`): the rounds cannot keep up with
    /// its publishers, and one more message would overflow every subscriber. Nothing was
    /// published.
    pub fn publish_batched(
        &self,
        channel: &ChannelName,
        data: &str,
        writes: &mut WriteBatch,
    ) -> Result<Offset, FanoutBehind> {
        let mut round = None;
        let (offset, idle) = self
            .with_channel(channel, |slot, state| {
                if state.subscribed > 0
                    && (state.outbox.len() >= self.settings.queue_messages
                        || state.outbox_bytes + data.len() > self.settings.queue_bytes)
                {
                    return Err(FanoutBehind);
                }
                let offset = state.next_offset();
                round = self
                    .append(state, channel, offset, data)
                    .map(|subscribers| (Arc::clone(slot), subscribers));
                Ok((offset, state.is_idle()))
            })
            .inspect_err(|_| {
                telemetry::metrics()
                    .publishes_refused_fanout_behind
                    .increment(1)
            })?;
        if idle {
            // Nobody listens and history is off: nothing to keep.
            self.drop_if_idle(channel);
        }
        if let Some((slot, subscribers)) = round {
            start_round(&slot, subscribers, self.workers.as_ref(), writes);
        }
        telemetry::metrics().messages_published.increment(1);
        Ok(offset)
    }

    /// Puts a message (or an event) in the channel's outbox. `Some(subscribers)` when the
    /// caller must start a round (once it let go of the channel's lock).
    fn enqueue_round(state: &mut Channel, queued: Queued) -> Option<usize> {
        if state.subscribed == 0 {
            // A later subscriber skips everything up to its subscribe position anyway.
            return None;
        }
        state.outbox_bytes += queued.frame.len();
        state.outbox.push(queued);
        if state.round_scheduled {
            return None;
        }
        state.round_scheduled = true;
        Some(state.subscribed)
    }

    /// Subscribes a connection. The `subscribed` reply (built by `reply` from the outcome),
    /// any replayed history and then live messages reach the queue in that order, with no gap
    /// and no duplicate, however many publishers are busy.
    ///
    /// With a remote bus the hub may not know the channel's position, or may not hold the
    /// messages after `since`: it then answers [`SubscribeError::NeedRemote`], and the caller
    /// reads a [`RemoteView`] from the bus and calls again with it. Deliveries that arrive
    /// meanwhile are kept (the channel is pinned) and merged, so the seam has no gap either.
    ///
    /// # Errors
    /// [`SubscribeError`] when the connection could not take the reply or the replay, or the
    /// bus must be read first.
    pub fn subscribe(
        &self,
        outbound: &Arc<Outbound>,
        channel: &ChannelName,
        since: Option<Offset>,
        view: Option<&RemoteView>,
        reply: impl Fn(&Subscribed) -> Frame,
    ) -> Result<Subscribed, SubscribeError> {
        let shard = self.shard(channel);
        let outcome = self.with_subscribers(channel, |subscribers, state| {
            state.expire(&self.history, Instant::now());
            let (outcome, skip_until) = match view {
                None => {
                    let local = since.map(|since| state.entries_after(since).is_some());
                    if self.settings.remote && (!state.synced || local == Some(false)) {
                        state.pins += 1;
                        return Err(SubscribeError::NeedRemote);
                    }
                    (self.replay_local(outbound, state, since, &reply)?, 0)
                }
                Some(view) => {
                    let merged = self.replay_merged(outbound, channel, state, since, view, &reply);
                    state.unpin();
                    merged?
                }
            };
            // What the outbox holds up to the position the reply gave is covered by the reply
            // and the replay; rounds skip it for this subscriber.
            let skip = Offset {
                epoch: state.epoch,
                seq: skip_until.max(outcome.offset.seq),
            };
            let subscriber = Subscriber {
                outbound: Arc::clone(outbound),
                skip,
            };
            if subscribers.insert(outbound.conn_id(), subscriber).is_none() {
                state.subscribed += 1;
                shard.subscriptions.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, SubscribeError>(outcome)
        })?;
        let metrics = telemetry::metrics();
        match outcome.recovered {
            Some(true) => metrics.resumes_recovered.increment(1),
            Some(false) => metrics.resumes_not_recovered.increment(1),
            None => {}
        }
        Ok(outcome)
    }

    /// Enqueues the reply and the replay from this node's own history.
    fn replay_local(
        &self,
        outbound: &Outbound,
        state: &Channel,
        since: Option<Offset>,
        reply: &impl Fn(&Subscribed) -> Frame,
    ) -> Result<Subscribed, SubscribeError> {
        let replay = since.map(|since| state.entries_after(since));
        let mut outcome = Subscribed {
            offset: state.offset(),
            recovered: replay.as_ref().map(Option::is_some),
            replayed: 0,
        };
        if let Some(Some(entries)) = replay {
            outcome.replayed = entries.len();
            outbound.try_enqueue(&reply(&outcome))?;
            for entry in entries {
                outbound.try_enqueue(&entry.frame)?;
            }
        } else {
            outbound.try_enqueue(&reply(&outcome))?;
        }
        Ok(outcome)
    }

    /// Enqueues the reply and the replay from a bus read plus the deliveries that arrived
    /// while it was read. Returns the outcome and the subscriber's `skip_until`.
    fn replay_merged(
        &self,
        outbound: &Outbound,
        channel: &ChannelName,
        state: &mut Channel,
        since: Option<Offset>,
        view: &RemoteView,
        reply: &impl Fn(&Subscribed) -> Frame,
    ) -> Result<(Subscribed, u64), SubscribeError> {
        let mut consistent = !state.pending_lost;
        if !state.synced {
            // Nothing delivered here yet: start from the bus's position.
            state.epoch = view.epoch;
            state.seq = view.seq;
            state.synced = true;
        } else if state.epoch != view.epoch {
            if state.pending.is_empty() {
                // The bus lost the channel's state (Redis restarted empty): follow the new
                // epoch from its start for the subscribers already here.
                self.forget_epoch(state, view.epoch);
            } else {
                // The epoch changed between the read and now: nothing can be proven.
                consistent = false;
            }
        }
        let same_epoch = consistent && state.epoch == view.epoch;
        let position = if same_epoch {
            state.seq.max(view.seq)
        } else {
            state.seq
        };
        let recovered = since.map(|since| same_epoch && view.complete && since.epoch == view.epoch);
        let mut outcome = Subscribed {
            offset: Offset {
                epoch: state.epoch,
                seq: position,
            },
            recovered,
            replayed: 0,
        };
        if recovered != Some(true) {
            outbound.try_enqueue(&reply(&outcome))?;
            // Live messages only; those the bus had already assigned are skipped.
            let skip_until = if same_epoch { view.seq } else { 0 };
            return Ok((outcome, skip_until));
        }
        let since_seq = since.map_or(0, |since| since.seq);
        let from_bus: Vec<Frame> = view
            .entries
            .iter()
            .filter(|(seq, _)| *seq > since_seq && *seq <= view.seq)
            .map(|(seq, data)| {
                let offset = Offset {
                    epoch: view.epoch,
                    seq: *seq,
                };
                Frame::from(protocol::encode_message(channel, offset, data))
            })
            .collect();
        let from_pending: Vec<Frame> = state
            .pending
            .iter()
            .filter(|entry| entry.seq > view.seq)
            .map(|entry| entry.frame.clone())
            .collect();
        outcome.replayed = from_bus.len() + from_pending.len();
        outbound.try_enqueue(&reply(&outcome))?;
        for frame in from_bus.iter().chain(&from_pending) {
            outbound.try_enqueue(frame)?;
        }
        Ok((outcome, view.seq))
    }

    /// Switches a channel to a new epoch: its history and skip marks belong to the old one.
    fn forget_epoch(&self, state: &mut Channel, epoch: u64) {
        state.forget_all(&self.history);
        state.epoch = epoch;
        state.seq = 0;
        // Subscribers' skips name the old epoch, so they no longer apply.
    }

    /// Gives up a pin taken by a subscribe that answered [`SubscribeError::NeedRemote`] and
    /// could not read the bus. Prefer [`Hub::adopt_pin`], which cannot forget it.
    pub fn unpin(&self, channel: &ChannelName) {
        let idle = self.with_existing_channel(channel, |state| {
            state.unpin();
            state.is_idle()
        });
        if idle == Some(true) {
            self.drop_if_idle(channel);
        }
    }

    /// Takes ownership of the pin a subscribe took when it answered
    /// [`SubscribeError::NeedRemote`]: the pin is given back when the guard is dropped,
    /// however the caller's read of the bus ends (an error, or its future dropped mid-read
    /// because the session closed), unless [`ChannelPin::consumed`] says the subscribe with
    /// the bus's view gave it back.
    pub fn adopt_pin(self: &Arc<Self>, channel: &ChannelName) -> ChannelPin {
        ChannelPin {
            hub: Arc::clone(self),
            channel: channel.clone(),
            held: true,
        }
    }

    /// [`Hub::deliver_batched`], written at once.
    pub fn deliver(&self, channel: &str, offset: Offset, data: &str) -> usize {
        self.deliver_batched(channel, offset, data, &mut self.write_batch())
    }

    /// Delivers a message ordered by a remote bus: fans it out to local subscribers in offset
    /// order, once. Channels without local interest are skipped (each node follows every
    /// partition and filters here). Duplicates (re-reads after a reconnect) are dropped.
    /// Returns how many subscribers it goes to (a fan-out round delivers it; see `fanout`;
    /// a small channel's claimed connections are left in `writes`, as by
    /// [`Hub::publish_batched`]).
    ///
    /// `channel` is the name as read from the bus: looked up without allocating, since most
    /// entries a node reads are for channels it has no subscribers for.
    pub fn deliver_batched(
        &self,
        channel: &str,
        offset: Offset,
        data: &str,
        writes: &mut WriteBatch,
    ) -> usize {
        let shard = self.shard(channel);
        let Some((channel, slot)) = read(&shard.channels)
            .get_key_value(channel)
            .map(|(name, slot)| (name.clone(), Arc::clone(slot)))
        else {
            return 0;
        };
        let (subscribers, round) = {
            let mut state = lock(&slot.state);
            if state.removed {
                return 0;
            }
            let Some(round) = self.deliver_locked(&mut state, &channel, offset, data) else {
                return 0;
            };
            (state.subscribed, round)
        };
        if let Some(subscribers) = round {
            start_round(&slot, subscribers, self.workers.as_ref(), writes);
        }
        subscribers
    }

    /// Orders a delivery under the channel's lock: `None` for a duplicate, else whether the
    /// caller must start a round (see [`Hub::enqueue_round`]).
    fn deliver_locked(
        &self,
        state: &mut Channel,
        channel: &ChannelName,
        offset: Offset,
        data: &str,
    ) -> Option<Option<usize>> {
        if !state.synced {
            state.epoch = offset.epoch;
            state.synced = true;
        } else if state.epoch != offset.epoch {
            tracing::warn!(%channel, "Channel epoch changed on the bus; history restarts");
            self.forget_epoch(state, offset.epoch);
        } else if offset.seq <= state.seq {
            return None;
        } else if offset.seq > state.seq + 1 && state.seq > 0 {
            telemetry::metrics().bus_gaps.increment(1);
            tracing::warn!(%channel, from = state.seq, to = offset.seq, "Gap in the bus");
        }
        state.seq = offset.seq;
        Some(self.append(state, channel, offset, data))
    }

    /// Appends the message at `offset` (ordered under the channel's state lock, which the
    /// caller holds): frames it once, puts it in the outbox, in history, and in what pinned
    /// subscribes keep. `Some(subscribers)` when the caller must start a round (see
    /// [`Hub::enqueue_round`]).
    fn append(
        &self,
        state: &mut Channel,
        channel: &ChannelName,
        offset: Offset,
        data: &str,
    ) -> Option<usize> {
        let text = protocol::encode_message(channel, offset, data);
        let data_start = u32::try_from(text.len() - data.len() - 1)
            .expect("payload size is bounded by config far below 4 GiB");
        let frame = Frame::from(text);
        let now = Instant::now();
        let round = Self::enqueue_round(state, Queued::message(offset, &frame, now));
        let entry = Entry {
            seq: offset.seq,
            published_at: now,
            frame,
            data_start,
        };
        // Only a remote bus's deliveries meet pinned subscribes; a no-op otherwise.
        state.remember_pending(&entry);
        state.remember(entry, &self.history, now);
        round
    }

    /// Sends `text` (an event frame: `join`, `leave`) to the channel's subscribers on this
    /// node, in the channel's order: after every message ordered before it, before every
    /// message ordered after it. Not kept in history and given no offset. Returns how many
    /// subscribers it goes to; 0 when the channel has none here.
    pub fn announce(&self, channel: &str, text: String, writes: &mut WriteBatch) -> usize {
        let shard = self.shard(channel);
        let Some(slot) = read(&shard.channels).get(channel).map(Arc::clone) else {
            return 0;
        };
        let (subscribers, round) = {
            let mut state = lock(&slot.state);
            if state.removed {
                return 0;
            }
            let event = Queued {
                offset: state.offset(),
                frame: Frame::from(text),
                accepted: Instant::now(),
                event: true,
            };
            (state.subscribed, Self::enqueue_round(&mut state, event))
        };
        if let Some(subscribers) = round {
            start_round(&slot, subscribers, self.workers.as_ref(), writes);
        }
        subscribers
    }

    /// The hub's own copy of a channel name when the channel exists: holding it instead of
    /// a freshly parsed name shares one allocation among every subscriber.
    #[must_use]
    pub fn intern(&self, channel: &ChannelName) -> ChannelName {
        read(&self.shard(channel).channels)
            .get_key_value(channel)
            .map_or_else(|| channel.clone(), |(name, _)| name.clone())
    }

    /// Removes one subscription; `false` when it did not exist.
    pub fn unsubscribe(&self, conn_id: ConnId, channel: &ChannelName) -> bool {
        let shard = self.shard(channel);
        let Some(slot) = read(&shard.channels).get(channel).cloned() else {
            return false;
        };
        let (removed, idle) = {
            let mut subscribers = lock(&slot.subscribers);
            let mut state = lock(&slot.state);
            let removed = !state.removed && subscribers.swap_remove(&conn_id).is_some();
            if removed {
                state.subscribed -= 1;
            }
            (removed, state.is_idle())
        };
        if removed {
            shard.subscriptions.fetch_sub(1, Ordering::Relaxed);
        }
        if idle {
            self.drop_if_idle(channel);
        }
        removed
    }

    /// Drops a channel that holds nothing (no subscribers, no history, no pins) at once
    /// rather than at the next sweep: a client cycling through channel names leaves nothing.
    /// Takes the shard lock, then the channel's (the lock order), and checks again under both.
    fn drop_if_idle(&self, name: &ChannelName) {
        let shard = self.shard(name);
        let mut channels = write(&shard.channels);
        let Some(slot) = channels.get(name) else {
            return;
        };
        let mut channel = lock(&slot.state);
        if !channel.is_idle() {
            return;
        }
        channel.forget_all(&self.history);
        channel.removed = true;
        drop(channel);
        channels.remove(name);
    }

    /// Reads history after `since` (or the newest messages), at most `limit`, oldest first.
    #[must_use]
    pub fn history(&self, channel: &ChannelName, since: Option<Offset>, limit: usize) -> History {
        let read_history = |state: &mut Channel| {
            state.expire(&self.history, Instant::now());
            let to_pair = |entry: &Entry| {
                (
                    Offset {
                        epoch: state.epoch,
                        seq: entry.seq,
                    },
                    HistoryData::from_entry(entry),
                )
            };
            match since {
                Some(since) => match state.entries_after(since) {
                    Some(entries) => History {
                        offset: state.offset(),
                        recovered: Some(true),
                        messages: entries.take(limit).map(to_pair).collect(),
                    },
                    None => History {
                        offset: state.offset(),
                        recovered: Some(false),
                        messages: Vec::new(),
                    },
                },
                None => {
                    let skip = state.history.len().saturating_sub(limit);
                    History {
                        offset: state.offset(),
                        recovered: None,
                        messages: state.history.range(skip..).map(to_pair).collect(),
                    }
                }
            }
        };
        // Reading history of an unknown channel creates it, so the reply carries the epoch a
        // later publish will use and clients can start from it.
        self.with_channel(channel, |_, state| read_history(state))
    }

    /// Drops expired history and channels with neither subscribers nor history.
    /// Returns how many channels were dropped. Runs from a periodic task.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut dropped = 0;
        for shard in &self.shards {
            let slots: Vec<_> = read(&shard.channels).values().cloned().collect();
            let mut idle = Vec::new();
            for slot in slots {
                let mut channel = lock(&slot.state);
                channel.expire(&self.history, now);
                if channel.is_idle() {
                    idle.push(Arc::clone(&slot));
                }
            }
            if idle.is_empty() {
                continue;
            }
            let mut channels = write(&shard.channels);
            channels.retain(|_, slot| {
                if !idle.iter().any(|candidate| Arc::ptr_eq(candidate, slot)) {
                    return true;
                }
                let mut channel = lock(&slot.state);
                if channel.is_idle() {
                    channel.forget_all(&self.history);
                    channel.removed = true;
                    dropped += 1;
                    false
                } else {
                    true
                }
            });
        }
        dropped
    }

    /// Channels with subscribers on this node whose name starts with `prefix`, after
    /// `after` in name order, at most `limit`: `(name, subscribers)`, and whether more
    /// follow. Sorts every matching name: an operator's query, not a hot path.
    #[must_use]
    pub fn channels(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<(ChannelName, usize)>, bool) {
        let mut found: Vec<(ChannelName, usize)> = Vec::new();
        for shard in &*self.shards {
            for (name, slot) in read(&shard.channels).iter() {
                if !name.as_str().starts_with(prefix)
                    || after.is_some_and(|after| name.as_str() <= after)
                {
                    continue;
                }
                let subscribed = lock(&slot.state).subscribed;
                if subscribed > 0 {
                    found.push((name.clone(), subscribed));
                }
            }
        }
        found.sort_unstable_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        let more = found.len() > limit;
        found.truncate(limit);
        (found, more)
    }

    /// Per-shard channel and subscription counts.
    #[must_use]
    pub fn shard_stats(&self) -> Vec<ShardStats> {
        self.shards
            .iter()
            .map(|shard| ShardStats {
                channels: read(&shard.channels).len(),
                subscriptions: shard.subscriptions.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Gauges for `/metrics`: walks the connections, so it runs at scrape time only.
    #[must_use]
    pub fn snapshot(&self) -> telemetry::Snapshot {
        let mut snapshot = telemetry::Snapshot {
            connections: self.conns.len(),
            pending_upgrades: self.pending.count(),
            history_bytes: self.history.used_bytes.load(Ordering::Relaxed),
            history_messages: self.history.used_messages.load(Ordering::Relaxed),
            ..telemetry::Snapshot::default()
        };
        for stats in self.shard_stats() {
            snapshot.channels += stats.channels;
            snapshot.subscriptions += stats.subscriptions;
        }
        for entry in &self.conns {
            let queued = entry.value().queued_messages();
            snapshot.queue_messages += queued;
            snapshot.queue_max_messages = snapshot.queue_max_messages.max(queued);
            snapshot.queue_bytes += entry.value().queued_bytes();
            snapshot.session_buffer_bytes += entry.value().session_bytes();
        }
        snapshot
    }

    #[must_use]
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    #[must_use]
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

// The hub's locks guard plain data whose invariants hold between statements, so a panic in
// another holder leaves nothing half-done that matters more than staying up.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
