//! Health of the link to Redis and of each partition reader: outages logged once and shown
//! in `switchboard_redis_up`, stalled readers found, and what `/readyz` reports.

use std::{
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use super::{Inner, on_time_ms, since_start_ms};
use crate::telemetry;

/// A reader whose last completed read is older than this, while Redis answers, is stuck.
pub(super) const READER_STALL: Duration = Duration::from_secs(5);

/// Health of the link to Redis and of each partition reader, for readiness and metrics.
#[derive(Debug, Default)]
pub(super) struct Health {
    pub(super) redis_up: AtomicBool,
    /// Milliseconds since `started` when the current outage began (Redis was up before),
    /// and when Redis last came back: readers get `READER_STALL` from then before they count
    /// as stalled, so that a Redis restart does not fail every node's readiness at once.
    pub(super) down_since_ms: AtomicU64,
    pub(super) up_since_ms: AtomicU64,
    /// Whether "cannot reach Redis" was logged before the first connection.
    pub(super) first_failure_logged: AtomicBool,
    /// Whether the command link ever connected; the node is not ready before.
    pub(super) ever_connected: AtomicBool,
    pub(super) last_error: Mutex<String>,
    /// Each reader's last completed read, in on-time milliseconds since `started` (see
    /// `on_time_ms`).
    pub(super) reader_ok_ms: Vec<AtomicU64>,
    /// Entry id (ms part) each reader has reached, for the lag gauge.
    pub(super) reader_position_ms: Vec<AtomicU64>,
    /// Whether each reader has found its starting point; the node is not ready before.
    pub(super) reader_started: Vec<AtomicBool>,
    /// Whether the cluster's revocation list was read whole once; the node is not ready
    /// before (it would welcome a token the cluster revoked).
    pub(super) revocations_loaded: AtomicBool,
    /// Milliseconds since `started` of the watchdog's last restart of each reader.
    pub(super) reader_restarted_ms: Vec<AtomicU64>,
    /// Milliseconds since `started` of the last disturbance of the link (Redis went down or
    /// came back, a heartbeat stalled). Judging other nodes
    /// departed waits for a steady link (see [`Health::steady_for_ms`]).
    pub(super) disturbed_ms: AtomicU64,
    /// How many times what this node keeps in Redis may have been lost: Redis lost its data
    /// (a partition's `born` changed between connections), or the registry judged this node
    /// gone and others removed its members. Each one rewrites this node's presence and
    /// interest at once; a mere outage or stall does not (Redis kept them, and nobody judged
    /// this node while its entries were valid), so an overloaded Redis is not sent every
    /// channel again by every node that saw a command time out.
    pub(super) state_losses: AtomicU64,
    /// Each partition's `born` as this node last read it: a different value on a later
    /// connection means Redis lost its data meanwhile.
    pub(super) born_seen: Mutex<Vec<String>>,
    /// Redis's time (ms) as the last heartbeat read it, and when: an estimate of Redis's
    /// clock, which bounds how long a judgement sent now stays valid (see
    /// [`Health::judge_until`]).
    pub(super) redis_clock: Mutex<Option<(u64, tokio::time::Instant)>>,
    /// The Redis version, when it is too old for the scripts (see `connection::check_version`).
    pub(super) too_old: Mutex<Option<String>>,
    /// The last entry id each partition's reader processed. Kept outside the reader task so
    /// that a reader restarted by the watchdog goes on from there instead of skipping ahead.
    pub(super) reader_cursor: Vec<Mutex<Option<String>>>,
}

impl Health {
    /// Notes a disturbance of the link now.
    pub(super) fn disturbed(&self, now_ms: u64) {
        self.disturbed_ms.store(now_ms, Ordering::Release);
    }

    /// How long the link has been steady: since the last disturbance, or since start. A node
    /// judges another departed only on a link steady for at least the other's lifetime (its
    /// TTL): a clock that stood still for everyone (a Redis stall, this node's own outage)
    /// must not count as silence.
    pub(super) fn steady_for_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.disturbed_ms.load(Ordering::Acquire))
    }

    /// Whether this node's registry entry was written (a heartbeat answered).
    pub(super) fn registered(&self) -> bool {
        self.redis_clock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Notes Redis's time (ms), read now.
    pub(super) fn redis_time(&self, redis_now_ms: u64) {
        *self
            .redis_clock
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            Some((redis_now_ms, tokio::time::Instant::now()));
    }

    /// The Redis time (ms) until which a script sent now may judge other nodes departed, or
    /// 0 when it may not: the link must have been steady for `steady_ms`, and the judgement
    /// holds only until a second past Redis's estimated time now. A script that waited in a
    /// frozen Redis (a stall, a slow command) runs after that and judges nobody: the others'
    /// refreshes were stuck behind the same stall.
    pub(super) fn judge_until(&self, now_ms: u64, steady_ms: u64) -> u64 {
        if self.steady_for_ms(now_ms) < steady_ms {
            return 0;
        }
        let clock = *self
            .redis_clock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        clock.map_or(0, |(redis_ms, read_at)| {
            let since = u64::try_from(read_at.elapsed().as_millis()).unwrap_or(u64::MAX);
            redis_ms.saturating_add(since).saturating_add(1000)
        })
    }

    /// Notes that what this node keeps in Redis may have been lost (see
    /// [`Health::state_losses`](Health)).
    pub(super) fn state_lost(&self, why: &'static str) {
        tracing::warn!(
            why,
            "This node's presence and interest in Redis may be lost; writing them again"
        );
        self.state_losses.fetch_add(1, Ordering::AcqRel);
    }

    /// How many times this node's state in Redis may have been lost.
    pub(super) fn state_losses(&self) -> u64 {
        self.state_losses.load(Ordering::Acquire)
    }

    /// Redis answered (a new connection): logs the end of an outage, with its duration.
    pub(super) fn came_up(&self, now_ms: u64) {
        self.disturbed(now_ms);
        telemetry::redis_up(true);
        self.up_since_ms.store(now_ms, Ordering::Release);
        let was_up = self.redis_up.swap(true, Ordering::AcqRel);
        let first = !self.ever_connected.swap(true, Ordering::AcqRel);
        if first {
            tracing::info!("Connected to Redis");
        } else if !was_up {
            let outage_ms = now_ms.saturating_sub(self.down_since_ms.load(Ordering::Acquire));
            tracing::warn!(outage_ms, "Redis reachable again; outage over");
        }
    }

    /// Redis is unreachable: logs once when an outage begins (and once before the first
    /// connection), not for every failed command or reconnect attempt.
    pub(super) fn went_down(&self, now_ms: u64) {
        self.disturbed(now_ms);
        telemetry::redis_up(false);
        if self.redis_up.swap(false, Ordering::AcqRel) {
            self.down_since_ms.store(now_ms, Ordering::Release);
            let last = self.last_error();
            tracing::warn!(
                error = %last,
                "Redis unreachable: outage began (publishes get 503 until it is back)"
            );
        } else if !self.ever_connected.load(Ordering::Acquire)
            && !self.first_failure_logged.swap(true, Ordering::AcqRel)
        {
            let last = self.last_error();
            tracing::warn!(error = %last, "Cannot reach Redis yet; retrying");
        }
    }

    pub(super) fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn error(&self, op: &'static str, err: &dyn std::fmt::Display) {
        telemetry::redis_error(op);
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = format!("{op}: {err}");
    }
}

