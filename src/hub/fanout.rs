//! A channel's subscribers and the fan-out rounds that deliver its messages to them.
//!
//! A publish does not enqueue to every subscriber itself: under the channel's state lock it
//! takes the next offset, appends to history and to the channel's `outbox`, and returns. A
//! *round* then takes everything in the outbox, in order, and enqueues it to every
//! subscriber: inline on the publisher's thread for a small channel, on the sessions'
//! runtime for a large one (as urgent work of `lane::workers`, ahead of the writes queued
//! there), so that a publisher (an HTTP request, a client's
//! session) is answered in microseconds however many subscribers the channel has, and never
//! waits behind their writes.
//!
//! At most one round runs per channel (`Channel::round_scheduled`), and a round holds the
//! subscriber lock from taking the outbox until its last enqueue, so frames reach every
//! subscriber in offset order and a subscribe or unsubscribe falls between two rounds.
//! Whatever is published while a round runs waits in the outbox for the next one, which
//! delivers all of it at once: under load, a connection receives several frames per round
//! and the write lane writes them with one `writev`; at low rates a round holds one frame and
//! runs at once, so no timer is ever added to latency. On the workers a channel runs one
//! round per job and queues itself again while its outbox is not empty, so its rounds
//! alternate with the writes they queued.
//!
//! A new subscriber skips what the outbox holds up to its subscribe position (its reply and
//! replay already cover it), by `Subscriber::skip`.

use std::sync::{
    Arc, Mutex, TryLockError,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use smallvec::SmallVec;

use super::{
    FramedText,
    channel::{Channel, Queued},
    lane::{FLUSH_INLINE, Urgent, Workers, WriteBatch},
    lock,
    settings::Compression,
    subscribers::Subscribers,
};
use crate::telemetry;

/// Rounds one call runs before handing the channel to the sessions' runtime, so
/// that a publisher's thread is not kept by a channel others keep publishing to.
const MAX_INLINE_ROUNDS: usize = 4;

/// A channel as its shard's map holds it. Lock order: the shard's map, then `subscribers`,
/// then `state`.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) state: Mutex<Channel>,
    pub(super) subscribers: Mutex<Subscribers>,
    /// The shard's subscription count, which rounds decrement for subscribers they drop.
    pub(super) shard_subscriptions: Arc<AtomicUsize>,
    /// The channel's next round is in the workers' urgent queue (see `Slot::queue_urgent`).
    urgent: AtomicBool,
    /// How rounds compress for subscribers that negotiated permessage-deflate (in the
    /// padding after `urgent`: no cost per channel).
    compression: Option<Compression>,
}

/// What a channel that holds history costs beyond its entries and its ring, counted against
/// `history.max_memory_bytes` with them (its name's length comes on top):
/// the channel's `Arc<Slot>` (two counts), its name's `Arc<str>` (two counts),
/// its slot in the shard's map (key, value and a control byte, at the map's 7/8 load), and
/// the allocator's share of those two allocations. `docs/security.md` has the measured total.
pub(super) const CHANNEL_OVERHEAD: usize = std::mem::size_of::<Slot>()
    + 16
    + 16
    + (std::mem::size_of::<(crate::protocol::ChannelName, Arc<Slot>)>() + 1) * 8 / 7
    + 2 * super::channel::MALLOC_OVERHEAD;

impl Slot {
    pub(super) fn new(
        channel: Channel,
        shard_subscriptions: Arc<AtomicUsize>,
        compression: Option<Compression>,
    ) -> Self {
        Self {
            state: Mutex::new(channel),
            subscribers: Mutex::new(Subscribers::default()),
            shard_subscriptions,
            urgent: AtomicBool::new(false),
            compression,
        }
    }

