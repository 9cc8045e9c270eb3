//! One channel's ordered state: its position, its history ring and the outbox of messages
//! not yet fanned out.
//!
//! All of it sits behind one mutex so that assigning an offset, appending to history and
//! to the outbox happen as one step. That step is what makes per-channel order hold under
//! concurrent publishers; fan-out rounds (`fanout`) take the outbox in that order, and a
//! `since` subscribe, holding this lock, replays history and joins the live stream at a
//! position rounds respect, with no gap and no duplicate.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use super::{
    FramedText, Tag,
    stream::message::{Coalescing, Message},
};
use crate::{
    config::ChannelPattern,
    protocol::{ChannelName, Offset},
};

/// What the allocator adds to each allocation (glibc: a 16-byte header and rounding).
pub(super) const MALLOC_OVERHEAD: usize = 16;

/// Bytes counted per history entry on top of its frame: the frame's buffer has room for the
/// longest header (10 bytes) and is an allocation of its own. The `Entry` itself lives in the
/// channel's ring and is counted with it.
const ENTRY_OVERHEAD: usize = 10 + MALLOC_OVERHEAD;

/// A message waiting in a channel's outbox for the next round.
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) offset: Offset,
    pub(super) frame: FramedText,
    /// When it was accepted, for `switchboard_publish_to_enqueue_seconds`.
    pub(super) accepted: Instant,
    /// An event (`join`, `leave`) rather than a message: it has no offset of its own
    /// (`offset` is the channel's position when it was queued), and no subscriber skips it.
    pub(super) event: bool,
    /// Its place under the channel's `slow_consumer` policy, when that is not `disconnect`.
    pub(super) tag: Option<Arc<Tag>>,
}

impl Queued {
    /// A published message, sharing `frame`.
    pub(super) fn message(offset: Offset, frame: &FramedText, accepted: Instant) -> Self {
        Self {
            offset,
            frame: frame.clone(),
            accepted,
            event: false,
            tag: None,
        }
    }
}

/// A published message kept for resume.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) seq: u64,
    /// The seq of the message's last operation (an append, an edit): `seq` for a message
    /// that never changed. Resume replays the entries whose `last` is after its `since`.
    pub(super) last: u64,
    /// When it was published, or last changed: what `history.ttl` counts from.
    pub(super) published_at: Instant,
    /// The whole `message` frame as published, shared with the subscribers' queues.
    pub(super) frame: FramedText,
    /// Where `data` starts inside `frame` (it runs to the frame's closing brace).
    pub(super) data_start: u32,
    /// A message published with a `message_id`: its id, owner and current state.
    pub(super) message: Option<Box<Message>>,
}

impl Entry {
    pub(super) fn cost(&self) -> usize {
        self.frame.len() + ENTRY_OVERHEAD + self.message.as_ref().map_or(0, |m| m.cost())
    }

    /// The frame that brings a client up to this message as it stands: the frame it was
    /// published as, or once it changed, its state frame (see [`Channel::prepare_states`]).
    pub(super) fn replay_frame(&self) -> &FramedText {
        match &self.message {
            Some(message) if self.last != self.seq => message
                .state_frame
                .as_ref()
                .expect("prepare_states built the state frame of every changed entry it replays"),
            _ => &self.frame,
        }
    }
}

/// A `message_id` the channel knows: its message's seq, and when it was published (for
/// `streams.dedupe_window`).
#[derive(Debug, Clone, Copy)]
pub(super) struct KnownId {
    pub(super) seq: u64,
    pub(super) at: Instant,
}

/// The `message_id`s a channel knows, allocated on the first: most channels never see one,
/// and an empty map would cost each of them 48 bytes.
#[derive(Debug, Default)]
#[allow(
    clippy::box_collection,
    reason = "8 bytes per channel instead of a map's 48: most channels have none"
)]
pub(super) struct KnownIds(Option<Box<HashMap<Box<str>, KnownId>>>);

