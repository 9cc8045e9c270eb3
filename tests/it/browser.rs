//! Real headless Chromium (Debian's `chromium`, driven by `playwright-core` through
//! `tests/browser/origin.mjs`) against the server: a page from an allowed origin gets its
//! `welcome`; a page from any other origin is refused at the upgrade (HTTP 403, which a page
//! sees as close 1006) and counted. The same over `wss://`, through the server's own TLS
//! stream. Then the demo page (its ticker and chat through a drain and a restart, its
//! assistant's streamed reply through a reload) and two tabs' presence, through the
//! JavaScript client.

use std::process::Command;

use serde_json::Value;

use crate::harness::{TestServer, free_port};

/// `tests/browser`, after checking that Chromium and playwright-core are there.
fn browser_dir() -> &'static str {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists()
            && std::path::Path::new(dir)
                .join("node_modules/playwright-core")
                .exists(),
        "Chromium and playwright-core are needed: `apt-get install chromium nodejs npm` and \
         `npm ci` in tests/browser (tests/run.sh does both when missing)"
    );
    dir
}

/// Runs `tests/browser/origin.mjs` while 2 KiB messages are published to `browser-deflate`
/// on `server` every 100 ms: pages on each of `ports` open `ws_url` and wait for one; returns
/// what each origin saw.
async fn chromium_pages_publishing(server: &TestServer, ws_url: String, ports: Vec<u16>) -> Value {
    let pages = tokio::task::spawn_blocking(move || chromium_pages(&ws_url, &ports));
    tokio::pin!(pages);
    let text: Vec<String> = (0..300)
        .map(|i| format!("token {i} of the reply"))
        .collect();
    let data = serde_json::json!({ "text": text.join(" ") });
    loop {
        tokio::select! {
            seen = &mut pages => return seen.unwrap(),
            () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {
                server.publish("browser-deflate", data.clone()).await;
            }
        }
    }
}

/// What a page saw of `browser-deflate`: permessage-deflate negotiated by Chromium, and the
/// message whole.
fn assert_deflate_message(page: &Value) {
    let extensions = page["extensions"].as_str().unwrap_or_default();
    assert!(
        extensions.starts_with("permessage-deflate"),
        "Chromium negotiated {extensions:?}"
    );
    let text = page["message"]["text"].as_str().unwrap_or_default();
    assert!(
        text.starts_with("token 0 of the reply") && text.ends_with("token 299 of the reply"),
        "{page}"
    );
}

