//! Metrics and logs: every metric name, the Prometheus recorder, tracing setup.
//!
//! Metric names are declared here once. Hot paths use pre-registered handles from
//! [`metrics()`] so that counting costs an atomic add, not a registry lookup. Gauges that are
//! sums over connections (queue depths) are computed when `/metrics` is scraped, so the fan-out
//! path pays nothing for them. Depends on nothing else in the crate but `protocol`'s codes.

use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::protocol::ErrorCode;

mod compression;
mod describe;
mod hooks;
mod limits;
mod logging;
mod refusals;
mod webhooks;
use self::describe::describe;
pub use self::{compression::*, hooks::*, limits::*, logging::*, refusals::*, webhooks::*};

pub const CONNECTIONS: &str = "switchboard_connections";
/// Gauge: `limits.max_connections`, for alerts on `switchboard_connections / switchboard_connections_max`.
pub const CONNECTIONS_MAX: &str = "switchboard_connections_max";
pub const PENDING_UPGRADES: &str = "switchboard_pending_upgrades";
pub const MEMORY_PRESSURE: &str = "switchboard_memory_pressure";
/// Gauge: the memory the pressure watch compares, labelled with its `source`: `cgroup_v2`
/// or `cgroup_v1` (the cgroup's working set, where it has a limit) or `process` (resident).
pub const MEMORY_USED: &str = "switchboard_memory_used_bytes";
/// Gauge: how late the sessions' event loop ran a 100 ms timer, the most over the last
/// second (`overload`).
pub const EVENT_LOOP_LAG: &str = "switchboard_event_loop_lag_seconds";
/// Gauge: 1 while the lag is past `limits.max_event_loop_lag` and upgrades are refused.
pub const OVERLOADED: &str = "switchboard_overloaded";
/// Gauge: the memory-pressure threshold in force, 0 when admission is off.
pub const MEMORY_THRESHOLD: &str = "switchboard_memory_threshold_bytes";
/// Gauge, 1, labelled with the version: which build each node runs.
pub const BUILD_INFO: &str = "switchboard_build_info";
/// Counter of failed accepts, by `listener` (`ws`, `control`) and `error` (`emfile`,
/// `enfile`, `enobufs`, `enomem`, `other`).
pub const ACCEPT_ERRORS: &str = "switchboard_accept_errors_total";
pub const CONNECTIONS_ACCEPTED: &str = "switchboard_connections_accepted_total";
pub const CONNECTIONS_REJECTED: &str = "switchboard_connections_rejected_total";
pub const CONNECTIONS_CLOSED: &str = "switchboard_connections_closed_total";
/// Counter of pages of resume replays sent ahead of their subscribe.
pub const REPLAY_PAGES: &str = "switchboard_replay_pages_total";
/// Counter of panics anywhere in the process (a bug: each is logged with where it happened).
pub const PANICS: &str = "switchboard_panics_total";
pub const SUBSCRIPTIONS: &str = "switchboard_subscriptions";
pub const CHANNELS: &str = "switchboard_channels";
pub const MESSAGES_PUBLISHED: &str = "switchboard_messages_published_total";
pub const MESSAGES_DELIVERED: &str = "switchboard_messages_delivered_total";
pub const BYTES_SENT: &str = "switchboard_bytes_sent_total";
pub const SLOW_CONSUMER_CLOSES: &str = "switchboard_slow_consumer_closes_total";
pub const PROTOCOL_ERRORS: &str = "switchboard_protocol_errors_total";
pub const RATE_LIMITED: &str = "switchboard_rate_limited_total";
pub const AUTH: &str = "switchboard_auth_total";
/// JWKS fetches by result: `ok`, `error` (the old keys stay), `rate_limited` (an unknown
/// `kid` within `auth.jwks_min_interval` of the last fetch).
pub const JWKS_REFRESHES: &str = "switchboard_jwks_refresh_total";
pub const FORBIDDEN: &str = "switchboard_forbidden_total";
pub const STREAM_OPERATIONS: &str = "switchboard_stream_operations_total";
pub const PUBLISHES_DEDUPLICATED: &str = "switchboard_publishes_deduplicated_total";
pub const STREAM_OPERATIONS_REFUSED: &str = "switchboard_stream_operations_refused_total";
pub const PRESENCE_EVENTS: &str = "switchboard_presence_events_total";
pub const PRESENCE_EVENTS_DROPPED: &str = "switchboard_presence_events_dropped_total";
/// Server-side subscribe/unsubscribe commands dropped: the connection held 64 already.
pub const SESSION_COMMANDS_DROPPED: &str = "switchboard_session_commands_dropped_total";
/// Presence writes to Redis that must be redone in full, by reason.
pub const PRESENCE_REWRITES: &str = "switchboard_presence_rewrites_total";
/// Presence members this node removed from Redis by judging their node gone, by reason.
pub const PRESENCE_DEPARTED: &str = "switchboard_presence_departed_total";
pub const QUEUE_MESSAGES: &str = "switchboard_outbound_queue_messages";
pub const QUEUE_MAX_MESSAGES: &str = "switchboard_outbound_queue_max_messages";
pub const QUEUE_BYTES: &str = "switchboard_outbound_queue_bytes";
pub const SESSION_BUFFER_BYTES: &str = "switchboard_session_buffer_bytes";
pub const PUBLISH_TO_ENQUEUE: &str = "switchboard_publish_to_enqueue_seconds";
pub const HTTP_PUBLISH_DURATION: &str = "switchboard_http_publish_duration_seconds";
pub const PUBLISHES_REFUSED: &str = "switchboard_publishes_refused_total";
pub const HISTORY_BYTES: &str = "switchboard_history_bytes";
pub const HISTORY_MESSAGES: &str = "switchboard_history_messages";
pub const RESUMES: &str = "switchboard_resumes_total";
pub const HTTP_REQUESTS: &str = "switchboard_http_requests_total";
pub const BUS_GAPS: &str = "switchboard_bus_gaps_total";
pub const EPOCH_RESETS: &str = "switchboard_epoch_resets_total";
pub const BUS_LAG: &str = "switchboard_bus_lag_seconds";
pub const BUS_READ_BATCH: &str = "switchboard_bus_read_batch_entries";
pub const BUS_PARTITION_LAG: &str = "switchboard_bus_partition_lag_seconds";
pub const BUS_READER_RESTARTS: &str = "switchboard_bus_reader_restarts_total";
pub const BUS_INTEREST_LOST: &str = "switchboard_bus_interest_lost_total";
pub const BUS_REPLAYED: &str = "switchboard_bus_replayed_entries_total";
pub const REDIS_ERRORS: &str = "switchboard_redis_errors_total";
/// Counter, clustered only: leases asked of the cluster's publish rate budgets (one Redis
/// call each), by whether any grant came.
pub const RATE_LEASES: &str = "switchboard_rate_leases_total";
/// Counters by namespace: what `slow_consumer = "drop_oldest"` and `"conflate"` did.
pub const MESSAGES_CONFLATED: &str = "switchboard_messages_conflated_total";
pub const SLOW_CONSUMER_GAPS: &str = "switchboard_slow_consumer_gaps_total";
pub const SLOW_CONSUMER_POLICY_CLOSES: &str = "switchboard_slow_consumer_policy_closes_total";
/// Gauge, clustered only: 1 while the command link to Redis is connected, 0 from start until
/// it connects and while an outage lasts.
pub const REDIS_UP: &str = "switchboard_redis_up";
pub const REDIS_CONNECTS: &str = "switchboard_redis_connects_total";
/// Counter: Redis commands waited for past `cluster.publish_timeout` because this node's
/// event loop ran late meanwhile (their replies may have been unread, not missing).
pub const REDIS_LATE_WAITS: &str = "switchboard_redis_late_waits_total";
pub const REDIS_PIPELINE_DEPTH: &str = "switchboard_redis_pipeline_depth";
/// Gauge: 0 serving, 1 announcing, 2 closing, 3 closed (waiting to exit).
pub const DRAIN_STATE: &str = "switchboard_drain_state";
/// Gauge: connections left to close in the current drain.
pub const DRAIN_CONNECTIONS_LEFT: &str = "switchboard_drain_connections_left";
/// Counter: connections closed by drains (its rate is the closes per second).
pub const DRAIN_CLOSES: &str = "switchboard_drain_closes_total";

