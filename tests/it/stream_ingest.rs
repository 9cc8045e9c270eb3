//! Streaming ingest (`POST /v1/streams`) over a real chunked HTTP request, streams the
//! server abandons, the streams' limits with a bystander, and the namespaces' `edit` rule.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::{
    harness::{SteadyPublisher, TestServer, expect_all_acknowledged, patience},
    stream_model::{Model, post_ok},
};

/// A chunked request to the control API, sent a piece at a time, as a backend relaying an
/// LLM sends it.
pub(crate) struct Chunked(TcpStream);

impl Chunked {
    pub(crate) async fn open(
        server: &TestServer,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Chunked {
        let url = server.control_url("/");
        let addr = url.trim_start_matches("http://").trim_end_matches('/');
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut head = format!(
            "POST /v1/streams?{query} HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n"
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        Chunked(stream)
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) {
        assert!(self.try_send(bytes).await, "the server took the chunk");
    }

    /// Sends a chunk; false when the server closed the connection (it answered already).
    async fn try_send(&mut self, bytes: &[u8]) -> bool {
        let mut chunk = format!("{:x}\r\n", bytes.len()).into_bytes();
        chunk.extend_from_slice(bytes);
        chunk.extend_from_slice(b"\r\n");
        self.0.write_all(&chunk).await.is_ok()
    }

    /// Ends the body; the answer's status and JSON.
    async fn finish(mut self) -> (u16, Value) {
        self.0.write_all(b"0\r\n\r\n").await.unwrap();
        self.answer().await
    }

    async fn answer(&mut self) -> (u16, Value) {
        let mut answer = Vec::new();
        let mut buffer = [0; 4096];
        let read = async {
            loop {
                let n = self.0.read(&mut buffer).await.unwrap_or(0);
                answer.extend_from_slice(&buffer[..n]);
                let text = String::from_utf8_lossy(&answer);
                if n == 0 || text.contains("\r\n\r\n") && text.trim_end().ends_with('}') {
                    return;
                }
            }
        };
        tokio::time::timeout(patience(Duration::from_secs(10)), read)
            .await
            .expect("an answer");
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text[9..12].parse().unwrap();
        let body = text.split_once("\r\n\r\n").unwrap().1;
        let json = body.find('{').map_or(Value::Null, |start| {
            serde_json::from_str(body[start..].trim_end()).unwrap_or(Value::Null)
        });
        (status, json)
    }
}

/// A reply relayed as NDJSON reaches a viewer while it is generated (before the body
/// ends), and whole when it ends; raw text chunks work the same, a character split across
/// two chunks included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_relays_a_reply_as_it_is_generated() {
    let server = TestServer::start().await;
    let mut viewer = server.client().await;
    viewer.subscribe("chat:i").await;
    let mut ingest = Chunked::open(
        &server,
        "channel=chat:i&message_id=reply-1",
        &[("Content-Type", "application/x-ndjson")],
    )
    .await;
    ingest.send(b"{\"data\":{\"role\":\"assistant\"}}\n").await;
    let opened = viewer.recv().await;
    assert_eq!(
        (opened["stream"].clone(), opened["data"].clone()),
        (json!("open"), json!({"role":"assistant"}))
    );
    let mut model = Model::default();
    model.apply(&opened);
    let mut expected = String::new();
    for n in 0..20 {
        let token = format!("tok {n}, \"quoted\" ");
        expected.push_str(&token);
        ingest
            .send(format!("{}\n", json!({"text": token})).as_bytes())
            .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Live: text arrives before the body ends.
    let live = viewer.recv_type("append").await;
    model.apply(&live);
    ingest
        .send(b"{\"data\":{\"role\":\"assistant\",\"tokens\":20}}\n")
        .await;
    let (status, answer) = ingest.finish().await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["appends"], 20);
    loop {
        let frame = viewer.recv().await;
        model.apply(&frame);
        if frame["type"] == "finish" {
            assert_eq!(frame["offset"], answer["offset"]);
            break;
        }
    }
    assert_eq!(
        model.messages["reply-1"],
        (
            "finished".into(),
            Some(expected),
            json!({"role":"assistant","tokens":20})
        )
    );

    // Raw text, metadata in a header, "é" split over two chunks.
    let mut ingest = Chunked::open(
        &server,
        "channel=chat:i&message_id=reply-2",
        &[
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Switchboard-Data", "{\"role\":\"bot\"}"),
        ],
    )
    .await;
    ingest.send(b"caf\xc3").await;
    ingest.send(b"\xa9 au lait").await;
    let (status, _) = ingest.finish().await;
    assert_eq!(status, 200);
    let (_, history) = server.get_json("/v1/channels/chat:i/history").await;
    assert_eq!(history["messages"][1]["text"], "café au lait");
    assert_eq!(history["messages"][1]["data"], json!({"role":"bot"}));
    assert_eq!(history["messages"][1]["status"], "finished");
    server.stop().await;
}

/// A body that breaks off (the backend crashed, its connection dropped) abandons the
/// stream at once, keeping its text; a body that stalls past `streams.idle_timeout` is
/// answered 408 and abandoned; a stream a backend opened and forgot is abandoned by the
/// sweep. A retry with the same id is refused with `conflict` (change it with update).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_break_off_stall_or_are_forgotten_are_abandoned() {
    let server = TestServer::builder()
        .configure(|c| c.streams.idle_timeout = Duration::from_secs(1))
        .start()
        .await;
    let mut viewer = server.client().await;
    viewer.subscribe("chat:a").await;
    let mut ingest = Chunked::open(&server, "channel=chat:a&message_id=broken", &[]).await;
    ingest.send(b"{\"text\":\"half a rep\"}\n").await;
    viewer.recv_type("append").await;
    drop(ingest);
    let abandon = viewer.recv_type("abandon").await;
    assert_eq!(
        (abandon["message_id"].clone(), abandon["reason"].clone()),
        (json!("broken"), json!("ingest"))
    );
    let (status, refused) = server
        .post(
            "/v1/streams?channel=chat:a&message_id=broken",
            json!({"text":"x"}),
        )
        .await;
    assert_eq!(
        (status, refused["error"]["code"].clone()),
        (409, json!("conflict")),
        "{refused}"
    );

