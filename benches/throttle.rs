//! Token bucket checks: the GCRA bucket (one atomic word) and the keyed limiter over many
//! keys, against the naive bucket a first implementation often has: tokens as a float,
//! refilled on access, every key behind one `Mutex<HashMap>`.
//!
//! Run: `cargo bench --bench throttle`

#![allow(
    clippy::unwrap_used,
    reason = "a bench that cannot set up should stop at once"
)]

use std::{
    collections::HashMap,
    hint::black_box,
    sync::{Arc, Mutex},
    thread,
};

use criterion::{Criterion, criterion_group, criterion_main};
use switchboard::throttle::{KeyedLimiter, Nanos, Quota, TokenBucket};

const KEYS: u64 = 10_000;

fn quota() -> Quota {
    // Generous, so the benches measure granted checks, the common case.
    Quota::new(1_000_000_000, 1_000_000).unwrap()
}

/// Tokens as a float refilled on access; all keys behind one lock.
struct NaiveLimiter {
    per_ns: f64,
    burst: f64,
    buckets: Mutex<HashMap<u64, (f64, Nanos)>>,
}

impl NaiveLimiter {
    fn new(quota: Quota) -> Self {
        Self {
            per_ns: f64::from(quota.per_second()) / 1e9,
            burst: f64::from(quota.burst()),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn try_acquire(&self, key: u64, now: Nanos) -> bool {
        let mut buckets = self.buckets.lock().unwrap();
        let (tokens, last) = buckets.entry(key).or_insert((self.burst, now));
        let refill = (now - *last) as f64 * self.per_ns;
        *tokens = (*tokens + refill).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn single_key(c: &mut Criterion) {
    let mut group = c.benchmark_group("throttle_one_key");
    let limit = quota();
    let bucket = TokenBucket::new();
    let mut now: Nanos = 1;
    group.bench_function("gcra_bucket", |b| {
        b.iter(|| {
            now += 10;
            black_box(bucket.try_acquire(&limit, now, 1).is_ok())
        });
    });
    let naive = NaiveLimiter::new(quota());
    let mut now: Nanos = 1;
    group.bench_function("naive_mutex_float", |b| {
        b.iter(|| {
            now += 10;
            black_box(naive.try_acquire(7, now))
        });
    });
    group.finish();
}

fn many_keys(c: &mut Criterion) {
    let mut group = c.benchmark_group("throttle_10k_keys");
    let keyed = KeyedLimiter::new(quota());
    let mut i: u64 = 0;
    group.bench_function("keyed_limiter", |b| {
        b.iter(|| {
            i += 1;
            black_box(keyed.try_acquire(&(i % KEYS), i, 1).is_ok())
        });
    });
    let naive = NaiveLimiter::new(quota());
    let mut i: u64 = 0;
    group.bench_function("naive_mutex_hashmap", |b| {
        b.iter(|| {
            i += 1;
            black_box(naive.try_acquire(i % KEYS, i))
        });
    });
    group.finish();
}

/// Two threads (this machine's cores) checking keys at once: the naive limiter serializes
/// them on its one lock.
fn contended(c: &mut Criterion) {
    const PER_THREAD: u64 = 10_000;
    let mut group = c.benchmark_group("throttle_2_threads_20k_checks");
    let keyed = Arc::new(KeyedLimiter::new(quota()));
    group.bench_function("keyed_limiter", |b| {
        b.iter(|| {
            run_threads(
                |key, now| keyed.try_acquire(&key, now, 1).is_ok(),
                PER_THREAD,
            )
        });
    });
    let naive = Arc::new(NaiveLimiter::new(quota()));
    group.bench_function("naive_mutex_hashmap", |b| {
        b.iter(|| run_threads(|key, now| naive.try_acquire(key, now), PER_THREAD));
    });
    group.finish();
}

fn run_threads(check: impl Fn(u64, Nanos) -> bool + Sync, per_thread: u64) {
    thread::scope(|scope| {
        for t in 0..2_u64 {
            let check = &check;
            scope.spawn(move || {
                for i in 0..per_thread {
                    black_box(check((i * 2 + t) % KEYS, i + 1));
                }
            });
        }
    });
}

criterion_group!(benches, single_key, many_keys, contended);
criterion_main!(benches);
