//! permessage-deflate (RFC 7692) on real sockets: what is negotiated, a message compressed
//! once for every subscriber that negotiated it, small messages and other clients left
//! plain, compressed client messages inflated within `limits.max_inbound_message_bytes`,
//! and hostile compressed input refused (with a bystander that keeps its full rate).

use std::time::Duration;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::{
    harness::{TestServer, patience},
    raw::{self, with_bystander},
};

/// What Chromium offers.
const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// A raw client that offers permessage-deflate and reads frames as they come.
struct DeflateClient {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The 101's `Sec-WebSocket-Extensions`, if any.
    extensions: Option<String>,
}

/// One server frame: its first byte and payload.
struct Frame {
    first: u8,
    payload: Vec<u8>,
}

impl Frame {
    fn compressed(&self) -> bool {
        self.first & 0x40 != 0
    }

    /// The message's JSON, inflated when it was compressed.
    fn json(&self) -> Value {
        let bytes = if self.compressed() {
            inflate(&self.payload)
        } else {
            self.payload.clone()
        };
        serde_json::from_slice(&bytes).unwrap()
    }
}

fn inflate(body: &[u8]) -> Vec<u8> {
    let mut inflater = Decompress::new(false);
    let mut input = body.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(body.len() * 20 + 1024);
    inflater
        .decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    out
}

/// `data` compressed as a client sends it (section 7.2.1: the trailer removed).
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut compressor = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 1024);
    compressor
        .compress_vec(data, &mut out, FlushCompress::Sync)
        .unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

impl DeflateClient {
    async fn connect(server: &TestServer, offer: Option<&str>) -> Self {
        let addr = server
            .ws_url()
            .trim_start_matches("ws://")
            .trim_end_matches("/ws")
            .parse()
            .unwrap();
        let mut stream = TcpStream::connect::<std::net::SocketAddr>(addr)
            .await
            .unwrap();
        let extension = offer.map_or_else(String::new, |offer| {
            format!("Sec-WebSocket-Extensions: {offer}\r\n")
        });
        let request = raw::UPGRADE.replace("\r\n\r\n", &format!("\r\n{extension}\r\n"));
        let (status, head) = raw::http(&mut stream, &request).await;
        assert_eq!(status, 101, "{head}");
        let extensions = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_owned())
        });
        Self {
            stream,
            buf: Vec::new(),
            extensions,
        }
    }

    async fn send_json(&mut self, value: &Value) {
        let wire = raw::frame(0x81, value.to_string().as_bytes());
        self.stream.write_all(&wire).await.unwrap();
    }

    /// Sends `data` as one compressed text message.
    async fn send_compressed(&mut self, data: &[u8]) {
        let wire = raw::frame(0x81 | 0x40, &deflate(data));
        self.stream.write_all(&wire).await.unwrap();
    }

    /// The next frame.
    async fn frame(&mut self) -> Frame {
        let deadline = tokio::time::Instant::now() + patience(Duration::from_secs(5));
        loop {
            if self.buf.len() >= 2 {
                let (header, len) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => (
                        4,
                        usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                    ),
                    127 if self.buf.len() >= 10 => (
                        10,
                        usize::try_from(u64::from_be_bytes(self.buf[2..10].try_into().unwrap()))
                            .unwrap(),
                    ),
                    126 | 127 => (usize::MAX, 0),
                    len => (2, usize::from(len)),
                };
                if header != usize::MAX && self.buf.len() >= header + len {
                    let frame = Frame {
                        first: self.buf[0],
                        payload: self.buf[header..header + len].to_vec(),
                    };
                    self.buf.drain(..header + len);
                    return frame;
                }
            }
            let mut chunk = [0_u8; 16 * 1024];
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .expect("a frame in time")
                .unwrap();
            assert!(read > 0, "the server closed the connection");
            self.buf.extend_from_slice(&chunk[..read]);
        }
    }

    /// The next frame whose JSON has `type` `kind`.
    async fn frame_of(&mut self, kind: &str) -> (Frame, Value) {
        loop {
            let frame = self.frame().await;
            if frame.first & 0x0f != 0x1 {
                continue;
            }
            let json = frame.json();
            if json["type"] == kind {
                return (frame, json);
            }
        }
    }

    async fn subscribe(&mut self, channel: &str) {
        self.send_json(&json!({"type": "subscribe", "channel": channel, "id": 1}))
            .await;
        self.frame_of("subscribed").await;
    }
}