    // A backend that goes on sending after the refusal still reads it (not a reset).
    let mut again = Chunked::open(&server, "channel=chat:a&message_id=broken", &[]).await;
    let line = format!("{}\n", json!({"text": "x".repeat(30_000)}));
    let mut sent = true;
    for _ in 0..16 {
        sent &= again.try_send(line.as_bytes()).await;
    }
    assert!(
        sent,
        "the refused ingest's body is read (up to 1 MiB), not reset"
    );
    let (status, answer) = again.finish().await;
    assert_eq!(status, 409, "{answer}");
    let mut stalled = Chunked::open(&server, "channel=chat:a&message_id=stalled", &[]).await;
    stalled.send(b"{\"text\":\"thinking\"}\n").await;
    let (status, answer) = stalled.answer().await;
    assert_eq!(status, 408, "{answer}");
    assert_eq!(answer["error"]["code"], "request_timeout", "{answer}");
    let abandon = viewer.recv_type("abandon").await;
    assert_eq!(abandon["message_id"], "stalled");

    post_ok(
        &server,
        "/v1/publish",
        json!({"channel":"chat:a","message_id":"forgotten","stream":true,"data":null}),
    )
    .await;
    post_ok(
        &server,
        "/v1/append",
        json!({"channel":"chat:a","message_id":"forgotten","text":"so far"}),
    )
    .await;
    // The sweep runs every 5 s: abandoned within the timeout plus one sweep.
    let abandon = viewer.recv_within(patience(Duration::from_secs(10))).await;
    let abandon = if abandon["type"] == "abandon" {
        abandon
    } else {
        viewer.recv_type("abandon").await
    };
    assert_eq!(
        (abandon["message_id"].clone(), abandon["reason"].clone()),
        (json!("forgotten"), json!("idle"))
    );
    let (_, history) = server.get_json("/v1/channels/chat:a/history").await;
    let statuses: Vec<_> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["message_id"].clone(),
                entry["status"].clone(),
                entry["text"].clone(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            (json!("broken"), json!("abandoned"), json!("half a rep")),
            (json!("stalled"), json!("abandoned"), json!("thinking")),
            (json!("forgotten"), json!("abandoned"), json!("so far")),
        ]
    );
    server.stop().await;
}

