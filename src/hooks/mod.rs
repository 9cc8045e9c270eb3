//! The application backend in the loop, synchronously: HTTP JSON requests to the URLs of
//! `[hooks]` at connect (who is this connection), refresh, subscribe, publish and `rpc` (see
//! `docs/backend.md`).
//!
//! Every request goes through one [`Gate`] per node (at most `hooks.max_in_flight` in flight,
//! a bounded first-come queue before them) and its hook's [`Breaker`], so that a reconnect
//! storm becomes a queue of bounded length and wait, never a storm of requests; a backend
//! that fails is asked again only by one probe per `hooks.breaker_cooldown`. Requests share
//! a keep-alive pool of HTTP/1.1 (or h2c) connections, are signed with `hooks.secret`, and
//! their answers are read up to `hooks.max_response_bytes` within `hooks.timeout`.
//!
//! Every answer has one shape: `{"result":{..}}` allows, `{"error":{"message":..}}` refuses,
//! `{"disconnect":{"code":4000-4999,"reason":..}}` closes the connection.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    HeaderMap, Request, Uri,
    header::{CONTENT_TYPE, HeaderName, HeaderValue},
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{config::HooksConfig, telemetry};

pub mod connect;
pub mod gate;
pub mod sign;

pub use self::gate::{Breaker, Busy, Gate};

/// Which hook a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Connect,
    Refresh,
    Subscribe,
    Publish,
    Rpc,
}

impl Hook {
    const ALL: [Hook; 5] = [
        Hook::Connect,
        Hook::Refresh,
        Hook::Subscribe,
        Hook::Publish,
        Hook::Rpc,
    ];

    /// A bounded label for metrics.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Hook::Connect => "connect",
            Hook::Refresh => "refresh",
            Hook::Subscribe => "subscribe",
            Hook::Publish => "publish",
            Hook::Rpc => "rpc",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// What the backend answered.
#[derive(Debug)]
pub enum Answer {
    /// `{"result":{..}}`: allowed, with the result object.
    Allowed(Box<RawValue>),
    /// `{"error":{"message":..}}`: refused, with the backend's message.
    Refused(String),
    /// `{"disconnect":{"code","reason"}}`: close the connection with this code (4000-4999).
    Disconnect { code: u16, reason: String },
}

/// Why a request has no answer. The client gets `unavailable` (at connect: close 1013 with
/// a `reconnect` frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Not sent: the queue is full or timed out, or the breaker is open.
    Busy(Busy),
    /// No answer within `hooks.timeout`.
    Timeout,
    /// The connection to the backend failed.
    Transport,
    /// The backend answered with this status, not 2xx.
    Status(u16),
    /// The answer was larger than `hooks.max_response_bytes`.
    TooLarge,
    /// The answer was not one of the three shapes.
    BadAnswer,
}

impl Failure {
    /// A bounded label for metrics.
    #[must_use]
    pub const fn label(&self) -> &'static str {
        match self {
            Failure::Busy(_) => "busy",
            Failure::Timeout => "timeout",
            Failure::Transport | Failure::Status(_) | Failure::TooLarge | Failure::BadAnswer => {
                "error"
            }
        }
    }

    /// What the client is told.
    #[must_use]
    pub fn message(&self) -> String {
        match self {
            Failure::Busy(Busy::BreakerOpen) => {
                "the application backend is failing; try again later".to_owned()
            }
            Failure::Busy(_) => "the application backend is busy; try again later".to_owned(),
            Failure::Timeout => "the application backend did not answer in time".to_owned(),
            Failure::Transport => "the application backend cannot be reached".to_owned(),
            Failure::Status(status) => {
                format!("the application backend failed (HTTP {status})")
            }
            Failure::TooLarge => "the application backend's answer is too large".to_owned(),
            Failure::BadAnswer => "the application backend's answer is not valid".to_owned(),
        }
    }
}

/// The hooks of one node.
#[derive(Debug)]
pub struct Hooks {
    urls: [Option<Uri>; Hook::ALL.len()],
    breakers: [Breaker; Hook::ALL.len()],
    client: Client<HttpConnector, Full<Bytes>>,
    headers: HeaderMap,
    secret: Option<Vec<u8>>,
    timeout: Duration,
    max_response_bytes: usize,
    gate: Gate,
    started: tokio::time::Instant,
    node: Arc<str>,
    config: HooksConfig,
    connect_cache: Option<connect::Cache>,
    /// `rpc` requests in flight, per connection that has some.
    rpcs: Arc<dashmap::DashMap<u64, usize>>,
}

/// One `rpc` request's place in its connection's count; given back when dropped.
#[derive(Debug)]
pub struct RpcSlot {
    rpcs: Arc<dashmap::DashMap<u64, usize>>,
    conn_id: u64,
}

impl Drop for RpcSlot {
    fn drop(&mut self) {
        self.rpcs.remove_if_mut(&self.conn_id, |_, count| {
            *count -= 1;
            *count == 0
        });
    }
}

