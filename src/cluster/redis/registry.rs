//! The node registry: each node's entry (a JSON value with a TTL, and its expiry in a
//! sorted set), renewed by a heartbeat; `/v1/nodes`; and the nodes that died without
//! deregistering, whose presence the node that notices first removes.

use std::{
    sync::{Arc, PoisonError},
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use redis::Script;

use super::{
    Inner, RedisBus,
    connection::{Patience, RedisConn},
    since_start_ms, unix_ms,
};
use crate::cluster::{BusError, NodeEntry, NodeInfo};

/// Registry heartbeat period and entry lifetime.
const NODE_HEARTBEAT: Duration = Duration::from_secs(2);
const NODE_TTL: Duration = Duration::from_secs(10);
const REGISTRY_SET: &str = "sb:{sb:nodes}:live";
const REGISTRY_PREFIX: &str = "sb:{sb:nodes}:node:";

/// The heartbeat, in Redis time (nodes' clocks may disagree): renews this node's entry,
/// answers the entry it replaced (to find another process running under the same node id),
/// the nodes whose entry expired, and Redis's time (ms). KEYS: the live set, this node's entry. ARGV: node,
/// entry JSON, TTL ms.
const HEARTBEAT_LUA: &str = include_str!("lua/registry_heartbeat.lua");

/// Live nodes, in Redis time. KEYS: the live set.
const LIVE_LUA: &str = include_str!("lua/registry_live.lua");

impl RedisBus {
    /// Live nodes from the registry, as JSON objects.
    pub(super) async fn registered_nodes(&self) -> Result<Vec<NodeEntry>, BusError> {
        self.inner.registered_nodes().await
    }
}

impl Inner {
    /// Whether this node may take another's missing registry entry for its death: only on
    /// a link steady for the entries' lifetime (after a stall every entry is late at once,
    /// and each is renewed within a heartbeat).
    pub(super) fn may_judge_nodes(&self) -> bool {
        let ttl_ms = u64::try_from(NODE_TTL.as_millis()).unwrap_or(10_000);
        self.health.registered() && self.health.steady_for_ms(since_start_ms(self)) >= ttl_ms
    }

    /// The incarnation each registered node runs under now.
    pub(super) async fn registered_incarnations(
        &self,
    ) -> Result<std::collections::HashMap<String, String>, BusError> {
        Ok(self
            .registered_nodes()
            .await?
            .into_iter()
            .map(|entry| (entry.node, entry.incarnation))
            .collect())
    }

    /// Live nodes from the registry (an entry that does not read as a [`NodeEntry`] is left
    /// out).
    pub(super) async fn registered_nodes(&self) -> Result<Vec<NodeEntry>, BusError> {
        let mut conn = self.conn()?;
        let ids: Vec<String> = Script::new(LIVE_LUA)
            .key(REGISTRY_SET)
            .invoke_async(&mut conn)
            .await
            .map_err(|err| self.failed("nodes", &err))?;
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
            .map_err(|err| self.failed("nodes", &err))?;
        Ok(values
            .into_iter()
            .flatten()
            .filter_map(|text| serde_json::from_str(&text).ok())
            .collect())
    }
}

/// The `incarnation` of a registry entry (JSON), if it reads as one.
fn incarnation_of(entry: &str) -> Option<String> {
    Some(serde_json::from_str::<NodeEntry>(entry).ok()?.incarnation)
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
                inner.health.error("heartbeat", &err);
                return;
            }
        }
    }
}

/// Starts the registry heartbeat ([`heartbeat`]) on a thread and a Redis connection of its
/// own, so that it says whether this process is alive, not how busy it is: on the shared
/// runtime a heartbeat waits behind every ready task, and on the shared connection behind
/// every command queued before it (a presence rewrite is thousands of scripts), and a node
/// that was only slow for `NODE_TTL` was judged gone, its members sent `leave`, then
/// `join` when it caught up (53 nodes on two cores did that to 29 of them). The thread
/// stops with `stop`, or when the task group drops its waiting task (the runtime ends).
pub(super) fn start_heartbeat(
    inner: Arc<Inner>,
    node: NodeInfo,
    tasks: &crate::shutdown::TaskGroup,
    stop: &CancellationToken,
) {
    let beat_stop = stop.child_token();
    let ends_with_task = beat_stop.clone().drop_guard();
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("sb-heartbeat".to_owned())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(heartbeat(inner, node, beat_stop)),
                Err(err) => tracing::error!(error = %err, "Cannot start the heartbeat thread"),
            }
            let _ = done.send(());
        });
    if let Err(err) = thread {
        tracing::error!(error = %err, "Cannot start the heartbeat thread");
        return;
    }
    tasks.spawn(async move {
        let _ends_with_task = ends_with_task;
        let _ = finished.await;
    });
}

