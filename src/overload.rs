//! Admission by the event loop's lag: a node whose runtime runs its tasks late (starved of
//! CPU, or more work queued than it can do) refuses new upgrades until it catches up, so
//! that it serves the connections it has instead of accepting ones it cannot serve.
//!
//! Accepted anyway, such upgrades are what turns an overload into a collapse: clients that
//! cannot be served retry, and the retries become most of the work (issue 27's million run
//! on two cores, at 742,749 sockets). Refused with 503 and `Retry-After`, clients go to
//! another node, or wait.
//!
//! The lag is how late a task that sleeps `TICK` wakes, the largest over each `WINDOW`:
//! `switchboard_event_loop_lag_seconds`. Above `limits.max_event_loop_lag` new upgrades get 503
//! `overloaded` and `/readyz` reports `overloaded`, while existing connections go on; below
//! half of it the node accepts again.
//!
//! The same watch keeps the node's [`LagClock`](crate::hub::LagClock), the lateness summed
//! since start: Redis commands read it, so that a reply the late event loop had not read
//! yet is waited for instead of being taken for a Redis outage.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    hub::HubHandle,
    shutdown::{Latch, Readiness},
    telemetry,
};

/// How often the watch wakes: its lateness is the lag.
const TICK: Duration = Duration::from_millis(100);
/// The lag reported and judged is the largest lateness over this window.
const WINDOW: Duration = Duration::from_secs(1);
/// At most one warning per this long: a node at the edge starts lagging every few seconds.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Measures the lag of the runtime it runs on (the sessions' one) every `WINDOW` and, with a
/// `threshold`, refuses upgrades while the lag is above it (until it is back under half of
/// it), holding a readiness latch meanwhile.
pub async fn watch_lag(
    hub: HubHandle,
    readiness: Readiness,
    threshold: Option<Duration>,
    stop: CancellationToken,
) {
    let mut latch: Option<Latch> = None;
    let mut warned: Option<Instant> = None;
    let mut window_started = Instant::now();
    let mut worst = Duration::ZERO;
    let clock = hub.lag_clock();
    let mut asked = Instant::now();
    clock.ticked(Duration::ZERO, asked + TICK);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(TICK) => {}
        }
        let woke = Instant::now();
        let late = woke.saturating_duration_since(asked).saturating_sub(TICK);
        clock.ticked(late, woke + TICK);
        asked = woke;
        worst = worst.max(late);
        if window_started.elapsed() < WINDOW {
            continue;
        }
        let lag = std::mem::take(&mut worst);
        window_started = Instant::now();
        telemetry::event_loop_lag(lag);
        let Some(threshold) = threshold else {
            continue;
        };
        let over = if latch.is_some() {
            lag > threshold / 2
        } else {
            lag > threshold
        };
        if over != latch.is_some() {
            if over {
                if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    warned = Some(Instant::now());
                    tracing::warn!(
                        lag_ms = lag.as_millis(),
                        threshold_ms = threshold.as_millis(),
                        "Event loop lagging: refusing new connections (switchboard_overloaded says \
                         when; logged once a minute at most)"
                    );
                }
                latch = Some(readiness.hold("overloaded"));
            } else {
                tracing::debug!(lag_ms = lag.as_millis(), "Event loop caught up");
                latch = None;
            }
        }
        hub.set_overloaded(over);
        telemetry::overloaded(over);
    }
}