/// Upper bounds of the publish-to-enqueue histogram, in seconds (1 µs to 1 s).
const LATENCY_BUCKETS: &[f64] = &[
    0.000_001, 0.000_005, 0.000_01, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Upper bounds of histograms of counts (pipeline depth, read batch sizes).
const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Pre-registered handles for the metrics touched on hot paths.
#[derive(Debug)]
pub struct Metrics {
    pub connections_accepted: Counter,
    pub messages_published: Counter,
    pub messages_delivered: Counter,
    pub bytes_sent: Counter,
    pub slow_consumer_closes: Counter,
    pub publish_to_enqueue: Histogram,
    /// `POST /v1/publish`, from its head being read to its answer.
    pub http_publish_duration: Histogram,
    /// Publishes refused because the channel's outbox was full.
    pub publishes_refused_fanout_behind: Counter,
    /// Publishes whose `message_id` the channel already had (nothing published).
    pub publishes_deduplicated: Counter,
    pub resumes_recovered: Counter,
    pub resumes_not_recovered: Counter,
    /// Pages of a resume's replay sent ahead of its subscribe (too large for one reply).
    pub replay_pages: Counter,
    pub bus_gaps: Counter,
    /// Channels whose subscribers here were sent a `reset` (their epoch was lost).
    pub epoch_resets: Counter,
    protocol_errors: [Counter; ErrorCode::ALL.len()],
}

impl Metrics {
    fn register() -> Self {
        Self {
            connections_accepted: metrics::counter!(CONNECTIONS_ACCEPTED),
            messages_published: metrics::counter!(MESSAGES_PUBLISHED),
            messages_delivered: metrics::counter!(MESSAGES_DELIVERED),
            bytes_sent: metrics::counter!(BYTES_SENT),
            slow_consumer_closes: metrics::counter!(SLOW_CONSUMER_CLOSES),
            publish_to_enqueue: metrics::histogram!(PUBLISH_TO_ENQUEUE),
            http_publish_duration: metrics::histogram!(HTTP_PUBLISH_DURATION),
            publishes_refused_fanout_behind: metrics::counter!(PUBLISHES_REFUSED, "reason" => "fanout_behind"),
            publishes_deduplicated: metrics::counter!(PUBLISHES_DEDUPLICATED),
            resumes_recovered: metrics::counter!(RESUMES, "recovered" => "true"),
            resumes_not_recovered: metrics::counter!(RESUMES, "recovered" => "false"),
            replay_pages: metrics::counter!(REPLAY_PAGES),
            bus_gaps: metrics::counter!(BUS_GAPS),
            epoch_resets: metrics::counter!(EPOCH_RESETS),
            protocol_errors: ErrorCode::ALL
                .map(|code| metrics::counter!(PROTOCOL_ERRORS, "code" => code.as_str())),
        }
    }

    /// Counts an `error` frame sent to a client.
    pub fn protocol_error(&self, code: ErrorCode) {
        self.protocol_errors[code.index()].increment(1);
    }
}

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();
static METRICS: OnceLock<Metrics> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once) and returns its handle.
///
/// Later calls return the same handle, so several servers in one test process share it.
pub fn install_recorder() -> PrometheusHandle {
    RECORDER
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .expect("LATENCY_BUCKETS is a non-empty constant");
            builder = builder
                .set_buckets_for_metric(Matcher::Full(HOOK_DURATION.to_owned()), HOOK_BUCKETS)
                .expect("HOOK_BUCKETS is a non-empty constant");
            for name in [REDIS_PIPELINE_DEPTH, BUS_READ_BATCH] {
                builder = builder
                    .set_buckets_for_metric(Matcher::Full(name.to_owned()), COUNT_BUCKETS)
                    .expect("COUNT_BUCKETS is a non-empty constant");
            }
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may exist only if an embedding program installed its own; our
            // handle then renders nothing, which is the embedder's choice.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

/// The hot-path handles; installs the recorder first if nobody has.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| {
        install_recorder();
        Metrics::register()
    })
}

