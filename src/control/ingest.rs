//! Streaming ingest (`POST /v1/streams`): one request per assistant reply, its body the
//! reply as it is generated (NDJSON lines or raw text), appended to one message stream and
//! finished at the end of the body (see `docs/streams.md`, `docs/http-api.md`).

use std::{sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;
use hyper::{Request, body::Incoming, header};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    ControlContext, JSON,
    error::{ApiError, Handled, Kind},
    request::charge_channel,
    request::{channel_name, check_payload, query_pairs},
    response,
    streams::message_id,
};
use crate::{
    hub::{Applied, Editor, Op, OpError},
    protocol::{AbandonReason, ChannelName},
};

/// The ingest's own limits: a line (NDJSON) longer than this is refused.
fn max_line_bytes(ctx: &ControlContext) -> usize {
    ctx.settings.max_publish_payload_bytes + 64
}

/// A whole ingest body longer than this is refused: room for the longest text a message
/// may hold, each character escaped (`\uXXXX`, 6 bytes) in lines of their own, plus the
/// data lines. Blank lines add nothing to the text, so without it a body of them could
/// keep a request open forever.
fn max_body_bytes(ctx: &ControlContext) -> usize {
    ctx.settings.max_text_bytes * 8 + 4 * ctx.settings.max_publish_payload_bytes + 65_536
}

/// What the ingest's body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IngestFormat {
    /// One JSON object per line: `{"text":".."}`, `{"data":..}`.
    Lines,
    /// Raw UTF-8 text: every chunk an append.
    Text,
}

/// One line of an NDJSON ingest body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestLine {
    #[serde(default, deserialize_with = "super::fields::present")]
    text: Option<String>,
    #[serde(default, deserialize_with = "super::fields::json_value")]
    data: Option<Box<RawValue>>,
}

/// The open stream of an ingest: abandoned when dropped unfinished (the body broke off, the
/// request was cut at shutdown), so a reply is never left open for `streams.idle_timeout`.
struct OpenStream<'a> {
    ctx: &'a ControlContext,
    channel: ChannelName,
    message_id: String,
    done: bool,
}

impl OpenStream<'_> {
    async fn apply(&self, op: Op<'_>) -> Result<Applied, ApiError> {
        // No answer waits on this write (the ingest answers at its end): written at once
        // when the batch is dropped, not from a task of its own.
        let mut writes = self.ctx.hub.write_batch();
        let applied = self
            .ctx
            .bus
            .apply(&self.channel, op, &Editor::Backend, &mut writes)
            .await?;
        Ok(applied)
    }

    /// Appends `text`, in pieces of at most `limits.max_publish_payload_bytes` (cut at
    /// character boundaries), each charged to the channel's budget, waiting out a refusal
    /// as back-pressure on the body: an ingest slows down rather than fails.
    async fn append(&self, mut text: &str, idle: Duration) -> Result<usize, ApiError> {
        let max = self.ctx.settings.max_publish_payload_bytes.max(4);
        let mut appends = 0;
        while !text.is_empty() {
            let mut cut = text.len().min(max);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let (piece, rest) = text.split_at(cut);
            let mut waited = Duration::ZERO;
            loop {
                match charge_channel(&self.channel, piece.len(), self.ctx) {
                    Ok(()) => break,
                    Err(err) => {
                        let wait = Duration::from_secs(err.retry_after_secs().unwrap_or(1).max(1))
                            .min(Duration::from_millis(200));
                        waited += wait;
                        if waited > idle {
                            return Err(err);
                        }
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            let op = Op::Append {
                message_id: &self.message_id,
                text: piece,
            };
            self.apply(op).await?;
            appends += 1;
            text = rest;
        }
        Ok(appends)
    }
}

impl Drop for OpenStream<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // The hub applies it at once where it orders messages itself. On a clustered node
        // Redis does, which takes an await a drop cannot make: a task of its own (should
        // it fail too, every node's sweep abandons the stream once idle).
        let op = Op::Abandon {
            message_id: &self.message_id,
            reason: AbandonReason::Ingest,
        };
        let local = self.ctx.hub.apply(
            &self.channel,
            &op,
            &Editor::Backend,
            &mut self.ctx.hub.write_batch(),
        );
        if local == Err(OpError::Clustered) {
            let bus = Arc::clone(&self.ctx.bus);
            let hub = self.ctx.hub.clone();
            let channel = self.channel.clone();
            let message_id = std::mem::take(&mut self.message_id);
            tokio::spawn(async move {
                let op = Op::Abandon {
                    message_id: &message_id,
                    reason: AbandonReason::Ingest,
                };
                let mut writes = hub.write_batch();
                if let Err(err) = bus.apply(&channel, op, &Editor::Backend, &mut writes).await {
                    tracing::debug!(%err, %channel, "Abandoning a broken-off ingest failed");
                }
            });
        }
    }
}

