//! Which processes hold subscribers of a channel, in Redis ([`RedisOccupancy`]), so that a
//! channel is occupied and vacated once for the whole cluster (`channel_occupied`,
//! `channel_vacated`; docs/backend.md).
//!
//! Keys:
//! - `sb:{sb:P}:oc:<channel>` (`P` its partition): hash, `<node>` -> the incarnation (the
//!   process) that holds subscribers there; `#` -> the sequence number of the channel's last
//!   change (Redis time in µs, or one more than the last: it only grows, also after the
//!   hash expired); `@<node>` -> that node's last write, `<incarnation>:<batch>:<result>:<ms>`,
//!   so that a batch sent again after its answer was lost (a timeout, a dropped link) is
//!   answered as the first time, and one that runs late, after a later batch, does nothing.
//!   A record older than [`MEMO_TTL_MS`] is dropped by the next script that reads the hash;
//!   a hash left with no node expires after that long.
//! - `sb:{sb:P}:ocx:<node>:<incarnation>`: the channels of partition `P` one process holds,
//!   kept by the same scripts that write the hashes (same slot).
//! - `sb:{sb:nodes}:oc`: the node ids that wrote; `sb:{sb:nodes}:oc:<node>`: their
//!   incarnations.
//!
//! Every few seconds a node compares the processes that wrote with the registry: the fields
//! of one that is no longer registered (killed, or stopped before its last writes were
//! taken), or that is an earlier process under this node's own id, are removed from every
//! channel its indexes list, and a channel left with no node is vacated, answered to the
//! one caller whose script removed the last field (its record answers a retry the same).
//! Another node is judged only on a link steady for the registry's TTL, as the registry
//! does: after a Redis stall every entry is late at once.
//!
//! A change is written only by the script that makes it, one call at a time, so each
//! channel's occupied/vacated alternate and each is answered to exactly one caller, with
//! the sequence number that orders it among the channel's changes on every node.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use redis::{Script, Value};
use tokio::time::Instant;

use super::{Inner, values::as_string};
use crate::{
    cluster::{BusError, BusFuture, OccupancyChange, OccupancyFlip, OccupancyStore},
    protocol::ChannelName,
};

/// How long a node's record of its last write is kept (a batch sent again comes within
/// seconds), and a hash with no node.
const MEMO_TTL_MS: u64 = 60_000;
/// Channels per script call, and per `SSCAN` of an index.
const CHUNK: usize = 500;
/// How often the processes that wrote are compared with the registry.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Shared by both scripts: Redis time, the channel's node count (dropping other nodes'
/// stale records on the way), and the next sequence number.
const COMMON_LUA: &str = include_str!("lua/occupancy_common.lua");

/// KEYS: this process's index of the partition, then channel hashes. ARGV: node,
/// incarnation, batch, memo TTL, then per hash `+` or `-` and the channel's name. Returns per
/// hash `o<seq>` (the channel became occupied), `v<seq>` (vacated) or ``.
const APPLY_LUA: &str = include_str!("lua/occupancy_apply.lua");

/// KEYS: the dead process's index of the partition, then channel hashes. ARGV: its node, its
/// incarnation, the caller's node and incarnation, memo TTL, then each hash's channel name.
/// Removes the node's field where that incarnation wrote it, leaving in its record who did
/// and what came of it, so that the caller's retry after a lost answer is answered the
/// same. Returns per hash `v<seq>` (the channel was vacated) or ``.
const FORGET_LUA: &str = include_str!("lua/occupancy_forget.lua");

/// KEYS: the node ids that wrote, one node's incarnations. ARGV: the node, an incarnation
/// all of whose indexes were swept. Forgets the incarnation, and the node once it has none
/// (atomically: a process that starts meanwhile adds its incarnation before its node id).
const RETIRE_LUA: &str = include_str!("lua/occupancy_retire.lua");

/// Occupancy in Redis, sharing the bus's connection. Cheap to clone.
#[derive(Clone)]
pub struct RedisOccupancy {
    inner: Arc<Inner>,
    scripts: Arc<Scripts>,
}

struct Scripts {
    apply: Script,
    forget: Script,
    retire: Script,
    /// Whether this process is listed among the writers (`sb:{sb:nodes}:oc`).
    listed: AtomicBool,
    /// When the writers were last compared with the registry.
    swept_at: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RedisOccupancy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOccupancy").finish_non_exhaustive()
    }
}