/// Runs `tests/browser/origin.mjs`: pages on each of `ports` open `ws_url`; returns what
/// each origin saw.
fn chromium_pages(ws_url: &str, ports: &[u16]) -> Value {
    let dir = browser_dir();
    let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
    let output = Command::new("node")
        .current_dir(dir)
        .arg("origin.mjs")
        .arg(ws_url)
        .arg(ports.join(","))
        .output()
        .expect("node runs (apt-get install nodejs)");
    assert!(
        output.status.success(),
        "origin.mjs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("origin.mjs prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_pages_from_other_origins_cannot_open_a_websocket() {
    let (allowed, other) = (free_port(), free_port());
    let allowed_origin = format!("http://127.0.0.1:{allowed}");
    let server = TestServer::builder()
        .configure(|config| config.server.allowed_origins = vec![allowed_origin.clone()])
        .start()
        .await;
    let rejected = "switchboard_connections_rejected_total{reason=\"origin_not_allowed\"}";
    let rejected_before = server.metric(rejected).await;
    let ws_url = server.ws_url();
    let seen = chromium_pages_publishing(&server, ws_url, vec![allowed, other]).await;
    assert_eq!(seen[&allowed_origin]["outcome"], "message", "{seen}");
    assert_eq!(seen[&allowed_origin]["data"]["type"], "welcome", "{seen}");
    assert_deflate_message(&seen[&allowed_origin]);
    let refused = &seen[&format!("http://127.0.0.1:{other}")];
    assert_eq!(
        (refused["outcome"].as_str(), refused["code"].as_u64()),
        (Some("closed"), Some(1006)),
        "{seen}"
    );
    // The metrics recorder is the test process's: other tests may count refusals too.
    assert!(server.metric(rejected).await >= rejected_before + 1.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_speaks_wss_to_the_servers_own_tls_stream() {
    // Chromium is told to accept the test's own certificate (`ignoreHTTPSErrors`).
    let dir = crate::tls::CertDir::new("sb-browser-tls");
    dir.certificate();
    let (allowed, other) = (free_port(), free_port());
    let allowed_origin = format!("http://127.0.0.1:{allowed}");
    let server = TestServer::builder()
        .configure(|config| {
            config.server.allowed_origins = vec![allowed_origin.clone()];
            dir.serve_wss(config);
        })
        .start()
        .await;
    let ws_url = format!("wss://localhost:{}/ws", server.ws_addr.port());
    let seen = chromium_pages_publishing(&server, ws_url, vec![allowed, other]).await;
    assert_eq!(seen[&allowed_origin]["data"]["type"], "welcome", "{seen}");
    assert_deflate_message(&seen[&allowed_origin]);
    assert_eq!(
        seen[&format!("http://127.0.0.1:{other}")]["code"],
        1006,
        "{seen}"
    );
    server.stop().await;
}

/// Runs `tests/browser/<script>`, which starts nodes of this build itself
/// (`SWITCHBOARD_BIN`); its JSON report, after checking it exited 0.
fn run_with_binary(script: &str) -> Value {
    let output = Command::new("node")
        .current_dir(browser_dir())
        .arg(script)
        .env("SWITCHBOARD_BIN", env!("CARGO_BIN_EXE_switchboard"))
        .output()
        .expect("node runs (apt-get install nodejs)");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script} failed ({}): {report}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(report.trim()).expect("the script prints JSON")
}

/// The demo page (`demo.enabled`) in headless Chromium through `tests/browser/demo.mjs`:
/// two nodes of this build and `redis-server`; the page gets the ticker and the chat,
/// survives a drain and a restart of its node, and shows each channel's offsets once and
/// in order, resumed without a gap.
#[test]
fn the_demo_page_survives_a_drain_and_restart_without_gap_or_duplicate() {
    let report = run_with_binary("demo.mjs");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["channels"]["demo:ticker"]["consecutive"], true);
    assert!(
        report["channels"]["demo:ticker"]["messages"]
            .as_u64()
            .unwrap()
            >= 6
    );
    assert!(
        report["channels"]["demo:chat"]["messages"]
            .as_u64()
            .unwrap()
            >= 4
    );
}

/// Two Chromium tabs in one room through the JS client, on two nodes and `redis-server`
/// (`tests/browser/presence.mjs`): each lists the other, and the first sees the second
/// come (`onJoin`) and go (`onLeave`) when its tab closes.
#[test]
fn two_chromium_tabs_see_each_other_come_and_go() {
    let report = run_with_binary("presence.mjs");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["listed"], 2, "{report}");
}

/// The demo's assistant pane in headless Chromium (`tests/browser/assistant.mjs`): one node
/// of this build streams a reply to `demo:assistant`; mid-reply the page is reloaded, a
/// second tab opens and the server drops the first tab's connection (a resume). Once the
/// reply finished, both tabs show exactly the text the server's history holds.
#[test]
fn the_demo_assistant_reply_is_whole_and_exact_after_a_reload_mid_reply() {
    let report = run_with_binary("assistant.mjs");
    assert_eq!(report["ok"], true, "{report}");
    let server_length = &report["server"]["length"];
    for tab in ["reloaded", "second"] {
        assert_eq!(report["pages"][tab]["exact"], true, "{report}");
        assert_eq!(&report["pages"][tab]["length"], server_length, "{report}");
    }
    assert_eq!(report["recovered"], serde_json::json!([true]), "{report}");
}
