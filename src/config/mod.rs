//! Configuration: the TOML schema, its defaults, the environment overlay and validation.
//!
//! Precedence, lowest first: built-in defaults, the TOML file, `SWITCHBOARD_*` environment
//! variables, command-line flags (applied by `main`). Every struct denies unknown keys and
//! every value is validated, so a typo refuses to start with an error naming the key instead
//! of falling back to a default. Parsing is pure ([`Config::from_toml_str`]); file IO lives in
//! [`Config::load`]. This module depends on nothing else in the crate.

use std::{net::SocketAddr, path::Path, time::Duration};

use serde::{Deserialize, Serialize};

mod env;
mod hooks;
mod namespaces;
mod streams;
mod webhooks;

pub use self::hooks::{ConnectMode, HooksConfig};
pub use self::streams::StreamsConfig;
pub use self::webhooks::{WebhookConfig, WebhookEvent};

/// Prefix of the environment variables that override file settings.
pub const ENV_PREFIX: &str = "SWITCHBOARD_";

/// Why a configuration was refused. Each message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read: fix the path or its permissions.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The TOML is not well formed, or a key is unknown or has the wrong type: fix that key.
    #[error("{0}")]
    Parse(String),
    /// A `SWITCHBOARD_*` variable could not be applied: fix or unset it.
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    /// A value is well formed but out of range: fix that key.
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// The whole configuration. See `config/switchboard.toml` for every key documented.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub control: ControlConfig,
    pub log: LogConfig,
    pub limits: LimitsConfig,
    pub session: SessionConfig,
    pub history: HistoryConfig,
    pub streams: StreamsConfig,
    pub shutdown: ShutdownConfig,
    pub cluster: ClusterConfig,
    pub demo: DemoConfig,
    pub presence: PresenceConfig,
    pub auth: AuthConfig,
    /// The application backend asked at connect, subscribe, publish and for `rpc`.
    pub hooks: HooksConfig,
    /// Events POSTed to the application in signed batches (`[[webhooks]]`). Default none.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// Channel permissions; the first entry whose pattern matches a channel governs it, and a
    /// channel no entry matches is refused. Default: one `*` entry letting anyone subscribe
    /// and read history, and no client publish (backends publish through the control API).
    #[serde(default = "default_namespaces")]
    pub namespaces: Vec<NamespaceConfig>,
    /// `SWITCHBOARD_*` variables that are not in the `SWITCHBOARD_<SECTION>__<KEY>` form
    /// (Kubernetes injects `<SERVICE>_SERVICE_HOST` and the like for every Service, and a
    /// Service named `switchboard-ws` gives `SWITCHBOARD_WS_SERVICE_HOST`): ignored, and
    /// logged at debug level once logging is set up.
    #[serde(skip)]
    pub ignored_env: Vec<String>,
}

/// Who may do something with a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    /// Anyone, with or without a token.
    Anonymous,
    /// Any connection with a valid token.
    Authenticated,
    /// The connection whose token's whole `sub`, in place of the pattern's `{sub}`, gives
    /// the channel.
    Owner,
    /// A connection whose token's `channels` (`publish` for publishing) has a matching pattern.
    Claim,
    /// Nobody (backends still can, through the control API).
    None,
    /// The application backend decides, per request (`hooks.subscribe_url` for subscribe,
    /// history and presence, `hooks.publish_url` for publish; see `docs/backend.md`).
    Hook,
}

/// One `[[namespaces]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// `*`, a prefix ending in `*` (`room:*`), an exact name, or a name with `{sub}` for the
    /// token's user (`user:{sub}`, `user:{sub}:*`).
    pub pattern: String,
    pub subscribe: Rule,
    pub publish: Rule,
    /// Reading history: a subscribe with `since`, or a `history` frame.
    pub history: Rule,
    /// Reading who is subscribed: the `presence` and `presence_stats` frames. Subscribers of
    /// a namespace with `presence` other than `none`, or with `join_leave`, are tracked as
    /// members (connection, user, the token's `info`). Default `none`: not tracked.
    #[serde(default = "no_one")]
    pub presence: Rule,
    /// Send subscribers `join` and `leave` frames as members come and go (coalesced during a
    /// burst, see `[presence]`). Default false.
    #[serde(default)]
    pub join_leave: bool,
    /// Which messages a client may change (`append`, `finish`, `update`, `delete`) where
    /// `publish` lets it: `own` (those its user created; an anonymous client, those its
    /// connection created), `any`, or `none`. Backends may change any. Default `own`.
    #[serde(default)]
    pub edit: EditRule,
}

/// Which messages a client may change: a namespace's `edit`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EditRule {
    /// Those it created (its user's; an anonymous connection's own).
    #[default]
    Own,
    /// Any message of the channel.
    Any,
    /// None.
    None,
}

const fn no_one() -> Rule {
    Rule::None
}

fn default_namespaces() -> Vec<NamespaceConfig> {
    vec![NamespaceConfig {
        pattern: "*".to_owned(),
        subscribe: Rule::Anonymous,
        publish: Rule::None,
        history: Rule::Anonymous,
        presence: Rule::None,
        join_leave: false,
        edit: EditRule::Own,
    }]
}

/// Client authentication with JSON Web Tokens. Off while `keys` is empty.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Refuse connections that do not authenticate: a token in the upgrade, or an `auth` frame
    /// within `timeout`; others get `unauthorized` and close 4003. Default false.
    pub required: bool,
    /// Clock skew allowed on `exp` and `nbf`. Default 5s.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Accept the token in the upgrade URL's `?token=` (browsers cannot set headers on a
    /// WebSocket; URLs end up in access logs). Default true.
    pub token_query: bool,
    /// With `required`: time a connection without a token in its upgrade has to send `auth`.
    /// Default 10s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The `iss` tokens must carry; empty: not checked.
    pub issuer: String,
    /// The `aud` tokens must carry; empty: not checked.
    pub audience: String,
    /// Verification keys; several at once for rotation, chosen by the token's `kid`.
    pub keys: Vec<AuthKeyConfig>,
    /// A JWKS endpoint (`https://issuer/.well-known/jwks.json`) whose keys are used beside
    /// `keys`. Empty: none.
    pub jwks_url: String,
    /// How often the JWKS is fetched again. Default 5m.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// Shortest time between two fetches caused by a token with an unknown `kid`, so that
    /// clients cannot make the node hammer the endpoint. Default 10s.
    #[serde(with = "humantime_serde")]
    pub jwks_min_interval: Duration,
}

