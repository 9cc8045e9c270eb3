//! Tests of the real binary: CLI, configuration errors, signals.

use std::{
    net::TcpListener,
    process::{Command, Stdio},
    time::Duration,
};

use crate::harness::TestClient;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn version_and_check_config() {
    let output = Command::new(BIN).arg("--version").output().unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("switchboard "));

    let output = Command::new(BIN)
        .args([
            "check-config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/switchboard.toml"),
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("max_connections = 1000000"));
}

#[test]
fn bad_config_refuses_to_start_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("sb-bad-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[limits]\nmax_conections = 5\n").unwrap();
    let output = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("limits.max_conections"), "{stderr}");

    let output = Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .env("SWITCHBOARD_LIMITS__MAX_CONECTIONS", "1")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits_zero() {
    let ws_port = free_port();
    let control_port = free_port();
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "--listen",
            &format!("127.0.0.1:{ws_port}"),
            "--control",
            &format!("127.0.0.1:{control_port}"),
            "--log-level",
            "warn",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("ws://127.0.0.1:{ws_port}/ws");
    crate::assert_eventually!(
        tokio_tungstenite::connect_async(&url).await.is_ok(),
        "the server starts listening"
    );
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut client = TestClient::connect(&url).await;
        client.subscribe("news").await;
        clients.push(client);
    }
    let pid = child.id().expect("child is running");
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for client in &mut clients {
        assert_eq!(client.close_code().await, 1001);
    }
    let exit = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("exits within 5 s")
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    // And it no longer accepts.
    assert!(tokio_tungstenite::connect_async(&url).await.is_err());
}