/// `POST /v1/streams?channel=..&message_id=..`: opens a stream (metadata from the
/// `Switchboard-Data` header or a first line `{"data":..}`), appends the body as it arrives
/// (NDJSON lines `{"text":".."}`, or with `Content-Type: text/plain` raw text), finishes it
/// at the end of the body (with the last line `{"data":..}` after text as its final data)
/// and answers `{"offset","message_id","appends"}`. A body that breaks off, stalls past
/// `streams.idle_timeout` or breaks a limit abandons it.
pub(super) async fn ingest(request: Request<Incoming>, ctx: &ControlContext) -> Handled {
    let (head, mut body) = request.into_parts();
    let handled = ingest_body(&head, &mut body, ctx).await;
    if let Err(err) = &handled
        && !matches!(err.kind(), Kind::Timeout | Kind::TooLarge)
    {
        // Refused while the backend goes on sending its reply (a used id, a bad line): most
        // HTTP clients read the answer only once their body is sent, so read the rest (as
        // bounded as an ingest's) rather than close on them, which they would see as a
        // reset instead of the answer.
        drain(
            &mut body,
            max_body_bytes(ctx),
            ctx.settings.stream_idle_timeout,
        )
        .await;
    }
    handled
}

/// Reads and drops `body` until it ends, `bytes` came, or nothing came for `idle`.
async fn drain(body: &mut Incoming, bytes: usize, idle: Duration) {
    let mut seen = 0;
    while seen < bytes {
        match tokio::time::timeout(idle, body.frame()).await {
            Ok(Some(Ok(frame))) => seen += frame.data_ref().map_or(0, Bytes::len),
            _ => return,
        }
    }
}

async fn ingest_body(
    head: &hyper::http::request::Parts,
    body: &mut Incoming,
    ctx: &ControlContext,
) -> Handled {
    let query = head.uri.query().unwrap_or("").to_owned();
    let mut channel = None;
    let mut id = None;
    for (key, value) in query_pairs(&query, &["channel", "message_id"])? {
        match key.as_str() {
            "channel" => channel = Some(value),
            _ => id = Some(value),
        }
    }
    let (Some(channel), Some(id)) = (channel, id) else {
        return Err(ApiError::new(
            Kind::Invalid,
            "the query must give `channel` and `message_id`",
        ));
    };
    let channel = channel_name(&channel, ctx)?;
    message_id(&id)?;
    let media_type = head
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let format = match media_type.as_str() {
        "text/plain" => IngestFormat::Text,
        "" | "application/x-ndjson" | "application/jsonl" | "application/json" => {
            IngestFormat::Lines
        }
        _ => {
            return Err(ApiError::new(
                Kind::UnsupportedMediaType,
                "Content-Type must be application/x-ndjson (lines of {\"text\":..}) or text/plain",
            ));
        }
    };
    let header_data = match head.headers.get("switchboard-data") {
        None => None,
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|_| ApiError::new(Kind::Invalid, "Switchboard-Data must be JSON text"))?;
            let data = RawValue::from_string(text.to_owned())
                .map_err(|_| ApiError::new(Kind::Invalid, "Switchboard-Data must be valid JSON"))?;
            check_payload(&data, ctx)?;
            Some(data)
        }
    };
    let idle = ctx.settings.stream_idle_timeout;
    let mut reader = Reader::new(format, max_line_bytes(ctx), max_body_bytes(ctx));
    // NDJSON: the first line may be the metadata; read it before opening.
    let mut first: Option<Piece> = None;
    if format == IngestFormat::Lines && header_data.is_none() {
        first = reader.next(body, idle).await?;
    }
    let mut metadata = header_data;
    if let Some(Piece::Line(line)) = &first
        && line.text.is_none()
        && line.data.is_some()
    {
        metadata = first.take().and_then(|piece| match piece {
            Piece::Line(line) => line.data,
            Piece::Text(_) => None,
        });
    }
    let data = metadata.as_deref().map_or("null", RawValue::get);
    charge_channel(&channel, data.len(), ctx)?;
    let mut writes = ctx.hub.write_batch();
    let opened = ctx
        .bus
        .apply(
            &channel,
            Op::Publish {
                data,
                message_id: Some(&id),
                stream: true,
            },
            &Editor::Backend,
            &mut writes,
        )
        .await?;
    writes.flush_later();
    if opened.duplicate {
        return Err(ApiError::new(
            Kind::Conflict,
            format!(
                "the channel already has a message with this message_id (offset {}); \
                 change it with /v1/update",
                opened.offset
            ),
        ));
    }
    let mut stream = OpenStream {
        ctx,
        channel,
        message_id: id,
        done: false,
    };
    let mut appends = 0;
    let mut final_data: Option<Box<RawValue>> = None;
    loop {
        let piece = match first.take() {
            Some(piece) => Some(piece),
            None => reader.next(body, idle).await?,
        };
        match piece {
            None => break,
            Some(Piece::Text(text)) => appends += stream.append(&text, idle).await?,
            Some(Piece::Line(line)) => {
                if let Some(text) = &line.text {
                    appends += stream.append(text, idle).await?;
                }
                if let Some(data) = line.data {
                    check_payload(&data, ctx)?;
                    final_data = Some(data);
                }
            }
        }
    }
    let finished = stream
        .apply(Op::Finish {
            message_id: &stream.message_id,
            data: final_data.as_deref().map(RawValue::get),
        })
        .await?;
    stream.done = true;
    let answer = serde_json::json!({
        "offset": finished.offset.to_string(),
        "message_id": stream.message_id,
        "opened": opened.offset.to_string(),
        "appends": appends,
    });
    Ok(response(200, JSON, answer.to_string()))
}

