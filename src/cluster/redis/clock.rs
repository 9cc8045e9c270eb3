//! The bus's clocks: wall time for entries, time since the bus started for health, and the
//! part of it the node's event loop ran on time.

use super::Inner;

/// Milliseconds since the Unix epoch.
pub(super) use crate::clock::unix_ms;

/// Milliseconds since the bus started.
pub(super) fn since_start_ms(inner: &Inner) -> u64 {
    u64::try_from(inner.started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since `started` that the node's event loop ran on time (the time it ran late
/// left out, see [`LagClock`](crate::hub::LagClock)): what the silence of this node's own
/// tasks is measured in, so that a node starved of CPU does not take its late tasks for
/// stuck ones.
pub(super) fn on_time_ms(inner: &Inner) -> u64 {
    let late = u64::try_from(inner.hub.lag_clock().late().as_millis()).unwrap_or(u64::MAX);
    since_start_ms(inner).saturating_sub(late)
}
