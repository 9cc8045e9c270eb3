//! Which nodes hold subscribers of a channel, in Redis ([`RedisOccupancy`]), so that a
//! channel is occupied and vacated once for the whole cluster (`channel_occupied`,
//! `channel_vacated`; docs/backend.md).
//!
//! Keys:
//! - `sb:{sb:P}:oc:<channel>` (`P` its partition): hash, `<node>` -> the incarnation (the
//!   process) that holds subscribers there; beside it `@<node>` -> that node's last change,
//!   `<incarnation>:<batch>:<result>`, so that a batch sent again after its answer was lost
//!   (a timeout, a dropped link) is answered as the first time, not taken for a no-op. A
//!   hash left with no node expires after [`MEMO_TTL_MS`].
//! - `sb:{sb:nodes}:oc:<node>`: the incarnations of `<node>` that have written fields, and
//!   `sb:{sb:nodes}:oc:<node>:<incarnation>`: the channels one of them holds. The node that
//!   sees another leave the registry without deregistering, and a process that starts under
//!   a node id an earlier process used, removes the fields of every incarnation of that
//!   node that is not the one registered now (a dead process's), from the channels its
//!   index lists; a channel left with no node is vacated, answered to that one caller.
//!
//! A change is written only by the script that makes it, one call at a time, so each
//! channel's occupied/vacated alternate and each is answered to exactly one caller.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
};

use redis::{Script, Value};

use super::{Inner, scripts::as_string};
use crate::{
    cluster::{BusError, BusFuture, OccupancyChange, OccupancyStore},
    protocol::ChannelName,
};

/// How long a hash with no node keeps the nodes' last changes (for batches sent again).
const MEMO_TTL_MS: u64 = 600_000;
/// Channels per script call, and per `SADD`/`SREM` of an index.
const CHUNK: usize = 500;

/// KEYS: channel hashes. ARGV: node, incarnation, batch, then `+` or `-` per key. Returns per
/// key `o` (the channel became occupied), `v` (vacated) or ``.
const APPLY_LUA: &str = r"
local node, inc = ARGV[1], ARGV[2]
local memo_field = '@' .. node
local tag = inc .. ':' .. ARGV[3] .. ':'
local function nodes(key)
  local n = 0
  for _, field in ipairs(redis.call('HKEYS', key)) do
    if string.sub(field, 1, 1) ~= '@' then n = n + 1 end
  end
  return n
