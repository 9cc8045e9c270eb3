use super::*;
use crate::hub::{Hub, HubSettings};

const SECOND: Duration = Duration::from_secs(1);

/// A drainer of a node with no connection, a 1 s delay and a 2 s window.
fn drainer() -> (Drainer, Readiness, HubHandle) {
    let hub = Hub::new(HubSettings::default());
    let readiness = Readiness::new();
    let settings = DrainSettings {
        delay: SECOND,
        window: 2 * SECOND,
        deadline: None,
        grace: SECOND,
    };
    let drainer = Drainer::new(
        Arc::clone(&hub),
        readiness.clone(),
        settings,
        TaskGroup::new(),
    );
    (drainer, readiness, hub)
}

fn api(window: Option<Duration>, deadline: Option<Duration>) -> DrainRequest {
    DrainRequest { window, deadline }
}

#[tokio::test(start_paused = true)]
async fn a_drain_announces_then_refuses_upgrades_then_finishes() {
    let (drainer, readiness, hub) = drainer();
    assert_eq!(drainer.status().state, "serving");
    let status = drainer.start(Origin::Api, api(None, None)).unwrap();
    assert_eq!(
        (
            status.state,
            status.started_by,
            status.delay_ms,
            status.window_ms
        ),
        ("announcing", Some("api"), Some(1000), Some(2000))
    );
    assert_eq!(status.deadline_ms, Some(4000), "delay + window + grace");
    assert_eq!(readiness.reasons(), ["draining"], "unready at once");
    assert!(!hub.is_draining(), "upgrades are taken during the delay");

    tokio::time::sleep(SECOND + TICK * 2).await;
    assert!(hub.is_draining(), "upgrades are refused after the delay");
    tokio::time::timeout(SECOND, drainer.finished())
        .await
        .expect("a node with no connection finishes as soon as it closes");
    assert_eq!(drainer.status().state, "closed");
    assert_eq!(
        drainer.cancel().unwrap_err(),
        DrainError::NotDraining,
        "a finished drain cannot be cancelled"
    );
}

#[tokio::test(start_paused = true)]
async fn an_api_drain_is_cancelled_whole_and_a_signal_takes_it_over() {
    let (drainer, readiness, hub) = drainer();
    assert_eq!(drainer.cancel().unwrap_err(), DrainError::NotDraining);
    drainer.start(Origin::Api, api(None, None)).unwrap();
    assert_eq!(
        drainer.start(Origin::Api, api(None, None)).unwrap_err(),
        DrainError::AlreadyDraining
    );
    tokio::time::sleep(SECOND / 2).await;
    assert_eq!(drainer.cancel().unwrap().state, "serving");
    assert!(readiness.reasons().is_empty(), "ready again");
    tokio::time::sleep(10 * SECOND).await;
    assert!(
        !hub.is_draining(),
        "the cancelled drain never refuses upgrades"
    );
    assert_eq!(
        drainer.status().state,
        "serving",
        "the cancelled task did nothing more"
    );

    // A signal during an API drain takes it over: it can no longer be cancelled.
    drainer.start(Origin::Api, api(None, None)).unwrap();
    let status = drainer.start(Origin::Signal, api(None, None)).unwrap();
    assert_eq!(status.started_by, Some("signal"));
    assert_eq!(drainer.cancel().unwrap_err(), DrainError::StartedBySignal);
}

#[test]
fn a_window_or_deadline_out_of_range_is_refused_and_starts_nothing() {
    let (drainer, readiness, _hub) = drainer();
    assert_eq!(
        drainer
            .start(Origin::Api, api(Some(MAX_DRAIN + SECOND), None))
            .unwrap_err(),
        DrainError::TooLong {
            max_window_s: 3600,
            max_deadline_s: 7200
        }
    );
    assert_eq!(
        drainer
            .start(Origin::Api, api(Some(10 * SECOND), Some(5 * SECOND)))
            .unwrap_err(),
        DrainError::DeadlineTooSoon {
            deadline_ms: 5000,
            needed_ms: 11_000
        }
    );
    assert_eq!(drainer.status().state, "serving");
    assert!(readiness.reasons().is_empty());
}