impl KnownIds {
    pub(super) fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|ids| ids.is_empty())
    }

    pub(super) fn get(&self, message_id: &str) -> Option<&KnownId> {
        self.0.as_ref()?.get(message_id)
    }

    /// Adds or updates `message_id`: whether it is new.
    pub(super) fn insert(&mut self, message_id: Box<str>, known: KnownId) -> bool {
        self.0
            .get_or_insert_default()
            .insert(message_id, known)
            .is_none()
    }

    /// Keeps the ids `keep` says to: the bytes of those dropped (text and `ID_OVERHEAD`).
    /// Frees the map once empty, and shrinks it once mostly empty.
    fn retain(&mut self, mut keep: impl FnMut(&KnownId) -> bool) -> usize {
        let Some(ids) = self.0.as_mut() else {
            return 0;
        };
        let mut freed = 0;
        ids.retain(|id, known| {
            let kept = keep(known);
            if !kept {
                freed += id.len() + ID_OVERHEAD;
            }
            kept
        });
        if ids.is_empty() {
            self.0 = None;
        } else if ids.capacity() > 2 * ids.len() + 16 {
            ids.shrink_to_fit();
        }
        freed
    }
}

/// What an id kept for deduplication costs against the history budget beyond its text:
/// the map's key and value and the allocator's share.
pub(super) const ID_OVERHEAD: usize =
    std::mem::size_of::<(Box<str>, KnownId)>() * 8 / 7 + 1 + MALLOC_OVERHEAD;

/// How much history channels keep (`history.size`, `ttl`, `max_memory_bytes`) and what the
/// node holds now against the byte budget they share.
#[derive(Debug)]
pub(super) struct Retention {
    /// `history.size` and `history.ttl`: channels of no namespace that sets its own.
    pub(super) size: usize,
    pub(super) ttl: Duration,
    /// Every `[[namespaces]]` entry in order with the history its channels keep, when any
    /// entry sets its own (`history_size`, `history_ttl`); empty otherwise. A channel
    /// notes which (see [`Channel::limit`]).
    pub(super) namespaces: Vec<(ChannelPattern, HistoryLimit)>,
    pub(super) max_bytes: usize,
    pub(super) used_bytes: AtomicUsize,
    pub(super) used_messages: AtomicUsize,
    /// How long a `message_id` is remembered after its publish (`streams.dedupe_window`).
    pub(super) dedupe_window: Duration,
    /// What a channel that holds history costs beyond its entries
    /// ([`CHANNEL_OVERHEAD`](super::fanout::CHANNEL_OVERHEAD)).
    pub(super) channel_overhead: usize,
}

/// How much history one channel keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimit {
    /// Messages; 0: none (an ephemeral channel).
    pub size: usize,
    pub ttl: Duration,
}

impl Retention {
    /// The entry of [`Retention::namespaces`] that governs `channel`, plus one (0: the
    /// defaults), as a channel keeps it.
    pub(super) fn index_for(&self, channel: &str) -> u16 {
        if self.namespaces.is_empty() {
            return 0;
        }
        self.namespaces
            .iter()
            .position(|(pattern, _)| pattern.fits(channel))
            .and_then(|index| u16::try_from(index + 1).ok())
            .unwrap_or(0)
    }

    /// The history a channel with index `index` keeps.
    pub(super) fn limit(&self, index: u16) -> HistoryLimit {
        (index as usize)
            .checked_sub(1)
            .and_then(|index| self.namespaces.get(index))
            .map_or(
                HistoryLimit {
                    size: self.size,
                    ttl: self.ttl,
                },
                |(_, limit)| *limit,
            )
    }
}

/// Deliveries kept while a subscribe waits for a read from the bus, at most.
pub(super) const MAX_PENDING: usize = 4096;

