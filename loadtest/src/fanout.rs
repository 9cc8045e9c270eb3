//! Scenario `fanout`: N subscribers of one channel, R publishes a second through one
//! publisher connection. Reports deliveries per second, loss, end-to-end latency from the
//! timestamp in each payload, and (with `--server-pid`) the server's CPU time per delivery
//! and RSS. Runs against Switchboard or, with `--baseline`, the baseline broadcaster.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use tokio_tungstenite::{MaybeTlsStream, tungstenite::Message};

use crate::args::{FanoutArgs, PublishVia};
use crate::{lean, now_ns, proc_stat};

mod subscriber;

use subscriber::{connect, padding, stamp};

/// One message for an HTTP publisher: its number, channel index and channel.
type Ticket = (u64, usize, String);

/// An HTTP publisher's task: its request latencies, and the channel indexes of the
/// publishes the server refused with 503 (back-pressure; nothing was published).
type PublisherTask = tokio::task::JoinHandle<anyhow::Result<(Histogram<u64>, Vec<usize>)>>;

/// `--publish-via http`: `publishers` tasks take tickets and POST them, each waiting for its
/// answer; returns the sender of tickets and the tasks (each yields its request latencies).
fn http_publishers(args: &FanoutArgs) -> (flume::Sender<Ticket>, Vec<PublisherTask>) {
    let (tx, rx) = flume::bounded::<Ticket>(args.publishers.max(1));
    let pad = padding(args.payload.saturating_sub(40), args.words);
    let tasks = (0..args.publishers.max(1))
        .map(|_| {
            let (rx, pad, control) = (rx.clone(), pad.clone(), args.control);
            tokio::spawn(async move {
                let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                let mut connection = crate::http_publish::Connection::open(control).await?;
                let head = format!(
                    "POST /v1/publish HTTP/1.1\r\nhost: {control}\r\ncontent-type: application/json\r\n"
                );
                let mut refused = Vec::new();
                while let Ok((n, target, channel)) = rx.recv_async().await {
                    let body = format!(
                        r#"{{"channel":"{channel}","data":{{"ts":{},"n":{n},"pad":"{pad}"}}}}"#,
                        now_ns()
                    );
                    let sent = tokio::time::Instant::now();
                    let status = connection.post(&head, &body).await?;
                    let _ = latency.record(u64::try_from(sent.elapsed().as_micros())?.max(1));
                    match status {
                        200 => {}
                        503 => refused.push(target),
                        _ => anyhow::bail!("publish answered {status}"),
                    }
                }
                Ok((latency, refused))
            })
        })
        .collect();
    (tx, tasks)
}

/// The channel of subscriber (or message) `index`.
fn channel_name(args: &FanoutArgs, index: usize) -> String {
    if args.channels <= 1 {
        args.channel.clone()
    } else {
        format!("{}-{}", args.channel, index % args.channels)
    }
}

/// Shared latency histograms, picked by subscriber index.
const HISTOGRAM_SHARDS: usize = 16;

#[derive(Debug, Clone, clap::Args)]
pub struct ChannelsArgs {
    #[command(flatten)]
    fanout: FanoutArgs,
}

/// Scenario `channels`: the subscribers spread over many channels (`--channels`, 1,000 unless
/// given), each publish to a random one.
pub async fn channels(args: ChannelsArgs) -> anyhow::Result<()> {
    let mut args = args.fanout;
    if args.channels <= 1 {
        args.channels = 1_000;
    }
    args.random = true;
    run_scenario(args, "channels").await
}

#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    #[command(flatten)]
    fanout: FanoutArgs,
    /// Minutes of steady load (replaces `--duration`).
    #[arg(long, default_value_t = 10)]
    minutes: u64,
}

/// Scenario `soak`: steady fan-out for `--minutes`, sampled every `--report-every` seconds (30
/// unless given); the report adds the drift of RSS and p99 latency from the first sample to
/// the last.
pub async fn soak(args: SoakArgs) -> anyhow::Result<()> {
    let mut fanout = args.fanout;
    fanout.duration = args.minutes * 60;
    if fanout.report_every == 0 {
        fanout.report_every = 30;
    }
    run_scenario(fanout, "soak").await
}

pub async fn run(args: FanoutArgs) -> anyhow::Result<()> {
    run_scenario(args, "fanout").await
}

/// A small xorshift generator: random channel picks without a dependency.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        usize::try_from(self.0 % bound.max(1) as u64).unwrap_or(0)
    }
}

