//! One channel's ordered state: its position, its history ring and the outbox of messages
//! not yet fanned out.
//!
//! All of it sits behind one mutex so that assigning an offset, appending to history and
//! to the outbox happen as one step. That step is what makes per-channel order hold under
//! concurrent publishers; fan-out rounds (`fanout`) take the outbox in that order, and a
//! `since` subscribe, holding this lock, replays history and joins the live stream at a
//! position rounds respect, with no gap and no duplicate.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use super::{
    FramedText,
    fanout::{Queued, Slot},
};
use crate::protocol::Offset;

/// What the allocator adds to each allocation (glibc: a 16-byte header and rounding).
const MALLOC_OVERHEAD: usize = 16;

/// Bytes counted per history entry on top of its frame: the frame's buffer has room for the
/// longest header (10 bytes) and is an allocation of its own. The `Entry` itself lives in the
/// channel's ring and is counted with it.
const ENTRY_OVERHEAD: usize = 10 + MALLOC_OVERHEAD;

/// What a channel that holds history costs beyond its entries and its ring, counted against
/// `history.max_memory_bytes` with them (its name's length comes on top):
/// the channel's `Arc<Slot>` (two counts), its name's `Arc<str>` (two counts),
/// its slot in the shard's map (key, value and a control byte, at the map's 7/8 load), and
/// the allocator's share of those two allocations. `docs/security.md` has the measured total.
pub(super) const CHANNEL_OVERHEAD: usize = std::mem::size_of::<Slot>()
    + 16
    + 16
    + (std::mem::size_of::<(crate::protocol::ChannelName, Arc<Slot>)>() + 1) * 8 / 7
    + 2 * MALLOC_OVERHEAD;

/// A published message kept for resume.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) seq: u64,
    pub(super) published_at: Instant,
    /// The whole `message` frame, shared with the subscribers' queues.
    pub(super) frame: FramedText,
    /// Where `data` starts inside `frame` (it runs to the frame's closing brace).
    pub(super) data_start: u32,
}

impl Entry {
    fn cost(&self) -> usize {
        self.frame.len() + ENTRY_OVERHEAD
    }
}

/// How much history channels keep (`history.size`, `ttl`, `max_memory_bytes`) and what the
/// node holds now against the byte budget they share.
#[derive(Debug)]
pub(super) struct Retention {
    pub(super) size: usize,
    pub(super) ttl: Duration,
    pub(super) max_bytes: usize,
    pub(super) used_bytes: AtomicUsize,
    pub(super) used_messages: AtomicUsize,
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
    pub(super) pins: usize,
    /// Deliveries since the first pin, for pinned subscribes to merge with what they read.
    pub(super) pending: Vec<Entry>,
    /// `pending` overflowed `MAX_PENDING`: pinned subscribes cannot prove continuity.
    pub(super) pending_lost: bool,
    /// The channel moved to a new epoch after subscribers here had followed the old one:
    /// they are sent a `reset` before the new epoch's first message (see
    /// [`Hub::deliver_locked`](super::Hub)).
    pub(super) reset_owed: bool,
    /// Length of the channel's name, for what it costs.
    name_len: u32,
    /// Bytes this channel (not its entries) counts against the node's history budget now:
    /// 0 while it holds no history.
    charged: usize,
}

impl Channel {
    pub(super) fn new(synced: bool, name_len: usize) -> Self {
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
            name_len: u32::try_from(name_len).unwrap_or(u32::MAX),
            charged: 0,
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
            CHANNEL_OVERHEAD
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
    pub(super) fn remember_pending(&mut self, entry: &Entry) {
        if self.pins == 0 {
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            self.pending.clear();
            self.pending_lost = true;
        } else {
            self.pending.push(entry.clone());
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
        if policy.size == 0 {
            return;
        }
        policy.used_bytes.fetch_add(entry.cost(), Ordering::Relaxed);
        policy.used_messages.fetch_add(1, Ordering::Relaxed);
        self.history.push_back(entry);
        self.settle(policy);
        while self.history.len() > policy.size {
            self.forget_oldest(policy);
        }
        self.expire(policy, now);
        // Over the node-wide budget, the publishing channel gives up its oldest entries. Older
        // channels' entries go by age, so no channel starves for longer than one `ttl`.
        while policy.used_bytes.load(Ordering::Relaxed) > policy.max_bytes
            && !self.history.is_empty()
        {
            self.forget_oldest(policy);
        }
    }

    /// Drops entries older than the ttl.
    pub(super) fn expire(&mut self, policy: &Retention, now: Instant) {
        while self
            .history
            .front()
            .is_some_and(|entry| now.duration_since(entry.published_at) >= policy.ttl)
        {
            self.forget_oldest(policy);
        }
    }

    fn forget_oldest(&mut self, policy: &Retention) {
        if let Some(entry) = self.history.pop_front() {
            policy.used_bytes.fetch_sub(entry.cost(), Ordering::Relaxed);
            policy.used_messages.fetch_sub(1, Ordering::Relaxed);
            if self.history.is_empty() {
                self.settle(policy);
            }
        }
    }

    /// Gives back the budget of the whole history when the channel is dropped.
    pub(super) fn forget_all(&mut self, policy: &Retention) {
        while !self.history.is_empty() {
            self.forget_oldest(policy);
        }
    }

    /// The entries after `since`, if history still holds every one of them.
    ///
    /// `None` means the gap cannot be filled: another epoch, an offset ahead of the channel, or
    /// entries already trimmed.
    pub(super) fn entries_after(
        &self,
        since: Offset,
    ) -> Option<std::collections::vec_deque::Iter<'_, Entry>> {
        let first_kept = self.history.front().map(|entry| entry.seq);
        if !since.recoverable_from(self.offset(), first_kept) {
            return None;
        }
        // Entries hold consecutive seqs ending at self.seq.
        let skip = usize::try_from(since.seq + 1 - first_kept.unwrap_or(self.seq + 1)).ok()?;
        Some(self.history.range(skip..))
    }

    pub(super) fn is_idle(&self) -> bool {
        self.subscribed == 0 && self.history.is_empty() && self.pins == 0
    }
}
