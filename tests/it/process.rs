//! Tests of the real binary: CLI, configuration errors, signals.

use std::{process::Command, time::Duration};

use crate::harness::{BinaryNode, TestClient, patience};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

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

/// Mistakes that would start a node that is not what its operator meant are refused with
/// exit 64 by `check-config` and `serve` alike, naming what to fix: a namespace an earlier
/// one makes unreachable (a `*` catch-all moved above specific rules), `presence = "owner"`
/// on a pattern without `{sub}`, a certificate or key file that is missing or not PEM, a
/// Redis CA file with no certificate.
#[test]
fn configurations_that_would_not_do_what_they_say_are_refused() {
    let dir = std::env::temp_dir().join(format!("sb-refused-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let namespace = |pattern: &str, presence: &str| {
        format!(
            "[[namespaces]]\npattern = \"{pattern}\"\nsubscribe = \"anonymous\"\npublish = \"none\"\n\
             history = \"none\"\npresence = \"{presence}\"\n"
        )
    };
    let cases = [
        (
            format!("{}{}", namespace("*", "none"), namespace("room:*", "none")),
            "[1] pattern 'room:*' is never used: [0] pattern '*' comes first",
        ),
        (
            namespace("room:*", "owner"),
            "pattern 'room:*' has no {sub}, so `owner` can never match",
        ),
        (
            "[server.tls]\ncert_file = \"/nonexistent/cert.pem\"\nkey_file = \"/nonexistent/key.pem\"\n"
                .to_owned(),
            "server.tls",
        ),
        (
            format!(
                "[control.tls]\ncert_file = \"{0}\"\nkey_file = \"{0}\"\n",
                garbage.display()
            ),
            "control.tls",
        ),
        (
            format!(
                "[cluster]\nredis = \"rediss://127.0.0.1:1\"\nredis_ca_file = \"{}\"\n",
                garbage.display()
            ),
            "holds no PEM certificate",
        ),
    ];
    for (index, (toml, expected)) in cases.iter().enumerate() {
        let path = dir.join(format!("case-{index}.toml"));
        std::fs::write(&path, toml).unwrap();
        for args in [vec!["check-config"], vec!["serve", "--config"]] {
            let output = Command::new(BIN)
                .args(&args)
                .arg(&path)
                .args(["--listen", "127.0.0.1:0", "--control", "127.0.0.1:0"])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(64), "{args:?} {toml}: {stderr}");
            assert!(stderr.contains(expected), "{args:?} {toml}: {stderr}");
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Kubernetes injects `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT_<N>_TCP` ... for every
/// Service in the namespace; with Services named `switchboard-ws` and `switchboard-control`
/// they start with `SWITCHBOARD_`. The binary must start with them (it ignores variables not
/// in the `SWITCHBOARD_<SECTION>__<KEY>` form) and still apply its own.
#[tokio::test]
async fn starts_with_the_variables_kubernetes_injects_for_its_services() {
    let node = BinaryNode::start(
        &[],
        &[
            ("SWITCHBOARD_WS_SERVICE_HOST", "10.96.0.12"),
            ("SWITCHBOARD_WS_SERVICE_PORT", "8080"),
            ("SWITCHBOARD_WS_SERVICE_PORT_WS", "8080"),
            ("SWITCHBOARD_WS_PORT", "tcp://10.96.0.12:8080"),
            ("SWITCHBOARD_WS_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
            ("SWITCHBOARD_WS_PORT_8080_TCP_PROTO", "tcp"),
            ("SWITCHBOARD_WS_PORT_8080_TCP_PORT", "8080"),
            ("SWITCHBOARD_WS_PORT_8080_TCP_ADDR", "10.96.0.12"),
            ("SWITCHBOARD_CONTROL_SERVICE_HOST", "10.96.0.13"),
            ("SWITCHBOARD_CONTROL_PORT_9090_TCP", "tcp://10.96.0.13:9090"),
            ("SWITCHBOARD_LIMITS__MAX_CONNECTIONS", "1"),
        ],
    )
    .await;
    let mut client = TestClient::connect(&node.ws_url()).await;
    client.subscribe("news").await;
    // Its own variable applied: the node holds one connection at most.
    let (response, _) = tokio_tungstenite::connect_async(node.ws_url())
        .await
        .map_or_else(|err| (Some(err.to_string()), ()), |_| (None, ()));
    assert!(
        response.as_deref().is_some_and(|err| err.contains("503")),
        "a second connection is refused: {response:?}"
    );
}

fn kill(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// SIGTERM drains: unready at once, clients closed with a `reconnect` frame and 1012 spread
/// over the window, then exit 0.
#[tokio::test]
async fn sigterm_drains_clients_with_1012_over_the_window_and_exits_zero() {
    let mut node = BinaryNode::start(
        &[],
        &[
            ("SWITCHBOARD_SHUTDOWN__DRAIN_DELAY", "200ms"),
            ("SWITCHBOARD_SHUTDOWN__DRAIN_WINDOW", "1s"),
        ],
    )
    .await;
    let url = node.ws_url();
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut client = TestClient::connect(&url).await;
        client.subscribe("news").await;
        clients.push(client);
    }
    let started = tokio::time::Instant::now();
    kill(node.pid(), "-TERM");
    let readyz = format!("http://{}/readyz", node.control_addr);
    crate::assert_eventually!(
        reqwest::get(&readyz).await.unwrap().status() == 503,
        "unready at once"
    );
    // Each client read by its own task, so that a close is timed when it arrives.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                assert_eq!(client.recv_type("reconnect").await["reason"], "draining");
                assert_eq!(client.close_code().await, 1012);
                started.elapsed()
            })
        })
        .collect();
    let mut closes = Vec::new();
    for reader in readers {
        closes.push(reader.await.unwrap());
    }
    closes.sort();
    assert!(
        closes[closes.len() - 1] - closes[0] >= Duration::from_millis(300),
        "closes are paced: {closes:?}"
    );
    let exit = tokio::time::timeout(patience(Duration::from_secs(5)), node.child.wait())
        .await
        .expect("exits once every client is closed")
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    assert!(tokio_tungstenite::connect_async(&url).await.is_err());
}

