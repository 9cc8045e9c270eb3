//! Test harness: an in-process server on free loopback ports, a thin WebSocket client, an HTTP
//! helper for the control API, and `assert_eventually!`.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use switchboard::{app, config::Config};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, protocol::CloseFrame},
};

/// How long a test waits for one expected frame before failing (times [`patience`]).
const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// `usual` stretched by `SWITCHBOARD_TEST_PATIENCE` (a factor of at least 1, default 1; say
/// 3 on a slow or loaded machine): how long a test waits for something, or allows something
/// to take, that takes at most `usual` here. Every wait and every upper bound on elapsed
/// time in these tests goes through it.
pub fn patience(usual: Duration) -> Duration {
    static FACTOR: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let factor = *FACTOR.get_or_init(|| match std::env::var("SWITCHBOARD_TEST_PATIENCE") {
        Err(_) => 1.0,
        Ok(text) => text
            .parse::<f64>()
            .ok()
            .filter(|factor| factor.is_finite() && *factor >= 1.0)
            .unwrap_or_else(|| {
                panic!("SWITCHBOARD_TEST_PATIENCE must be a number of at least 1, not {text:?}")
            }),
    });
    usual.mul_f64(factor)
}

/// How long a test waits for one expected frame.
pub fn recv_timeout() -> Duration {
    patience(RECV_TIMEOUT)
}

/// Polls a condition until it holds or 10 s (times [`patience`]) pass.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $($msg:tt)+) => {{
        let deadline = tokio::time::Instant::now()
            + $crate::harness::patience(std::time::Duration::from_secs(10));
        loop {
            if $cond {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                panic!($($msg)+);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }};
}

pub struct TestServerBuilder {
    config: Config,
    /// The CA (PEM) the HTTP client trusts for `control.tls`.
    control_ca: Option<String>,
}

impl TestServerBuilder {
    pub fn shards(mut self, shards: usize) -> Self {
        self.config.server.shards = shards;
        self
    }

    /// Clusters the server through this Redis, with few partitions to keep tests light.
    pub fn redis(mut self, url: &str) -> Self {
        self.config.cluster.redis = switchboard::config::RedisTarget::Url(url.to_owned());
        self.config.cluster.partitions = 4;
        self.config.cluster.publish_timeout = Duration::from_secs(1);
        self
    }

    pub fn configure(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(&mut self.config);
        self
    }

    /// Serves the control API over HTTPS with this certificate (PEM files), and has the
    /// harness's HTTP client trust `ca` (PEM) for it.
    pub fn control_tls(mut self, cert_file: &str, key_file: &str, ca: &str) -> Self {
        self.config.control.tls.cert_file = cert_file.to_owned();
        self.config.control.tls.key_file = key_file.to_owned();
        self.control_ca = Some(ca.to_owned());
        self
    }

    pub async fn start(self) -> TestServer {
        let server = self.start_unready().await;
        // Ready means listening and, when clustered, following every bus partition.
        crate::assert_eventually!(server.get("/readyz").await.0 == 200, "server becomes ready");
        server
    }

    /// Starts the server without waiting for it to become ready (for tests of a node that
    /// cannot).
    pub async fn start_unready(self) -> TestServer {
        let config = self.config.validate().expect("test config is valid");
        let running = app::start(config).await.expect("server starts");
        let (http, control_scheme) = match &self.control_ca {
            None => (reqwest::Client::new(), "http"),
            Some(ca) => (
                reqwest::Client::builder()
                    .tls_built_in_root_certs(false)
                    .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
                    .build()
                    .unwrap(),
                "https",
            ),
        };
        TestServer {
            ws_addr: running.ws_addr(),
            control_addr: running.control_addr(),
            control_scheme,
            running: Some(running),
            http,
        }
    }
}

/// A server running in this process on `127.0.0.1:0` ports.
pub struct TestServer {
    pub ws_addr: SocketAddr,
    pub control_addr: SocketAddr,
    /// `http`, or `https` with `control.tls`.
    control_scheme: &'static str,
    running: Option<app::Running>,
    pub http: reqwest::Client,
}

