//! `switchboard-loadtest`: drives Switchboard nodes over real WebSockets and reports
//! delivery, loss and end-to-end latency (from a timestamp in each payload).
//!
//! Scenarios: `cluster` (publishers on some nodes, subscribers on others), `fanout` (N
//! subscribers of one channel, R publishes a second, against Switchboard or the baseline),
//! `channels` (many channels, random publishes), `soak` (steady fan-out for minutes, drift),
//! `connect` (connection rate, memory per connection, mass disconnect), `idle` (hold
//! connections, watch memory), `spike` (bursts of connects and mass disconnects), and
//! `baseline`, the minimal broadcaster that is the ceiling for fan-out figures; `million`,
//! the processes of `loadtest/million.sh` (issue 27's million-socket run).

mod args;
mod baseline;
mod connect;
mod fanout;
mod hook_backend;
mod http_publish;
mod lean;
mod million;
mod proc_stat;
mod source;
mod streams;
mod workers;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Parser)]
#[command(name = "switchboard-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Publish on some nodes, receive on others: cross-node delivery and latency.
    Cluster(ClusterArgs),
    /// N subscribers on one channel, R publishes a second: deliveries/s, latency, CPU.
    Fanout(args::FanoutArgs),
    /// Subscribers spread over many channels, publishes to random ones.
    Channels(fanout::ChannelsArgs),
    /// Steady fan-out for T minutes: memory and latency drift.
    Soak(fanout::SoakArgs),
    /// Open N connections at a target rate; optionally drop them all and time the next.
    Connect(args::ConnectArgs),
    /// Hold N subscribed connections and watch the server's memory.
    Idle(args::IdleArgs),
    /// Bursts of connects, each followed by a mass disconnect.
    Spike(connect::SpikeArgs),
    /// Backends publishing over the control API (`/v1/publish`, or `/v1/batch` with
    /// `--batch`), each request after the previous answer.
    HttpPublish(http_publish::HttpPublishArgs),
    /// Run the baseline broadcaster (a server, not a load).
    Baseline(baseline::BaselineArgs),
    /// The parts of `loadtest/million.sh`: generators, publishers, sampler, report.
    Million(million::MillionArgs),
    /// Assistant replies as message streams (streaming ingest) or as plain publishes per
    /// token: appends/s, CPU per append, token-to-viewer latency, frames per viewer.
    Streams(streams::StreamsArgs),
    /// One long reply resumed from its start and its middle: bytes and time.
    StreamsResume(streams::ResumeArgs),
    /// The application backend of `loadtest/hooks.sh` (a server, not a load): answers
    /// every hook at once or after a delay, counts requests and the most in flight.
    HookBackend(hook_backend::HookBackendArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct ClusterArgs {
    /// WebSocket URLs publishers connect to (comma separated).
    #[arg(long, value_delimiter = ',')]
    publish_on: Vec<String>,
    /// WebSocket URLs subscribers connect to, round robin (comma separated).
    #[arg(long, value_delimiter = ',')]
    subscribe_on: Vec<String>,
    /// Subscriber connections.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Publisher connections.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Messages per second, all publishers together.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// How long to publish, in seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Payload size in bytes (at least 40).
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// Channel to use.
    #[arg(long, default_value = "loadtest")]
    channel: String,
    /// Write the results as JSON here too.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Percentiles of a latency histogram, in microseconds, as every scenario reports them.
pub(crate) fn latency_json(histogram: &Histogram<u64>) -> serde_json::Value {
    serde_json::json!({
        "p50": histogram.value_at_quantile(0.50),
        "p95": histogram.value_at_quantile(0.95),
        "p99": histogram.value_at_quantile(0.99),
        "p999": histogram.value_at_quantile(0.999),
        "max": histogram.max(),
    })
}

/// Prints the results as a table and writes them as JSON to `json` (to stdout after the
/// table when no file is given).
pub(crate) fn report(
    results: &serde_json::Value,
    json: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    table_rows("", results, &mut rows);
    let width = rows.iter().map(|(key, _)| key.len()).max().unwrap_or(0);
    for (key, value) in &rows {
        println!("{key:<width$}  {value}");
    }
    match json {
        Some(path) => std::fs::write(path, results.to_string())
            .with_context(|| format!("writing {}", path.display()))?,
        None => println!("{}", serde_json::to_string_pretty(results)?),
    }
    Ok(())
}

/// One row per scalar, keyed by its dotted path; lists of samples are summarized by length
/// (they are in the JSON).
fn table_rows(prefix: &str, value: &serde_json::Value, rows: &mut Vec<(String, String)>) {
    use serde_json::Value;
    match value {
        Value::Object(fields) => {
            for (key, field) in fields {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                table_rows(&path, field, rows);
            }
        }
        Value::Array(items) if items.iter().any(Value::is_object) => {
            rows.push((
                prefix.to_owned(),
                format!("{} samples (see JSON)", items.len()),
            ));
        }
        Value::Number(number) => rows.push((
            prefix.to_owned(),
            number.as_f64().map_or_else(
                || number.to_string(),
                |float| {
                    if float.fract() == 0.0 {
                        number.to_string()
                    } else {
                        format!("{float:.3}")
                    }
                },
            ),
        )),
        other => rows.push((prefix.to_owned(), other.to_string())),
    }
}

pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
        })
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        // One thread per process: see `million::main`.
        Scenario::Million(args) => million::main(args),
        scenario => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(run(scenario)),
    }
}