/// The heartbeat's own connection: opened when missing, dropped after a failure.
async fn heartbeat_conn<'a>(
    inner: &Inner,
    conn: &'a mut Option<RedisConn>,
) -> Option<&'a mut RedisConn> {
    if conn.is_none() {
        match inner
            .connector
            .connect(Patience::new(inner.settings.publish_timeout, None))
            .await
        {
            Ok(opened) => *conn = Some(opened),
            Err(err) => inner.health.error("heartbeat", &err),
        }
    }
    conn.as_mut()
}

/// Registers this node in Redis every `NODE_HEARTBEAT`, with a TTL. A heartbeat that
/// completes late (Redis or this process stalled) counts as a disturbance of the link, and
/// nodes whose entry expired are judged departed only on a link steady for `NODE_TTL`: after
/// a stall every node's entry is late at once, and each renews it within a heartbeat.
async fn heartbeat(inner: Arc<Inner>, node: NodeInfo, stop: CancellationToken) {
    let started_unix_ms = unix_ms();
    let ttl_ms = u64::try_from(NODE_TTL.as_millis()).unwrap_or(10_000);
    let late = u64::try_from((NODE_HEARTBEAT * 2).as_millis()).unwrap_or(u64::MAX);
    let script = Script::new(HEARTBEAT_LUA);
    let id = &*inner.settings.node_id;
    let entry_key = format!("{REGISTRY_PREFIX}{id}");
    let mut last_beat_ms: Option<u64> = None;
    let mut duplicate_logged = false;
    let mut own_conn: Option<RedisConn> = None;
    loop {
        // Until the first registration succeeds, retry soon: a new node should be listed as
        // soon as Redis can be reached.
        let pause = if last_beat_ms.is_some() {
            NODE_HEARTBEAT
        } else {
            Duration::from_millis(100)
        };
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
        let Some(conn) = heartbeat_conn(&inner, &mut own_conn).await else {
            continue;
        };
        let info = NodeEntry::of(id, &inner.incarnation, &node, &inner.hub, started_unix_ms);
        let info = serde_json::to_string(&info).expect("a node entry serializes");
        let reply = script
            .key(REGISTRY_SET)
            .key(&entry_key)
            .arg(id)
            .arg(info)
            .arg(ttl_ms)
            .invoke_async::<(String, Vec<String>, u64)>(conn)
            .await;
        let now = since_start_ms(&inner);
        match reply {
            Ok((before, expired, redis_now)) => {
                inner.health.redis_time(redis_now);
                if last_beat_ms.is_some_and(|last| now.saturating_sub(last) > late) {
                    tracing::warn!(
                        gap_ms = now - last_beat_ms.unwrap_or(now),
                        "Registry heartbeat was late (Redis or this process stalled)"
                    );
                    inner.health.disturbed(now);
                }
                let registered = last_beat_ms.is_some();
                last_beat_ms = Some(now);
                if registered && before.is_empty() {
                    // Another node saw this one's entry expire and removed it, with its
                    // members: they were sent `leave`.
                    inner
                        .health
                        .state_lost("the registry judged this node gone");
                }
                let other = incarnation_of(&before).filter(|other| **other != *inner.incarnation);
                if let (true, Some(other)) = (registered, other)
                    && !duplicate_logged
                {
                    duplicate_logged = true;
                    tracing::error!(
                        node = id,
                        other,
                        "Another process runs under this node id: give each node its own \
                         (presence and the registry are wrong while both run)"
                    );
                }
                if inner.health.steady_for_ms(now) >= ttl_ms {
                    remove_expired(&inner, conn, expired).await;
                }
            }
            Err(err) => {
                // The shared connection's keeper judges outages; this one is just reopened.
                inner.health.error("heartbeat", &err);
                own_conn = None;
            }
        }
    }
    // Leave the registry at once on shutdown rather than after the TTL.
    if let Some(conn) = heartbeat_conn(&inner, &mut own_conn).await {
        let id = &*inner.settings.node_id;
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(format!("{REGISTRY_PREFIX}{id}"))
            .ignore();
        pipe.cmd("ZREM").arg(REGISTRY_SET).arg(id).ignore();
        let _ = tokio::time::timeout(Duration::from_secs(1), pipe.query_async::<()>(conn)).await;
    }
}
