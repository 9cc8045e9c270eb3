//! Protocol decode and encode against naive baselines: decoding a client frame through a
//! borrowed raw-field struct versus building a `serde_json::Value`, and encoding a message
//! frame by direct writes versus `serde_json::json!` plus `to_string`.
//!
//! Run: `cargo bench --bench protocol`

#![allow(
    clippy::unwrap_used,
    reason = "a bench that cannot set up should stop at once"
)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use switchboard::protocol::{ChannelName, Offset, decode_client_frame, encode_message};

const PUBLISH: &str = r#"{"type":"publish","id":42,"channel":"chat:room-7","data":{"user":"ada","text":"hello there, this is a typical chat message of modest size","ts":1700000000000}}"#;
const SUBSCRIBE: &str =
    r#"{"type":"subscribe","id":7,"channel":"news","since":"00000000deadbeef-1234"}"#;

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for (name, frame) in [("publish", PUBLISH), ("subscribe", SUBSCRIBE)] {
        group.bench_function(format!("switchboard/{name}"), |b| {
            b.iter(|| black_box(decode_client_frame(black_box(frame)).is_ok()));
        });
        group.bench_function(format!("naive_value/{name}"), |b| {
            b.iter(|| {
                let value: serde_json::Value = serde_json::from_str(black_box(frame)).unwrap();
                black_box(value["type"].as_str().is_some() && value["channel"].is_string())
            });
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_message");
    let channel = ChannelName::parse("chat:room-7", 128).unwrap();
    let offset = Offset {
        epoch: 0xdead_beef,
        seq: 1234,
    };
    let data = r#"{"user":"ada","text":"hello there, this is a typical chat message of modest size","ts":1700000000000}"#;
    group.bench_function("switchboard", |b| {
        b.iter(|| black_box(encode_message(&channel, offset, black_box(data))));
    });
    let parsed: serde_json::Value = serde_json::from_str(data).unwrap();
    group.bench_function("naive_json_macro", |b| {
        b.iter(|| {
            let frame = serde_json::json!({
                "type": "message",
                "channel": channel.as_str(),
                "offset": offset.to_string(),
                "data": black_box(&parsed),
            });
            black_box(frame.to_string())
        });
    });
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