async fn run(scenario: Scenario) -> anyhow::Result<()> {
    match scenario {
        Scenario::Cluster(args) => cluster(args).await,
        Scenario::Fanout(args) => fanout::run(args).await,
        Scenario::Channels(args) => fanout::channels(args).await,
        Scenario::Soak(args) => fanout::soak(args).await,
        Scenario::Connect(args) => connect::run(args).await,
        Scenario::HookBackend(args) => hook_backend::run(args).await,
        Scenario::HttpPublish(args) => http_publish::run(args).await,
        Scenario::Streams(args) => streams::run(args).await,
        Scenario::StreamsResume(args) => streams::resume(args).await,
        Scenario::Idle(args) => connect::idle(args).await,
        Scenario::Spike(args) => connect::spike(args).await,
        Scenario::Baseline(args) => baseline::run(args).await,
        Scenario::Million(_) => unreachable!("main runs it on a runtime of its own"),
    }
}

async fn cluster(args: ClusterArgs) -> anyhow::Result<()> {
    if args.publish_on.is_empty() || args.subscribe_on.is_empty() {
        bail!("--publish-on and --subscribe-on each need at least one URL");
    }
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let received = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));

    // Subscribers first; each counts and times what it receives until told to stop.
    let mut subscribers = Vec::new();
    for index in 0..args.subscribers {
        let url = &args.subscribe_on[index % args.subscribe_on.len()];
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .with_context(|| format!("connecting to {url}"))?;
        ws.next().await; // welcome
        let subscribe = serde_json::json!({"type":"subscribe","id":1,"channel":args.channel});
        ws.send(Message::Text(subscribe.to_string().into())).await?;
        ws.next().await; // subscribed
        let histogram = Arc::clone(&histogram);
        let received = Arc::clone(&received);
        subscribers.push(tokio::spawn(async move {
            let mut local =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds are valid");
            let idle = Duration::from_secs(5);
            while let Ok(Some(Ok(Message::Text(text)))) =
                tokio::time::timeout(idle, ws.next()).await
            {
                let Ok(frame) = serde_json::from_str::<serde_json::Value>(&text) else {
                    continue;
                };
                if frame["type"] != "message" {
                    continue;
                }
                if let Some(sent) = frame["data"]["ts"].as_u64() {
                    let micros = now_ns().saturating_sub(sent) / 1000;
                    let _ = local.record(micros.max(1));
                }
                received.fetch_add(1, Ordering::Relaxed);
            }
            histogram
                .lock()
                .expect("no panics while held")
                .add(&local)
                .ok();
        }));
    }

    let per_publisher = (args.rate / args.publishers as u64).max(1);
    let interval = Duration::from_nanos(1_000_000_000 / per_publisher);
    let pad = "x".repeat(args.payload.saturating_sub(40));
    let started = tokio::time::Instant::now();
    let mut publishers = Vec::new();
    for index in 0..args.publishers {
        let url = args.publish_on[index % args.publish_on.len()].clone();
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
        let (mut sink, mut stream) = ws.split();
        let acked = Arc::clone(&acked);
        let refused = Arc::clone(&refused);
        let channel = args.channel.clone();
        let pad = pad.clone();
        let duration = Duration::from_secs(args.duration);
        let reader = tokio::spawn(async move {
            while let Ok(Some(Ok(Message::Text(text)))) =
                tokio::time::timeout(Duration::from_secs(5), stream.next()).await
            {
                if text.contains("\"published\"") {
                    acked.fetch_add(1, Ordering::Relaxed);
                } else if text.contains("\"error\"") {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        publishers.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n = 0_u64;
            while started.elapsed() < duration {
                ticker.tick().await;
                let frame = format!(
                    r#"{{"type":"publish","id":{n},"channel":"{channel}","data":{{"ts":{},"pad":"{pad}"}}}}"#,
                    now_ns()
                );
                if sink.send(Message::Text(frame.into())).await.is_err() {
                    break;
                }
                n += 1;
            }
            drop(reader);
            n
        }));
    }
    let mut sent = 0;
    for publisher in publishers {
        sent += publisher.await?;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    for subscriber in subscribers {
        subscriber.await?;
    }
    let histogram = histogram.lock().expect("no panics while held");
    let acked = acked.load(Ordering::Relaxed);
    let received = received.load(Ordering::Relaxed);
    let expected = acked * args.subscribers as u64;
    let results = serde_json::json!({
        "scenario": "cluster",
        "publishers": args.publishers,
        "subscribers": args.subscribers,
        "target_rate": args.rate,
        "sent": sent,
        "acknowledged": acked,
        "refused": refused.load(Ordering::Relaxed),
        "publish_rate": (acked as f64 / publish_secs).round(),
        "expected_deliveries": expected,
        "delivered": received,
        "delivered_ratio": if expected == 0 { 0.0 } else { received as f64 / expected as f64 },
        "latency_us": latency_json(&histogram),
    });
    report(&results, args.json.as_deref())?;
    Ok(())
}
