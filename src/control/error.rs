//! The control API's errors: a [`Kind`] that gives the status, the code and the headers
//! together, and a message, answered as `{"error":{"code":..,"message":..}}`.
//! `docs/http-api.md`'s status table lists every kind; a test holds the two together.

use std::time::Duration;

use hyper::{Response, header};

use super::{Body, JSON, response};
use crate::{cluster::BusError, hub::OpError, presence::PresenceError};

/// What went wrong, as the caller reads it: each kind is one status and one code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// 400 `bad_request`: the request cannot be read (not JSON, a bad query parameter, a
    /// path that is not percent-encoded UTF-8, a body that broke off).
    BadRequest,
    /// 401 `unauthorized` (with `WWW-Authenticate: Bearer`): the key is missing or wrong.
    Unauthorized,
    /// 403 `forbidden`: the caller may not do this.
    Forbidden,
    /// 404 `not_found`: no such route, connection, message or drain.
    NotFound,
    /// 405 `method_not_allowed`: the route exists but not with this method (the answer
    /// carries `Allow`: see [`ApiError::method_not_allowed`]).
    MethodNotAllowed,
    /// 408 `request_timeout` (with `Connection: close`): the body stopped arriving.
    Timeout,
    /// 409 `conflict`: the target is not in a state that allows the request.
    Conflict,
    /// 413 `limit_exceeded`: the body, a payload or a text is over its limit.
    TooLarge,
    /// 415 `unsupported_media_type`: the declared `Content-Type` is not JSON.
    UnsupportedMediaType,
    /// 422 `bad_request`: JSON of the wrong shape or with a value out of its range.
    Invalid,
    /// 422 `limit_exceeded`: a configured count is reached (open streams, blocked users,
    /// revocations).
    Full,
    /// 429 `rate_limited` (with `Retry-After`): nothing was done; retry later.
    RateLimited,
    /// 500 `internal`: a bug or an unexpected failure.
    Internal,
    /// 503 `unavailable`: the broker cannot take it now; nothing was done, retry later.
    Unavailable,
}

impl Kind {
    /// Every kind, for the test that holds the docs' table to them.
    #[cfg(test)]
    const ALL: [Kind; 14] = [
        Kind::BadRequest,
        Kind::Unauthorized,
        Kind::Forbidden,
        Kind::NotFound,
        Kind::MethodNotAllowed,
        Kind::Timeout,
        Kind::Conflict,
        Kind::TooLarge,
        Kind::UnsupportedMediaType,
        Kind::Invalid,
        Kind::Full,
        Kind::RateLimited,
        Kind::Internal,
        Kind::Unavailable,
    ];

    /// The HTTP status and the `code` of the body.
    pub(super) fn status_and_code(self) -> (u16, &'static str) {
        match self {
            Kind::BadRequest => (400, "bad_request"),
            Kind::Unauthorized => (401, "unauthorized"),
            Kind::Forbidden => (403, "forbidden"),
            Kind::NotFound => (404, "not_found"),
            Kind::MethodNotAllowed => (405, "method_not_allowed"),
            Kind::Timeout => (408, "request_timeout"),
            Kind::Conflict => (409, "conflict"),
            Kind::TooLarge => (413, "limit_exceeded"),
            Kind::UnsupportedMediaType => (415, "unsupported_media_type"),
            Kind::Invalid => (422, "bad_request"),
            Kind::Full => (422, "limit_exceeded"),
            Kind::RateLimited => (429, "rate_limited"),
            Kind::Internal => (500, "internal"),
            Kind::Unavailable => (503, "unavailable"),
        }
    }
}

/// An HTTP error: its kind and the message that says what to change.
#[derive(Debug)]
pub(super) struct ApiError {
    kind: Kind,
    message: String,
    /// Seconds for `Retry-After` (429, and a 503 that knows when).
    retry_after_secs: Option<u64>,
    /// For `Allow` (405).
    allow: Option<&'static str>,
}

