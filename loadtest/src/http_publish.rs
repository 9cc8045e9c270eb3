//! Scenario `http-publish`: backends publishing through the control API, as fast as they
//! can. Each publisher holds one keep-alive HTTP/1.1 connection and sends the next request
//! when the previous one is answered; `--batch K` sends `POST /v1/batch` with K publishes
//! instead of K single `POST /v1/publish` requests. Reports publishes per second, the
//! latency of each request, and with `--server-pid` the server's CPU per publish.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::proc_stat;

#[derive(Debug, Clone, clap::Args)]
pub struct HttpPublishArgs {
    /// The control listener (host:port).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub control: SocketAddr,
    /// Publishes in all, over all publishers.
    #[arg(long, default_value_t = 20_000)]
    pub publishes: usize,
    /// Concurrent publishers, each with its own connection.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Publishes per request: 1 sends `POST /v1/publish`, more send `POST /v1/batch`.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Channels published to, round robin (`PREFIX0` .. `PREFIX(N-1)`).
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// The channels' common prefix (`room-` reaches what `connect`/`idle` subscribe to).
    #[arg(long, default_value = "bench-")]
    pub channel_prefix: String,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    /// An API key, sent as `Authorization: Bearer`.
    #[arg(long)]
    pub api_key: Option<String>,
    /// PIDs of the servers, for their CPU time from /proc.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// One keep-alive HTTP/1.1 connection that POSTs JSON and reads whole answers.
pub struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::new(),
        })
    }

    /// Whether the server has closed this idle connection (its end arrived, or bytes nobody
    /// asked for).
    pub async fn closed_by_peer(&mut self) -> bool {
        let mut byte = [0_u8; 1];
        // Polled once: a live idle connection has nothing to read.
        tokio::time::timeout(Duration::ZERO, self.stream.read(&mut byte))
            .await
            .is_ok()
    }

    /// Sends `head` (request line and headers, without content-length) with `body`; the
    /// answer's status.
    pub async fn post(&mut self, head: &str, body: &str) -> anyhow::Result<u16> {
        Ok(self.request(head, body).await?.status)
    }

    /// Sends `head` with `body` and reads the whole answer.
    pub async fn request(&mut self, head: &str, body: &str) -> anyhow::Result<Answer> {
        let request = format!("{head}content-length: {}\r\n\r\n{body}", body.len());
        self.stream.write_all(request.as_bytes()).await?;
        self.buf.clear();
        loop {
            let mut chunk = [0u8; 8192];
            let read = self.stream.read(&mut chunk).await?;
            if read == 0 {
                bail!("the server closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..read]);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head_len) = response.parse(&self.buf)? {
                let header = |name: &str| {
                    response
                        .headers
                        .iter()
                        .find(|header| header.name.eq_ignore_ascii_case(name))
                        .and_then(|header| std::str::from_utf8(header.value).ok())
                };
                let length = header("content-length")
                    .and_then(|value| value.parse::<usize>().ok())
                    .context("a content-length")?;
                // A draining node answers `Connection: close`: the next request needs a new
                // connection.
                let close =
                    header("connection").is_some_and(|value| value.eq_ignore_ascii_case("close"));
                let status = response.code.context("a status")?;
                while self.buf.len() < head_len + length {
                    let read = self.stream.read(&mut chunk).await?;
                    if read == 0 {
                        bail!("the server closed the connection mid-answer");
                    }
                    self.buf.extend_from_slice(&chunk[..read]);
                }
                return Ok(Answer {
                    status,
                    body: self.buf[head_len..head_len + length].to_vec(),
                    close,
                });
            }
        }
    }
}

/// An HTTP answer.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    /// The server asked to close the connection after it.
    pub close: bool,
}

pub async fn run(args: HttpPublishArgs) -> anyhow::Result<()> {
    let batch = args.batch.max(1);
    let publishers = args.publishers.max(1);
    let requests_each = args.publishes / batch / publishers;
    let cpu_before = proc_stat::total_cpu_secs(&args.server_pid);
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(publishers);
    for publisher in 0..publishers {
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            publish_loop(&args, publisher, requests_each, batch).await
        }));
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0u64;
    for task in tasks {
        let (histogram, failed) = task.await??;
        latency.add(histogram)?;
        errors += failed;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu_after = proc_stat::total_cpu_secs(&args.server_pid);
    let published = requests_each * batch * publishers;
    let server_cpu_us_per_publish = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) if published > 0 => {
            Some(((after - before) * 1e6 / published as f64 * 10.0).round() / 10.0)
        }
        _ => None,
    };
    let results = serde_json::json!({
        "scenario": "http-publish",
        "publishers": publishers,
        "batch": batch,
        "channels": args.channels,
        "payload": args.payload,
        "publishes": published,
        "requests": requests_each * publishers,
        "errors": errors,
        "publishes_per_second": (published as f64 / secs).round(),
        "request_latency_us": crate::latency_json(&latency),
        "server_cpu_us_per_publish": server_cpu_us_per_publish,
    });
    crate::report(&results, args.json.as_deref())
}

async fn publish_loop(
    args: &HttpPublishArgs,
    publisher: usize,
    requests: usize,
    batch: usize,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut connection = Connection::open(args.control).await?;
    let auth = args
        .api_key
        .as_ref()
        .map(|key| format!("authorization: Bearer {key}\r\n"))
        .unwrap_or_default();
    let path = if batch == 1 {
        "/v1/publish"
    } else {
        "/v1/batch"
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n{auth}",
        args.control
    );
    let data = format!("\"{}\"", "x".repeat(args.payload.saturating_sub(2)));
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    let mut next_channel = publisher;
    for _ in 0..requests {
        let mut publish = || {
            let channel = next_channel % args.channels.max(1);
            next_channel += 1;
            let prefix = &args.channel_prefix;
            format!(r#"{{"channel":"{prefix}{channel}","data":{data}}}"#)
        };
        let body = if batch == 1 {
            publish()
        } else {
            let commands: Vec<String> = (0..batch)
                .map(|_| format!(r#"{{"publish":{}}}"#, publish()))
                .collect();
            format!(r#"{{"commands":[{}]}}"#, commands.join(","))
        };
        let sent = tokio::time::Instant::now();
        let status = tokio::time::timeout(Duration::from_secs(10), connection.post(&head, &body))
            .await
            .context("an answer within 10 s")??;
        let _ = latency.record(u64::try_from(sent.elapsed().as_micros())?.max(1));
        if status != 200 {
            errors += 1;
        }
    }
    Ok((latency, errors))
}
