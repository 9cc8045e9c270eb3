//! How late the node's event loop ran, summed: kept by `overload::watch_lag`, read by
//! whatever waits on work the event loop does (Redis replies, see
//! `cluster::redis::connection::Patience`).

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::{Duration, Instant};

/// How late the sessions' runtime has run its tasks, summed since the watch started: a
/// waiter reads it before and after a wait, and the difference is how much of the wait the
/// event loop spent behind. While the watch's own tick is overdue, the time it is overdue
/// counts too, so that a reader learns of a stall still going on. Lock-free: written by the
/// watch, read from any thread.
#[derive(Debug)]
pub struct LagClock {
    base: Instant,
    /// Lateness of the watch's completed ticks, summed (µs).
    late_us: AtomicU64,
    /// When the watch's next tick is due (µs since `base`, plus one; 0 before the watch
    /// runs, so that a node without the watch never counts itself late).
    due_us: AtomicU64,
}

impl Default for LagClock {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            late_us: AtomicU64::new(0),
            due_us: AtomicU64::new(0),
        }
    }
}

impl LagClock {
    fn micros_since_base(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_micros()).unwrap_or(u64::MAX)
    }

    /// The watch's tick woke `late` behind its time; its next is due at `next_due`.
    pub fn ticked(&self, late: Duration, next_due: Instant) {
        let late = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
        self.late_us.fetch_add(late, Ordering::AcqRel);
        self.due_us
            .store(self.micros_since_base(next_due) + 1, Ordering::Release);
    }

    /// The event loop's lateness summed until now: the completed ticks', and the current
    /// one's if it is overdue.
    #[must_use]
    pub fn late(&self) -> Duration {
        let completed = self.late_us.load(Ordering::Acquire);
        let due = self.due_us.load(Ordering::Acquire);
        let overdue = if due == 0 {
            0
        } else {
            self.micros_since_base(Instant::now())
                .saturating_sub(due - 1)
        };
        Duration::from_micros(completed.saturating_add(overdue))
    }
}