#[derive(Debug)]
pub(super) struct Channel {
    pub(super) epoch: u64,
    /// Sequence number of the last message delivered here; 0 before the first.
    pub(super) seq: u64,
    pub(super) history: VecDeque<Entry>,
    /// Subscribers (kept in the slot's own map, see `fanout`), counted here so that whether
    /// the channel is idle is known under this lock.
    pub(super) subscribed: usize,
    /// Messages ordered here and not yet taken by a fan-out round (see `fanout`).
    pub(super) outbox: Vec<Queued>,
    /// The frames' bytes in `outbox`.
    pub(super) outbox_bytes: usize,
    /// A round is running or about to: a publish only adds to the outbox.
    pub(super) round_scheduled: bool,
    /// Set when the channel was dropped from its shard; holders of a stale `Arc` must look it
    /// up again.
    pub(super) removed: bool,
    /// Whether `epoch` and `seq` are known. Always true when this node orders messages
    /// itself; with a remote bus, true once a delivery or a bus read set them.
    pub(super) synced: bool,
    /// Subscribes that are reading from the bus and will merge `pending` when they return.
    pub(super) pins: u32,
    /// Deliveries since the first pin, for pinned subscribes to merge with what they read.
    /// `(seq, frame)` of each message or operation delivered meanwhile.
    pub(super) pending: Vec<(u64, FramedText)>,
    /// `pending` overflowed `MAX_PENDING`: pinned subscribes cannot prove continuity.
    pub(super) pending_lost: bool,
    /// A remote bus delivered operations on messages this node does not hold: a subscribe
    /// without `since` asks the bus for the open streams.
    pub(super) unheld: bool,
    /// The channel has had a subscriber here since the last time one saw it vacant
    /// ([`Hub::leave`](crate::hub::Hub::leave)): set by the subscribe that found it vacant,
    /// cleared by the leave that finds no subscriber (also when a fan-out dropped the last
    /// one first), so occupied and vacated alternate. The channel is not dropped while set.
    pub(super) occupied: bool,
    /// The channel moved to a new epoch after subscribers here had followed the old one:
    /// they are sent a `reset` before the new epoch's first message (see
    /// [`Hub::deliver_locked`](super::Hub)).
    pub(super) reset_owed: bool,
    /// The greatest `last` of the entries history no longer holds: a resume from before it
    /// cannot be answered (0 while nothing was dropped). Without history, the channel's seq.
    pub(super) floor: u64,
    /// The `message_id`s the channel knows (see `stream`).
    pub(super) ids: KnownIds,
    /// Entries whose message is an open stream.
    pub(super) open: u32,
    /// Entries that changed since their publish (`last != seq`): while there are none, a
    /// resume replays a plain range of history.
    pub(super) changed: u32,
    /// Appends held to go out as one frame (`streams.coalesce`); allocated on the first.
    pub(super) coalescing: Option<Box<Coalescing>>,
    /// Length of the channel's name, for what it costs.
    name_len: u32,
    /// Bytes this channel (not its entries) counts against the node's history budget now:
    /// 0 while it holds no history.
    charged: usize,
    /// Which history it keeps: see [`Retention::index_for`].
    pub(super) limit: u16,
    /// Its namespace's `slow_consumer` policy, when that is not `disconnect`.
    pub(super) delivery: Option<Arc<super::Delivery>>,
}

impl Channel {
    pub(super) fn new(
        synced: bool,
        name_len: usize,
        limit: u16,
        delivery: Option<Arc<super::Delivery>>,
    ) -> Self {
        Self {
            // A fresh random epoch per channel instance: offsets from an instance whose history
            // was lost can never be mistaken for offsets of this one.
            epoch: rand::random(),
            seq: 0,
            history: VecDeque::new(),
            subscribed: 0,
            outbox: Vec::new(),
            outbox_bytes: 0,
            round_scheduled: false,
            removed: false,
            synced,
            pins: 0,
            reset_owed: false,
            pending: Vec::new(),
            pending_lost: false,
            unheld: false,
            occupied: false,
            floor: 0,
            ids: KnownIds::default(),
            open: 0,
            changed: 0,
            coalescing: None,
            name_len: u32::try_from(name_len).unwrap_or(u32::MAX),
            charged: 0,
            limit,
            delivery,
        }
    }

