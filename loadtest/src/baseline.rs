//! The baseline: a minimal WebSocket broadcaster, the ceiling Switchboard's fan-out figures
//! are reported against. It upgrades connections; every text frame a client sends, and the
//! body of every `POST` to its HTTP listener, is framed once and queued (one shared `Bytes`)
//! to the sockets of its channel. Channels are the least that makes the comparison fair: a
//! client frame containing `"type":"subscribe"` files its socket under the frame's
//! `"channel":"NAME"` (found by substring, no JSON parsing, no reply); a publish goes to the
//! sockets filed under its `"channel"` plus every socket that never subscribed. Nothing
//! else: no JSON, no offsets, no history, no auth.
//!
//! It is built the way a fan-out server that wants the machine's ceiling would be: each
//! socket has a bounded queue and one writer task that takes everything queued in one
//! `writev`, so writes batch as soon as a socket has more than one frame waiting; a publish
//! (WebSocket or HTTP) is done once its frame is in every queue, and an HTTP publish is
//! answered then, never after the writes. A socket whose queue overflows
//! ([`QUEUE_LIMIT`] frames) is dropped, as a slow consumer.
//!
//! Frames a publisher's one read brings are queued together (one pass over the sockets).

use std::{
    collections::VecDeque,
    io::IoSlice,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, tcp::OwnedWriteHalf},
    sync::Notify,
};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Frames one socket may have waiting before it is dropped as a slow consumer (Switchboard's
/// default `limits.outbound_queue_messages`).
const QUEUE_LIMIT: usize = 1024;

#[derive(Debug, Clone, clap::Args)]
pub struct BaselineArgs {
    /// Address to listen on for WebSockets.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Address to listen on for HTTP publishes: every `POST` body is broadcast as one frame
    /// and answered `200 {}` once queued (keep-alive HTTP/1.1, as `fanout --publish-via http`
    /// sends).
    #[arg(long, default_value = "127.0.0.1:8091")]
    control: SocketAddr,
    /// Print, for every broadcast, how long queueing it to every socket took (wall and CPU).
    #[arg(long)]
    log_passes: bool,
}

type Sockets = Arc<Mutex<Registry>>;

/// Sockets by channel; `""` holds those that never subscribed (they get every publish).
#[derive(Default)]
struct Registry {
    channels: std::collections::HashMap<String, Vec<Arc<Socket>>>,
}

/// What marks a client frame as a subscribe.
const SUBSCRIBE: &[u8] = b"\"type\":\"subscribe\"";

/// The text of `"channel":"..."` in `payload`, found without parsing.
fn channel_of(payload: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"\"channel\":\"";
    let start = payload.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = payload[start..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&payload[start..start + len]).ok()
}

/// One subscriber socket's queue; its writer task owns the socket's write half.
struct Socket {
    queue: Mutex<Queue>,
    ready: Notify,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    /// The socket broke or overflowed: its writer stops, publishers skip it.
    closed: bool,
}

pub async fn run(args: BaselineArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    let control = TcpListener::bind(args.control).await?;
    eprintln!(
        "baseline broadcaster on ws://{}/ws, HTTP publishes on http://{}",
        listener.local_addr()?,
        control.local_addr()?
    );
    let sockets: Sockets = Arc::default();
    let log_passes = args.log_passes;
    tokio::spawn({
        let sockets = Arc::clone(&sockets);
        async move {
            while let Ok((stream, _)) = control.accept().await {
                let sockets = Arc::clone(&sockets);
                tokio::spawn(async move {
                    let _ = serve_http(stream, sockets, log_passes).await;
                });
            }
        }
    });
    loop {
        let (stream, _) = listener.accept().await?;
        let sockets = Arc::clone(&sockets);
        tokio::spawn(async move {
            let _ = serve(stream, sockets, log_passes).await;
        });
    }
}

/// Keep-alive HTTP/1.1: each request's body is broadcast, then `200 {}` is sent.
async fn serve_http(
    mut stream: TcpStream,
    sockets: Sockets,
    log_passes: bool,
) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut pending: Vec<u8> = Vec::with_capacity(4096);
    let mut buffer = [0_u8; 8192];
    loop {
        // One request: the head, then content-length bytes of body.
        let (head_len, body_len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut headers);
            if let httparse::Status::Complete(head_len) = request.parse(&pending)? {
                let body_len = request
                    .headers
                    .iter()
                    .find(|header| header.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|header| std::str::from_utf8(header.value).ok()?.parse().ok())
                    .unwrap_or(0_usize);
                break (head_len, body_len);
            }
            let n = stream.read(&mut buffer).await?;
            anyhow::ensure!(n > 0 && pending.len() < 1 << 20, "closed or oversized");
            pending.extend_from_slice(&buffer[..n]);
        };
        while pending.len() < head_len + body_len {
            let n = stream.read(&mut buffer).await?;
            anyhow::ensure!(n > 0, "closed mid-body");
            pending.extend_from_slice(&buffer[..n]);
        }
        let mut frame = Vec::with_capacity(body_len + 10);
        frame_into(&mut frame, &pending[head_len..head_len + body_len]);
        let channel = channel_of(&pending[head_len..head_len + body_len]).map(str::to_owned);
        pending.drain(..head_len + body_len);
        broadcast(&sockets, channel.as_deref(), Bytes::from(frame), log_passes);
        stream
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
            )
            .await?;
    }
}

