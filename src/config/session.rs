//! `[session]`: keepalive, the auth deadline and what one session may hold.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, ServerConfig, invalid};

/// Per-connection behaviour.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// A client quiet for this long gets a WebSocket ping, and another every heartbeat while
    /// it stays quiet. Default 25s.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// A connection that sends nothing (not even a pong) for this long is closed. Default 60s.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Time allowed for the WebSocket handshake after TCP accept. Default 10s.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Time from TCP accept to the first byte of the upgrade request (or TLS handshake);
    /// a socket silent for longer is closed. Default 3s; at most `handshake_timeout`.
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// Whether clients may publish over the WebSocket. Default true.
    pub client_publish: bool,
    /// Path of an echo endpoint for WebSocket conformance testing (Autobahn), served by the
    /// same upgrade and transport as real sessions. Default empty: off. While on, inbound
    /// messages up to 32 MiB are read (real sessions still close larger than
    /// `limits.max_inbound_message_bytes` with 1009), so never enable it in production.
    pub echo_path: String,
    /// Bytes read at once when the next frame's size is not known yet. The read buffer grows
    /// to hold a larger frame, is freed whenever it is empty and shrinks back after a large
    /// message. Default 256.
    pub read_buffer_bytes: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(3),
            client_publish: true,
            echo_path: String::new(),
            read_buffer_bytes: 256,
        }
    }
}

impl SessionConfig {
    pub(super) fn validate(&self, server: &ServerConfig) -> Result<(), ConfigError> {
        if !self.echo_path.is_empty()
            && (!self.echo_path.starts_with('/') || self.echo_path == server.ws_path)
        {
            return Err(invalid(
                "session.echo_path",
                "must be empty, or start with '/' and differ from server.ws_path",
            ));
        }
        if self.heartbeat.is_zero() {
            return Err(invalid("session.heartbeat", "must be greater than 0"));
        }
        if self.idle_timeout <= self.heartbeat {
            return Err(invalid(
                "session.idle_timeout",
                "must be longer than session.heartbeat",
            ));
        }
        if self.handshake_timeout.is_zero() {
            return Err(invalid(
                "session.handshake_timeout",
                "must be greater than 0",
            ));
        }
        if self.first_byte_timeout.is_zero() || self.first_byte_timeout > self.handshake_timeout {
            return Err(invalid(
                "session.first_byte_timeout",
                "must be greater than 0 and at most session.handshake_timeout",
            ));
        }
        if !(256..=1024 * 1024).contains(&self.read_buffer_bytes) {
            return Err(invalid(
                "session.read_buffer_bytes",
                "must be between 256 and 1048576",
            ));
        }
        Ok(())
    }
}
