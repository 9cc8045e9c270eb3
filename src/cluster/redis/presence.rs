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
//!   removal of them is remembered (see [`COMMON_LUA`]).
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
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::future::join_all;
use redis::{Script, ScriptInvocation, Value};

use super::{
    Inner,
    scripts::{as_string, as_u64},
    since_start_ms,
};
use crate::{
    cluster::{
        BusError, BusFuture, Departed, Departure, PresenceStore, PresenceWrite, StoredPage,
        StoredStats, WriteOutcome, member_id,
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

/// Shared by every script: Redis time, and removing a node's members (all four keys). Every
/// script's `ARGV` starts with this node's id, its incarnation, the Redis time (ms) until
/// which it may judge other nodes departed (0: it may not), and the TTL in ms.
///
/// A channel's `pn` hash holds, per node, `<node>` -> the Redis time (ms) its members expire
/// at; beside it `!<node>` -> the incarnation that wrote them, and for a while after another
/// node removed a node's members for not refreshing them, `~<node>` -> until when (ms) that
/// is remembered (two TTLs), so that the node, if it was only paused, learns that their
/// `leave` was sent and sends `join` when it writes them back. Every value is a number and
/// node ids never start with `!` or `~`, so the scripts of releases before incarnations
/// (which take every field for a node and its value for an expiry) keep working beside
/// these during a rolling upgrade: an incarnation is above 2^47 (a time they never reach)
/// and a tombstone's time is when they drop it.
///
/// Every script removes, before anything else:
/// - this node id's members that another incarnation wrote (the process restarted under the
///   same id: they are ghosts), reason `r`;
/// - when it may judge, the members of other nodes whose expiry passed, reason `e`, leaving
///   a tombstone; a node that is forced out (gone from the registry) is reason `g`.
///
/// Removed members come back as `<reason><member JSON>` for `leave` events.
const COMMON_LUA: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function forget(id, user)
  if redis.call('HINCRBY', KEYS[3], user, -1) <= 0 then redis.call('HDEL', KEYS[3], user) end
  redis.call('HDEL', KEYS[2], id)
end
local function drop(node, departed, why)
  local ids = redis.call('ZRANGEBYLEX', KEYS[1], '[' .. node .. ' ', '(' .. node .. '!')
  for _, id in ipairs(ids) do
    local json = redis.call('HGET', KEYS[2], id)
    local user = ''
    if json then
      local ok, member = pcall(cjson.decode, json)
      if ok and type(member) == 'table' and type(member.user) == 'string' then
        user = member.user
      end
      if departed then table.insert(departed, why .. json) end
    end
    forget(id, user)
    redis.call('ZREM', KEYS[1], id)
  end
  redis.call('HDEL', KEYS[4], node, '!' .. node)
end
local function bury(node, now)
  local keep = 2 * tonumber(ARGV[4])
  redis.call('HSET', KEYS[4], '~' .. node, string.format('%d', now + keep))
  if redis.call('PTTL', KEYS[4]) < keep then redis.call('PEXPIRE', KEYS[4], keep) end
end
local function prune(now, forced, departed)
  if forced and redis.call('HEXISTS', KEYS[4], forced) == 1 then
    drop(forced, departed, 'g')
    bury(forced, now)
  end
  local fields = redis.call('HGETALL', KEYS[4])
  local held = {}
  for i = 1, #fields, 2 do held[fields[i]] = fields[i + 1] end
  for field, value in pairs(held) do
    local mark = string.sub(field, 1, 1)
    if mark == '~' then
      if (tonumber(value) or 0) < now then redis.call('HDEL', KEYS[4], field) end
    elseif mark == '!' then
      if not held[string.sub(field, 2)] then redis.call('HDEL', KEYS[4], field) end
    elseif field == ARGV[1] then
      if held['!' .. field] ~= ARGV[2] then drop(field, departed, 'r') end
    elseif (tonumber(ARGV[3]) or 0) >= now and (tonumber(value) or 0) < now then
      drop(field, departed, 'e')
      bury(field, now)
    end
  end
end
local function expire(ttl)
  for i = 1, 4 do
    if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
  end
end
";

/// ARGV (after the common four): expect (0/1), full (0/1), joins J, then J x (id, user,
/// json), then (id, user) per leave. Returns `{departed, outcome}`: 0 done; 1 not done,
/// because this node's members were not there although `expect` said so (Redis lost them,
/// or another node removed them): write in full; 2 done in full over a tombstone: another
/// node removed this node's members and sent their `leave`, so they need a `join` again.
const WRITE_LUA: &str = r"
local node = ARGV[1]
local ttl = tonumber(ARGV[4])
local now = now_ms()
local departed = {}
prune(now, nil, departed)
local buried = redis.call('HEXISTS', KEYS[4], '~' .. node) == 1
local known = redis.call('HEXISTS', KEYS[4], node) == 1
  and redis.call('HGET', KEYS[4], '!' .. node) == ARGV[2]
local outcome = 0
if ARGV[6] == '1' then
  drop(node, nil, '')
  if buried then outcome = 2 end
elseif ARGV[5] == '1' and not known then
  return {departed, 1}
end
local joins = tonumber(ARGV[7])
local i = 8
for _ = 1, joins do
  if redis.call('ZADD', KEYS[1], 'NX', 0, ARGV[i]) == 1 then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
    redis.call('HINCRBY', KEYS[3], ARGV[i + 1], 1)
  end
  i = i + 3
end
while i < #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then forget(ARGV[i], ARGV[i + 1]) end
  i = i + 2
end
if #redis.call('ZRANGEBYLEX', KEYS[1], '[' .. node .. ' ', '(' .. node .. '!', 'LIMIT', 0, 1) > 0 then
  redis.call('HSET', KEYS[4], node, string.format('%d', now + ttl), '!' .. node, ARGV[2])
  redis.call('HDEL', KEYS[4], '~' .. node)
  expire(ttl)
else
  redis.call('HDEL', KEYS[4], node, '!' .. node)
end
return {departed, outcome}
";

/// ARGV (after the common four): cursor ('' from the start), count. Returns
/// `{departed, ids, jsons}`.
///
/// The members' JSON is read `HMGET` by `HMGET` of at most 1,000 ids: `unpack` puts every id
/// on Lua's C stack, which holds about 8,000, and `presence.max_listed` allows 100,000.
const PAGE_LUA: &str = r"
local departed = {}
prune(now_ms(), nil, departed)
local from = '-'
if ARGV[5] ~= '' then from = '(' .. ARGV[5] end
local ids = redis.call('ZRANGEBYLEX', KEYS[1], from, '+', 'LIMIT', 0, tonumber(ARGV[6]))
local jsons = {}
for first = 1, #ids, 1000 do
  local part = redis.call('HMGET', KEYS[2], unpack(ids, first, math.min(first + 999, #ids)))
  for i = 1, #part do jsons[#jsons + 1] = part[i] end
end
return {departed, ids, jsons}
";

/// Returns `{departed, connections, users, own}`: `own` is this node's connections in the
/// store, which the caller replaces with what it holds itself.
const STATS_LUA: &str = r"
local departed = {}
prune(now_ms(), nil, departed)
local own = redis.call('ZLEXCOUNT', KEYS[1], '[' .. ARGV[1] .. ' ', '(' .. ARGV[1] .. '!')
return {departed, redis.call('ZCARD', KEYS[1]), redis.call('HLEN', KEYS[3]), own}
";

/// ARGV (after the common four): the node gone, or '' to only prune. Returns `{departed}`.
const FORGET_LUA: &str = r"
local departed = {}
local forced = nil
if ARGV[5] ~= '' then forced = ARGV[5] end
prune(now_ms(), forced, departed)
return {departed}
";

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
                swept: AtomicBool::new(false),
            }),
            ttl,
        }
    }

    fn keys(&self, channel: &ChannelName) -> [String; 4] {
        let partition = self.inner.partition(channel);
        ["pm", "pd", "pu", "pn"].map(|kind| format!("sb:{{sb:{partition}}}:{kind}:{channel}"))
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

    /// Runs `script` on `channel`'s four keys, with this node's id, incarnation, whether it
    /// may judge and the TTL as `ARGV[1..=4]` and then what `args` adds; its reply, an array
    /// whose first item is the departed members.
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
            Value::Array(reply) if !reply.is_empty() => {
                self.keep_departed(channel, &reply[0]);
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
            })
            .await;
        match reply.as_deref() {
            Ok([_, outcome]) => match as_u64(outcome) {
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
            let [_, ids, jsons] = reply.as_slice() else {
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
            let [_, connections, users, own] = reply.as_slice() else {
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

    fn disturbances(&self) -> u64 {
        self.inner.health.disturbances()
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
