//! The control API's errors: status, code and message, answered as `{"error":{..}}`.

use std::time::Duration;

use hyper::{Response, header};

use super::{Body, JSON, response};
use crate::{cluster::BusError, presence::PresenceError, protocol::ErrorCode};

/// An HTTP error: status, code and message, rendered as `{"error":{..}}`.
#[derive(Debug)]
pub(super) struct ApiError {
    pub(super) status: u16,
    pub(super) code: ErrorCode,
    pub(super) message: String,
    /// Seconds for a `Retry-After` header (429).
    retry_after_secs: Option<u64>,
    /// Close the connection after answering (a body that stalled).
    close: bool,
}

impl ApiError {
    pub(super) fn new(status: u16, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
            close: false,
        }
    }

    /// The HTTP status it answers with.
    pub(super) fn status(&self) -> u16 {
        self.status
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
                429,
                ErrorCode::RateLimited,
                format!("rate limit of this API key exceeded; retry after {millis} ms"),
            )
        }
    }

    /// 408: the body did not arrive within `control.body_timeout`; the connection closes.
    pub(super) fn body_timeout(timeout: Duration) -> Self {
        Self {
            close: true,
            ..Self::new(
                408,
                ErrorCode::BadRequest,
                format!(
                    "the request body did not arrive within {} ms",
                    timeout.as_millis()
                ),
            )
        }
    }

    pub(super) fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({
            "error": { "code": self.code.as_str(), "message": self.message }
        });
        let mut response = response(self.status, JSON, body.to_string());
        if self.status == 401 {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        if self.close {
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

impl From<BusError> for ApiError {
    fn from(err: BusError) -> Self {
        // Whatever went wrong, nothing was done and a retry may succeed.
        ApiError::new(503, ErrorCode::Unavailable, err.to_string())
    }
}

impl From<PresenceError> for ApiError {
    fn from(err: PresenceError) -> Self {
        match err {
            PresenceError::BadCursor => ApiError::new(400, ErrorCode::BadRequest, err.to_string()),
            PresenceError::Unavailable(err) => err.into(),
        }
    }
}

pub(super) type Handled = Result<Response<Body>, ApiError>;
