//! Webhooks (`[[webhooks]]`): events POSTed to the application in signed batches, the
//! asynchronous half of keeping it in the loop (see `docs/backend.md`).
//!
//! Each webhook has its own bounded queue and task: events wait at most `batch_interval`
//! for others (up to `batch_max` per batch), a batch is POSTed as `{"events":[..]}` with
//! `Switchboard-Signature`, and a batch that fails (transport, timeout, not 2xx) is tried
//! again with a doubling wait (250 ms up to `max_backoff`) until it is taken: at-least-once,
//! in order; receivers dedupe by `id`. While the endpoint fails, new events wait in the
//! queue; beyond `max_queued` they are dropped, counted (`switchboard_webhook_events_dropped_total`)
//! and logged. Nothing here ever waits on a session or a publisher: emitting is a
//! `try_send`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Request, Uri,
    header::{CONTENT_TYPE, HeaderValue},
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{WebhookConfig, WebhookEvent},
    hooks::sign,
    protocol::ChannelName,
    shutdown::TaskGroup,
    telemetry,
};

/// One event, as the receiver gets it.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unique across nodes and restarts: `<node>-<process nonce>-<seq>`.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Unix milliseconds.
    pub time: u64,
    pub node: Arc<str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
    /// `client_publish`: the message's offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<String>,
    /// `connection_closed`: the close code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// `channel_occupied`, `channel_vacated`: the change's place among the channel's
    /// changes, on every node (it only grows; order by it, not by `time`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// What an event is about, before it gets its id and time.
#[derive(Debug, Default)]
pub struct About {
    pub channel: Option<String>,
    pub user: Option<Arc<str>>,
    pub conn_id: Option<u64>,
    pub data: Option<Box<RawValue>>,
    pub offset: Option<String>,
    pub code: Option<u16>,
    /// Occupancy changes: their order among the channel's (see `occupancy`).
    pub seq: Option<u64>,
}

const fn label(event: WebhookEvent) -> &'static str {
    match event {
        WebhookEvent::ChannelOccupied => "channel_occupied",
        WebhookEvent::ChannelVacated => "channel_vacated",
        WebhookEvent::MemberAdded => "member_added",
        WebhookEvent::MemberRemoved => "member_removed",
        WebhookEvent::ClientPublish => "client_publish",
        WebhookEvent::ConnectionClosed => "connection_closed",
    }
}

/// Whether `channel` matches a webhook's `channels` pattern.
fn matches(pattern: &str, channel: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => channel == pattern,
    }
}

struct Sink {
    index: usize,
    config: WebhookConfig,
    queue: flume::Sender<Arc<Event>>,
}

/// The node's webhooks.
pub struct Webhooks {
    sinks: Vec<Sink>,
    node: Arc<str>,
    nonce: u32,
    seq: AtomicU64,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("sinks", &self.sinks.len())
            .finish_non_exhaustive()
    }
}