/// A message of about `len` bytes of JSON data that compresses as chat does.
fn chat_data(len: usize) -> Value {
    let words = [
        "the",
        "assistant",
        "streams",
        "a",
        "reply",
        "to",
        "every",
        "device",
    ];
    let text: Vec<&str> = (0..len / 6)
        .map(|i| words[(i * 5 + i / 3) % words.len()])
        .collect();
    json!({"user": "alice", "text": text.join(" ")})
}

/// Chromium's offer is accepted with both `no_context_takeover` parameters; a message of
/// 2 KiB reaches two deflate subscribers as the same compressed frame (compressed once:
/// `switchboard_deflate_messages_total` counts one), and a subscriber that offered nothing gets it
/// plain; a message below `compression.min_bytes` goes plain to everyone.
#[tokio::test]
async fn a_message_is_compressed_once_for_every_subscriber_that_negotiated_it() {
    let server = TestServer::start().await;
    let mut first = DeflateClient::connect(&server, Some(OFFER)).await;
    let mut second = DeflateClient::connect(&server, Some("permessage-deflate")).await;
    let mut plain = DeflateClient::connect(&server, None).await;
    assert_eq!(
        first.extensions.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    assert!(second.extensions.is_some());
    assert_eq!(plain.extensions, None);
    let channel = "deflate-once";
    for client in [&mut first, &mut second, &mut plain] {
        client.subscribe(channel).await;
    }

    let compressed_before = server
        .metric(r#"switchboard_deflate_messages_total{result="compressed"}"#)
        .await;
    let data = chat_data(2048);
    server.publish(channel, data.clone()).await;
    let (one, json_one) = first.frame_of("message").await;
    let (two, json_two) = second.frame_of("message").await;
    let (three, json_three) = plain.frame_of("message").await;
    assert!(
        one.compressed() && two.compressed(),
        "deflate subscribers get RSV1 frames"
    );
    assert_eq!(one.payload, two.payload, "one compressed frame for both");
    assert!(
        one.payload.len() * 3 < three.payload.len(),
        "{} compressed bytes for {} plain",
        one.payload.len(),
        three.payload.len()
    );
    assert!(!three.compressed());
    for json in [&json_one, &json_two, &json_three] {
        assert_eq!(json["data"], data);
    }
    // In-process servers share one metrics registry: other tests may compress meanwhile, so
    // this counts at least one, and the frames above show it was one for both.
    let compressed_after = server
        .metric(r#"switchboard_deflate_messages_total{result="compressed"}"#)
        .await;
    assert!(compressed_after > compressed_before);

    server.publish(channel, json!({"text": "short"})).await;
    for client in [&mut first, &mut second, &mut plain] {
        let (frame, json) = client.frame_of("message").await;
        assert!(!frame.compressed(), "below compression.min_bytes: plain");
        assert_eq!(json["data"]["text"], "short");
    }
}

/// `compression.enabled = false`: an offer is not answered, and nothing is compressed.
#[tokio::test]
async fn compression_off_negotiates_nothing() {
    let server = TestServer::builder()
        .configure(|config| config.compression.enabled = false)
        .start()
        .await;
    let mut client = DeflateClient::connect(&server, Some(OFFER)).await;
    assert_eq!(client.extensions, None);
    client.subscribe("deflate-off").await;
    server.publish("deflate-off", chat_data(2048)).await;
    let (frame, _) = client.frame_of("message").await;
    assert!(!frame.compressed());
}

fn open_namespaces() -> Vec<switchboard::config::NamespaceConfig> {
    switchboard::config::Config::from_toml_str(
        "[[namespaces]]\npattern = \"*\"\nsubscribe = \"anonymous\"\npublish = \"anonymous\"\n\
         history = \"anonymous\"\n",
    )
    .unwrap()
    .namespaces
}

/// A client's compressed publish is inflated and published like any other.
#[tokio::test]
async fn a_compressed_client_message_is_inflated() {
    let server = TestServer::builder()
        .configure(|config| config.namespaces = open_namespaces())
        .start()
        .await;
    let mut client = DeflateClient::connect(&server, Some(OFFER)).await;
    client.subscribe("deflate-in").await;
    let data = chat_data(3000);
    let publish = json!({"type": "publish", "channel": "deflate-in", "data": data, "id": 7});
    client.send_compressed(publish.to_string().as_bytes()).await;
    // The message and the reply, in either order.
    let (mut acknowledged, mut delivered) = (false, false);
    while !(acknowledged && delivered) {
        let frame = client.frame().await;
        let json = frame.json();
        match json["type"].as_str() {
            Some("published") => acknowledged = json["id"] == 7,
            Some("message") => delivered = json["data"] == data,
            Some("error") => panic!("{json}"),
            _ => {}
        }
    }
}

/// Hostile compressed input, each beside a bystander that keeps its full rate: a bomb
/// (16 MiB of zeros in about 16 KiB) closes with 1009 having inflated no more than
/// `limits.max_inbound_message_bytes`; data that is not deflate closes with 1007; RSV1
/// on a connection that did not negotiate compression, on a control frame or on a
/// continuation frame closes with 1002.
#[tokio::test]
async fn hostile_compressed_input_is_refused() {
    let server = TestServer::start().await;
    with_bystander(&server, async {
        let bomb = deflate(&vec![0_u8; 16 << 20]);
        assert!(bomb.len() < 64 * 1024);
        let mut client = DeflateClient::connect(&server, Some(OFFER)).await;
        client
            .stream
            .write_all(&raw::frame(0x81 | 0x40, &bomb))
            .await
            .unwrap();
        assert_eq!(raw::close_code(&mut client.stream).await, Some(1009));

        let mut client = DeflateClient::connect(&server, Some(OFFER)).await;
        client
            .stream
            .write_all(&raw::frame(0x81 | 0x40, &[0xff, 0xff, 0xff, 0xff]))
            .await
            .unwrap();
        assert_eq!(raw::close_code(&mut client.stream).await, Some(1007));

        let mut client = DeflateClient::connect(&server, None).await;
        client
            .stream
            .write_all(&raw::frame(0x81 | 0x40, &deflate(b"{}")))
            .await
            .unwrap();
        assert_eq!(raw::close_code(&mut client.stream).await, Some(1002));

        let mut client = DeflateClient::connect(&server, Some(OFFER)).await;
        client
            .stream
            .write_all(&raw::frame(0x89 | 0x40, b"ping"))
            .await
            .unwrap();
        assert_eq!(raw::close_code(&mut client.stream).await, Some(1002));

        let mut client = DeflateClient::connect(&server, Some(OFFER)).await;
        let mut fragments = raw::frame(0x01 | 0x40, &deflate(b"{\"type\":"));
        fragments.extend_from_slice(&raw::frame(0x80 | 0x40, b"x"));
        client.stream.write_all(&fragments).await.unwrap();
        assert_eq!(raw::close_code(&mut client.stream).await, Some(1002));
    })
    .await;
    assert!(
        server
            .metric(r#"switchboard_connections_closed_total{end="bad_deflate"}"#)
            .await
            >= 1.0
    );
}

/// On a cluster: a message published on node a reaches node b through Redis and goes to b's
/// deflate subscribers compressed (b compresses it once, as its own fan-out), and to its
/// plain subscriber as it is; the resume from b's history after it is plain and whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_remote_messages_are_compressed_by_the_receiving_node() {
    let redis = crate::redis_server::RedisServer::start(false);
    let node = || TestServer::builder().redis(&redis.url()).start();
    let (a, b) = (node().await, node().await);
    let channel = "deflate-cluster";
    let mut first = DeflateClient::connect(&b, Some(OFFER)).await;
    let mut second = DeflateClient::connect(&b, Some(OFFER)).await;
    let mut plain = DeflateClient::connect(&b, None).await;
    for client in [&mut first, &mut second, &mut plain] {
        client.subscribe(channel).await;
    }
    let data = chat_data(4096);
    let offset = a.publish(channel, data.clone()).await;
    let (one, json_one) = first.frame_of("message").await;
    let (two, _) = second.frame_of("message").await;
    let (three, json_three) = plain.frame_of("message").await;
    assert!(one.compressed() && !three.compressed());
    assert_eq!(one.payload, two.payload, "one compressed frame for both");
    assert_eq!(json_one, json_three);
    assert_eq!(json_one["data"], data);
    assert_eq!(json_one["offset"], offset);

    // A resume through b replays it from history: a reply to one connection, plain.
    let mut resumed = DeflateClient::connect(&b, Some(OFFER)).await;
    let since = format!("{}-0", offset.split('-').next().unwrap());
    resumed
        .send_json(&json!({"type": "subscribe", "channel": channel, "since": since, "id": 2}))
        .await;
    let (replayed, json) = resumed.frame_of("message").await;
    assert!(!replayed.compressed());
    assert_eq!(json["data"], data);
}

/// Python's `websockets`, a client that checks the answer strictly (RFC 7692 section 7.1),
/// with each offer it can make: its default, a server window of 15 and of 10 (accepted only
/// by naming it in the answer), and no context takeover asked of the server; each gets a
/// 4 KiB message compressed and whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websockets_negotiates_each_offer() {
    let server = TestServer::start().await;
    let python = crate::python_client::venv().join("bin/python");
    assert!(
        python.exists(),
        "the venv is missing ({} not found): run tests/run.sh, which makes it",
        python.display()
    );
    let script = r#"
import asyncio, json, sys, urllib.request
from websockets.asyncio.client import connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

url, control = sys.argv[1], sys.argv[2]
offers = {
    "default": None,
    "server_window_15": ClientPerMessageDeflateFactory(server_max_window_bits=15),
    "server_window_10": ClientPerMessageDeflateFactory(server_max_window_bits=10),
    "server_no_context_takeover": ClientPerMessageDeflateFactory(server_no_context_takeover=True),
}

async def one(name, factory):
    kwargs = {} if factory is None else {"extensions": [factory], "compression": None}
    async with connect(url, **kwargs) as ws:
        assert ws.protocol.extensions, name
        await ws.recv()
        channel = "py-" + name
        await ws.send(json.dumps({"type": "subscribe", "channel": channel, "id": 1}))
        await ws.recv()
        text = " ".join(f"token {i}" for i in range(500))
        body = json.dumps({"channel": channel, "data": {"text": text}}).encode()
        urllib.request.urlopen(urllib.request.Request(control + "/v1/publish", data=body, headers={"content-type": "application/json"}))
        message = json.loads(await ws.recv())
        assert message["data"]["text"] == text, name
        print(name, "ok")

async def main():
    for name, factory in offers.items():
        await one(name, factory)

asyncio.run(main())
"#;
    let output = tokio::process::Command::new(python)
        .args(["-c", script, &server.ws_url(), &server.control_url("")])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|line| line.ends_with(" ok")).count(),
        4,
        "{stdout}"
    );
}