/// Counts a closed session by how it ended (a close-code label or `transport_lost`).
pub fn connection_closed(end: &'static str) {
    metrics::counter!(CONNECTIONS_CLOSED, "end" => end).increment(1);
}

/// Records the memory watch's verdict: whether upgrades are refused.
pub fn memory_watched(pressure: bool) {
    metrics::gauge!(MEMORY_PRESSURE).set(if pressure { 1.0 } else { 0.0 });
}

/// Sets `switchboard_event_loop_lag_seconds`.
pub fn event_loop_lag(lag: std::time::Duration) {
    metrics::gauge!(EVENT_LOOP_LAG).set(lag.as_secs_f64());
}

/// Records the lag watch's verdict: whether upgrades are refused.
pub fn overloaded(overloaded: bool) {
    metrics::gauge!(OVERLOADED).set(if overloaded { 1.0 } else { 0.0 });
}

/// Sets `switchboard_memory_used_bytes`: what the memory watch compares, and where it came from.
pub fn memory_used(source: &'static str, bytes: u64) {
    metrics::gauge!(MEMORY_USED, "source" => source).set(bytes as f64);
}

/// Sets `switchboard_memory_threshold_bytes` (0: admission off).
pub fn memory_threshold(bytes: u64) {
    metrics::gauge!(MEMORY_THRESHOLD).set(bytes as f64);
}

