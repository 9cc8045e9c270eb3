//! A channel's subscribers and the fan-out rounds that deliver its messages to them.
//!
//! A publish does not enqueue to every subscriber itself: under the channel's state lock it
//! takes the next offset, appends to history and to the channel's `outbox`, and returns. A
//! *round* then takes everything in the outbox, in order, and enqueues it to every
//! subscriber: inline on the publisher's thread for a small channel, in a task on the
//! sessions' runtime for a large one, so that a publisher (an HTTP request, a client's
//! session) is answered in microseconds however many subscribers the channel has, and never
//! waits behind their writes.
//!
//! At most one round runs per channel (`Channel::round_scheduled`), and a round holds the
//! subscriber lock from taking the outbox until its last enqueue, so frames reach every
//! subscriber in offset order and a subscribe or unsubscribe falls between two rounds.
//! Whatever is published while a round runs waits in the outbox for the next one, which
//! delivers all of it at once: under load, a connection receives several frames per round
//! and the write lane writes them with one `writev`; at low rates a round holds one frame and
//! runs at once, so no timer is ever added to latency. A task runs one round per turn and
//! yields between rounds, so that the writes its round handed to flush tasks go out before
//! the next round queues more behind them.
//!
//! A new subscriber skips what the outbox holds up to its subscribe position (its reply and
//! replay already cover it), by `Subscriber::skip`.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use indexmap::IndexMap;
use tokio::{runtime::Handle, time::Instant};

use super::{
    ConnId, FramedText, Outbound,
    channel::Channel,
    lane::{FLUSH_INLINE, WriteBatch},
    lock,
};
use crate::{protocol::Offset, telemetry};

/// Rounds one call runs before handing the channel to a task on the sessions' runtime, so
/// that a publisher's thread is not kept by a channel others keep publishing to.
const MAX_INLINE_ROUNDS: usize = 4;

/// A channel as its shard's map holds it. Lock order: the shard's map, then `subscribers`,
/// then `state`.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) state: Mutex<Channel>,
    pub(super) subscribers: Mutex<IndexMap<ConnId, Subscriber>>,
    /// The shard's subscription count, which rounds decrement for subscribers they drop.
    pub(super) shard_subscriptions: Arc<AtomicUsize>,
}

/// One subscriber of a channel.
#[derive(Debug)]
pub(super) struct Subscriber {
    pub(super) outbound: Arc<Outbound>,
    /// Messages of this epoch up to this sequence number reached the subscriber another way
    /// (its subscribe's reply position, its replay, a read from the bus): rounds skip them.
    pub(super) skip: Offset,
}

/// A message waiting in a channel's outbox for the next round.
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) offset: Offset,
    pub(super) frame: FramedText,
    /// When it was accepted, for `ws_publish_to_enqueue_seconds`.
    pub(super) accepted: Instant,
    /// An event (`join`, `leave`) rather than a message: it has no offset of its own
    /// (`offset` is the channel's position when it was queued), and no subscriber skips it.
    pub(super) event: bool,
}

impl Queued {
    /// A published message, sharing `frame`.
    pub(super) fn message(offset: Offset, frame: &FramedText, accepted: Instant) -> Self {
        Self {
            offset,
            frame: frame.clone(),
            accepted,
            event: false,
        }
    }
}

impl Slot {
    pub(super) fn new(channel: Channel, shard_subscriptions: Arc<AtomicUsize>) -> Self {
        Self {
            state: Mutex::new(channel),
            subscribers: Mutex::new(IndexMap::new()),
            shard_subscriptions,
        }
    }
}

/// Delivers what `slot`'s outbox holds, after a publish that set `round_scheduled`: inline
/// when the channel is small (or there is no runtime to hand it to), leaving the connections
/// it claimed in `writes` for the publisher to write; else in a task on `workers`, which
/// writes them itself.
pub(super) fn start_round(
    slot: &Arc<Slot>,
    subscribers: usize,
    workers: Option<&Handle>,
    writes: &mut WriteBatch,
) {
    match workers {
        Some(workers) if subscribers > FLUSH_INLINE => spawn_rounds(Arc::clone(slot), workers),
        _ => {
            run_rounds(slot, workers, writes, true);
        }
    }
}

