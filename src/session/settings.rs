//! What every session is told by the configuration: [`SessionSettings`], read once from
//! `[limits]`, `[session]`, `[auth]` and the namespaces.

use std::time::Duration;

use super::Origins;
use crate::{auth::Namespaces, protocol::ws, throttle::Quota};

/// Settings of every session, taken from the configuration.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub ws_path: String,
    /// Origins whose pages may open a WebSocket (`server.allowed_origins`).
    pub origins: Origins,
    pub heartbeat: Duration,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    /// Time from accept to the first byte of the request or TLS handshake
    /// (`session.first_byte_timeout`).
    pub first_byte_timeout: Duration,
    /// Bits of an IPv6 address that name its source for the per-address caps and rate
    /// (`limits.ipv6_source_prefix`).
    pub ipv6_source_prefix: u8,
    pub client_publish: bool,
    pub max_channel_name_bytes: usize,
    pub max_publish_payload_bytes: usize,
    pub max_subscriptions: usize,
    pub max_inbound_message_bytes: usize,
    /// Frames one inbound message may be split into (`limits.max_fragments_per_message`).
    pub max_fragments: u32,
    /// Time a fragmented message may take from its first frame to its last.
    pub fragment_timeout: Duration,
    /// Largest upgrade request head, in bytes.
    pub max_upgrade_request_bytes: usize,
    pub read_buffer_bytes: usize,
    /// Messages a `since` subscribe may replay (`history.size`).
    pub history_size: usize,
    /// Path of the conformance echo endpoint; empty when off.
    pub echo_path: String,
    /// `[compression]`: accept permessage-deflate offers, and compress the echo endpoint's
    /// replies of at least `min_bytes` at `level` (the hub compresses deliveries itself).
    pub compression: Option<crate::hub::Compression>,
    /// Serve the demo's page (`demo.enabled`; see `demo`).
    pub demo: bool,
    /// Bytes of messages one `history` reply may carry: a quarter of a connection's
    /// outbound queue (`limits.outbound_queue_bytes`), at most 256 KiB, so that a reply
    /// never makes its reader a slow consumer.
    pub history_reply_bytes: usize,
    /// Frames (messages and fragments) per second and burst per client; `None` when unlimited.
    pub client_quota: Option<Quota>,
    /// Control frames (pings, pongs) per second and burst per client; `None` when unlimited.
    pub control_quota: Option<Quota>,
    /// Bytes of `data` a client may publish per second, and at once; `None` when unlimited.
    pub publish_byte_quota: Option<Quota>,
    /// How long a client may stay over its budget before it is closed with 1008.
    pub throttled_close_after: Duration,
    /// Refuse connections that do not authenticate (`auth.required`).
    pub auth_required: bool,
    /// Accept `?token=` on the upgrade (`auth.token_query`).
    pub token_query: bool,
    /// Time to send `auth` when the upgrade brought no token (`auth.timeout`).
    pub auth_timeout: Duration,
    /// Channel permissions (`[[namespaces]]`).
    pub namespaces: Namespaces,
    /// `limits.max_connections_per_user`, when set.
    pub user_limit: Option<crate::cluster::UserLimit>,
}

impl SessionSettings {
    /// From `[server]`, `[session]`, `[limits]`, `[history]`, `[auth]`, `[demo]` and
    /// `[[namespaces]]`.
    #[must_use]
    pub fn from_config(config: &crate::config::Config) -> Self {
        let (server, session, limits) = (&config.server, &config.session, &config.limits);
        Self {
            ws_path: server.ws_path.clone(),
            origins: Origins::new(&server.allowed_origins),
            heartbeat: session.heartbeat,
            idle_timeout: session.idle_timeout,
            handshake_timeout: session.handshake_timeout,
            first_byte_timeout: session.first_byte_timeout,
            ipv6_source_prefix: limits.ipv6_source_prefix,
            client_publish: session.client_publish,
            max_channel_name_bytes: limits.max_channel_name_bytes,
            max_publish_payload_bytes: limits.max_publish_payload_bytes,
            max_subscriptions: limits.max_subscriptions_per_connection,
            max_inbound_message_bytes: limits.max_inbound_message_bytes,
            max_fragments: limits.max_fragments_per_message,
            fragment_timeout: limits.fragment_timeout,
            max_upgrade_request_bytes: limits.max_upgrade_request_bytes,
            read_buffer_bytes: session.read_buffer_bytes,
            history_size: config.history.size,
            echo_path: session.echo_path.clone(),
            compression: crate::hub::Compression::from_config(&config.compression),
            demo: config.demo.enabled,
            history_reply_bytes: (limits.outbound_queue_bytes / 4).min(256 << 10),
            client_quota: Quota::new(
                limits.client_messages_per_second,
                limits.client_message_burst,
            ),
            control_quota: Quota::new(
                limits.client_control_frames_per_second,
                limits.client_control_frame_burst,
            ),
            publish_byte_quota: Quota::new(
                limits.client_publish_bytes_per_second,
                limits.client_publish_byte_burst,
            ),
            throttled_close_after: limits.throttled_close_after,
            auth_required: config.auth.required,
            token_query: config.auth.token_query,
            auth_timeout: config.auth.timeout,
            namespaces: Namespaces::new(&config.namespaces),
            user_limit: (limits.max_connections_per_user > 0).then_some(
                crate::cluster::UserLimit {
                    max: limits.max_connections_per_user,
                    refuse: limits.max_connections_per_user_refuse,
                },
            ),
        }
    }

    /// What the frame decoder accepts on a session; `inflate` when it negotiated
    /// permessage-deflate.
    pub(super) fn limits(&self, inflate: bool) -> ws::Limits {
        ws::Limits {
            max_message_bytes: self.max_inbound_message_bytes,
            max_fragments: self.max_fragments,
            inflate,
        }
    }
}
