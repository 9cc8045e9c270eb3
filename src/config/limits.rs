//! `[limits]`: what one connection, channel and node may cost.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// Which connection a user over `limits.max_connections_per_user` loses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefuseConnection {
    /// The user's oldest connection closes; the new one is taken.
    Oldest,
    /// The new connection is refused.
    Newest,
}

/// Per-node and per-connection limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Connections this node accepts; further upgrades get HTTP 503. Default 1,000,000.
    pub max_connections: usize,
    /// Connections one user (a token's `sub`, or the connect hook's user) may hold across
    /// the cluster at once. Default 0: no limit.
    pub max_connections_per_user: usize,
    /// Which connection goes when a user is over `max_connections_per_user`: `"oldest"`
    /// (the user's oldest connection is closed with 4005, the new one is taken: a new device
    /// always gets in) or `"newest"` (the new one is refused with 4005). Default "oldest".
    pub max_connections_per_user_refuse: RefuseConnection,
    /// Channels one connection may be subscribed to at once. Default 256.
    pub max_subscriptions_per_connection: usize,
    /// Longest channel name, in bytes. Default 128.
    pub max_channel_name_bytes: usize,
    /// Largest inbound WebSocket message, in bytes; larger ones close with 1009. Default 64 KiB.
    pub max_inbound_message_bytes: usize,
    /// Largest `data` of one publish, in bytes of JSON. Default 32 KiB; at most a quarter of
    /// `outbound_queue_bytes` (replays and history replies go a quarter of the queue at a
    /// time, at least one message each).
    pub max_publish_payload_bytes: usize,
    /// Outbound queue capacity per connection, in messages. Default 1024.
    pub outbound_queue_messages: usize,
    /// Outbound queue capacity per connection, in bytes. Default 1 MiB.
    pub outbound_queue_bytes: usize,
    /// Frames per second one client may send (any text frame: subscribe, publish, ping...).
    /// Over it, the frame is refused with an `error` (`rate_limited`) and the server reads
    /// nothing more from that client until a token is free. Default 200; 0: off. Raise it
    /// for clients that publish fast (load generators).
    pub client_messages_per_second: u32,
    /// Frames a client may send at once above that rate. Default 400.
    pub client_message_burst: u32,
    /// New WebSocket connections per second from one IP address; over it, the upgrade is
    /// refused with HTTP 429. Default 0: off, since behind a load balancer or NAT many
    /// clients share one address.
    pub connects_per_ip_per_second: u32,
    /// Connections one address may open at once above that rate. Default 100.
    pub connect_burst_per_ip: u32,
    /// Pings and pongs per second one client may send, beside its frame budget. Over it, the
    /// ping goes unanswered and reading pauses until a token is free. Default 10; 0: off.
    /// Browsers send none; other clients ping every few seconds at most.
    pub client_control_frames_per_second: u32,
    /// Control frames a client may send at once above that rate. Default 20.
    pub client_control_frame_burst: u32,
    /// Bytes of `data` per second one client may publish; over it the publish is refused
    /// with `rate_limited` (its subscribers never see it). Default 64 KiB; 0: off. With the
    /// frame budget alone, one client publishing 32 KB messages made a node write 890 MB in
    /// 7 s to 300 subscribers and close them all as slow consumers.
    pub client_publish_bytes_per_second: u32,
    /// Bytes a client may publish at once above that rate. Default 256 KiB; at least
    /// `max_publish_payload_bytes`.
    pub client_publish_byte_burst: u32,
    /// Client publishes (and changes to messages) one user may make per minute, over all
    /// its connections on every node: one budget in Redis when clustered. Over it the
    /// publish is refused with `rate_limited` and `retry_after_ms`. Default 0: off.
    pub publishes_per_minute_per_user: u32,
    /// Publishes a user may make at once above that rate. Default 200.
    pub publish_burst_per_user: u32,
    /// Client publishes per minute of all anonymous connections from one address (an IPv4
    /// address, or an IPv6 prefix of `ipv6_source_prefix` bits) together, across the
    /// cluster. Default 0: off.
    pub publishes_per_minute_per_address: u32,
    /// Publishes an address's anonymous connections may make at once above that rate.
    /// Default 200.
    pub publish_burst_per_address: u32,
    /// Bytes of `data` per second published to one channel through this node: once for all
    /// its clients together, and once for the control API (so clients cannot use up a
    /// backend's); over it the publish is refused (`rate_limited`, HTTP 429). Default 4 MiB;
    /// 0: off.
    pub channel_publish_bytes_per_second: u32,
    /// Bytes one channel may take at once above that rate. Default 16 MiB; at least
    /// `max_publish_payload_bytes`.
    pub channel_publish_byte_burst: u32,
    /// A client whose frames are still refused by one of its budgets this long after the
    /// first refusal (refusals less than a second apart) is closed with 1008. Default 10s.
    #[serde(with = "humantime_serde")]
    pub throttled_close_after: Duration,
    /// Frames one inbound message may be split into; more close with 1008. Default 64.
    pub max_fragments_per_message: u32,
    /// Time a fragmented message may take from its first frame to its last; longer closes
    /// with 1008. Default 10s.
    #[serde(with = "humantime_serde")]
    pub fragment_timeout: Duration,
    /// Connections accepted but not yet upgraded, on the whole node; more are answered 503 at
    /// once. They do not count against `max_connections`. Default 10,000.
    pub max_pending_upgrades: usize,
    /// Connections not yet upgraded from one source (an IPv4 address, or an IPv6 prefix of
    /// `ipv6_source_prefix` bits); more are answered 503. Default 1,024 (a load balancer's
    /// address carries many clients' upgrades at once).
    pub max_pending_upgrades_per_ip: usize,
    /// Bits of an IPv6 address that name its source for the per-address limits
    /// (`max_pending_upgrades_per_ip`, `connects_per_ip_per_second`): one host is usually
    /// given a whole /64. Default 64; 32 to 128 (128: every address on its own).
    pub ipv6_source_prefix: u8,
    /// Largest upgrade request head (request line and headers), in bytes; larger gets 431.
    /// Default 16 KiB.
    pub max_upgrade_request_bytes: usize,
    /// Memory in use above which new upgrades get 503 (with `Retry-After`) and `/readyz`
    /// reports `memory_pressure`, while existing connections go on; below 95% of it the node
    /// accepts again. The memory measured is the working set of the nearest cgroup with a
    /// memory limit (usage less inactive file pages: socket buffers and page cache count,
    /// as they do toward the limit), else the process's resident set; `switchboard_memory_used_bytes`
    /// shows it. Default 0: 90% of that cgroup's limit when there is one, else off.
    pub memory_pressure_bytes: u64,
    /// How late the node's event loop may run its tasks (`switchboard_event_loop_lag_seconds`: the
    /// largest lateness of a 100 ms timer over each second) before new upgrades get 503
    /// `overloaded` (with `Retry-After`) and `/readyz` reports `overloaded`, while existing
    /// connections go on; below half of it the node accepts again. A node that far behind
    /// cannot serve newcomers: accepted, they time out and retry. Default 0s: off. 50ms to
    /// 60s otherwise.
    #[serde(with = "humantime_serde")]
    pub max_event_loop_lag: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 1_000_000,
            max_connections_per_user: 0,
            publishes_per_minute_per_user: 0,
            publish_burst_per_user: 200,
            publishes_per_minute_per_address: 0,
            publish_burst_per_address: 200,
            max_connections_per_user_refuse: RefuseConnection::Oldest,
            max_subscriptions_per_connection: 256,
            max_channel_name_bytes: 128,
            max_inbound_message_bytes: 64 * 1024,
            max_publish_payload_bytes: 32 * 1024,
            outbound_queue_messages: 1024,
            outbound_queue_bytes: 1024 * 1024,
            client_messages_per_second: 200,
            client_message_burst: 400,
            connects_per_ip_per_second: 0,
            connect_burst_per_ip: 100,
            client_control_frames_per_second: 10,
            client_control_frame_burst: 20,
            client_publish_bytes_per_second: 64 * 1024,
            client_publish_byte_burst: 256 * 1024,
            channel_publish_bytes_per_second: 4 * 1024 * 1024,
            channel_publish_byte_burst: 16 * 1024 * 1024,
            throttled_close_after: Duration::from_secs(10),
            max_fragments_per_message: 64,
            fragment_timeout: Duration::from_secs(10),
            max_pending_upgrades: 10_000,
            max_pending_upgrades_per_ip: 1024,
            ipv6_source_prefix: 64,
            max_upgrade_request_bytes: 16 * 1024,
            memory_pressure_bytes: 0,
            max_event_loop_lag: Duration::ZERO,
        }
    }
}