/// One verification key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthKeyConfig {
    /// The `kid` tokens signed with this key carry; empty: tokens without a `kid`.
    pub kid: String,
    /// HS256, HS384, HS512, RS256, RS384, RS512, PS256, ES256, ES384 or EdDSA.
    pub algorithm: String,
    /// The HMAC secret (HS*), at least 32 bytes.
    pub secret: String,
    /// A PEM public key file (RS*, PS256, ES*, EdDSA).
    pub public_key_file: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            required: false,
            leeway: Duration::from_secs(5),
            token_query: true,
            timeout: Duration::from_secs(10),
            issuer: String::new(),
            audience: String::new(),
            keys: Vec::new(),
            jwks_url: String::new(),
            jwks_refresh: Duration::from_secs(300),
            jwks_min_interval: Duration::from_secs(10),
        }
    }
}

const AUTH_ALGORITHMS: [&str; 10] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA",
];

/// The public WebSocket listener and the hub layout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the public WebSocket listener. Default `0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// HTTP path that upgrades to WebSocket. Default `/ws`.
    pub ws_path: String,
    /// Name of this node, sent in `welcome`. Default: empty, meaning generated at start.
    pub node_id: String,
    /// Number of hub shards, a power of two. Default 0: the smallest power of two >= 4 x cores.
    pub shards: usize,
    /// Worker threads of the runtime that runs sessions and fan-out rounds (the control API
    /// has a thread of its own beside them). Default 0: one per CPU core. At most 1024.
    pub worker_threads: usize,
    /// Origins (`scheme://host[:port]`, `*.` for subdomains, or `*` for all) whose pages may
    /// open a WebSocket; a browser upgrade from another origin gets HTTP 403. Default empty:
    /// only upgrades without an `Origin` or whose `Origin` is the requested host.
    pub allowed_origins: Vec<String>,
    /// TLS for the listener (`wss://`); off while both files are empty.
    pub tls: TlsConfig,
}

/// A certificate chain and its key, PEM. Reloaded on SIGHUP.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The certificate chain, leaf first. Empty: no TLS.
    pub cert_file: String,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
}

impl TlsConfig {
    /// Whether TLS is configured.
    #[must_use]
    pub fn is_set(&self) -> bool {
        !self.cert_file.is_empty() || !self.key_file.is_empty()
    }
}

