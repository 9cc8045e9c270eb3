//! `auth.jwks_url`: keys fetched from a real HTTP server on loopback at start, again for a
//! token with an unknown `kid` (rate-limited) and periodically; kept when a fetch fails.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::{Value, json};
use switchboard::{auth::unix_now as now, config::Config};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

use crate::harness::{TestClient, TestServer};

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");

/// A JWKS endpoint: answers every request with the current status and document.
struct JwksServer {
    url: String,
    answer: Arc<Mutex<(u16, String)>>,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(document: &Value) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://127.0.0.1:{}/.well-known/jwks.json",
            listener.local_addr().unwrap().port()
        );
        let answer = Arc::new(Mutex::new((200, document.to_string())));
        let requests = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (answer, requests) = (Arc::clone(&answer), Arc::clone(&requests));
            async move {
                loop {
                    let Ok((mut stream, _)) = listener.accept().await else {
                        return;
                    };
                    let mut request = Vec::new();
                    let mut buf = [0; 1024];
                    while !request.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    assert!(request.starts_with(b"GET /.well-known/jwks.json HTTP/1.1\r\n"));
                    requests.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = answer.lock().unwrap().clone();
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                }
            }
        });
        JwksServer {
            url,
            answer,
            requests,
            task,
        }
    }

    fn serve(&self, status: u16, document: &Value) {
        *self.answer.lock().unwrap() = (status, document.to_string());
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A key of `tests/keys`: its private half for signing and its public JWK.
fn key(file: &str, algorithm: Algorithm, kid: &str, name_algorithm: bool) -> (EncodingKey, Value) {
    let pem = std::fs::read(format!("{KEYS}/{file}")).unwrap();
    let encoding = match algorithm {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .unwrap();
    let mut jwk = Jwk::from_encoding_key(&encoding, algorithm).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    if !name_algorithm {
        // Many issuers leave `alg` out; the key's type then implies it.
        jwk.common.key_algorithm = None;
    }
    (encoding, serde_json::to_value(jwk).unwrap())
}

fn token(algorithm: Algorithm, kid: &str, key: &EncodingKey, sub: &str) -> String {
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, &json!({"sub": sub, "exp": now() + 600}), key).unwrap()
}

/// The user the server's `welcome` names for `token`, or the close code it refused with.
async fn outcome(server: &TestServer, token: &str) -> Result<String, u16> {
    let mut client = TestClient::connect(&format!("{}?token={token}", server.ws_url())).await;
    match client.welcome["user"].as_str() {
        Some(user) => Ok(user.to_owned()),
        None => Err(client.close_code().await),
    }
}

fn with_jwks(url: &str, refresh: Duration, min_interval: Duration) -> impl FnOnce(&mut Config) {
    let url = url.to_owned();
    move |config: &mut Config| {
        config.auth.required = true;
        config.auth.jwks_url = url;
        config.auth.jwks_refresh = refresh;
        config.auth.jwks_min_interval = min_interval;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_verify_tokens_rotate_in_on_demand_and_survive_a_failed_fetch() {
    let (rsa, rsa_jwk) = key("rsa.key", Algorithm::RS256, "r1", true);
    let (ec, ec_jwk) = key("ec256.key", Algorithm::ES256, "e1", false);
    let (ed, ed_jwk) = key("ed25519.key", Algorithm::EdDSA, "d2", true);
    // A symmetric key in a public document would let anyone mint tokens: never used.
    let oct = json!({"kty": "oct", "kid": "o1", "alg": "HS256", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"});
    let jwks = JwksServer::start(&json!({"keys": [rsa_jwk, ec_jwk, oct, {"kty": "weird"}]})).await;
    let server = TestServer::builder()
        .configure(with_jwks(
            &jwks.url,
            Duration::from_secs(3600),
            Duration::from_secs(1),
        ))
        .start()
        .await;
    assert_eq!(jwks.requests(), 1, "fetched once at start");
    assert_eq!(
        outcome(&server, &token(Algorithm::RS256, "r1", &rsa, "rita")).await,
        Ok("rita".to_owned())
    );
    assert_eq!(
        outcome(&server, &token(Algorithm::ES256, "e1", &ec, "eve")).await,
        Ok("eve".to_owned()),
        "an EC key without `alg` is ES256 by its curve"
    );
    let hmac = EncodingKey::from_secret(b"secret-secret-secret-secret-secret").unwrap();
    assert_eq!(
        outcome(&server, &token(Algorithm::HS256, "o1", &hmac, "mallory")).await,
        Err(4003),
        "the oct key is skipped"
    );
    // Algorithm confusion: an HMAC token naming the RSA key, keyed with its public PEM.
    let public_pem = std::fs::read(format!("{KEYS}/rsa.pub")).unwrap();
    let confused = EncodingKey::from_secret(&public_pem).unwrap();
    assert_eq!(
        outcome(
            &server,
            &token(Algorithm::HS256, "r1", &confused, "mallory")
        )
        .await,
        Err(4003)
    );

    // The issuer rotates a new key in: its first token makes the node fetch again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    jwks.serve(200, &json!({"keys": [ed_jwk]}));
    let before = jwks.requests();
    assert_eq!(
        outcome(&server, &token(Algorithm::EdDSA, "d2", &ed, "dan")).await,
        Ok("dan".to_owned())
    );
    assert_eq!(jwks.requests(), before + 1);
    // Tokens with made-up kids cannot make the node hammer the endpoint.
    for n in 0..5 {
        let forged = token(Algorithm::EdDSA, &format!("ghost-{n}"), &ed, "ghost");
        assert_eq!(outcome(&server, &forged).await, Err(4003));
    }
    assert_eq!(jwks.requests(), before + 1, "rate-limited");
    assert!(
        server
            .metric("switchboard_jwks_refresh_total{result=\"rate_limited\"}")
            .await
            >= 4.0
    );
    assert_eq!(
        outcome(&server, &token(Algorithm::RS256, "r1", &rsa, "rita")).await,
        Err(4003),
        "r1 left the set"
    );

    // A failing endpoint keeps the keys held.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    jwks.serve(500, &json!({}));
    assert_eq!(
        outcome(&server, &token(Algorithm::EdDSA, "ghost", &ed, "ghost")).await,
        Err(4003)
    );
    assert_eq!(jwks.requests(), before + 2);
    assert!(
        server
            .metric("switchboard_jwks_refresh_total{result=\"error\"}")
            .await
            >= 1.0
    );
    assert_eq!(
        outcome(&server, &token(Algorithm::EdDSA, "d2", &ed, "dan")).await,
        Ok("dan".to_owned()),
        "the keys from before the failure still verify"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_is_refreshed_periodically_and_gates_readiness_until_loaded() {
    let (rsa, rsa_jwk) = key("rsa.key", Algorithm::RS256, "r1", false);
    let (ec, ec_jwk) = key("ec384.key", Algorithm::ES384, "e2", true);
    let jwks = JwksServer::start(&json!({"keys": []})).await;
    // An empty set: the node has no key to verify with and is not ready.
    let server = TestServer::builder()
        .configure(with_jwks(
            &jwks.url,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        ))
        .start_unready()
        .await;
    crate::assert_eventually!(jwks.requests() >= 1, "fetched at start");
    let (status, body) = server.get_json("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains("jwks not loaded"), "{body}");
    jwks.serve(200, &json!({"keys": [rsa_jwk.clone()]}));
    crate::assert_eventually!(server.get("/readyz").await.0 == 200, "ready once loaded");
    assert_eq!(
        outcome(&server, &token(Algorithm::RS256, "r1", &rsa, "rita")).await,
        Ok("rita".to_owned())
    );
    // With unknown-kid fetches held off for an hour, only the periodic refresh brings e2.
    jwks.serve(200, &json!({"keys": [rsa_jwk, ec_jwk]}));
    let e2 = token(Algorithm::ES384, "e2", &ec, "erin");
    crate::assert_eventually!(
        outcome(&server, &e2).await == Ok("erin".to_owned()),
        "the periodic refresh brings the new key"
    );
    server.stop().await;
}
