use std::time::Duration;

use proptest::prelude::*;

use super::*;

const SECOND: Nanos = 1_000_000_000;

fn quota(per_second: u32, burst: u32) -> Quota {
    Quota::new(per_second, burst).unwrap()
}

#[test]
fn a_full_bucket_grants_the_burst_then_the_rate() {
    let quota = quota(10, 5);
    let bucket = TokenBucket::new();
    let start = 7 * SECOND;
    for _ in 0..5 {
        bucket.try_acquire(&quota, start, 1).unwrap();
    }
    let rejected = bucket.try_acquire(&quota, start, 1).unwrap_err();
    assert_eq!(rejected.retry_after, Duration::from_millis(100));
    // One token every 100 ms.
    assert!(
        bucket
            .try_acquire(&quota, start + SECOND / 10 - 1, 1)
            .is_err()
    );
    bucket.try_acquire(&quota, start + SECOND / 10, 1).unwrap();
    assert!(!bucket.is_full(start + SECOND / 10));
    assert!(bucket.is_full(start + SECOND / 10 + SECOND / 2));
}

#[test]
fn zero_means_no_limit() {
    assert_eq!(Quota::new(0, 5), None);
    assert_eq!(Quota::new(5, 0), None);
}

#[test]
fn a_rejected_request_takes_nothing() {
    let quota = quota(1, 3);
    let bucket = TokenBucket::new();
    bucket.try_acquire(&quota, SECOND, 2).unwrap();
    assert!(bucket.try_acquire(&quota, SECOND, 2).is_err());
    bucket.try_acquire(&quota, SECOND, 1).unwrap();
    assert!(
        bucket.try_acquire(&quota, SECOND, 4).is_err(),
        "more than the burst"
    );
}

#[test]
fn keys_have_their_own_buckets_and_full_ones_are_forgotten() {
    let limiter = KeyedLimiter::new(quota(1, 1));
    limiter.try_acquire(&"a", SECOND, 1).unwrap();
    assert!(limiter.try_acquire(&"a", SECOND, 1).is_err());
    limiter.try_acquire(&"b", SECOND, 1).unwrap();
    assert_eq!(limiter.len(), 2);
    assert_eq!(limiter.forget_full(SECOND + SECOND / 2), 2);
    assert_eq!(limiter.forget_full(2 * SECOND), 0);
    limiter.try_acquire(&"a", 2 * SECOND, 1).unwrap();
}

#[test]
fn concurrent_takers_never_exceed_the_burst() {
    let quota = quota(1, 1_000);
    let bucket = std::sync::Arc::new(TokenBucket::new());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let bucket = std::sync::Arc::clone(&bucket);
            std::thread::spawn(move || {
                (0..1_000)
                    .filter(|_| bucket.try_acquire(&quota, SECOND, 1).is_ok())
                    .count()
            })
        })
        .collect();
    let granted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(granted, 1_000);
}

proptest! {
    /// Over any run of requests, the grants never exceed `burst + rate * elapsed`.
    #[test]
    fn never_grants_more_than_burst_plus_rate_times_t(
        per_second in 1u32..10_000,
        burst in 1u32..100,
        steps in proptest::collection::vec((0u64..50_000_000, 1u32..4), 1..300),
    ) {
        let quota = quota(per_second, burst);
    let bucket = TokenBucket::new();
        let start = 3 * SECOND;
        let mut now = start;
        let mut granted: u64 = 0;
        for (advance, n) in steps {
            now += advance;
            if bucket.try_acquire(&quota, now, n).is_ok() {
                granted += u64::from(n);
            }
            let elapsed = now - start;
            let allowed = u64::from(burst) + u64::from(per_second) * elapsed / SECOND;
            prop_assert!(granted <= allowed, "{granted} granted, {allowed} allowed after {elapsed} ns");
        }
    }

    /// A client that waits as long as it is told always gets through.
    #[test]
    fn waiting_retry_after_is_enough(per_second in 1u32..1_000, burst in 1u32..20) {
        let quota = quota(per_second, burst);
    let bucket = TokenBucket::new();
        let now = SECOND;
        for _ in 0..burst {
            bucket.try_acquire(&quota, now, 1).unwrap();
        }
        let wait = bucket.try_acquire(&quota, now, 1).unwrap_err().retry_after;
        let wait_ns = u64::try_from(wait.as_nanos()).unwrap();
        prop_assert!(bucket.try_acquire(&quota, now + wait_ns, 1).is_ok());
    }
}