const WRITERS_KEY: &str = "sb:{sb:nodes}:oc";

fn hash_key(partition: u32, channel: &str) -> String {
    format!("sb:{{sb:{partition}}}:oc:{channel}")
}

fn incarnations_key(node: &str) -> String {
    format!("sb:{{sb:nodes}}:oc:{node}")
}

fn index_key(partition: u32, node: &str, incarnation: &str) -> String {
    format!("sb:{{sb:{partition}}}:ocx:{node}:{incarnation}")
}

/// A script's answer per hash: `o<seq>`, `v<seq>` or nothing.
fn answers(value: &Value) -> Vec<Option<OccupancyFlip>> {
    let Value::Array(items) = value else {
        return Vec::new();
    };
    items
        .iter()
        .map(|item| {
            let text = as_string(item)?;
            let occupied = match text.as_bytes().first()? {
                b'o' => true,
                b'v' => false,
                _ => return None,
            };
            Some(OccupancyFlip {
                occupied,
                seq: text[1..].parse().ok()?,
            })
        })
        .collect()
}

impl RedisOccupancy {
    pub(super) fn new(inner: Arc<Inner>) -> Self {
        let script = |body: &str| Script::new(&format!("{COMMON_LUA}{body}"));
        Self {
            inner,
            scripts: Arc::new(Scripts {
                apply: script(APPLY_LUA),
                forget: script(FORGET_LUA),
                retire: Script::new(RETIRE_LUA),
                listed: AtomicBool::new(false),
                swept_at: Mutex::new(None),
            }),
        }
    }

    fn node(&self) -> &str {
        &self.inner.settings.node_id
    }

    fn fail(&self, err: &redis::RedisError) -> BusError {
        self.inner.failed("occupancy", err)
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

    /// Lists this process among the writers, once, before its first write: its incarnation
    /// first, then its node id (see `RETIRE_LUA`).
    async fn list(&self) -> Result<(), BusError> {
        if self.scripts.listed.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut conn = self.inner.conn()?;
        let mut pipe = redis::pipe();
        pipe.cmd("SADD")
            .arg(incarnations_key(self.node()))
            .arg(&*self.inner.incarnation)
            .ignore();
        pipe.cmd("SADD").arg(WRITERS_KEY).arg(self.node()).ignore();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|err| self.fail(&err))?;
        self.scripts.listed.store(true, Ordering::Release);
        Ok(())
    }