    /// Brings the channel's own charge against the history budget in line with what it holds
    /// now: nothing without history (the ring is then freed too), else the channel, its name
    /// and its ring's capacity.
    fn settle(&mut self, policy: &Retention) {
        let cost = if self.history.is_empty() {
            if self.history.capacity() > 0 {
                self.history = VecDeque::new();
            }
            0
        } else {
            policy.channel_overhead
                + self.name_len as usize
                + self.history.capacity() * std::mem::size_of::<Entry>()
                + MALLOC_OVERHEAD
        };
        if cost >= self.charged {
            policy
                .used_bytes
                .fetch_add(cost - self.charged, Ordering::Relaxed);
        } else {
            policy
                .used_bytes
                .fetch_sub(self.charged - cost, Ordering::Relaxed);
        }
        self.charged = cost;
    }

    pub(super) fn offset(&self) -> Offset {
        Offset {
            epoch: self.epoch,
            seq: self.seq,
        }
    }

    pub(super) fn next_offset(&mut self) -> Offset {
        self.seq += 1;
        self.offset()
    }

    /// Keeps a delivery for pinned subscribes.
    pub(super) fn remember_pending(&mut self, seq: u64, frame: &FramedText) {
        if self.pins == 0 {
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            self.pending.clear();
            self.pending_lost = true;
        } else {
            self.pending.push((seq, frame.clone()));
        }
    }

    /// A pinned subscribe is done with `pending`.
    pub(super) fn unpin(&mut self) {
        self.pins = self.pins.saturating_sub(1);
        if self.pins == 0 {
            self.pending = Vec::new();
            self.pending_lost = false;
        }
    }

    /// Appends to history and trims it by count, age and the node-wide byte budget.
    pub(super) fn remember(&mut self, entry: Entry, policy: &Retention, now: Instant) {
        let size = policy.limit(self.limit).size;
        if size == 0 {
            self.floor = self.seq;
            return;
        }
        policy.used_bytes.fetch_add(entry.cost(), Ordering::Relaxed);
        policy.used_messages.fetch_add(1, Ordering::Relaxed);
        self.history.push_back(entry);
        self.settle(policy);
        while self.history.len() > size {
            self.forget_oldest(policy);
        }
        self.expire(policy, now);
        self.trim_to_budget(policy);
    }

    /// Over the node-wide budget, the channel that grew gives up first the ids it keeps
    /// only for deduplication (their messages left history), then its oldest entries. Older
    /// channels' entries go by age, so no channel starves for longer than one `ttl`; and
    /// publishing with fresh ids cannot grow a node past its budget.
    pub(super) fn trim_to_budget(&mut self, policy: &Retention) {
        if policy.used_bytes.load(Ordering::Relaxed) > policy.max_bytes && !self.ids.is_empty() {
            self.forget_ids_outside_history(policy);
        }
        while policy.used_bytes.load(Ordering::Relaxed) > policy.max_bytes
            && !self.history.is_empty()
        {
            self.forget_oldest(policy);
        }
    }

    /// Drops entries older than the ttl.
    pub(super) fn expire(&mut self, policy: &Retention, now: Instant) {
        let ttl = policy.limit(self.limit).ttl;
        while self
            .history
            .front()
            .is_some_and(|entry| now.duration_since(entry.published_at) >= ttl)
        {
            self.forget_oldest(policy);
        }
    }

    /// Forgets the ids whose message left history and whose `streams.dedupe_window` is over.
    pub(super) fn forget_ids(&mut self, policy: &Retention, now: Instant) {
        self.retain_ids(policy, |known, first_held| {
            known.seq >= first_held || now.duration_since(known.at) < policy.dedupe_window
        });
    }

    /// Forgets every id whose message left history, within its dedupe window or not: the
    /// node is over its history budget.
    fn forget_ids_outside_history(&mut self, policy: &Retention) {
        self.retain_ids(policy, |known, first_held| known.seq >= first_held);
    }

    /// Keeps the ids `keep` says to (given the seq of the oldest entry history holds).
    fn retain_ids(&mut self, policy: &Retention, keep: impl Fn(&KnownId, u64) -> bool) {
        let first_held = self.history.front().map_or(u64::MAX, |entry| entry.seq);
        let freed = self.ids.retain(|known| keep(known, first_held));
        policy.used_bytes.fetch_sub(freed, Ordering::Relaxed);
    }

