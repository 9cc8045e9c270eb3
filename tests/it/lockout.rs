//! Lock-outs: attacks that try to make a node refuse everyone else (memory pressure that
//! never ends, pending-upgrade slots held by silent sockets) or spend its CPU on little
//! input (a trickled upgrade head), each against the real binary,
//! with a bystander that keeps its full message rate and figures printed for
//! `docs/security.md`.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::Instant,
};

use crate::{
    harness::{BinaryNode, patience},
    raw::{UPGRADE, http, rss_kib, upgraded, with_bystander_at},
};

/// The 14-byte header of a masked text frame declaring `len` payload bytes.
fn header_declaring(len: u64) -> Vec<u8> {
    let mut wire = vec![0x81, 0x80 | 127];
    wire.extend_from_slice(&len.to_be_bytes());
    wire.extend_from_slice(&[0x37, 0xfa, 0x21, 0x3d]);
    wire
}

async fn ready(http: &reqwest::Client, node: &BinaryNode) -> bool {
    http.get(format!("http://{}/readyz", node.control_addr))
        .send()
        .await
        .is_ok_and(|response| response.status() == 200)
}

/// Upgraded connections that each send the 14-byte header of a 65,530-byte frame and
/// nothing more cost the node what an idle connection costs (each reserved 64 KiB on the
/// header: 1,141 of them took RSS from 73 to 146 MiB). Then a real spike: the same
/// connections send 60,000 bytes of it, resident memory passes
/// `limits.memory_pressure_bytes` and upgrades are refused; once they close, the refusal
/// ends within seconds (the freed memory stayed resident and upgrades got 503 for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_spike_that_ends_ends_the_refusal() {
    const ATTACKERS: usize = 1_000;
    // The node at rest measures about 15 MiB; 48 MiB more is pressure.
    let probe = BinaryNode::start(&[], &[]).await;
    let at_rest = rss_kib(probe.pid()) * 1024;
    drop(probe);
    let threshold = at_rest + 48 * 1024 * 1024;
    let node = BinaryNode::start(
        &[],
        &[(
            "SWITCHBOARD_LIMITS__MEMORY_PRESSURE_BYTES",
            &threshold.to_string(),
        )],
    )
    .await;
    let http = reqwest::Client::new();
    let (pid, addr) = (node.pid(), node.ws_addr);
    with_bystander_at(node.target(&http), async {
        let before = rss_kib(pid);
        let mut attackers = Vec::with_capacity(ATTACKERS);
        for _ in 0..ATTACKERS {
            let mut stream = upgraded(addr).await;
            stream.write_all(&header_declaring(65_530)).await.unwrap();
            attackers.push(stream);
        }
        // Every attacker is a session (the bystander too), and has had time to be read: its
        // 14 bytes arrived with the upgrade's answer long since.
        crate::assert_eventually!(
            metric(&http, &node, "switchboard_connections").await >= (ATTACKERS + 1) as f64,
            "the attackers' sessions run"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let headers_only = rss_kib(pid);
        eprintln!(
            "{ATTACKERS} connections with a declared 65,530-byte frame: RSS {before} -> \
             {headers_only} KiB ({} B per connection)",
            (headers_only.saturating_sub(before)) * 1024 / ATTACKERS as u64
        );
        assert!(
            headers_only < before + 16 * 1024,
            "declared lengths took RSS from {before} to {headers_only} KiB"
        );
        assert!(
            ready(&http, &node).await,
            "no pressure from declared lengths"
        );

        // The spike: 60,000 real bytes each.
        let payload = vec![b'x'; 60_000];
        for stream in &mut attackers {
            stream.write_all(&payload).await.unwrap();
        }
        crate::assert_eventually!(
            !ready(&http, &node).await,
            "60 MB held in read buffers is memory pressure (RSS {} KiB)",
            rss_kib(pid)
        );
        let spike = rss_kib(pid);
        let mut refused = TcpStream::connect(addr).await.unwrap();
        let (status, head) = http_upgrade(&mut refused).await;
        assert_eq!(status, 503, "{head}");
        drop(attackers);
        let ended = Instant::now();
        crate::assert_eventually!(
            ready(&http, &node).await,
            "pressure ends once the spike has ended (RSS {} KiB)",
            rss_kib(pid)
        );
        let after = rss_kib(pid);
        eprintln!(
            "spike: RSS {spike} KiB, threshold {} KiB; ready again {:?} after the attackers \
             closed, RSS {after} KiB",
            threshold / 1024,
            ended.elapsed()
        );
        assert!(ended.elapsed() < patience(Duration::from_secs(5)));
        upgraded(addr).await;
    })
    .await;
}

async fn http_upgrade(stream: &mut TcpStream) -> (u16, String) {
    http(stream, UPGRADE).await
}