fn spawn_rounds(slot: Arc<Slot>, workers: &Handle) {
    let handle = workers.clone();
    // Not through the app's task tracker: a round never awaits and the task ends once the
    // outbox is empty; one dropped at shutdown loses frames only for connections that are
    // closing.
    workers.spawn(async move {
        let mut writes = WriteBatch::new(Some(handle.clone()));
        // One round per turn of the task. A round spawns flush tasks onto this worker's own
        // queue as it goes; running the next round at once kept them there (or for the
        // other worker to steal) behind a worker busy enqueueing, and connections waited
        // for their writes. Yielding lets this worker write them first: 10,000 subscribers,
        // eight publishers at 125/s, p99 323-382 -> 204-228 ms, CPU per delivery 0.85 ->
        // 0.76 us (docs/performance.md).
        while run_rounds(&slot, Some(&handle), &mut writes, false) == Outbox::NotEmpty {
            tokio::task::yield_now().await;
        }
    });
}

/// What a call of [`run_rounds`] left in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outbox {
    /// Empty (`round_scheduled` cleared), or handed to a task.
    Done,
    /// A task's round is done and more was published meanwhile: the caller runs the next
    /// round after letting other tasks run (`round_scheduled` stays set).
    NotEmpty,
}

/// Runs rounds: `inline` (into the publisher's `writes`, written when the publisher is
/// done) until the outbox is empty or for [`MAX_INLINE_ROUNDS`], then hands the rest to a
/// task; in a task, one round, written before it returns.
fn run_rounds(
    slot: &Arc<Slot>,
    workers: Option<&Handle>,
    writes: &mut WriteBatch,
    inline: bool,
) -> Outbox {
    let mut dropped = 0;
    let mut round = 0;
    loop {
        let mut subscribers = lock(&slot.subscribers);
        let frames = {
            let mut state = lock(&slot.state);
            state.subscribed -= dropped;
            if state.outbox.is_empty() {
                state.round_scheduled = false;
                return Outbox::Done;
            }
            if !inline && round == 1 {
                return Outbox::NotEmpty;
            }
            if inline
                && round == MAX_INLINE_ROUNDS
                && let Some(workers) = workers
            {
                drop((state, subscribers));
                spawn_rounds(Arc::clone(slot), workers);
                return Outbox::Done;
            }
            state.outbox_bytes = 0;
            std::mem::take(&mut state.outbox)
        };
        let before = subscribers.len();
        let delivered = deliver(&mut subscribers, &frames, writes);
        dropped = before - subscribers.len();
        drop(subscribers);
        if dropped > 0 {
            slot.shard_subscriptions
                .fetch_sub(dropped, Ordering::Relaxed);
        }
        if !inline {
            writes.flush();
        }
        let metrics = telemetry::metrics();
        metrics.messages_delivered.increment(delivered as u64);
        for queued in frames.iter().filter(|queued| !queued.event) {
            metrics
                .publish_to_enqueue
                .record(queued.accepted.elapsed().as_secs_f64());
        }
        round += 1;
    }
}

/// Enqueues `frames` (in offset order) to every subscriber that has not seen them, one
/// subscriber at a time (its queue and lane stay in cache for all of them); drops the
/// subscribers that overflowed or are closing. Adds to `writes` the connections whose lane
/// this claimed (with a runtime, every `lane::FLUSH_CHUNK` of them go to a flush task at once,
/// so other workers write while this one enqueues to the rest). Returns how many frames
/// were enqueued.
fn deliver(
    subscribers: &mut IndexMap<ConnId, Subscriber>,
    frames: &[Queued],
    writes: &mut WriteBatch,
) -> usize {
    let mut delivered = 0;
    subscribers.retain(|_, subscriber| {
        for queued in frames {
            if !queued.event
                && queued.offset.epoch == subscriber.skip.epoch
                && queued.offset.seq <= subscriber.skip.seq
            {
                continue;
            }
            match subscriber.outbound.enqueue(&queued.frame) {
                Ok(claimed) => {
                    delivered += 1;
                    if claimed {
                        writes.push(Arc::clone(&subscriber.outbound));
                    }
                }
                Err(_) => return false,
            }
        }
        true
    });
    delivered
}
