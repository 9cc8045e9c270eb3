use super::*;

#[test]
fn opens_after_consecutive_failures_and_lets_one_probe_through_after_the_cooldown() {
    let breaker = Breaker::new(3, Duration::from_secs(5));
    assert!(!breaker.failed(0));
    breaker.succeeded();
    assert!(!breaker.failed(0));
    assert!(!breaker.failed(0));
    assert!(breaker.admit(10), "a success reset the count");
    assert!(breaker.failed(100));
    assert!(!breaker.admit(200));
    assert!(!breaker.admit(5_099));
    assert!(breaker.admit(5_100), "the probe");
    assert!(!breaker.admit(5_100), "only one probe");
    assert!(breaker.failed(5_200), "a failed probe opens it again");
    assert!(!breaker.admit(6_000));
    assert!(breaker.admit(10_200));
    assert!(!breaker.admit(10_300));
    assert!(
        breaker.admit(15_200),
        "a probe that never reported holds it for one cooldown only"
    );
    breaker.succeeded();
    assert!(breaker.admit(15_201) && breaker.admit(15_202), "closed");
}

#[test]
fn a_zero_threshold_never_opens() {
    let breaker = Breaker::new(0, Duration::from_secs(5));
    for _ in 0..100 {
        assert!(!breaker.failed(0));
    }
    assert!(breaker.admit(0));
}

#[tokio::test(start_paused = true)]
async fn a_full_gate_queues_then_refuses_and_times_out() {
    let gate = Gate::new(1, 1, Duration::from_secs(1));
    let held = gate.enter().await.unwrap();
    let waiter = gate.enter();
    tokio::pin!(waiter);
    assert!(futures_util::poll!(waiter.as_mut()).is_pending());
    assert_eq!(gate.queued(), 1);
    assert_eq!(gate.enter().await.unwrap_err(), Busy::QueueFull);
    drop(held);
    assert!(waiter.await.is_ok(), "the waiter got the freed slot");
    assert_eq!(gate.queued(), 0);
    let held = gate.enter().await.unwrap();
    assert_eq!(gate.enter().await.unwrap_err(), Busy::QueueTimeout);
    assert_eq!(gate.queued(), 0);
    drop(held);
}
