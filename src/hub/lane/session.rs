//! The session's side of the write lane: what the connection's own task does when the lane
//! is (or must become) its own (see the module doc of `lane`).

use std::{
    collections::VecDeque,
    sync::{
        PoisonError,
        atomic::{self, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;

use super::{FLUSHING, IDLE, Outbound, SESSION, WANT};

/// The session task's hold on its connection's lane: [`Outbound::session_lane`].
#[derive(Debug, Clone, Copy)]
pub struct SessionLane<'a>(pub(super) &'a Outbound);

impl SessionLane<'_> {
    /// moves queued frames to `push` until it returns
    /// `false` (no more room) or the queue is empty. A queue this call found empty after
    /// taking frames gives its buffer up too (with whatever was enqueued meanwhile), so a
    /// backlog's capacity is not kept for the connection's life. (A backlog is taken in
    /// several calls, as room allows, and the last may take a single frame; the session's
    /// own replies pay one small allocation each for that.)
    pub fn take_while(&self, mut push: impl FnMut(Bytes) -> bool) {
        let mut n_taken = 0;
        loop {
            let next = {
                let mut queue = self.0.queue();
                let next = queue.pop_front();
                if next.is_none() && n_taken > 0 {
                    *queue = VecDeque::new();
                }
                next
            };
            let Some(item) = next else {
                return;
            };
            self.0.taken(&item);
            n_taken += 1;
            if !push(item.into_wire()) {
                return;
            }
        }
    }

    /// registers it to be woken by a close request or a hand-over.
    /// Call it at the start of every poll, before looking at the state it reports.
    pub fn register(&self, cx: &Context<'_>) {
        self.0.session.register(cx.waker());
    }

    /// whether it holds the lane and must write the queue.
    #[must_use]
    pub fn writes(&self) -> bool {
        self.0.lane.load(Ordering::SeqCst) == SESSION
    }

    /// before it writes frames of its own (pongs, the close frame):
    /// ready once it holds the lane. Pending while a flusher writes; the flusher hands over
    /// when done and wakes `cx`.
    pub fn poll_claim(&self, cx: &Context<'_>) -> Poll<()> {
        loop {
            match self.0.lane.load(Ordering::SeqCst) {
                SESSION => return Poll::Ready(()),
                IDLE => {
                    if self.0.claim(SESSION) {
                        return Poll::Ready(());
                    }
                }
                state => {
                    self.0.session.register(cx.waker());
                    if self
                        .0
                        .lane
                        .compare_exchange(
                            state,
                            FLUSHING | WANT,
                            Ordering::SeqCst,
                            Ordering::SeqCst,
                        )
                        .is_ok()
                    {
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    /// what a flusher left unwritten, to write first.
    pub fn take_handoff(&self) -> Vec<Bytes> {
        std::mem::take(
            &mut *self
                .0
                .handoff
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// once it wrote everything: gives the lane up.
    /// `false` when the queue filled meanwhile and the session keeps the lane to write it.
    pub fn release(&self) -> bool {
        self.0.lane.store(IDLE, Ordering::SeqCst);
        atomic::fence(Ordering::SeqCst);
        self.0.queue_is_empty() || !self.0.claim(SESSION)
    }
}