impl LimitsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        for (key, burst) in [
            ("limits.client_message_burst", self.client_message_burst),
            ("limits.connect_burst_per_ip", self.connect_burst_per_ip),
            (
                "limits.client_control_frame_burst",
                self.client_control_frame_burst,
            ),
            (
                "limits.max_fragments_per_message",
                self.max_fragments_per_message,
            ),
            ("limits.publish_burst_per_user", self.publish_burst_per_user),
            (
                "limits.publish_burst_per_address",
                self.publish_burst_per_address,
            ),
        ] {
            if burst == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        for (key, burst) in [
            (
                "limits.client_publish_byte_burst",
                self.client_publish_byte_burst,
            ),
            (
                "limits.channel_publish_byte_burst",
                self.channel_publish_byte_burst,
            ),
        ] {
            if (burst as usize) < self.max_publish_payload_bytes {
                return Err(invalid(
                    key,
                    "must be at least limits.max_publish_payload_bytes (a burst smaller \
                     than one message would refuse it for ever)",
                ));
            }
        }
        for (key, value) in [
            ("limits.throttled_close_after", self.throttled_close_after),
            ("limits.fragment_timeout", self.fragment_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if self.max_pending_upgrades == 0 {
            return Err(invalid("limits.max_pending_upgrades", "must be at least 1"));
        }
        if !self.max_event_loop_lag.is_zero()
            && !(Duration::from_millis(50)..=Duration::from_secs(60))
                .contains(&self.max_event_loop_lag)
        {
            return Err(invalid(
                "limits.max_event_loop_lag",
                "must be 0s (off) or between 50ms and 60s",
            ));
        }
        if self.max_pending_upgrades_per_ip == 0 {
            return Err(invalid(
                "limits.max_pending_upgrades_per_ip",
                "must be at least 1",
            ));
        }
        if !(32..=128).contains(&self.ipv6_source_prefix) {
            return Err(invalid(
                "limits.ipv6_source_prefix",
                "must be between 32 and 128",
            ));
        }
        if !(1024..=1024 * 1024).contains(&self.max_upgrade_request_bytes) {
            return Err(invalid(
                "limits.max_upgrade_request_bytes",
                "must be between 1024 and 1048576",
            ));
        }
        if self.max_subscriptions_per_connection == 0 {
            return Err(invalid(
                "limits.max_subscriptions_per_connection",
                "must be at least 1",
            ));
        }
        if !(1..=1024).contains(&self.max_channel_name_bytes) {
            return Err(invalid(
                "limits.max_channel_name_bytes",
                "must be between 1 and 1024",
            ));
        }
        if self.max_inbound_message_bytes < 256 {
            return Err(invalid(
                "limits.max_inbound_message_bytes",
                "must be at least 256",
            ));
        }
        // A replay or a history reply is sent a quarter of the queue at a time, and a page
        // holds at least one message: a message must fit that quarter, or a page on top of
        // what is left in the queue could overflow it (4001 for a client that reads).
        if self.max_publish_payload_bytes == 0
            || self.max_publish_payload_bytes > self.outbound_queue_bytes / 4
        {
            return Err(invalid(
                "limits.max_publish_payload_bytes",
                "must be at least 1 and at most a quarter of limits.outbound_queue_bytes",
            ));
        }
        if self.outbound_queue_messages < 16 {
            return Err(invalid(
                "limits.outbound_queue_messages",
                "must be at least 16",
            ));
        }
        Ok(())
    }
}
