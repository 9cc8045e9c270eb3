//! `hook-backend`: the application backend of `loadtest/hooks.sh`, as fast as this machine
//! allows, so that a figure measures the node, not the backend: a minimal HTTP/1.1
//! keep-alive server (one task per connection, `Content-Length` bodies) answering every
//! hook at once or after `--delay-ms`. `/connect` names the user the upgrade's query gave
//! (`?user=N`); every other path allows. Counts requests and the most in flight at once, and
//! prints them as JSON after `--seconds`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

#[derive(Debug, Clone, clap::Args)]
pub struct HookBackendArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub listen: std::net::SocketAddr,
    /// Answer each request after this long.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Serve for this long, then print the counts and exit.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Also write the counts as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    now: AtomicUsize,
    most: AtomicUsize,
}

pub async fn run(args: HookBackendArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    let counts = Arc::new(Counts::default());
    let delay = Duration::from_millis(args.delay_ms);
    let accepting = {
        let counts = Arc::clone(&counts);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counts = Arc::clone(&counts);
                tokio::spawn(async move {
                    let _ = serve(stream, &counts, delay).await;
                });
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    accepting.abort();
    let results = serde_json::json!({
        "scenario": "hook-backend",
        "delay_ms": args.delay_ms,
        "requests": counts.requests.load(Ordering::SeqCst),
        "most_in_flight": counts.most.load(Ordering::SeqCst),
    });
    crate::report(&results, args.json.as_deref())
}

async fn serve(mut stream: TcpStream, counts: &Counts, delay: Duration) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        // The head.
        let head_end = loop {
            if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                break end + 4;
            }
            if buf.len() > 64 * 1024 {
                anyhow::bail!("head too large");
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        request.parse(&buf[..head_end])?;
        let path = request.path.unwrap_or("/").to_owned();
        let length: usize = request
            .headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case("content-length"))
            .and_then(|header| std::str::from_utf8(header.value).ok()?.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = buf[head_end..head_end + length].to_vec();
        buf.drain(..head_end + length);
        counts.requests.fetch_add(1, Ordering::SeqCst);
        let at_once = counts.now.fetch_add(1, Ordering::SeqCst) + 1;
        counts.most.fetch_max(at_once, Ordering::SeqCst);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let answer = if path.ends_with("/connect") {
            let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let user = request["query"]["user"]
                .as_str()
                .unwrap_or("anon")
                .to_owned();
            serde_json::json!({"result": {"user": user}}).to_string()
        } else {
            r#"{"result":{}}"#.to_owned()
        };
        counts.now.fetch_sub(1, Ordering::SeqCst);
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        stream.write_all(response.as_bytes()).await?;
    }
}
