//! The metrics of webhooks (`webhooks`): events delivered, dropped and queued, and failed
//! tries, by webhook (its index in `[[webhooks]]`); channels occupied and vacated for the
//! whole cluster (`occupancy`), and its writes to Redis that failed.

use metrics::{describe_counter, describe_gauge};

/// Counter: events the endpoint took, by `webhook`.
pub const WEBHOOK_EVENTS_DELIVERED: &str = "switchboard_webhook_events_delivered_total";
/// Counter: events dropped because the webhook's queue was full, by `webhook`.
pub const WEBHOOK_EVENTS_DROPPED: &str = "switchboard_webhook_events_dropped_total";
/// Counter: POSTs that failed and are tried again, by `webhook`.
pub const WEBHOOK_FAILURES: &str = "switchboard_webhook_failures_total";
/// Gauge: events waiting in the webhook's queue, by `webhook`.
pub const WEBHOOK_QUEUED: &str = "switchboard_webhook_queued";

/// Counter: channels this node found occupied or vacated for the whole cluster, by
/// `change` (`occupied`, `vacated`).
pub const CHANNEL_OCCUPANCY: &str = "switchboard_channel_occupancy_changes_total";
/// Counter: occupancy writes to Redis that failed and were sent again.
pub const OCCUPANCY_WRITE_FAILURES: &str = "switchboard_occupancy_write_failures_total";

pub fn channel_occupancy(occupied: bool) {
    let change = if occupied { "occupied" } else { "vacated" };
    metrics::counter!(CHANNEL_OCCUPANCY, "change" => change).increment(1);
}

pub fn occupancy_write_failed() {
    metrics::counter!(OCCUPANCY_WRITE_FAILURES).increment(1);
}

fn webhook_label(index: usize) -> String {
    index.to_string()
}

pub fn webhook_delivered(index: usize, events: usize) {
    metrics::counter!(WEBHOOK_EVENTS_DELIVERED, "webhook" => webhook_label(index))
        .increment(events as u64);
}

pub fn webhook_dropped(index: usize) {
    metrics::counter!(WEBHOOK_EVENTS_DROPPED, "webhook" => webhook_label(index)).increment(1);
}

pub fn webhook_failed(index: usize) {
    metrics::counter!(WEBHOOK_FAILURES, "webhook" => webhook_label(index)).increment(1);
}

#[allow(clippy::cast_precision_loss, reason = "a gauge of queued events")]
pub fn webhook_queued(index: usize, queued: usize) {
    metrics::gauge!(WEBHOOK_QUEUED, "webhook" => webhook_label(index)).set(queued as f64);
}

pub(super) fn describe() {
    describe_counter!(
        WEBHOOK_EVENTS_DELIVERED,
        "Webhook events the endpoint took, by webhook (its index in [[webhooks]])"
    );
    describe_counter!(
        WEBHOOK_EVENTS_DROPPED,
        "Webhook events dropped because the webhook's queue (max_queued) was full"
    );
    describe_counter!(
        WEBHOOK_FAILURES,
        "Webhook POSTs that failed and are tried again"
    );
    describe_counter!(
        CHANNEL_OCCUPANCY,
        "Channels this node found occupied or vacated for the whole cluster, by change"
    );
    describe_counter!(
        OCCUPANCY_WRITE_FAILURES,
        "Occupancy writes to Redis that failed and were sent again"
    );
    describe_gauge!(
        WEBHOOK_QUEUED,
        "Webhook events waiting in the webhook's queue"
    );
}