impl Hooks {
    /// From a validated `[hooks]`; `None` when no hook is configured.
    #[must_use]
    pub fn new(config: &HooksConfig, node: Arc<str>) -> Option<Arc<Self>> {
        if !config.any() {
            return None;
        }
        let url = |url: &str| (!url.is_empty()).then(|| url.parse::<Uri>().ok()).flatten();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(config.max_in_flight)
            .http2_only(config.http2)
            .build(connector);
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            // Checked by `HooksConfig::validate`.
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(name, value);
            }
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Some(Arc::new(Self {
            urls: [
                url(&config.connect_url),
                url(&config.refresh_url),
                url(&config.subscribe_url),
                url(&config.publish_url),
                url(&config.rpc_url),
            ],
            breakers: Hook::ALL
                .map(|_| Breaker::new(config.breaker_failures, config.breaker_cooldown)),
            client,
            headers,
            secret: (!config.secret.is_empty()).then(|| config.secret.as_bytes().to_vec()),
            timeout: config.timeout,
            max_response_bytes: config.max_response_bytes,
            gate: Gate::new(
                config.max_in_flight,
                config.max_queued,
                config.queue_timeout,
            ),
            started: tokio::time::Instant::now(),
            node,
            connect_cache: (!config.connect_cache.is_zero())
                .then(|| connect::Cache::new(config.connect_cache, config.connect_cache_entries)),
            config: config.clone(),
            rpcs: Arc::default(),
        }))
    }

    /// A place for one more `rpc` of connection `conn_id`; `None` when it has
    /// `hooks.max_rpc_in_flight_per_connection` in flight.
    #[must_use]
    pub fn rpc_slot(&self, conn_id: u64) -> Option<RpcSlot> {
        let mut count = self.rpcs.entry(conn_id).or_insert(0);
        if *count >= self.config.max_rpc_in_flight_per_connection {
            return None;
        }
        *count += 1;
        Some(RpcSlot {
            rpcs: Arc::clone(&self.rpcs),
            conn_id,
        })
    }

    /// Whether `hook` has a URL.
    #[must_use]
    pub fn has(&self, hook: Hook) -> bool {
        self.urls[hook.index()].is_some()
    }

    /// `[hooks]`, as configured.
    #[must_use]
    pub fn config(&self) -> &HooksConfig {
        &self.config
    }

    /// The cache of the connect hook's allowing answers (`hooks.connect_cache`), when on.
    #[must_use]
    pub fn connect_cache(&self) -> Option<&connect::Cache> {
        self.connect_cache.as_ref()
    }

    /// This node's id, which every request names.
    #[must_use]
    pub fn node(&self) -> &str {
        &self.node
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Requests waiting for a slot now.
    #[must_use]
    pub fn queued(&self) -> usize {
        self.gate.queued()
    }

    /// Sends `body` (JSON) to `hook`'s URL and reads its answer, through the gate and the
    /// hook's breaker; counts the outcome.
    ///
    /// # Errors
    /// [`Failure`]: no answer to act on.
    pub async fn call(&self, hook: Hook, body: Vec<u8>) -> Result<Answer, Failure> {
        let outcome = self.call_uncounted(hook, body).await;
        let (label, seconds) = match &outcome {
            Ok((Answer::Allowed(_), seconds)) => ("allowed", Some(*seconds)),
            Ok((Answer::Refused(_), seconds)) => ("refused", Some(*seconds)),
            Ok((Answer::Disconnect { .. }, seconds)) => ("disconnect", Some(*seconds)),
            Err((failure, seconds)) => (failure.label(), *seconds),
        };
        telemetry::hook_request(hook.label(), label, seconds);
        match outcome {
            Ok((answer, _)) => Ok(answer),
            Err((failure, _)) => {
                if !matches!(failure, Failure::Busy(_)) {
                    tracing::warn!(hook = hook.label(), failure = ?failure, "Hook request failed");
                }
                Err(failure)
            }
        }
    }

    /// [`Hooks::call`] without counting: the answer or failure, and the seconds the request
    /// took when it was sent.
    async fn call_uncounted(
        &self,
        hook: Hook,
        body: Vec<u8>,
    ) -> Result<(Answer, f64), (Failure, Option<f64>)> {
        let Some(url) = &self.urls[hook.index()] else {
            return Err((Failure::Transport, None));
        };
        let breaker = &self.breakers[hook.index()];
        if !breaker.admit(self.now_ms()) {
            return Err((Failure::Busy(Busy::BreakerOpen), None));
        }
        let permit = match self.gate.enter().await {
            Ok(permit) => permit,
            Err(busy) => return Err((Failure::Busy(busy), None)),
        };
        let in_flight = InFlight::enter();
        let sent = tokio::time::Instant::now();
        let answer = tokio::time::timeout(self.timeout, self.send(url, body)).await;
        let seconds = sent.elapsed().as_secs_f64();
        drop(in_flight);
        drop(permit);
        let answer = answer.unwrap_or(Err(Failure::Timeout));
        match &answer {
            // The backend is up and answered: a 4xx is about the request (a client's input
            // it does not take), which must not open the breaker for everyone.
            Ok(_) | Err(Failure::Status(400..=499)) => {
                let was_open = breaker.is_open();
                breaker.succeeded();
                if was_open {
                    telemetry::hook_breaker(hook.label(), false);
                    tracing::info!(hook = hook.label(), "Hook circuit breaker closed");
                }
            }
            Err(_) => {
                if breaker.failed(self.now_ms()) {
                    telemetry::hook_breaker(hook.label(), true);
                }
            }
        }
        answer
            .map(|answer| (answer, seconds))
            .map_err(|failure| (failure, Some(seconds)))
    }

    async fn send(&self, url: &Uri, body: Vec<u8>) -> Result<Answer, Failure> {
        let mut request = Request::post(url.clone());
        if let Some(headers) = request.headers_mut() {
            headers.clone_from(&self.headers);
            if let Some(secret) = &self.secret {
                let value = sign::signature(secret, crate::auth::unix_now(), &body);
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(sign::HEADER, value);
                }
            }
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| Failure::Transport)?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|_| Failure::Transport)?;
        let status = response.status();
        if !status.is_success() {
            return Err(Failure::Status(status.as_u16()));
        }
        let body = Limited::new(response.into_body(), self.max_response_bytes)
            .collect()
            .await
            .map_err(|err| {
                if err.is::<http_body_util::LengthLimitError>() {
                    Failure::TooLarge
                } else {
                    Failure::Transport
                }
            })?
            .to_bytes();
        parse_answer(&body).ok_or(Failure::BadAnswer)
    }
}

