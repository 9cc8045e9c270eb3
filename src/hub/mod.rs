//! The sharded hub: which connections exist, which channels they follow, and fan-out.
//!
//! Channels are spread over a power-of-two number of [`Shard`]s by a hash of their name; each
//! shard maps names to channels under a `RwLock` held only to look a channel up, add or drop
//! it. A channel's ordered state (offset, history, outbox) and its subscribers sit behind its
//! own two mutexes, so publishers to different channels never contend on a channel; the one
//! lock they share is the workers' job queue (`lane::workers`), taken once per round of a
//! large channel or per 256 connections to write, never per delivery. Connections live in a
//! `DashMap` (itself sharded) keyed by [`ConnId`].
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
//!
//! Files: `registry` (connections, users, admission, keepalive), `publish` (ordering a
//! message or a delivery, one append, events), `subscribe` (subscribe and replay, pins,
//! unsubscribe, history reads), `channel` (a channel's ordered state and history),
//! `history` (history reads), `fanout` (rounds), `lane` (the write lane), `admission` (upgrades in progress), `frame`,
//! `lag` (how late the event loop ran), `stream` (messages with ids: appends, edits,
//! deletes, coalescing).

mod admission;
mod channel;
mod fanout;
mod framed;
mod history;
mod lag;
mod lane;
mod publish;
mod registry;
mod settings;
mod stream;
mod subscribe;
mod subscribers;

use std::{
    collections::hash_map::{DefaultHasher, HashMap},
    hash::{Hash, Hasher},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;
use smallvec::SmallVec;
use tokio::time::Instant;

pub use self::admission::{PendingSlot, PendingUpgrades, source_of};
pub use self::channel::HistoryLimit;
pub use self::framed::FramedText;
pub use self::history::{HistoryData, HistoryPage};
pub use self::lag::LagClock;
pub use self::lane::{
    ConnId, Delivery, EnqueueError, Gap, Keepalive, Outbound, Outgoing, SessionLane, Tag, Wire,
    WriteBatch,
};
use self::lane::{Workers, flush_all};
pub use self::publish::FanoutBehind;
pub use self::registry::{KeepaliveSweep, SessionCommand};
pub use self::settings::{Compression, HubSettings, NamespaceRules};
pub use self::stream::{Applied, Editor, Op, OpError, Owner};
pub use self::subscribe::{ChannelPin, Left, RemoteView, SubscribeError, Subscribed};
use self::{
    channel::{Channel, Retention},
    fanout::Slot,
};
use crate::{config::ChannelPattern, protocol::ChannelName, telemetry};

/// A cheap, clonable handle on the hub.
pub type HubHandle = Arc<Hub>;

#[derive(Debug)]
pub struct Hub {
    shards: Box<[Shard]>,
    conns: DashMap<ConnId, Registered>,
    /// Authenticated connections by user, for disconnecting a user.
    users: DashMap<Arc<str>, SmallVec<[ConnId; 2]>>,
    /// Authenticated connections whose token has a `jti`, by its key in `revocations`, for
    /// closing those holding a revoked token.
    tokens: DashMap<u64, SmallVec<[ConnId; 1]>>,
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
    /// The event loop lags past `limits.max_event_loop_lag`: new upgrades are refused.
    overloaded: AtomicBool,
    /// How late the event loop ran, summed (kept by `overload::watch_lag`).
    lag_clock: Arc<LagClock>,
    /// Channels dropped since start: whoever mirrors the channels held elsewhere (the Redis
    /// bus's interest) looks for the dropped ones only when this moved.
    channels_dropped: AtomicU64,
    /// The connections' queues and buffers, summed by the last [`Hub::sample_queues`].
    queues: QueueTotals,
    /// The node is draining (past `shutdown.drain_delay`): new upgrades are refused.
    draining: AtomicBool,
    settings: HubSettings,
    retention: Retention,
    started: Instant,
    /// Channels whose held appends fall due (`streams.coalesce`).
    coalescer: stream::Coalescer,
    /// Blocked users (`POST /v1/block`), checked when a connection authenticates.
    blocks: crate::blocks::Blocklist,
    /// Revoked tokens (`POST /v1/revoke`), checked likewise.
    revocations: crate::revocations::Revocations,
    /// The runtime sessions run on, captured when the hub is built: large fan-outs are
    /// written by its workers, whichever thread published (the control API has its own).
    workers: Option<Workers>,
}

/// A connection in the registry, and when the keepalive sweep next has anything to check
/// on it (hub clock ms; 0: at its next tick), kept beside it in the map so that the sweep
/// passes over quiet connections without touching them.
#[derive(Debug)]
struct Registered {
    outbound: Arc<Outbound>,
    check_at_ms: AtomicU64,
}

/// One slice of the channel space.
#[derive(Debug, Default)]
pub struct Shard {
    // Held only for a map lookup, insert or remove; never while fanning out.
    channels: RwLock<HashMap<ChannelName, Arc<Slot>>>,
    /// Shared with the shard's slots, whose fan-out rounds drop closed subscribers.
    subscriptions: Arc<AtomicUsize>,
}

/// Per-shard figures for `/v1/stats`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ShardStats {
    pub channels: usize,
    pub subscriptions: usize,
}