/// `switchboard probe` (the Dockerfile's HEALTHCHECK) and `switchboard drain` (the
/// Kubernetes preStop hook) talk to the local node's control API.
#[tokio::test]
async fn probe_and_drain_subcommands_reach_the_local_node() {
    let node = BinaryNode::start(&[], &[("SWITCHBOARD_SHUTDOWN__DRAIN_DELAY", "30s")]).await;
    let control = node.control_addr.to_string();
    let probe = |path: &'static str| {
        let control = control.clone();
        async move {
            tokio::process::Command::new(BIN)
                .args(["--control", &control, "probe", path])
                .output()
                .await
                .unwrap()
        }
    };
    let ready = probe("/readyz").await;
    assert!(ready.status.success(), "{ready:?}");
    assert!(String::from_utf8_lossy(&ready.stdout).contains("\"ready\":true"));
    let drain = tokio::process::Command::new(BIN)
        .args(["--control", &control, "drain"])
        .output()
        .await
        .unwrap();
    assert!(drain.status.success(), "{drain:?}");
    assert!(String::from_utf8_lossy(&drain.stdout).contains("\"state\":\"announcing\""));
    // Draining: unready, still alive; a second drain request is fine (one runs).
    assert!(!probe("/readyz").await.status.success());
    assert!(probe("/healthz").await.status.success());
    let again = tokio::process::Command::new(BIN)
        .args(["--control", &control, "drain"])
        .output()
        .await
        .unwrap();
    assert!(again.status.success(), "{again:?}");
    // A path that would break the request line is refused before anything is sent.
    let injected = tokio::process::Command::new(BIN)
        .args(["--control", &control, "probe", "/readyz HTTP/1.1\r\nX: y"])
        .output()
        .await
        .unwrap();
    assert_eq!(injected.status.code(), Some(64), "{injected:?}");
    // Nobody listening: a clear failure.
    let nobody = tokio::process::Command::new(BIN)
        .args(["--control", "127.0.0.1:1", "probe"])
        .output()
        .await
        .unwrap();
    assert!(!nobody.status.success());
}

/// A second SIGTERM during a drain stops at once: the clients left get 1001.
#[tokio::test]
async fn a_second_sigterm_stops_at_once() {
    let mut node = BinaryNode::start(&[], &[("SWITCHBOARD_SHUTDOWN__DRAIN_DELAY", "30s")]).await;
    let mut client = TestClient::connect(&node.ws_url()).await;
    client.subscribe("news").await;
    kill(node.pid(), "-TERM");
    let readyz = format!("http://{}/readyz", node.control_addr);
    crate::assert_eventually!(
        reqwest::get(&readyz).await.unwrap().status() == 503,
        "unready at once"
    );
    kill(node.pid(), "-TERM");
    assert_eq!(client.close_code().await, 1001);
    let exit = tokio::time::timeout(patience(Duration::from_secs(5)), node.child.wait())
        .await
        .expect("exits at once")
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}