impl TestServer {
    pub fn builder() -> TestServerBuilder {
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.control.listen = "127.0.0.1:0".parse().unwrap();
        config.server.shards = 4;
        config.shutdown.grace = Duration::from_secs(2);
        // Most tests publish from clients; the namespaces' own tests set their own.
        config.namespaces = vec![switchboard::config::NamespaceConfig {
            pattern: "*".to_owned(),
            subscribe: switchboard::config::Rule::Anonymous,
            publish: switchboard::config::Rule::Anonymous,
            history: switchboard::config::Rule::Anonymous,
            presence: switchboard::config::Rule::None,
            join_leave: false,
            edit: switchboard::config::EditRule::Own,
            history_size: None,
            history_ttl: None,
            slow_consumer: switchboard::config::SlowConsumer::Disconnect,
            conflate_key: None,
            queue_bytes: None,
        }];
        TestServerBuilder {
            config,
            control_ca: None,
        }
    }

    pub async fn start() -> TestServer {
        Self::builder().start().await
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.ws_addr)
    }

    pub fn control_url(&self, path: &str) -> String {
        // With TLS, the name the test certificates are made for.
        match self.control_scheme {
            "https" => format!("https://localhost:{}{path}", self.control_addr.port()),
            _ => format!("http://{}{path}", self.control_addr),
        }
    }

    pub fn hub(&self) -> &switchboard::hub::HubHandle {
        self.running.as_ref().expect("server is running").hub()
    }

    pub async fn client(&self) -> TestClient {
        TestClient::connect(&self.ws_url()).await
    }

    /// POST JSON to the control API; returns status and JSON body.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send_json(reqwest::Method::POST, path, body).await
    }

    /// DELETE with a JSON body; returns status and JSON body.
    pub async fn delete(&self, path: &str, body: Value) -> (u16, Value) {
        self.send_json(reqwest::Method::DELETE, path, body).await
    }

    async fn send_json(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .request(method, self.control_url(path))
            .json(&body)
            .send()
            .await
            .expect("control API answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(self.control_url(path))
            .send()
            .await
            .expect("control API answers");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let (status, text) = self.get(path).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Publishes through the control API and returns the offset.
    pub async fn publish(&self, channel: &str, data: Value) -> String {
        let (status, body) = self
            .post("/v1/publish", json!({"channel": channel, "data": data}))
            .await;
        assert_eq!(status, 200, "publish failed: {body}");
        body["offset"].as_str().expect("offset").to_owned()
    }

    /// The value of one Prometheus sample line (`name{labels}`), or 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Reloads the listener's TLS certificate, as SIGHUP does.
    pub fn reload_tls(&self) -> bool {
        self.running
            .as_ref()
            .expect("server is running")
            .reload_tls()
    }

    /// The server's drains, as `/v1/drain` and SIGTERM drive them.
    pub fn drainer(&self) -> switchboard::drain::Drainer {
        self.running
            .as_ref()
            .expect("server is running")
            .drainer()
            .clone()
    }

    /// Stops the server: what a finished drain, or a second SIGTERM, leads to.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client that speaks protocol v1 as JSON values.
pub struct TestClient {
    pub ws: Ws,
    pub welcome: Value,
}

/// What ended a connection, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    Code(u16, String),
    /// The stream ended without a close frame.
    NoCloseFrame,
}

impl TestClient {
    pub async fn connect(url: &str) -> TestClient {
        Self::connect_request(url).await
    }

    /// Connects with a request of its own (headers: cookies, a user agent) and reads the
    /// `welcome`.
    pub async fn connect_request(
        request: impl tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
    ) -> TestClient {
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("connects");
        Self::after_handshake(ws).await
    }

    /// Connects with a tiny kernel receive buffer, for slow-consumer tests.
    pub async fn connect_with_small_buffer(addr: SocketAddr, path: &str) -> TestClient {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(
            format!("ws://{addr}{path}"),
            MaybeTlsStream::Plain(stream),
        )
        .await
        .expect("connects");
        Self::after_handshake(ws).await
    }

    async fn after_handshake(ws: Ws) -> TestClient {
        let mut client = TestClient {
            ws,
            welcome: Value::Null,
        };
        client.welcome = client.recv().await;
        assert_eq!(client.welcome["type"], "welcome", "{}", client.welcome);
        client
    }

    pub fn conn_id(&self) -> u64 {
        self.welcome["conn_id"].as_u64().unwrap()
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("sends");
    }

    /// The next text frame as JSON; panics on timeout, close or anything else.
    pub async fn recv(&mut self) -> Value {
        self.recv_within(recv_timeout()).await
    }

    /// As [`TestClient::recv`], waiting up to `patience`.
    pub async fn recv_within(&mut self, patience: Duration) -> Value {
        loop {
            let next = tokio::time::timeout(patience, self.ws.next())
                .await
                .expect("a frame arrives in time");
            match next {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(&text).expect("server frames are JSON");
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next text frame as JSON, or `None` when none comes within `patience`; panics on
    /// close or anything else.
    pub async fn try_recv_within(&mut self, patience: Duration) -> Option<Value> {
        loop {
            match tokio::time::timeout(patience, self.ws.next()).await.ok()? {
                Some(Ok(Message::Text(text))) => {
                    return Some(serde_json::from_str(&text).expect("server frames are JSON"));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Receives until a frame of `kind` arrives; returns it.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        self.send(json!({"type": "subscribe", "id": 1, "channel": channel}))
            .await;
        let reply = self.recv().await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        reply
    }

    pub async fn subscribe_since(&mut self, channel: &str, since: &str) -> Value {
        self.send(json!({"type": "subscribe", "id": 1, "channel": channel, "since": since}))
            .await;
        let reply = self.recv().await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        reply
    }

    /// Reads until the connection ends; returns the close code seen.
    pub async fn closed(&mut self) -> Closed {
        loop {
            let next = tokio::time::timeout(recv_timeout(), self.ws.next())
                .await
                .expect("the connection ends in time");
            match next {
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    return Closed::Code(code.into(), reason.to_string());
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                    return Closed::NoCloseFrame;
                }
                Some(Ok(_)) => {}
            }
        }
    }

    pub async fn close_code(&mut self) -> u16 {
        match self.closed().await {
            Closed::Code(code, _) => code,
            Closed::NoCloseFrame => panic!("the server closed without a close frame"),
        }
    }
}

/// The real binary serving on free loopback ports, from the repository root (so the shipped
/// `config/switchboard.toml` applies), killed when dropped.
pub struct BinaryNode {
    pub child: tokio::process::Child,
    pub ws_addr: SocketAddr,
    pub control_addr: SocketAddr,
}

impl BinaryNode {
    /// Starts `switchboard` with `args` after its listen flags and with `env`, at log level
    /// warn, and waits until its control API answers `/readyz` with 200.
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> BinaryNode {
        Self::start_with(None, false, None, args, env).await
    }

    /// As [`BinaryNode::start`], on these addresses (a node restarted where a load
    /// balancer expects it).
    pub async fn start_at(
        ws_addr: SocketAddr,
        control_addr: SocketAddr,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> BinaryNode {
        Self::start_with(None, false, Some((ws_addr, control_addr)), args, env).await
    }

    /// A clustered node with `config` (written to a file of its own for the start), on the
    /// Redis at `redis_url` under `node_id`, at `addrs` when given (a node restarted where
    /// clients expect it), with `env`.
    pub async fn start_configured(
        config: &switchboard::config::Config,
        redis_url: &str,
        node_id: &str,
        addrs: Option<(SocketAddr, SocketAddr)>,
        env: &[(&str, &str)],
    ) -> BinaryNode {
        let path = std::env::temp_dir().join(format!(
            "sb-node-{}-{}-{node_id}.toml",
            std::process::id(),
            free_port()
        ));
        std::fs::write(&path, toml::to_string(config).unwrap()).unwrap();
        let args = [
            "--config",
            path.to_str().unwrap(),
            "--redis",
            redis_url,
            "--node-id",
            node_id,
        ];
        let node = match addrs {
            None => Self::start(&args, env).await,
            Some((ws, control)) => Self::start_at(ws, control, &args, env).await,
        };
        let _ = std::fs::remove_file(&path);
        node
    }

    /// As [`BinaryNode::start`], with its log (stdout) kept for [`BinaryNode::log`].
    pub async fn start_logged(args: &[&str], env: &[(&str, &str)]) -> BinaryNode {
        Self::start_with(None, true, None, args, env).await
    }

    /// As [`BinaryNode::start`], under `prlimit --nofile=N:N` (soft and hard limit on open
    /// files), with its log (stdout) kept for [`BinaryNode::log`].
    pub async fn start_with_file_limit(
        files: u64,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> BinaryNode {
        Self::start_with(Some(files), true, None, args, env).await
    }

    async fn start_with(
        files: Option<u64>,
        keep_log: bool,
        addrs: Option<(SocketAddr, SocketAddr)>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> BinaryNode {
        let (ws_addr, control_addr) = addrs.unwrap_or_else(|| {
            (
                format!("127.0.0.1:{}", free_port()).parse().unwrap(),
                format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            )
        });
        let binary = env!("CARGO_BIN_EXE_switchboard");
        let mut command = match files {
            None => tokio::process::Command::new(binary),
            Some(files) => {
                let mut command = tokio::process::Command::new("prlimit");
                command
                    .arg(format!("--nofile={files}:{files}"))
                    .arg("--")
                    .arg(binary);
                command
            }
        };
        let logs = if keep_log {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        };
        command
            .args(["--listen", &ws_addr.to_string()])
            .args(["--control", &control_addr.to_string()]);
        if !args.contains(&"--log-level") {
            command.args(["--log-level", "warn"]);
        }
        let child = command
            .args(args)
            .envs(env.iter().copied())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(logs)
            .kill_on_drop(true)
            .spawn()
            .expect("the binary starts");
        let node = BinaryNode {
            child,
            ws_addr,
            control_addr,
        };
        let http = reqwest::Client::new();
        let readyz = format!("http://{control_addr}/readyz");
        crate::assert_eventually!(
            http.get(&readyz)
                .send()
                .await
                .is_ok_and(|response| response.status() == 200),
            "the node at {ws_addr} becomes ready"
        );
        node
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.ws_addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the node is running")
    }

    /// Stops the node (SIGKILL) and returns its log (only when started with
    /// [`BinaryNode::start_logged`] or [`BinaryNode::start_with_file_limit`]).
    pub async fn log(mut self) -> String {
        let _ = self.child.start_kill();
        let output = self.child.wait_with_output().await.unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// A loopback port that was free a moment ago, for processes the tests start.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `seq` part of an offset string.
pub fn seq(offset: &Value) -> u64 {
    let text = offset.as_str().expect("offset is a string");
    text.rsplit_once('-').unwrap().1.parse().unwrap()
}

/// Publishes steadily on one node for the length of a fault and records what was
/// acknowledged and how long each answer took.
pub struct SteadyPublisher {
    stop: Arc<AtomicBool>,
    /// Publishes acknowledged so far.
    acked: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<(Vec<String>, usize, Duration)>,
}

impl SteadyPublisher {
    pub fn start(node: &TestServer, channel: &'static str) -> SteadyPublisher {
        let url = node.control_url("/v1/publish");
        let http = node.http.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let acked_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&acked_count);
        let task = tokio::spawn(async move {
            let (mut acked, mut refused, mut slowest) = (Vec::new(), 0, Duration::ZERO);
            let mut n = 0;
            while !flag.load(Ordering::Relaxed) && n < 2_000 {
                let started = tokio::time::Instant::now();
                let response = http
                    .post(&url)
                    .json(&json!({"channel": channel, "data": n}))
                    .send()
                    .await
                    .unwrap();
                slowest = slowest.max(started.elapsed());
                match response.status().as_u16() {
                    200 => {
                        let body: Value = response.json().await.unwrap();
                        acked.push(body["offset"].as_str().unwrap().to_owned());
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    503 => refused += 1,
                    other => panic!("unexpected status {other}"),
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (acked, refused, slowest)
        });
        SteadyPublisher {
            stop,
            acked: acked_count,
            task,
        }
    }

    /// Waits until `more` publishes are acknowledged after this call: publishing goes on
    /// (before a fault, or again after one).
    pub async fn wait_acked(&self, more: usize) {
        let target = self.acked.load(Ordering::Relaxed) + more;
        crate::assert_eventually!(
            self.acked.load(Ordering::Relaxed) >= target,
            "{more} more publishes acknowledged ({} of {target})",
            self.acked.load(Ordering::Relaxed)
        );
    }

    pub async fn finish(self) -> (Vec<String>, usize, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// Receives until every acknowledged offset has arrived; checks order and uniqueness.
pub async fn expect_all_acknowledged(client: &mut TestClient, acked: &[String]) {
    let wanted: BTreeSet<&str> = acked.iter().map(String::as_str).collect();
    let mut seen = BTreeSet::new();
    let mut last_seq = 0;
    let mut last_epoch = String::new();
    let deadline = tokio::time::Instant::now() + patience(Duration::from_secs(30));
    while !wanted.iter().all(|offset| seen.contains(*offset)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "acknowledged messages missing"
        );
        let message = client.recv_type("message").await;
        let offset = message["offset"].as_str().unwrap().to_owned();
        let (epoch, _) = offset.split_once('-').unwrap();
        if epoch == last_epoch {
            assert_eq!(
                seq(&message["offset"]),
                last_seq + 1,
                "gap or duplicate at {offset}"
            );
        }
        last_epoch = epoch.to_owned();
        last_seq = seq(&message["offset"]);
        assert!(seen.insert(offset), "duplicate delivery");
    }
}
