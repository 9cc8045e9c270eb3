//! History lookup for a `since` resume: the hub's indexed ring (the position of `since` is
//! computed from the first retained sequence number) against a naive scan of a list of
//! `(seq, frame)` pairs.
//!
//! Run: `cargo bench --bench history`

#![allow(
    clippy::unwrap_used,
    reason = "a bench that cannot set up should stop at once"
)]

use std::{hint::black_box, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use switchboard::{
    hub::{Hub, HubSettings},
    protocol::{ChannelName, Offset},
};

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("history_since");
    for size in [100_usize, 1_000] {
        let hub = Hub::new(HubSettings {
            shards: 4,
            max_connections: 1,
            queue_messages: size + 16,
            queue_bytes: 1 << 30,
            history_size: size,
            history_ttl: Duration::from_secs(3600),
            history_max_bytes: 1 << 30,
            ..HubSettings::default()
        });
        let channel = ChannelName::parse("bench", 64).unwrap();
        let data = format!("\"{}\"", "x".repeat(200));
        let mut offsets: Vec<Offset> = Vec::new();
        for _ in 0..size {
            offsets.push(hub.publish(&channel, &data).unwrap());
        }
        // Resume from three quarters of the way back: the common "a few missed" case.
        let since = offsets[size / 4];
        group.bench_function(format!("switchboard/{size}"), |b| {
            b.iter(|| {
                black_box(
                    hub.history(&channel, Some(black_box(since)), 10)
                        .messages
                        .len(),
                )
            });
        });
        let naive: Vec<(u64, String)> = offsets.iter().map(|o| (o.seq, data.clone())).collect();
        group.bench_function(format!("naive_scan/{size}"), |b| {
            b.iter(|| {
                let found: Vec<&String> = naive
                    .iter()
                    .filter(|(seq, _)| *seq > black_box(since).seq)
                    .take(10)
                    .map(|(_, frame)| frame)
                    .collect();
                black_box(found.len())
            });
        });
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