    /// Removes process `(node, incarnation)`'s fields from every channel its indexes list,
    /// adding the channels vacated to `vacated`, then forgets the process. `Err` when Redis
    /// failed on the way: the next sweep goes on (what was done is answered the same).
    async fn forget(
        &self,
        node: &str,
        incarnation: &str,
        vacated: &mut Vec<(ChannelName, OccupancyFlip)>,
    ) -> Result<(), BusError> {
        let mut conn = self.inner.conn()?;
        let mut channels = 0;
        for partition in 0..self.inner.settings.partitions {
            let index = index_key(partition, node, incarnation);
            let mut names: Vec<String> = Vec::new();
            let mut cursor = 0_u64;
            loop {
                let (next, found): (u64, Vec<String>) = redis::cmd("SSCAN")
                    .arg(&index)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(CHUNK)
                    .query_async(&mut conn)
                    .await
                    .map_err(|err| self.fail(&err))?;
                names.extend(found);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            names.sort_unstable();
            names.dedup();
            channels += names.len();
            for chunk in names.chunks(CHUNK) {
                let mut invocation = self.scripts.forget.prepare_invoke();
                invocation.key(&index);
                for name in chunk {
                    invocation.key(hash_key(partition, name));
                }
                invocation
                    .arg(node)
                    .arg(incarnation)
                    .arg(self.node())
                    .arg(&*self.inner.incarnation)
                    .arg(MEMO_TTL_MS);
                for name in chunk {
                    invocation.arg(name);
                }
                let reply = invocation
                    .invoke_async::<Value>(&mut conn)
                    .await
                    .map_err(|err| self.fail(&err))?;
                for (name, answer) in chunk.iter().zip(answers(&reply)) {
                    if let (Some(answer), Ok(channel)) =
                        (answer, ChannelName::parse(name, usize::MAX))
                    {
                        vacated.push((channel, answer));
                    }
                }
            }
        }
        self.scripts
            .retire
            .key(WRITERS_KEY)
            .key(incarnations_key(node))
            .arg(node)
            .arg(incarnation)
            .invoke_async::<()>(&mut conn)
            .await
            .map_err(|err| self.fail(&err))?;
        tracing::info!(
            node,
            incarnation,
            channels,
            "Removed a departed process's channel occupancy"
        );
        Ok(())
    }

    /// The processes that wrote and are not registered now (this node id's earlier ones
    /// always; others only when this node may judge).
    async fn departed_processes(&self) -> Result<Vec<(String, String)>, BusError> {
        let mut conn = self.inner.conn()?;
        let writers: Vec<String> = redis::cmd("SMEMBERS")
            .arg(WRITERS_KEY)
            .query_async(&mut conn)
            .await
            .map_err(|err| self.fail(&err))?;
        let judging = self.inner.may_judge_nodes();
        let writers: Vec<String> = writers
            .into_iter()
            .filter(|node| judging || node == self.node())
            .collect();
        if writers.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for node in &writers {
            pipe.cmd("SMEMBERS").arg(incarnations_key(node));
        }
        let incarnations: Vec<Vec<String>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|err| self.fail(&err))?;
        // Read after the incarnations: a process registers before it is listed, so one
        // listed above is registered by now if it lives.
        let mut live: HashMap<String, String> = if judging {
            self.inner.registered_incarnations().await?
        } else {
            HashMap::new()
        };
        live.insert(self.node().to_owned(), self.inner.incarnation.to_string());
        Ok(writers
            .into_iter()
            .zip(incarnations)
            .flat_map(|(node, incarnations)| {
                let registered = live.get(&node).cloned();
                incarnations
                    .into_iter()
                    .filter(move |incarnation| registered.as_ref() != Some(incarnation))
                    .map(move |incarnation| (node.clone(), incarnation))
            })
            .collect())
    }
}

impl OccupancyStore for RedisOccupancy {
    fn apply<'a>(
        &'a self,
        batch: u64,
        changes: &'a [OccupancyChange],
    ) -> BusFuture<'a, Result<Vec<Option<OccupancyFlip>>, BusError>> {
        Box::pin(async move {
            self.list().await?;
            let mut conn = self.inner.conn()?;
            let mut told = vec![None; changes.len()];
            for (partition, group) in self.by_partition(changes, |change| &change.channel) {
                let index = index_key(partition, self.node(), &self.inner.incarnation);
                for chunk in group.chunks(CHUNK) {
                    let mut invocation = self.scripts.apply.prepare_invoke();
                    invocation.key(&index);
                    for (_, change) in chunk {
                        invocation.key(hash_key(partition, change.channel.as_str()));
                    }
                    invocation
                        .arg(self.node())
                        .arg(&*self.inner.incarnation)
                        .arg(batch)
                        .arg(MEMO_TTL_MS);
                    for (_, change) in chunk {
                        invocation
                            .arg(if change.occupied { "+" } else { "-" })
                            .arg(change.channel.as_str());
                    }
                    let reply = invocation
                        .invoke_async::<Value>(&mut conn)
                        .await
                        .map_err(|err| self.fail(&err))?;
                    for ((index, _), answer) in chunk.iter().zip(answers(&reply)) {
                        told[*index] = answer;
                    }
                }
            }
            Ok(told)
        })
    }

    fn departed(&self) -> BusFuture<'_, Vec<(ChannelName, OccupancyFlip)>> {
        Box::pin(async move {
            {
                let mut swept_at = self
                    .scripts
                    .swept_at
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if swept_at.is_some_and(|at| at.elapsed() < SWEEP_EVERY) {
                    return Vec::new();
                }
                *swept_at = Some(Instant::now());
            }
            let mut vacated = Vec::new();
            let Ok(departed) = self.departed_processes().await else {
                return vacated;
            };
            for (node, incarnation) in departed {
                if self
                    .forget(&node, &incarnation, &mut vacated)
                    .await
                    .is_err()
                {
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
