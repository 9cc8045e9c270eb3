//! `limits.max_connections_per_user` across the cluster (and the rate budgets of
//! `crate::rates`, kept in Redis beside it): each user's connections in a
//! sorted set of its own, `sb:{uc:<user>}` (member `<node>:<incarnation>:<conn_id>`, score:
//! when counted), changed by `user_conns.lua` at connect and by a batched `ZREM` at close.
//! Over the limit, the script either refuses the new connection or removes the user's
//! oldest members, whose connections are closed with 4005: this node's at once, other
//! nodes' through a bus entry (`k=kick`) that only the process named acts on.
//!
//! Dead processes' members are removed by the script when it meets them (see the script),
//! and every key expires a week after its last connect. When Redis cannot be asked, a
//! connection is taken uncounted: an outage must not lock users out.

use std::{
    sync::{Arc, PoisonError},
    time::Duration,
};

use redis::Value;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{Inner, RedisBus, keys::USERS_INTEREST, values::as_string};
use crate::{cluster::UserLimit, config::RefuseConnection, hub::ConnId, protocol::CloseCode};

/// A member of a process not known to be alive, counted longer ago than this, is a dead
/// process's: a live one is in the registry (renewed every 2 s) well within it.
const STALE: Duration = Duration::from_secs(30);

/// A user's key lives this long after its last connect: what a dead process leaves of a
/// user who never connects again goes by then.
const KEY_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long the processes known to be alive are taken from the registry before reading it
/// again.
const LIVE_FOR: Duration = Duration::from_secs(2);

/// Closed connections one `ZREM` pipeline takes at most.
const BATCH: usize = 512;

fn user_key(user: &str) -> String {
    format!("sb:{{uc:{user}}}")
}

/// What the registry said was alive, and when it was read.
#[derive(Debug, Default)]
pub(super) struct LiveProcesses {
    read_at: Option<Instant>,
    processes: Arc<Vec<String>>,
}

impl RedisBus {
    pub(super) async fn admit_user_everywhere(
        &self,
        user: &Arc<str>,
        conn_id: ConnId,
        limit: UserLimit,
    ) -> bool {
        match self.count_user_connection(user, conn_id, limit).await {
            Ok(Some(victims)) => {
                for victim in victims {
                    self.kick(&victim).await;
                }
                true
            }
            Ok(None) => false,
            Err(err) => {
                tracing::warn!(%err, %user, "Connections per user not counted; connection taken");
                true
            }
        }
    }

    /// `Some(victims)`: counted, after removing the members in `victims`; `None`: refused.
    async fn count_user_connection(
        &self,
        user: &str,
        conn_id: ConnId,
        limit: UserLimit,
    ) -> Result<Option<Vec<String>>, crate::cluster::BusError> {
        let inner = &self.inner;
        let live = inner.live_processes().await?;
        let mut conn = inner.conn()?;
        let mut invocation = inner.user_conns_script.key(user_key(user));
        invocation
            .arg(format!("{}:{conn_id}", inner.inbox_name()))
            .arg(limit.max)
            .arg(match limit.refuse {
                RefuseConnection::Oldest => "oldest",
                RefuseConnection::Newest => "newest",
            })
            .arg(super::values::millis(STALE))
            .arg(super::values::millis(KEY_TTL))
            .arg(&*live);
        let answer: Vec<Value> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|err| inner.failed("user_conns", &err))?;
        if answer.first().and_then(super::values::as_u64) != Some(1) {
            return Ok(None);
        }
        Ok(Some(answer.iter().skip(2).filter_map(as_string).collect()))
    }

    /// Takes up to `wanted` grants of the budget `key` (`rate.lua`).
    pub(super) async fn take_grants_from_redis(
        &self,
        key: &str,
        wanted: u32,
        interval: Duration,
        burst: u32,
    ) -> Result<crate::cluster::Grant, crate::cluster::BusError> {
        let inner = &self.inner;
        let mut conn = inner.conn()?;
        let interval_us = u64::try_from(interval.as_micros()).unwrap_or(u64::MAX);
        let (granted, retry_after_ms): (u32, u64) = inner
            .rate_script
            .key(format!("sb:{{rl:{key}}}"))
            .arg(wanted)
            .arg(interval_us)
            .arg(burst)
            .invoke_async(&mut conn)
            .await
            .map_err(|err| inner.failed("rate", &err))?;
        Ok(crate::cluster::Grant {
            granted,
            retry_after: Duration::from_millis(retry_after_ms),
        })
    }

    /// Closes the connection `member` names with 4005: here at once, elsewhere through the
    /// bus, which only the process named acts on.
    async fn kick(&self, member: &str) {
        let inner = &self.inner;
        let Some((process, conn_id)) = member.rsplit_once(':') else {
            return;
        };
        if process == inner.inbox_name() {
            if let Ok(conn_id) = conn_id.parse() {
                inner.hub.disconnect(conn_id, CloseCode::TooManyConnections);
            }
            return;
        }
        let fields = [
            ("k", "kick"),
            ("p", process),
            ("c", conn_id),
            ("n", &*inner.settings.node_id),
        ];
        if let Err(err) = self.append(0, USERS_INTEREST, &fields, "user_conns").await {
            tracing::warn!(%err, member, "A user's oldest connection elsewhere not closed");
        }
    }
}