async fn run_scenario(args: FanoutArgs, scenario: &'static str) -> anyhow::Result<()> {
    // A few shared histograms rather than one per subscriber: each is about 240 KB, which
    // times 19,000 subscribers would not fit next to the server.
    let histograms: Arc<Vec<Mutex<Histogram<u64>>>> = Arc::new(
        (0..HISTOGRAM_SHARDS)
            .map(|_| Histogram::new_with_bounds(1, 60_000_000, 3).map(Mutex::new))
            .collect::<Result<_, _>>()?,
    );
    // The same, emptied at every interval sample.
    let interval_histograms: Arc<Vec<Mutex<Histogram<u64>>>> = Arc::new(
        (0..HISTOGRAM_SHARDS)
            .map(|_| Histogram::new_with_bounds(1, 60_000_000, 3).map(Mutex::new))
            .collect::<Result<_, _>>()?,
    );
    let delivered = Arc::new(AtomicU64::new(0));
    // Per published message: the latest delivery's latency, i.e. when its broadcast
    // completed. Indexed by the message number carried in the payload.
    let capacity = usize::try_from((args.rate * args.duration * 2).max(4096))
        .unwrap_or(usize::MAX)
        .max(args.completion_slots);
    let completion: Arc<Vec<AtomicU64>> =
        Arc::new((0..capacity).map(|_| AtomicU64::new(0)).collect());
    // Subscribers wait as long as publishing lasts, then stop 3 s after their last frame.
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let rss_before_connect = args.server_pid.and_then(proc_stat::rss_kib);
    let connect_started = tokio::time::Instant::now();
    // With workers, they hold the subscribers and this process only publishes.
    let mut workers = if args.workers > 1 && !args.worker {
        Some(crate::workers::start_fanout(&args).await?)
    } else {
        None
    };
    let local_subscribers = if workers.is_some() {
        0
    } else {
        args.subscribers
    };
    crate::source::warn_if_crowded(
        local_subscribers,
        args.server.len(),
        usize::from(args.source_addrs),
    );
    let mut subscribers = Vec::with_capacity(local_subscribers);
    for local in 0..local_subscribers {
        let index = args.subscriber_offset + local;
        let server = args.server[index % args.server.len()];
        let mut ws = connect(&args, server, index).await?;
        let subscribe = format!(
            r#"{{"type":"subscribe","id":1,"channel":"{}"}}"#,
            channel_name(&args, index)
        );
        if !args.baseline {
            ws.next().await; // welcome
            ws.send(Message::Text(subscribe.into())).await?;
            ws.next().await; // subscribed
        } else if args.channels > 1 {
            // The baseline answers nothing; it files the socket under the channel.
            ws.send(Message::Text(subscribe.into())).await?;
        }
        // From here on the subscriber reads raw frames: see `lean`.
        let MaybeTlsStream::Plain(mut stream) = ws.into_inner() else {
            anyhow::bail!("the load generator speaks plain TCP only");
        };
        let histograms = Arc::clone(&histograms);
        let interval_histograms = Arc::clone(&interval_histograms);
        let delivered = Arc::clone(&delivered);
        let completion = Arc::clone(&completion);
        let mut done_rx = done_rx.clone();
        let deflate = args.deflate;
        subscribers.push(tokio::spawn(async move {
            let histogram = &histograms[index % HISTOGRAM_SHARDS];
            let interval_histogram = &interval_histograms[index % HISTOGRAM_SHARDS];
            let mut reader = if deflate {
                lean::FrameReader::inflating()
            } else {
                lean::FrameReader::default()
            };
            let mut on_text = |payload: &[u8]| {
                let Some((sent, n)) = stamp(payload) else {
                    return;
                };
                let micros = (now_ns().saturating_sub(sent) / 1000).max(1);
                let _ = histogram
                    .lock()
                    .expect("no panics while held")
                    .record(micros);
                let _ = interval_histogram
                    .lock()
                    .expect("no panics while held")
                    .record(micros);
                delivered.fetch_add(1, Ordering::Relaxed);
                let slot = n
                    .and_then(|n| usize::try_from(n).ok())
                    .and_then(|n| completion.get(n));
                if let Some(slot) = slot {
                    slot.fetch_max(micros, Ordering::Relaxed);
                }
            };
            loop {
                let step = if *done_rx.borrow() {
                    match tokio::time::timeout(
                        Duration::from_secs(3),
                        reader.read(&mut stream, &mut on_text),
                    )
                    .await
                    {
                        Ok(step) => step,
                        Err(_) => break,
                    }
                } else {
                    tokio::select! {
                        step = reader.read(&mut stream, &mut on_text) => step,
                        _ = done_rx.changed() => continue,
                    }
                };
                match step {
                    Ok(lean::Read::More) => {}
                    Ok(lean::Read::Closed(code)) => return Some(format!("closed_{code}")),
                    Ok(lean::Read::Eof) => return Some("eof_without_close".to_owned()),
                    Err(err) => return Some(format!("io_{:?}", err.kind())),
                }
            }
            None
        }));
        if index % 1000 == 999 {
            eprintln!("connected {}", index + 1);
        }
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let rss_after_connect = args.server_pid.and_then(proc_stat::rss_kib);

    if args.worker {
        // Tell the parent, then hold until it closes our stdin (publishing is over).
        println!("ready {local_subscribers}");
        let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut tokio::io::sink()).await;
    } else if args.rate == 0 {
        // Subscribers only: hold them while another process publishes.
        tokio::time::sleep(Duration::from_secs(args.duration)).await;
    }
    let publish_on = args.publish_on.unwrap_or(args.server[0]);
    let (mut sink, mut stream) = connect(&args, publish_on, 0).await?.split();
    // Drain whatever the server sends the publisher (acks, or the broadcast itself).
    let drain = tokio::spawn(async move {
        while let Ok(Some(Ok(_))) =
            tokio::time::timeout(Duration::from_secs(3), stream.next()).await
        {}
    });
    let mut http = (args.publish_via == PublishVia::Http).then(|| http_publishers(&args));
    let pad = padding(args.payload.saturating_sub(40), args.words);
    let interval = Duration::from_nanos(1_000_000_000 / args.rate.max(1));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let cpu_before = args.server_pid.and_then(proc_stat::cpu_seconds);
    let started = tokio::time::Instant::now();
    let mut published = 0_u64;
    let mut published_per_channel = vec![0_u64; args.channels.max(1)];
    let mut rng = XorShift(now_ns() | 1);
    let mut last_progress = started;
    let mut last_sample = started;
    let mut intervals = Vec::new();
    while args.rate > 0 && started.elapsed() < Duration::from_secs(args.duration) {
        ticker.tick().await;
        let target = if args.random {
            rng.below(args.channels)
        } else {
            usize::try_from(published).unwrap_or(0) % args.channels.max(1)
        };
        published_per_channel[target] += 1;
        if let Some((tickets, _)) = &http {
            // Waits while every publisher is busy: the rate falls behind, and catches up in a
            // burst once one is free.
            tickets
                .send_async((published, target, channel_name(&args, target)))
                .await?;
        } else {
            let frame = format!(
                r#"{{"type":"publish","id":{published},"channel":"{}","data":{{"ts":{},"n":{published},"pad":"{pad}"}}}}"#,
                channel_name(&args, target),
                now_ns()
            );
            sink.send(Message::Text(frame.into())).await?;
        }
        published += 1;
        if args.report_every > 0 && last_sample.elapsed() >= Duration::from_secs(args.report_every)
        {
            last_sample = tokio::time::Instant::now();
            let mut window = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            for shard in interval_histograms.iter() {
                let mut shard = shard.lock().expect("no panics while held");
                window.add(&*shard)?;
                shard.reset();
            }
            let sample = serde_json::json!({
                "t": started.elapsed().as_secs(),
                "published": published,
                "delivered": delivered.load(Ordering::Relaxed),
                "p99_us": window.value_at_quantile(0.99),
                "server_rss_kib": args.server_pid.and_then(proc_stat::rss_kib),
            });
            eprintln!("interval {sample}");
            intervals.push(sample);
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = tokio::time::Instant::now();
            eprintln!(
                "t={:>3.0}s published={published} delivered={}",
                started.elapsed().as_secs_f64(),
                delivered.load(Ordering::Relaxed)
            );
        }
    }
    let mut request_latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut refused = 0_u64;
    if let Some((tickets, tasks)) = http.take() {
        drop(tickets);
        for task in tasks {
            let (latency, refused_targets) = task.await??;
            request_latency.add(latency)?;
            for target in refused_targets {
                published_per_channel[target] -= 1;
                published -= 1;
                refused += 1;
            }
        }
    }
    let publish_secs = started.elapsed().as_secs_f64();
    done_tx.send_replace(true);
    // How subscribers ended other than by going quiet once publishing stopped.
    let mut errors: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for subscriber in subscribers {
        if let Some(kind) = subscriber.await? {
            *errors.entry(kind).or_default() += 1;
        }
    }
    drain.abort();
    // Subscribers stop 3 s after the last frame; that idle tail is not server work.
    let cpu_after = args.server_pid.and_then(proc_stat::cpu_seconds);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for shard in histograms.iter() {
        histogram.add(&*shard.lock().expect("no panics while held"))?;
    }
    let mut delivered = delivered.load(Ordering::Relaxed);
    if let Some(workers) = workers.take() {
        let merged = workers.finish().await?;
        delivered += merged.delivered;
        histogram.add(&merged.latency)?;
        for (kind, count) in merged.errors {
            *errors.entry(kind).or_default() += count;
        }
        for (slot, micros) in completion.iter().zip(merged.completion) {
            slot.fetch_max(micros, Ordering::Relaxed);
        }
    }
    // Subscribers per channel times messages per channel, summed over the channels.
    let channels = args.channels.max(1) as u64;
    let expected = (0..channels)
        .zip(&published_per_channel)
        .map(|(k, messages)| {
            let subscribers = args.subscribers as u64 / channels
                + u64::from(k < args.subscribers as u64 % channels);
            messages * subscribers
        })
        .sum::<u64>();
    let cpu_us_per_delivery = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) if delivered > 0 => {
            Some((after - before) * 1e6 / delivered as f64)
        }
        _ => None,
    };
    let mut completed = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for slot in completion
        .iter()
        // A subscribers-only process does not know how many were published: all slots.
        .take(if published > 0 {
            usize::try_from(published).unwrap_or(usize::MAX)
        } else {
            usize::MAX
        })
    {
        let micros = slot.load(Ordering::Relaxed);
        if micros > 0 {
            let _ = completed.record(micros);
        }
    }
    let results = serde_json::json!({
        "scenario": scenario,
        "target": if args.baseline { "baseline" } else { "switchboard" },
        "subscribers": args.subscribers,
        "channels": args.channels,
        "rate": args.rate,
        "payload": args.payload,
        "words": args.words,
        "deflate": args.deflate,
        "published": published,
        "expected": expected,
        "delivered": delivered,
        "loss": expected.saturating_sub(delivered),
        "errors": errors,
        "deliveries_per_second": (delivered as f64 / publish_secs).round(),
        "connect_per_second": (args.subscribers as f64 / connect_secs).round(),
        "server_cpu_us_per_delivery": cpu_us_per_delivery,
        "server_rss_kib_after_connect": rss_after_connect,
        "server_rss_kib_per_connection": match (rss_before_connect, rss_after_connect) {
            (Some(before), Some(after)) if args.subscribers > 0 => {
                Some(after.saturating_sub(before) as f64 / args.subscribers as f64)
            }
            _ => None,
        },
        "broadcast_completion_us": {
            "p50": completed.value_at_quantile(0.50),
            "p99": completed.value_at_quantile(0.99),
            "max": completed.max(),
        },
        "latency_us": crate::latency_json(&histogram),
        "publish_via": match args.publish_via {
            PublishVia::Ws => "ws",
            PublishVia::Http => "http",
        },
        "publishers": args.publishers,
        "publish_rate_achieved": (published as f64 / publish_secs).round(),
        "publishes_refused": refused,
        "request_latency_us": (!request_latency.is_empty()).then(|| crate::latency_json(&request_latency)),
        "drift": drift(&intervals),
        "intervals": intervals,
        "workers": args.workers,
    });
    if args.worker {
        // What the parent merges: the latency histogram and each message's completion.
        let mut serialized = Vec::new();
        hdrhistogram::serialization::Serializer::serialize(
            &mut hdrhistogram::serialization::V2Serializer::new(),
            &histogram,
            &mut serialized,
        )
        .map_err(|err| anyhow::anyhow!("serializing the latency histogram: {err:?}"))?;
        let last = completion
            .iter()
            .rposition(|slot| slot.load(Ordering::Relaxed) > 0)
            .map_or(0, |n| n + 1);
        let merge = serde_json::json!({
            "delivered": delivered,
            "errors": errors,
            "latency_v2": serialized,
            "completion_us": completion[..last]
                .iter()
                .map(|slot| slot.load(Ordering::Relaxed))
                .collect::<Vec<_>>(),
        });
        let path = args.json.as_deref().context("a worker needs --json")?;
        std::fs::write(path, merge.to_string())?;
        return Ok(());
    }
    crate::report(&results, args.json.as_deref())?;
    Ok(())
}

/// How the interval samples moved from the first to the last: server RSS and p99 latency.
fn drift(intervals: &[serde_json::Value]) -> serde_json::Value {
    let (Some(first), Some(last)) = (intervals.first(), intervals.last()) else {
        return serde_json::Value::Null;
    };
    serde_json::json!({
        "server_rss_kib": [first["server_rss_kib"].clone(), last["server_rss_kib"].clone()],
        "p99_us": [first["p99_us"].clone(), last["p99_us"].clone()],
    })
}