/// Label values of counters exported at 0 from the start (see [`node_started`]).
const RATE_SCOPES: [RateScope; 6] = [
    RateScope::Client,
    RateScope::ClientControl,
    RateScope::Ip,
    RateScope::ApiKey,
    RateScope::ClientPublishBytes,
    RateScope::ChannelPublishBytes,
];
const PRESENCE_REWRITE_REASONS: [&str; 3] = ["unreachable", "lost", "rejoined"];
/// `expired`: its node's presence heartbeat lapsed; `node_gone`: the node registry judged
/// the node dead; `restarted`: the node came back as a new incarnation.
pub const PRESENCE_DEPARTED_REASONS: [&str; 3] = ["expired", "node_gone", "restarted"];
const PRESENCE_DROP_REASONS: [&str; 2] = ["queue_full", "bus"];
/// Session ends and upgrade refusals that mark an incident (a storm of slow consumers, a
/// drain, lost networks; overload); the other labels appear at their first event.
const CLOSE_ENDS: [&str; 6] = [
    "slow_consumer",
    "bad_deflate",
    "service_restart",
    "transport_lost",
    "idle_timeout",
    "panic",
];
const REJECT_REASONS: [&str; 6] = [
    "max_connections",
    "memory_pressure",
    "overloaded",
    "draining",
    "ip_rate_limited",
    "out_of_files",
];
/// What failed Redis commands are counted as (`switchboard_redis_errors_total{op}`). An op missing
/// here is still counted; its series starts at its first failure.
const REDIS_OPS: [&str; 17] = [
    "connect",
    "born",
    "ping",
    "publish",
    "read",
    "read_connect",
    "heartbeat",
    "nodes",
    "presence",
    "announce",
    "disconnect",
    "subscribe",
    "unsubscribe",
    "block",
    "revoke",
    "user_conns",
    "rate",
];

/// Sets `switchboard_connections_max`, and exports the gauges and counters that alerts and the
/// dashboard use at 0, with each of their bounded labels, so that `rate()` and `increase()`
/// see the first event: a counter whose series appears with the burst that created it shows
/// no increase. Registered, not set: servers in one process, as in tests, share the recorder.
pub fn node_started(max_connections: usize) {
    metrics::gauge!(CONNECTIONS_MAX).set(max_connections as f64);
    metrics::gauge!(MEMORY_PRESSURE).increment(0.0);
    metrics::gauge!(OVERLOADED).increment(0.0);
    metrics::gauge!(EVENT_LOOP_LAG).increment(0.0);
    let _ = metrics();
    metrics::counter!(PANICS).increment(0);
    for scope in RATE_SCOPES {
        metrics::counter!(RATE_LIMITED, "scope" => scope.label()).increment(0);
    }
    metrics::counter!(PRESENCE_EVENTS).increment(0);
    for reason in PRESENCE_REWRITE_REASONS {
        metrics::counter!(PRESENCE_REWRITES, "reason" => reason).increment(0);
    }
    for reason in PRESENCE_DEPARTED_REASONS {
        metrics::counter!(PRESENCE_DEPARTED, "reason" => reason).increment(0);
    }
    for reason in PRESENCE_DROP_REASONS {
        metrics::counter!(PRESENCE_EVENTS_DROPPED, "reason" => reason).increment(0);
    }
    for end in CLOSE_ENDS {
        metrics::counter!(CONNECTIONS_CLOSED, "end" => end).increment(0);
    }
    for reason in REJECT_REASONS {
        metrics::counter!(CONNECTIONS_REJECTED, "reason" => reason).increment(0);
    }
    metrics::counter!(DRAIN_CLOSES).increment(0);
}

/// Exports a control API route's `status` answers at 0 (see [`node_started`]).
pub fn http_requests_registered(route: &'static str, status: u16) {
    metrics::counter!(HTTP_REQUESTS, "route" => route, "status" => status.to_string()).increment(0);
}