impl Webhooks {
    /// Starts a task per webhook in `tasks`, stopping at `stop` (after a last try at what is
    /// queued); `None` when there are none.
    #[must_use]
    pub fn start(
        configs: &[WebhookConfig],
        node: Arc<str>,
        tasks: &TaskGroup,
        stop: &CancellationToken,
    ) -> Option<Arc<Self>> {
        if configs.is_empty() {
            return None;
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        let sinks = configs
            .iter()
            .enumerate()
            .map(|(index, config)| {
                let (queue, events) = flume::bounded(config.max_queued);
                tasks.spawn(deliver(
                    index,
                    config.clone(),
                    client.clone(),
                    events,
                    stop.clone(),
                ));
                Sink {
                    index,
                    config: config.clone(),
                    queue,
                }
            })
            .collect();
        Some(Arc::new(Self {
            sinks,
            node,
            nonce: rand::random(),
            seq: AtomicU64::new(0),
        }))
    }

    /// Whether some webhook takes `event` (for callers that would build it at a cost).
    #[must_use]
    pub fn wants(&self, event: WebhookEvent) -> bool {
        self.sinks
            .iter()
            .any(|sink| sink.config.events.contains(&event))
    }

    /// What tells `member_added` and `member_removed` (channel, user, whether added) to the
    /// webhooks that take them; `None` when none does.
    #[must_use]
    pub fn member_events(
        self: &Arc<Self>,
    ) -> Option<impl Fn(&ChannelName, &str, bool) + Send + Sync + 'static> {
        let webhooks = Arc::clone(self);
        let wanted = |event| webhooks.wants(event);
        if !wanted(WebhookEvent::MemberAdded) && !wanted(WebhookEvent::MemberRemoved) {
            return None;
        }
        Some(move |channel: &ChannelName, user: &str, added: bool| {
            let event = if added {
                WebhookEvent::MemberAdded
            } else {
                WebhookEvent::MemberRemoved
            };
            webhooks.emit(
                event,
                About {
                    channel: Some(channel.as_str().to_owned()),
                    user: Some(Arc::from(user)),
                    ..About::default()
                },
            );
        })
    }

    /// What tells `channel_occupied` and `channel_vacated` (channel, whether occupied) to
    /// the webhooks that take them; `None` when none does.
    #[must_use]
    pub fn occupancy_events(
        self: &Arc<Self>,
    ) -> Option<impl Fn(&ChannelName, bool, u64) + Send + Sync + 'static> {
        let webhooks = Arc::clone(self);
        let wanted = |event| webhooks.wants(event);
        if !wanted(WebhookEvent::ChannelOccupied) && !wanted(WebhookEvent::ChannelVacated) {
            return None;
        }
        Some(move |channel: &ChannelName, occupied: bool, seq: u64| {
            let event = if occupied {
                WebhookEvent::ChannelOccupied
            } else {
                WebhookEvent::ChannelVacated
            };
            webhooks.emit(
                event,
                About {
                    channel: Some(channel.as_str().to_owned()),
                    seq: Some(seq),
                    ..About::default()
                },
            );
        })
    }

    /// Queues `event` for every webhook that takes it (and its channel); never waits.
    pub fn emit(&self, event: WebhookEvent, about: About) {
        let mut event_arc: Option<Arc<Event>> = None;
        for sink in &self.sinks {
            if !sink.config.events.contains(&event)
                || about
                    .channel
                    .as_deref()
                    .is_some_and(|channel| !matches(&sink.config.channels, channel))
            {
                continue;
            }
            let shared = event_arc
                .get_or_insert_with(|| Arc::new(self.event(event, &about)))
                .clone();
            if sink.queue.try_send(shared).is_err() {
                telemetry::webhook_dropped(sink.index);
                tracing::warn!(
                    webhook = sink.index,
                    url = %sink.config.url,
                    event = label(event),
                    "Webhook queue full (webhooks.max_queued): event dropped"
                );
            }
        }
    }

    fn event(&self, event: WebhookEvent, about: &About) -> Event {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        Event {
            id: format!("{}-{:08x}-{seq}", self.node, self.nonce),
            kind: label(event),
            time: crate::clock::unix_ms(),
            node: Arc::clone(&self.node),
            channel: about.channel.clone(),
            user: about.user.clone(),
            conn_id: about.conn_id,
            data: about.data.clone(),
            offset: about.offset.clone(),
            code: about.code,
            seq: about.seq,
        }
    }
}

#[derive(Serialize)]
struct Batch<'a> {
    events: &'a [Arc<Event>],
}

