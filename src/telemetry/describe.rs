//! What each metric means and its unit, for Prometheus's `# HELP` and `# TYPE` lines:
//! described once, at the recorder's installation.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

use super::*;

pub(super) fn describe() {
    compression::describe();
    hooks::describe();
    webhooks::describe();
    describe_gauge!(CONNECTIONS, "Open WebSocket connections");
    describe_gauge!(
        CONNECTIONS_MAX,
        "limits.max_connections: upgraded connections this node admits"
    );
    describe_gauge!(
        MEMORY_PRESSURE,
        "1 while switchboard_memory_used_bytes is above limits.memory_pressure_bytes and new upgrades \
         are refused"
    );
    describe_gauge!(
        EVENT_LOOP_LAG,
        Unit::Seconds,
        "How late the sessions' event loop ran a 100 ms timer, the most over the last second"
    );
    describe_gauge!(
        OVERLOADED,
        "1 while switchboard_event_loop_lag_seconds is above limits.max_event_loop_lag and new \
         upgrades are refused"
    );
    describe_gauge!(
        MEMORY_USED,
        Unit::Bytes,
        "Memory the pressure watch compares, by source: cgroup_v2/cgroup_v1 (the cgroup's \
         usage less inactive file pages, where it has a limit) or process (resident set)"
    );
    describe_gauge!(
        MEMORY_THRESHOLD,
        Unit::Bytes,
        "limits.memory_pressure_bytes in force (90% of the cgroup limit when 0), 0 when off"
    );
    describe_gauge!(
        BUILD_INFO,
        "1, labelled with the version of the build this node runs"
    );
    describe_counter!(
        ACCEPT_ERRORS,
        "Failed accepts, by listener (ws, control) and error (emfile: out of file descriptors)"
    );
    describe_gauge!(
        PENDING_UPGRADES,
        "Connections accepted and not yet upgraded (or refused)"
    );
    describe_counter!(CONNECTIONS_ACCEPTED, "WebSocket upgrades completed");
    describe_counter!(
        CONNECTIONS_REJECTED,
        "Connections refused before or during the upgrade, by reason"
    );
    describe_counter!(CONNECTIONS_CLOSED, "Sessions ended, by close code");
    describe_counter!(
        REPLAY_PAGES,
        "Pages of resume replays sent ahead of their subscribe, each read before the next"
    );
    describe_counter!(
        PANICS,
        "Panics (bugs): a session's task that panicked is cleaned up and closed"
    );
    describe_counter!(
        STREAM_OPERATIONS,
        "Operations on messages with ids, by op (publish, append, finish, update, delete, abandon)"
    );
    describe_counter!(
        PUBLISHES_DEDUPLICATED,
        "Publishes whose message_id the channel already had: answered the first offset, nothing published"
    );
    describe_counter!(
        STREAM_OPERATIONS_REFUSED,
        "Operations on messages refused, by error code (not_found, conflict, forbidden, limit_exceeded, ...)"
    );
    describe_counter!(
        FORBIDDEN,
        "Client requests the namespaces refused, by action (subscribe, history, publish, presence)"
    );
    describe_counter!(
        PRESENCE_EVENTS,
        "Join/leave frames sent through the bus (a coalesced frame counts once)"
    );
    describe_counter!(
        PRESENCE_EVENTS_DROPPED,
        "Join/leave frames not sent, by reason: queue_full (65,536 waiting) or bus (unavailable)"
    );
    describe_counter!(
        SESSION_COMMANDS_DROPPED,
        "Server-side subscribe/unsubscribe commands dropped: the connection held 64 not yet taken"
    );
    describe_counter!(
        PRESENCE_REWRITES,
        "Channels whose presence is written to Redis again in full, by reason: unreachable, lost, or rejoined (written back after another node removed them)"
    );
    describe_counter!(
        PRESENCE_DEPARTED,
        "Presence members this node removed from Redis because their node was judged gone, by \
         reason: expired (presence heartbeat lapsed), node_gone (registry), restarted"
    );
    describe_counter!(
        AUTH,
        "Tokens checked (upgrade, auth and refresh frames), by result: ok or why refused"
    );
    describe_gauge!(SUBSCRIPTIONS, "Channel subscriptions held by connections");
    describe_gauge!(CHANNELS, "Channels with subscribers or history");
    describe_counter!(MESSAGES_PUBLISHED, "Messages published through this node");
    describe_counter!(
        MESSAGES_DELIVERED,
        "Messages enqueued to subscribers (one per subscriber)"
    );
    describe_counter!(
        BYTES_SENT,
        Unit::Bytes,
        "WebSocket payload bytes written to clients"
    );
    describe_counter!(
        SLOW_CONSUMER_CLOSES,
        "Connections closed because their outbound queue was full"
    );
    describe_counter!(PROTOCOL_ERRORS, "Error frames sent to clients, by code");
    describe_counter!(
        RATE_LIMITED,
        "Requests refused by a token bucket, by scope (client frames, connects per IP, API key)"
    );
    describe_gauge!(QUEUE_MESSAGES, "Messages waiting in all outbound queues");
    describe_gauge!(
        QUEUE_MAX_MESSAGES,
        "Messages waiting in the fullest outbound queue"
    );
    describe_gauge!(
        QUEUE_BYTES,
        Unit::Bytes,
        "Bytes waiting in all outbound queues"
    );
    describe_gauge!(
        SESSION_BUFFER_BYTES,
        Unit::Bytes,
        "Bytes sessions hold outside their queues: read buffers, messages being assembled, \
         bytes taken off a queue and not yet written"
    );
    describe_histogram!(
        PUBLISH_TO_ENQUEUE,
        Unit::Seconds,
        "Time from accepting a publish to the last subscriber enqueue (by a fan-out round)"
    );
    describe_counter!(
        PUBLISHES_REFUSED,
        "Publishes refused before being ordered, by reason (fanout_behind: the channel's \
         outbox held a whole subscriber queue)"
    );
    describe_histogram!(
        HTTP_PUBLISH_DURATION,
        Unit::Seconds,
        "POST /v1/publish handling time: from its head being read to its answer"
    );
    describe_gauge!(HISTORY_BYTES, Unit::Bytes, "Bytes held in channel history");
    describe_gauge!(HISTORY_MESSAGES, "Messages held in channel history");
    describe_counter!(
        RESUMES,
        "Subscribes with `since`, by whether history covered the gap"
    );
    describe_counter!(HTTP_REQUESTS, "Control API requests, by route and status");
    describe_histogram!(
        BUS_LAG,
        Unit::Seconds,
        "Time from the Redis append of a message to its local delivery"
    );
    describe_histogram!(
        BUS_READ_BATCH,
        "Entries returned by one XREAD of a bus partition"
    );
    describe_gauge!(
        BUS_PARTITION_LAG,
        Unit::Seconds,
        "How far each partition reader is behind the newest entry it has seen, by entry time"
    );
    describe_counter!(
        BUS_READER_RESTARTS,
        "Partition readers restarted because they stalled while Redis answered"
    );
    describe_counter!(
        BUS_INTEREST_LOST,
        "Channels whose routing to this node's inbox was found missing in Redis (expired \
         while the node stalled, or lost with Redis) and written again"
    );
    describe_counter!(
        BUS_REPLAYED,
        "Bus entries read again from a partition's log after interest was found missing"
    );
    describe_counter!(REDIS_ERRORS, "Failed Redis commands, by operation");
    describe_counter!(
        MESSAGES_CONFLATED,
        "Messages a slow subscriber's queue dropped for newer ones (slow_consumer = conflate), by namespace"
    );
    describe_counter!(
        SLOW_CONSUMER_GAPS,
        "Gap frames put in slow subscribers' queues (slow_consumer = drop_oldest), by namespace"
    );
    describe_counter!(
        SLOW_CONSUMER_POLICY_CLOSES,
        "Slow subscribers closed with 4001 though their namespace drops or conflates, by namespace"
    );
    describe_counter!(
        RATE_LEASES,
        "Leases asked of the cluster's publish rate budgets (a Redis call each), by result"
    );
    describe_gauge!(
        REDIS_UP,
        "1 while this node's command link to Redis is connected; 0 before the first \
         connection and during an outage"
    );
    describe_counter!(
        REDIS_CONNECTS,
        "Connections to Redis (re)established by the command link"
    );
    describe_counter!(
        REDIS_LATE_WAITS,
        "Redis commands waited for past cluster.publish_timeout because this node's event \
         loop ran late meanwhile (up to 4 times it): the node's lag, not Redis's"
    );
    describe_histogram!(
        REDIS_PIPELINE_DEPTH,
        "Publishes in flight on the shared Redis connection when one is sent (pipelining depth)"
    );
    describe_counter!(
        BUS_GAPS,
        "Bus deliveries that skipped sequence numbers (messages lost on the bus)"
    );
    describe_counter!(
        EPOCH_RESETS,
        "Channels whose subscribers were sent a reset frame: the bus lost the epoch they followed"
    );
}
