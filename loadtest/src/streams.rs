//! Scenarios `streams` and `streams-resume`: assistant replies as message streams
//! (docs/streams.md), measured on the paths users take.
//!
//! `streams`: R concurrent replies, each to its own channel with V viewers, T tokens a
//! second each. `--mode stream` relays each reply through one streaming-ingest request
//! (`POST /v1/streams`, NDJSON sent chunked as tokens come); `--mode plain` publishes each
//! token as its own message (`POST /v1/publish` on a keep-alive connection per reply), the
//! way a backend does without streams. Every token carries its index and send time, so
//! viewers check that each reply arrived whole and in order and measure token-to-viewer
//! latency (coalescing included). Reports appends/s, server CPU per append, latency,
//! frames per viewer per second and deliveries/s.
//!
//! `streams-resume`: one reply of N appends, then a subscriber resumes it from its start
//! and from its middle: bytes received and time until it holds the whole text.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::Instant,
};
use tokio_tungstenite::tungstenite::Message;

use crate::{http_publish::Connection, proc_stat};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// One streaming-ingest request per reply, one append per token.
    Stream,
    /// One `POST /v1/publish` per token.
    Plain,
}

#[derive(Debug, Clone, clap::Args)]
pub struct StreamsArgs {
    /// The WebSocket URL viewers connect to.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub ws: String,
    /// The control listener (host:port).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub control: SocketAddr,
    /// Concurrent replies, each to its own channel (`reply-0` ..).
    #[arg(long, default_value_t = 1000)]
    pub replies: usize,
    /// Viewers (WebSocket subscribers) per reply.
    #[arg(long, default_value_t = 2)]
    pub viewers: usize,
    /// Tokens per reply.
    #[arg(long, default_value_t = 300)]
    pub tokens: usize,
    /// Tokens a second, per reply.
    #[arg(long, default_value_t = 30)]
    pub rate: u64,
    #[arg(long, value_enum, default_value_t = Mode::Stream)]
    pub mode: Mode,
    /// Replies start spread over this many milliseconds (as replies to different users do).
    #[arg(long, default_value_t = 1000)]
    pub spread_ms: u64,
    /// PIDs of the servers, for their CPU time from /proc.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// What one viewer saw.
struct Seen {
    frames: u64,
    tokens: usize,
    in_order: bool,
    latency: Histogram<u64>,
}

pub async fn run(args: StreamsArgs) -> anyhow::Result<()> {
    let run_id = crate::now_ns() % 1_000_000_000;
    // Viewers first, all subscribed before the first token.
    let mut viewers = Vec::with_capacity(args.replies * args.viewers);
    let connect_limit = std::sync::Arc::new(tokio::sync::Semaphore::new(200));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(1024);
    for reply in 0..args.replies {
        for _ in 0..args.viewers {
            let (url, channel) = (args.ws.clone(), format!("reply-{run_id}-{reply}"));
            let (limit, ready) = (connect_limit.clone(), ready_tx.clone());
            let (tokens, mode) = (args.tokens, args.mode);
            viewers.push(tokio::spawn(async move {
                let permit = limit.acquire_owned().await?;
                view(&url, &channel, tokens, mode, permit, ready).await
            }));
        }
    }
    drop(ready_tx);
    for _ in 0..viewers.len() {
        ready_rx
            .recv()
            .await
            .context("a viewer failed to subscribe")?;
    }
    let cpu_before = proc_stat::total_cpu_secs(&args.server_pid);
    let started = Instant::now();
    let mut replies = Vec::with_capacity(args.replies);
    for reply in 0..args.replies {
        let args = args.clone();
        let delay =
            Duration::from_millis(args.spread_ms * reply as u64 / args.replies.max(1) as u64);
        replies.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let channel = format!("reply-{run_id}-{reply}");
            match args.mode {
                Mode::Stream => ingest(&args, &channel, &format!("r{reply}")).await,
                Mode::Plain => publish_tokens(&args, &channel).await,
            }
        }));
    }
    let mut errors = 0u64;
    for reply in replies {
        if let Err(err) = reply.await? {
            errors += 1;
            eprintln!("reply failed: {err:#}");
        }
    }
    let sending_secs = started.elapsed().as_secs_f64();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let (mut frames, mut lost, mut out_of_order) = (0u64, 0usize, 0usize);
    for viewer in viewers {
        let seen = tokio::time::timeout(Duration::from_secs(60), viewer)
            .await
            .context("every viewer finishes within 60 s of the last token")???;
        frames += seen.frames;
        lost += args.tokens - seen.tokens;
        out_of_order += usize::from(!seen.in_order);
        latency.add(&seen.latency)?;
    }
    let total_secs = started.elapsed().as_secs_f64();
    let cpu_after = proc_stat::total_cpu_secs(&args.server_pid);
    let appends = (args.replies * args.tokens) as f64;
    let cpu = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let reply_secs = args.tokens as f64 / args.rate as f64;
    let n_viewers = (args.replies * args.viewers) as f64;
    let results = serde_json::json!({
        "scenario": "streams",
        "mode": match args.mode { Mode::Stream => "stream", Mode::Plain => "plain" },
        "replies": args.replies,
        "viewers_per_reply": args.viewers,
        "tokens_per_reply": args.tokens,
        "tokens_per_second_per_reply": args.rate,
        "errors": errors,
        "appends_per_second": (appends / sending_secs).round(),
        "sending_seconds": (sending_secs * 100.0).round() / 100.0,
        "server_cpu_seconds": cpu.map(|cpu| (cpu * 100.0).round() / 100.0),
        "server_cpu_us_per_append": cpu.map(|cpu| (cpu * 1e6 / appends * 10.0).round() / 10.0),
        "server_cores_busy": cpu.map(|cpu| (cpu / total_secs * 100.0).round() / 100.0),
        "token_to_viewer_us": crate::latency_json(&latency),
        "frames_per_viewer_per_second": (frames as f64 / n_viewers / reply_secs * 10.0).round() / 10.0,
        "deliveries_per_second": (frames as f64 / sending_secs).round(),
        "tokens_lost": lost,
        "viewers_out_of_order": out_of_order,
    });
    crate::report(&results, args.json.as_deref())?;
    if lost > 0 || out_of_order > 0 || errors > 0 {
        bail!("{lost} tokens lost, {out_of_order} viewers out of order, {errors} replies failed");
    }
    Ok(())
}

