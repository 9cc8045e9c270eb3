use std::{sync::Arc, time::Duration};

use redis::RedisFuture;
use tokio::time::{Instant, sleep};

use super::Patience;
use crate::hub::LagClock;

/// The event loop ran `late` behind, noted at `after` from now (the lag watch's tick).
fn late_by(clock: &Arc<LagClock>, after: Duration, late: Duration) {
    let clock = Arc::clone(clock);
    tokio::spawn(async move {
        sleep(after).await;
        clock.ticked(late, Instant::now() + Duration::from_secs(3600));
    });
}

#[tokio::test(start_paused = true)]
async fn a_wait_is_extended_by_the_event_loops_lateness_up_to_four_times_its_limit() {
    let clock = Arc::new(LagClock::default());
    // The watch ran; its next tick is far off, so no tick is overdue meanwhile.
    clock.ticked(Duration::ZERO, Instant::now() + Duration::from_secs(3600));
    let patience = Patience::new(Duration::from_secs(1), Some(Arc::clone(&clock)));

    // A reply at 2.5 s while the event loop ran 2 s late: waited for.
    late_by(&clock, Duration::from_millis(500), Duration::from_secs(2));
    let reply: RedisFuture<'_, u8> = Box::pin(async {
        sleep(Duration::from_millis(2500)).await;
        Ok(7)
    });
    assert_eq!(patience.wait(reply).await.unwrap(), 7);

    // On time: the limit, no more.
    let started = Instant::now();
    let never: RedisFuture<'_, u8> = Box::pin(std::future::pending());
    assert!(patience.wait(never).await.unwrap_err().is_timeout());
    assert_eq!(started.elapsed(), Duration::from_secs(1));

    // A minute late: four times the limit at most.
    let started = Instant::now();
    late_by(&clock, Duration::from_millis(500), Duration::from_secs(60));
    let never: RedisFuture<'_, u8> = Box::pin(std::future::pending());
    assert!(patience.wait(never).await.unwrap_err().is_timeout());
    assert_eq!(started.elapsed(), Duration::from_secs(4));

    // Without a clock (a thread of its own): the limit.
    let started = Instant::now();
    let never: RedisFuture<'_, u8> = Box::pin(std::future::pending());
    let alone = Patience::new(Duration::from_secs(1), None);
    assert!(alone.wait(never).await.unwrap_err().is_timeout());
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

#[test]
fn the_redis_version_is_read_from_info_server() {
    let info = "# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:00000000\r\n";
    assert_eq!(super::redis_version(info), Some((7, 0, 15)));
    assert_eq!(
        super::redis_version("redis_version:6.0\r\n"),
        Some((6, 0, 0))
    );
    assert_eq!(super::redis_version("nothing"), None);
}