/// Past `streams.max_text_bytes` an append or an update is refused whole (413), past
/// `max_open_per_channel` a new stream (422), a bad id or a stream without one (422);
/// nothing is half-applied, and a bystander on another channel keeps its full rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bounds_refuse_cleanly_and_a_bystander_keeps_its_rate() {
    let server = TestServer::builder()
        .configure(|c| {
            c.streams.max_text_bytes = 1000;
            c.streams.max_open_per_channel = 2;
        })
        .start()
        .await;
    let mut bystander = server.client().await;
    bystander.subscribe("news").await;
    let steady = SteadyPublisher::start(&server, "news");
    let open = |id: &str| json!({"channel":"chat:b","message_id": id,"stream":true,"data":null});
    post_ok(&server, "/v1/publish", open("s1")).await;
    post_ok(&server, "/v1/publish", open("s2")).await;
    let (status, refused) = server.post("/v1/publish", open("s3")).await;
    assert_eq!(
        (status, refused["error"]["code"].clone()),
        (422, json!("limit_exceeded")),
        "{refused}"
    );
    let big = "x".repeat(600);
    post_ok(
        &server,
        "/v1/append",
        json!({"channel":"chat:b","message_id":"s1","text": big}),
    )
    .await;
    for _ in 0..50 {
        let (status, refused) = server
            .post(
                "/v1/append",
                json!({"channel":"chat:b","message_id":"s1","text": big}),
            )
            .await;
        assert_eq!(
            (status, refused["error"]["code"].clone()),
            (413, json!("limit_exceeded"))
        );
        let (status, _) = server
            .post(
                "/v1/update",
                json!({"channel":"chat:b","message_id":"s2","text": "y".repeat(1001)}),
            )
            .await;
        assert_eq!(status, 413);
    }
    for bad in [json!(""), json!("has space"), json!("x".repeat(129))] {
        let (status, refused) = server
            .post(
                "/v1/publish",
                json!({"channel":"chat:b","message_id": bad,"data":1}),
            )
            .await;
        assert_eq!(
            (status, refused["error"]["code"].clone()),
            (422, json!("bad_request")),
            "{bad}"
        );
    }
    let (status, _) = server
        .post(
            "/v1/publish",
            json!({"channel":"chat:b","stream":true,"data":1}),
        )
        .await;
    assert_eq!(status, 422, "a stream needs a message_id");
    // A finished stream frees its place.
    post_ok(
        &server,
        "/v1/finish",
        json!({"channel":"chat:b","message_id":"s2"}),
    )
    .await;
    post_ok(&server, "/v1/publish", open("s3")).await;
    // An ingest of blank lines adds no text, but its body is bounded all the same: 8 times
    // max_text_bytes, 4 payloads and 64 KiB (204,608 bytes here).
    post_ok(
        &server,
        "/v1/finish",
        json!({"channel":"chat:b","message_id":"s3"}),
    )
    .await;
    let mut blank = Chunked::open(
        &server,
        "channel=chat:b&message_id=blank",
        &[("Switchboard-Data", "{}")],
    )
    .await;
    let lines = vec![b'\n'; 16 << 10];
    for _ in 0..16 {
        if !blank.try_send(&lines).await {
            break;
        }
    }
    let (status, answer) = blank.answer().await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (413, json!("limit_exceeded")),
        "{answer}"
    );
    let (_, history) = server.get_json("/v1/channels/chat:b/history").await;
    assert_eq!(history["messages"][0]["text"], big, "nothing half-applied");
    assert_eq!(history["messages"][1]["text"], "");
    assert_eq!(history["messages"][3]["message_id"], "blank", "{history}");
    assert_eq!(history["messages"][3]["status"], "abandoned", "{history}");
    let (acked, refused, slowest) = steady.finish().await;
    assert_eq!(refused, 0);
    assert!(
        slowest < patience(Duration::from_millis(500)),
        "{slowest:?}"
    );
    expect_all_acknowledged(&mut bystander, &acked).await;
    assert!(
        server
            .metric("switchboard_stream_operations_refused_total{code=\"limit_exceeded\"}")
            .await
            >= 101.0
    );
    server.stop().await;
}