/// A token: its index and send time, so that viewers can check order and measure latency.
fn token(index: usize) -> String {
    format!("~{index}:{:x} ", crate::now_ns())
}

/// One reply through one streaming-ingest request, paced at `rate` tokens a second.
async fn ingest(args: &StreamsArgs, channel: &str, message_id: &str) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(args.control).await?;
    stream.set_nodelay(true)?;
    let head = format!(
        "POST /v1/streams?channel={channel}&message_id={message_id} HTTP/1.1\r\nhost: {}\r\n\
         content-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n",
        args.control
    );
    stream.write_all(head.as_bytes()).await?;
    let mut ticks = tokio::time::interval(Duration::from_nanos(1_000_000_000 / args.rate.max(1)));
    for index in 0..args.tokens {
        ticks.tick().await;
        let line = format!("{{\"text\":\"{}\"}}\n", token(index));
        let chunk = format!("{:x}\r\n{line}\r\n", line.len());
        stream.write_all(chunk.as_bytes()).await?;
    }
    stream.write_all(b"0\r\n\r\n").await?;
    let mut answer = Vec::new();
    let mut buffer = [0; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") || !answer.ends_with(b"}") {
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buffer))
            .await
            .context("the ingest's answer")??;
        if read == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..read]);
    }
    let text = String::from_utf8_lossy(&answer);
    if !text.starts_with("HTTP/1.1 200") {
        bail!("ingest answered {}", text.lines().next().unwrap_or(""));
    }
    Ok(())
}