/// The control (HTTP API) listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Address of the control listener. Default `127.0.0.1:9090`: on any other address it
    /// needs `api_keys` (or `allow_no_api_keys`).
    pub listen: SocketAddr,
    /// Accepted API keys for `/v1/*`. Default empty: only loopback clients may call `/v1/*`.
    pub api_keys: Vec<String>,
    /// Start with a control listener that is not on loopback and no `api_keys`. `/v1/*` then
    /// answers every loopback caller without a key, which is unsafe wherever something on
    /// the host forwards others' requests from loopback (a sidecar proxy, an SSH tunnel).
    /// Default false: such a configuration refuses to start.
    pub allow_no_api_keys: bool,
    /// Largest request body accepted, in bytes. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Time a request body may take to arrive once the headers are in; a slower one gets 408
    /// and the connection is closed. Default 10s. (Headers have their own 10 s.)
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// `/v1/*` requests per second per API key (all loopback callers share one bucket when
    /// no keys are configured); over it, HTTP 429 with `Retry-After`. Default 0: off. Set it
    /// so that one runaway service cannot starve the others.
    pub requests_per_second_per_key: u32,
    /// Requests one key may make at once above that rate. Default 1000.
    pub request_burst_per_key: u32,
    /// HTTPS on the control listener; off when absent.
    pub tls: TlsConfig,
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter: `error`, `warn`, `info`, `debug`, `trace` or directives such as
    /// `switchboard=debug,info`. Default `info`.
    pub level: String,
    /// `text` (human readable) or `json`. Default `text`.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Per-node and per-connection limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Connections this node accepts; further upgrades get HTTP 503. Default 1,000,000.
    pub max_connections: usize,
    /// Channels one connection may be subscribed to at once. Default 256.
    pub max_subscriptions_per_connection: usize,
    /// Longest channel name, in bytes. Default 128.
    pub max_channel_name_bytes: usize,
    /// Largest inbound WebSocket message, in bytes; larger ones close with 1009. Default 64 KiB.
    pub max_inbound_message_bytes: usize,
    /// Largest `data` of one publish, in bytes of JSON. Default 32 KiB; at most a quarter of
    /// `outbound_queue_bytes` (replays and history replies go a quarter of the queue at a
    /// time, at least one message each).
    pub max_publish_payload_bytes: usize,
    /// Outbound queue capacity per connection, in messages. Default 1024.
    pub outbound_queue_messages: usize,
    /// Outbound queue capacity per connection, in bytes. Default 1 MiB.
    pub outbound_queue_bytes: usize,
    /// Frames per second one client may send (any text frame: subscribe, publish, ping...).
    /// Over it, the frame is refused with an `error` (`rate_limited`) and the server reads
    /// nothing more from that client until a token is free. Default 200; 0: off. Raise it
    /// for clients that publish fast (load generators).
    pub client_messages_per_second: u32,
    /// Frames a client may send at once above that rate. Default 400.
    pub client_message_burst: u32,
    /// New WebSocket connections per second from one IP address; over it, the upgrade is
    /// refused with HTTP 429. Default 0: off, since behind a load balancer or NAT many
    /// clients share one address.
    pub connects_per_ip_per_second: u32,
    /// Connections one address may open at once above that rate. Default 100.
    pub connect_burst_per_ip: u32,
    /// Pings and pongs per second one client may send, beside its frame budget. Over it, the
    /// ping goes unanswered and reading pauses until a token is free. Default 10; 0: off.
    /// Browsers send none; other clients ping every few seconds at most.
    pub client_control_frames_per_second: u32,
    /// Control frames a client may send at once above that rate. Default 20.
    pub client_control_frame_burst: u32,
    /// Bytes of `data` per second one client may publish; over it the publish is refused
    /// with `rate_limited` (its subscribers never see it). Default 64 KiB; 0: off. With the
    /// frame budget alone, one client publishing 32 KB messages made a node write 890 MB in
    /// 7 s to 300 subscribers and close them all as slow consumers.
    pub client_publish_bytes_per_second: u32,
    /// Bytes a client may publish at once above that rate. Default 256 KiB; at least
    /// `max_publish_payload_bytes`.
    pub client_publish_byte_burst: u32,
    /// Bytes of `data` per second published to one channel through this node: once for all
    /// its clients together, and once for the control API (so clients cannot use up a
    /// backend's); over it the publish is refused (`rate_limited`, HTTP 429). Default 4 MiB;
    /// 0: off.
    pub channel_publish_bytes_per_second: u32,
    /// Bytes one channel may take at once above that rate. Default 16 MiB; at least
    /// `max_publish_payload_bytes`.
    pub channel_publish_byte_burst: u32,
    /// A client whose frames are still refused by one of its budgets this long after the
    /// first refusal (refusals less than a second apart) is closed with 1008. Default 10s.
    #[serde(with = "humantime_serde")]
    pub throttled_close_after: Duration,
    /// Frames one inbound message may be split into; more close with 1008. Default 64.
    pub max_fragments_per_message: u32,
    /// Time a fragmented message may take from its first frame to its last; longer closes
    /// with 1008. Default 10s.
    #[serde(with = "humantime_serde")]
    pub fragment_timeout: Duration,
    /// Connections accepted but not yet upgraded, on the whole node; more are answered 503 at
    /// once. They do not count against `max_connections`. Default 10,000.
    pub max_pending_upgrades: usize,
    /// Connections not yet upgraded from one source (an IPv4 address, or an IPv6 prefix of
    /// `ipv6_source_prefix` bits); more are answered 503. Default 1,024 (a load balancer's
    /// address carries many clients' upgrades at once).
    pub max_pending_upgrades_per_ip: usize,
    /// Bits of an IPv6 address that name its source for the per-address limits
    /// (`max_pending_upgrades_per_ip`, `connects_per_ip_per_second`): one host is usually
    /// given a whole /64. Default 64; 32 to 128 (128: every address on its own).
    pub ipv6_source_prefix: u8,
    /// Largest upgrade request head (request line and headers), in bytes; larger gets 431.
    /// Default 16 KiB.
    pub max_upgrade_request_bytes: usize,
    /// Memory in use above which new upgrades get 503 (with `Retry-After`) and `/readyz`
    /// reports `memory_pressure`, while existing connections go on; below 95% of it the node
    /// accepts again. The memory measured is the working set of the nearest cgroup with a
    /// memory limit (usage less inactive file pages: socket buffers and page cache count,
    /// as they do toward the limit), else the process's resident set; `ws_memory_used_bytes`
    /// shows it. Default 0: 90% of that cgroup's limit when there is one, else off.
    pub memory_pressure_bytes: u64,
    /// How late the node's event loop may run its tasks (`ws_event_loop_lag_seconds`: the
    /// largest lateness of a 100 ms timer over each second) before new upgrades get 503
    /// `overloaded` (with `Retry-After`) and `/readyz` reports `overloaded`, while existing
    /// connections go on; below half of it the node accepts again. A node that far behind
    /// cannot serve newcomers: accepted, they time out and retry. Default 0s: off. 50ms to
    /// 60s otherwise.
    #[serde(with = "humantime_serde")]
    pub max_event_loop_lag: Duration,
}

/// Per-connection behaviour.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// A client quiet for this long gets a WebSocket ping, and another every heartbeat while
    /// it stays quiet. Default 25s.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// A connection that sends nothing (not even a pong) for this long is closed. Default 60s.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Time allowed for the WebSocket handshake after TCP accept. Default 10s.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Time from TCP accept to the first byte of the upgrade request (or TLS handshake);
    /// a socket silent for longer is closed. Default 3s; at most `handshake_timeout`.
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// Whether clients may publish over the WebSocket. Default true.
    pub client_publish: bool,
    /// Path of an echo endpoint for WebSocket conformance testing (Autobahn), served by the
    /// same upgrade and transport as real sessions. Default empty: off. While on, inbound
    /// messages up to 32 MiB are read (real sessions still close larger than
    /// `limits.max_inbound_message_bytes` with 1009), so never enable it in production.
    pub echo_path: String,
    /// Bytes read at once when the next frame's size is not known yet. The read buffer grows
    /// to hold a larger frame, is freed whenever it is empty and shrinks back after a large
    /// message. Default 256.
    pub read_buffer_bytes: usize,
}

/// In-process message history, used for `since` resume and the history API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Messages kept per channel. 0 turns history off. Default 100.
    pub size: usize,
    /// How long a message stays in history; with Redis, also how long a channel's history
    /// stream outlives its last publish. Default 5m.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Bytes of history kept by the whole node; past it, publishes trim their channel's oldest
    /// entries first. Default 256 MiB.
    pub max_memory_bytes: usize,
}