impl Inner {
    /// The processes (`<node>:<incarnation>`) the registry says are alive, read again once
    /// [`LIVE_FOR`] old.
    async fn live_processes(&self) -> Result<Arc<Vec<String>>, crate::cluster::BusError> {
        {
            let held = self
                .live_processes
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if held.read_at.is_some_and(|at| at.elapsed() < LIVE_FOR) {
                return Ok(Arc::clone(&held.processes));
            }
        }
        let mut processes: Vec<String> = self
            .registered_incarnations()
            .await?
            .into_iter()
            .map(|(node, incarnation)| format!("{node}:{incarnation}"))
            .collect();
        let me = self.inbox_name();
        if !processes.contains(&me) {
            processes.push(me);
        }
        let processes = Arc::new(processes);
        *self
            .live_processes
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = LiveProcesses {
            read_at: Some(Instant::now()),
            processes: Arc::clone(&processes),
        };
        Ok(processes)
    }
}

/// Removes closed connections from their users' sets, a pipeline of up to [`BATCH`] at a
/// time, until `stop`. What Redis did not take is tried again a second later (at most
/// [`MAX_HELD`] closes are held; past that the oldest are dropped, and count against their
/// user until the key expires or, with `"oldest"`, until they are made room of).
pub(super) async fn forget_closed(
    inner: Arc<Inner>,
    mut closed: mpsc::UnboundedReceiver<(Arc<str>, ConnId)>,
    stop: CancellationToken,
) {
    let mut batch: Vec<(Arc<str>, ConnId)> = Vec::with_capacity(BATCH);
    loop {
        if batch.len() < BATCH {
            let room = BATCH - batch.len();
            tokio::select! {
                () = stop.cancelled() => return,
                taken = closed.recv_many(&mut batch, room) => {
                    if taken == 0 && batch.is_empty() {
                        return;
                    }
                }
            }
        }
        if remove(&inner, &batch).await {
            batch.clear();
            continue;
        }
        // Redis away: hold what came meanwhile too, up to MAX_HELD.
        while let Ok(more) = closed.try_recv() {
            batch.push(more);
        }
        if batch.len() > MAX_HELD {
            batch.drain(..batch.len() - MAX_HELD);
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Closed connections held for Redis at most.
const MAX_HELD: usize = 100_000;

async fn remove(inner: &Inner, closed: &[(Arc<str>, ConnId)]) -> bool {
    let Ok(mut conn) = inner.conn() else {
        return false;
    };
    let process = inner.inbox_name();
    let mut pipe = redis::pipe();
    for (user, conn_id) in closed {
        pipe.cmd("ZREM")
            .arg(user_key(user))
            .arg(format!("{process}:{conn_id}"))
            .ignore();
    }
    match pipe.query_async::<()>(&mut conn).await {
        Ok(()) => true,
        Err(err) => {
            inner.failed("user_conns", &err);
            false
        }
    }
}
