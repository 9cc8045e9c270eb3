//! Cluster-wide presence in Redis ([`PresenceStore`]).
//!
//! Keys of a channel (`P` its partition, so that in Redis Cluster they share a slot with the
//! channel's streams and one script can hold them all):
//! - `sb:{sb:P}:pm:<channel>`: sorted set of members, all score 0, each `<node> <conn_id>`
//!   with the connection id zero-padded to 20 digits: by node, then connection, so a
//!   node's members are one lexicographic range and pages follow `ZRANGEBYLEX`.
//! - `sb:{sb:P}:pd:<channel>`: hash, the same member -> the member as JSON.
//! - `sb:{sb:P}:pu:<channel>`: hash, user -> connections on every node (`HLEN` is the
//!   distinct users, `ZCARD` of `pm` the connections: `presence_stats` never lists).
//! - `sb:{sb:P}:pn:<channel>`: hash, node -> the Redis time (ms) its members expire at;
//!   `!<node>` -> the incarnation that wrote them; `~<node>` -> until when another node's
//!   removal of them is remembered (see [`lua::COMMON_LUA`]).
//! - `sb:{sb:P}:pc:<channel>`: hash, node -> the users its last write found added or
//!   removed across the cluster, kept so that a write whose answer was lost is told
//!   anyway (see [`lua::WRITE_LUA`]).
//!
//! A node writes its changes per channel in one script call per batch, and refreshes every
//! channel it has members in once per `presence.ttl / 3` (one call per channel, not per
//! connection). Every script first removes the members of nodes whose time has passed
//! (a node that died), all four keys together, so the counters never disagree with the
//! list; every write moves the keys' own expiry to the TTL, so a channel whose every node
//! died leaves nothing behind. `sb:{sb:nodes}:presence:<node>` lists the channels a node
//! has members in: the node that sees another leave the registry without saying goodbye
//! (its heartbeat expired) removes its members from each at once.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::future::join_all;
use redis::{Script, ScriptInvocation, Value};

use self::lua::{COMMON_LUA, FORGET_LUA, PAGE_LUA, STATS_LUA, WRITE_LUA};
use super::{
    Inner, since_start_ms,
    values::{as_string, as_u64},
};
use crate::{
    cluster::{
        BusError, BusFuture, Crossing, Departed, Departure, PresenceStore, PresenceWrite,
        StoredPage, StoredStats, WriteOutcome, member_id,
    },
    protocol::ChannelName,
};

/// Changes one script call carries at most: a room of 19,000 written in full is 19 calls,
/// each holding Redis for a few milliseconds, not one call holding it for 50.
const CHANGES_PER_CALL: usize = 1000;
/// Script calls in flight at once (pipelined on the one connection).
const CALLS_IN_FLIGHT: usize = 64;
/// Channels per `SADD` of the index.
const INDEX_CHUNK: usize = 1000;

/// Presence in Redis, sharing the bus's connection. Cheap to clone.
#[derive(Clone)]
pub struct RedisPresence {
    inner: Arc<Inner>,
    scripts: Arc<Scripts>,
    ttl: Duration,
}

struct Scripts {
    write: Script,
    page: Script,
    stats: Script,
    forget: Script,
    /// Members removed by this node's scripts, not yet handed out.
    departed: Mutex<Vec<Departed>>,
    /// Users this node's scripts found added or removed across the cluster, likewise.
    crossings: Mutex<Vec<Crossing>>,
    /// Numbers this node's write calls: a channel's calls whose answer was lost (a timeout,
    /// a dropped link) are named by the first of them until one is answered, so that the
    /// next call answers their crossings again (see `lua::WRITE_LUA`).
    calls: AtomicU64,
    unanswered: Mutex<HashMap<ChannelName, u64>>,
    /// Whether the channels a previous incarnation of this node id listed in its index were
    /// swept of its ghosts (see [`RedisPresence::sweep`]).
    swept: AtomicBool,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items.iter().filter_map(as_string).collect(),
        _ => Vec::new(),
    }
}

impl RedisPresence {
    pub(super) fn new(inner: Arc<Inner>, ttl: Duration) -> Self {
        let script = |body: &str| Script::new(&format!("{COMMON_LUA}{body}"));
        Self {
            inner,
            scripts: Arc::new(Scripts {
                write: script(WRITE_LUA),
                page: script(PAGE_LUA),
                stats: script(STATS_LUA),
                forget: script(FORGET_LUA),
                departed: Mutex::new(Vec::new()),
                crossings: Mutex::new(Vec::new()),
                calls: AtomicU64::new(0),
                unanswered: Mutex::new(HashMap::new()),
                swept: AtomicBool::new(false),
            }),
            ttl,
        }
    }