/// Exports the clustered metrics at 0: `switchboard_redis_up` (0 until the first connection), the
/// Redis error counters by op, reconnects and the bus's gaps and reader restarts.
pub fn redis_registered() {
    metrics::gauge!(REDIS_UP).increment(0.0);
    for op in REDIS_OPS {
        metrics::counter!(REDIS_ERRORS, "op" => op).increment(0);
    }
    metrics::counter!(REDIS_CONNECTS).increment(0);
    metrics::counter!(REDIS_LATE_WAITS).increment(0);
    metrics::counter!(BUS_READER_RESTARTS).increment(0);
    metrics::counter!(BUS_INTEREST_LOST).increment(0);
    metrics::counter!(BUS_REPLAYED).increment(0);
}

/// Sets `switchboard_redis_up`: whether the command link to Redis is connected.
pub fn redis_up(up: bool) {
    metrics::gauge!(REDIS_UP).set(if up { 1.0 } else { 0.0 });
}

/// Counts `n` members this node removed from cluster presence for another node, by reason:
/// `expired` (their node stopped refreshing them), `node_gone` (their node left the registry
/// unannounced), `restarted` (ghosts of a process that ran under this node id before).
pub fn presence_departed(reason: &'static str, n: u64) {
    metrics::counter!(PRESENCE_DEPARTED, "reason" => reason).increment(n);
}

/// Registers the drain gauges at 0 without overwriting them (servers in one process share
/// the recorder).
pub fn drain_registered() {
    metrics::gauge!(DRAIN_STATE).increment(0.0);
    metrics::gauge!(DRAIN_CONNECTIONS_LEFT).increment(0.0);
}

/// Sets `switchboard_drain_state`: 0 serving, 1 announcing, 2 closing, 3 closed.
pub fn drain_state(phase: u8) {
    metrics::gauge!(DRAIN_STATE).set(f64::from(phase));
}

/// Sets `switchboard_drain_connections_left`.
pub fn drain_connections_left(left: usize) {
    metrics::gauge!(DRAIN_CONNECTIONS_LEFT).set(left as f64);
}

/// Counts a connection a drain closed.
pub fn drain_closed() {
    metrics::counter!(DRAIN_CLOSES).increment(1);
}

/// Counts a failed Redis command or connection attempt, by what it was for.
pub fn redis_error(op: &'static str) {
    metrics::counter!(REDIS_ERRORS, "op" => op).increment(1);
}

/// Counts a (re)connection to Redis.
pub fn redis_connected() {
    metrics::counter!(REDIS_CONNECTS).increment(1);
}

/// Counts a Redis command waited for longer because the event loop ran late.
pub fn redis_wait_extended() {
    metrics::counter!(REDIS_LATE_WAITS).increment(1);
}

/// Records how many publishes were in flight on the shared Redis connection when one was
/// sent.
pub fn redis_pipeline_depth(depth: usize) {
    metrics::histogram!(REDIS_PIPELINE_DEPTH).record(depth as f64);
}

/// Counts a partition reader the watchdog restarted.
pub fn bus_reader_restarted() {
    metrics::counter!(BUS_READER_RESTARTS).increment(1);
}

/// Sets how far (seconds, by entry time) a partition's reader trails its stream.
pub fn bus_partition_age(partition: usize, seconds: f64) {
    metrics::gauge!(BUS_PARTITION_LAG, "partition" => partition.to_string()).set(seconds);
}

/// Records the time from a bus entry's append to its delivery here.
pub fn bus_lag(seconds: f64) {
    metrics::histogram!(BUS_LAG).record(seconds);
}

/// Records how many entries one `XREAD` returned.
/// Channels whose interest (the routing of their messages to this node's inbox) a renewal
/// found missing in Redis, and the bus entries then read again from the log.
pub fn bus_interest_lost(channels: u64, replayed: u64) {
    metrics::counter!(BUS_INTEREST_LOST).increment(channels);
    metrics::counter!(BUS_REPLAYED).increment(replayed);
}

pub fn bus_read_batch(entries: u32) {
    metrics::histogram!(BUS_READ_BATCH).record(f64::from(entries));
}

static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();

/// Reads the process metrics (`process_open_fds`, `process_max_fds`,
/// `process_resident_memory_bytes`, `process_cpu_seconds_total`,
/// `process_start_time_seconds`, `process_threads`, ...) from `/proc`, for a scrape.
/// Counting open descriptors lists `/proc/self/fd`: about 0.1 s of CPU at a million
/// connections, once per scrape.
pub fn collect_process() {
    PROCESS
        .get_or_init(|| {
            let collector = metrics_process::Collector::default();
            collector.describe();
            collector
        })
        .collect();
}

