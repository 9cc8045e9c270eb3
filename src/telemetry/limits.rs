//! The counters of limits and abuse controls: token buckets that refused (`RateScope`), the
//! cluster's publish rate leases, and what slow subscribers' queues dropped or conflated
//! under their namespace's `slow_consumer`.

use super::{
    MESSAGES_CONFLATED, RATE_LEASES, RATE_LIMITED, SLOW_CONSUMER_GAPS, SLOW_CONSUMER_POLICY_CLOSES,
};

/// Where a token bucket refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateScope {
    /// A client sent frames faster than `limits.client_messages_per_second`.
    Client,
    /// A client sent pings or pongs faster than `limits.client_control_frames_per_second`.
    ClientControl,
    /// An address opened connections faster than `limits.connects_per_ip_per_second`.
    Ip,
    /// An API key called `/v1` faster than `control.requests_per_second_per_key`.
    ApiKey,
    /// A client published more bytes than `limits.client_publish_bytes_per_second`.
    ClientPublishBytes,
    /// A channel was sent more bytes than `limits.channel_publish_bytes_per_second`.
    ChannelPublishBytes,
    /// A user published more often than `limits.publishes_per_minute_per_user`, summed over
    /// its connections on every node.
    UserPublishes,
    /// An address's anonymous connections published more often than
    /// `limits.publishes_per_minute_per_address`.
    AddressPublishes,
}

impl RateScope {
    pub(super) const fn label(self) -> &'static str {
        match self {
            RateScope::Client => "client",
            RateScope::ClientControl => "client_control",
            RateScope::Ip => "ip",
            RateScope::ApiKey => "api_key",
            RateScope::ClientPublishBytes => "client_publish_bytes",
            RateScope::ChannelPublishBytes => "channel_publish_bytes",
            RateScope::UserPublishes => "user_publishes",
            RateScope::AddressPublishes => "address_publishes",
        }
    }
}

/// Counts a request refused by a token bucket.
pub fn rate_limited(scope: RateScope) {
    metrics::counter!(RATE_LIMITED, "scope" => scope.label()).increment(1);
}

/// Counts messages a slow subscriber's queue dropped for newer ones under
/// `slow_consumer = "conflate"`, by namespace (its pattern).
pub fn messages_conflated(namespace: &str, count: u64) {
    if count > 0 {
        metrics::counter!(MESSAGES_CONFLATED, "namespace" => namespace.to_owned()).increment(count);
    }
}

/// Counts a `gap` frame put in a slow subscriber's queue under `slow_consumer =
/// "drop_oldest"`, by namespace.
pub fn slow_consumer_gap(namespace: &str) {
    metrics::counter!(SLOW_CONSUMER_GAPS, "namespace" => namespace.to_owned()).increment(1);
}

/// Counts a slow subscriber closed (4001) though its namespace drops or conflates: nothing
/// more could be made room of.
pub fn slow_consumer_closed(namespace: &str) {
    metrics::counter!(SLOW_CONSUMER_POLICY_CLOSES, "namespace" => namespace.to_owned())
        .increment(1);
}

/// Counts a lease asked of a cluster's publish rate budget (`crate::rates`).
pub fn rate_lease(granted: bool) {
    let result = if granted { "granted" } else { "refused" };
    metrics::counter!(RATE_LEASES, "result" => result).increment(1);
}