    fn keys(&self, channel: &ChannelName) -> [String; 5] {
        let partition = self.inner.partition(channel);
        ["pm", "pd", "pu", "pn", "pc"].map(|kind| format!("sb:{{sb:{partition}}}:{kind}:{channel}"))
    }

    fn index_key(&self, node: &str) -> String {
        format!("sb:{{sb:nodes}}:presence:{node}")
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    fn node(&self) -> &str {
        &self.inner.settings.node_id
    }

    /// Until when (Redis time, ms; 0: not at all) a script sent now may remove other
    /// nodes' members whose expiry passed: only once this node's own link to Redis has been
    /// steady for a whole TTL, and only for about a second. After a stall every node's
    /// refresh is late at once; the nodes that lived through it refresh within a third of
    /// the TTL, and nobody judges them meanwhile, not even a script that waited in the stall.
    fn judge_until(&self) -> u64 {
        self.inner
            .health
            .judge_until(since_start_ms(&self.inner), self.ttl_ms())
    }

    fn keep_departed(&self, channel: &ChannelName, value: &Value) {
        let members: Vec<(Departure, String)> = strings(value)
            .into_iter()
            .filter_map(|text| {
                let reason = match text.as_bytes().first()? {
                    b'e' => Departure::Expired,
                    b'g' => Departure::NodeGone,
                    b'r' => Departure::Restarted,
                    _ => return None,
                };
                Some((reason, text[1..].to_owned()))
            })
            .collect();
        if !members.is_empty() {
            self.scripts
                .departed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Departed {
                    channel: channel.clone(),
                    members,
                });
        }
    }

    fn keep_crossings(&self, channel: &ChannelName, value: &Value) {
        let found = strings(value);
        if found.is_empty() {
            return;
        }
        let mut crossings = self
            .scripts
            .crossings
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for text in found {
            let added = match text.as_bytes().first() {
                Some(b'+') => true,
                Some(b'-') => false,
                _ => continue,
            };
            crossings.push(Crossing {
                channel: channel.clone(),
                user: text[1..].to_owned(),
                added,
            });
        }
    }