    /// Gives the channel's next round to the workers, as urgent work ahead of the writes
    /// queued on them (see `lane::workers`), unless it is queued already. The round queues
    /// the channel again while publishers keep adding to the outbox.
    fn queue_urgent(self: &Arc<Self>, workers: &Workers) {
        if !self.urgent.swap(true, Ordering::AcqRel) {
            workers.push_urgent(Arc::clone(self) as Arc<dyn Urgent>);
        }
    }
}

/// Delivers what `slot`'s outbox holds, after a publish that set `round_scheduled`: inline
/// when the channel is small (or there is no runtime to hand it to), leaving the connections
/// it claimed in `writes` for the publisher to write; else on the workers, which write them
/// themselves.
pub(super) fn start_round(
    slot: &Arc<Slot>,
    subscribers: usize,
    workers: Option<&Workers>,
    writes: &mut WriteBatch,
) {
    match workers {
        Some(workers) if subscribers > FLUSH_INLINE => slot.queue_urgent(workers),
        _ => run_inline(slot, workers, writes),
    }
}

impl Urgent for Slot {
    /// One round, written before it returns; the channel goes back in the queue while its
    /// outbox is not empty (published meanwhile, or another thread was running a round).
    fn run(self: Arc<Self>, workers: &Workers) {
        self.urgent.store(false, Ordering::Release);
        let mut writes = WriteBatch::new(Some(workers.clone()));
        if round_on_worker(&self, &mut writes) != Outbox::Done {
            self.queue_urgent(workers);
        }
    }
}

/// What a round on a worker left in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outbox {
    /// Empty: `round_scheduled` is cleared.
    Done,
    /// More was published during the round (`round_scheduled` stays set).
    NotEmpty,
    /// Another thread holds the channel's subscribers (a round inline on a publisher's
    /// thread, a subscribe, an unsubscribe); the round is tried again.
    Busy,
}

/// Rounds on the publisher's thread, into its `writes`: until the outbox is empty, or for
/// [`MAX_INLINE_ROUNDS`], after which the workers take the rest.
fn run_inline(slot: &Arc<Slot>, workers: Option<&Workers>, writes: &mut WriteBatch) {
    let mut rounds = 0;
    loop {
        let mut subscribers = lock(&slot.subscribers);
        let Some(frames) = take_outbox(slot) else {
            return;
        };
        deliver_round(slot, &mut subscribers, &frames, writes);
        drop(subscribers);
        rounds += 1;
        if rounds == MAX_INLINE_ROUNDS
            && let Some(workers) = workers
        {
            let mut state = lock(&slot.state);
            if state.outbox.is_empty() {
                state.round_scheduled = false;
            } else {
                drop(state);
                slot.queue_urgent(workers);
            }
            return;
        }
    }
}

/// One round on a worker, written before it returns; says what is left.
fn round_on_worker(slot: &Slot, writes: &mut WriteBatch) -> Outbox {
    let mut subscribers = match slot.subscribers.try_lock() {
        Ok(subscribers) => subscribers,
        Err(TryLockError::WouldBlock) => return Outbox::Busy,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
    };
    let Some(frames) = take_outbox(slot) else {
        return Outbox::Done;
    };
    deliver_round(slot, &mut subscribers, &frames, writes);
    let left = {
        let mut state = lock(&slot.state);
        if state.outbox.is_empty() {
            state.round_scheduled = false;
            Outbox::Done
        } else {
            Outbox::NotEmpty
        }
    };
    drop(subscribers);
    writes.flush();
    left
}

/// Takes the outbox for a round (the caller holds the subscriber lock); `None`, and the
/// round no longer scheduled, when it is empty.
fn take_outbox(slot: &Slot) -> Option<Vec<Queued>> {
    let mut state = lock(&slot.state);
    if state.outbox.is_empty() {
        state.round_scheduled = false;
        return None;
    }
    state.outbox_bytes = 0;
    Some(std::mem::take(&mut state.outbox))
}

