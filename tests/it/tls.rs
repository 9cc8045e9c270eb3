//! `wss://` with a certificate made in the test (rcgen) and a real TLS client (rustls):
//! sessions over TLS, and a reload that changes the certificate without dropping anyone.

use std::{path::PathBuf, sync::Arc};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::{
    TlsConnector,
    client::TlsStream,
    rustls::{self, RootCertStore, pki_types::ServerName},
};
use tokio_tungstenite::{WebSocketStream, tungstenite::Message};

use crate::harness::{TestServer, recv_timeout};

/// A `wss://` client: the welcome it got, and its stream.
struct WssClient {
    ws: WebSocketStream<TlsStream<TcpStream>>,
    welcome: Value,
}

impl WssClient {
    async fn recv(&mut self) -> Value {
        loop {
            let next = tokio::time::timeout(recv_timeout(), self.ws.next())
                .await
                .expect("a frame in time");
            if let Some(Ok(Message::Text(text))) = next {
                return serde_json::from_str(&text).unwrap();
            }
            assert!(
                matches!(next, Some(Ok(_))),
                "the connection ended: {next:?}"
            );
        }
    }

    async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    async fn subscribe(&mut self, channel: &str) {
        let frame = json!({"type": "subscribe", "id": 1, "channel": channel});
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
        assert_eq!(self.recv().await["type"], "subscribed");
    }
}

/// A test's own directory for certificate files (`cert.pem`, `key.pem`), removed when
/// dropped, also when the test fails.
pub(crate) struct CertDir(PathBuf);

impl CertDir {
    pub(crate) fn new(name: &str) -> CertDir {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        CertDir(dir)
    }

    /// A file in the directory, as a path string for configs and commands.
    pub(crate) fn path(&self, file: &str) -> String {
        self.0.join(file).display().to_string()
    }

    /// A new self-signed certificate for `localhost`, written over `cert.pem` and `key.pem`.
    pub(crate) fn certificate(&self) -> rcgen::CertifiedKey<rcgen::KeyPair> {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(self.path("cert.pem"), certified.cert.pem()).unwrap();
        std::fs::write(self.path("key.pem"), certified.signing_key.serialize_pem()).unwrap();
        certified
    }

