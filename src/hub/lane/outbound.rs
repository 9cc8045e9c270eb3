//! One connection's outbound side as the hub sees it: a bounded queue, the write lane's
//! state (see the module doc of `lane`), and a close signal.

use std::{
    collections::VecDeque,
    io::{self, IoSlice},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{self, AtomicBool, AtomicU8, AtomicU16, AtomicU64, AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use futures_util::task::AtomicWaker;

use super::{
    super::FramedText,
    SessionLane,
    overflow::{self, Outgoing, Tag},
};
use crate::{protocol::CloseCode, telemetry};

/// A connection's socket as a flusher writes it: non-blocking, from any thread, through a
/// shared reference.
pub trait Wire: Send + Sync + std::fmt::Debug {
    /// Writes what the socket takes now; `WouldBlock` when it takes nothing.
    ///
    /// # Errors
    /// `WouldBlock` when the socket is full; any other error means the connection is broken.
    fn try_write_vectored(&self, buffers: &[IoSlice<'_>]) -> io::Result<usize>;
}

/// Lane states (see the module doc).
pub(super) const IDLE: u8 = 0;
pub(super) const FLUSHING: u8 = 1;
pub(super) const SESSION: u8 = 2;
/// Set on `FLUSHING` by a session waiting to write its own frames.
pub(super) const WANT: u8 = 4;

/// Buffers one flush hands to one `writev` at most.
pub(super) const MAX_SLICES: usize = 64;
/// Times one flush takes the queue before leaving the rest to the session task, so a
/// connection whose queue keeps refilling does not hold a publisher's thread.
pub(super) const MAX_FLUSH_ROUNDS: usize = 4;

/// Marker stored in `close_code` while no close was requested (no valid wire code is 0).
const OPEN: u16 = 0;
/// Marker stored in `close_code` when the transport failed and no close frame can be sent.
const ABORTED: u16 = 1;

/// Identifies a connection on this node; never reused within a process.
pub type ConnId = u64;

/// What [`Outbound::keepalive`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keepalive {
    /// The client was heard from recently enough.
    Alive,
    /// The client was quiet for a heartbeat; a ping was enqueued. `flush`: the lane was
    /// claimed, and the caller must call [`Outbound::flush`].
    Pinged { flush: bool },
    /// The client was silent for the idle timeout; the connection is closing with 4002.
    IdleClosed,
    /// The connection's deadline passed (see
    /// [`Hub::set_deadline`](crate::hub::Hub::set_deadline)); it is closing with the code set
    /// with it.
    DeadlineClosed(CloseCode),
}

/// The hub's handle on one connection: where to enqueue frames, and how to ask it to close.
///
/// Shared (`Arc`) between the hub's subscriber lists, the connection registry and the session.
#[derive(Debug)]
pub struct Outbound {
    pub(super) conn_id: ConnId,
    /// Frames in order, at most `max_messages`. A plain locked deque rather than a channel:
    /// nobody waits on it (the lane and `session` do the waking), and inline it saves the
    /// channel's own allocation on every connection (a flume channel cost 2.23 KiB per idle
    /// connection against this one's figure in docs/performance.md).
    pub(super) queue: Mutex<VecDeque<Outgoing>>,
    pub(super) max_messages: usize,
    /// Who may write to the socket (see the module doc).
    pub(super) lane: AtomicU8,
    /// The socket, for flushers; `None` leaves every write to the session task.
    pub(super) wire: Option<Arc<dyn Wire>>,
    /// What a flusher took off the queue but the socket did not take (the first buffer may
    /// be the unwritten end of a frame): the session writes it before anything else. Empty
    /// (no allocation) unless a socket filled up mid-flush.
    pub(super) handoff: Mutex<Vec<Bytes>>,
    /// Bytes enqueued and not yet taken by the session's write side.
    pub(super) queued_bytes: AtomicUsize,
    /// Bytes the session holds for this connection outside the queue (read buffer, a message
    /// being assembled, bytes taken off the queue and not yet written), as it last reported.
    pub(super) session_bytes: AtomicUsize,
    pub(super) max_bytes: usize,
    /// `CloseCode::index()` of the first close requested, or `OPEN`.
    pub(super) close_code: AtomicU16,
    /// The session task, woken when a close is requested or the lane is handed to it.
    /// Inline rather than a cancellation token: one allocation less per connection.
    pub(super) session: AtomicWaker,
    /// When the client was last heard from, in hub clock milliseconds.
    pub(super) last_seen_ms: AtomicU64,
    /// When the keepalive sweep last enqueued a ping, in hub clock milliseconds.
    pub(super) last_ping_ms: AtomicU64,
    /// When the connection must be closed unless the session moves it (token expiry, or the
    /// time to authenticate) and with which code: the hub clock milliseconds in the low 48
    /// bits (0: never), the close code above them. One word, so that a reader never pairs
    /// one deadline's time with another's code.
    pub(super) deadline: AtomicU64,
    /// The hub holds commands for the session (`Hub::command_user`).
    pub(super) commands: AtomicBool,
    /// What the connection negotiated of permessage-deflate (`Deflate::to_byte`; 0: none).
    /// Set by the session before it subscribes to anything.
    deflate: AtomicU8,
}

/// Appends `item` to `queue`. An empty queue's first buffer holds one frame, not the four
/// of `VecDeque`'s least growth: most connections hold one frame at a time and keep that
/// buffer (the flusher takes a single frame without it), so a connection at rest keeps
/// 48 bytes here instead of 192. A second frame grows it as usual.
fn push(queue: &mut VecDeque<Outgoing>, item: Outgoing) {
    if queue.capacity() == 0 {
        queue.reserve_exact(1);
    }
    queue.push_back(item);
}

/// The time bits of `Outbound::deadline`.
const DEADLINE_MS: u64 = (1 << 48) - 1;

/// Why a frame was not enqueued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnqueueError {
    /// The queue was full by count or bytes; the connection is now closing as a slow consumer.
    SlowConsumer,
    /// The connection is already closing; the frame is dropped with it.
    Closing,
}

impl Outbound {
    /// The session task's side of the lane.
    #[must_use]
    pub fn session_lane(&self) -> SessionLane<'_> {
        SessionLane(self)
    }

    pub(in crate::hub) fn new(
        conn_id: ConnId,
        wire: Option<Arc<dyn Wire>>,
        max_messages: usize,
        max_bytes: usize,
        now_ms: u64,
    ) -> Arc<Self> {
        Arc::new(Self {
            conn_id,
            queue: Mutex::new(VecDeque::new()),
            max_messages,
            lane: AtomicU8::new(IDLE),
            wire,
            handoff: Mutex::new(Vec::new()),
            queued_bytes: AtomicUsize::new(0),
            session_bytes: AtomicUsize::new(0),
            max_bytes,
            close_code: AtomicU16::new(OPEN),
            session: AtomicWaker::new(),
            last_seen_ms: AtomicU64::new(now_ms),
            last_ping_ms: AtomicU64::new(now_ms),
            deadline: AtomicU64::new(0),
            commands: AtomicBool::new(false),
            deflate: AtomicU8::new(0),
        })
    }

    /// Records what the connection negotiated of permessage-deflate: fan-out rounds then
    /// send it compressed frames. Called once, after the upgrade, before any subscribe.
    pub fn negotiated(&self, deflate: Option<crate::protocol::deflate::Deflate>) {
        self.deflate.store(
            deflate.map_or(0, crate::protocol::deflate::Deflate::to_byte),
            Ordering::Relaxed,
        );
    }

    /// What the connection negotiated of permessage-deflate, if anything.
    #[must_use]
    pub fn deflate(&self) -> Option<crate::protocol::deflate::Deflate> {
        crate::protocol::deflate::Deflate::from_byte(self.deflate.load(Ordering::Relaxed))
    }

    #[must_use]
    pub fn conn_id(&self) -> ConnId {
        self.conn_id
    }

    /// Enqueues a frame from the session's own task (a reply, the welcome, a replay): the
    /// session claims the lane if it is idle and writes the frame on its next turn. A full
    /// queue closes the connection as a slow consumer.
    ///
    /// # Errors
    /// [`EnqueueError`] when the frame was not enqueued.
    pub fn try_enqueue(&self, frame: &FramedText) -> Result<(), EnqueueError> {
        self.push(frame)?;
        self.claim(SESSION);
        Ok(())
    }

    /// Enqueues a frame for someone other than the session (a publisher): never waits, and a
    /// full queue closes the connection as a slow consumer. `Ok(true)` when this call claimed
    /// the lane: the caller must then call [`Outbound::flush`] (at once or on another task,
    /// but without holding a lock other enqueuers need).
    ///
    /// # Errors
    /// [`EnqueueError`] when the frame was not enqueued.
    #[must_use = "a claimed lane must be flushed"]
    pub fn enqueue(&self, frame: &FramedText) -> Result<bool, EnqueueError> {
        self.push(frame)?;
        Ok(self.claim(FLUSHING))
    }

    /// [`Outbound::enqueue`] of a message whose channel's namespace drops or conflates for
    /// slow subscribers (`tag`): a full queue makes room under that policy (see
    /// `overflow`) before it closes the connection as a slow consumer.
    ///
    /// # Errors
    /// [`EnqueueError`] when the frame was not enqueued.
    #[must_use = "a claimed lane must be flushed"]
    pub fn enqueue_tagged(&self, frame: &FramedText, tag: &Arc<Tag>) -> Result<bool, EnqueueError> {
        if self.is_closing() {
            return Err(EnqueueError::Closing);
        }
        let len = frame.len();
        {
            let mut queue = self.queue();
            let queued = self.queued_bytes.load(Ordering::Relaxed);
            if overflow::fits_now(&queue, tag, len, queued, self.max_messages, self.max_bytes) {
                self.queued_bytes.fetch_add(len, Ordering::Relaxed);
                push(&mut queue, Outgoing::Tagged(frame.clone(), Arc::clone(tag)));
            } else {
                let made = overflow::make_room(
                    &mut queue,
                    tag,
                    len,
                    queued,
                    self.max_messages,
                    self.max_bytes,
                );
                let Some(room) = made else {
                    drop(queue);
                    telemetry::slow_consumer_closed(&tag.delivery.label);
                    self.close_slow_consumer();
                    return Err(EnqueueError::SlowConsumer);
                };
                self.queued_bytes
                    .fetch_add(room.added_bytes + len, Ordering::Relaxed);
                self.queued_bytes
                    .fetch_sub(room.removed_bytes, Ordering::Relaxed);
                push(&mut queue, Outgoing::Tagged(frame.clone(), Arc::clone(tag)));
            }
        }
        Ok(self.claim(FLUSHING))
    }

    /// Moves the lane from `IDLE` to `to`; whether this call did. Called after a push: the
    /// fence pairs with the one in the releases (see the module doc).
    pub(super) fn claim(&self, to: u8) -> bool {
        atomic::fence(Ordering::SeqCst);
        self.lane.load(Ordering::SeqCst) == IDLE
            && self
                .lane
                .compare_exchange(IDLE, to, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
    }

    fn push(&self, frame: &FramedText) -> Result<(), EnqueueError> {
        if self.is_closing() {
            return Err(EnqueueError::Closing);
        }
        let len = frame.len();
        let before = self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if before + len > self.max_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            self.close_slow_consumer();
            return Err(EnqueueError::SlowConsumer);
        }
        if self.try_push(Outgoing::Text(frame.clone())) {
            Ok(())
        } else {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            self.close_slow_consumer();
            Err(EnqueueError::SlowConsumer)
        }
    }

    /// Appends `item` unless the queue holds `max_messages` already.
    fn try_push(&self, item: Outgoing) -> bool {
        let mut queue = self.queue();
        if queue.len() >= self.max_messages {
            return false;
        }
        push(&mut queue, item);
        true
    }

    pub(super) fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Outgoing>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn queue_is_empty(&self) -> bool {
        self.queue().is_empty()
    }

    /// The client was heard from (any frame, a pong included) at `now_ms` on the hub clock.
    pub fn seen(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
    }

    /// One keepalive check at `now_ms`: closes a connection silent for `idle_ms` with 4002,
    /// and pings one that was quiet for `heartbeat_ms` since it was last heard from or pinged.
    /// A client that keeps talking is never pinged; its frames already prove it alive.
    pub fn keepalive(&self, now_ms: u64, heartbeat_ms: u64, idle_ms: u64) -> Keepalive {
        if self.is_closing() {
            return Keepalive::Alive;
        }
        let deadline = self.deadline.load(Ordering::Relaxed);
        let deadline_ms = deadline & DEADLINE_MS;
        if deadline_ms != 0 && now_ms >= deadline_ms {
            let code = u16::try_from(deadline >> 48).unwrap_or(0);
            let code = CloseCode::from_code(code).unwrap_or(CloseCode::TokenExpired);
            self.close(code);
            return Keepalive::DeadlineClosed(code);
        }
        let last_seen = self.last_seen_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last_seen) >= idle_ms {
            self.close(CloseCode::IdleTimeout);
            return Keepalive::IdleClosed;
        }
        let last_ping = self.last_ping_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last_seen.max(last_ping)) < heartbeat_ms {
            return Keepalive::Alive;
        }
        self.last_ping_ms.store(now_ms, Ordering::Relaxed);
        // A full queue means a slow consumer, which the data path already closes; a ping
        // that does not fit is simply skipped.
        let flush = self.try_push(Outgoing::Ping) && self.claim(FLUSHING);
        Keepalive::Pinged { flush }
    }

    /// When a keepalive check after one at `now_ms` may next find a ping or an idle close to
    /// do (the deadline is the hub's to add, see `Hub::keepalive`). Earlier is never wrong
    /// (the check finds nothing); a client heard from meanwhile only moves them later.
    #[must_use]
    pub fn next_keepalive_ms(&self, now_ms: u64, heartbeat_ms: u64, idle_ms: u64) -> u64 {
        if self.is_closing() {
            return now_ms.saturating_add(heartbeat_ms);
        }
        let last_seen = self.last_seen_ms.load(Ordering::Relaxed);
        let last_ping = self.last_ping_ms.load(Ordering::Relaxed);
        let ping = last_seen.max(last_ping).saturating_add(heartbeat_ms);
        ping.min(last_seen.saturating_add(idle_ms))
    }

    /// The deadline's time on the hub clock, 0 when none is set.
    #[must_use]
    pub fn deadline_ms(&self) -> u64 {
        self.deadline.load(Ordering::SeqCst) & DEADLINE_MS
    }

    fn close_slow_consumer(&self) {
        if self.close(CloseCode::SlowConsumer) {
            telemetry::metrics().slow_consumer_closes.increment(1);
            tracing::debug!(
                conn_id = self.conn_id,
                "Outbound queue full, closing slow consumer"
            );
        }
    }

    /// Takes the next item off the queue, for whoever holds the lane (and benches).
    pub fn take(&self) -> Option<Outgoing> {
        let item = self.queue().pop_front()?;
        self.taken(&item);
        Some(item)
    }

    /// Accounts for `item` leaving the queue.
    pub(super) fn taken(&self, item: &Outgoing) {
        self.queued_bytes
            .fetch_sub(item.text_len(), Ordering::Relaxed);
    }

    /// Gives the lane to the session task and wakes it.
    pub(super) fn hand_over(&self) {
        self.lane.store(SESSION, Ordering::SeqCst);
        self.session.wake();
    }

    /// Asks the session to close with `code`. The first request wins; returns whether this one
    /// did.
    pub fn close(&self, code: CloseCode) -> bool {
        let won = self
            .close_code
            .compare_exchange(OPEN, code.code(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        self.session.wake();
        won
    }

    /// Tells the session that the hub holds commands for it, and wakes it.
    pub(in crate::hub) fn notify_commands(&self) {
        self.commands.store(true, Ordering::Release);
        self.session.wake();
    }

    /// Whether the hub held commands for the session since the last call (then the session
    /// takes them with `Hub::take_commands`).
    #[must_use]
    pub fn take_commands_flag(&self) -> bool {
        self.commands.load(Ordering::Acquire) && self.commands.swap(false, Ordering::AcqRel)
    }

    /// Marks the connection closing without a close frame (the transport failed).
    pub fn abort(&self) {
        let _ =
            self.close_code
                .compare_exchange(OPEN, ABORTED, Ordering::AcqRel, Ordering::Acquire);
        self.session.wake();
    }

    #[must_use]
    pub fn is_closing(&self) -> bool {
        self.close_code.load(Ordering::Acquire) != OPEN
    }

    /// The close code requested first; `None` while open or when aborted.
    #[must_use]
    pub fn close_code(&self) -> Option<CloseCode> {
        CloseCode::from_code(self.close_code.load(Ordering::Acquire))
    }

    /// Messages waiting in the queue.
    #[must_use]
    pub fn queued_messages(&self) -> usize {
        self.queue().len()
    }

    /// Bytes waiting in the queue.
    #[must_use]
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// Closes the connection with `code` at `at_ms` on the hub clock (checked by the keepalive
    /// sweep, so up to one of its ticks late), unless set again; `at_ms` 0 clears it.
    /// Times past the hub clock's 48 bits (8,900 years) are kept at its end. Through
    /// `Hub::set_deadline`, which tells the sweep.
    pub(in crate::hub) fn set_deadline(&self, at_ms: u64, code: CloseCode) {
        let word = (u64::from(code.code()) << 48) | at_ms.min(DEADLINE_MS);
        self.deadline.store(word, Ordering::SeqCst);
    }

    /// For the session: how many bytes it holds for this connection outside the queue.
    pub fn report_session_bytes(&self, bytes: usize) {
        self.session_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Bytes the session last reported holding outside the queue.
    #[must_use]
    pub fn session_bytes(&self) -> usize {
        self.session_bytes.load(Ordering::Relaxed)
    }
}
