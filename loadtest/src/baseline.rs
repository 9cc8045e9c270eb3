//! The baseline: a minimal WebSocket broadcaster. It upgrades connections, and every text
//! frame any client sends is framed once and written to every connected socket with one
//! non-blocking write each. Nothing else: no channels, no queues, no JSON. It is the ceiling
//! for fan-out on a given machine; Switchboard's figures are reported as a ratio of it.
//!
//! Frames that arrive together (all that one read drains from the publisher's socket) go
//! out together, framed back to back in one buffer and one write per socket. Without that,
//! a baseline that wrote each message separately fell behind Switchboard's batching writer
//! at 60 messages a second to 5,000 sockets and stopped being a ceiling.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, tcp::OwnedWriteHalf},
};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

#[derive(Debug, Clone, clap::Args)]
pub struct BaselineArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Print, for every broadcast, how long its write pass over all sockets took: with the
    /// clients on other cores, the floor for one broadcast's completion on this machine.
    #[arg(long)]
    log_passes: bool,
}

type Sockets = Arc<Mutex<Vec<Arc<Socket>>>>;

/// One subscriber socket: writes go straight to the kernel; only when its buffer is full do
/// bytes wait in `backlog`, in order, for one flushing task.
struct Socket {
    write: OwnedWriteHalf,
    backlog: Mutex<Vec<u8>>,
}

pub async fn run(args: BaselineArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    eprintln!("baseline broadcaster on ws://{}/ws", listener.local_addr()?);
    let sockets: Sockets = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        let sockets = Arc::clone(&sockets);
        let log_passes = args.log_passes;
        tokio::spawn(async move {
            let _ = serve(stream, sockets, log_passes).await;
        });
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
    let write = Arc::new(Socket {
        write,
        backlog: Mutex::new(Vec::new()),
    });
    sockets
        .lock()
        .expect("no panics while held")
        .push(Arc::clone(&write));

    // Read client frames (masked); broadcast every text frame's payload.
    let mut pending: Vec<u8> = Vec::new();
    let mut batch: Vec<u8> = Vec::new();
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
        while let Some((opcode, payload, used)) = parse_client_frame(&pending) {
            pending.drain(..used);
            match opcode {
                0x1 => frame_into(&mut batch, &payload),
                0x8 => closed = true,
                _ => {}
            }
        }
        if !batch.is_empty() {
            let started = (tokio::time::Instant::now(), thread_cpu_ns());
            let n_sockets = broadcast(&sockets, &batch);
            if log_passes {
                let wall_ms = started.0.elapsed().as_secs_f64() * 1e3;
                let cpu_ms = thread_cpu_ns().saturating_sub(started.1) as f64 / 1e6;
                eprintln!(
                    "write pass: {n_sockets} sockets, {} bytes each, {wall_ms:.1} ms, \
                     {cpu_ms:.1} ms on CPU ({:.2} us per socket)",
                    batch.len(),
                    cpu_ms * 1e3 / n_sockets.max(1) as f64,
                );
            }
            batch.clear();
        }
        if closed {
            break;
        }
    }
    let mut all = sockets.lock().expect("no panics while held");
    all.retain(|socket| !Arc::ptr_eq(socket, &write));
    Ok(())
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

/// Writes the framed bytes to every socket; how many sockets there were.
fn broadcast(sockets: &Sockets, frame: &[u8]) -> usize {
    let targets = sockets.lock().expect("no panics while held").clone();
    let n_sockets = targets.len();
    for socket in targets {
        let mut backlog = socket.backlog.lock().expect("no panics while held");
        if !backlog.is_empty() {
            // Bytes already wait: keep the order.
            backlog.extend_from_slice(frame);
            continue;
        }
        let written = match socket.write.try_write(frame) {
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(_) => continue,
        };
        if written < frame.len() {
            backlog.extend_from_slice(&frame[written..]);
            let socket = Arc::clone(&socket);
            tokio::spawn(async move { flush(&socket).await });
        }
    }
    n_sockets
}

/// Writes a socket's backlog until it is empty.
async fn flush(socket: &Socket) {
    loop {
        if socket.write.writable().await.is_err() {
            return;
        }
        let mut backlog = socket.backlog.lock().expect("no panics while held");
        match socket.write.try_write(&backlog) {
            Ok(n) => {
                backlog.drain(..n);
                if backlog.is_empty() {
                    return;
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                backlog.clear();
                return;
            }
        }
    }
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
