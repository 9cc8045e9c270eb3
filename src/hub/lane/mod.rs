//! The write lane: who writes a connection's queue to its socket, so that bytes never
//! interleave and frames leave in queue order, with as few task wake-ups as possible.
//!
//! - `outbound`: the connection's handle ([`Outbound`]): its bounded queue, the lane's
//!   state, the close signal, keepalive.
//! - `publisher`: the publishers' side: [`Outbound::enqueue`] claims an idle lane and the
//!   claimer flushes ([`Outbound::flush`], or [`flush_all`] for what a fan-out claimed);
//!   a [`WriteBatch`] collects what one caller's publishes claimed, written together when
//!   the caller is done (after a control request's answer, after a bus read's entries).
//! - `session`: the session task's side ([`SessionLane`]): taking over when the socket is
//!   full, writing its own frames, giving the lane back.
//! - `overflow`: what a queue holds ([`Outgoing`]) and what a full one does under its
//!   namespace's `slow_consumer` policy.
//! - `workers`: the sessions' runtime as the fan-out uses it ([`Workers`]): one queue of
//!   jobs (chunks of claimed connections to flush, large channels' rounds ahead of them)
//!   that a drainer task per worker thread runs in order.
//!
//! Whoever enqueues into an idle connection writes the queue out itself, without waking the
//! connection's task: a publisher (after releasing the channel lock) or the keepalive sweep
//! calls [`Outbound::flush`], which hands everything queued to the socket in one non-blocking
//! vectored write (one per 64 frames) through the connection's [`Wire`]. Only when the
//! socket is full (or the connection has no `Wire`, or is closing) is the session task woken
//! to take over and wait for room. So a delivery to a reading client costs a queue push and
//! a share of one `writev`, not a task wakeup and poll.
//!
//! `lane` says who may write, so that bytes never interleave and frames leave in queue order:
//! - `IDLE`: nobody; the queue is empty or about to be flushed by whoever claims the lane.
//! - `FLUSHING`: one flusher (any thread) is writing; later enqueuers leave it to it.
//! - `SESSION`: the session task writes (socket full, its own frames, closing); it releases
//!   the lane once everything is written. `WANT` on top of `FLUSHING` asks the flusher to
//!   hand over when done, for the session's own frames (pongs, the close frame).
//!
//! Both releases re-check the queue after a `SeqCst` fence, and both claims come after a
//! push, so an enqueue racing a release is always flushed by one side or the other.

mod outbound;
mod overflow;
mod publisher;
mod session;
#[cfg(test)]
mod tests;
mod workers;

use self::outbound::{FLUSHING, IDLE, MAX_FLUSH_ROUNDS, MAX_SLICES, SESSION, WANT};
pub(super) use self::workers::{FLUSH_INLINE, Urgent, Workers, flush_all};
pub use self::{
    outbound::{ConnId, EnqueueError, Keepalive, Outbound, Wire},
    overflow::{Delivery, Gap, Outgoing, Tag},
    publisher::WriteBatch,
    session::SessionLane,
};