/// One reply as one plain publish per token, on a keep-alive connection.
async fn publish_tokens(args: &StreamsArgs, channel: &str) -> anyhow::Result<()> {
    let mut connection = Connection::open(args.control).await?;
    let head = format!(
        "POST /v1/publish HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n",
        args.control
    );
    let mut ticks = tokio::time::interval(Duration::from_nanos(1_000_000_000 / args.rate.max(1)));
    for index in 0..args.tokens {
        ticks.tick().await;
        let body = format!(
            r#"{{"channel":"{channel}","data":{{"t":"{}"}}}}"#,
            token(index)
        );
        let status = connection.post(&head, &body).await?;
        if status != 200 {
            bail!("publish answered {status}");
        }
    }
    Ok(())
}

/// What a viewer reads of a frame.
#[derive(serde::Deserialize)]
struct ViewedFrame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    text: Option<&'a str>,
    #[serde(default, borrow)]
    data: Option<PlainToken<'a>>,
}

/// A plain message's `data`: `{"t":"<token>"}`.
#[derive(serde::Deserialize)]
struct PlainToken<'a> {
    #[serde(default)]
    t: Option<&'a str>,
}

/// A viewer: subscribes, then reads its reply's frames until the whole reply arrived.
async fn view(
    url: &str,
    channel: &str,
    tokens: usize,
    mode: Mode,
    permit: tokio::sync::OwnedSemaphorePermit,
    ready: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<Seen> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    ws.send(Message::text(format!(
        r#"{{"type":"subscribe","id":1,"channel":"{channel}"}}"#
    )))
    .await?;
    let mut seen = Seen {
        frames: 0,
        tokens: 0,
        in_order: true,
        latency: Histogram::new_with_bounds(1, 600_000_000, 3)?,
    };
    loop {
        let Some(frame) = ws.next().await else {
            bail!("the connection closed");
        };
        let Message::Text(text) = frame? else {
            continue;
        };
        if text.contains("\"subscribed\"") {
            break;
        }
    }
    drop(permit);
    ready.send(()).await?;
    while seen.tokens < tokens {
        let Some(frame) = ws.next().await else {
            bail!("the connection closed after {} tokens", seen.tokens);
        };
        let Message::Text(text) = frame? else {
            continue;
        };
        let now = crate::now_ns();
        // Borrowed, typed: the viewers share the machine with the server, so they parse
        // no more than they need.
        let frame: ViewedFrame<'_> = serde_json::from_str(&text)?;
        let carried = match (mode, frame.kind) {
            (Mode::Stream, "append") => frame.text.unwrap_or(""),
            (Mode::Plain, "message") => frame.data.and_then(|data| data.t).unwrap_or(""),
            _ => continue,
        };
        seen.frames += 1;
        for token in carried.split_terminator(' ') {
            let Some((index, sent)) = token.trim_start_matches('~').split_once(':') else {
                continue;
            };
            let (Ok(index), Ok(sent)) = (index.parse::<usize>(), u64::from_str_radix(sent, 16))
            else {
                continue;
            };
            seen.in_order &= index == seen.tokens;
            seen.tokens += 1;
            let _ = seen
                .latency
                .record((now.saturating_sub(sent) / 1000).max(1));
        }
    }
    let _ = ws.close(None).await;
    Ok(seen)
}