end
local out = {}
for i, key in ipairs(KEYS) do
  local memo = redis.call('HGET', key, memo_field)
  if memo and string.sub(memo, 1, #tag) == tag then
    out[i] = string.sub(memo, #tag + 1)
  else
    local before = nodes(key)
    if ARGV[3 + i] == '+' then
      redis.call('HSET', key, node, inc)
    else
      redis.call('HDEL', key, node)
    end
    local after = nodes(key)
    local result = ''
    if before == 0 and after > 0 then
      result = 'o'
    elseif before > 0 and after == 0 then
      result = 'v'
    end
    redis.call('HSET', key, memo_field, tag .. result)
    if after == 0 then
      redis.call('PEXPIRE', key, ARGV[#ARGV])
    else
      redis.call('PERSIST', key)
    end
    out[i] = result
  end
end
return out
";

/// KEYS: channel hashes. ARGV: node, the dead incarnation, memo TTL. Removes the node's
/// field where that incarnation wrote it. Returns per key `v` (the channel was vacated) or
/// ``.
const FORGET_LUA: &str = r"
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = ''
  if redis.call('HGET', key, ARGV[1]) == ARGV[2] then
    redis.call('HDEL', key, ARGV[1], '@' .. ARGV[1])
    local left = 0
    for _, field in ipairs(redis.call('HKEYS', key)) do
      if string.sub(field, 1, 1) ~= '@' then left = left + 1 end
    end
    if left == 0 then
      out[i] = 'v'
      redis.call('PEXPIRE', key, ARGV[3])
    end
  end
end
return out
";

/// Occupancy in Redis, sharing the bus's connection. Cheap to clone.
#[derive(Clone)]
pub struct RedisOccupancy {
    inner: Arc<Inner>,
    scripts: Arc<Scripts>,
}

struct Scripts {
    apply: Script,
    forget: Script,
    /// Whether the incarnations of this node id before this process were forgotten.
    swept: Mutex<bool>,
}

impl std::fmt::Debug for RedisOccupancy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOccupancy").finish_non_exhaustive()
    }
}

fn hash_key(partition: u32, channel: &str) -> String {
    format!("sb:{{sb:{partition}}}:oc:{channel}")
}

fn incarnations_key(node: &str) -> String {
    format!("sb:{{sb:nodes}}:oc:{node}")
}

fn index_key(node: &str, incarnation: &str) -> String {
    format!("sb:{{sb:nodes}}:oc:{node}:{incarnation}")
}

fn results(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items
            .iter()
            .map(|item| as_string(item).unwrap_or_default())
            .collect(),
        _ => Vec::new(),
    }
}

impl RedisOccupancy {
    pub(super) fn new(inner: Arc<Inner>) -> Self {
        Self {
            inner,
            scripts: Arc::new(Scripts {
                apply: Script::new(APPLY_LUA),
                forget: Script::new(FORGET_LUA),
                swept: Mutex::new(false),
            }),
        }
    }

    fn node(&self) -> &str {
        &self.inner.settings.node_id
    }

    /// `items` grouped by their channel's partition (one script call holds one slot's keys),
    /// each with its index in `items`.
    fn by_partition<'a, T>(
        &self,
        items: &'a [T],
        channel: impl Fn(&T) -> &ChannelName,
    ) -> BTreeMap<u32, Vec<(usize, &'a T)>> {
        let mut groups: BTreeMap<u32, Vec<(usize, &T)>> = BTreeMap::new();
        for (index, item) in items.iter().enumerate() {
            groups
                .entry(self.inner.partition(channel(item)))
                .or_default()
                .push((index, item));
        }
        groups
    }

    /// Adds `channels` to this process's index (and the process to the node's), before the
    /// fields they name are written.
    async fn index(&self, channels: &[&ChannelName]) -> Result<(), BusError> {
        let mut conn = self.inner.conn()?;
        let incarnation = &*self.inner.incarnation;
        let mut pipe = redis::pipe();
        pipe.cmd("SADD")
            .arg(incarnations_key(self.node()))
            .arg(incarnation)
            .ignore();
        for chunk in channels.chunks(CHUNK) {
            pipe.cmd("SADD").arg(index_key(self.node(), incarnation));
            for channel in chunk {
                pipe.arg(channel.as_str());
            }
            pipe.ignore();
        }
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|err| self.inner.failed("occupancy", &err))
    }

    /// Takes `channels` out of this process's index, once their fields are gone. A failure
    /// leaves names that a later forget skips.
    async fn unindex(&self, channels: &[&ChannelName]) {
        let Ok(mut conn) = self.inner.conn() else {
            return;
        };
        let key = index_key(self.node(), &self.inner.incarnation);
        let mut pipe = redis::pipe();
        for chunk in channels.chunks(CHUNK) {
            pipe.cmd("SREM").arg(&key);
            for channel in chunk {
                pipe.arg(channel.as_str());
            }
            pipe.ignore();
        }
        if let Err(err) = pipe.query_async::<()>(&mut conn).await {
            self.inner.failed("occupancy", &err);
        }
    }

    /// Removes the fields of every incarnation of `node` but the one registered now (or,
    /// for this node, this process) from the channels their indexes list, adding the
    /// channels vacated to `vacated`; `Err` when Redis failed on the way (try again later:
    /// what was done is not done twice).
    async fn forget_node(
        &self,
        node: &str,
        vacated: &mut Vec<ChannelName>,
    ) -> Result<(), BusError> {
        let mut conn = self.inner.conn()?;
        let fail = |err: redis::RedisError| self.inner.failed("occupancy", &err);
        let incarnations: Vec<String> = redis::cmd("SMEMBERS")
            .arg(incarnations_key(node))
            .query_async(&mut conn)
            .await
            .map_err(fail)?;
        // Read after the incarnations: a process registers before it indexes anything, so
        // one listed above is registered by now if it lives.
        let live = if node == self.node() {
            Some(self.inner.incarnation.to_string())
        } else {
            self.inner.registered_incarnation(node).await?
        };
        for incarnation in incarnations {
            if live.as_deref() == Some(incarnation.as_str()) {
                continue;
            }
            let index = index_key(node, &incarnation);
            let names: Vec<String> = redis::cmd("SMEMBERS")
                .arg(&index)
                .query_async(&mut conn)
                .await
                .map_err(fail)?;
            let channels: Vec<ChannelName> = names
                .iter()
                .filter_map(|name| ChannelName::parse(name, usize::MAX).ok())
                .collect();
            for (_, group) in self.by_partition(&channels, |channel| channel) {
                for chunk in group.chunks(CHUNK) {
                    let mut invocation = self.scripts.forget.prepare_invoke();
                    for (_, channel) in chunk {
                        invocation.key(hash_key(self.inner.partition(channel), channel.as_str()));
                    }
                    invocation.arg(node).arg(&incarnation).arg(MEMO_TTL_MS);
                    let reply = invocation
                        .invoke_async::<Value>(&mut conn)
                        .await
                        .map_err(fail)?;
                    for ((_, channel), result) in chunk.iter().zip(results(&reply)) {
                        if result == "v" {
                            vacated.push((*channel).clone());
                        }
                    }
                }
            }
            let mut pipe = redis::pipe();
            pipe.cmd("DEL").arg(&index).ignore();
            pipe.cmd("SREM")
                .arg(incarnations_key(node))
                .arg(&incarnation)
                .ignore();
            pipe.query_async::<()>(&mut conn).await.map_err(fail)?;
            tracing::info!(
                node,
                incarnation,
                channels = channels.len(),
                "Removed a departed process's occupancy"
            );
        }
        Ok(())
    }
}