/// One webhook's task: batches, POSTs, retries.
async fn deliver(
    index: usize,
    config: WebhookConfig,
    client: Client<HttpConnector, Full<Bytes>>,
    events: flume::Receiver<Arc<Event>>,
    stop: CancellationToken,
) {
    let Ok(url) = config.url.parse::<Uri>() else {
        return;
    };
    let mut batch: Vec<Arc<Event>> = Vec::with_capacity(config.batch_max);
    loop {
        // The first event of a batch, then others for up to `batch_interval`.
        let first = tokio::select! {
            () = stop.cancelled() => return last_try(index, &client, &url, &config, batch, &events).await,
            first = events.recv_async() => match first {
                Ok(first) => first,
                Err(_) => return,
            },
        };
        batch.push(first);
        let until = tokio::time::Instant::now() + config.batch_interval;
        while batch.len() < config.batch_max {
            let next = tokio::select! {
                () = stop.cancelled() => return last_try(index, &client, &url, &config, batch, &events).await,
                () = tokio::time::sleep_until(until) => break,
                next = events.recv_async() => next,
            };
            match next {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        telemetry::webhook_queued(index, events.len());
        let Ok(body) = serde_json::to_vec(&Batch { events: &batch }) else {
            batch.clear();
            continue;
        };
        let body = Bytes::from(body);
        let mut backoff = Duration::from_millis(250);
        loop {
            let sent = tokio::time::timeout(
                config.timeout,
                post(&client, &url, &config.secret, body.clone()),
            )
            .await;
            match sent {
                Ok(Ok(())) => {
                    telemetry::webhook_delivered(index, batch.len());
                    break;
                }
                Ok(Err(reason)) => {
                    telemetry::webhook_failed(index);
                    tracing::debug!(webhook = index, reason, "Webhook batch failed; retrying");
                }
                Err(_) => {
                    telemetry::webhook_failed(index);
                    tracing::debug!(webhook = index, "Webhook batch timed out; retrying");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return last_try(index, &client, &url, &config, batch, &events).await,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(config.max_backoff);
        }
        batch.clear();
    }
}

/// How long the last try at shutdown may take in all: the node waits about a second for
/// its background tasks.
const LAST_TRY: Duration = Duration::from_millis(800);

/// At shutdown: what is batched and queued is sent once more, in batches, within
/// [`LAST_TRY`]; what the endpoint does not take then is lost (and counted as dropped).
async fn last_try(
    index: usize,
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &Uri,
    config: &WebhookConfig,
    mut batch: Vec<Arc<Event>>,
    events: &flume::Receiver<Arc<Event>>,
) {
    batch.extend(events.drain());
    let deadline = tokio::time::Instant::now() + LAST_TRY.min(config.timeout);
    let mut left = batch.len();
    for chunk in batch.chunks(config.batch_max) {
        let Ok(body) = serde_json::to_vec(&Batch { events: chunk }) else {
            continue;
        };
        let sent = tokio::time::timeout_at(
            deadline,
            post(client, url, &config.secret, Bytes::from(body)),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            break;
        }
        left -= chunk.len();
    }
    if left > 0 {
        for _ in 0..left {
            telemetry::webhook_dropped(index);
        }
        tracing::warn!(
            url = %config.url,
            events = left,
            "Webhook events not delivered before shutdown"
        );
    }
}

async fn post(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &Uri,
    secret: &str,
    body: Bytes,
) -> Result<(), &'static str> {
    let mut request = Request::post(url.clone());
    if let Some(headers) = request.headers_mut() {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if !secret.is_empty() {
            let now = crate::clock::unix_now();
            let value = sign::signature(secret.as_bytes(), now, &body);
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(sign::HEADER, value);
            }
        }
    }
    let request = request.body(Full::new(body)).map_err(|_| "request")?;
    let response = client.request(request).await.map_err(|_| "transport")?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err("status")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_prefixes_and_names() {
        assert!(matches("*", "anything"));
        assert!(matches("room:*", "room:7"));
        assert!(!matches("room:*", "user:7"));
        assert!(matches("lobby", "lobby"));
        assert!(!matches("lobby", "lobby2"));
    }
}
