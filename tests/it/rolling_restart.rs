//! A rolling restart behind a real HAProxy (`deploy/haproxy/haproxy.cfg`), three nodes and
//! a real Redis: clients connect through HAProxy and subscribe, a backend publishes at a
//! steady rate throughout, and each node is drained (SIGTERM) and restarted in turn. Every
//! client must end with every acknowledged message exactly once and in order, resuming with
//! `since` after each `reconnect`, and the reconnects must arrive paced as the drain window
//! implies, not all at once.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    harness::{BinaryNode, free_port, patience},
    redis_server::RedisServer,
};

const CLIENTS: usize = 90;
const DRAIN_DELAY: &str = "2s";
const DRAIN_WINDOW: Duration = Duration::from_secs(4);
const PUBLISH_EVERY: Duration = Duration::from_millis(40);

/// HAProxy started by the test on a loopback port, with the reference configuration, its
/// `bind` and `server` lines pointed at the test's nodes. Killed on drop.
struct Haproxy {
    child: std::process::Child,
    addr: SocketAddr,
    /// Its stats socket.
    stats: std::path::PathBuf,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Haproxy {
    fn start(nodes: &[(SocketAddr, SocketAddr)]) -> Haproxy {
        let reference = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/haproxy/haproxy.cfg"
        ))
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut config = String::new();
        let mut servers_written = false;
        let dir =
            std::env::temp_dir().join(format!("sb-haproxy-{}-{}", std::process::id(), addr.port()));
        std::fs::create_dir_all(&dir).unwrap();
        let stats = dir.join("stats.sock");
        for line in reference.lines() {
            let trimmed = line.trim_start();
            if trimmed == "global" {
                // The test reads the servers' health from here (`Haproxy::wait_up`).
                config.push_str(&format!("global\n    stats socket {}\n", stats.display()));
            } else if trimmed.starts_with("bind ") {
                config.push_str(&format!("    bind {addr}\n"));
            } else if trimmed.starts_with("server ") {
                if !servers_written {
                    for (index, (ws, control)) in nodes.iter().enumerate() {
                        config.push_str(&format!(
                            "    server node{} {ws} check port {}\n",
                            index + 1,
                            control.port()
                        ));
                    }
                    servers_written = true;
                }
            } else {
                config.push_str(line);
                config.push('\n');
            }
        }
        assert!(servers_written, "the reference config has server lines");
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        // The reference's own maxconn (its default, with HAPROXY_MAXCONN unset): it must start
        // where one process may open only 20,000 files, as here.
        let child = std::process::Command::new("haproxy")
            .env_remove("HAPROXY_MAXCONN")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("haproxy must be installed (tests/run.sh installs it: apt-get install haproxy): {err}")
            });
        Haproxy {
            child,
            addr,
            stats,
            _dir: tempdir::Dir(dir),
        }
    }

    /// The servers HAProxy's health checks mark `UP` now (its stats socket's `show stat`).
    async fn servers_up(&self) -> usize {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let Ok(mut socket) = tokio::net::UnixStream::connect(&self.stats).await else {
            return 0; // not listening yet
        };
        let mut csv = String::new();
        if socket.write_all(b"show stat\n").await.is_err()
            || socket.read_to_string(&mut csv).await.is_err()
        {
            return 0;
        }
        // # pxname,svname,...: the status is the 18th field.
        csv.lines()
            .map(|line| line.split(',').collect::<Vec<_>>())
            .filter(|fields| fields.len() > 17 && fields[1].starts_with("node"))
            .filter(|fields| fields[17] == "UP")
            .count()
    }

    /// Waits until HAProxy has marked `up` servers up (after `rise` checks).
    async fn wait_up(&self, up: usize) {
        crate::assert_eventually!(
            self.servers_up().await == up,
            "HAProxy marks {up} servers up ({} now)",
            self.servers_up().await
        );
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    data: Vec<u64>,
    /// Whether its first subscribe was answered.
    subscribed: bool,
    /// When it reconnected after a `reconnect` frame or a close.
    reconnects: Vec<Instant>,
}