    fn forget_oldest(&mut self, policy: &Retention) {
        if let Some(entry) = self.history.pop_front() {
            policy.used_bytes.fetch_sub(entry.cost(), Ordering::Relaxed);
            policy.used_messages.fetch_sub(1, Ordering::Relaxed);
            self.floor = self.floor.max(entry.last);
            self.changed -= u32::from(entry.last != entry.seq);
            if entry
                .message
                .as_ref()
                .is_some_and(|message| message.is_open())
            {
                self.open -= 1;
            }
            if self.history.is_empty() {
                self.settle(policy);
            }
        }
    }

    /// Gives back the budget of the whole history and of the ids kept, when the channel is
    /// dropped or its epoch changes.
    pub(super) fn forget_all(&mut self, policy: &Retention) {
        while !self.history.is_empty() {
            self.forget_oldest(policy);
        }
        let freed = self.ids.retain(|_| false);
        policy.used_bytes.fetch_sub(freed, Ordering::Relaxed);
        self.unheld = false;
    }

    /// Whether history still reflects every operation after `since`: `since` is of this
    /// epoch, not ahead of the channel, and no entry changed after it was dropped.
    pub(super) fn recoverable(&self, since: Offset) -> bool {
        since.epoch == self.epoch && since.seq <= self.seq && since.seq >= self.floor
    }

    /// The entries that changed after `since` (published, appended to, edited), in the order
    /// of their last operation, if history still holds every one of them. `None` means the
    /// gap cannot be filled: another epoch, an offset ahead of the channel, or entries
    /// already dropped. Changed entries give their state frame: call
    /// [`Channel::prepare_states`] first.
    pub(super) fn changes_after(&self, since: Offset) -> Option<Vec<&Entry>> {
        if !self.recoverable(since) {
            return None;
        }
        // Entries are in seq order: those published after `since` follow this point.
        let first_new = self.history.partition_point(|entry| entry.seq <= since.seq);
        let mut entries: Vec<&Entry> = Vec::with_capacity(self.history.len() - first_new);
        if self.changed > 0 {
            entries.extend(
                self.history
                    .range(..first_new)
                    .filter(|entry| entry.last > since.seq),
            );
        }
        entries.extend(self.history.range(first_new..));
        if self.changed > 0 {
            entries.sort_unstable_by_key(|entry| entry.last);
        }
        Some(entries)
    }

    /// Builds the state frame of every changed entry whose last operation is after
    /// `since_seq` (only the open streams' with `only_open`) and has none yet, for
    /// [`Entry::replay_frame`].
    pub(super) fn prepare_states(
        &mut self,
        channel: &ChannelName,
        since_seq: u64,
        only_open: bool,
        policy: &Retention,
    ) {
        if self.changed == 0 {
            return;
        }
        let epoch = self.epoch;
        let mut added = 0;
        for entry in &mut self.history {
            if entry.last > since_seq && entry.last != entry.seq {
                let (seq, last) = (entry.seq, entry.last);
                if let Some(message) = entry.message.as_deref_mut()
                    && (!only_open || message.is_open())
                {
                    added += message.build_state_frame(
                        channel,
                        epoch,
                        seq,
                        last,
                        &entry.frame,
                        entry.data_start,
                    );
                }
            }
        }
        policy.used_bytes.fetch_add(added, Ordering::Relaxed);
    }

    /// The index in history of the message with this id, if history holds it.
    pub(super) fn find(&self, message_id: &str) -> Option<usize> {
        let known = self.ids.get(message_id)?;
        let index = self.history.partition_point(|entry| entry.seq < known.seq);
        (self.history.get(index)?.seq == known.seq).then_some(index)
    }

    pub(super) fn is_idle(&self) -> bool {
        self.subscribed == 0
            && self.history.is_empty()
            && self.pins == 0
            && self.ids.is_empty()
            && !self.occupied
    }
}