/// Enqueues `frames` to every subscriber (see [`deliver`]) and accounts for it: subscribers
/// dropped (under the state lock, after the subscriber lock the caller holds), deliveries,
/// and each message's time from publish to its last enqueue.
fn deliver_round(
    slot: &Slot,
    subscribers: &mut Subscribers,
    frames: &[Queued],
    writes: &mut WriteBatch,
) {
    let before = subscribers.len();
    let delivered = deliver(subscribers, frames, slot.compression, writes);
    let dropped = before - subscribers.len();
    if dropped > 0 {
        lock(&slot.state).subscribed -= dropped;
        slot.shard_subscriptions
            .fetch_sub(dropped, Ordering::Relaxed);
    }
    let metrics = telemetry::metrics();
    metrics.messages_delivered.increment(delivered as u64);
    for queued in frames.iter().filter(|queued| !queued.event) {
        metrics
            .publish_to_enqueue
            .record(queued.accepted.elapsed().as_secs_f64());
    }
}

/// Enqueues `frames` (in offset order) to every subscriber that has not seen them, one
/// subscriber at a time (its queue and lane stay in cache for all of them); drops the
/// subscribers that overflowed or are closing. Adds to `writes` the connections whose lane
/// this claimed (with a runtime, every `lane::FLUSH_CHUNK` of them go to the workers' queue
/// at once, so other workers write while this one enqueues to the rest). A subscriber that
/// negotiated permessage-deflate gets each frame of at least `compression.min_bytes`
/// compressed, compressed once per round for all such subscribers of a window size
/// ([`Deflated`]). Returns how many frames were enqueued.
fn deliver(
    subscribers: &mut Subscribers,
    frames: &[Queued],
    compression: Option<Compression>,
    writes: &mut WriteBatch,
) -> usize {
    let mut delivered = 0;
    let mut deflated = Deflated::default();
    subscribers.retain(|subscriber| {
        let deflate = compression.zip(subscriber.outbound.deflate());
        for (index, queued) in frames.iter().enumerate() {
            if !queued.event
                && queued.offset.epoch == subscriber.skip.epoch
                && queued.offset.seq <= subscriber.skip.seq
            {
                continue;
            }
            let frame = match deflate {
                Some((compression, deflate))
                    if compression.applies_to(queued.frame.payload_len()) =>
                {
                    deflated.get(frames, index, deflate.compress_bits(), compression.level())
                }
                _ => &queued.frame,
            };
            let enqueued = match &queued.tag {
                Some(tag) => subscriber.outbound.enqueue_tagged(frame, tag),
                None => subscriber.outbound.enqueue(frame),
            };
            match enqueued {
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

/// A round's frames compressed, each at most once per window size, when the first
/// subscriber that needs it asks (a round with no such subscriber allocates nothing).
#[derive(Default)]
struct Deflated {
    /// By frame index, its compressed forms: one in the common case of a single window size.
    frames: Vec<SmallVec<[Variant; 1]>>,
}

/// A frame compressed for one window size (bits): `None` when that did not make it smaller
/// (the plain frame goes instead).
type Variant = (u8, Option<FramedText>);

impl Deflated {
    /// Frame `index` of `frames` as it goes to a subscriber compressing with `window_bits`.
    fn get<'a>(
        &'a mut self,
        frames: &'a [Queued],
        index: usize,
        window_bits: u8,
        level: u32,
    ) -> &'a FramedText {
        if self.frames.is_empty() {
            self.frames.resize_with(frames.len(), SmallVec::new);
        }
        let variants = &mut self.frames[index];
        let at = match variants.iter().position(|(bits, _)| *bits == window_bits) {
            Some(at) => at,
            None => {
                let compressed = frames[index].frame.deflated(window_bits, level);
                telemetry::deflated(
                    frames[index].frame.payload_len(),
                    compressed.as_ref().map(FramedText::payload_len),
                );
                variants.push((window_bits, compressed));
                variants.len() - 1
            }
        };
        variants[at].1.as_ref().unwrap_or(&frames[index].frame)
    }
}
