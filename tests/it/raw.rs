//! Raw clients, as hostile tests need them: hand-built frames and requests over TCP (a
//! WebSocket library would refuse to send most of them), the resident memory of a node, and
//! the bystander: a subscriber on another connection that must keep receiving every message
//! in order at its publisher's full rate while an attack runs.

use std::{
    future::Future,
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::Instant,
};

use crate::harness::{BinaryNode, TestClient, TestServer, patience};

/// Messages the bystander's publisher sends at least, one every `BYSTANDER_PERIOD`.
const BYSTANDER_MESSAGES: u64 = 150;
const BYSTANDER_PERIOD: Duration = Duration::from_millis(10);
/// At most this many, however long the attack runs.
const BYSTANDER_MAX_MESSAGES: u64 = 6_000;

/// Where a bystander connects and publishes.
pub(crate) struct Node<'a> {
    pub ws_url: String,
    /// The control API's base URL (`http://addr`).
    pub control: String,
    pub http: &'a reqwest::Client,
}

impl<'a> From<&'a TestServer> for Node<'a> {
    fn from(server: &'a TestServer) -> Self {
        Node {
            ws_url: server.ws_url(),
            control: server.control_url(""),
            http: &server.http,
        }
    }
}

impl BinaryNode {
    pub(crate) fn target<'a>(&self, http: &'a reqwest::Client) -> Node<'a> {
        Node {
            ws_url: self.ws_url(),
            control: format!("http://{}", self.control_addr),
            http,
        }
    }
}

/// Runs `attack` while a publisher sends a message every `BYSTANDER_PERIOD` over HTTP to a
/// subscriber on another connection (`BYSTANDER_MESSAGES` at least, and on until the
/// attack ends), and checks the subscriber got every one, in order, no later than 1 s after
/// the last was published, and that the publisher kept its rate (1.5 s of slack: the test
/// binary runs many tests at once on two cores).
pub(crate) async fn with_bystander<F: Future>(server: &TestServer, attack: F) -> F::Output {
    with_bystander_at(Node::from(server), attack).await
}

/// [`with_bystander`] on any node.
pub(crate) async fn with_bystander_at<F: Future>(node: Node<'_>, attack: F) -> F::Output {
    let mut bystander = TestClient::connect(&node.ws_url).await;
    bystander.subscribe("bystander").await;
    let attacking = AtomicBool::new(true);
    let (http, url) = (node.http, format!("{}/v1/publish", node.control));
    let publish_one = |data: Value| {
        let request = http.post(&url);
        async move {
            let response = request
                .json(&json!({"channel": "bystander", "data": data}))
                .send()
                .await
                .expect("the control API answers");
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert_eq!(status, 200, "the bystander's publish failed: {body}");
        }
    };
    let publish = async {
        let started = Instant::now();
        let mut interval = tokio::time::interval(BYSTANDER_PERIOD);
        let mut sent = 0_u64;
        while sent < BYSTANDER_MAX_MESSAGES
            && (sent < BYSTANDER_MESSAGES || attacking.load(Ordering::Relaxed))
        {
            interval.tick().await;
            publish_one(json!(sent)).await;
            sent += 1;
        }
        let elapsed = started.elapsed();
        let last_published = Instant::now();
        // Tells the receiver it has seen everything.
        publish_one(json!("end")).await;
        (sent, elapsed, last_published)
    };
    let receive = async {
        let mut next = 0_u64;
        loop {
            let message = bystander.recv_type("message").await;
            if message["data"] == "end" {
                return (next, Instant::now());
            }
            assert_eq!(
                message["data"], next,
                "the bystander's messages arrive in order"
            );
            next += 1;
        }
    };
    let attack = async {
        let output = attack.await;
        attacking.store(false, Ordering::Relaxed);
        output
    };
    let (output, (sent, publishing, last_published), (received_count, received)) =
        tokio::join!(attack, publish, receive);
    assert_eq!(received_count, sent, "the bystander got every message");
    let expected = BYSTANDER_PERIOD * u32::try_from(sent).unwrap();
    assert!(
        publishing < expected + patience(Duration::from_millis(1500)),
        "the publisher was slowed: {publishing:?} for {expected:?} of messages"
    );
    assert!(
        received.saturating_duration_since(last_published) < patience(Duration::from_secs(1)),
        "the bystander fell behind by {:?}",
        received.saturating_duration_since(last_published)
    );
    output
}

/// A client frame, masked.
pub(crate) fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut wire = vec![first];
    match payload.len() {
        len @ 0..=125 => wire.push(0x80 | u8::try_from(len).unwrap()),
        len => {
            wire.push(0x80 | 126);
            wire.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
        }
    }
    wire.extend_from_slice(&mask);
    wire.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    wire
}

pub(crate) const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// Sends `request` and reads the response head: status and head text.
pub(crate) async fn http(stream: &mut TcpStream, request: &str) -> (u16, String) {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0_u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(patience(Duration::from_secs(5)), stream.read(&mut byte))
            .await
            .expect("a response in time")
            .unwrap();
        if read == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or(0);
    (status, head)
}

/// A raw client past the upgrade.
pub(crate) async fn upgraded(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let (status, head) = http(&mut stream, UPGRADE).await;
    assert_eq!(status, 101, "{head}");
    stream
}

/// Reads server frames until a close frame; its code, or `None` when the stream ends first.
pub(crate) async fn close_code(stream: &mut TcpStream) -> Option<u16> {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // Server frames are unmasked; parse as many as are buffered.
        while buf.len() >= 2 {
            let (header, len) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (4, usize::from(u16::from_be_bytes([buf[2], buf[3]]))),
                127 if buf.len() >= 10 => (
                    10,
                    usize::try_from(u64::from_be_bytes(buf[2..10].try_into().unwrap())).unwrap(),
                ),
                126 | 127 => break,
                len => (2, usize::from(len)),
            };
            if buf.len() < header + len {
                break;
            }
            if buf[0] & 0x0f == 0x8 {
                return (len >= 2).then(|| u16::from_be_bytes([buf[header], buf[header + 1]]));
            }
            buf.drain(..header + len);
        }
        let mut chunk = [0_u8; 4096];
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("the server closes in time");
        match read {
            Ok(0) | Err(_) => return None,
            Ok(read) => buf.extend_from_slice(&chunk[..read]),
        }
    }
}

/// The resident memory of process `pid`, in KiB.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
