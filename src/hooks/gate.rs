//! What keeps a storm of clients from becoming a storm of backend requests: at most
//! `hooks.max_in_flight` requests in flight per node, a bounded queue of those waiting for a
//! slot (first come, first served; each waits at most `hooks.queue_timeout`), and a circuit
//! breaker per hook that fails requests at once after consecutive failures until a probe
//! succeeds.

use std::{
    sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    time::Duration,
};

use tokio::sync::{Semaphore, SemaphorePermit};

/// Why a request was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// `hooks.max_queued` requests already wait.
    QueueFull,
    /// No slot came free within `hooks.queue_timeout`.
    QueueTimeout,
    /// The hook's circuit breaker is open.
    BreakerOpen,
}

impl Busy {
    /// A bounded label for metrics.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Busy::QueueFull => "queue_full",
            Busy::QueueTimeout => "queue_timeout",
            Busy::BreakerOpen => "breaker_open",
        }
    }
}

/// The node's slots for requests in flight, and the queue before them.
#[derive(Debug)]
pub struct Gate {
    slots: Semaphore,
    queued: AtomicUsize,
    max_queued: usize,
    queue_timeout: Duration,
}

/// Counts a waiting request out of the queue however its wait ends (it may be dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        crate::telemetry::hook_queued(-1.0);
    }
}

impl Gate {
    #[must_use]
    pub fn new(max_in_flight: usize, max_queued: usize, queue_timeout: Duration) -> Self {
        Self {
            slots: Semaphore::new(max_in_flight),
            queued: AtomicUsize::new(0),
            max_queued,
            queue_timeout,
        }
    }

    /// A slot for one request: at once when one is free and nobody waits (the semaphore is
    /// fair, so a newcomer never overtakes the queue), else after waiting in the queue.
    ///
    /// # Errors
    /// [`Busy::QueueFull`] or [`Busy::QueueTimeout`].
    pub async fn enter(&self) -> Result<SemaphorePermit<'_>, Busy> {
        if let Ok(permit) = self.slots.try_acquire() {
            return Ok(permit);
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(Busy::QueueFull);
        }
        crate::telemetry::hook_queued(1.0);
        let _waiting = Waiting(&self.queued);
        match tokio::time::timeout(self.queue_timeout, self.slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed.
            Ok(Err(_)) | Err(_) => Err(Busy::QueueTimeout),
        }
    }

    /// Requests waiting for a slot now.
    #[must_use]
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

/// One hook's circuit breaker: closed while requests succeed; open for `cooldown` after
/// `threshold` consecutive failures (requests fail at once); then one probe goes through,
/// and its outcome closes the breaker or opens it again. A probe that never reports (its
/// client went away mid-request) holds the breaker open for one more cooldown only: letting
/// a probe through moves the end of the cooldown, so the breaker cannot stay stuck. Times
/// are milliseconds of the caller's clock.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown_ms: u64,
    failures: AtomicU32,
    open_until_ms: AtomicU64,
}

impl Breaker {
    /// `threshold` 0: never opens.
    #[must_use]
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold,
            cooldown_ms: u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX),
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
        }
    }

    /// Whether a request may go now: always while closed; while open, one probe per
    /// cooldown.
    pub fn admit(&self, now_ms: u64) -> bool {
        if !self.is_open() {
            return true;
        }
        let until = self.open_until_ms.load(Ordering::Acquire);
        now_ms >= until
            && self
                .open_until_ms
                .compare_exchange(
                    until,
                    now_ms.saturating_add(self.cooldown_ms),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    /// Whether the breaker is open (or half open, a probe out).
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.threshold > 0 && self.failures.load(Ordering::Acquire) >= self.threshold
    }

    /// A request succeeded (the backend answered, whatever it decided): the breaker closes.
    pub fn succeeded(&self) {
        self.failures.store(0, Ordering::Release);
    }

    /// A request failed; returns whether the breaker is open now.
    pub fn failed(&self, now_ms: u64) -> bool {
        let failures = self
            .failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        if self.threshold == 0 || failures < self.threshold {
            return false;
        }
        self.open_until_ms
            .store(now_ms.saturating_add(self.cooldown_ms), Ordering::Release);
        true
    }
}

#[cfg(test)]
mod tests;
