//! The node's periodic upkeep: sweeping history and idle channels, keepalive, metrics, and
//! keeping the JWKS keys fresh.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use super::{METRICS_UPKEEP_INTERVAL, SWEEP_INTERVAL};
use crate::{
    config::Config,
    control::ControlContext,
    hub::HubHandle,
    memory,
    session::SessionContext,
    shutdown::{Latch, TaskGroup},
    telemetry,
};

/// The periodic tasks: keepalive pings and idle closes, held appends of message streams, the
/// sweep of idle streams, expired history, idle channels and full rate-limit buckets, and
/// the metrics recorder's upkeep.
pub(super) fn spawn_periodic(
    config: &Config,
    hub: &HubHandle,
    (sessions, control): (&Arc<SessionContext>, &Arc<ControlContext>),
    tasks: &TaskGroup,
    stop: &CancellationToken,
) {
    let (heartbeat, idle_timeout) = (config.session.heartbeat, config.session.idle_timeout);
    tasks.spawn(every(keepalive_tick(heartbeat), stop.clone(), {
        let hub = Arc::clone(hub);
        move || {
            hub.keepalive(heartbeat, idle_timeout);
        }
    }));
    // Held appends of message streams, sent as their coalescing interval ends.
    tasks.spawn(Arc::clone(hub).run_coalescer(stop.clone()));
    tasks.spawn(every(SWEEP_INTERVAL, stop.clone(), {
        let (hub, sessions, control) = (Arc::clone(hub), Arc::clone(sessions), Arc::clone(control));
        let sampling = Arc::new(std::sync::atomic::AtomicBool::new(false));
        move || {
            hub.sweep();
            // What /metrics reports of every connection (queues, buffers, descriptors),
            // gathered here so that a scrape's cost does not grow with the connections: a
            // pass over every connection and every descriptor, so on a thread of its own (not
            // a sessions' worker, and not named like one), one at a time.
            if !sampling.swap(true, std::sync::atomic::Ordering::AcqRel) {
                let (hub, flag) = (Arc::clone(&hub), Arc::clone(&sampling));
                let spawned = std::thread::Builder::new()
                    .name("switchboard-sample".to_owned())
                    .spawn(move || {
                        hub.sample_queues();
                        telemetry::collect_process();
                        let meter = memory::meter();
                        if let Some(used) = meter.used() {
                            telemetry::memory_used(meter.source.label(), used);
                        }
                        flag.store(false, std::sync::atomic::Ordering::Release);
                    });
                if let Err(err) = spawned {
                    sampling.store(false, std::sync::atomic::Ordering::Release);
                    tracing::warn!(error = %err, "Could not start the metrics sampling thread");
                }
            }
            // Full buckets behave like absent ones; forgetting them bounds the maps by the
            // keys active within the last burst's refill time.
            let now = hub.clock_ns();
            if let Some(limiter) = &sessions.connect_limiter {
                limiter.forget_full(now);
            }
            if let Some(limiter) = &control.settings.key_limiter {
                limiter.forget_full(now);
            }
            for limiter in [&sessions.channel_budget, &control.channel_budget]
                .into_iter()
                .flatten()
            {
                limiter.forget_full(now);
            }
        }
    }));
    let metrics = control.metrics.clone();
    tasks.spawn(every(METRICS_UPKEEP_INTERVAL, stop.clone(), move || {
        metrics.run_upkeep();
    }));
}

/// How often the keepalive sweep runs: a fifth of the heartbeat, between 10 ms and 1 s. Pings
/// and idle closes happen up to one tick late; a pass costs a few atomic loads per connection
/// (about 10 ms for a million).
pub(super) fn keepalive_tick(heartbeat: Duration) -> Duration {
    (heartbeat / 5).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Fetches the JWKS at start and every `refresh`; while no key is held, retries every
/// `retry` (or `refresh`, if shorter) and holds `unloaded` (a readiness latch) if given.
pub(super) async fn keep_jwks(
    jwks: Arc<crate::auth::Jwks>,
    refresh: Duration,
    retry: Duration,
    mut unloaded: Option<Latch>,
    stop: CancellationToken,
) {
    loop {
        let held = tokio::select! {
            () = stop.cancelled() => return,
            held = jwks.refresh() => held,
        };
        if held > 0 {
            // Loaded: ready as far as tokens go.
            drop(unloaded.take());
        }
        let wait = if held > 0 {
            refresh
        } else {
            retry.min(refresh)
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Calls `tick` every `period` until `stop` is cancelled.
pub(super) async fn every(
    period: Duration,
    stop: CancellationToken,
    mut tick: impl FnMut() + Send,
) {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = interval.tick() => tick(),
        }
    }
}