/// Clustering over Redis Streams. Off unless `redis` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Redis to cluster through: one `redis://` (or `rediss://`, TLS) URL, or a list of
    /// Redis Cluster seed URLs. Empty (the default): single node on the in-process broker.
    #[serde(skip_serializing_if = "RedisTarget::is_unset")]
    pub redis: RedisTarget,
    /// PEM file of the CA that signed Redis's certificate, for `rediss://` with a private
    /// CA. Empty (the default): the system's trusted roots.
    pub redis_ca_file: String,
    /// Bus partitions (Redis streams every node reads). Default 16. All nodes of a cluster
    /// must agree on it.
    pub partitions: u32,
    /// Longest a publish waits for Redis before answering `unavailable`. Default 2s.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: std::time::Duration,
    /// Entries kept per bus partition stream (approximate trimming). Default 100000.
    pub bus_maxlen: u64,
    /// Age past which bus partition entries are trimmed (approximately, whole stream nodes
    /// at a time), whatever `bus_maxlen` allows: a quiet partition does not keep 100,000
    /// entries for days. A node whose reader falls further behind than this loses those
    /// messages and reports it (`ws_bus_gaps_total`), as with `bus_maxlen`. Default 10m; at
    /// least 1m (far above a reader's stall and restart windows, 5 s each). Raise it where
    /// a node may lose Redis for longer while the others go on publishing.
    #[serde(with = "humantime_serde")]
    pub bus_max_age: std::time::Duration,
    /// How long a channel's epoch and sequence (its `meta` hash, about 100 bytes plus the
    /// name) live in Redis after its last publish; its history goes after `history.ttl`.
    /// A resume at a channel's head is `recovered` for this long, and so is one from the
    /// offset a reader of a channel without state was given. Default 24h; at least
    /// `history.ttl`.
    #[serde(with = "humantime_serde")]
    pub channel_state_ttl: std::time::Duration,
    /// Whether an outage of Redis itself (shared by every node) fails `/readyz`. Default
    /// false, so a shared outage does not empty the whole pool; it is reported either way.
    pub outage_fails_readiness: bool,
    /// How messages reach the nodes: `inbox` (the default), a publish appends each message
    /// to the inboxes of the nodes that follow its channel and a node reads only its own;
    /// `log`, every node reads every partition's log (the releases before inboxes: a
    /// rolling upgrade from one runs `log` until every node is upgraded).
    pub bus_routing: BusRouting,
    /// How long a node's interest in a channel (what routes the channel's messages to its
    /// inbox) lasts in Redis without being renewed; nodes renew theirs every third of it. A
    /// node that died without stopping costs publishes to its channels one more append each
    /// for at most this long. Default 10m; 30s to 24h.
    #[serde(with = "humantime_serde")]
    pub interest_ttl: std::time::Duration,
}

/// How a cluster's messages reach the nodes (`cluster.bus_routing`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusRouting {
    /// Each node reads its own inboxes, which hold the messages of channels it follows.
    #[default]
    Inbox,
    /// Each node reads every partition's log and drops what it does not follow.
    Log,
}

/// The shortest `cluster.bus_max_age`: well above what a bus reader may trail by without
/// being restarted (stalled after 5 s, restarted at most every 5 s, reconnecting with at most
/// 2 s of backoff), so that trimming by age never outruns a working node.
const MIN_BUS_MAX_AGE: Duration = Duration::from_secs(60);

/// Where Redis is: nothing, one server, or Redis Cluster seeds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RedisTarget {
    /// No Redis: the in-process broker.
    #[default]
    #[serde(skip)]
    None,
    Url(String),
    ClusterSeeds(Vec<String>),
}

impl RedisTarget {
    /// Whether clustering is off.
    #[must_use]
    pub fn is_unset(&self) -> bool {
        !self.is_set()
    }

    /// Whether clustering is on.
    #[must_use]
    pub fn is_set(&self) -> bool {
        match self {
            RedisTarget::None => false,
            RedisTarget::Url(url) => !url.is_empty(),
            RedisTarget::ClusterSeeds(seeds) => !seeds.is_empty(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            control: ControlConfig::default(),
            log: LogConfig::default(),
            limits: LimitsConfig::default(),
            session: SessionConfig::default(),
            history: HistoryConfig::default(),
            streams: StreamsConfig::default(),
            shutdown: ShutdownConfig::default(),
            cluster: ClusterConfig::default(),
            demo: DemoConfig::default(),
            presence: PresenceConfig::default(),
            auth: AuthConfig::default(),
            hooks: HooksConfig::default(),
            webhooks: Vec::new(),
            namespaces: default_namespaces(),
            ignored_env: Vec::new(),
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis: RedisTarget::None,
            redis_ca_file: String::new(),
            partitions: 16,
            publish_timeout: Duration::from_secs(2),
            bus_maxlen: 100_000,
            bus_max_age: Duration::from_secs(600),
            channel_state_ttl: Duration::from_secs(24 * 3600),
            outage_fails_readiness: false,
            bus_routing: BusRouting::Inbox,
            interest_ttl: Duration::from_secs(600),
        }
    }
}

/// The live demo page (`src/demo`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    /// Serve the demo page at `/demo` on the WebSocket listener, publish a ticker to
    /// `demo:ticker` every second and stream a scripted assistant reply to `demo:assistant`
    /// every 15 s (not with `cluster.redis`, which does not carry message streams yet). Its
    /// chat publishes to `demo:chat` from the page, which
    /// needs a `[[namespaces]]` entry letting anonymous clients publish there
    /// (`config/demo.toml` has one). Default false.
    pub enabled: bool,
}

/// Presence and join/leave events (namespaces opt in with `presence` and `join_leave`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// Join/leave events of one channel closer together than this are sent as one `join`
    /// and one `leave` frame listing every member that came or went, at the end of the
    /// interval: a mass reconnect of N members then costs each subscriber a few frames,
    /// not N. The first event after a quiet interval goes out at once. 0 sends every event
    /// on its own. Default 200ms; at most 10s.
    #[serde(with = "humantime_serde")]
    pub coalesce: Duration,
    /// Members one `presence` frame's reply lists at most (the reply says `truncated`
    /// beyond it; the control API pages through all). Default 1000; 1 to 100000.
    pub max_listed: usize,
    /// With Redis: how long a node's members stay listed after its last refresh (it
    /// refreshes every third of this). A node that dies without deregistering disappears
    /// from presence after this at most, sooner when the node registry sees it gone (about
    /// 10s). Default 30s; 3s to 1h.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            coalesce: Duration::from_millis(200),
            max_listed: 1000,
            ttl: Duration::from_secs(30),
        }
    }
}

