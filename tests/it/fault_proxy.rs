//! A TCP proxy in front of Redis that can wedge the bus readers' connections (those that
//! send `XREAD`) while every other connection keeps flowing: the "green but delivering
//! nothing" failure; or cut every connection through it (a network partition between the
//! nodes behind it and Redis: what was in flight is lost, not delivered late).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, tcp::OwnedReadHalf, tcp::OwnedWriteHalf},
    sync::watch,
};

pub struct FaultProxy {
    pub port: u16,
    wedge_tx: watch::Sender<bool>,
    cut_tx: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream_port: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (wedge_tx, wedge_rx) = watch::channel(false);
        let (cut_tx, cut_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *cut_rx.borrow() {
                    // Refused while cut: the connection closes at once.
                    continue;
                }
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
                    continue;
                };
                let reader = Arc::new(AtomicBool::new(false));
                let (client_read, client_write) = client.into_split();
                let (upstream_read, upstream_write) = upstream.into_split();
                tokio::spawn(pump(
                    client_read,
                    upstream_write,
                    Arc::clone(&reader),
                    true,
                    (wedge_rx.clone(), cut_rx.clone()),
                ));
                tokio::spawn(pump(
                    upstream_read,
                    client_write,
                    reader,
                    false,
                    (wedge_rx.clone(), cut_rx.clone()),
                ));
            }
        });
        FaultProxy {
            port,
            wedge_tx,
            cut_tx,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// While wedged, reader connections forward nothing in either direction.
    pub fn wedge_readers(&self, wedged: bool) {
        self.wedge_tx.send_replace(wedged);
    }

    /// While cut, every connection through the proxy is closed and new ones are refused.
    pub fn cut(&self, cut: bool) {
        self.cut_tx.send_replace(cut);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    reader: Arc<AtomicBool>,
    from_client: bool,
    (mut wedge_rx, mut cut_rx): (watch::Receiver<bool>, watch::Receiver<bool>),
) {
    let mut buffer = vec![0_u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = cut_rx.wait_for(|cut| *cut) => return,
        };
        let Ok(n) = read else {
            return;
        };
        if n == 0 {
            return;
        }
        if from_client && buffer[..n].windows(5).any(|window| window == b"XREAD") {
            reader.store(true, Ordering::Relaxed);
        }
        // Hold the bytes while this is a reader connection and readers are wedged.
        while reader.load(Ordering::Relaxed) && *wedge_rx.borrow_and_update() {
            if wedge_rx.changed().await.is_err() {
                return;
            }
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
