//! Wire protocol v1: client and server frames, channel names, offsets, error and close codes.
//!
//! Frames are JSON text. Decoding borrows from the input and never panics on client input;
//! a frame that cannot be understood yields a [`DecodeError`] that still carries the request
//! `id` when one could be read, so the error reply can name it. Encoding writes straight into a
//! `String` without building intermediate values; `data` payloads stay the client's raw JSON.
//! No tokio, no IO: this module depends on nothing else in the crate.
//! `docs/protocol.md` is the normative description; keep the two in step.

mod close;
mod decode;
pub mod deflate;
mod encode;
mod frames;
mod names;
mod presence;
mod streams;
pub mod ws;

pub use close::CloseCode;
pub use decode::{ClientFrame, DecodeError, decode_client_frame};
pub use encode::{
    encode_authenticated, encode_error, encode_gap, encode_history, encode_message, encode_pong,
    encode_published, encode_rate_limited, encode_reconnect, encode_reset, encode_rpc_result,
    encode_subscribed, encode_unsubscribed, encode_welcome,
};
pub use names::{ChannelName, ChannelNameError, Offset, OffsetParseError};
pub use presence::{
    Member, encode_presence, encode_presence_change, encode_presence_changes, encode_presence_stats,
};
pub use streams::{
    AbandonReason, MAX_MESSAGE_ID_BYTES, MessageIdError, MessageState, MessageStatus,
    check_message_id, encode_abandon, encode_append, encode_delete, encode_finish,
    encode_message_with_id, encode_published_duplicate, encode_state, encode_update,
    push_history_entry,
};

/// Protocol version announced in `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The `code` of an `error` frame (and of HTTP API errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame is malformed, of an unknown type, or misses a field.
    BadRequest,
    /// Authentication is missing or wrong.
    Unauthorized,
    /// Authenticated, but the action is not allowed (e.g. client publishing switched off).
    Forbidden,
    /// The target does not exist (e.g. unsubscribe from a channel not subscribed).
    NotFound,
    /// A rate limit refused the request; retry later.
    RateLimited,
    /// A configured limit refused the request (subscriptions, payload size).
    LimitExceeded,
    /// The broker cannot take the request now; retry later.
    Unavailable,
    /// A bug or an unexpected failure on the server.
    Internal,
    /// The target is not in a state that allows the request (appending to a stream that is
    /// no longer open); do not retry as is.
    Conflict,
    /// The token has expired: get a fresh one (the connection is closed with 4004, which
    /// clients answer by reconnecting with a new token). Not the user's fault.
    TokenExpired,
}

impl ErrorCode {
    /// Every code, in the order used for metric labels.
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::RateLimited,
        ErrorCode::LimitExceeded,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::Conflict,
        ErrorCode::TokenExpired,
    ];

    /// The code as it appears on the wire.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TokenExpired => "token_expired",
        }
    }

    /// Position in [`ErrorCode::ALL`].
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// Why the server unsubscribed a connection on its own: the `reason` of an `unsubscribed`
/// frame without `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsubscribeReason {
    /// A `refresh` brought a token whose rights no longer include the channel (its
    /// namespace refuses the subscription now); subscribe again with a token that grants it.
    Forbidden,
}

impl UnsubscribeReason {
    /// The reason as it appears on the wire.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            UnsubscribeReason::Forbidden => "forbidden",
        }
    }
}

#[cfg(test)]
mod tests;
