//! Connection scenarios. `connect`: opens N WebSocket connections at a target rate (with a
//! bounded number of handshakes in flight), holds them subscribed, and reports the connect
//! rate and handshake latency; with `--then-disconnect` it then drops every connection at
//! once and measures how soon a new connection gets its `welcome`. `idle`: the same, then
//! holds them and watches the server's memory. `spike`: repeated bursts of connects and
//! mass disconnects.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest as _},
};

use crate::args::{ConnectArgs, IdleArgs};
use crate::proc_stat;

/// The TLS client for `--tls-ca`, or `None` for plain `ws://`.
fn tls_connector(args: &ConnectArgs) -> anyhow::Result<Option<tokio_rustls::TlsConnector>> {
    use tokio_rustls::rustls::{self, pki_types::pem::PemObject as _};
    let Some(ca) = &args.tls_ca else {
        return Ok(None);
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Some(tokio_rustls::TlsConnector::from(Arc::new(config))))
}

/// Tokens for `--token-alg`: 100 users, valid for an hour; empty without the flag.
fn tokens(args: &ConnectArgs) -> anyhow::Result<Vec<String>> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let (Some(alg), Some(key)) = (&args.token_alg, &args.token_key) else {
        return Ok(Vec::new());
    };
    let algorithm: Algorithm = alg.parse()?;
    let encoding = match algorithm {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            EncodingKey::from_secret(key.as_bytes())?
        }
        _ => {
            let pem = std::fs::read(key)?;
            match algorithm {
                Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem)?,
                Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem)?,
                _ => EncodingKey::from_rsa_pem(&pem)?,
            }
        }
    };
    let mut header = Header::new(algorithm);
    header.kid.clone_from(&args.token_kid);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    (0..100)
        .map(|user| {
            let claims = serde_json::json!({"sub": format!("user-{user}"), "exp": exp});
            Ok(jsonwebtoken::encode(&header, &claims, &encoding)?)
        })
        .collect()
}

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects, upgrades (with `?token=` when given), waits for `welcome` (which must name a
/// user when a token was sent) and subscribes; returns the open socket.
/// How a connection is opened beyond where it goes.
#[derive(Debug, Clone, Copy, Default)]
struct Dial {
    /// `--reserve-port-at-bind`.
    reserve_port: bool,
    /// `--deflate`.
    deflate: bool,
}

async fn open(
    server: SocketAddr,
    source: Ipv4Addr,
    channel: &str,
    token: Option<&str>,
    hook_user: Option<usize>,
    tls: Option<&tokio_rustls::TlsConnector>,
    dial: Dial,
) -> anyhow::Result<Ws> {
    let socket = if dial.reserve_port {
        crate::source::bound_reserving_port(source)?
    } else {
        crate::source::bound(source)?
    };
    let stream = socket.connect(server).await?;
    let (scheme, stream) = match tls {
        Some(tls) => {
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost")?;
            let stream = tls.connect(name, stream).await?;
            ("wss", MaybeTlsStream::Rustls(stream))
        }
        None => ("ws", MaybeTlsStream::Plain(stream)),
    };
    let url = match (token, hook_user) {
        (Some(token), _) => format!("{scheme}://{server}/ws?token={token}"),
        (None, Some(user)) => format!("{scheme}://{server}/ws?user={user}"),
        (None, None) => format!("{scheme}://{server}/ws"),
    };
    let named = token.is_some() || hook_user.is_some();
    let mut request = url.into_client_request()?;
    if dial.deflate {
        request.headers_mut().insert(
            "sec-websocket-extensions",
            tokio_tungstenite::tungstenite::http::HeaderValue::from_static(
                "permessage-deflate; client_max_window_bits",
            ),
        );
    }
    let (mut ws, response) = tokio_tungstenite::client_async(request, stream).await?;
    if dial.deflate && !response.headers().contains_key("sec-websocket-extensions") {
        anyhow::bail!("the server did not negotiate permessage-deflate");
    }
    match ws.next().await {
        Some(Ok(Message::Text(text)))
            if text.contains("\"welcome\"") && (!named || text.contains("\"user\"")) => {}
        other => anyhow::bail!("expected welcome (with a user if a token was sent), got {other:?}"),
    }
    let subscribe = format!(r#"{{"type":"subscribe","id":1,"channel":"{channel}"}}"#);
    ws.send(Message::Text(subscribe.into())).await?;
    Ok(ws)
}

/// Connections opened by a ramp, and how the ramp went.
struct Ramp {
    held: Vec<Ws>,
    latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    secs: f64,
    /// Connections completed in each second of the ramp.
    per_second: Vec<u64>,
}

/// Opens `args.connections` at `args.rate` with at most `args.concurrency` in flight.
async fn ramp(args: &ConnectArgs) -> anyhow::Result<Ramp> {
    let semaphore = Arc::new(Semaphore::new(args.concurrency));
    let interval = Duration::from_nanos(1_000_000_000 / args.rate.max(1));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let tokens: Arc<[String]> = tokens(args)?.into();
    let tls = tls_connector(args)?;
    crate::source::warn_if_crowded(
        args.connections,
        args.server.len(),
        usize::from(args.source_addrs),
    );
    let started = tokio::time::Instant::now();
    let mut attempts = Vec::with_capacity(args.connections);
    for index in 0..args.connections {
        ticker.tick().await;
        let permit = Arc::clone(&semaphore).acquire_owned().await?;
        let source = Ipv4Addr::new(
            127,
            0,
            0,
            args.source_first + (index % usize::from(args.source_addrs.max(1))) as u8,
        );
        let server = args.server[index % args.server.len()];
        let tokens = Arc::clone(&tokens);
        let tls = tls.clone();
        let channels = args.channels.max(1);
        let dial = Dial {
            reserve_port: args.reserve_port_at_bind,
            deflate: args.deflate,
        };
        let hook_user = args.hook_user.then_some(index % 100);
        attempts.push(tokio::spawn(async move {
            let begun = tokio::time::Instant::now();
            let token = (!tokens.is_empty()).then(|| tokens[index % tokens.len()].as_str());
            let channel = format!("room-{}", index % channels);
            let result = open(
                server,
                source,
                &channel,
                token,
                hook_user,
                tls.as_ref(),
                dial,
            )
            .await;
            drop(permit);
            result.map(|ws| (ws, begun.elapsed(), started.elapsed()))
        }));
        if index % 5_000 == 4_999 {
            eprintln!("connecting: {} attempted", index + 1);
        }
    }
    let mut held = Vec::with_capacity(args.connections);
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = BTreeMap::new();
    let mut per_second: Vec<u64> = Vec::new();
    for attempt in attempts {
        match attempt.await? {
            Ok((ws, elapsed, at)) => {
                let second = usize::try_from(at.as_secs()).unwrap_or(usize::MAX);
                if per_second.len() <= second {
                    per_second.resize(second + 1, 0);
                }
                per_second[second] += 1;
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
    Ok(Ramp {
        held,
        latency,
        errors,
        secs: started.elapsed().as_secs_f64(),
        per_second,
    })
}

/// Drops every connection at once (no close handshake) and returns how many milliseconds
/// passed until a new connection got its `welcome`.
async fn drop_all_and_reconnect(held: Vec<Ws>, server: SocketAddr) -> anyhow::Result<f64> {
    drop(held);
    let dropped = tokio::time::Instant::now();
    for _ in 0..100 {
        let attempt = tokio::time::timeout(
            Duration::from_secs(5),
            open(
                server,
                Ipv4Addr::new(127, 0, 0, 1),
                "after",
                None,
                None,
                None,
                Dial::default(),
            ),
        );
        if let Ok(Ok(_ws)) = attempt.await {
            return Ok(dropped.elapsed().as_secs_f64() * 1000.0);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("no new connection within 100 tries after the mass disconnect")
}

fn handshake_json(latency: &Histogram<u64>) -> serde_json::Value {
    serde_json::json!({
        "p50": latency.value_at_quantile(0.50),
        "p99": latency.value_at_quantile(0.99),
        "max": latency.max(),
    })
}

fn per_connection_kib(before: Option<u64>, after: Option<u64>, opened: usize) -> Option<f64> {
    match (before, after) {
        (Some(before), Some(after)) if opened > 0 => {
            Some(after.saturating_sub(before) as f64 / opened as f64)
        }
        _ => None,
    }
}

pub async fn run(args: ConnectArgs) -> anyhow::Result<()> {
    let rss_before = proc_stat::total_rss_kib(&args.server_pid);
    let ramp = ramp(&args).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = proc_stat::total_rss_kib(&args.server_pid);
    let opened = ramp.held.len();
    let after_disconnect = if args.then_disconnect {
        Some(drop_all_and_reconnect(ramp.held, args.server[0]).await?)
    } else {
        None
    };
    let results = serde_json::json!({
        "scenario": "connect",
        "token_alg": args.token_alg,
        "hook_user": args.hook_user,
        "tls": args.tls_ca.is_some(),
        "target_rate": args.rate,
        "connections": args.connections,
        "opened": opened,
        "errors": ramp.errors,
        "connects_per_second": (opened as f64 / ramp.secs).round(),
        "handshake_latency_us": handshake_json(&ramp.latency),
        "server_rss_kib_per_connection": per_connection_kib(rss_before, rss_after, opened),
        "new_connection_after_mass_disconnect_ms": after_disconnect,
        "reserve_port_at_bind": args.reserve_port_at_bind,
        "deflate": args.deflate,
        "connects_each_second": ramp.per_second,
    });
    crate::report(&results, args.json.as_deref())
}

/// Scenario `idle`: opens N subscribed connections, holds them for `--hold` seconds while
/// they only answer pings, and reports the server's RSS per connection at the start and the
/// end of the hold (memory that grows while nothing happens is a leak).
pub async fn idle(args: IdleArgs) -> anyhow::Result<()> {
    if args.connect.workers > 1 && !args.connect.worker {
        return crate::workers::idle(&args).await;
    }
    let connect = &args.connect;
    let rss_before = proc_stat::total_rss_kib(&connect.server_pid);
    let ramp = ramp(connect).await?;
    let opened = ramp.held.len();
    if connect.worker {
        // The parent measures once every worker is connected.
        println!("ready {opened}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_start = proc_stat::total_rss_kib(&connect.server_pid);
    // Each connection reads (so tungstenite answers pings) until the hold ends.
    let open_now = Arc::new(std::sync::atomic::AtomicUsize::new(opened));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let readers: Vec<_> = ramp
        .held
        .into_iter()
        .map(|mut ws| {
            let open_now = Arc::clone(&open_now);
            let mut stop_rx = stop_rx.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop_rx.changed() => return,
                        next = ws.next() => if !matches!(next, Some(Ok(_))) {
                            open_now.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    let started = tokio::time::Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(args.hold) {
        let left = Duration::from_secs(args.hold).saturating_sub(started.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(args.report_every.max(1)))).await;
        let sample = serde_json::json!({
            "t": started.elapsed().as_secs(),
            "open": open_now.load(std::sync::atomic::Ordering::Relaxed),
            "server_rss_kib": proc_stat::total_rss_kib(&connect.server_pid),
        });
        eprintln!("idle {sample}");
        samples.push(sample);
    }
    let rss_end = proc_stat::total_rss_kib(&connect.server_pid);
    let still_open = open_now.load(std::sync::atomic::Ordering::Relaxed);
    stop_tx.send_replace(true);
    for reader in readers {
        let _ = reader.await;
    }
    let results = serde_json::json!({
        "scenario": "idle",
        "connections": connect.connections,
        "opened": opened,
        "errors": ramp.errors,
        "connects_per_second": (opened as f64 / ramp.secs).round(),
        "hold_seconds": args.hold,
        "closed_during_hold": opened - still_open,
        "server_rss_kib_per_connection_at_start": per_connection_kib(rss_before, rss_start, opened),
        "server_rss_kib_per_connection_at_end": per_connection_kib(rss_before, rss_end, opened),
        "intervals": samples,
    });
    crate::report(&results, connect.json.as_deref())
}

#[derive(Debug, Clone, clap::Args)]
pub struct SpikeArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Bursts to run: each opens `--connections` as fast as allowed, then drops them all.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
}

/// Scenario `spike`: bursts of connects, each followed by every connection dropping at once;
/// per round, the connect rate, handshake latency, errors and how soon the node accepted a
/// new connection after the drop.
pub async fn spike(args: SpikeArgs) -> anyhow::Result<()> {
    let connect = &args.connect;
    let rss_before = proc_stat::total_rss_kib(&connect.server_pid);
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        let ramp = ramp(connect).await?;
        let opened = ramp.held.len();
        let reaccept_ms = drop_all_and_reconnect(ramp.held, connect.server[0]).await?;
        let summary = serde_json::json!({
            "round": round,
            "opened": opened,
            "errors": ramp.errors,
            "connects_per_second": (opened as f64 / ramp.secs).round(),
            "handshake_latency_us": handshake_json(&ramp.latency),
            "new_connection_after_drop_ms": reaccept_ms,
        });
        eprintln!("spike {summary}");
        rounds.push(summary);
        // Let the node finish cleaning up before the next burst.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let rss_after = proc_stat::total_rss_kib(&connect.server_pid);
    let results = serde_json::json!({
        "scenario": "spike",
        "connections": connect.connections,
        "target_rate": connect.rate,
        "rounds": rounds,
        // What the bursts left behind once every connection was gone.
        "server_rss_kib_growth": match (rss_before, rss_after) {
            (Some(before), Some(after)) => Some(after as i64 - before as i64),
            _ => None,
        },
    });
    crate::report(&results, connect.json.as_deref())
}