    /// Serves `wss://` with these files (`[server.tls]`).
    pub(crate) fn serve_wss(&self, config: &mut switchboard::config::Config) {
        config.server.tls.cert_file = self.path("cert.pem");
        config.server.tls.key_file = self.path("key.pem");
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `wss://` client that trusts only `trusted`.
async fn connect(
    addr: std::net::SocketAddr,
    trusted: &rcgen::CertifiedKey<rcgen::KeyPair>,
) -> Result<WssClient, String> {
    connect_with(addr, trusted, rustls::DEFAULT_VERSIONS).await
}

/// A `wss://` client that trusts only `trusted` and speaks only `versions` of TLS.
async fn connect_with(
    addr: std::net::SocketAddr,
    trusted: &rcgen::CertifiedKey<rcgen::KeyPair>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<WssClient, String> {
    let mut roots = RootCertStore::empty();
    roots.add(trusted.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|err| err.to_string())?;
    let (ws, _) =
        tokio_tungstenite::client_async(format!("wss://localhost:{}/ws", addr.port()), tls)
            .await
            .map_err(|err| err.to_string())?;
    let mut client = WssClient {
        ws,
        welcome: Value::Null,
    };
    client.welcome = client.recv().await;
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_serves_sessions_and_a_reload_changes_the_certificate_without_dropping_anyone() {
    let dir = CertDir::new("sb-tls");
    let first = dir.certificate();
    let server = TestServer::builder()
        .configure(|config| {
            dir.serve_wss(config);
        })
        .start()
        .await;
    let mut before = connect(server.ws_addr, &first).await.unwrap();
    assert_eq!(before.welcome["type"], "welcome");
    before.subscribe("news").await;
    server.publish("news", json!(1)).await;
    assert_eq!(before.recv_type("message").await["data"], 1);

    // A bad new certificate is refused and the old one stays, through SIGHUP's path and
    // through the control API.
    std::fs::write(dir.path("cert.pem"), "not a certificate").unwrap();
    assert!(!server.reload_tls());
    let (status, body) = server.post("/v1/reload-tls", json!({})).await;
    assert_eq!(status, 422, "{body}");
    connect(server.ws_addr, &first).await.unwrap();

    let second = dir.certificate();
    let (status, body) = server.post("/v1/reload-tls", json!({})).await;
    assert_eq!(
        (status, body["reloaded"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    let err = connect(server.ws_addr, &first)
        .await
        .err()
        .unwrap_or_default();
    assert!(
        !err.is_empty(),
        "a client trusting only the old certificate is refused"
    );
    let mut after = connect(server.ws_addr, &second).await.unwrap();
    after.subscribe("news").await;
    // The connection from before the reload is still there and still served.
    server.publish("news", json!(2)).await;
    assert_eq!(before.recv_type("message").await["data"], 2);
    assert_eq!(after.recv_type("message").await["data"], Value::from(2));
    server.stop().await;
}

/// Runs `curl` against the control API with `ca` as its only trust anchor; returns its exit
/// status and what it printed (the body, or the TLS error).
fn curl(url: &str, ca: &str) -> (bool, String) {
    let output = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(ca)
        .arg(url)
        .output()
        .expect("curl runs (tests/run.sh installs it: apt-get install curl)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_serves_https_and_reloads_both_certificates() {
    let dir = CertDir::new("sb-control-tls");
    let first = dir.certificate();
    let server = TestServer::builder()
        .configure(|config| dir.serve_wss(config))
        .control_tls(
            &dir.path("cert.pem"),
            &dir.path("key.pem"),
            &first.cert.pem(),
        )
        .start()
        .await;
    let mut subscriber = connect(server.ws_addr, &first).await.unwrap();
    subscriber.subscribe("ops").await;
    // The harness publishes over HTTPS; a real client (curl) reads readiness over HTTPS.
    server.publish("ops", json!(1)).await;
    assert_eq!(subscriber.recv_type("message").await["data"], 1);
    std::fs::write(dir.path("first.pem"), first.cert.pem()).unwrap();
    let readyz = format!("https://localhost:{}/readyz", server.control_addr.port());
    let (ok, text) = curl(&readyz, &dir.path("first.pem"));
    assert!(ok && text.contains("\"ready\":true"), "{text}");
    // Plain HTTP to the HTTPS listener gets no answer.
    let plain = format!("http://127.0.0.1:{}/readyz", server.control_addr.port());
    assert!(server.http.get(&plain).send().await.is_err());

    // One reload changes both listeners' certificates; the WebSocket stays up.
    let second = dir.certificate();
    std::fs::write(dir.path("second.pem"), second.cert.pem()).unwrap();
    assert!(server.reload_tls(), "SIGHUP's path reloads both");
    let (ok, text) = curl(&readyz, &dir.path("first.pem"));
    assert!(
        !ok,
        "curl trusting only the old certificate is refused: {text}"
    );
    let (ok, text) = curl(&readyz, &dir.path("second.pem"));
    assert!(ok, "{text}");
    connect(server.ws_addr, &second).await.unwrap();
    assert!(connect(server.ws_addr, &first).await.is_err());
    let publish = format!(
        "https://localhost:{}/v1/publish",
        server.control_addr.port()
    );
    let output = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(dir.path("second.pem"))
        .args(["-H", "content-type: application/json", "-d"])
        .arg(r#"{"channel":"ops","data":2}"#)
        .arg(&publish)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(subscriber.recv_type("message").await["data"], 2);
    server.stop().await;
}

/// The TLS stream is the server's own (rustls's unbuffered API, see `src/tls/stream.rs`):
/// large messages both ways span many records and reads, a burst keeps its order, TLS 1.2
/// works, a key update from the client is followed, and garbage instead of a ClientHello is
/// refused without disturbing a subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_carries_large_messages_bursts_tls12_and_key_updates() {
    let dir = CertDir::new("sb-tls-stream");
    let cert = dir.certificate();
    let server = TestServer::builder()
        .configure(|config| {
            dir.serve_wss(config);
            config.limits.max_publish_payload_bytes = 256 * 1024;
            config.limits.max_inbound_message_bytes = 256 * 1024;
            config.limits.client_messages_per_second = 0;
        })
        .start()
        .await;
    let mut tls13 = connect_with(server.ws_addr, &cert, &[&rustls::version::TLS13])
        .await
        .unwrap();
    let mut tls12 = connect_with(server.ws_addr, &cert, &[&rustls::version::TLS12])
        .await
        .unwrap();
    for client in [&mut tls13, &mut tls12] {
        client.subscribe("big").await;
    }
    // 100 KB from a backend: seven records to each subscriber.
    let large = "x".repeat(100_000);
    server.publish("big", json!(large)).await;
    for client in [&mut tls13, &mut tls12] {
        let data = client.recv_type("message").await["data"].clone();
        assert!(data == large.as_str(), "the 100 KB message arrived changed");
    }
    // 100 KB from a client: many records, read in pieces.
    let frame = json!({"type": "publish", "id": 7, "channel": "big", "data": "y".repeat(100_000)});
    tls12
        .ws
        .send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
    for client in [&mut tls13, &mut tls12] {
        let delivered = client.recv_type("message").await;
        assert_eq!(delivered["data"].as_str().map(str::len), Some(100_000));
    }
    // A burst keeps its order.
    for n in 0..500 {
        server.publish("big", json!(n)).await;
    }
    for client in [&mut tls13, &mut tls12] {
        for n in 0..500 {
            assert_eq!(client.recv_type("message").await["data"], n);
        }
    }
    // The client updates its keys (TLS 1.3 KeyUpdate); both directions go on.
    tls13
        .ws
        .get_mut()
        .get_mut()
        .1
        .refresh_traffic_keys()
        .unwrap();
    tls13
        .ws
        .send(Message::Text(
            json!({"type": "ping", "id": 9}).to_string().into(),
        ))
        .await
        .unwrap();
    assert_eq!(tls13.recv_type("pong").await["id"], 9);
    server.publish("big", json!("after the key update")).await;
    for client in [&mut tls13, &mut tls12] {
        assert_eq!(
            client.recv_type("message").await["data"],
            "after the key update"
        );
    }

    // Garbage instead of a ClientHello: refused, counted, and the subscribers never notice.
    let refused = "switchboard_connections_rejected_total{reason=\"tls_handshake\"}";
    let before = server.metric(refused).await;
    let mut garbage = TcpStream::connect(server.ws_addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut garbage, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        recv_timeout(),
        tokio::io::AsyncReadExt::read_to_end(&mut garbage, &mut answer),
    )
    .await
    .expect("the server closes the connection");
    crate::assert_eventually!(
        server.metric(refused).await >= before + 1.0,
        "the failed handshake is counted"
    );
    server.publish("big", json!("still here")).await;
    for client in [&mut tls13, &mut tls12] {
        assert_eq!(client.recv_type("message").await["data"], "still here");
    }
    server.stop().await;
}

/// A `wss://` client that stops reading fills its socket, then the server's one write's
/// worth of records, then its outbound queue, and is closed as a slow consumer; a `wss://`
/// subscriber beside it gets every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_client_that_stops_reading_is_a_slow_consumer_and_nobody_else_notices() {
    const MESSAGES: u64 = 1_500;
    let dir = CertDir::new("sb-tls-slow");
    let cert = dir.certificate();
    let server = TestServer::builder()
        .configure(|config| {
            dir.serve_wss(config);
            config.limits.outbound_queue_messages = 256;
        })
        .start()
        .await;
    let mut stalled = connect(server.ws_addr, &cert).await.unwrap();
    stalled.subscribe("firehose").await;
    let mut reader = connect(server.ws_addr, &cert).await.unwrap();
    reader.subscribe("firehose").await;
    let reading = tokio::spawn(async move {
        for n in 0..MESSAGES {
            assert_eq!(reader.recv_type("message").await["data"]["n"], n);
        }
    });
    let before = server
        .metric("switchboard_slow_consumer_closes_total")
        .await;
    let channel = switchboard::protocol::ChannelName::parse("firehose", 64).unwrap();
    let pad = "x".repeat(4096);
    for n in 0..MESSAGES {
        server
            .hub()
            .publish(&channel, &json!({"n": n, "pad": pad}).to_string())
            .expect("a small channel's round runs inline, so its outbox never fills");
        if n % 5 == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
    tokio::time::timeout(std::time::Duration::from_secs(20), reading)
        .await
        .expect("the reading subscriber gets every message promptly")
        .unwrap();
    crate::assert_eventually!(
        server
            .metric("switchboard_slow_consumer_closes_total")
            .await
            >= before + 1.0,
        "the stalled wss client is closed as a slow consumer"
    );
    drop(stalled);
    server.stop().await;
}

/// A client socket that sends at most `step` bytes per write (with Nagle off, mostly one
/// TCP segment each): the server sees TLS records arrive in pieces.
struct Trickle {
    inner: TcpStream,
    step: usize,
}

impl tokio::io::AsyncRead for Trickle {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Trickle {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let step = self.step.min(data.len());
        std::pin::Pin::new(&mut self.inner).poll_write(cx, &data[..step])
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The next text frame as JSON, skipping control frames.
async fn next<S>(ws: &mut WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match tokio::time::timeout(recv_timeout(), ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
            Some(Ok(_)) => {}
            other => panic!("the connection ended: {other:?}"),
        }
    }
}

/// The handshake and records arriving a few bytes at a time are reassembled: the server's
/// read buffer holds partial records across many reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_records_arriving_in_small_pieces_are_reassembled() {
    let dir = CertDir::new("sb-tls-trickle");
    let cert = dir.certificate();
    let server = TestServer::builder()
        .configure(|config| {
            dir.serve_wss(config);
        })
        .start()
        .await;
    let mut roots = RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    for step in [1, 7, 1000] {
        let tcp = TcpStream::connect(server.ws_addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let tls = TlsConnector::from(Arc::new(config.clone()))
            .connect(
                ServerName::try_from("localhost").unwrap(),
                Trickle { inner: tcp, step },
            )
            .await
            .unwrap();
        let url = format!("wss://localhost:{}/ws", server.ws_addr.port());
        let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
        assert_eq!(next(&mut ws).await["type"], "welcome", "step {step}");
        let data = "z".repeat(20_000);
        let frame = json!({"type": "subscribe", "id": 1, "channel": "trickle"});
        ws.send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
        assert_eq!(next(&mut ws).await["type"], "subscribed", "step {step}");
        let frame = json!({"type": "publish", "id": 2, "channel": "trickle", "data": data});
        ws.send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
        loop {
            let reply = next(&mut ws).await;
            if reply["type"] == "message" {
                assert!(reply["data"] == data.as_str(), "step {step}");
                break;
            }
        }
    }
    server.stop().await;
}

/// A forged record after the handshake is refused with a TLS alert that says why (not a
/// bare close), and only that connection ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_record_gets_an_alert_and_only_its_connection_ends() {
    let dir = CertDir::new("sb-tls-forged");
    let cert = dir.certificate();
    let server = TestServer::builder()
        .configure(|config| {
            dir.serve_wss(config);
        })
        .start()
        .await;
    let mut bystander = connect(server.ws_addr, &cert).await.unwrap();
    bystander.subscribe("calm").await;
    let mut forger = connect(server.ws_addr, &cert).await.unwrap();
    // An application-data record whose contents no key made.
    let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x40];
    record.extend_from_slice(&[0x5a; 0x40]);
    tokio::io::AsyncWriteExt::write_all(forger.ws.get_mut().get_mut().0, &record)
        .await
        .unwrap();
    let ended = tokio::time::timeout(recv_timeout(), forger.ws.next())
        .await
        .expect("the server answers the forged record");
    let reason = format!("{ended:?}");
    assert!(
        reason.contains("BadRecordMac") || reason.contains("DecryptError"),
        "the client is told why: {reason}"
    );
    server.publish("calm", json!("still here")).await;
    assert_eq!(bystander.recv_type("message").await["data"], "still here");
    server.stop().await;
}