async fn serve(mut stream: TcpStream, sockets: Sockets, log_passes: bool) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    // The upgrade: read the request head, answer 101 with the accept key.
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0_u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        let n = stream.read(&mut buffer).await?;
        anyhow::ensure!(n > 0 && head.len() < 16 * 1024, "bad handshake");
        head.extend_from_slice(&buffer[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let key = text
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        })
        .ok_or_else(|| anyhow::anyhow!("no Sec-WebSocket-Key"))?;
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(response.as_bytes()).await?;
    let (mut read, write) = stream.into_split();
    let socket = Arc::new(Socket {
        queue: Mutex::default(),
        ready: Notify::new(),
    });
    let mut filed_under = String::new();
    sockets
        .lock()
        .expect("no panics while held")
        .channels
        .entry(String::new())
        .or_default()
        .push(Arc::clone(&socket));
    tokio::spawn(write_loop(Arc::clone(&socket), write));

    // Read client frames (masked); broadcast every text frame's payload.
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = read.read(&mut buffer).await?;
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&buffer[..n]);
        // Whatever else has arrived joins this batch.
        loop {
            match read.try_read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => pending.extend_from_slice(&buffer[..n]),
                Err(_) => break,
            }
        }
        let mut closed = false;
        // Consecutive publishes to one channel go out as one batch.
        let mut batch: Vec<u8> = Vec::new();
        let mut batch_channel: Option<String> = None;
        while let Some((opcode, payload, used)) = parse_client_frame(&pending) {
            pending.drain(..used);
            match opcode {
                0x1 if payload.windows(SUBSCRIBE.len()).any(|w| w == SUBSCRIBE) => {
                    let channel = channel_of(&payload).unwrap_or_default().to_owned();
                    let mut registry = sockets.lock().expect("no panics while held");
                    if let Some(list) = registry.channels.get_mut(&filed_under) {
                        list.retain(|other| !Arc::ptr_eq(other, &socket));
                    }
                    registry
                        .channels
                        .entry(channel.clone())
                        .or_default()
                        .push(Arc::clone(&socket));
                    filed_under = channel;
                }
                0x1 => {
                    let channel = channel_of(&payload).map(str::to_owned);
                    if channel != batch_channel && !batch.is_empty() {
                        let frames = Bytes::from(std::mem::take(&mut batch));
                        broadcast(&sockets, batch_channel.as_deref(), frames, log_passes);
                    }
                    batch_channel = channel;
                    frame_into(&mut batch, &payload);
                }
                0x8 => closed = true,
                _ => {}
            }
        }
        if !batch.is_empty() {
            broadcast(
                &sockets,
                batch_channel.as_deref(),
                Bytes::from(batch),
                log_passes,
            );
        }
        if closed {
            break;
        }
    }
    socket.queue.lock().expect("no panics while held").closed = true;
    socket.ready.notify_one();
    let mut registry = sockets.lock().expect("no panics while held");
    if let Some(list) = registry.channels.get_mut(&filed_under) {
        list.retain(|other| !Arc::ptr_eq(other, &socket));
    }
    Ok(())
}

