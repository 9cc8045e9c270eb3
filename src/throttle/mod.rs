//! Token buckets: how often a client, an address or an API key may do something.
//!
//! A [`TokenBucket`] is the generic cell rate algorithm (GCRA): one atomic "theoretical
//! arrival time" per bucket, so checking it is a load and a compare-and-swap with no lock and
//! no refill timer. It grants at most `burst` at once and `rate` per second after that; over
//! any interval of length t it never grants more than `burst + rate * t`. [`KeyedLimiter`]
//! holds one bucket per key (an IP address, an API key) and forgets buckets that have
//! refilled, since a full bucket behaves exactly like a new one.
//!
//! Time is injected: every call takes `now` in nanoseconds from any monotonic origin the
//! caller picks, so the module is pure and tests need no clock. Must not depend on anything
//! internal.

#[cfg(test)]
mod tests;

use std::{
    hash::Hash,
    num::NonZeroU32,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use dashmap::DashMap;

/// Nanoseconds since the caller's chosen origin.
pub type Nanos = u64;

/// A sustained rate with a burst allowance: how much one bucket grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    per_second: NonZeroU32,
    burst: NonZeroU32,
    /// Nanoseconds one grant costs. Rounded up, so rounding can only make the bucket stricter.
    interval_ns: u64,
    /// How far ahead of `now` a bucket's `full_at` may run: the burst's worth of grants.
    capacity_ns: u64,
}

impl Quota {
    /// The quota for a configured rate and burst; `None` (no limit) when either is 0.
    #[must_use]
    pub fn new(per_second: u32, burst: u32) -> Option<Self> {
        Self::over(per_second, 1_000_000_000, burst)
    }

    /// The quota for `per_minute` grants a minute and `burst` at once; `None` (no limit)
    /// when either is 0. Its [`Quota::per_second`] is rounded up to at least 1.
    #[must_use]
    pub fn per_minute(per_minute: u32, burst: u32) -> Option<Self> {
        Self::over(per_minute, 60_000_000_000, burst)
    }

    /// `grants` per `period_ns`, `burst` at once; `None` when either is 0.
    fn over(grants: u32, period_ns: u64, burst: u32) -> Option<Self> {
        let grants = NonZeroU32::new(grants)?;
        let burst = NonZeroU32::new(burst)?;
        let interval_ns = period_ns.div_ceil(u64::from(grants.get()));
        let per_second = u32::try_from(
            u64::from(grants.get())
                .saturating_mul(1_000_000_000)
                .div_ceil(period_ns),
        )
        .unwrap_or(u32::MAX);
        Some(Self {
            per_second: NonZeroU32::new(per_second)?,
            burst,
            interval_ns,
            capacity_ns: interval_ns.saturating_mul(u64::from(burst.get())),
        })
    }

    /// The time one grant costs: the bucket refills one grant per interval.
    #[must_use]
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval_ns)
    }

    /// Grants per second once the burst is used up.
    #[must_use]
    pub fn per_second(&self) -> u32 {
        self.per_second.get()
    }

    /// Grants available at once from a full bucket.
    #[must_use]
    pub fn burst(&self) -> u32 {
        self.burst.get()
    }
}

/// A request the bucket could not grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limited; retry after {retry_after:?}")]
pub struct Rejected {
    /// When the same request would be granted if nothing else took tokens meanwhile. The
    /// caller should tell the client, or simply drop the request.
    pub retry_after: Duration,
}

/// One token bucket's state (GCRA), safe to share between threads. Its [`Quota`] is kept by
/// the owner and passed in, so a bucket is one word: a million connections' buckets cost
/// 8 MB, not 24.
#[derive(Debug, Default)]
pub struct TokenBucket {
    /// The time at which the bucket would be full again; at or before `now` means full.
    full_at: AtomicU64,
}

impl TokenBucket {
    /// A full bucket.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            full_at: AtomicU64::new(0),
        }
    }

    /// Takes `n` tokens at `now` under `quota`, or none. Use the same quota for a bucket's
    /// whole life.
    ///
    /// # Errors
    /// [`Rejected`] when fewer than `n` tokens are left; nothing is taken then. A request for
    /// more than the burst is always rejected.
    pub fn try_acquire(&self, quota: &Quota, now: Nanos, n: u32) -> Result<(), Rejected> {
        let cost = quota.interval_ns.saturating_mul(u64::from(n));
        let mut full_at = self.full_at.load(Ordering::Relaxed);
        loop {
            let next = full_at.max(now).saturating_add(cost);
            let ahead = next - now;
            if ahead > quota.capacity_ns {
                return Err(Rejected {
                    retry_after: Duration::from_nanos(ahead - quota.capacity_ns),
                });
            }
            // Relaxed: the bucket's one word is its whole state; nothing else is published
            // through it.
            match self.full_at.compare_exchange_weak(
                full_at,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(current) => full_at = current,
            }
        }
    }

    /// Whether the bucket has refilled completely by `now`.
    #[must_use]
    pub fn is_full(&self, now: Nanos) -> bool {
        self.full_at.load(Ordering::Relaxed) <= now
    }
}

/// One bucket per key, created on first use and forgotten once full again.
#[derive(Debug)]
pub struct KeyedLimiter<K: Hash + Eq> {
    quota: Quota,
    buckets: DashMap<K, TokenBucket>,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    #[must_use]
    pub fn new(quota: Quota) -> Self {
        Self {
            quota,
            buckets: DashMap::new(),
        }
    }

    #[must_use]
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// Takes `n` tokens from `key`'s bucket at `now`.
    ///
    /// # Errors
    /// [`Rejected`] as in [`TokenBucket::try_acquire`].
    pub fn try_acquire(&self, key: &K, now: Nanos, n: u32) -> Result<(), Rejected> {
        // The read path first: a known key costs a shard read lock, not a write lock.
        if let Some(bucket) = self.buckets.get(key) {
            return bucket.try_acquire(&self.quota, now, n);
        }
        self.buckets
            .entry(key.clone())
            .or_default()
            .try_acquire(&self.quota, now, n)
    }

    /// Forgets every bucket that has refilled by `now` (a full bucket is the same as none).
    /// Returns how many remain. Call it periodically so idle keys do not accumulate.
    pub fn forget_full(&self, now: Nanos) -> usize {
        self.buckets.retain(|_, bucket| !bucket.is_full(now));
        self.buckets.len()
    }

    /// Keys with a bucket that is not full.
    #[must_use]
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}