/// Holds `count` silent sockets from `source` open until `until`: each connects and sends
/// nothing, and is opened again as soon as the node closes it.
fn silent_sockets(
    node: SocketAddr,
    source: IpAddr,
    count: usize,
    until: Instant,
    reopened: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..count)
        .map(|_| {
            let reopened = Arc::clone(&reopened);
            tokio::spawn(async move {
                while Instant::now() < until {
                    let socket = tokio::net::TcpSocket::new_v4().unwrap();
                    socket.bind(SocketAddr::new(source, 0)).unwrap();
                    let Ok(Ok(mut stream)) =
                        tokio::time::timeout_at(until, socket.connect(node)).await
                    else {
                        continue;
                    };
                    let mut byte = [0_u8; 1];
                    // Ends when the node closes it (or at `until`).
                    let _ = tokio::time::timeout_at(until, stream.read(&mut byte)).await;
                    reopened.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect()
}

/// Ten sources hold silent sockets just under the per-source cap, together more than the
/// node's pending-upgrade cap, reopening each as soon as it is closed. A client from an
/// eleventh source upgrades on every try (it got 503 on 48 of 48 tries over 25 s: the full
/// cap refused every newcomer), because a full node closes the oldest of the most
/// represented sources to make room, and silent sockets are closed after
/// `session.first_byte_timeout`. Caps scaled down 5x from the defaults (10,000 and 1,024)
/// to keep the test's descriptors few.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_from_many_sources_do_not_lock_out_a_newcomer() {
    const SOURCES: u8 = 10;
    const PER_SOURCE: usize = 204;
    const TRIES: usize = 20;
    let node = BinaryNode::start(
        &[],
        &[
            ("SWITCHBOARD_LIMITS__MAX_PENDING_UPGRADES", "2000"),
            ("SWITCHBOARD_LIMITS__MAX_PENDING_UPGRADES_PER_IP", "205"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let addr = node.ws_addr;
    let until = Instant::now() + patience(Duration::from_secs(12));
    let reopened = Arc::new(AtomicU64::new(0));
    let attackers: Vec<_> = (0..SOURCES)
        .flat_map(|n| {
            let source = IpAddr::from([127, 0, 0, 2 + n]);
            silent_sockets(addr, source, PER_SOURCE, until, Arc::clone(&reopened))
        })
        .collect();
    let statuses = with_bystander_at(node.target(&http), async {
        crate::assert_eventually!(
            metric(&http, &node, "switchboard_pending_upgrades").await >= 1_990.0,
            "the silent sockets fill the node's cap ({} pending)",
            metric(&http, &node, "switchboard_pending_upgrades").await
        );
        let mut statuses = Vec::with_capacity(TRIES);
        for _ in 0..TRIES {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            statuses.push(http_upgrade(&mut stream).await.0);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        statuses
    })
    .await;
    let evicted = metric(
        &http,
        &node,
        "switchboard_connections_rejected_total{reason=\"pending_evicted\"}",
    )
    .await;
    let silent = metric(
        &http,
        &node,
        "switchboard_connections_rejected_total{reason=\"first_byte_timeout\"}",
    )
    .await;
    eprintln!(
        "{} silent sockets from {SOURCES} sources against a cap of 2,000 (205 per source): the newcomer got \
         {statuses:?}; {evicted} evicted, {silent} closed silent, {} reopened",
        usize::from(SOURCES) * PER_SOURCE,
        reopened.load(Ordering::Relaxed)
    );
    assert!(statuses.iter().all(|&status| status == 101), "{statuses:?}");
    assert!(evicted >= TRIES as f64, "newcomers evicted silent sockets");
    for attacker in attackers {
        attacker.abort();
    }
}

/// One sample of the node's `/metrics`, or 0 when absent.
async fn metric(http: &reqwest::Client, node: &BinaryNode, sample: &str) -> f64 {
    let text = http
        .get(format!("http://{}/metrics", node.control_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// CPU seconds (user and system) process `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name in parentheses: fields 14 and 15 of the line are 12 and 13.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Upgrade heads of 15 KB whose last 1,000 bytes come a byte per packet: the node scans each
/// byte once and parses each head once (it re-parsed the head from its start on every read:
/// 50 heads of 15 KB sent a byte per packet cost 2.9 s of CPU).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_trickled_a_byte_at_a_time_is_parsed_once() {
    const HEADS: usize = 50;
    let node = BinaryNode::start(&[], &[]).await;
    let http = reqwest::Client::new();
    let (pid, addr) = (node.pid(), node.ws_addr);
    let head = UPGRADE.replace(
        "Host: test\r\n",
        &format!("Host: test\r\nX-Padding: {}\r\n", "p".repeat(15_000)),
    );
    let before = cpu_seconds(pid);
    let statuses = with_bystander_at(node.target(&http), async {
        let trickles = (0..HEADS).map(|_| {
            let head = head.clone();
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                stream.set_nodelay(true).unwrap();
                // Most of the head at once, then its last 1,000 bytes one per packet, a
                // millisecond apart, so that the node reads them one at a time while its
                // buffer holds 14 KB.
                let (bulk, trickle) = head.as_bytes().split_at(head.len() - 1_000);
                stream.write_all(bulk).await.unwrap();
                for byte in trickle {
                    stream.write_all(&[*byte]).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let mut answer = [0_u8; 12];
                stream.read_exact(&mut answer).await.unwrap();
                String::from_utf8_lossy(&answer).into_owned()
            })
        });
        futures_util::future::join_all(trickles).await
    })
    .await;
    let used = cpu_seconds(pid) - before;
    eprintln!("{HEADS} heads of 15 KB ending a byte per packet: {used:.2} s of the node's CPU");
    for status in statuses {
        assert_eq!(status.unwrap(), "HTTP/1.1 101");
    }
    assert!(used < 1.5, "{used:.2} s of CPU");
}
