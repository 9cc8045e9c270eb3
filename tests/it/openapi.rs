//! The control API's OpenAPI document (`docs/openapi.json`) against the real server, both
//! ways. schemathesis (PyPI, in the venv `tests/run.sh` makes) runs every one of its checks
//! on every operation against a node of this build's binary: no 5xx, every answer's status,
//! headers and body as documented, input outside the schemas refused, input inside it taken.
//! Then every status the document gives an operation must have been answered: by the fuzzer,
//! or by the probes here for what it cannot cause (a stalled or oversized body, a key's rate
//! limit, Redis gone, a drain started by a signal). Which routes exist is held to the router
//! by `control::openapi`'s unit tests; openapi-spec-validator holds the document to the
//! OpenAPI 3.1 specification.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{
    harness::{BinaryNode, TestClient, TestServer},
    redis_server::RedisServer,
    tls::CertDir,
};

const KEY: &str = "openapi-contract-key-0123456789";

/// The fuzzer's seed: fixed, so that a run is repeatable; `SWITCHBOARD_OPENAPI_SEED` tries
/// others.
const SEED: &str = "20261206";

/// Statuses no loopback test can cause, with the test that shows each.
const UNREACHABLE: [(u16, &str); 1] = [(
    403,
    "403 needs a caller off loopback with no key configured: \
     control::tests::only_loopback_peers_count_as_local",
)];

fn document() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// One operation of the document.
struct Operation {
    method: String,
    path: String,
    statuses: BTreeSet<u16>,
    keyed: bool,
}

/// The document's operations by `operationId`.
fn operations(doc: &Value) -> BTreeMap<String, Operation> {
    let mut operations = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let statuses = operation["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(|status| status.parse().unwrap())
                .collect();
            operations.insert(
                operation["operationId"].as_str().unwrap().to_owned(),
                Operation {
                    method: method.to_uppercase(),
                    path: path.clone(),
                    statuses,
                    keyed: operation.get("security") != Some(&json!([])),
                },
            );
        }
    }
    operations
}

/// The operation a request went to: its method, and its path against the templates.
fn operation_of<'a>(
    operations: &'a BTreeMap<String, Operation>,
    method: &str,
    path: &str,
) -> Option<&'a str> {
    operations.iter().find_map(|(id, operation)| {
        let matches = match operation.path.split_once("{channel}") {
            None => operation.path == path,
            Some((before, after)) => path.strip_prefix(before).is_some_and(|rest| {
                rest.strip_suffix(after)
                    .is_some_and(|channel| !channel.is_empty())
            }),
        };
        (matches && operation.method.eq_ignore_ascii_case(method)).then_some(id.as_str())
    })
}

/// A request each operation takes as valid (on a fresh node), as its raw target, body and
/// media type.
fn valid_request(id: &str) -> (&'static str, Option<&'static str>, &'static str) {
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
        other => panic!("no probe request for `{other}`: add one to valid_request"),
    }
}

/// An answer's status and headers (lowercase names) and body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