#[derive(Debug, Clone, clap::Args)]
pub struct ResumeArgs {
    /// The WebSocket URL the resuming client connects to.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub ws: String,
    /// The control listener (host:port).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub control: SocketAddr,
    /// Appends in the reply.
    #[arg(long, default_value_t = 20_000)]
    pub appends: usize,
    /// Bytes of text per append.
    #[arg(long, default_value_t = 5)]
    pub append_bytes: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// `streams-resume`: builds one reply of `--appends` appends (in batches of 500), then
/// resumes it over a WebSocket from before its start, from its middle, and subscribes
/// without `since` while it is open (a second tab), and reports bytes and time for each.
pub async fn resume(args: ResumeArgs) -> anyhow::Result<()> {
    let channel = format!("resume-{}", crate::now_ns() % 1_000_000_000);
    let mut connection = Connection::open(args.control).await?;
    let head = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n",
            args.control
        )
    };
    let answer = connection
        .request(
            &head("/v1/publish"),
            &format!(r#"{{"channel":"{channel}","message_id":"long","stream":true,"data":{{"role":"assistant"}}}}"#),
        )
        .await?;
    let opened: serde_json::Value = serde_json::from_slice(&answer.body)?;
    let opened = opened["offset"].as_str().context("an offset")?.to_owned();
    let (epoch, first) = opened.split_once('-').context("an offset")?;
    let first: u64 = first.parse()?;
    let piece = "x".repeat(args.append_bytes);
    let mut done = 0;
    while done < args.appends {
        let n = (args.appends - done).min(500);
        let commands: Vec<String> = (0..n)
            .map(|_| {
                format!(
                    r#"{{"append":{{"channel":"{channel}","message_id":"long","text":"{piece}"}}}}"#
                )
            })
            .collect();
        let answer = connection
            .request(
                &head("/v1/batch"),
                &format!(r#"{{"commands":[{}]}}"#, commands.join(",")),
            )
            .await?;
        if answer.status != 200 {
            bail!("batch answered {}", answer.status);
        }
        done += n;
    }
    let text_bytes = args.appends * args.append_bytes;
    // Open: a second tab subscribes without `since`.
    let open = read_reply(&args.ws, &channel, None).await?;
    let finish = connection
        .request(
            &head("/v1/finish"),
            &format!(r#"{{"channel":"{channel}","message_id":"long"}}"#),
        )
        .await?;
    if finish.status != 200 {
        bail!("finish answered {}", finish.status);
    }
    let from_start = read_reply(&args.ws, &channel, Some(format!("{epoch}-{}", first - 1))).await?;
    let middle = first + args.appends as u64 / 2;
    let from_middle = read_reply(&args.ws, &channel, Some(format!("{epoch}-{middle}"))).await?;
    for (name, (bytes, frames, _, text)) in [
        ("open", &open),
        ("start", &from_start),
        ("middle", &from_middle),
    ] {
        if *text != text_bytes {
            bail!("resume from {name}: {text} bytes of text, expected {text_bytes}");
        }
        if *frames != 1 {
            bail!("resume from {name}: {frames} frames, expected the message whole in one");
        }
        let _ = bytes;
    }
    let entry = |(bytes, frames, micros, _): &(usize, usize, u128, usize)| serde_json::json!({ "bytes": bytes, "frames": frames, "micros": micros });
    let results = serde_json::json!({
        "scenario": "streams-resume",
        "appends": args.appends,
        "text_bytes": text_bytes,
        "second_tab_while_open": entry(&open),
        "resume_from_start": entry(&from_start),
        "resume_from_middle": entry(&from_middle),
        "plain_messages_instead": format!(
            "{} messages of {} bytes: history.size (100) keeps the last 100; a resume from the middle answers recovered:false",
            args.appends, args.append_bytes
        ),
    });
    crate::report(&results, args.json.as_deref())
}

/// Subscribes (with `since` when given) and reads until the reply's state frame arrived and
/// a ping's pong came back: (bytes of frames received, frames about the reply, µs, bytes of
/// text held).
async fn read_reply(
    url: &str,
    channel: &str,
    since: Option<String>,
) -> anyhow::Result<(usize, usize, u128, usize)> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    // The welcome first.
    ws.next().await.context("a welcome")??;
    let started = Instant::now();
    let since = since
        .map(|since| format!(r#","since":"{since}""#))
        .unwrap_or_default();
    ws.send(Message::text(format!(
        r#"{{"type":"subscribe","id":1,"channel":"{channel}"{since}}}"#
    )))
    .await?;
    ws.send(Message::text(r#"{"type":"ping","id":2}"#)).await?;
    let (mut bytes, mut frames, mut text) = (0, 0, 0);
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .context("frames within 30 s")?
            .context("an open connection")??;
        let Message::Text(frame) = frame else {
            continue;
        };
        bytes += frame.len();
        let value: serde_json::Value = serde_json::from_str(&frame)?;
        match value["type"].as_str() {
            Some("pong") => break,
            Some("message") => {
                frames += 1;
                text = value["text"].as_str().map_or(0, str::len);
            }
            Some("append") => {
                frames += 1;
                text += value["text"].as_str().map_or(0, str::len);
            }
            _ => {}
        }
    }
    let micros = started.elapsed().as_micros();
    let _ = ws.close(None).await;
    Ok((bytes, frames, micros, text))
}