/// A client as an application would write one: connect through the load balancer,
/// subscribe (with `since` after the first time), read; on `reconnect` wait `after_ms`, on
/// any close or refusal retry shortly; stop when `stop` is set.
async fn client(url: String, seen: Arc<Mutex<Seen>>, stop: Arc<std::sync::atomic::AtomicBool>) {
    let mut last_offset: Option<String> = None;
    let mut first = true;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let Ok(Ok((mut ws, _))) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(&url),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if !first {
            seen.lock().unwrap().reconnects.push(Instant::now());
        }
        first = false;
        let mut subscribe = json!({"type": "subscribe", "id": 1, "channel": "ticker"});
        if let Some(offset) = &last_offset {
            subscribe["since"] = json!(offset);
        }
        if ws.send(Message::text(subscribe.to_string())).await.is_err() {
            continue;
        }
        let mut wait = Duration::from_millis(50);
        loop {
            let next = tokio::time::timeout(Duration::from_millis(500), ws.next()).await;
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            let Ok(next) = next else { continue };
            let Some(Ok(Message::Text(text))) = next else {
                if matches!(next, Some(Ok(Message::Ping(_) | Message::Pong(_)))) {
                    continue;
                }
                break;
            };
            let frame: Value = serde_json::from_str(&text).unwrap();
            match frame["type"].as_str() {
                Some("message") => {
                    seen.lock()
                        .unwrap()
                        .data
                        .push(frame["data"].as_u64().unwrap());
                    last_offset = frame["offset"].as_str().map(str::to_owned);
                }
                Some("subscribed") if last_offset.is_none() => {
                    last_offset = frame["offset"].as_str().map(str::to_owned);
                    seen.lock().unwrap().subscribed = true;
                }
                Some("subscribed") => {
                    assert_eq!(frame["recovered"], true, "resumed without a gap: {frame}");
                }
                Some("reconnect") => {
                    wait = Duration::from_millis(frame["after_ms"].as_u64().unwrap());
                }
                _ => {}
            }
        }
        tokio::time::sleep(wait).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_through_haproxy_loses_nothing_and_paces_reconnects() {
    let redis = RedisServer::start(false);
    let redis_url = redis.url();
    let window = format!("{}s", DRAIN_WINDOW.as_secs());
    let env = [
        ("SWITCHBOARD_SHUTDOWN__DRAIN_DELAY", DRAIN_DELAY),
        ("SWITCHBOARD_SHUTDOWN__DRAIN_WINDOW", window.as_str()),
    ];
    let addrs: Vec<(SocketAddr, SocketAddr)> = (0..3)
        .map(|_| {
            (
                format!("127.0.0.1:{}", free_port()).parse().unwrap(),
                format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            )
        })
        .collect();
    let mut nodes = Vec::new();
    for (ws, control) in &addrs {
        nodes.push(BinaryNode::start_at(*ws, *control, &["--redis", &redis_url], &env).await);
    }
    let haproxy = Haproxy::start(&addrs);
    let url = format!("ws://{}/ws", haproxy.addr);
    // HAProxy marks the nodes up after `rise` checks.
    haproxy.wait_up(addrs.len()).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen: Vec<Arc<Mutex<Seen>>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let clients: Vec<_> = seen
        .iter()
        .map(|seen| tokio::spawn(client(url.clone(), Arc::clone(seen), Arc::clone(&stop))))
        .collect();
    // Everyone subscribed before the first publish.
    crate::assert_eventually!(
        seen.iter().all(|seen| seen.lock().unwrap().subscribed),
        "every client subscribed through HAProxy"
    );

    // The backend: publishes n = 0, 1, 2 ... to whichever node answers, a message every
    // PUBLISH_EVERY; a refused publish is retried on the next node with the same n.
    let acknowledged = Arc::new(Mutex::new(Vec::<u64>::new()));
    let publishing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let publisher = {
        let controls: Vec<String> = addrs
            .iter()
            .map(|(_, control)| format!("http://{control}/v1/publish"))
            .collect();
        let acknowledged = Arc::clone(&acknowledged);
        let publishing = Arc::clone(&publishing);
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap();
            let mut n = 0_u64;
            let mut node = 0;
            while publishing.load(std::sync::atomic::Ordering::Relaxed) {
                let sent = http
                    .post(&controls[node % controls.len()])
                    .json(&json!({"channel": "ticker", "data": n}))
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status() == 200 => {
                        acknowledged.lock().unwrap().push(n);
                        n += 1;
                        tokio::time::sleep(PUBLISH_EVERY).await;
                    }
                    // Connection refused (the node is restarting) or 503: not published.
                    Ok(response) => {
                        assert_eq!(response.status(), 503, "a publish is 200 or 503");
                        node += 1;
                    }
                    Err(err) => {
                        assert!(err.is_connect(), "refused, not lost: {err}");
                        node += 1;
                    }
                }
            }
        })
    };
    // Traffic flows to every client before the first drain.
    crate::assert_eventually!(
        seen.iter()
            .all(|seen| !seen.lock().unwrap().data.is_empty()),
        "every client receives the publisher's messages"
    );

    // Drain and restart each node in turn.
    let mut drains = Vec::new();
    for index in 0..nodes.len() {
        let (ws, control) = addrs[index];
        let stats: Value = reqwest::get(format!("http://{control}/v1/stats"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let on_node = stats["connections"].as_u64().unwrap();
        let started = Instant::now();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &nodes[index].pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit =
            tokio::time::timeout(patience(Duration::from_secs(20)), nodes[index].child.wait())
                .await
                .expect("the node exits once drained")
                .unwrap();
        assert_eq!(exit.code(), Some(0));
        let drained_in = started.elapsed();
        nodes[index] = BinaryNode::start_at(ws, control, &["--redis", &redis_url], &env).await;
        drains.push((index, on_node, started, drained_in));
        // HAProxy sees it up again after `rise` checks.
        haproxy.wait_up(addrs.len()).await;
    }
    publishing.store(false, std::sync::atomic::Ordering::Relaxed);
    publisher.await.unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 300,
        "published throughout: {}",
        acknowledged.len()
    );
    let last = *acknowledged.last().unwrap();
    crate::assert_eventually!(
        seen.iter()
            .all(|seen| seen.lock().unwrap().data.last() == Some(&last)),
        "every client gets the last message"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }

    // Exactly once and in order: each client has every acknowledged message.
    let mut reconnect_times = Vec::new();
    for (index, seen) in seen.iter().enumerate() {
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.data, acknowledged,
            "client {index}: every message once, in order"
        );
        reconnect_times.extend(seen.reconnects.iter().copied());
    }
    // Reconnects per second during each drain, against what its window implies.
    let mut report = Vec::new();
    for (index, on_node, started, drained_in) in &drains {
        let mut per_second: BTreeMap<u64, u64> = BTreeMap::new();
        for at in &reconnect_times {
            if *at >= *started && *at < *started + *drained_in + Duration::from_secs(2) {
                *per_second
                    .entry(at.duration_since(*started).as_secs())
                    .or_default() += 1;
            }
        }
        let peak = per_second.values().copied().max().unwrap_or(0);
        // Evenly paced: on_node / window per second; a second can hold one slot more at
        // each end and the after_ms jitter, so allow twice that plus two.
        let implied = *on_node as f64 / DRAIN_WINDOW.as_secs_f64();
        let bound = (2.0 * implied + 2.0).ceil() as u64;
        report.push(format!(
            "node{}: {on_node} connections, drained and exited in {:.1} s, peak {peak} reconnects/s (window implies {implied:.1}/s, bound {bound})",
            index + 1,
            drained_in.as_secs_f64()
        ));
        assert!(
            peak <= bound,
            "reconnects paced by the window: {per_second:?} ({on_node} on the node)"
        );
        assert!(*on_node > 0, "the node had clients to drain");
    }
    println!(
        "rolling restart: {CLIENTS} clients, {} messages acknowledged, 0 lost or duplicated\n{}",
        acknowledged.len(),
        report.join("\n")
    );
    drop(haproxy);
}
