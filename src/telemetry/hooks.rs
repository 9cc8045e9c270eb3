//! The metrics of the application backend's hooks (`hooks`): requests by hook and outcome,
//! their latency, requests in flight and queued, and each hook's circuit breaker.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Counter: hook requests, by `hook` (connect, refresh, subscribe, publish, rpc) and
/// `outcome` (allowed, refused, disconnect, error: the backend failed, timeout, busy: not
/// sent, queue or breaker; cached: a connect answered from `hooks.connect_cache`, not sent).
pub const HOOK_REQUESTS: &str = "switchboard_hook_requests_total";
/// Histogram: time from sending a hook request to having its answer, by `hook`.
pub const HOOK_DURATION: &str = "switchboard_hook_duration_seconds";
/// Gauge: hook requests in flight on this node.
pub const HOOK_IN_FLIGHT: &str = "switchboard_hook_in_flight";
/// Gauge: hook requests waiting for a slot (`hooks.max_in_flight`).
pub const HOOK_QUEUED: &str = "switchboard_hook_queued";
/// Gauge: 1 while a hook's circuit breaker is open, by `hook`.
pub const HOOK_BREAKER_OPEN: &str = "switchboard_hook_breaker_open";

/// Upper bounds of the hook latency histogram, in seconds (1 ms to 10 s: a hook may take up
/// to `hooks.timeout`, at most 60 s).
pub(super) const HOOK_BUCKETS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Counts one hook request's outcome, and its latency when it was sent.
pub fn hook_request(hook: &'static str, outcome: &'static str, seconds: Option<f64>) {
    metrics::counter!(HOOK_REQUESTS, "hook" => hook, "outcome" => outcome).increment(1);
    if let Some(seconds) = seconds {
        metrics::histogram!(HOOK_DURATION, "hook" => hook).record(seconds);
    }
}

/// Moves the in-flight gauge by `delta`.
pub fn hook_in_flight(delta: f64) {
    metrics::gauge!(HOOK_IN_FLIGHT).increment(delta);
}

/// Moves the queued gauge by `delta`.
pub fn hook_queued(delta: f64) {
    metrics::gauge!(HOOK_QUEUED).increment(delta);
}

/// Sets a hook's breaker gauge.
pub fn hook_breaker(hook: &'static str, open: bool) {
    metrics::gauge!(HOOK_BREAKER_OPEN, "hook" => hook).set(if open { 1.0 } else { 0.0 });
}

pub(super) fn describe() {
    describe_counter!(
        HOOK_REQUESTS,
        "Hook requests to the application backend, by hook and outcome (allowed, refused, \
         disconnect, error, timeout, busy, cached)"
    );
    describe_histogram!(
        HOOK_DURATION,
        Unit::Seconds,
        "Time from sending a hook request to having its answer, by hook"
    );
    describe_gauge!(HOOK_IN_FLIGHT, "Hook requests in flight on this node");
    describe_gauge!(
        HOOK_QUEUED,
        "Hook requests waiting for a slot (hooks.max_in_flight)"
    );
    describe_gauge!(
        HOOK_BREAKER_OPEN,
        "1 while a hook's circuit breaker is open (requests fail at once)"
    );
}
