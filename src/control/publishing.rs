//! The routes that publish: `POST /v1/publish`, `/v1/broadcast`, `/v1/batch`, and the
//! message changes (`/v1/append`, `/v1/finish`, `/v1/update`, `/v1/delete`; their checks are
//! `streams`').

use std::collections::BTreeMap;

use hyper::{Request, body::Incoming};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    ControlContext, JSON,
    auth::Caller,
    error::{ApiError, Handled, Kind},
    fields,
    request::{channel_name, charge_channel, check_payload, json_body},
    response, streams,
};
use crate::{
    hub::{Applied, Editor, Op, WriteBatch},
    telemetry::{self, RateScope},
};

/// Channels one broadcast may name.
pub(super) const MAX_BROADCAST_CHANNELS: usize = 1000;
/// Commands one `POST /v1/batch` may hold.
pub(super) const MAX_BATCH_COMMANDS: usize = 1000;
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PublishRequest {
    channel: String,
    data: Box<RawValue>,
    /// Deduplicates the publish, and names the message for later changes.
    #[serde(default, deserialize_with = "fields::present")]
    message_id: Option<String>,
    /// Opens a stream (needs `message_id`).
    #[serde(default)]
    stream: bool,
}

/// The routes that publish (through [`publishing`]): their answer is 503 while the bus is
/// unavailable.
pub(super) const PUBLISHING_ROUTES: [&str; 8] = [
    "publish",
    "batch",
    "broadcast",
    "append",
    "finish",
    "update",
    "delete",
    "streams",
];

/// Runs a route that publishes with one [`WriteBatch`] for all it publishes, written after
/// the answer: the answer leaves first, then a small channel's deliveries (a large channel's
/// are written by its round's task anyway).
pub(super) async fn publishing(
    ctx: &ControlContext,
    route: impl AsyncFnOnce(&mut WriteBatch) -> Handled,
) -> Handled {
    let mut writes = ctx.hub.write_batch();
    let handled = route(&mut writes).await;
    writes.flush_later();
    handled
}

pub(super) async fn publish(
    request: Request<Incoming>,
    ctx: &ControlContext,
    writes: &mut WriteBatch,
) -> Handled {
    let body: PublishRequest = json_body(request, ctx).await?;
    let applied = publish_one(&body, ctx, writes).await?;
    Ok(streams::answer(applied))
}

