//! What a full revocation list costs a node: the memory of 1,000,000 revoked `jti`s and of
//! 1,000,000 revoked users, against holding the `jti`s as text (what a first implementation
//! keeps: `DashMap<Box<str>, u64>`); and the check every connect and `refresh` makes, with
//! the list full.
//!
//! Run: `cargo bench --bench revocations`

#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    reason = "a bench that cannot set up should stop at once; figures are printed as floats"
)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dashmap::DashMap;
use switchboard::{
    memory::{give_back, resident_bytes},
    revocations::{MAX_REVOCATIONS, Revocation, Revocations},
};

/// A `jti` as issuers make them: a UUID's 36 characters.
fn jti(index: usize) -> String {
    format!("6f1c1f1e-5d1a-4a53-9f0e-{index:012x}")
}

/// Resident bytes `fill` adds and keeps, per entry.
fn bytes_per_entry<T>(fill: impl FnOnce() -> T) -> (T, f64) {
    give_back();
    let before = resident_bytes().unwrap();
    let held = fill();
    let after = resident_bytes().unwrap();
    (
        held,
        (after.saturating_sub(before)) as f64 / MAX_REVOCATIONS as f64,
    )
}

fn memory() -> Revocations {
    let until = u64::MAX / 2;
    let (list, tokens) = bytes_per_entry(|| {
        let list = Revocations::default();
        for index in 0..MAX_REVOCATIONS {
            list.apply(&Revocation::Token {
                jti: jti(index),
                until,
            });
        }
        list
    });
    let ((), users) = bytes_per_entry(|| {
        for index in 0..MAX_REVOCATIONS {
            list.apply(&Revocation::User {
                user: format!("user-{index}"),
                issued_before: 1_800_000_000,
                until,
            });
        }
    });
    let (text, as_text) = bytes_per_entry(|| {
        let text: DashMap<Box<str>, u64> = DashMap::new();
        for index in 0..MAX_REVOCATIONS {
            text.insert(jti(index).into_boxed_str(), until);
        }
        text
    });
    drop(text);
    println!(
        "1,000,000 revoked jtis: {tokens:.1} bytes each (as text: {as_text:.1}); \
         1,000,000 revoked users (ids of 10-11 bytes): {users:.1} bytes each"
    );
    list
}

fn checks(c: &mut Criterion) {
    let list = memory();
    let now = 1_800_000_000;
    let mut group = c.benchmark_group("revocations_full");
    group.bench_function("check_unrevoked_token", |b| {
        let other = "a8d2c7b4-0e57-4c1f-8a9b-3d6e5f7a8b9c";
        b.iter(|| list.revoked(black_box("someone"), Some(black_box(other)), Some(now), now));
    });
    group.bench_function("check_revoked_token", |b| {
        let revoked = jti(123_456);
        b.iter(|| list.revoked(black_box("someone"), Some(black_box(&revoked)), None, now));
    });
    group.finish();
}

criterion_group!(benches, checks);
criterion_main!(benches);