/// Counts a request in `switchboard_hook_in_flight` while it lives: also when its caller is dropped
/// mid-request (a client that went away).
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        telemetry::hook_in_flight(1.0);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        telemetry::hook_in_flight(-1.0);
    }
}

#[derive(Deserialize)]
struct RawAnswer {
    result: Option<Box<RawValue>>,
    error: Option<RawError>,
    disconnect: Option<RawDisconnect>,
}

#[derive(Deserialize)]
struct RawError {
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct RawDisconnect {
    code: u16,
    #[serde(default)]
    reason: String,
}

/// The bytes a close frame's reason may have (RFC 6455 section 5.5: 125 for the payload,
/// 2 of them the code).
const MAX_REASON_BYTES: usize = 123;

/// One of the three shapes, exactly one of `result`, `error` and `disconnect`; `None`
/// otherwise (a `result` that is not an object, a `disconnect` code outside 4000-4999).
fn parse_answer(body: &[u8]) -> Option<Answer> {
    let answer: RawAnswer = serde_json::from_slice(body).ok()?;
    match (answer.result, answer.error, answer.disconnect) {
        (Some(result), None, None) => result
            .get()
            .starts_with('{')
            .then_some(Answer::Allowed(result)),
        (None, Some(error), None) => Some(Answer::Refused(
            error
                .message
                .filter(|message| !message.is_empty())
                .unwrap_or_else(|| "refused by the application".to_owned()),
        )),
        (None, None, Some(disconnect)) if (4000..=4999).contains(&disconnect.code) => {
            let mut reason = disconnect.reason;
            if reason.len() > MAX_REASON_BYTES {
                let mut at = MAX_REASON_BYTES;
                while !reason.is_char_boundary(at) {
                    at -= 1;
                }
                reason.truncate(at);
            }
            Some(Answer::Disconnect {
                code: disconnect.code,
                reason,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_have_exactly_one_of_three_shapes() {
        assert!(matches!(
            parse_answer(br#"{"result":{"user":"42"}}"#),
            Some(Answer::Allowed(result)) if result.get() == r#"{"user":"42"}"#
        ));
        assert!(matches!(
            parse_answer(br#"{"error":{"message":"not a member"}}"#),
            Some(Answer::Refused(message)) if message == "not a member"
        ));
        assert!(matches!(
            parse_answer(br#"{"error":{}}"#),
            Some(Answer::Refused(message)) if message == "refused by the application"
        ));
        assert!(matches!(
            parse_answer(br#"{"disconnect":{"code":4100,"reason":"banned"}}"#),
            Some(Answer::Disconnect { code: 4100, reason }) if reason == "banned"
        ));
        let long = format!(
            r#"{{"disconnect":{{"code":4100,"reason":"{}"}}}}"#,
            "é".repeat(100)
        );
        assert!(matches!(
            parse_answer(long.as_bytes()),
            Some(Answer::Disconnect { reason, .. }) if reason.len() == 122
        ));
        for bad in [
            &b"not json"[..],
            b"{}",
            b"[]",
            br#"{"result":"yes"}"#,
            br#"{"result":null}"#,
            br#"{"result":{},"error":{"message":"x"}}"#,
            br#"{"disconnect":{"code":1000}}"#,
            br#"{"disconnect":{"code":5000}}"#,
        ] {
            assert!(
                parse_answer(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
