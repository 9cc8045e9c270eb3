//! Fan-out of one published message to N in-process subscriber queues: Switchboard's hub
//! against a naive baseline (one global `Mutex<HashMap>`, the message serialized per
//! subscriber). Only the publish is timed; queues are drained between iterations.
//!
//! Run: `cargo bench --bench fanout`

#![allow(
    clippy::unwrap_used,
    reason = "a bench that cannot set up should stop at once"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "benches time real work on the wall clock; there is no runtime to pause"
)]

use std::{
    collections::HashMap,
    hint::black_box,
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use switchboard::{
    hub::{FramedText, Hub, HubSettings, Subscribed},
    protocol::ChannelName,
};

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
/// A 256-byte JSON payload, the size the load tests use.
fn payload() -> String {
    format!("{{\"ts\":1700000000000,\"pad\":\"{}\"}}", "x".repeat(225))
}

fn hub_fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    let data = payload();
    for &n in &SIZES {
        group.throughput(Throughput::Elements(n as u64));
        let hub = Hub::new(HubSettings {
            shards: 8,
            max_connections: n,
            queue_messages: 64,
            queue_bytes: 1 << 20,
            history_size: 0,
            history_ttl: Duration::from_secs(60),
            history_max_bytes: 0,
            ..HubSettings::default()
        });
        let channel = ChannelName::parse("bench", 64).unwrap();
        // Connections without a socket: a publish claims each idle lane and "flushes" it,
        // which without a socket hands the lane to the session; `drain` then plays the
        // session, taking the frames and giving the lane back. So the timed publish pays
        // everything a real one does except the socket write itself.
        let receivers: Vec<_> = (0..n)
            .map(|_| {
                let outbound = hub.register(None);
                hub.subscribe(&outbound, &channel, None, None, |_: &Subscribed| {
                    FramedText::text("{}")
                })
                .unwrap();
                outbound
            })
            .collect();
        let drain = || {
            for outbound in &receivers {
                while let Some(item) = outbound.take() {
                    black_box(item.into_wire());
                }
                assert!(outbound.session_lane().release());
            }
        };
        drain();
        group.bench_with_input(BenchmarkId::new("switchboard_hub", n), &n, |b, _| {
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let started = Instant::now();
                    black_box(hub.publish(&channel, &data).unwrap());
                    total += started.elapsed();
                    drain();
                }
                total
            });
        });
        assert!(
            receivers.iter().all(|outbound| !outbound.is_closing()),
            "every subscriber stayed subscribed, so every publish reached all {n}"
        );

        let naive = NaiveHub::default();
        let naive_receivers: Vec<_> = (0..n).map(|_| naive.subscribe("bench")).collect();
        group.bench_with_input(BenchmarkId::new("naive_mutex_hashmap", n), &n, |b, _| {
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let started = Instant::now();
                    naive.publish("bench", &data);
                    total += started.elapsed();
                    for rx in &naive_receivers {
                        while let Ok(message) = rx.try_recv() {
                            black_box(message);
                        }
                    }
                }
                total
            });
        });
    }
    group.finish();
}

/// What a first implementation often looks like: one lock over everything, and the message
/// serialized again for every subscriber.
#[derive(Default)]
struct NaiveHub {
    channels: Mutex<HashMap<String, Vec<mpsc::Sender<String>>>>,
    seq: Arc<Mutex<u64>>,
}

impl NaiveHub {
    fn subscribe(&self, channel: &str) -> mpsc::Receiver<String> {
        let (tx, rx) = mpsc::channel();
        self.channels
            .lock()
            .unwrap()
            .entry(channel.to_owned())
            .or_default()
            .push(tx);
        rx
    }

    fn publish(&self, channel: &str, data: &str) {
        let channels = self.channels.lock().unwrap();
        let mut seq = self.seq.lock().unwrap();
        *seq += 1;
        if let Some(subscribers) = channels.get(channel) {
            for tx in subscribers {
                let message = format!(
                    "{{\"type\":\"message\",\"channel\":\"{channel}\",\"offset\":\"{}\",\"data\":{data}}}",
                    *seq
                );
                let _ = tx.send(message);
            }
        }
    }
}

criterion_group!(benches, hub_fanout);
criterion_main!(benches);