/// Readers that have not completed a read for `READER_STALL` of the event loop's on-time
/// running ([`on_time_ms`]: a reader waiting for a late event loop is late, not stuck), nor
/// since Redis came back (readers failed during an outage; they get a stall period from
/// Redis's return).
pub(super) fn stalled_readers(inner: &Inner) -> Vec<usize> {
    let (now, on_time) = (since_start_ms(inner), on_time_ms(inner));
    let stall = u64::try_from(READER_STALL.as_millis()).unwrap_or(u64::MAX);
    let up_since = inner.health.up_since_ms.load(Ordering::Acquire);
    if now.saturating_sub(up_since) <= stall {
        return Vec::new();
    }
    inner
        .health
        .reader_ok_ms
        .iter()
        .enumerate()
        .filter(|(_, ok)| on_time.saturating_sub(ok.load(Ordering::Relaxed)) > stall)
        .map(|(partition, _)| partition)
        .collect()
}

impl Inner {
    /// Reasons this node is unfit to serve (see `Bus::unready_reasons`).
    pub(super) fn unready_reasons(&self) -> Vec<String> {
        let health = &self.health;
        let mut reasons = Vec::new();
        // A node that has not yet found its place in every partition cannot deliver what is
        // published elsewhere: never ready before that, outage or not.
        let starting = health
            .reader_started
            .iter()
            .filter(|started| !started.load(Ordering::Acquire))
            .count();
        if starting > 0 {
            reasons.push(format!("{starting} bus partition readers starting"));
        }
        if !health.ever_connected.load(Ordering::Acquire) {
            reasons.push("connecting to redis".to_owned());
        }
        if !health.revocations_loaded.load(Ordering::Acquire) {
            reasons.push("revocation list loading".to_owned());
        }
        let redis_up = health.redis_up.load(Ordering::Acquire);
        if !redis_up && self.settings.outage_fails_readiness {
            reasons.push("redis unreachable".to_owned());
        }
        if let Some(version) = &*health
            .too_old
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            reasons.push(format!("redis {version} is older than 6.2"));
        }
        if redis_up {
            for partition in stalled_readers(self) {
                reasons.push(format!("bus reader for partition {partition} is stalled"));
            }
        }
        reasons
    }

    /// An outage of Redis itself, which does not fail readiness (see `Bus::details`).
    pub(super) fn details(&self) -> Vec<String> {
        let health = &self.health;
        if health.redis_up.load(Ordering::Acquire) {
            return Vec::new();
        }
        vec![format!("redis unreachable ({})", health.last_error())]
    }
}
