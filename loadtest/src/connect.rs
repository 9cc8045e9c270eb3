//! Scenario `connect`: opens N WebSocket connections at a target rate (with a bounded number
//! of handshakes in flight), holds them subscribed, and reports the connect rate and
//! handshake latency. With `--then-disconnect` it then drops every connection at once and
//! measures how soon a new connection gets its `welcome`.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use tokio::{net::TcpSocket, sync::Semaphore};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

use crate::proc_stat;

#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Server address (host:port); the WebSocket path is /ws.
    #[arg(long, default_value = "127.0.0.1:8080")]
    server: SocketAddr,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Target connections per second.
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    /// Handshakes in flight at most.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Spread connections over source addresses 127.0.0.1 .. 127.0.0.N.
    #[arg(long, default_value_t = 1)]
    source_addrs: u8,
    /// Afterwards drop every connection at once and time the next connection.
    #[arg(long)]
    then_disconnect: bool,
    /// PID of the server, for RSS from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects, upgrades, waits for `welcome` and subscribes; returns the open socket.
async fn open(server: SocketAddr, source: Ipv4Addr, channel: &str) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let stream = socket.connect(server).await?;
    let url = format!("ws://{server}/ws");
    let (mut ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)).await?;
    match ws.next().await {
        Some(Ok(Message::Text(text))) if text.contains("\"welcome\"") => {}
        other => anyhow::bail!("expected welcome, got {other:?}"),
    }
    let subscribe = format!(r#"{{"type":"subscribe","id":1,"channel":"{channel}"}}"#);
    ws.send(Message::Text(subscribe.into())).await?;
    Ok(ws)
}

pub async fn run(args: ConnectArgs) -> anyhow::Result<()> {
    let rss_before = args.server_pid.and_then(proc_stat::rss_kib);
    let semaphore = Arc::new(Semaphore::new(args.concurrency));
    let interval = Duration::from_nanos(1_000_000_000 / args.rate.max(1));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = tokio::time::Instant::now();
    let mut attempts = Vec::with_capacity(args.connections);
    for index in 0..args.connections {
        ticker.tick().await;
        let permit = Arc::clone(&semaphore).acquire_owned().await?;
        let source = Ipv4Addr::new(
            127,
            0,
            0,
            1 + (index % usize::from(args.source_addrs.max(1))) as u8,
        );
        let server = args.server;
        attempts.push(tokio::spawn(async move {
            let begun = tokio::time::Instant::now();
            let result = open(server, source, &format!("room-{}", index % 100)).await;
            drop(permit);
            result.map(|ws| (ws, begun.elapsed()))
        }));
    }
    let mut held = Vec::with_capacity(args.connections);
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors: std::collections::BTreeMap<String, u64> = Default::default();
    for attempt in attempts {
        match attempt.await? {
            Ok((ws, elapsed)) => {
                let _ = latency.record(
                    u64::try_from(elapsed.as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1),
                );
                held.push(ws);
            }
            Err(err) => {
                let kind = err.to_string().chars().take(60).collect::<String>();
                *errors.entry(kind).or_default() += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = args.server_pid.and_then(proc_stat::rss_kib);
    let opened = held.len();

    let mut after_disconnect = None;
    if args.then_disconnect {
        // Everyone drops at once: the sockets close without a close handshake.
        drop(held);
        let dropped = tokio::time::Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            match tokio::time::timeout(
                Duration::from_secs(5),
                open(args.server, Ipv4Addr::new(127, 0, 0, 1), "after"),
            )
            .await
            {
                Ok(Ok(_ws)) => break,
                _ if tries < 100 => tokio::time::sleep(Duration::from_millis(10)).await,
                _ => anyhow::bail!("no new connection after the mass disconnect"),
            }
        }
        after_disconnect = Some(dropped.elapsed().as_secs_f64() * 1000.0);
    }

    let per_connection_kib = match (rss_before, rss_after) {
        (Some(before), Some(after)) if opened > 0 => {
            Some((after.saturating_sub(before)) as f64 / opened as f64)
        }
        _ => None,
    };
    let results = serde_json::json!({
        "scenario": "connect",
        "target_rate": args.rate,
        "connections": args.connections,
        "opened": opened,
        "errors": errors,
        "connects_per_second": (opened as f64 / elapsed).round(),
        "handshake_latency_us": {
            "p50": latency.value_at_quantile(0.50),
            "p99": latency.value_at_quantile(0.99),
            "max": latency.max(),
        },
        "server_rss_kib_per_connection": per_connection_kib,
        "new_connection_after_mass_disconnect_ms": after_disconnect,
    });
    crate::report(&results, args.json.as_deref())
}