impl PresenceConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.coalesce > Duration::from_secs(10) {
            return Err(invalid("presence.coalesce", "must be at most 10s"));
        }
        if !(Duration::from_secs(3)..=Duration::from_secs(3600)).contains(&self.ttl) {
            return Err(invalid("presence.ttl", "must be between 3s and 1h"));
        }
        if !(1..=100_000).contains(&self.max_listed) {
            return Err(invalid(
                "presence.max_listed",
                "must be between 1 and 100000",
            ));
        }
        Ok(())
    }
}

/// Process shutdown.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// After a drain's deadline (or a second SIGTERM/SIGINT), how long the node waits for
    /// sessions still closing before exiting anyway. Default 5s.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// From the start of a drain (SIGTERM, `POST /v1/drain`) to refusing new upgrades:
    /// `/readyz` answers 503 meanwhile, so load balancers stop sending clients. Default 5s.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// Over how long a drain closes the node's connections (1012, after a `reconnect`
    /// frame), evenly paced with jitter. Default 30s.
    #[serde(with = "humantime_serde")]
    pub drain_window: Duration,
    /// When a drain gives up on connections left and the process exits, from the drain's
    /// start; 0: `drain_delay` + `drain_window` + `grace`. Default 0.
    #[serde(with = "humantime_serde")]
    pub drain_deadline: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            ws_path: "/ws".to_owned(),
            node_id: String::new(),
            shards: 0,
            worker_threads: 0,
            allowed_origins: Vec::new(),
            tls: TlsConfig::default(),
        }
    }
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            api_keys: Vec::new(),
            allow_no_api_keys: false,
            max_body_bytes: 1024 * 1024,
            body_timeout: Duration::from_secs(10),
            requests_per_second_per_key: 0,
            request_burst_per_key: 1000,
            tls: TlsConfig::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 1_000_000,
            max_subscriptions_per_connection: 256,
            max_channel_name_bytes: 128,
            max_inbound_message_bytes: 64 * 1024,
            max_publish_payload_bytes: 32 * 1024,
            outbound_queue_messages: 1024,
            outbound_queue_bytes: 1024 * 1024,
            client_messages_per_second: 200,
            client_message_burst: 400,
            connects_per_ip_per_second: 0,
            connect_burst_per_ip: 100,
            client_control_frames_per_second: 10,
            client_control_frame_burst: 20,
            client_publish_bytes_per_second: 64 * 1024,
            client_publish_byte_burst: 256 * 1024,
            channel_publish_bytes_per_second: 4 * 1024 * 1024,
            channel_publish_byte_burst: 16 * 1024 * 1024,
            throttled_close_after: Duration::from_secs(10),
            max_fragments_per_message: 64,
            fragment_timeout: Duration::from_secs(10),
            max_pending_upgrades: 10_000,
            max_pending_upgrades_per_ip: 1024,
            ipv6_source_prefix: 64,
            max_upgrade_request_bytes: 16 * 1024,
            memory_pressure_bytes: 0,
            max_event_loop_lag: Duration::ZERO,
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(3),
            client_publish: true,
            echo_path: String::new(),
            read_buffer_bytes: 256,
        }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            size: 100,
            ttl: Duration::from_secs(300),
            max_memory_bytes: 256 * 1024 * 1024,
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(5),
            drain_delay: Duration::from_secs(5),
            drain_window: Duration::from_secs(30),
            drain_deadline: Duration::ZERO,
        }
    }
}

impl Config {
    /// Parses a TOML document, applies no overlay, and validates it.
    ///
    /// ```
    /// use switchboard::config::Config;
    ///
    /// let config = Config::from_toml_str("[limits]\nmax_connections = 5000\n").unwrap();
    /// assert_eq!(config.limits.max_connections, 5000);
    /// let err = Config::from_toml_str("[limits]\nmax_conections = 5000\n").unwrap_err();
    /// assert!(err.to_string().starts_with("limits.max_conections: unknown field"));
    /// ```
    ///
    /// # Errors
    /// [`ConfigError::Parse`] naming the key for unknown keys and wrong types,
    /// [`ConfigError::Invalid`] for values out of range.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|err: toml::de::Error| ConfigError::Parse(err.to_string()))?;
        Self::from_table(table)?.validate()
    }

    /// Reads `path` (when given), overlays `SWITCHBOARD_*` variables from `env`, and validates.
    ///
    /// # Errors
    /// Any [`ConfigError`]; each names the file, variable or key at fault.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|err| ConfigError::Parse(format!("{}: {err}", path.display())))?
            }
            None => toml::Table::new(),
        };
        let applied = env::apply(&mut table, env)?;
        let mut config = Self::from_table(table)
            .map_err(|err| applied.name_variable(err))?
            .validate()?;
        config.ignored_env = applied.ignored;
        Ok(config)
    }

    fn from_table(table: toml::Table) -> Result<Self, ConfigError> {
        // serde_path_to_error gives the full dotted key (`limits.max_connections`) for every
        // error, including errors in values that came from the environment and so have no span
        // in any file.
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner().message().to_owned();
            if path == "." {
                ConfigError::Parse(inner)
            } else {
                ConfigError::Parse(format!("{path}: {inner}"))
            }
        })
    }

    /// Checks ranges and relations between values, and fills derived defaults.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first key found at fault.
    pub fn validate(mut self) -> Result<Self, ConfigError> {
        self.server.validate()?;
        self.session.validate(&self.server)?;
        self.server.tls.validate("server.tls")?;
        self.control.validate()?;
        self.log.validate()?;
        self.limits.validate()?;
        self.history.validate(&self.limits)?;
        self.streams.validate(&self.limits)?;
        self.cluster.validate(&self.history)?;
        self.shutdown.validate()?;
        self.auth.validate()?;
        self.presence.validate()?;
        self.hooks.validate()?;
        for webhook in &self.webhooks {
            webhook.validate()?;
        }
        for (index, namespace) in self.namespaces.iter().enumerate() {
            if let Err(message) = namespaces::check(namespace, &self.hooks) {
                return Err(invalid("namespaces", format!("[{index}]: {message}")));
            }
        }
        if let Some(message) = namespaces::shadowed(&self.namespaces) {
            return Err(invalid("namespaces", message));
        }
        Ok(self)
    }

    /// The effective configuration as TOML, as `check-config` prints it, with API keys, HMAC
    /// secrets and Redis passwords replaced by `<redacted>`.
    #[must_use]
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        match &mut shown.cluster.redis {
            RedisTarget::None => {}
            RedisTarget::Url(url) => *url = redact_password(url),
            RedisTarget::ClusterSeeds(seeds) => {
                for seed in seeds {
                    *seed = redact_password(seed);
                }
            }
        }
        for key in &mut shown.control.api_keys {
            *key = "<redacted>".to_owned();
        }
        for key in &mut shown.auth.keys {
            if !key.secret.is_empty() {
                key.secret = "<redacted>".to_owned();
            }
        }
        for webhook in &mut shown.webhooks {
            if !webhook.secret.is_empty() {
                webhook.secret = "<redacted>".to_owned();
            }
        }
        if !shown.hooks.secret.is_empty() {
            shown.hooks.secret = "<redacted>".to_owned();
        }
        for value in shown.hooks.headers.values_mut() {
            *value = "<redacted>".to_owned();
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|err| format!("# cannot render: {err}\n"))
    }
}