/// Out of file descriptors: a warning at start, new connections answered 503 instead of
/// left waiting, `/readyz` unready and the failures counted while it lasts, a bystander
/// untouched, and ready again once descriptors are free.
#[tokio::test]
async fn out_of_file_descriptors_is_visible_and_answered() {
    let node = BinaryNode::start_with_file_limit(64, &[], &[]).await;
    let url = node.ws_url();
    let control = format!("http://{}", node.control_addr);
    let mut bystander = TestClient::connect(&url).await;
    bystander.subscribe("news").await;
    // A scrape before: reading /proc needs descriptors too, so while none is free the
    // process metrics keep their last values.
    reqwest::get(format!("{control}/metrics")).await.unwrap();
    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..80 {
        match tokio::time::timeout(
            Duration::from_secs(3),
            tokio_tungstenite::connect_async(&url),
        )
        .await
        {
            Ok(Ok((ws, _))) => held.push(ws),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                refused = Some(response.status().as_u16());
                break;
            }
            Ok(Err(err)) => panic!("a refused connection gets an HTTP answer: {err}"),
            Err(_) => panic!("a connection beyond the file limit hangs"),
        }
    }
    assert_eq!(refused, Some(503), "held {} connections", held.len());
    let body = get_text(&format!("{control}/readyz")).await;
    assert!(body.contains("accept failing"), "{body}");
    let metrics = get_text(&format!("{control}/metrics")).await;
    assert!(
        metrics.contains("switchboard_accept_errors_total{listener=\"ws\",error=\"emfile\"}"),
        "counted"
    );
    assert!(metrics.contains("process_max_fds 64"), "process metrics");
    assert!(
        metrics.contains("switchboard_build_info{version="),
        "build info"
    );
    // The bystander still gets its messages.
    let published = reqwest::Client::new()
        .post(format!("{control}/v1/publish"))
        .json(&serde_json::json!({"channel": "news", "data": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 200);
    assert_eq!(bystander.recv().await["data"], 7);
    // Descriptors freed: ready again within about a second.
    drop(held);
    crate::assert_eventually!(
        reqwest::get(format!("{control}/readyz"))
            .await
            .unwrap()
            .status()
            == 200,
        "ready again once accepts succeed"
    );
    TestClient::connect(&url).await.subscribe("news").await;
    // Counting open descriptors needs one (to list /proc/self/fd): read now.
    let metrics = get_text(&format!("{control}/metrics")).await;
    assert!(metrics.contains("process_open_fds "), "process metrics");
    let log = node.log().await;
    assert!(
        log.contains("open-file limit is below limits.max_connections"),
        "warned at start: {log}"
    );
    let accept_warnings = log.matches("Accept failed").count();
    assert!(
        (1..=8).contains(&accept_warnings),
        "logged at most once a second, not every retry: {accept_warnings}"
    );
}

/// The body of a GET.
async fn get_text(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// The names of a process's threads, from /proc.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

/// `server.worker_threads` sizes the sessions' runtime; the control API has its own thread
/// beside it, and a publish to a channel bigger than an inline round still arrives.
#[tokio::test]
async fn worker_threads_size_the_runtime_and_the_control_api_has_its_own_thread() {
    let node = BinaryNode::start(&[], &[("SWITCHBOARD_SERVER__WORKER_THREADS", "1")]).await;
    let names = thread_names(node.pid());
    let workers = names
        .iter()
        .filter(|name| *name == "tokio-rt-worker")
        .count();
    assert_eq!(workers, 1, "{names:?}");
    assert!(
        names.iter().any(|name| name == "switchboard-con"),
        "{names:?}"
    );
    // 80 subscribers: the round runs as a task on the one worker.
    let mut clients = Vec::new();
    for _ in 0..80 {
        let mut client = TestClient::connect(&node.ws_url()).await;
        client.subscribe("wide").await;
        clients.push(client);
    }
    let status = reqwest::Client::new()
        .post(format!("http://{}/v1/publish", node.control_addr))
        .json(&serde_json::json!({"channel": "wide", "data": 1}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    for client in &mut clients {
        assert_eq!(client.recv().await["data"], 1);
    }
}

/// A node process of a cluster, killed on drop.
struct NodeProcess {
    node: BinaryNode,
    ws_url: String,
    control: String,
}

impl NodeProcess {
    async fn start(redis_url: &str, node_id: &str) -> NodeProcess {
        let node = BinaryNode::start(
            &["--redis", redis_url, "--node-id", node_id],
            &[("SWITCHBOARD_CLUSTER__PARTITIONS", "4")],
        )
        .await;
        NodeProcess {
            ws_url: node.ws_url(),
            control: format!("http://{}", node.control_addr),
            node,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_node_resume_on_another_without_loss() {
    let redis = crate::redis_server::RedisServer::start(false);
    let mut doomed = NodeProcess::start(&redis.url(), "doomed").await;
    let survivor = NodeProcess::start(&redis.url(), "survivor").await;
    let mut client = TestClient::connect(&doomed.ws_url).await;
    client.subscribe("ticker").await;

    // A steady publisher on the surviving node for the whole test.
    let publish_url = format!("{}/v1/publish", survivor.control);
    let publisher = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut acked = Vec::new();
        for n in 0..150 {
            let response = http
                .post(&publish_url)
                .json(&serde_json::json!({"channel": "ticker", "data": n}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let body: serde_json::Value = response.json().await.unwrap();
            acked.push(body["offset"].as_str().unwrap().to_owned());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        acked
    });

    let mut seen = Vec::new();
    for _ in 0..30 {
        seen.push(
            client.recv_type("message").await["offset"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    doomed.node.child.start_kill().unwrap();
    doomed.node.child.wait().await.unwrap();
    assert_eq!(client.closed().await, crate::harness::Closed::NoCloseFrame);

    let mut client = TestClient::connect(&survivor.ws_url).await;
    let reply = client.subscribe_since("ticker", seen.last().unwrap()).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let acked = publisher.await.unwrap();
    while seen.len() < acked.len() {
        seen.push(
            client.recv_type("message").await["offset"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(
        seen, acked,
        "every acknowledged message once, in order, across the move"
    );
}

/// `switchboard probe` and `switchboard drain` (the image's HEALTHCHECK, the Kubernetes
/// preStop hook) in the production layout: the control API on a private address (here
/// 127.0.0.2, not the loopback 127.0.0.1 they used to assume) with `[control.tls]`. They
/// read the address from `control.listen` and speak HTTPS trusting exactly the configured
/// certificate: a node presenting another certificate is refused.
#[tokio::test]
async fn probe_and_drain_reach_a_private_https_control_api() {
    let dir = crate::tls::CertDir::new("sb-probe-tls");
    dir.certificate();
    let port = crate::harness::free_port();
    let config = dir.path("node.toml");
    std::fs::write(
        &config,
        format!(
            "[control]\nlisten = \"127.0.0.2:{port}\"\napi_keys = [\"probe-key-0123456789\"]\n\
             [control.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            dir.path("cert.pem"),
            dir.path("key.pem")
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_switchboard");
    let mut node = tokio::process::Command::new(bin)
        .args([
            "--config",
            &config,
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "warn",
        ])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let run = |command: &'static str, config: String| async move {
        tokio::process::Command::new(bin)
            .args([command, "--config", &config])
            .output()
            .await
            .unwrap()
    };
    crate::assert_eventually!(
        run("probe", config.clone()).await.status.success(),
        "probe answers over HTTPS on 127.0.0.2"
    );
    let ready = run("probe", config.clone()).await;
    assert!(
        String::from_utf8_lossy(&ready.stdout).contains("\"ready\":true"),
        "{ready:?}"
    );

    // Another certificate in the probe's configuration: the node's is not trusted.
    let other = crate::tls::CertDir::new("sb-probe-tls-other");
    other.certificate();
    let wrong = other.path("node.toml");
    std::fs::write(
        &wrong,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace(&dir.path("cert.pem"), &other.path("cert.pem"))
            .replace(&dir.path("key.pem"), &other.path("key.pem")),
    )
    .unwrap();
    let refused = run("probe", wrong).await;
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("certificate"),
        "{refused:?}"
    );

    let drained = run("drain", config.clone()).await;
    assert!(drained.status.success(), "{drained:?}");
    let exit = tokio::time::timeout(
        crate::harness::patience(std::time::Duration::from_secs(10)),
        node.wait(),
    )
    .await
    .expect("the drained node exits")
    .unwrap();
    assert_eq!(exit.code(), Some(0));
}
