//! Reading requests: JSON bodies (content type, size, time), queries, channel names,
//! payload sizes, and the channel publish budget a request's payload is charged to.

use std::time::Duration;

use http_body_util::{BodyExt as _, Limited};
use hyper::{Request, body::Incoming, header};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    ControlContext, JSON,
    error::{ApiError, Kind},
};
use crate::protocol::ChannelName;
use crate::telemetry::{self, RateScope};

/// A body declared larger than `control.max_body_bytes`, up to this many times that, is read
/// and dropped (within `control.body_timeout`) before the 413 is sent. Closing a connection
/// with request bytes still unread makes the kernel reset it, and a client still sending
/// would then see the reset instead of the answer; larger bodies are not worth the bandwidth
/// and get the answer at once.
pub(super) const DISCARD_FACTOR: usize = 4;

/// Reads and drops `body` (at most `length` bytes, within `timeout`).
pub(super) async fn discard_body(mut body: Incoming, length: usize, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, async {
        let mut seen = 0;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, bytes::Bytes::len);
            if seen >= length {
                break;
            }
        }
    })
    .await;
}

/// Reads a JSON body: checks the content type and the size limit, then parses it.
pub(super) async fn json_body<T: for<'de> Deserialize<'de>>(
    request: Request<Incoming>,
    ctx: &ControlContext,
) -> Result<T, ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    // What `curl -d` and `requests.post(data=...)` send with a JSON string: taken when the
    // body is JSON. Any other declared type is a mistake worth saying.
    let undeclared = media_type.is_empty()
        || media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded");
    if !media_type.eq_ignore_ascii_case(JSON) && !undeclared {
        return Err(ApiError::new(
            Kind::UnsupportedMediaType,
            format!("Content-Type must be application/json (got {media_type:.64})"),
        ));
    }
    let too_large = || {
        ApiError::new(
            Kind::TooLarge,
            format!(
                "request body is larger than {} bytes",
                ctx.settings.max_body_bytes
            ),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if let Some(length) = declared.filter(|length| *length > ctx.settings.max_body_bytes) {
        if length <= ctx.settings.max_body_bytes.saturating_mul(DISCARD_FACTOR) {
            discard_body(request.into_body(), length, ctx.settings.body_timeout).await;
        }
        return Err(too_large());
    }
    let read = Limited::new(request.into_body(), ctx.settings.max_body_bytes).collect();
    let Ok(body) = tokio::time::timeout(ctx.settings.body_timeout, read).await else {
        return Err(ApiError::body_timeout(ctx.settings.body_timeout));
    };
    let body = body
        .map_err(|err| {
            if err.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                ApiError::new(Kind::BadRequest, "could not read the request body")
            }
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|err| {
        if err.is_data() {
            ApiError::new(Kind::Invalid, err.to_string())
        } else if undeclared {
            ApiError::new(
                Kind::BadRequest,
                format!(
                    "body is not valid JSON: {err} (send JSON with Content-Type: \
                     application/json; a form-encoded body is not taken)"
                ),
            )
        } else {
            ApiError::new(Kind::BadRequest, format!("body is not valid JSON: {err}"))
        }
    })
}

pub(super) fn channel_name(name: &str, ctx: &ControlContext) -> Result<ChannelName, ApiError> {
    ChannelName::parse(name, ctx.settings.max_channel_name_bytes)
        .map_err(|err| ApiError::new(Kind::Invalid, format!("channel `{name}`: {err}")))
}

pub(super) fn check_payload(data: &RawValue, ctx: &ControlContext) -> Result<(), ApiError> {
    if data.get().len() > ctx.settings.max_publish_payload_bytes {
        return Err(ApiError::new(
            Kind::TooLarge,
            format!(
                "`data` is larger than {} bytes",
                ctx.settings.max_publish_payload_bytes
            ),
        ));
    }
    Ok(())
}

/// A query's `key=value` pairs, decoded; `allowed` names the keys the route takes.
pub(super) fn query_pairs(
    query: &str,
    allowed: &[&str],
) -> Result<Vec<(String, String)>, ApiError> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(key, value)| {
            if allowed.contains(&key.as_ref()) {
                Ok((key.into_owned(), value.into_owned()))
            } else {
                Err(ApiError::new(
                    Kind::BadRequest,
                    format!("unknown query parameter `{key:.64}`"),
                ))
            }
        })
        .collect()
}

/// A `limit` parameter from 1 to `max`.
pub(super) fn parse_limit(value: &str, max: usize) -> Result<usize, ApiError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|limit| (1..=max).contains(limit))
        .ok_or_else(|| {
            ApiError::new(
                Kind::BadRequest,
                format!("`limit` must be an integer from 1 to {max}"),
            )
        })
}

/// Takes `bytes` from the channel's publish budget for the control API
/// (`limits.channel_publish_bytes_per_second`; clients have their own): 429 with
/// `Retry-After` when it refuses.
pub(super) fn charge_channel(
    channel: &ChannelName,
    bytes: usize,
    ctx: &ControlContext,
) -> Result<(), ApiError> {
    let Some(budget) = &ctx.channel_budget else {
        return Ok(());
    };
    let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
    let Err(rejected) = budget.try_acquire(channel, ctx.hub.clock_ns(), bytes) else {
        return Ok(());
    };
    telemetry::rate_limited(RateScope::ChannelPublishBytes);
    Err(
        ApiError::rate_limited(rejected.retry_after).with_message(format!(
            "channel {channel} is over {} bytes/s (limits.channel_publish_bytes_per_second); \
         retry after {} ms",
            budget.quota().per_second(),
            rejected.retry_after.as_millis().max(1)
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_are_decoded_as_a_form_and_unknown_keys_refused() {
        let pairs = query_pairs("limit=5&since=e%3A7&q=a+b%20c", &["limit", "since", "q"]).unwrap();
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(pairs, [("limit", "5"), ("since", "e:7"), ("q", "a b c")]);
        assert!(query_pairs("", &[]).unwrap().is_empty());
        let err = query_pairs("limit=5&evil=1", &["limit"]).unwrap_err();
        assert_eq!(err.kind(), Kind::BadRequest);
        assert!(
            err.reply()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("`evil`"),
            "{err:?}"
        );
        // A long unknown key is cut in the message, not echoed whole.
        let long = format!("{}=1", "k".repeat(5000));
        let err = query_pairs(&long, &["limit"]).unwrap_err();
        assert!(err.reply().to_string().len() < 250, "{err:?}");
    }

    #[test]
    fn a_limit_is_a_whole_number_within_its_bounds() {
        assert_eq!(parse_limit("1", 100).unwrap(), 1);
        assert_eq!(parse_limit("100", 100).unwrap(), 100);
        for bad in ["0", "101", "-1", "1.5", "", " 5", "99999999999999999999999"] {
            let err = parse_limit(bad, 100).unwrap_err();
            assert_eq!(err.kind(), Kind::BadRequest, "{bad:?}");
        }
    }
}