impl OccupancyStore for RedisOccupancy {
    fn apply<'a>(
        &'a self,
        batch: u64,
        changes: &'a [OccupancyChange],
    ) -> BusFuture<'a, Result<Vec<Option<bool>>, BusError>> {
        Box::pin(async move {
            let occupying: Vec<&ChannelName> = changes
                .iter()
                .filter(|change| change.occupied)
                .map(|change| &change.channel)
                .collect();
            if !occupying.is_empty() {
                self.index(&occupying).await?;
            }
            let mut conn = self.inner.conn()?;
            let mut answers = vec![None; changes.len()];
            for (_, group) in self.by_partition(changes, |change| &change.channel) {
                for chunk in group.chunks(CHUNK) {
                    let mut invocation = self.scripts.apply.prepare_invoke();
                    for (_, change) in chunk {
                        invocation.key(hash_key(
                            self.inner.partition(&change.channel),
                            change.channel.as_str(),
                        ));
                    }
                    invocation
                        .arg(self.node())
                        .arg(&*self.inner.incarnation)
                        .arg(batch);
                    for (_, change) in chunk {
                        invocation.arg(if change.occupied { "+" } else { "-" });
                    }
                    invocation.arg(MEMO_TTL_MS);
                    let reply = invocation
                        .invoke_async::<Value>(&mut conn)
                        .await
                        .map_err(|err| self.inner.failed("occupancy", &err))?;
                    for ((index, _), result) in chunk.iter().zip(results(&reply)) {
                        answers[*index] = match result.as_str() {
                            "o" => Some(true),
                            "v" => Some(false),
                            _ => None,
                        };
                    }
                }
            }
            let leaving: Vec<&ChannelName> = changes
                .iter()
                .filter(|change| !change.occupied)
                .map(|change| &change.channel)
                .collect();
            if !leaving.is_empty() {
                self.unindex(&leaving).await;
            }
            Ok(answers)
        })
    }

    fn departed(&self) -> BusFuture<'_, Vec<ChannelName>> {
        Box::pin(async move {
            let mut vacated = Vec::new();
            let mut swept = *self
                .scripts
                .swept
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !swept {
                swept = self
                    .forget_node(&self.inner.settings.node_id, &mut vacated)
                    .await
                    .is_ok();
                *self
                    .scripts
                    .swept
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = swept;
            }
            let gone = std::mem::take(
                &mut *self
                    .inner
                    .departed_occupants
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            );
            for (at, node) in gone.iter().enumerate() {
                if self.forget_node(node, &mut vacated).await.is_err() {
                    // Put back what is left, to try again.
                    self.inner
                        .departed_occupants
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .extend(gone[at..].iter().cloned());
                    break;
                }
            }
            vacated
        })
    }

    fn ready(&self) -> bool {
        self.inner.health.registered()
    }

    fn state_losses(&self) -> u64 {
        self.inner.health.state_losses()
    }
}
