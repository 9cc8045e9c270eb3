//! The node registry: each node's entry (a JSON value with a TTL, and its expiry in a
//! sorted set), renewed by a heartbeat; `/v1/nodes`; and the nodes that died without
//! deregistering, whose presence the node that notices first removes.

use std::{
    sync::{Arc, PoisonError},
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use super::{Inner, RedisBus, connection::RedisConn, unix_ms};
use crate::cluster::BusError;

/// Registry heartbeat period and entry lifetime.
const NODE_HEARTBEAT: Duration = Duration::from_secs(2);
const NODE_TTL: Duration = Duration::from_secs(10);
const REGISTRY_SET: &str = "sb:{sb:nodes}:live";
const REGISTRY_PREFIX: &str = "sb:{sb:nodes}:node:";

/// What the node registry needs to say about this node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub ws_addr: std::net::SocketAddr,
    pub control_addr: std::net::SocketAddr,
}

impl RedisBus {
    /// Live nodes from the registry, as JSON objects.
    pub(super) async fn registered_nodes(&self) -> Result<Vec<serde_json::Value>, BusError> {
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
pub(super) async fn heartbeat(inner: Arc<Inner>, node: NodeInfo, stop: CancellationToken) {
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
