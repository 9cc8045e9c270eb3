//! Lock-outs: attacks that try to make a node refuse everyone else (memory pressure that
//! never ends, pending-upgrade slots held by silent sockets), each against the real binary,
//! with a bystander that keeps its full message rate and figures printed for
//! `docs/security.md`.

use std::time::Duration;

use tokio::{io::AsyncWriteExt as _, net::TcpStream, time::Instant};

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
