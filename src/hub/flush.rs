//! Flushing what fan-outs claimed (see `outbound` for the write lane): small lists on the
//! publisher's thread, large ones in tasks every worker runs, and a client's publishes
//! within one poll of its session together.

use std::{
    cell::RefCell,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::runtime::Handle;

use super::Outbound;

/// Connections one flushing task writes to at most: a large fan-out is split into tasks of
/// this many, which the runtime's workers share.
pub(super) const FLUSH_CHUNK: usize = 256;

thread_local! {
    /// Connections claimed by fan-outs inside a [`FlushAfterPoll`] poll on this thread.
    static DEFERRED: RefCell<Option<Vec<Arc<Outbound>>>> = const { RefCell::new(None) };
}

/// Claimed connections up to this many are flushed on the publisher's own thread: spawning
/// a task, and waking an idle worker to steal it, cost more than these writes would move.
/// (Spawning every flush cut a 1,000-channel run, 20,000 publishes/s to 5 subscribers each,
/// from 100,000 to 64,000-86,000 deliveries/s, with the workers ping-ponging on wakeups.)
pub(super) const FLUSH_INLINE: usize = 64;

/// Flushes connections whose lane a fan-out claimed: up to [`FLUSH_INLINE`] on this thread,
/// more in tasks of at most [`FLUSH_CHUNK`] connections on `workers` (the runtime the
/// sessions run on), so that every core writes and the publisher is held neither for a large
/// fan-out's syscalls nor behind them. Inside a [`FlushAfterPoll`], only collects them for
/// the end of the poll. Without `workers` (a hub built outside a runtime), everything is
/// written on this thread.
pub(super) fn flush_all(mut to_flush: Vec<Arc<Outbound>>, workers: Option<&Handle>) {
    if to_flush.is_empty() {
        return;
    }
    let deferred = DEFERRED.with_borrow_mut(|deferred| match deferred {
        Some(deferred) => {
            deferred.append(&mut to_flush);
            true
        }
        None => false,
    });
    if deferred {
        return;
    }
    let runtime = match workers {
        Some(runtime) if to_flush.len() > FLUSH_INLINE => runtime,
        _ => {
            for outbound in &to_flush {
                outbound.flush();
            }
            return;
        }
    };
    while !to_flush.is_empty() {
        let chunk = to_flush.split_off(to_flush.len().saturating_sub(FLUSH_CHUNK));
        // Not through the app's task tracker: these tasks never await, finish in one poll,
        // and a shutdown loses nothing by dropping one (its connections are closing).
        runtime.spawn(async move {
            for outbound in &chunk {
                outbound.flush();
            }
        });
    }
}

pin_project_lite::pin_project! {
    /// Runs a future (a publishing client's session) so that the fan-outs of every message
    /// it publishes within one poll are flushed together when the poll ends: a connection
    /// that several of them reach gets one `writev` of all its frames instead of one each,
    /// as the baseline broadcaster writes what one read of the publisher brought. The lane
    /// already lists each connection once however many messages it was claimed for.
    pub struct FlushAfterPoll<F> {
        #[pin]
        inner: F,
    }
}

impl<F> FlushAfterPoll<F> {
    pub fn new(inner: F) -> Self {
        Self { inner }
    }
}

impl<F: Future> Future for FlushAfterPoll<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _scope = DeferScope::enter();
        self.project().inner.poll(cx)
    }
}

/// Collects fan-outs' claims on this thread until dropped, then flushes them; on drop, so a
/// panicking poll cannot leave claimed connections unflushed.
struct DeferScope {
    /// The enclosing scope's list (nested scopes flush their own claims).
    outer: Option<Vec<Arc<Outbound>>>,
}

impl DeferScope {
    fn enter() -> Self {
        Self {
            outer: DEFERRED.with_borrow_mut(|deferred| deferred.replace(Vec::new())),
        }
    }
}

impl Drop for DeferScope {
    fn drop(&mut self) {
        let claimed =
            DEFERRED.with_borrow_mut(|deferred| std::mem::replace(deferred, self.outer.take()));
        // Scopes are entered by tasks on the sessions' runtime: its workers flush.
        flush_all(
            claimed.unwrap_or_default(),
            Handle::try_current().ok().as_ref(),
        );
    }
}
