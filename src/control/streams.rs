//! The routes that change messages (`POST /v1/append`, `/v1/finish`, `/v1/update`,
//! `/v1/delete`; `message_id` and `stream` on publishes are `publishing`'), see
//! `docs/streams.md`. Streaming ingest is `ingest`'s.

use hyper::Response;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    Body, ControlContext, JSON,
    error::{ApiError, Kind},
    fields,
    request::charge_channel,
    request::{channel_name, check_payload},
    response,
};
use crate::{
    cluster::ApplyError,
    hub::{Applied, Editor, Op},
    protocol,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AppendRequest {
    channel: String,
    message_id: String,
    text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FinishRequest {
    channel: String,
    message_id: String,
    #[serde(default, deserialize_with = "fields::json_value")]
    data: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateRequest {
    channel: String,
    message_id: String,
    #[serde(default, deserialize_with = "fields::json_value")]
    data: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "fields::present")]
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeleteRequest {
    channel: String,
    message_id: String,
}

/// A change to a message: a route's body, or a `POST /v1/batch` command.
pub(super) enum Change {
    Append(AppendRequest),
    Finish(FinishRequest),
    Update(UpdateRequest),
    Delete(DeleteRequest),
}

impl From<ApplyError> for ApiError {
    fn from(err: ApplyError) -> Self {
        match err {
            ApplyError::Bus(err) => err.into(),
            ApplyError::Refused(err) => err.into(),
        }
    }
}

/// Checks a `message_id`: 422 when it breaks the grammar.
pub(super) fn message_id(id: &str) -> Result<(), ApiError> {
    protocol::check_message_id(id).map_err(|err| ApiError::new(Kind::Invalid, err.to_string()))
}

/// `{"offset":..}`, with `"duplicate":true` when nothing was done (the id was known).
pub(super) fn applied_json(applied: Applied) -> serde_json::Value {
    if applied.duplicate {
        serde_json::json!({ "offset": applied.offset.to_string(), "duplicate": true })
    } else {
        serde_json::json!({ "offset": applied.offset.to_string() })
    }
}

/// Checks one change and hands it to the bus.
pub(super) async fn change_one(
    change: &Change,
    ctx: &ControlContext,
    writes: &mut crate::hub::WriteBatch,
) -> Result<Applied, ApiError> {
    let (channel, id, op) = match change {
        Change::Append(body) => {
            if body.text.len() > ctx.settings.max_publish_payload_bytes {
                return Err(ApiError::new(
                    Kind::TooLarge,
                    format!(
                        "`text` is larger than {} bytes (limits.max_publish_payload_bytes)",
                        ctx.settings.max_publish_payload_bytes
                    ),
                ));
            }
            let op = Op::Append {
                message_id: &body.message_id,
                text: &body.text,
            };
            (&body.channel, &body.message_id, op)
        }
        Change::Finish(body) => {
            if let Some(data) = &body.data {
                check_payload(data, ctx)?;
            }
            let op = Op::Finish {
                message_id: &body.message_id,
                data: body.data.as_deref().map(RawValue::get),
            };
            (&body.channel, &body.message_id, op)
        }
        Change::Update(body) => {
            if body.data.is_none() && body.text.is_none() {
                return Err(ApiError::new(
                    Kind::Invalid,
                    "an update needs `data`, `text` or both",
                ));
            }
            if let Some(data) = &body.data {
                check_payload(data, ctx)?;
            }
            let op = Op::Update {
                message_id: &body.message_id,
                data: body.data.as_deref().map(RawValue::get),
                text: body.text.as_deref(),
            };
            (&body.channel, &body.message_id, op)
        }
        Change::Delete(body) => {
            let op = Op::Delete {
                message_id: &body.message_id,
            };
            (&body.channel, &body.message_id, op)
        }
    };
    let channel = channel_name(channel, ctx)?;
    message_id(id)?;
    let bytes = match op {
        Op::Append { text, .. } => text.len(),
        Op::Finish { data, .. } => data.map_or(0, str::len),
        Op::Update { data, text, .. } => data.map_or(0, str::len) + text.map_or(0, str::len),
        _ => 0,
    };
    charge_channel(&channel, bytes, ctx)?;
    Ok(ctx
        .bus
        .apply(&channel, op, &Editor::Backend, writes)
        .await?)
}

/// The answer of a route that changes a message.
pub(super) fn answer(applied: Applied) -> Response<Body> {
    response(200, JSON, applied_json(applied).to_string())
}
