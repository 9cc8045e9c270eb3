//! What a developer meets when a token or a client is refused: the error and close code
//! that say what is wrong (4003, or 4004 when a fresh token fixes it), the log lines refusals
//! leave (rate-limited, never the token), and `switchboard token`, which mints what the
//! configured HMAC key accepts.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use switchboard::auth::unix_now as now;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::{
    auth::{SECRET, hs256, server},
    harness::TestClient,
};

#[tokio::test]
async fn an_invalid_token_gets_unauthorized_then_4003() {
    let server = server(|_| {}).await;
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "mallory", "exp": now() + 600}),
        &EncodingKey::from_secret(b"not-the-server-secret-but-32-bytes").unwrap(),
    )
    .unwrap();
    // Bad tokens are client input: a subscriber on another connection keeps its full rate.
    crate::raw::with_bystander(&server, async {
        let mut client = TestClient::connect(&format!("{}?token={forged}", server.ws_url())).await;
        assert!(client.welcome.get("user").is_none());
        let error = client.recv().await;
        assert_eq!(error["code"], "unauthorized", "{error}");
        assert_eq!(client.close_code().await, 4003);

        // Expired: a fresh token fixes it, so 4004 (clients get one and come back), with a
        // message that says so; by the `auth` frame and at connect alike.
        let expired = hs256("bob", now() - 60);
        let mut client = server.client().await;
        client
            .send(json!({"type": "auth", "id": 2, "token": expired}))
            .await;
        let error = client.recv().await;
        assert_eq!(
            (error["code"].as_str(), error["id"].as_u64()),
            (Some("token_expired"), Some(2))
        );
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("expired") && message.contains("get a fresh token"),
            "{message}"
        );
        assert_eq!(client.close_code().await, 4004);
        let mut client = TestClient::connect(&format!("{}?token={expired}", server.ws_url())).await;
        assert!(client.welcome.get("user").is_none());
        assert_eq!(client.recv().await["code"], "token_expired");
        assert_eq!(client.close_code().await, 4004);

        // A token without `exp` is the issuer's mistake: 4003, and the message names it.
        let endless = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "bob"}),
            &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .unwrap();
        let mut client = TestClient::connect(&format!("{}?token={endless}", server.ws_url())).await;
        let error = client.recv().await;
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .starts_with("the token has no `exp` claim"),
            "{error}"
        );
        assert_eq!(client.close_code().await, 4003);
    })
    .await;
    assert!(
        server
            .metric("switchboard_auth_total{result=\"bad_signature\"}")
            .await
            >= 1.0
    );
    assert!(
        server
            .metric("switchboard_auth_total{result=\"expired\"}")
            .await
            >= 1.0
    );
    server.stop().await;
}

/// Refusals leave one line each at info, with the reason and never the token, at most one
/// a second per kind: an Origin not allowed, a token refused, no `auth` in time, a
/// forbidden subscribe. A flood of bad tokens makes one line a second, not one per token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_logged_once_a_second_with_their_reason_and_without_the_token() {
    let config = std::env::temp_dir().join(format!("sb-refusals-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            r#"
[server]
allowed_origins = ["https://app.example.com"]
[auth]
required = true
timeout = "300ms"
[[auth.keys]]
algorithm = "HS256"
secret = "{SECRET}"
[[namespaces]]
pattern = "room:*"
subscribe = "claim"
publish = "none"
history = "none"
[[namespaces]]
pattern = "*"
subscribe = "authenticated"
publish = "none"
history = "none"
"#
        ),
    )
    .unwrap();
    let node = crate::harness::BinaryNode::start_logged(
        &["--config", config.to_str().unwrap(), "--log-level", "info"],
        &[],
    )
    .await;
    let url = node.ws_url();
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "mallory", "exp": now() + 600}),
        &EncodingKey::from_secret(b"not-the-server-secret-but-32-bytes").unwrap(),
    )
    .unwrap();
    for _ in 0..20 {
        let mut client = TestClient::connect(&format!("{url}?token={forged}")).await;
        assert_eq!(client.close_code().await, 4003);
    }
    let mut silent = TestClient::connect(&url).await;
    assert_eq!(silent.close_code().await, 4003);
    let mut member =
        TestClient::connect(&format!("{url}?token={}", hs256("bob", now() + 600))).await;
    member
        .send(json!({"type": "subscribe", "id": 1, "channel": "room:1"}))
        .await;
    assert_eq!(member.recv().await["code"], "forbidden");
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = node.log().await;
    let _ = std::fs::remove_file(&config);
    let lines = |needle: &str| log.lines().filter(|line| line.contains(needle)).count();
    assert!(
        (1..=3).contains(&lines("Token refused")),
        "20 bad tokens, at most a line a second: {log}"
    );
    assert!(log.contains("the token's signature is invalid"), "{log}");
    assert!(!log.contains(&forged), "the token is never logged");
    assert_eq!(lines("no `auth` within auth.timeout"), 1, "{log}");
    assert_eq!(lines("Forbidden by the namespaces"), 1, "{log}");
    assert_eq!(
        lines("this Origin is not in server.allowed_origins"),
        1,
        "{log}"
    );
    assert!(log.contains("https://evil.example"), "{log}");
}

/// `switchboard token` signs with the configuration's HMAC key: the token it prints gets a
/// connection in as its user, with its channels; a configuration with only public keys is
/// refused with exit 64 and a reason.
#[tokio::test]
async fn the_token_command_mints_what_the_server_accepts() {
    let config = std::env::temp_dir().join(format!("sb-token-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!("[auth]\nissuer = \"https://id.example.com\"\n[[auth.keys]]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\n"),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "token",
            "--sub",
            "42",
            "--ttl",
            "10m",
            "--channels",
            "room:*",
        ])
        .args([
            "--info",
            r#"{"name":"Ada"}"#,
            "--config",
            config.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let server = server(|config| config.auth.issuer = "https://id.example.com".to_owned()).await;
    let client = TestClient::connect(&format!("{}?token={token}", server.ws_url())).await;
    assert_eq!(client.welcome["user"], "42");

    std::fs::write(
        &config,
        "[[auth.keys]]\nalgorithm = \"RS256\"\npublic_key_file = \"tests/fixtures/none.pem\"\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["token", "--sub", "42", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&config);
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no HMAC key"), "{stderr}");
    server.stop().await;
}