/// The longest drain window or delay accepted, in the config or from the API (a drain
/// deadline may be twice it).
pub const MAX_DRAIN: Duration = Duration::from_secs(3600);

/// What a config key's value is refused for.
fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl ServerConfig {
    /// Checks the `[server]` keys (its `tls` apart); fills `shards` and `node_id` when 0 or
    /// empty.
    fn validate(&mut self) -> Result<(), ConfigError> {
        if !self.ws_path.starts_with('/') {
            return Err(invalid("server.ws_path", "must start with '/'"));
        }
        if let Some(bad) = self
            .allowed_origins
            .iter()
            .find(|origin| !is_origin_pattern(origin))
        {
            return Err(invalid(
                "server.allowed_origins",
                format!(
                    "'{bad}' is not an origin: use scheme://host[:port], scheme://*.domain or *"
                ),
            ));
        }
        if self.shards == 0 {
            self.shards = default_shards();
        } else if !self.shards.is_power_of_two() || self.shards > 65_536 {
            return Err(invalid(
                "server.shards",
                "must be 0 (auto) or a power of two up to 65536",
            ));
        }
        if self.worker_threads > 1024 {
            return Err(invalid(
                "server.worker_threads",
                "must be 0 (one per core) or at most 1024",
            ));
        }
        if self.node_id.is_empty() {
            self.node_id = format!("node-{:08x}", rand::random::<u32>());
        } else if self.node_id.len() > 64
            && self.node_id.len() <= 253
            && self
                .node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            // A Kubernetes pod name (up to 253 characters) given through the downward API:
            // its first 47 characters and a hash of the whole, so that two long names that
            // share a beginning stay two nodes, and the same name is the same node.
            let hash = self
                .node_id
                .bytes()
                .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                    (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
                });
            self.node_id = format!("{}-{hash:016x}", &self.node_id[..47]);
        } else if self.node_id.len() > 64
            || !self
                .node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(invalid(
                "server.node_id",
                "must be 1-64 characters of A-Z a-z 0-9 - _ .",
            ));
        }
        Ok(())
    }
}

impl TlsConfig {
    /// Checks a `tls` table; `key` names it in the error.
    fn validate(&self, key: &'static str) -> Result<(), ConfigError> {
        if self.is_set() && (self.cert_file.is_empty() || self.key_file.is_empty()) {
            return Err(invalid(
                key,
                "needs both cert_file and key_file (or neither, for no TLS)",
            ));
        }
        Ok(())
    }
}