    /// Runs `script` on `channel`'s five keys, with this node's id, incarnation, whether it
    /// may judge and the TTL as `ARGV[1..=4]` and then what `args` adds; its reply, an array
    /// whose first item is the departed members and second the users' crossings (both kept
    /// for their callers).
    async fn call(
        &self,
        script: &Script,
        channel: &ChannelName,
        args: impl FnOnce(&mut ScriptInvocation<'_>),
    ) -> Result<Vec<Value>, BusError> {
        let mut conn = self.inner.conn()?;
        let mut invocation = script.prepare_invoke();
        for key in self.keys(channel) {
            invocation.key(key);
        }
        invocation
            .arg(self.node())
            .arg(&*self.inner.incarnation)
            .arg(self.judge_until())
            .arg(self.ttl_ms());
        args(&mut invocation);
        let reply = invocation
            .invoke_async::<Value>(&mut conn)
            .await
            .map_err(|err| self.inner.failed("presence", &err))?;
        match reply {
            Value::Array(reply) if reply.len() >= 2 => {
                self.keep_departed(channel, &reply[0]);
                self.keep_crossings(channel, &reply[1]);
                Ok(reply)
            }
            _ => Err(BusError::BadReply("redis answered presence oddly")),
        }
    }

    /// One script call: part of a write (the first carries `full` and `expect`).
    async fn write_part(
        &self,
        channel: &ChannelName,
        flags: (bool, bool),
        joins: &[(u64, Arc<str>, String)],
        leaves: &[(u64, Arc<str>)],
    ) -> WriteOutcome {
        let (full, expect) = flags;
        let node = self.node();
        let call = self.scripts.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let lost_since = self
            .scripts
            .unanswered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(channel)
            .copied()
            .unwrap_or(0);
        let reply = self
            .call(&self.scripts.write, channel, |invocation| {
                invocation
                    .arg(u8::from(expect))
                    .arg(u8::from(full))
                    .arg(joins.len());
                for (conn_id, user, json) in joins {
                    invocation
                        .arg(member_id(node, *conn_id))
                        .arg(&**user)
                        .arg(json);
                }
                for (conn_id, user) in leaves {
                    invocation.arg(member_id(node, *conn_id)).arg(&**user);
                }
                invocation.arg(call).arg(lost_since);
            })
            .await;
        {
            let mut unanswered = self
                .scripts
                .unanswered
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if reply.is_ok() {
                unanswered.remove(channel);
            } else {
                unanswered.entry(channel.clone()).or_insert(call);
            }
        }
        match reply.as_deref() {
            Ok([_, _, outcome]) => match as_u64(outcome) {
                Some(0) => WriteOutcome::Done,
                Some(1) => WriteOutcome::Lost,
                Some(2) => WriteOutcome::Rejoined,
                _ => WriteOutcome::Failed,
            },
            _ => WriteOutcome::Failed,
        }
    }

    /// A write, in calls of at most `CHANGES_PER_CALL` changes: the first replaces (when
    /// `full`), the rest add.
    async fn write_one(&self, write: PresenceWrite) -> WriteOutcome {
        let joins = write.joins.chunks(CHANGES_PER_CALL);
        let leaves = write.leaves.chunks(CHANGES_PER_CALL);
        let calls = joins.len().max(leaves.len()).max(1);
        let mut joins = joins.fuse();
        let mut leaves = leaves.fuse();
        let mut done = WriteOutcome::Done;
        for call in 0..calls {
            let flags = if call == 0 {
                (write.full, write.expect)
            } else {
                (false, true)
            };
            let outcome = self
                .write_part(
                    &write.channel,
                    flags,
                    joins.next().unwrap_or_default(),
                    leaves.next().unwrap_or_default(),
                )
                .await;
            match outcome {
                WriteOutcome::Done => {}
                WriteOutcome::Rejoined => done = WriteOutcome::Rejoined,
                WriteOutcome::Failed if done == WriteOutcome::Rejoined => {
                    return WriteOutcome::PartlyRejoined;
                }
                WriteOutcome::Lost | WriteOutcome::Failed | WriteOutcome::PartlyRejoined => {
                    return outcome;
                }
            }
        }
        done
    }

    /// Removes the members of `node` (gone from the registry) from every channel its index
    /// lists; their `leave` events come from [`PresenceStore::departed`].
    pub(super) async fn forget_node(&self, node: &str) {
        let Some(channels) = self.sweep_index(node, node).await else {
            return;
        };
        if let Ok(mut conn) = self.inner.conn() {
            let _ = redis::cmd("DEL")
                .arg(self.index_key(node))
                .query_async::<()>(&mut conn)
                .await;
        }
        tracing::info!(node, channels, "Removed a departed node's presence");
    }

    /// Once after start: removes the ghosts a previous process under this node id left (it
    /// was killed and this one started before its members expired) from every channel that
    /// process listed in the index, with their `leave` events. A channel missing from the
    /// index loses them at its first script call from this node (every script removes this
    /// id's members of another incarnation), or at their expiry.
    async fn sweep(&self) {
        if self.scripts.swept.load(Ordering::Acquire) {
            return;
        }
        let node = self.node().to_owned();
        if let Some(channels) = self.sweep_index(&node, "").await {
            self.scripts.swept.store(true, Ordering::Release);
            tracing::debug!(channels, "Swept the previous incarnation's presence");
        }
    }

    /// Runs the forget script (removing `forced`, if not empty, besides what every script
    /// prunes) on every channel `index_node`'s index lists. How many channels, or `None` when
    /// the index could not be read.
    async fn sweep_index(&self, index_node: &str, forced: &str) -> Option<usize> {
        let mut conn = self.inner.conn().ok()?;
        let channels: Vec<String> = match redis::cmd("SMEMBERS")
            .arg(self.index_key(index_node))
            .query_async(&mut conn)
            .await
        {
            Ok(channels) => channels,
            Err(err) => {
                self.inner.failed("presence", &err);
                return None;
            }
        };
        for chunk in channels.chunks(CALLS_IN_FLIGHT) {
            let mut calls = Vec::with_capacity(chunk.len());
            for name in chunk {
                if let Ok(channel) = ChannelName::parse(name, usize::MAX) {
                    calls.push(async move {
                        // Failures are recorded; the TTL removes what is left.
                        let _ = self
                            .call(&self.scripts.forget, &channel, |invocation| {
                                invocation.arg(forced);
                            })
                            .await;
                    });
                }
            }
            join_all(calls).await;
        }
        Some(channels.len())
    }
}

impl PresenceStore for RedisPresence {
    fn write(&self, writes: Vec<PresenceWrite>) -> BusFuture<'_, Vec<WriteOutcome>> {
        Box::pin(async move {
            let mut outcomes = Vec::with_capacity(writes.len());
            let mut writes = writes.into_iter().peekable();
            while writes.peek().is_some() {
                let mut calls = Vec::with_capacity(CALLS_IN_FLIGHT);
                for write in writes.by_ref().take(CALLS_IN_FLIGHT) {
                    calls.push(self.write_one(write));
                }
                outcomes.extend(join_all(calls).await);
            }
            outcomes
        })
    }

