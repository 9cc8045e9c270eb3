//! The probes of the contract test: requests that cause the documented statuses a fuzzer
//! cannot (stalled and oversized bodies, a key's rate limit, Redis killed, a drain started by
//! a signal, certificate reloads), each answer checked against the document.

use std::{collections::BTreeMap, time::Duration};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{KEY, Operation, Seen};
use crate::{
    harness::{TestClient, TestServer},
    redis_server::RedisServer,
    tls::CertDir,
};

/// A request each operation takes as valid (on a fresh node), as its raw target, body and
/// media type.
pub(super) fn valid_request(id: &str) -> (&'static str, Option<&'static str>, &'static str) {
    const JSON: &str = "application/json";
    match id {
        "healthz" => ("/healthz", None, JSON),
        "readyz" => ("/readyz", None, JSON),
        "metrics" => ("/metrics", None, JSON),
        "openapi" => ("/v1/openapi.json", None, JSON),
        "publish" => ("/v1/publish", Some(r#"{"channel":"probe","data":1}"#), JSON),
        "broadcast" => (
            "/v1/broadcast",
            Some(r#"{"channels":["probe","probe:2"],"data":1}"#),
            JSON,
        ),
        "batch" => (
            "/v1/batch",
            Some(r#"{"commands":[{"publish":{"channel":"probe","data":1}}]}"#),
            JSON,
        ),
        "append" => (
            "/v1/append",
            Some(r#"{"channel":"probe","message_id":"s-1","text":"x"}"#),
            JSON,
        ),
        "finish" => (
            "/v1/finish",
            Some(r#"{"channel":"probe","message_id":"s-1"}"#),
            JSON,
        ),
        "update" => (
            "/v1/update",
            Some(r#"{"channel":"probe","message_id":"s-1","data":2}"#),
            JSON,
        ),
        "delete" => (
            "/v1/delete",
            Some(r#"{"channel":"probe","message_id":"s-1"}"#),
            JSON,
        ),
        "ingest" => (
            "/v1/streams?channel=probe&message_id=i-1",
            Some("{\"text\":\"x\"}\n"),
            "application/x-ndjson",
        ),
        "history" => ("/v1/channels/probe/history", None, JSON),
        "presence" => ("/v1/channels/probe/presence", None, JSON),
        "presenceStats" => ("/v1/channels/probe/presence-stats", None, JSON),
        "channels" => ("/v1/channels", None, JSON),
        "subscribe" => (
            "/v1/subscribe",
            Some(r#"{"user":"u-1","channel":"probe"}"#),
            JSON,
        ),
        "unsubscribe" => (
            "/v1/unsubscribe",
            Some(r#"{"user":"u-1","channel":"probe"}"#),
            JSON,
        ),
        "stats" => ("/v1/stats?scope=cluster", None, JSON),
        "nodes" => ("/v1/nodes", None, JSON),
        "disconnect" => ("/v1/disconnect", Some(r#"{"user":"u-1"}"#), JSON),
        "drainStatus" | "cancelDrain" => ("/v1/drain", None, JSON),
        "drain" => ("/v1/drain", Some(r#"{"window_ms":1000}"#), JSON),
        "reloadTls" => ("/v1/reload-tls", None, JSON),
        "block" | "unblock" => ("/v1/block", Some(r#"{"user":"u-1"}"#), JSON),
        "blocks" => ("/v1/blocks", None, JSON),
        "revoke" => ("/v1/revoke", Some(r#"{"jti":"t-1"}"#), JSON),
        other => panic!("no probe request for `{other}`: add one to valid_request"),
    }
}

/// An answer's status and headers (lowercase names) and body.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: String,
}

/// Sends `head` (a request line and headers, without the blank line) and `body` on a new
/// connection, then reads the answer. With `stall`, the body's last byte is never sent.
pub(super) async fn raw(
    control: std::net::SocketAddr,
    head: &str,
    body: &[u8],
    stall: bool,
) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(control).await.unwrap();
    stream
        .write_all(format!("{head}\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let sent = if stall { &body[..body.len() - 1] } else { body };
    // The node may answer (413) and close before all of an oversized body is sent.
    let _ = stream.write_all(sent).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer within 30 s to {head}");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// The head of `id`'s request, with the key, for a body of `length` bytes.
pub(super) fn head(operations: &BTreeMap<String, Operation>, id: &str, length: usize) -> String {
    let (target, _, media_type) = valid_request(id);
    format!(
        "{} {target} HTTP/1.1\r\nhost: probe\r\nauthorization: Bearer {KEY}\r\n\
         content-type: {media_type}\r\ncontent-length: {length}",
        operations[id].method
    )
}

/// `id`'s valid request, with the key.
pub(super) async fn send_valid(
    operations: &BTreeMap<String, Operation>,
    control: std::net::SocketAddr,
    id: &str,
) -> Answer {
    send(operations, control, id, valid_request(id).1.unwrap_or("")).await
}

/// `id`'s request with this body, with the key.
pub(super) async fn send(
    operations: &BTreeMap<String, Operation>,
    control: std::net::SocketAddr,
    id: &str,
    body: &str,
) -> Answer {
    raw(
        control,
        &head(operations, id, body.len()),
        body.as_bytes(),
        false,
    )
    .await
}

/// Opens the stream `s-1` of `probe` that the probes of `append`, `finish`, `update` and
/// `delete` change.
pub(super) async fn open_stream(
    operations: &BTreeMap<String, Operation>,
    control: std::net::SocketAddr,
) {
    let body = r#"{"channel":"probe","message_id":"s-1","stream":true,"data":null}"#;
    let opened = raw(
        control,
        &head(operations, "publish", body.len()),
        body.as_bytes(),
        false,
    )
    .await;
    assert_eq!(opened.status, 200, "{}", opened.body);
}

/// Stalled and oversized bodies, the documented successes the fuzzer cannot reach on its
/// own (an append needs an open stream), certificate reloads.
pub(super) async fn probe_bodies_and_state(
    operations: &BTreeMap<String, Operation>,
    seen: &mut Seen,
) {
    let certs = CertDir::new("sb-openapi-tls");
    certs.certificate();
    let server = TestServer::builder()
        .configure(|c| {
            c.control.api_keys = vec![KEY.to_owned()];
            c.control.body_timeout = Duration::from_secs(1);
            c.control.max_body_bytes = 1024;
            c.streams.idle_timeout = Duration::from_secs(1);
            certs.serve_wss(c);
        })
        .start()
        .await;
    let control = server.control_addr;
    for (id, operation) in operations {
        if operation.statuses.contains(&408) {
            let answer = if id == "ingest" {
                // An ingest that goes quiet: nothing for `streams.idle_timeout`.
                let (target, _, media_type) = valid_request(id);
                let head = format!(
                    "POST {target} HTTP/1.1\r\nhost: probe\r\nauthorization: Bearer {KEY}\r\n\
                     content-type: {media_type}\r\ntransfer-encoding: chunked"
                );
                raw(control, &head, b"d\r\n{\"text\":\"x\"}\n\r\n", false).await
            } else {
                let body = valid_request(id).1.unwrap_or("{}").as_bytes();
                raw(control, &head(operations, id, body.len()), body, true).await
            };
            seen.record(operations, id, &answer);
        }
        if operation.statuses.contains(&413) {
            // Over `control.max_body_bytes` (an ingest: one line over the payload limit).
            let big = if id == "ingest" {
                format!("{{\"text\":\"{}\"}}\n", "x".repeat(40 * 1024))
            } else {
                format!("{{\"pad\":\"{}\"}}", "x".repeat(2000))
            };
            let answer = raw(
                control,
                &head(operations, id, big.len()),
                big.as_bytes(),
                false,
            )
            .await;
            seen.record(operations, id, &answer);
        }
    }
    seen.record(
        operations,
        "readyz",
        &send_valid(operations, control, "readyz").await,
    );
    // A stream to append to and finish.
    open_stream(operations, control).await;
    for id in ["append", "finish"] {
        seen.record(operations, id, &send_valid(operations, control, id).await);
    }
    // Changes the state refuses: a message published whole has no text and is not open.
    send(
        operations,
        control,
        "publish",
        r#"{"channel":"probe","message_id":"w-1","data":1}"#,
    )
    .await;
    for (id, body) in [
        (
            "append",
            r#"{"channel":"probe","message_id":"w-1","text":"x"}"#,
        ),
        ("finish", r#"{"channel":"probe","message_id":"w-1"}"#),
        (
            "update",
            r#"{"channel":"probe","message_id":"w-1","text":"x"}"#,
        ),
    ] {
        let answer = send(operations, control, id, body).await;
        assert_eq!(answer.status, 409, "{id}: {}", answer.body);
        seen.record(operations, id, &answer);
    }
    for id in ["append", "finish", "update", "delete"] {
        let body = valid_request(id)
            .1
            .unwrap()
            .replace("s-1", "never-published");
        let answer = send(operations, control, id, &body).await;
        assert_eq!(answer.status, 404, "{id}: {}", answer.body);
        seen.record(operations, id, &answer);
    }
    let head = format!(
        "POST /v1/streams?channel=probe&message_id=w-1 HTTP/1.1\r\nhost: probe\r\n\
         authorization: Bearer {KEY}\r\ncontent-type: text/plain\r\ncontent-length: 1"
    );
    seen.record(
        operations,
        "ingest",
        &raw(control, &head, b"x", false).await,
    );
    // A chunked body whose chunk is longer than it says: it broke off.
    let head = format!(
        "POST /v1/streams?channel=probe&message_id=i-2 HTTP/1.1\r\nhost: probe\r\n\
         authorization: Bearer {KEY}\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked"
    );
    seen.record(
        operations,
        "ingest",
        &raw(control, &head, b"1\r\nxy\r\n", false).await,
    );
    let answer = send(
        operations,
        control,
        "disconnect",
        r#"{"conn_id":987654321}"#,
    )
    .await;
    seen.record(operations, "disconnect", &answer);
    // A block, lifted, then lifted again.
    for id in ["block", "unblock", "unblock"] {
        seen.record(operations, id, &send_valid(operations, control, id).await);
    }
    // A drain through the API: started, refused a second time, cancelled, then gone.
    for id in ["cancelDrain", "drain", "drain", "cancelDrain"] {
        seen.record(operations, id, &send_valid(operations, control, id).await);
    }
    seen.record(
        operations,
        "reloadTls",
        &send_valid(operations, control, "reloadTls").await,
    );
    std::fs::write(certs.path("cert.pem"), "not a certificate").unwrap();
    seen.record(
        operations,
        "reloadTls",
        &send_valid(operations, control, "reloadTls").await,
    );
    server.stop().await;
}

/// Every keyed operation over the key's rate.
pub(super) async fn probe_rate_limit(operations: &BTreeMap<String, Operation>, seen: &mut Seen) {
    let server = TestServer::builder()
        .configure(|c| {
            c.control.api_keys = vec![KEY.to_owned()];
            c.control.requests_per_second_per_key = 1;
            c.control.request_burst_per_key = 1;
        })
        .start()
        .await;
    for (id, operation) in operations
        .iter()
        .filter(|(_, op)| op.statuses.contains(&429))
    {
        assert!(operation.keyed, "{id}: only keyed routes are rate limited");
        // A token that came back since the last request is taken by this one first.
        let mut answer = send_valid(operations, server.control_addr, id).await;
        for _ in 0..3 {
            if answer.status == 429 {
                break;
            }
            answer = send_valid(operations, server.control_addr, id).await;
        }
        assert!(
            answer.headers.iter().any(|(name, _)| name == "retry-after"),
            "{id}'s 429 has no Retry-After"
        );
        seen.record(operations, id, &answer);
    }
    server.stop().await;
}

/// Every operation that needs the broker, with Redis gone.
pub(super) async fn probe_redis_down(operations: &BTreeMap<String, Operation>, seen: &mut Seen) {
    let mut redis = RedisServer::start(false);
    let server = TestServer::builder()
        .redis(&redis.url())
        .configure(|c| c.control.api_keys = vec![KEY.to_owned()])
        .start()
        .await;
    // A stream to change, while Redis is there.
    open_stream(operations, server.control_addr).await;
    redis.stop();
    for (id, _) in operations
        .iter()
        .filter(|(_, op)| op.statuses.contains(&503))
    {
        if id == "readyz" {
            continue;
        }
        let answer = send_valid(operations, server.control_addr, id).await;
        assert_eq!(answer.status, 503, "{id} with Redis gone: {}", answer.body);
        seen.record(operations, id, &answer);
    }
    server.stop().await;
}

/// A drain started by a signal: readiness fails, and the API cannot cancel it.
pub(super) async fn probe_signal_drain(operations: &BTreeMap<String, Operation>, seen: &mut Seen) {
    let server = TestServer::builder()
        .configure(|c| c.control.api_keys = vec![KEY.to_owned()])
        .start()
        .await;
    seen.record(
        operations,
        "reloadTls",
        &send_valid(operations, server.control_addr, "reloadTls").await,
    );
    // A connection keeps the drain from ending before the probes.
    let _client = TestClient::connect(&server.ws_url()).await;
    server
        .drainer()
        .start(
            switchboard::drain::Origin::Signal,
            switchboard::drain::DrainRequest::default(),
        )
        .unwrap();
    for id in ["readyz", "cancelDrain"] {
        seen.record(
            operations,
            id,
            &send_valid(operations, server.control_addr, id).await,
        );
    }
    server.stop().await;
}
