//! Refusals a developer looks for in the log when a client cannot get in: an `Origin` not
//! allowed, a token refused, no `auth` in time, a subscribe or publish forbidden. Each is
//! logged at info with its reason, at most one line a second per kind (the rest are
//! counted in the next line's `suppressed`), so that a flood of bad clients cannot flood
//! the log. Tokens are never logged.

use std::sync::{
    OnceLock,
    atomic::{AtomicU64, Ordering},
};

/// What was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Origin = 0,
    Token = 1,
    AuthTimeout = 2,
    Forbidden = 3,
}

struct Slot {
    /// The second (since the first refusal, plus one) the last line was logged in.
    second: AtomicU64,
    suppressed: AtomicU64,
}

static SLOTS: [Slot; 4] = [const {
    Slot {
        second: AtomicU64::new(0),
        suppressed: AtomicU64::new(0),
    }
}; 4];
static START: OnceLock<tokio::time::Instant> = OnceLock::new();

/// Whether a refusal of `kind` may be logged now: `Some(suppressed)`, how many were not
/// logged since the last line; `None` when one was logged this second already.
#[must_use]
pub fn refusal_loggable(kind: Refused) -> Option<u64> {
    let start = *START.get_or_init(tokio::time::Instant::now);
    let second = start.elapsed().as_secs() + 1;
    let slot = &SLOTS[kind as usize];
    let last = slot.second.load(Ordering::Relaxed);
    if last >= second
        || slot
            .second
            .compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        slot.suppressed.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    Some(slot.suppressed.swap(0, Ordering::Relaxed))
}