impl ControlConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.tls.validate("control.tls")?;
        if let Some(placeholder) = self.api_keys.iter().find(|key| is_placeholder(key)) {
            return Err(invalid(
                "control.api_keys",
                format!(
                    "`{placeholder}` is a placeholder from an example: generate a key (e.g. \
                     `openssl rand -base64 32`) and put it in your secret"
                ),
            ));
        }
        if self.api_keys.iter().any(|key| key.len() < 16) {
            return Err(invalid(
                "control.api_keys",
                "every key must be at least 16 characters",
            ));
        }
        if self.api_keys.is_empty() && !self.listen.ip().is_loopback() && !self.allow_no_api_keys {
            return Err(invalid(
                "control.api_keys",
                format!(
                    "must not be empty when control.listen ({}) is not a loopback address: \
                     callers could publish, disconnect and drain without a key (set api_keys, \
                     listen on 127.0.0.1, or set control.allow_no_api_keys = true)",
                    self.listen
                ),
            ));
        }
        if self.max_body_bytes < 1024 {
            return Err(invalid("control.max_body_bytes", "must be at least 1024"));
        }
        if self.body_timeout.is_zero() {
            return Err(invalid("control.body_timeout", "must be greater than 0"));
        }
        if self.request_burst_per_key == 0 {
            return Err(invalid(
                "control.request_burst_per_key",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

impl LogConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if tracing_subscriber::EnvFilter::try_new(&self.level).is_err() {
            return Err(invalid(
                "log.level",
                format!("'{}' is not a valid level or filter", self.level),
            ));
        }
        Ok(())
    }
}

impl LimitsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        for (key, burst) in [
            ("limits.client_message_burst", self.client_message_burst),
            ("limits.connect_burst_per_ip", self.connect_burst_per_ip),
            (
                "limits.client_control_frame_burst",
                self.client_control_frame_burst,
            ),
            (
                "limits.max_fragments_per_message",
                self.max_fragments_per_message,
            ),
        ] {
            if burst == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        for (key, burst) in [
            (
                "limits.client_publish_byte_burst",
                self.client_publish_byte_burst,
            ),
            (
                "limits.channel_publish_byte_burst",
                self.channel_publish_byte_burst,
            ),
        ] {
            if (burst as usize) < self.max_publish_payload_bytes {
                return Err(invalid(
                    key,
                    "must be at least limits.max_publish_payload_bytes (a burst smaller \
                     than one message would refuse it for ever)",
                ));
            }
        }
        for (key, value) in [
            ("limits.throttled_close_after", self.throttled_close_after),
            ("limits.fragment_timeout", self.fragment_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if self.max_pending_upgrades == 0 {
            return Err(invalid("limits.max_pending_upgrades", "must be at least 1"));
        }
        if !self.max_event_loop_lag.is_zero()
            && !(Duration::from_millis(50)..=Duration::from_secs(60))
                .contains(&self.max_event_loop_lag)
        {
            return Err(invalid(
                "limits.max_event_loop_lag",
                "must be 0s (off) or between 50ms and 60s",
            ));
        }
        if self.max_pending_upgrades_per_ip == 0 {
            return Err(invalid(
                "limits.max_pending_upgrades_per_ip",
                "must be at least 1",
            ));
        }
        if !(32..=128).contains(&self.ipv6_source_prefix) {
            return Err(invalid(
                "limits.ipv6_source_prefix",
                "must be between 32 and 128",
            ));
        }
        if !(1024..=1024 * 1024).contains(&self.max_upgrade_request_bytes) {
            return Err(invalid(
                "limits.max_upgrade_request_bytes",
                "must be between 1024 and 1048576",
            ));
        }
        if self.max_subscriptions_per_connection == 0 {
            return Err(invalid(
                "limits.max_subscriptions_per_connection",
                "must be at least 1",
            ));
        }
        if !(1..=1024).contains(&self.max_channel_name_bytes) {
            return Err(invalid(
                "limits.max_channel_name_bytes",
                "must be between 1 and 1024",
            ));
        }
        if self.max_inbound_message_bytes < 256 {
            return Err(invalid(
                "limits.max_inbound_message_bytes",
                "must be at least 256",
            ));
        }
        // A replay or a history reply is sent a quarter of the queue at a time, and a page
        // holds at least one message: a message must fit that quarter, or a page on top of
        // what is left in the queue could overflow it (4001 for a client that reads).
        if self.max_publish_payload_bytes == 0
            || self.max_publish_payload_bytes > self.outbound_queue_bytes / 4
        {
            return Err(invalid(
                "limits.max_publish_payload_bytes",
                "must be at least 1 and at most a quarter of limits.outbound_queue_bytes",
            ));
        }
        if self.outbound_queue_messages < 16 {
            return Err(invalid(
                "limits.outbound_queue_messages",
                "must be at least 16",
            ));
        }
        Ok(())
    }
}

impl SessionConfig {
    fn validate(&self, server: &ServerConfig) -> Result<(), ConfigError> {
        if !self.echo_path.is_empty()
            && (!self.echo_path.starts_with('/') || self.echo_path == server.ws_path)
        {
            return Err(invalid(
                "session.echo_path",
                "must be empty, or start with '/' and differ from server.ws_path",
            ));
        }
        if self.heartbeat.is_zero() {
            return Err(invalid("session.heartbeat", "must be greater than 0"));
        }
        if self.idle_timeout <= self.heartbeat {
            return Err(invalid(
                "session.idle_timeout",
                "must be longer than session.heartbeat",
            ));
        }
        if self.handshake_timeout.is_zero() {
            return Err(invalid(
                "session.handshake_timeout",
                "must be greater than 0",
            ));
        }
        if self.first_byte_timeout.is_zero() || self.first_byte_timeout > self.handshake_timeout {
            return Err(invalid(
                "session.first_byte_timeout",
                "must be greater than 0 and at most session.handshake_timeout",
            ));
        }
        if !(256..=1024 * 1024).contains(&self.read_buffer_bytes) {
            return Err(invalid(
                "session.read_buffer_bytes",
                "must be between 256 and 1048576",
            ));
        }
        Ok(())
    }
}

impl HistoryConfig {
    fn validate(&self, limits: &LimitsConfig) -> Result<(), ConfigError> {
        if self.size >= limits.outbound_queue_messages {
            // A `since` replay enqueues up to history.size messages at once; a queue that
            // cannot hold them would close every resuming client as a slow consumer.
            return Err(invalid(
                "history.size",
                "must be smaller than limits.outbound_queue_messages",
            ));
        }
        if self.size > 0 && self.ttl.is_zero() {
            return Err(invalid("history.ttl", "must be greater than 0"));
        }
        Ok(())
    }
}

impl ClusterConfig {
    /// Checks `[cluster]`; an empty `redis` (`""`, `[]`) becomes off.
    fn validate(&mut self, history: &HistoryConfig) -> Result<(), ConfigError> {
        if !self.redis.is_set() {
            // `redis = ""` and `redis = []` mean off, like leaving the key out.
            self.redis = RedisTarget::None;
        }
        let urls: &[String] = match &self.redis {
            RedisTarget::None => &[],
            RedisTarget::Url(url) => std::slice::from_ref(url),
            RedisTarget::ClusterSeeds(seeds) => seeds,
        };
        if urls
            .iter()
            .any(|url| !url.starts_with("redis://") && !url.starts_with("rediss://"))
        {
            return Err(invalid(
                "cluster.redis",
                "must be a redis:// or rediss:// URL, or a list of them",
            ));
        }
        let tls = urls
            .iter()
            .filter(|url| url.starts_with("rediss://"))
            .count();
        if tls != 0 && tls != urls.len() {
            return Err(invalid(
                "cluster.redis",
                "mixes redis:// and rediss:// seeds: use one scheme for all",
            ));
        }
        if !self.redis_ca_file.is_empty() && tls == 0 {
            return Err(invalid(
                "cluster.redis_ca_file",
                "is set but cluster.redis is not a rediss:// URL: TLS to Redis needs rediss://",
            ));
        }
        if !(1..=1024).contains(&self.partitions) {
            return Err(invalid("cluster.partitions", "must be between 1 and 1024"));
        }
        if self.publish_timeout.is_zero() {
            return Err(invalid("cluster.publish_timeout", "must be greater than 0"));
        }
        if self.bus_maxlen < 1000 {
            return Err(invalid("cluster.bus_maxlen", "must be at least 1000"));
        }
        if self.bus_max_age < MIN_BUS_MAX_AGE {
            return Err(invalid("cluster.bus_max_age", "must be at least 1m"));
        }
        if !(Duration::from_secs(30)..=Duration::from_secs(24 * 3600)).contains(&self.interest_ttl)
        {
            return Err(invalid(
                "cluster.interest_ttl",
                "must be between 30s and 24h",
            ));
        }
        if self.channel_state_ttl < history.ttl {
            return Err(invalid(
                "cluster.channel_state_ttl",
                "must be at least history.ttl",
            ));
        }
        Ok(())
    }
}

impl ShutdownConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.grace.is_zero() {
            return Err(invalid("shutdown.grace", "must be greater than 0"));
        }
        let max = MAX_DRAIN;
        for (key, value) in [
            ("shutdown.drain_delay", self.drain_delay),
            ("shutdown.drain_window", self.drain_window),
        ] {
            if value > max {
                return Err(invalid(key, format!("at most {} s", max.as_secs())));
            }
        }
        let shortest = self.drain_delay + self.drain_window;
        if !self.drain_deadline.is_zero()
            && (self.drain_deadline < shortest || self.drain_deadline > 2 * max)
        {
            return Err(invalid(
                "shutdown.drain_deadline",
                format!(
                    "0, or from drain_delay + drain_window ({} ms) to {} s",
                    shortest.as_millis(),
                    2 * max.as_secs()
                ),
            ));
        }
        Ok(())
    }
}