impl ApiError {
    pub(super) fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after_secs: None,
            allow: None,
        }
    }

    /// The same error saying `message` instead.
    pub(super) fn with_message(self, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            ..self
        }
    }

    /// `{"error":{"code":..,"message":..}}`: the body of its answer, and what a batch says
    /// of a command this error refused.
    pub(super) fn reply(&self) -> serde_json::Value {
        serde_json::json!({
            "error": { "code": self.kind.status_and_code().1, "message": self.message }
        })
    }

    /// The kind it answers as.
    pub(super) fn kind(&self) -> Kind {
        self.kind
    }

    /// The HTTP status it answers with.
    pub(super) fn status(&self) -> u16 {
        self.kind.status_and_code().0
    }

    /// The `Retry-After` of a 429, in seconds.
    pub(super) fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after_secs
    }

    pub(super) fn rate_limited(retry_after: Duration) -> Self {
        let millis = retry_after.as_millis().max(1);
        Self {
            retry_after_secs: Some(
                retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0),
            ),
            ..Self::new(
                Kind::RateLimited,
                format!("rate limit of this API key exceeded; retry after {millis} ms"),
            )
        }
    }

    /// 405, naming the methods the route takes in the message and in `Allow` (a GET route
    /// takes HEAD too).
    pub(super) fn method_not_allowed(allowed: &'static str) -> Self {
        Self {
            allow: Some(if allowed == "GET" {
                "GET, HEAD"
            } else {
                allowed
            }),
            ..Self::new(
                Kind::MethodNotAllowed,
                format!("method not allowed; use {allowed}"),
            )
        }
    }

    /// 408: the body did not arrive within `control.body_timeout`; the connection closes.
    pub(super) fn body_timeout(timeout: Duration) -> Self {
        Self::new(
            Kind::Timeout,
            format!(
                "the request body did not arrive within {} ms",
                timeout.as_millis()
            ),
        )
    }

    pub(super) fn into_response(self) -> Response<Body> {
        let mut response = response(self.status(), JSON, self.reply().to_string());
        let headers = response.headers_mut();
        match self.kind {
            Kind::Unauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            // What is left of a body that stopped arriving cannot be told from the next
            // request: the connection ends with this answer.
            Kind::Timeout => {
                headers.insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("close"),
                );
            }
            _ => {}
        }
        if let Some(allow) = self.allow {
            headers.insert(header::ALLOW, header::HeaderValue::from_static(allow));
        }
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        response
    }
}

impl From<BusError> for ApiError {
    fn from(err: BusError) -> Self {
        // Whatever went wrong, nothing was done and a retry may succeed.
        ApiError::new(Kind::Unavailable, err.to_string())
    }
}

impl From<PresenceError> for ApiError {
    fn from(err: PresenceError) -> Self {
        match err {
            PresenceError::BadCursor => ApiError::new(Kind::BadRequest, err.to_string()),
            PresenceError::Unavailable(err) => err.into(),
        }
    }
}

/// The kind of a refused message operation (the WebSocket protocol sends its code, the
/// control API this kind, whose code is the same).
pub(super) fn op_kind(err: OpError) -> Kind {
    match err {
        OpError::Behind => Kind::Unavailable,
        OpError::NotFound => Kind::NotFound,
        OpError::NotOpen(_) | OpError::NotIdle | OpError::NotStream => Kind::Conflict,
        OpError::NoHistory | OpError::Clustered => Kind::Invalid,
        OpError::TooManyOpen(_) => Kind::Full,
        OpError::TextTooLarge(_) => Kind::TooLarge,
        OpError::NotYours | OpError::EditingOff => Kind::Forbidden,
    }
}

impl From<OpError> for ApiError {
    fn from(err: OpError) -> Self {
        ApiError::new(op_kind(err), err.to_string())
    }
}

pub(super) type Handled = Result<Response<Body>, ApiError>;

#[cfg(test)]
mod tests;
