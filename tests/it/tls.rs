//! `wss://` with a certificate made in the test (rcgen) and a real TLS client (rustls):
//! sessions over TLS, and a reload that changes the certificate without dropping anyone.

use std::{path::Path, sync::Arc};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::{
    TlsConnector,
    client::TlsStream,
    rustls::{self, RootCertStore, pki_types::ServerName},
};
use tokio_tungstenite::{WebSocketStream, tungstenite::Message};

use crate::harness::{RECV_TIMEOUT, TestServer};

/// A `wss://` client: the welcome it got, and its stream.
struct WssClient {
    ws: WebSocketStream<TlsStream<TcpStream>>,
    welcome: Value,
}

impl WssClient {
    async fn recv(&mut self) -> Value {
        loop {
            let next = tokio::time::timeout(RECV_TIMEOUT, self.ws.next())
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

/// A self-signed certificate for `localhost`, written as PEM files in `dir`.
fn certificate(dir: &Path) -> rcgen::CertifiedKey<rcgen::KeyPair> {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join("cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
    certified
}

/// A `wss://` client that trusts only `trusted`.
async fn connect(
    addr: std::net::SocketAddr,
    trusted: &rcgen::CertifiedKey<rcgen::KeyPair>,
) -> Result<WssClient, String> {
    let mut roots = RootCertStore::empty();
    roots.add(trusted.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
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
    let dir = std::env::temp_dir().join(format!("sb-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let first = certificate(&dir);
    let server = TestServer::builder()
        .configure(|config| {
            config.server.tls.cert_file = dir.join("cert.pem").display().to_string();
            config.server.tls.key_file = dir.join("key.pem").display().to_string();
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
    std::fs::write(dir.join("cert.pem"), "not a certificate").unwrap();
    assert!(!server.reload_tls());
    let (status, body) = server.post("/v1/reload-tls", json!({})).await;
    assert_eq!(status, 422, "{body}");
    connect(server.ws_addr, &first).await.unwrap();

    let second = certificate(&dir);
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
    server.drain().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// Runs `curl` against the control API with `ca` as its only trust anchor; returns its exit
/// status and what it printed (the body, or the TLS error).
fn curl(url: &str, ca: &Path) -> (bool, String) {
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
    let dir = std::env::temp_dir().join(format!("sb-control-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let first = certificate(&dir);
    let path = |name: &str| dir.join(name).display().to_string();
    let server = TestServer::builder()
        .configure(|config| {
            config.server.tls.cert_file = path("cert.pem");
            config.server.tls.key_file = path("key.pem");
        })
        .control_tls(&path("cert.pem"), &path("key.pem"), &first.cert.pem())
        .start()
        .await;
    let mut subscriber = connect(server.ws_addr, &first).await.unwrap();
    subscriber.subscribe("ops").await;
    // The harness publishes over HTTPS; a real client (curl) reads readiness over HTTPS.
    server.publish("ops", json!(1)).await;
    assert_eq!(subscriber.recv_type("message").await["data"], 1);
    std::fs::write(dir.join("first.pem"), first.cert.pem()).unwrap();
    let readyz = format!("https://localhost:{}/readyz", server.control_addr.port());
    let (ok, text) = curl(&readyz, &dir.join("first.pem"));
    assert!(ok && text.contains("\"ready\":true"), "{text}");
    // Plain HTTP to the HTTPS listener gets no answer.
    let plain = format!("http://127.0.0.1:{}/readyz", server.control_addr.port());
    assert!(server.http.get(&plain).send().await.is_err());

    // One reload changes both listeners' certificates; the WebSocket stays up.
    let second = certificate(&dir);
    std::fs::write(dir.join("second.pem"), second.cert.pem()).unwrap();
    assert!(server.reload_tls(), "SIGHUP's path reloads both");
    let (ok, text) = curl(&readyz, &dir.join("first.pem"));
    assert!(
        !ok,
        "curl trusting only the old certificate is refused: {text}"
    );
    let (ok, text) = curl(&readyz, &dir.join("second.pem"));
    assert!(ok, "{text}");
    connect(server.ws_addr, &second).await.unwrap();
    assert!(connect(server.ws_addr, &first).await.is_err());
    let publish = format!(
        "https://localhost:{}/v1/publish",
        server.control_addr.port()
    );
    let output = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(dir.join("second.pem"))
        .args(["-H", "content-type: application/json", "-d"])
        .arg(r#"{"channel":"ops","data":2}"#)
        .arg(&publish)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(subscriber.recv_type("message").await["data"], 2);
    server.drain().await;
    std::fs::remove_dir_all(dir).unwrap();
}