/// `scheme://user:password@host...` with the password replaced by `<redacted>`.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:<redacted>{}", &rest[at..]),
        None => url.to_owned(),
    }
}

impl AuthConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.required && self.keys.is_empty() && self.jwks_url.is_empty() {
            return Err(invalid(
                "auth.required",
                "needs at least one [[auth.keys]] entry or auth.jwks_url".to_owned(),
            ));
        }
        let url = self.jwks_url.as_str();
        if !(url.is_empty() || url.starts_with("https://") || url.starts_with("http://")) {
            return Err(invalid(
                "auth.jwks_url",
                format!("'{}' is not an https:// (or http://) URL", self.jwks_url),
            ));
        }
        if self.jwks_refresh < Duration::from_secs(1) || self.jwks_min_interval.is_zero() {
            return Err(invalid(
                "auth.jwks_refresh",
                "jwks_refresh must be at least 1s and jwks_min_interval greater than 0".to_owned(),
            ));
        }
        if self.timeout.is_zero() {
            return Err(invalid("auth.timeout", "must be greater than 0".to_owned()));
        }
        for (index, key) in self.keys.iter().enumerate() {
            if !AUTH_ALGORITHMS.contains(&key.algorithm.as_str()) {
                return Err(invalid(
                    "auth.keys",
                    format!(
                        "[{index}].algorithm '{}' is not one of {}",
                        key.algorithm,
                        AUTH_ALGORITHMS.join(", ")
                    ),
                ));
            }
            let hmac = key.algorithm.starts_with("HS");
            if hmac && is_placeholder(&key.secret) {
                return Err(invalid(
                    "auth.keys",
                    format!(
                        "[{index}]: the secret is a placeholder from an example: generate one \
                         (e.g. `openssl rand -base64 48`) and put it in your secret store"
                    ),
                ));
            }
            if hmac && (key.secret.len() < 32 || !key.public_key_file.is_empty()) {
                return Err(invalid(
                    "auth.keys",
                    format!(
                        "[{index}]: {} takes a `secret` of at least 32 bytes and no public_key_file",
                        key.algorithm
                    ),
                ));
            }
            if !hmac && (key.public_key_file.is_empty() || !key.secret.is_empty()) {
                return Err(invalid(
                    "auth.keys",
                    format!(
                        "[{index}]: {} takes a `public_key_file` (PEM) and no secret",
                        key.algorithm
                    ),
                ));
            }
            if self.keys[..index]
                .iter()
                .any(|other| !key.kid.is_empty() && other.kid == key.kid)
            {
                return Err(invalid(
                    "auth.keys",
                    format!("[{index}]: kid '{}' is used twice", key.kid),
                ));
            }
        }
        Ok(())
    }
}

/// `*`, or `scheme://host[:port]` with an optional `*.` before the host and no path.
fn is_origin_pattern(pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let Some((scheme, host)) = pattern.trim_end_matches('/').split_once("://") else {
        return false;
    };
    let host = host.strip_prefix("*.").unwrap_or(host);
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

/// Whether an API key is one of the placeholders the examples and deploy files ship (a
/// deployment that forgot to replace one would accept a key anyone can read).
fn is_placeholder(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.starts_with("replace-with")
        || key.starts_with("change-me")
        || key.starts_with("changeme")
        || key.starts_with("<")
        || key.contains("placeholder")
}

/// The smallest power of two at least four times the number of cores.
fn default_shards() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    (cores * 4).next_power_of_two()
}

#[cfg(test)]
mod tests;