/// This process's first connection id. A node restarted under the same node id must not
/// reuse its predecessor's ids: presence tells members apart by node and connection, and the
/// predecessor's may still be listed (and their `leave` still to come) when the new process
/// takes its first connections. The start time in ms (modulo 2^30, 12.4 days) times 2^22: a
/// predecessor would have had to open 4 million connections per millisecond it ran to reach
/// this process's first id. Ids stay below 2^52 plus the connections opened, so JavaScript
/// clients hold them exactly.
fn first_conn_id() -> u64 {
    let start = crate::clock::unix_ms() % (1 << 30);
    (start << 22) + 1
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
            tokens: DashMap::with_shard_amount(settings.shards.max(2)),
            commands: DashMap::with_shard_amount(settings.shards.max(2)),
            next_conn_id: AtomicU64::new(first_conn_id()),
            admitted: AtomicUsize::new(0),
            memory_pressure: AtomicBool::new(false),
            overloaded: AtomicBool::new(false),
            lag_clock: Arc::default(),
            channels_dropped: AtomicU64::new(0),
            queues: QueueTotals::default(),
            draining: AtomicBool::new(false),
            pending: PendingUpgrades::new(
                settings.max_pending_upgrades,
                settings.max_pending_upgrades_per_ip,
            ),
            retention: Retention {
                size: settings.history_size,
                ttl: settings.history_ttl,
                namespaces: settings
                    .per_namespace
                    .iter()
                    .map(|rules| (ChannelPattern::parse(&rules.pattern), rules.history))
                    .collect(),
                max_bytes: settings.history_max_bytes,
                used_bytes: AtomicUsize::new(0),
                used_messages: AtomicUsize::new(0),
                dedupe_window: settings.streams.dedupe_window,
                channel_overhead: fanout::CHANNEL_OVERHEAD,
            },
            settings,
            started: Instant::now(),
            coalescer: stream::Coalescer::default(),
            blocks: crate::blocks::Blocklist::default(),
            revocations: crate::revocations::Revocations::default(),
            workers: Workers::current(),
        })
    }

    #[must_use]
    pub fn settings(&self) -> &HubSettings {
        &self.settings
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

    /// The shard of a channel; `name` is a `ChannelName` or its text (both hash alike).
    fn shard<Q: Hash + ?Sized>(&self, name: &Q) -> &Shard {
        let mut hasher = DefaultHasher::new();
        name.hash(&mut hasher);
        // Truncating the hash is fine: only its low bits pick the shard.
        let index = (hasher.finish() as usize) & (self.shards.len() - 1);
        &self.shards[index]
    }

    /// The `slow_consumer` policy of a channel of namespace `index` (see
    /// [`channel::Retention::index_for`]), when that is not `disconnect`.
    fn delivery_for(&self, name: &ChannelName, index: u16) -> Option<Arc<Delivery>> {
        let rules = self
            .settings
            .per_namespace
            .get(usize::from(index).checked_sub(1)?)?;
        (rules.slow_consumer != crate::config::SlowConsumer::Disconnect).then(|| {
            Arc::new(Delivery {
                channel: name.clone(),
                group: index,
                policy: rules.slow_consumer,
                conflate_key: rules.conflate_key.as_deref().map(Box::from),
                queue_bytes: rules.queue_bytes,
                label: Arc::from(rules.pattern.as_str()),
            })
        })
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
                        {
                            let index = self.retention.index_for(name.as_str());
                            Channel::new(
                                !self.settings.remote,
                                name.as_str().len(),
                                index,
                                self.delivery_for(name, index),
                            )
                        },
                        Arc::clone(&shard.subscriptions),
                        self.settings.compression,
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
        f: impl FnOnce(&mut subscribers::Subscribers, &mut Channel) -> R,
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

    /// Abandons idle streams, drops expired history and ids, and channels with neither
    /// subscribers nor history.
    /// Returns how many channels were dropped. Runs from a periodic task.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut dropped = 0;
        // Open streams that got nothing for `streams.idle_timeout`, abandoned after the pass.
        let mut stale = Vec::new();
        for shard in &self.shards {
            let slots: Vec<_> = read(&shard.channels)
                .iter()
                .map(|(name, slot)| (name.clone(), Arc::clone(slot)))
                .collect();
            let mut idle = Vec::new();
            for (name, slot) in slots {
                let mut channel = lock(&slot.state);
                channel.expire(&self.retention, now);
                channel.forget_ids(&self.retention, now);
                self.find_idle_streams(&name, &channel, now, &mut stale);
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
                    channel.forget_all(&self.retention);
                    channel.removed = true;
                    dropped += 1;
                    false
                } else {
                    true
                }
            });
        }
        self.channels_dropped
            .fetch_add(dropped as u64, Ordering::AcqRel);
        self.abandon_idle(&stale);
        dropped
    }

    /// How many channels this node has dropped since it started: a channel [`Hub::holds`]
    /// said it held may be gone only if this moved since.
    #[must_use]
    pub fn channels_dropped(&self) -> u64 {
        self.channels_dropped.load(Ordering::Acquire)
    }

    /// Whether this node holds the channel (subscribed, pinned by a subscribe, or keeping
    /// history): whether a remote bus must go on delivering it here.
    #[must_use]
    pub fn holds(&self, name: &str) -> bool {
        read(&self.shard(name).channels).contains_key(name)
    }

    /// Whether the channel is occupied here: it has had a subscriber since a leave last
    /// found it vacant (see [`Subscribed::first`] and [`Left::vacated`]).
    #[must_use]
    pub fn occupied(&self, name: &str) -> bool {
        read(&self.shard(name).channels)
            .get(name)
            .is_some_and(|slot| lock(&slot.state).occupied)
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
            history_bytes: self.retention.used_bytes.load(Ordering::Relaxed),
            history_messages: self.retention.used_messages.load(Ordering::Relaxed),
            ..telemetry::Snapshot::default()
        };
        for stats in self.shard_stats() {
            snapshot.channels += stats.channels;
            snapshot.subscriptions += stats.subscriptions;
        }
        let sampled = |total: &AtomicUsize| total.load(Ordering::Relaxed);
        snapshot.queue_messages = sampled(&self.queues.messages);
        snapshot.queue_max_messages = sampled(&self.queues.max_messages);
        snapshot.queue_bytes = sampled(&self.queues.bytes);
        snapshot.session_buffer_bytes = sampled(&self.queues.session_bytes);
        snapshot
    }

    /// Sums every connection's queue and buffers for [`Hub::snapshot`]: a pass over the
    /// connections, run by a periodic task so that a scrape of `/metrics` costs the same
    /// whatever the number of connections (it made the pass itself, on the control API's
    /// thread, ahead of probes and publishes).
    pub fn sample_queues(&self) {
        let (mut messages, mut max_messages, mut bytes, mut session_bytes) = (0, 0, 0, 0);
        for entry in &self.conns {
            let outbound = &entry.value().outbound;
            let queued = outbound.queued_messages();
            messages += queued;
            max_messages = max_messages.max(queued);
            bytes += outbound.queued_bytes();
            session_bytes += outbound.session_bytes();
        }
        self.queues.messages.store(messages, Ordering::Relaxed);
        self.queues
            .max_messages
            .store(max_messages, Ordering::Relaxed);
        self.queues.bytes.store(bytes, Ordering::Relaxed);
        self.queues
            .session_bytes
            .store(session_bytes, Ordering::Relaxed);
    }

    #[must_use]
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// What [`Hub::sample_queues`] found.
#[derive(Debug, Default)]
struct QueueTotals {
    messages: AtomicUsize,
    max_messages: AtomicUsize,
    bytes: AtomicUsize,
    session_bytes: AtomicUsize,
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