/// Registers `switchboard_accept_errors_total{listener, error="emfile"}` at zero.
pub fn accept_failures_registered(listener: &'static str) {
    metrics::counter!(ACCEPT_ERRORS, "listener" => listener, "error" => "emfile").increment(0);
}

/// Counts a failed accept.
pub fn accept_failed(listener: &'static str, error: &'static str) {
    metrics::counter!(ACCEPT_ERRORS, "listener" => listener, "error" => error).increment(1);
}

/// Counts a token checked: `ok`, or why it was refused.
pub fn auth(result: &'static str) {
    metrics::counter!(AUTH, "result" => result).increment(1);
}

/// Counts a JWKS fetch (or one refused by the rate limit).
pub fn jwks_refresh(result: &'static str) {
    metrics::counter!(JWKS_REFRESHES, "result" => result).increment(1);
}

/// Counts a subscribe, history read or publish the namespaces refused.
pub fn forbidden(action: &'static str) {
    metrics::counter!(FORBIDDEN, "action" => action).increment(1);
}

/// Counts an operation on a message with an id (`publish`, `append`, `finish`, `update`,
/// `delete`, `abandon`).
pub fn stream_op(op: &'static str) {
    metrics::counter!(STREAM_OPERATIONS, "op" => op).increment(1);
}

/// Counts an operation on a message refused, by error code.
pub fn stream_op_refused(code: crate::protocol::ErrorCode) {
    metrics::counter!(STREAM_OPERATIONS_REFUSED, "code" => code.as_str()).increment(1);
}

/// Counts a `join` or `leave` frame sent through the bus (one per coalesced frame).
pub fn presence_event_sent() {
    metrics::counter!(PRESENCE_EVENTS).increment(1);
}

/// Counts a `join` or `leave` frame not sent: `queue_full` or `bus`.
pub fn presence_event_dropped(reason: &'static str) {
    metrics::counter!(PRESENCE_EVENTS_DROPPED, "reason" => reason).increment(1);
}

/// Counts a channel's presence write redone in full: `unreachable` (Redis did not answer),
/// `lost` (Redis no longer held this node's members: removed, or Redis restarted), or
/// `rejoined` (the full write put back members another node had removed, with their `join`).
pub fn presence_rewrite(reason: &'static str) {
    metrics::counter!(PRESENCE_REWRITES, "reason" => reason).increment(1);
}

/// Counts a server-side subscribe or unsubscribe dropped because its connection already
/// held `MAX_SESSION_COMMANDS` its session had not taken.
pub fn session_command_dropped() {
    metrics::counter!(SESSION_COMMANDS_DROPPED).increment(1);
}

/// Counts a refused upgrade by reason.
pub fn connection_rejected(reason: &'static str) {
    metrics::counter!(CONNECTIONS_REJECTED, "reason" => reason).increment(1);
}

/// Counts a control API request by route and status class.
pub fn http_request(route: &'static str, status: u16) {
    metrics::counter!(HTTP_REQUESTS, "route" => route, "status" => status.to_string()).increment(1);
}

/// Gauges computed from hub state when `/metrics` is scraped.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    pub connections: usize,
    pub pending_upgrades: usize,
    pub subscriptions: usize,
    pub channels: usize,
    pub queue_messages: usize,
    pub queue_max_messages: usize,
    pub queue_bytes: usize,
    pub session_buffer_bytes: usize,
    pub history_bytes: usize,
    pub history_messages: usize,
}

/// Sets the scrape-time gauges.
pub fn record_snapshot(snapshot: &Snapshot) {
    let set = |name: &'static str, value: usize| {
        let gauge: Gauge = metrics::gauge!(name);
        gauge.set(value as f64);
    };
    set(CONNECTIONS, snapshot.connections);
    set(PENDING_UPGRADES, snapshot.pending_upgrades);
    set(SUBSCRIPTIONS, snapshot.subscriptions);
    set(CHANNELS, snapshot.channels);
    set(QUEUE_MESSAGES, snapshot.queue_messages);
    set(QUEUE_MAX_MESSAGES, snapshot.queue_max_messages);
    set(QUEUE_BYTES, snapshot.queue_bytes);
    set(SESSION_BUFFER_BYTES, snapshot.session_buffer_bytes);
    set(HISTORY_BYTES, snapshot.history_bytes);
    set(HISTORY_MESSAGES, snapshot.history_messages);
}