/// Sends `head` (a request line and headers, without the blank line) and `body` on a new
/// connection, then reads the answer. With `stall`, the body's last byte is never sent.
async fn raw(control: std::net::SocketAddr, head: &str, body: &[u8], stall: bool) -> Answer {
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
fn head(operations: &BTreeMap<String, Operation>, id: &str, length: usize) -> String {
    let (target, _, media_type) = valid_request(id);
    format!(
        "{} {target} HTTP/1.1\r\nhost: probe\r\nauthorization: Bearer {KEY}\r\n\
         content-type: {media_type}\r\ncontent-length: {length}",
        operations[id].method
    )
}

/// `id`'s valid request, with the key.
async fn send_valid(
    operations: &BTreeMap<String, Operation>,
    control: std::net::SocketAddr,
    id: &str,
) -> Answer {
    let body = valid_request(id).1.unwrap_or("");
    raw(
        control,
        &head(operations, id, body.len()),
        body.as_bytes(),
        false,
    )
    .await
}

/// `id`'s request with this body, with the key.
async fn send(
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
async fn open_stream(operations: &BTreeMap<String, Operation>, control: std::net::SocketAddr) {
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

/// What was answered, by operation; each answer checked against the document.
#[derive(Default)]
struct Seen(BTreeMap<String, BTreeSet<u16>>);

impl Seen {
    fn record(&mut self, operations: &BTreeMap<String, Operation>, id: &str, answer: &Answer) {
        assert!(
            operations[id].statuses.contains(&answer.status),
            "{id} answered {}, which docs/openapi.json does not give it: {}",
            answer.status,
            answer.body
        );
        assert!(
            answer
                .headers
                .iter()
                .any(|(name, _)| name == "x-request-id"),
            "{id}'s answer has no X-Request-Id"
        );
        self.0
            .entry(id.to_owned())
            .or_default()
            .insert(answer.status);
    }
}

/// A command of the venv `tests/run.sh` makes (schemathesis, openapi-spec-validator).
fn venv_tool(name: &str) -> PathBuf {
    let venv = std::env::var_os("SWITCHBOARD_VENV").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/switchboard-venv"),
        PathBuf::from,
    );
    let binary = venv.join("bin").join(name);
    assert!(
        binary.exists(),
        "{} not found: run tests/run.sh, which installs tests/openapi/requirements.txt in \
         the test venv (or `pip install -r tests/openapi/requirements.txt` in \
         $SWITCHBOARD_VENV)",
        binary.display()
    );
    binary
}

/// Runs schemathesis against a node of the binary; what it answered, by operation.
async fn fuzz(operations: &BTreeMap<String, Operation>, seen: &mut Seen) {
    let dir = CertDir::new("sb-openapi-fuzz");
    let config = dir.path("switchboard.toml");
    // A drain the fuzzer starts must never close the node under it: it waits an hour.
    std::fs::write(
        &config,
        format!("[control]\napi_keys = [\"{KEY}\"]\n[shutdown]\ndrain_delay = \"3600s\"\n"),
    )
    .unwrap();
    let node = BinaryNode::start(&["--config", &config], &[]).await;
    let url = format!("http://{}", node.control_addr);

    // The document served is the one in the repository, and needs no key.
    let served = reqwest::get(format!("{url}/v1/openapi.json"))
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let served: Value = served.json().await.unwrap();
    assert_eq!(
        served,
        document(),
        "GET /v1/openapi.json is docs/openapi.json"
    );

    let checkout = Path::new(env!("CARGO_MANIFEST_DIR"));
    let har = dir.path("run.har");
    let seed = std::env::var("SWITCHBOARD_OPENAPI_SEED").unwrap_or_else(|_| SEED.to_owned());
    let run = Command::new("timeout")
        .args(["--kill-after=10", "600"])
        .arg(venv_tool("schemathesis"))
        .arg("--config-file")
        .arg(checkout.join("tests/openapi/schemathesis.toml"))
        .arg("--no-color")
        .arg("run")
        .arg(checkout.join("docs/openapi.json"))
        .args(["--url", &url])
        .args(["-H", &format!("Authorization: Bearer {KEY}")])
        .args(["--checks", "all", "--max-examples", "60", "--seed", &seed])
        .args(["--generation-database", "none", "--request-timeout", "30"])
        .args(["--report", "har", "--report-har-path", &har])
        .current_dir(dir.path(""))
        .env("PYTHONPATH", checkout.join("tests/openapi"))
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .output()
        .expect("timeout runs (coreutils)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        run.status.success(),
        "schemathesis found the server and docs/openapi.json apart (seed {seed}):\n{report}"
    );

    let har: Value = serde_json::from_str(&std::fs::read_to_string(&har).unwrap()).unwrap();
    let entries = har["log"]["entries"].as_array().unwrap();
    assert!(
        entries.len() > 1000,
        "the fuzzer sent {} requests",
        entries.len()
    );
    for entry in entries {
        let url = reqwest::Url::parse(entry["request"]["url"].as_str().unwrap()).unwrap();
        let method = entry["request"]["method"].as_str().unwrap();
        let status = u16::try_from(entry["response"]["status"].as_u64().unwrap()).unwrap();
        // Undocumented methods (405) and paths are the fuzzer's own probes.
        if let Some(id) = operation_of(operations, method, url.path()) {
            seen.0.entry(id.to_owned()).or_default().insert(status);
        }
    }
    drop(node);
}

/// Stalled and oversized bodies, the documented successes the fuzzer cannot reach on its
/// own (an append needs an open stream), certificate reloads.
async fn probe_bodies_and_state(operations: &BTreeMap<String, Operation>, seen: &mut Seen) {
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
async fn probe_rate_limit(operations: &BTreeMap<String, Operation>, seen: &mut Seen) {
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
async fn probe_redis_down(operations: &BTreeMap<String, Operation>, seen: &mut Seen) {
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
async fn probe_signal_drain(operations: &BTreeMap<String, Operation>, seen: &mut Seen) {
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

#[test]
fn the_document_is_valid_openapi_3_1() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    let check = Command::new(venv_tool("openapi-spec-validator"))
        .arg(&path)
        .output()
        .expect("openapi-spec-validator runs");
    assert!(
        check.status.success(),
        "docs/openapi.json breaks the OpenAPI 3.1 specification:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_keeps_its_openapi_contract_in_both_directions() {
    let doc = document();
    let operations = operations(&doc);
    let mut seen = Seen::default();
    fuzz(&operations, &mut seen).await;
    probe_bodies_and_state(&operations, &mut seen).await;
    probe_rate_limit(&operations, &mut seen).await;
    probe_redis_down(&operations, &mut seen).await;
    probe_signal_drain(&operations, &mut seen).await;

    let mut never = Vec::new();
    for (id, operation) in &operations {
        let answered = seen.0.get(id).cloned().unwrap_or_default();
        for status in &operation.statuses {
            let exempt = operation.keyed && UNREACHABLE.iter().any(|(code, _)| code == status);
            if !answered.contains(status) && !exempt {
                never.push(format!("{} {} {status}", operation.method, operation.path));
            }
        }
    }
    assert!(
        never.is_empty(),
        "documented but never answered (remove them from docs/openapi.json, or add a probe \
         that causes them): {never:#?}"
    );
}