    fn page<'a>(
        &'a self,
        channel: &'a ChannelName,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> BusFuture<'a, Result<StoredPage, BusError>> {
        Box::pin(async move {
            let cursor = cursor.unwrap_or_default();
            let reply = self
                .call(&self.scripts.page, channel, |invocation| {
                    invocation.arg(cursor).arg(limit + 1);
                })
                .await?;
            let [_, _, ids, jsons] = reply.as_slice() else {
                return Err(BusError::BadReply("redis answered presence oddly"));
            };
            let jsons = match jsons {
                Value::Array(items) => items.iter().map(as_string).collect(),
                _ => Vec::new(),
            };
            let mut listed: Vec<(String, Option<String>)> = strings(ids)
                .into_iter()
                .zip(jsons.into_iter().chain(std::iter::repeat(None)))
                .collect();
            let next_cursor = (listed.len() > limit).then(|| {
                listed.truncate(limit);
                listed.last().map(|(id, _)| id.clone()).unwrap_or_default()
            });
            let members = listed.into_iter().filter_map(|(_, json)| json).collect();
            Ok(StoredPage {
                members,
                next_cursor,
            })
        })
    }

    fn stats<'a>(
        &'a self,
        channel: &'a ChannelName,
    ) -> BusFuture<'a, Result<StoredStats, BusError>> {
        Box::pin(async move {
            let reply = self.call(&self.scripts.stats, channel, |_| {}).await?;
            let [_, _, connections, users, own] = reply.as_slice() else {
                return Err(BusError::BadReply("redis answered presence oddly"));
            };
            let count = |value| {
                as_u64(value)
                    .and_then(|n| usize::try_from(n).ok())
                    .unwrap_or(0)
            };
            Ok(StoredStats {
                connections: count(connections),
                users: count(users),
                own: count(own),
            })
        })
    }

    fn index(&self, channels: Vec<ChannelName>, replace: bool) -> BusFuture<'_, ()> {
        Box::pin(async move {
            let Ok(mut conn) = self.inner.conn() else {
                return;
            };
            let key = self.index_key(self.node());
            let mut pipe = redis::pipe();
            // Replacing waits for the sweep: until then the index also names the channels
            // where a previous incarnation may have left ghosts.
            if replace && self.scripts.swept.load(Ordering::Acquire) {
                pipe.cmd("DEL").arg(&key).ignore();
            }
            for chunk in channels.chunks(INDEX_CHUNK) {
                pipe.cmd("SADD").arg(&key);
                for channel in chunk {
                    pipe.arg(channel.as_str());
                }
                pipe.ignore();
            }
            pipe.cmd("PEXPIRE").arg(&key).arg(self.ttl_ms()).ignore();
            if let Err(err) = pipe.query_async::<()>(&mut conn).await {
                self.inner.failed("presence", &err);
            }
        })
    }

    fn state_losses(&self) -> u64 {
        self.inner.health.state_losses()
    }

    fn crossings(&self) -> Vec<Crossing> {
        std::mem::take(
            &mut *self
                .scripts
                .crossings
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    fn departed(&self) -> BusFuture<'_, Vec<Departed>> {
        Box::pin(async move {
            let gone = std::mem::take(
                &mut *self
                    .inner
                    .departed_nodes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            );
            self.sweep().await;
            for node in gone {
                self.forget_node(&node).await;
            }
            std::mem::take(
                &mut *self
                    .scripts
                    .departed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            )
        })
    }
}

mod lua;
