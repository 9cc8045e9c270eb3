//! A small application backend for the hook tests: a real HTTP server on a free loopback
//! port that records every request and answers as the test tells it to, and counts how
//! many requests it had at once.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{
    Request, Response,
    server::conn::{http1, http2},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;

/// How the backend answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with this JSON.
    Json(Value),
    /// This JSON after this long.
    Slow(Duration, Value),
    /// This status, empty body.
    Status(u16),
    /// 200 with these bytes.
    Raw(Vec<u8>),
}

/// One request as the backend got it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: hyper::HeaderMap,
    pub raw: Bytes,
    pub body: Value,
}

type Answer = Box<dyn Fn(&str, &Value) -> Reply + Send + Sync>;

pub struct Backend {
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    answer: Arc<Mutex<Answer>>,
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// Starts answering every request with `answer(path, body)`.
    pub async fn start(answer: impl Fn(&str, &Value) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_on(0, answer).await
    }

    /// As [`Backend::start`], on `port` (0: a free one): a backend that comes back where it
    /// was.
    pub async fn start_on(
        port: u16,
        answer: impl Fn(&str, &Value) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self::serve(port, false, answer).await
    }

    /// As [`Backend::start`], speaking HTTP/2 without TLS (h2c, prior knowledge) only.
    pub async fn start_h2c(answer: impl Fn(&str, &Value) -> Reply + Send + Sync + 'static) -> Self {
        Self::serve(0, true, answer).await
    }

    async fn serve(
        port: u16,
        h2c: bool,
        answer: impl Fn(&str, &Value) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answer: Arc<Mutex<Answer>> = Arc::new(Mutex::new(Box::new(answer)));
        let now = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (s, a, n, m) = (seen.clone(), answer.clone(), now.clone(), most.clone());
        let task = tokio::spawn(async move {
            // Its connections go when it goes (aborted, dropped): a backend that is down.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (s, a, n, m) = (s.clone(), a.clone(), n.clone(), m.clone());
                connections.spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let (s, a, n, m) = (s.clone(), a.clone(), n.clone(), m.clone());
                        async move {
                            let at_once = n.fetch_add(1, Ordering::SeqCst) + 1;
                            m.fetch_max(at_once, Ordering::SeqCst);
                            let path = request.uri().path().to_owned();
                            let headers = request.headers().clone();
                            let raw = request.into_body().collect().await.unwrap().to_bytes();
                            let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
                            let reply = (a.lock().unwrap())(&path, &body);
                            s.lock().unwrap().push(Seen {
                                path,
                                headers,
                                raw,
                                body,
                            });
                            let response = match reply {
                                Reply::Json(value) => ok(value.to_string().into_bytes()),
                                Reply::Slow(wait, value) => {
                                    tokio::time::sleep(wait).await;
                                    ok(value.to_string().into_bytes())
                                }
                                Reply::Status(status) => Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                                Reply::Raw(bytes) => ok(bytes),
                            };
                            n.fetch_sub(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(response)
                        }
                    });
                    if h2c {
                        let _ = http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    } else {
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                });
            }
        });
        Self {
            port,
            seen,
            answer,
            now,
            most,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Answers from now on with `answer`.
    pub fn answer(&self, answer: impl Fn(&str, &Value) -> Reply + Send + Sync + 'static) {
        *self.answer.lock().unwrap() = Box::new(answer);
    }

    /// The requests so far to `path`.
    pub fn seen(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|seen| seen.path == path)
            .cloned()
            .collect()
    }

    /// The most requests it had in flight at once.
    pub fn most_at_once(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn ok(body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// Checks `seen`'s `Switchboard-Signature` against its raw body with `secret`, as a
/// receiver must (`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, a fresh `t`).
pub fn assert_signed(seen: &Seen, secret: &str) {
    use hmac::{Hmac, KeyInit as _, Mac as _};
    let header = seen.headers["switchboard-signature"].to_str().unwrap();
    let (t, v1) = header
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
        .expect("t=..,v1=..");
    let now = switchboard::auth::unix_now();
    assert!(now.abs_diff(t.parse().unwrap()) < 60, "a fresh timestamp");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&seen.raw);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    assert_eq!(v1, expected, "the signature verifies");
}
