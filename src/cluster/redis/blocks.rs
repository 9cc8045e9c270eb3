//! The cluster's block list (`POST /v1/block`): the hash `sb:{sb:nodes}:blocks` (user →
//! Unix seconds the block ends, 0: until lifted), written by the node that took the request,
//! which then tells every node through partition 0's bus stream (entries `k=block` and
//! `k=unblock`), so that their connections of the user close at once. Every node also reads
//! the whole hash again every few seconds and at each reconnect (a node that was away, or
//! a Redis that restarted empty, converges), and removes the blocks that ended.

use std::{sync::Arc, time::Duration};

use redis::{Script, Value};
use tokio_util::sync::CancellationToken;

use super::{Inner, RedisBus, keys::USERS_INTEREST, values::as_string};
use crate::{
    blocks::{Block, unix_now},
    cluster::BusError,
    protocol::CloseCode,
};

/// The hash of blocks.
const BLOCKS_KEY: &str = "sb:{sb:nodes}:blocks";

/// How often each node reads the whole list again.
const RELOAD: Duration = Duration::from_secs(3);

/// Removes a block that ended, unless it was replaced meanwhile (its value changed).
const PRUNE_LUA: &str = include_str!("lua/blocks_prune.lua");

impl RedisBus {
    /// Writes the block, applies it here, and tells the other nodes.
    pub(super) async fn block_everywhere(
        &self,
        user: &str,
        until: Option<u64>,
    ) -> Result<usize, BusError> {
        let inner = &self.inner;
        let mut conn = inner.conn()?;
        let until_text = until.unwrap_or(0).to_string();
        redis::cmd("HSET")
            .arg(BLOCKS_KEY)
            .arg(user)
            .arg(&until_text)
            .query_async::<Value>(&mut conn)
            .await
            .map_err(|err| inner.failed("block", &err))?;
        inner.hub.blocks().block(user, until);
        let closed = inner.hub.disconnect_user(user, CloseCode::Unauthorized);
        let fields = [
            ("k", "block"),
            ("u", user),
            ("n", &*inner.settings.node_id),
            ("x", until_text.as_str()),
        ];
        announce(self.append(0, USERS_INTEREST, &fields, "block").await);
        Ok(closed)
    }

    /// Removes the block, here and on the other nodes.
    pub(super) async fn unblock_everywhere(&self, user: &str) -> Result<bool, BusError> {
        let inner = &self.inner;
        let mut conn = inner.conn()?;
        let removed: u64 = redis::cmd("HDEL")
            .arg(BLOCKS_KEY)
            .arg(user)
            .query_async(&mut conn)
            .await
            .map_err(|err| inner.failed("block", &err))?;
        let here = inner.hub.blocks().unblock(user);
        let fields = [
            ("k", "unblock"),
            ("u", user),
            ("n", &*inner.settings.node_id),
        ];
        announce(self.append(0, USERS_INTEREST, &fields, "block").await);
        Ok(removed > 0 || here)
    }
}

/// The list is written before the change is announced: an announcement that failed
/// (counted in `switchboard_redis_errors_total{op="block"}`) reaches the other nodes at their next
/// reload, so the request is answered as done.
fn announce(announced: Result<(), BusError>) {
    if let Err(err) = announced {
        tracing::warn!(%err, "Block change not announced; the other nodes take it at their reload");
    }
}

/// Reads the cluster's list into this node's every [`RELOAD`], removing ended blocks.
pub(super) async fn keep_blocks(inner: Arc<Inner>, stop: CancellationToken) {
    let prune = Script::new(PRUNE_LUA);
    loop {
        if let Err(err) = reload(&inner, &prune).await {
            tracing::debug!(%err, "Block list not read; the node keeps its copy");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RELOAD) => {}
        }
    }
}

async fn reload(inner: &Inner, prune: &Script) -> Result<(), BusError> {
    let mut conn = inner.conn()?;
    let fields: Vec<Value> = redis::cmd("HGETALL")
        .arg(BLOCKS_KEY)
        .query_async(&mut conn)
        .await
        .map_err(|err| inner.failed("block", &err))?;
    let now = unix_now();
    let mut blocks = Vec::with_capacity(fields.len() / 2);
    let mut ended = Vec::new();
    for pair in fields.chunks(2) {
        let (Some(user), Some(until_text)) = (
            pair.first().and_then(as_string),
            pair.get(1).and_then(as_string),
        ) else {
            continue;
        };
        let until = until_text.parse::<u64>().unwrap_or(0);
        if until != 0 && until <= now {
            ended.push((user, until_text));
            continue;
        }
        blocks.push(Block {
            user,
            until: (until != 0).then_some(until),
        });
    }
    for user in inner.hub.blocks().replace_all(blocks, now) {
        // Blocked while this node missed the bus entry (its reader was down, or it was
        // away): its connections of the user close now.
        let closed = inner.hub.disconnect_user(&user, CloseCode::Unauthorized);
        if closed > 0 {
            tracing::info!(%user, closed, "User found blocked on reloading the block list");
        }
    }
    for (user, until) in ended {
        let _: Value = prune
            .key(BLOCKS_KEY)
            .arg(&user)
            .arg(&until)
            .invoke_async(&mut conn)
            .await
            .map_err(|err| inner.failed("block", &err))?;
    }
    Ok(())
}