/// Checks one publish and hands it to the bus: its offset.
pub(super) async fn publish_one(
    body: &PublishRequest,
    ctx: &ControlContext,
    writes: &mut WriteBatch,
) -> Result<Applied, ApiError> {
    let channel = channel_name(&body.channel, ctx)?;
    check_payload(&body.data, ctx)?;
    if let Some(id) = &body.message_id {
        streams::message_id(id)?;
    } else if body.stream {
        return Err(ApiError::new(
            Kind::Invalid,
            "a stream needs a `message_id`",
        ));
    }
    charge_channel(&channel, body.data.get().len(), ctx)?;
    let op = Op::Publish {
        data: body.data.get(),
        message_id: body.message_id.as_deref(),
        stream: body.stream,
    };
    Ok(ctx
        .bus
        .apply(&channel, op, &Editor::Backend, writes)
        .await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BroadcastRequest {
    channels: Vec<String>,
    data: Box<RawValue>,
}

pub(super) async fn broadcast(
    request: Request<Incoming>,
    ctx: &ControlContext,
    writes: &mut WriteBatch,
) -> Handled {
    let body: BroadcastRequest = json_body(request, ctx).await?;
    match broadcast_one(&body, ctx, writes).await {
        Ok(offsets) => Ok(response(
            200,
            JSON,
            serde_json::json!({ "offsets": offsets }).to_string(),
        )),
        // Say which channels did get the message, so the caller can retry the rest.
        Err((err, offsets)) if err.kind() == Kind::Unavailable => {
            let mut body = err.reply();
            body["offsets"] = serde_json::json!(offsets);
            Ok(response(503, JSON, body.to_string()))
        }
        Err((err, _)) => Err(err),
    }
}

/// Offsets of one message, by channel.
pub(super) type Offsets = BTreeMap<String, String>;

/// Checks one broadcast and hands it to the bus channel by channel: the offsets, or the error
/// and the channels that got the message before it.
pub(super) async fn broadcast_one(
    body: &BroadcastRequest,
    ctx: &ControlContext,
    writes: &mut WriteBatch,
) -> Result<Offsets, (ApiError, Offsets)> {
    if body.channels.is_empty() || body.channels.len() > MAX_BROADCAST_CHANNELS {
        let message = format!("`channels` must list 1 to {MAX_BROADCAST_CHANNELS} channels");
        return Err((ApiError::new(Kind::Invalid, message), Offsets::new()));
    }
    let channels = body
        .channels
        .iter()
        .map(|name| channel_name(name, ctx))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| (err, Offsets::new()))?;
    check_payload(&body.data, ctx).map_err(|err| (err, Offsets::new()))?;
    let mut offsets = Offsets::new();
    for channel in &channels {
        if offsets.contains_key(channel.as_str()) {
            continue;
        }
        charge_channel(channel, body.data.get().len(), ctx)
            .map_err(|err| (err, offsets.clone()))?;
        match ctx.bus.publish(channel, body.data.get(), writes).await {
            Ok(offset) => {
                offsets.insert(channel.as_str().to_owned(), offset.to_string());
            }
            Err(err) => return Err((err.into(), offsets)),
        }
    }
    Ok(offsets)
}

/// One command of `POST /v1/batch`: `{"publish": {..}}`, `{"broadcast": {..}}`, or a change
/// to a message (`append`, `finish`, `update`, `delete`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub(super) enum BatchCommand {
    Publish(PublishRequest),
    Broadcast(BroadcastRequest),
    Append(streams::AppendRequest),
    Finish(streams::FinishRequest),
    Update(streams::UpdateRequest),
    Delete(streams::DeleteRequest),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchRequest {
    commands: Vec<BatchCommand>,
}

/// `POST /v1/batch`: publishes and broadcasts in the order given, one reply each, in order.
/// A command that fails gets an error reply and the others still run; the envelope itself
/// must be well formed (else 400/422 and nothing runs).
pub(super) async fn batch(
    request: Request<Incoming>,
    caller: &Caller,
    ctx: &ControlContext,
    writes: &mut WriteBatch,
) -> Handled {
    let body: BatchRequest = json_body(request, ctx).await?;
    let n = body.commands.len();
    if n == 0 || n > MAX_BATCH_COMMANDS {
        return Err(ApiError::new(
            Kind::Invalid,
            format!("`commands` must list 1 to {MAX_BATCH_COMMANDS} commands"),
        ));
    }
    // The request itself took one token of the key's rate; each further command takes one.
    if let Some(limiter) = &ctx.settings.key_limiter {
        let extra = u32::try_from(n - 1).unwrap_or(u32::MAX);
        if extra >= limiter.quota().burst() {
            return Err(ApiError::new(
                Kind::Invalid,
                format!(
                    "a batch may hold at most control.request_burst_per_key ({}) commands",
                    limiter.quota().burst()
                ),
            ));
        }
        if extra > 0
            && let Err(rejected) = limiter.try_acquire(caller, ctx.hub.clock_ns(), extra)
        {
            telemetry::rate_limited(RateScope::ApiKey);
            return Err(ApiError::rate_limited(rejected.retry_after));
        }
    }
    let error = |err: ApiError| err.reply();
    let mut replies = Vec::with_capacity(n);
    for command in body.commands {
        replies.push(match command {
            BatchCommand::Publish(publish) => match publish_one(&publish, ctx, writes).await {
                Ok(applied) => streams::applied_json(applied),
                Err(err) => error(err),
            },
            BatchCommand::Append(body) => {
                change_reply(streams::Change::Append(body), ctx, writes).await
            }
            BatchCommand::Finish(body) => {
                change_reply(streams::Change::Finish(body), ctx, writes).await
            }
            BatchCommand::Update(body) => {
                change_reply(streams::Change::Update(body), ctx, writes).await
            }
            BatchCommand::Delete(body) => {
                change_reply(streams::Change::Delete(body), ctx, writes).await
            }
            BatchCommand::Broadcast(broadcast) => {
                match broadcast_one(&broadcast, ctx, writes).await {
                    Ok(offsets) => serde_json::json!({ "offsets": offsets }),
                    Err((err, offsets)) => {
                        let mut reply = error(err);
                        reply["offsets"] = serde_json::json!(offsets);
                        reply
                    }
                }
            }
        });
    }
    Ok(response(
        200,
        JSON,
        serde_json::json!({ "replies": replies }).to_string(),
    ))
}

/// A batch's reply to a change: `{"offset"}` or `{"error"}`.
pub(super) async fn change_reply(
    change: streams::Change,
    ctx: &ControlContext,
    writes: &mut WriteBatch,
) -> serde_json::Value {
    match streams::change_one(&change, ctx, writes).await {
        Ok(applied) => streams::applied_json(applied),
        Err(err) => err.reply(),
    }
}

/// `POST /v1/append`, `/v1/finish`, `/v1/update`, `/v1/delete`: one change to a message.
pub(super) async fn change(
    request: Request<Incoming>,
    ctx: &ControlContext,
    writes: &mut WriteBatch,
    route: &'static str,
) -> Handled {
    let change = match route {
        "append" => streams::Change::Append(json_body(request, ctx).await?),
        "finish" => streams::Change::Finish(json_body(request, ctx).await?),
        "update" => streams::Change::Update(json_body(request, ctx).await?),
        _ => streams::Change::Delete(json_body(request, ctx).await?),
    };
    let applied = streams::change_one(&change, ctx, writes).await?;
    Ok(streams::answer(applied))
}
