//! WebSocket close codes the server sends, each with a short reason.

/// Why the server closed a connection. `docs/protocol.md` lists the same table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: the client closed (the server answers with the same code).
    Normal,
    /// 1001: the server is shutting down or draining; reconnect (to another node).
    GoingAway,
    /// 1002: the peer broke the WebSocket protocol (bad framing, unmasked frames).
    ProtocolError,
    /// 1003: a binary frame arrived; protocol v1 is JSON text only.
    UnsupportedData,
    /// 1007: a text frame was not valid UTF-8.
    InvalidPayload,
    /// 1009: an inbound message exceeded `limits.max_inbound_message_bytes`.
    MessageTooBig,
    /// 1011: an internal error ended the session.
    InternalError,
    /// 1012: the node is draining (restart, upgrade, scale-down); the client was sent a
    /// `reconnect` frame first. Reconnect (the load balancer picks another node) and resume.
    ServiceRestart,
    /// 1013: the application backend is busy or failing (its connect hook could not be
    /// asked or did not answer); the client was sent a `reconnect` frame first. Reconnect
    /// after the advised delay.
    TryAgainLater,
    /// 4000: the connection was closed through the control API (`POST /v1/disconnect`).
    Disconnected,
    /// 4001: the outbound queue overflowed (count or bytes): the client reads too slowly.
    SlowConsumer,
    /// 4002: nothing, not even a pong, arrived within `session.idle_timeout`.
    IdleTimeout,
    /// 1008: the client broke a policy: a message in more than
    /// `limits.max_fragments_per_message` frames or not completed within
    /// `limits.fragment_timeout`, or frames over budget for `limits.throttled_close_after`.
    PolicyViolation,
    /// 4003: the token was missing (with `auth.required`), invalid, or for another user on
    /// refresh. Terminal: do not reconnect with the same token.
    Unauthorized,
    /// 4004: the token expired and no `refresh` came in time. Reconnect with a fresh token.
    TokenExpired,
    /// 4005: the user holds `limits.max_connections_per_user` connections across the
    /// cluster: this one was refused, or it was the user's oldest and made room for a new
    /// one. Terminal: reconnecting would take another of the user's connections' place.
    TooManyConnections,
    /// A code an operator gave to `POST /v1/disconnect` (1000, 1001 or 3000-4999; see
    /// [`CloseCode::from_code`]), for codes the server does not define itself.
    Custom(u16),
}

impl CloseCode {
    /// The numeric code sent in the close frame.
    #[must_use]
    pub const fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::UnsupportedData => 1003,
            CloseCode::InvalidPayload => 1007,
            CloseCode::PolicyViolation => 1008,
            CloseCode::Unauthorized => 4003,
            CloseCode::TokenExpired => 4004,
            CloseCode::TooManyConnections => 4005,
            CloseCode::MessageTooBig => 1009,
            CloseCode::InternalError => 1011,
            CloseCode::ServiceRestart => 1012,
            CloseCode::TryAgainLater => 1013,
            CloseCode::Disconnected => 4000,
            CloseCode::SlowConsumer => 4001,
            CloseCode::IdleTimeout => 4002,
            CloseCode::Custom(code) => code,
        }
    }

    /// The reason text sent in the close frame (at most 123 bytes by RFC 6455).
    #[must_use]
    pub const fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal closure",
            CloseCode::GoingAway => "server going away",
            CloseCode::ProtocolError => "websocket protocol error",
            CloseCode::UnsupportedData => "binary frames are not supported",
            CloseCode::InvalidPayload => "invalid utf-8",
            CloseCode::PolicyViolation => "policy violation",
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::TokenExpired => "token expired",
            CloseCode::TooManyConnections => "too many connections for this user",
            CloseCode::MessageTooBig => "message too big",
            CloseCode::InternalError => "internal error",
            CloseCode::ServiceRestart => "service restart: reconnect",
            CloseCode::TryAgainLater => "try again later",
            CloseCode::Disconnected => "disconnected by server",
            CloseCode::SlowConsumer => "slow consumer",
            CloseCode::IdleTimeout => "idle timeout",
            CloseCode::Custom(_) => "disconnected by server",
        }
    }

    /// A bounded label for metrics.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::GoingAway => "going_away",
            CloseCode::ProtocolError => "protocol_error",
            CloseCode::UnsupportedData => "unsupported_data",
            CloseCode::InvalidPayload => "invalid_payload",
            CloseCode::PolicyViolation => "policy_violation",
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::TokenExpired => "token_expired",
            CloseCode::TooManyConnections => "too_many_connections",
            CloseCode::MessageTooBig => "message_too_big",
            CloseCode::InternalError => "internal_error",
            CloseCode::ServiceRestart => "service_restart",
            CloseCode::TryAgainLater => "try_again_later",
            CloseCode::Disconnected => "disconnected",
            CloseCode::SlowConsumer => "slow_consumer",
            CloseCode::IdleTimeout => "idle_timeout",
            CloseCode::Custom(_) => "custom",
        }
    }

    /// The close code for a wire code: the server's own codes by name, any other code an
    /// application may send (1000, 1001, 3000-4999) as [`CloseCode::Custom`]; `None` for a
    /// code no endpoint may send (RFC 6455 section 7.4).
    #[must_use]
    pub const fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            1000 => CloseCode::Normal,
            1001 => CloseCode::GoingAway,
            1002 => CloseCode::ProtocolError,
            1003 => CloseCode::UnsupportedData,
            1007 => CloseCode::InvalidPayload,
            1008 => CloseCode::PolicyViolation,
            1009 => CloseCode::MessageTooBig,
            1011 => CloseCode::InternalError,
            1012 => CloseCode::ServiceRestart,
            1013 => CloseCode::TryAgainLater,
            4000 => CloseCode::Disconnected,
            4001 => CloseCode::SlowConsumer,
            4002 => CloseCode::IdleTimeout,
            4003 => CloseCode::Unauthorized,
            4004 => CloseCode::TokenExpired,
            4005 => CloseCode::TooManyConnections,
            3000..=4999 => CloseCode::Custom(code),
            _ => return None,
        })
    }
}