/// Clients publish and change messages under the namespace's `publish` rule and its `edit`
/// rule: `own` lets only the creator change a message (an anonymous client's connection),
/// `any` everyone who may publish, `none` nobody; backends change any message.
#[tokio::test]
async fn clients_change_only_what_the_edit_rule_lets_them() {
    use switchboard::config::{EditRule, NamespaceConfig, Rule};
    let server = TestServer::builder()
        .configure(|c| {
            let namespace = |pattern: &str, publish, edit| NamespaceConfig {
                pattern: pattern.to_owned(),
                subscribe: Rule::Anonymous,
                publish,
                history: Rule::Anonymous,
                presence: Rule::None,
                join_leave: false,
                edit,
                history_size: None,
                history_ttl: None,
                slow_consumer: switchboard::config::SlowConsumer::Disconnect,
                conflate_key: None,
                queue_bytes: None,
            };
            c.namespaces = vec![
                namespace("own:*", Rule::Anonymous, EditRule::Own),
                namespace("any:*", Rule::Anonymous, EditRule::Any),
                namespace("none:*", Rule::Anonymous, EditRule::None),
                namespace("ro:*", Rule::None, EditRule::Any),
            ];
        })
        .start()
        .await;
    let mut alice = server.client().await;
    let mut bob = server.client().await;
    async fn ask(client: &mut crate::harness::TestClient, frame: Value) -> Value {
        client.send(frame).await;
        let reply = client.recv().await;
        assert!(
            reply["type"] == "published" || reply["type"] == "error",
            "{reply}"
        );
        reply
    }
    let code = |reply: &Value| reply["code"].as_str().map(str::to_owned);
    for channel in ["own:1", "any:1", "none:1"] {
        let reply = ask(&mut alice, json!({"type":"publish","id":1,"channel":channel,"message_id":"m","stream":true,"data":{}})).await;
        assert_eq!(reply["type"], "published", "{channel}: {reply}");
    }
    let append = |channel: &str| json!({"type":"append","id":2,"channel":channel,"message_id":"m","text":"t"});
    assert_eq!(
        code(&ask(&mut bob, append("own:1")).await).as_deref(),
        Some("forbidden")
    );
    assert_eq!(code(&ask(&mut alice, append("own:1")).await), None);
    assert_eq!(code(&ask(&mut bob, append("any:1")).await), None);
    assert_eq!(
        code(&ask(&mut alice, append("none:1")).await).as_deref(),
        Some("forbidden")
    );
    let delete = json!({"type":"delete","id":3,"channel":"own:1","message_id":"m"});
    assert_eq!(
        code(&ask(&mut bob, delete.clone()).await).as_deref(),
        Some("forbidden")
    );
    let publish = json!({"type":"publish","id":4,"channel":"ro:1","message_id":"m","data":1});
    assert_eq!(
        code(&ask(&mut alice, publish).await).as_deref(),
        Some("forbidden")
    );
    // A stream needs an id, from a client as from a backend; the connection goes on.
    let nameless = json!({"type":"publish","id":5,"channel":"any:1","stream":true,"data":{}});
    let reply = ask(&mut alice, nameless).await;
    assert_eq!(code(&reply).as_deref(), Some("bad_request"), "{reply}");
    assert_eq!(reply["message"], "a stream needs a `message_id`");
    // Backends may change any message.
    post_ok(
        &server,
        "/v1/append",
        json!({"channel":"none:1","message_id":"m","text":"backend"}),
    )
    .await;
    assert_eq!(code(&ask(&mut alice, delete).await), None);
    assert!(
        server
            .metric("switchboard_forbidden_total{action=\"edit\"}")
            .await
            >= 3.0
    );
    server.stop().await;
}
