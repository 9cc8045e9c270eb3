//! Memory-pressure admission: the threshold, and the watch that refuses new upgrades while
//! the memory in use is above it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{
    hub::HubHandle,
    memory,
    shutdown::{Latch, Readiness},
    telemetry,
};

/// How often the memory is read for memory-pressure admission.
pub(super) const MEMORY_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The memory-pressure threshold: the configured one, or 90% of the memory limit of the
/// cgroup the meter found when configured 0; `None` when off.
pub(super) fn memory_threshold(configured: u64, meter: &memory::Meter) -> Option<u64> {
    if configured > 0 {
        return Some(configured);
    }
    Some(meter.limit? / 10 * 9)
}

/// Refuses new upgrades while the memory in use (`memory::meter`: the cgroup's working set
/// where it has a limit, else the resident set) is at or above `threshold`, and accepts
/// again below 95% of it, so that the node does not flap at the edge. Memory the allocator
/// keeps after frees is given back before it counts (`memory::give_back`), so pressure ends
/// when the spike that caused it ends. Holds a readiness latch and sets
/// `switchboard_memory_pressure` meanwhile, and `switchboard_memory_used_bytes` every tick.
pub(super) async fn watch_memory(
    hub: HubHandle,
    readiness: Readiness,
    threshold: u64,
    stop: CancellationToken,
) {
    let mut latch: Option<Latch> = None;
    // When the last trim ran, and how long it took.
    let mut last_trim = None;
    let mut interval = tokio::time::interval(MEMORY_WATCH_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = interval.tick() => {}
        }
        let meter = memory::meter();
        let Some(mut used) = meter.used() else {
            continue;
        };
        let limit = if latch.is_some() {
            threshold / 100 * 95
        } else {
            threshold
        };
        // Memory in use includes what the allocator keeps after frees: counted as
        // pressure, a spike that ended would refuse upgrades for the process's life. A trim
        // walks the heap under the allocator's locks, so while pressure lasts it runs at
        // most 1% of the time (each tick on a small heap, every 10 s if one takes 100 ms).
        let trim_due = last_trim
            .is_none_or(|(at, took): (tokio::time::Instant, Duration)| at.elapsed() >= took * 100);
        if used >= limit && trim_due {
            let started = tokio::time::Instant::now();
            let returned = memory::give_back();
            last_trim = Some((started, started.elapsed()));
            let before = used;
            used = meter.used().unwrap_or(used);
            tracing::debug!(
                before_bytes = before,
                after_bytes = used,
                returned,
                took_ms = started.elapsed().as_millis(),
                "Gave freed memory back to the system"
            );
        }
        let pressure = used >= limit;
        if pressure != latch.is_some() {
            if pressure {
                tracing::warn!(
                    used_bytes = used,
                    threshold_bytes = threshold,
                    "Memory pressure: refusing new connections"
                );
                latch = Some(readiness.hold("memory_pressure"));
            } else {
                tracing::info!(used_bytes = used, "Memory pressure over");
                latch = None;
            }
        }
        hub.set_memory_pressure(pressure);
        telemetry::memory_watched(pressure);
        telemetry::memory_used(meter.source.label(), used);
    }
}
