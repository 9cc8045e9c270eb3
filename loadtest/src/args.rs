//! The command lines of `connect`, `idle` and `fanout`, apart from what runs them: the
//! worker launcher (`workers`) reads them as the scenarios do.

use std::net::SocketAddr;

#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Server addresses (host:port, comma separated; connection i goes to server i mod n);
    /// the WebSocket path is /ws.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:8080")]
    pub server: Vec<SocketAddr>,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Target connections per second.
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
    /// Handshakes in flight at most.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Spread connections over source addresses 127.0.0.K .. 127.0.0.(K+N-1).
    #[arg(long, default_value_t = 1)]
    pub source_addrs: u8,
    /// First source address K: 127.0.0.K. Give each load-generator process its own range.
    #[arg(long, default_value_t = 1)]
    pub source_first: u8,
    /// Afterwards drop every connection at once and time the next connection.
    #[arg(long)]
    pub then_disconnect: bool,
    /// PIDs of the servers (comma separated), for their summed RSS from /proc.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Spread the connections over this many worker processes (each with its own share of
    /// `--connections`, `--rate` and `--concurrency`, and its own source addresses from
    /// `--source-first + i * --source-addrs`): one process may open only 20,000 files here.
    /// `idle` only.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Run as one of the workers of a parent process (set by the parent).
    #[arg(long, hide = true)]
    pub worker: bool,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Send a JWT in each upgrade's `?token=`, signed with this algorithm (HS256, RS256,
    /// ES256, EdDSA, ...). 100 different tokens (users) are signed before the ramp, so the
    /// client's signing is not timed; the server verifies each connection's anyway.
    #[arg(long, requires = "token_key")]
    pub token_alg: Option<String>,
    /// The HMAC secret (HS*) or the PEM private key file (others) to sign with.
    #[arg(long)]
    pub token_key: Option<String>,
    /// The `kid` to put in the tokens' header.
    #[arg(long)]
    pub token_kid: Option<String>,
    /// No token: the node's connect hook names each connection's user from `?user=N` in the
    /// upgrade (N = i mod 100; `hook-backend` answers so), and a `welcome` without a user
    /// counts as an error.
    #[arg(long, conflicts_with = "token_alg")]
    pub hook_user: bool,
    /// Reserve each socket's source port at `bind()` (a search of the port range per socket),
    /// as before `IP_BIND_ADDRESS_NO_PORT`: only to measure what that search costs.
    #[arg(long)]
    pub reserve_port_at_bind: bool,
    /// Offer permessage-deflate, as browsers do (the run fails if the server does not
    /// negotiate it): what an idle connection with compression costs.
    #[arg(long)]
    pub deflate: bool,
    /// Channels the connections subscribe to, round robin: `room-0` .. `room-(N-1)`.
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Connect with `wss://` (TLS 1.3, rustls with ring, server name `localhost`), trusting
    /// this PEM certificate (the server's self-signed one, or its CA).
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Seconds to hold the connections once open (they answer the server's pings).
    #[arg(long, default_value_t = 60)]
    pub hold: u64,
    /// Seconds between progress samples (connections still open, server RSS).
    #[arg(long, default_value_t = 10)]
    pub report_every: u64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// Server addresses (host:port, comma separated; subscriber i connects to server i mod n,
    /// publishes go to the first); the WebSocket path is /ws.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:8080")]
    pub server: Vec<SocketAddr>,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Publishes per second; 0 runs subscribers only (for multi-process runs where another
    /// process publishes), holding them for `--duration`.
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    /// Publish through this server instead of `--server` (e.g. another cluster node).
    #[arg(long)]
    pub publish_on: Option<SocketAddr>,
    /// How messages are published: `ws` (a client's `publish` frames over one WebSocket) or
    /// `http` (`POST /v1/publish` to `--control`, as backends do; against `--baseline`, a
    /// `POST` whose body it broadcasts).
    #[arg(long, value_enum, default_value_t = PublishVia::Ws)]
    pub publish_via: PublishVia,
    /// The control listener for `--publish-via http`.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub control: SocketAddr,
    /// With `--publish-via http`: publishers, each with one keep-alive connection sending its
    /// next request when the previous one is answered; they share the `--rate`.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Payload bytes.
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    /// Pad payloads with English-like words instead of `x`s, so that they compress about as
    /// chat text does (3-4 times with deflate) rather than a hundredfold.
    #[arg(long)]
    pub words: bool,
    /// Subscribers offer permessage-deflate (as browsers do) and inflate what they get
    /// compressed; the run fails if the server does not negotiate it.
    #[arg(long)]
    pub deflate: bool,
    /// Channel name.
    #[arg(long, default_value = "fanout")]
    pub channel: String,
    /// Spread subscribers over this many channels (`<channel>-0` .. `<channel>-K-1`,
    /// subscriber i on channel i mod K); publishes go round robin over them. With K > 1,
    /// use K times the rate for the same deliveries per second as one channel.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Spread subscribers over source addresses 127.0.0.1 .. 127.0.0.N (ephemeral ports
    /// run out near 28,000 connections per source address).
    #[arg(long, default_value_t = 1)]
    pub source_addrs: u8,
    /// First source address: 127.0.0.K (give each load-generator process its own, since
    /// explicitly bound sockets cannot share ephemeral ports across processes).
    #[arg(long, default_value_t = 1)]
    pub source_first: u8,
    /// The target is the baseline broadcaster: wait for no welcome or replies, and subscribe
    /// (unanswered) only with `--channels` above 1.
    #[arg(long)]
    pub baseline: bool,
    /// Publish each message to a random channel instead of round robin (with `--channels`).
    #[arg(long)]
    pub random: bool,
    /// Every S seconds, record an interval sample (deliveries, p99 latency of the interval,
    /// server RSS): for soak runs, to see drift over time. 0: off.
    #[arg(long, default_value_t = 0)]
    pub report_every: u64,
    /// PID of the server, for CPU time and RSS from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Hold the subscribers in this many worker processes (copies of this binary, each with
    /// its share and its own source addresses from `--source-first + i * --source-addrs`)
    /// while this process publishes and merges their results: one process may open only
    /// 20,000 files here.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Run as a worker of a parent process (set by the parent).
    #[arg(long, hide = true)]
    pub worker: bool,
    /// Index of this process's first subscriber among all workers' (set by the parent).
    #[arg(long, hide = true, default_value_t = 0)]
    pub subscriber_offset: usize,
    /// Messages the parent may publish, to size the completion table (set by the parent).
    #[arg(long, hide = true, default_value_t = 0)]
    pub completion_slots: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PublishVia {
    Ws,
    Http,
}