/// What the ingest's body gave next.
enum Piece {
    Line(IngestLine),
    Text(String),
}

/// Cuts an ingest body into lines (NDJSON) or UTF-8 text (a character split across chunks
/// waits for its end), each piece bounded.
struct Reader {
    format: IngestFormat,
    max_line: usize,
    /// Bytes the body may bring in all, and what it brought so far.
    max_body: usize,
    read: usize,
    buffer: BytesMut,
    ended: bool,
}

impl Reader {
    fn new(format: IngestFormat, max_line: usize, max_body: usize) -> Self {
        Self {
            format,
            max_line,
            max_body,
            read: 0,
            buffer: BytesMut::new(),
            ended: false,
        }
    }

    /// The next piece; `None` at the end of the body. An error for a body that broke off,
    /// stalled past `idle`, or holds a bad line.
    async fn next(
        &mut self,
        body: &mut Incoming,
        idle: Duration,
    ) -> Result<Option<Piece>, ApiError> {
        loop {
            if let Some(piece) = self.take()? {
                return Ok(Some(piece));
            }
            if self.ended {
                return Ok(None);
            }
            let frame = match tokio::time::timeout(idle, body.frame()).await {
                Err(_) => {
                    return Err(ApiError::new(
                        Kind::Timeout,
                        format!(
                            "nothing arrived for {} ms (streams.idle_timeout); the stream is abandoned",
                            idle.as_millis()
                        ),
                    ));
                }
                Ok(None) => {
                    self.ended = true;
                    continue;
                }
                Ok(Some(Err(_))) => {
                    return Err(ApiError::new(
                        Kind::BadRequest,
                        "the request body broke off; the stream is abandoned",
                    ));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data() {
                self.read += data.len();
                if self.read > self.max_body {
                    return Err(ApiError::new(
                        Kind::TooLarge,
                        format!(
                            "the body is longer than {} bytes (8 times streams.max_text_bytes \
                             and more); the stream is abandoned",
                            self.max_body
                        ),
                    ));
                }
                self.buffer.extend_from_slice(&data);
            }
        }
    }

    /// A piece from what is buffered, if one is complete (or the body ended).
    fn take(&mut self) -> Result<Option<Piece>, ApiError> {
        match self.format {
            IngestFormat::Lines => loop {
                let end = self.buffer.iter().position(|byte| *byte == b'\n');
                let line: Bytes = match end {
                    Some(end) => {
                        let line = self.buffer.split_to(end + 1).freeze();
                        line.slice(..end)
                    }
                    None if self.ended && !self.buffer.is_empty() => self.buffer.split().freeze(),
                    None => {
                        if self.buffer.len() > self.max_line {
                            return Err(line_too_long(self.max_line));
                        }
                        return Ok(None);
                    }
                };
                if line.len() > self.max_line {
                    return Err(line_too_long(self.max_line));
                }
                let trimmed = line.as_ref().trim_ascii();
                if trimmed.is_empty() {
                    continue;
                }
                let parsed: IngestLine = serde_json::from_slice(trimmed).map_err(|err| {
                    ApiError::new(
                        Kind::Invalid,
                        format!("a line must be {{\"text\":..}} or {{\"data\":..}}: {err}"),
                    )
                })?;
                return Ok(Some(Piece::Line(parsed)));
            },
            IngestFormat::Text => {
                if self.buffer.is_empty() {
                    return Ok(None);
                }
                let valid = match std::str::from_utf8(&self.buffer) {
                    Ok(text) => text.len(),
                    Err(err) if err.error_len().is_none() && !self.ended => err.valid_up_to(),
                    Err(_) => {
                        return Err(ApiError::new(Kind::Invalid, "the body is not UTF-8 text"));
                    }
                };
                if valid == 0 {
                    return Ok(None);
                }
                let text = self.buffer.split_to(valid);
                let text = String::from_utf8(text.to_vec()).expect("checked UTF-8 up to here");
                Ok(Some(Piece::Text(text)))
            }
        }
    }
}

fn line_too_long(max: usize) -> ApiError {
    ApiError::new(
        Kind::TooLarge,
        format!("a line is longer than {max} bytes (limits.max_publish_payload_bytes)"),
    )
}