/// The socket's one writer: waits for frames, takes all that are queued, writes them with
/// `writev` (as many calls as the socket needs), and again.
async fn write_loop(socket: Arc<Socket>, mut write: OwnedWriteHalf) {
    let mut frames: Vec<Bytes> = Vec::new();
    loop {
        {
            let mut queue = socket.queue.lock().expect("no panics while held");
            if queue.closed {
                return;
            }
            frames.extend(queue.frames.drain(..));
        }
        if frames.is_empty() {
            socket.ready.notified().await;
            continue;
        }
        let mut first = 0;
        let mut offset = 0;
        while first < frames.len() {
            let slices: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(&frames[first][offset..]))
                .chain(frames[first + 1..].iter().take(63).map(|f| IoSlice::new(f)))
                .collect();
            let Ok(mut written) = write.write_vectored(&slices).await else {
                socket.queue.lock().expect("no panics while held").closed = true;
                return;
            };
            // Advance past what was written.
            while written > 0 {
                let left = frames[first].len() - offset;
                if written >= left {
                    written -= left;
                    first += 1;
                    offset = 0;
                } else {
                    offset += written;
                    written = 0;
                }
            }
        }
        frames.clear();
    }
}

/// Queues `frame` (a shared `Bytes`, one reference each) to the sockets filed under
/// `channel` and to those that never subscribed.
fn broadcast(sockets: &Sockets, channel: Option<&str>, frame: Bytes, log_passes: bool) {
    let started = (tokio::time::Instant::now(), thread_cpu_ns());
    let registry = sockets.lock().expect("no panics while held");
    let subscribed = channel
        .filter(|channel| !channel.is_empty())
        .and_then(|channel| registry.channels.get(channel));
    let everyone = registry.channels.get("");
    let targets = subscribed.into_iter().chain(everyone).flatten();
    let mut n_sockets = 0;
    for socket in targets {
        n_sockets += 1;
        let mut queue = socket.queue.lock().expect("no panics while held");
        if queue.closed {
            continue;
        }
        if queue.frames.len() >= QUEUE_LIMIT {
            queue.closed = true;
            queue.frames = VecDeque::new();
            drop(queue);
            socket.ready.notify_one();
            continue;
        }
        let was_empty = queue.frames.is_empty();
        queue.frames.push_back(frame.clone());
        drop(queue);
        if was_empty {
            socket.ready.notify_one();
        }
    }
    if log_passes {
        let wall_ms = started.0.elapsed().as_secs_f64() * 1e3;
        let cpu_ms = thread_cpu_ns().saturating_sub(started.1) as f64 / 1e6;
        eprintln!(
            "queue pass: {n_sockets} sockets, {} bytes, {wall_ms:.2} ms, {cpu_ms:.2} ms on CPU",
            frame.len(),
        );
    }
}

/// CPU time this thread has used, in nanoseconds (the scheduler's own account, kernel time
/// included); 0 where `/proc` does not say.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|stat| stat.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Appends `payload` as one unmasked text frame.
fn frame_into(frame: &mut Vec<u8>, payload: &[u8]) {
    frame.push(0x81);
    match payload.len() {
        len if len < 126 => frame.push(len as u8),
        len if len <= u16::MAX as usize => {
            frame.push(126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
}

/// Parses one masked client frame: (opcode, unmasked payload, bytes used).
fn parse_client_frame(bytes: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if bytes.len() < 2 {
        return None;
    }
    let opcode = bytes[0] & 0x0f;
    let masked = bytes[1] & 0x80 != 0;
    let (len, mut offset) = match bytes[1] & 0x7f {
        126 => (
            u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        len => (len as usize, 2),
    };
    let mask = if masked {
        let mask: [u8; 4] = bytes.get(offset..offset + 4)?.try_into().ok()?;
        offset += 4;
        Some(mask)
    } else {
        None
    };
    let payload = bytes.get(offset..offset + len)?;
    let payload = match mask {
        Some(mask) => payload
            .iter()
            .enumerate()
            .map(|(i, byte)| byte ^ mask[i % 4])
            .collect(),
        None => payload.to_vec(),
    };
    Some((opcode, payload, offset + len))
}
