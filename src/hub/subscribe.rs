//! Subscribing: the reply, the replay from history (or from a remote bus's view merged with
//! what arrived meanwhile, under a pin) and then live messages, with no gap and no
//! duplicate; unsubscribing. History reads are `history`'s.

use std::sync::{Arc, atomic::Ordering};

use tokio::time::Instant;

use super::{
    ConnId, EnqueueError, FramedText, Hub, HubHandle, Outbound, channel::Channel, lock, read,
    subscribers::Subscriber, write,
};
use crate::{
    protocol::{ChannelName, Offset},
    telemetry,
};

/// What a subscribe did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    /// The channel's position when the subscription took effect.
    pub offset: Offset,
    /// With `since`: whether every message after it was replayed.
    pub recovered: Option<bool>,
    /// Messages replayed from history.
    pub replayed: usize,
    /// The channel was vacant on this node: this subscriber occupies it.
    pub first: bool,
}

/// What [`Hub::leave`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Left {
    /// The connection was subscribed.
    pub removed: bool,
    /// The channel is vacant on this node now (reported once per occupancy).
    pub vacated: bool,
}

/// A channel pinned by a subscribe waiting for the bus; see [`Hub::adopt_pin`].
#[derive(Debug)]
#[must_use = "dropping the guard gives the pin back at once"]
pub struct ChannelPin {
    hub: HubHandle,
    channel: ChannelName,
    held: bool,
}

impl ChannelPin {
    /// The subscribe given the bus's view gave the pin back itself (it always does).
    pub fn consumed(mut self) {
        self.held = false;
    }
}

impl Drop for ChannelPin {
    fn drop(&mut self) {
        if self.held {
            self.hub.unpin(&self.channel);
        }
    }
}

/// A channel's position and recent messages as read from a remote bus, for a subscribe to
/// merge with what this node delivered meanwhile.
#[derive(Debug, Clone)]
pub struct RemoteView {
    pub epoch: u64,
    /// The last sequence number the bus had assigned when read.
    pub seq: u64,
    /// What a resume from the subscribe's `since` replays: `(last, frame)`, each message
    /// published after it or changed after it once, as it stands (a `message` frame, or a
    /// message with an id that changed since its publish as its state frame), in the order
    /// of its last operation.
    pub entries: Vec<(u64, String)>,
    /// Without `since`: the open streams as they stand, `(last, frame)`, for a subscribe
    /// to send whole so that the appends that follow apply.
    pub open: Vec<(u64, String)>,
    /// Whether `since` is an offset of `epoch` (as the bus reckons it) and `entries` hold
    /// every message after it up to `seq` (none trimmed, expired or from another epoch).
    pub complete: bool,
    /// The bus holds no state for the channel (it never had a message, or its state is
    /// gone): `epoch` names no instance, `seq` is 0, and a first message delivered meanwhile
    /// belongs to an instance created after the read.
    pub absent: bool,
}

/// Why a subscribe failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The connection's queue overflowed during the replay; it is closing as a slow consumer.
    #[error("outbound queue overflowed")]
    SlowConsumer,
    /// The connection is closing.
    #[error("connection is closing")]
    Closing,
    /// The hub cannot answer alone: read the channel from the bus ([`RemoteView`]) and call
    /// `subscribe` again with it. The channel is pinned until then: hold the pin with
    /// [`Hub::adopt_pin`] meanwhile.
    #[error("the channel must be read from the bus first")]
    NeedRemote,
}

impl From<EnqueueError> for SubscribeError {
    fn from(err: EnqueueError) -> Self {
        match err {
            EnqueueError::SlowConsumer => SubscribeError::SlowConsumer,
            EnqueueError::Closing => SubscribeError::Closing,
        }
    }
}

impl Hub {
    /// Subscribes a connection. The `subscribed` reply (built by `reply` from the outcome),
    /// any replayed history and then live messages reach the queue in that order, with no gap
    /// and no duplicate, however many publishers are busy.
    ///
    /// With a remote bus the hub may not know the channel's position, or may not hold the
    /// messages after `since`: it then answers [`SubscribeError::NeedRemote`], and the caller
    /// reads a [`RemoteView`] from the bus and calls again with it. Deliveries that arrive
    /// meanwhile are kept (the channel is pinned) and merged, so the seam has no gap either.
    ///
    /// # Errors
    /// [`SubscribeError`] when the connection could not take the reply or the replay, or the
    /// bus must be read first.
    pub fn subscribe(
        &self,
        outbound: &Arc<Outbound>,
        channel: &ChannelName,
        since: Option<Offset>,
        view: Option<&RemoteView>,
        reply: impl Fn(&Subscribed) -> FramedText,
    ) -> Result<Subscribed, SubscribeError> {
        let shard = self.shard(channel);
        let outcome = self.with_subscribers(channel, |subscribers, state| {
            state.expire(&self.retention, Instant::now());
            Self::seal_held(state);
            let (outcome, skip_until) = match view {
                None => {
                    let local = since.map(|since| state.recoverable(since));
                    let unheld = state.unheld && since.is_none();
                    if self.settings.remote && (!state.synced || local == Some(false) || unheld) {
                        state.pins += 1;
                        return Err(SubscribeError::NeedRemote);
                    }
                    (
                        self.replay_local(outbound, channel, state, since, &reply)?,
                        0,
                    )
                }
                Some(view) => {
                    let merged = self.replay_merged(outbound, state, since, view, &reply);
                    state.unpin();
                    merged?
                }
            };
            // What the outbox holds up to the position the reply gave is covered by the reply
            // and the replay; rounds skip it for this subscriber.
            let skip = Offset {
                epoch: state.epoch,
                seq: skip_until.max(outcome.offset.seq),
            };
            let subscriber = Subscriber {
                outbound: Arc::clone(outbound),
                skip,
            };
            let mut outcome = outcome;
            if subscribers.insert(outbound.conn_id(), subscriber).is_none() {
                outcome.first = !state.occupied;
                state.occupied = true;
                state.subscribed += 1;
                shard.subscriptions.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, SubscribeError>(outcome)
        })?;
        let metrics = telemetry::metrics();
        match outcome.recovered {
            Some(true) => metrics.resumes_recovered.increment(1),
            Some(false) => metrics.resumes_not_recovered.increment(1),
            None => {}
        }
        Ok(outcome)
    }

    /// Enqueues the reply and the replay from this node's own history: with `since`, the
    /// messages changed after it; without, the state of each open stream, so that the
    /// appends that follow apply to its whole text.
    pub(super) fn replay_local(
        &self,
        outbound: &Outbound,
        channel: &ChannelName,
        state: &mut Channel,
        since: Option<Offset>,
        reply: &impl Fn(&Subscribed) -> FramedText,
    ) -> Result<Subscribed, SubscribeError> {
        let recovered = since.map(|since| state.recoverable(since));
        match since {
            Some(since) if state.recoverable(since) => {
                state.prepare_states(channel, since.seq, false, &self.retention);
            }
            // Without `since`, or from a position history no longer covers: live from now,
            // and every open stream whole, so that the appends that follow apply to its
            // text (the client's copy of it may be stale or missing).
            _ if state.open > 0 => state.prepare_states(channel, 0, true, &self.retention),
            _ => {}
        }
        let replay = match since {
            Some(since) if recovered == Some(true) => state.changes_after(since),
            _ => None,
        };
        let mut outcome = Subscribed {
            offset: state.offset(),
            recovered,
            replayed: replay.as_ref().map_or(0, Vec::len),
            first: false,
        };
        outbound.try_enqueue(&reply(&outcome))?;
        if let Some(entries) = replay {
            for entry in entries {
                outbound.try_enqueue(entry.replay_frame())?;
            }
        } else if state.open > 0 {
            let open = state.history.iter().filter(|entry| {
                entry
                    .message
                    .as_ref()
                    .is_some_and(|message| message.is_open())
            });
            for entry in open {
                outbound.try_enqueue(entry.replay_frame())?;
                outcome.replayed += 1;
            }
        }
        Ok(outcome)
    }

    /// Enqueues the reply and the replay from a bus read plus the deliveries that arrived
    /// while it was read. Returns the outcome and the subscriber's `skip_until`.
    pub(super) fn replay_merged(
        &self,
        outbound: &Outbound,
        state: &mut Channel,
        since: Option<Offset>,
        view: &RemoteView,
        reply: &impl Fn(&Subscribed) -> FramedText,
    ) -> Result<(Subscribed, u64), SubscribeError> {
        let adopted;
        let view = if view.absent
            && state.synced
            && state.epoch != view.epoch
            && state.pending.first().is_some_and(|(seq, _)| *seq == 1)
        {
            // The bus had no state when read and the channel's first messages arrived since
            // the pin (all kept in `pending`): the read stands for the start of their epoch.
            adopted = RemoteView {
                epoch: state.epoch,
                seq: 0,
                entries: Vec::new(),
                open: Vec::new(),
                complete: view.complete,
                absent: false,
            };
            &adopted
        } else {
            view
        };
        let mut consistent = !state.pending_lost;
        if !state.synced {
            // Nothing delivered here yet: start from the bus's position.
            state.epoch = view.epoch;
            state.seq = view.seq;
            state.floor = view.seq;
            state.synced = true;
        } else if state.epoch != view.epoch {
            if state.pending.is_empty() {
                // The bus lost the channel's state (Redis restarted empty): follow the new
                // epoch from its start for the subscribers already here.
                self.forget_epoch(state, view.epoch);
            } else {
                // The epoch changed between the read and now: nothing can be proven.
                consistent = false;
            }
        }
        let same_epoch = consistent && state.epoch == view.epoch;
        let position = if same_epoch {
            state.seq.max(view.seq)
        } else {
            state.seq
        };
        // `complete` says `since` is of the view's epoch: the bus may take an offset given
        // for a channel without state as the start of the channel's first epoch.
        let recovered = since.map(|_| same_epoch && view.complete);
        let mut outcome = Subscribed {
            offset: Offset {
                epoch: state.epoch,
                seq: position,
            },
            recovered,
            replayed: 0,
            first: false,
        };
        if recovered == Some(true) {
            // A resume: what changed after `since`, then what arrived since the read.
            let since_seq = since.map_or(0, |since| since.seq);
            let frames = Self::merged_frames(&view.entries, since_seq, view.seq, state);
            outcome.replayed = frames.len();
            outbound.try_enqueue(&reply(&outcome))?;
            for frame in &frames {
                outbound.try_enqueue(frame)?;
            }
            return Ok((outcome, view.seq));
        }
        if !same_epoch {
            // Live messages only.
            outbound.try_enqueue(&reply(&outcome))?;
            return Ok((outcome, 0));
        }
        // Without `since`, or from one the bus could not recover: from the read's position,
        // the open streams whole as they stood then (so that the appends that follow apply
        // to their text), then whatever arrived since the read, each after the reply's
        // offset, so a client applies every change. The outbox up to the channel's position
        // is covered by these.
        // Whether open streams this node does not hold exist: later subscribes read them.
        state.unheld = !view.open.is_empty();
        outcome.offset.seq = view.seq;
        let frames = Self::merged_frames(&view.open, 0, view.seq, state);
        outcome.replayed = frames.len();
        outbound.try_enqueue(&reply(&outcome))?;
        for frame in &frames {
            outbound.try_enqueue(frame)?;
        }
        Ok((outcome, position))
    }

    /// The frames of `from_bus` whose last change is in `(since_seq, upto]`, then the
    /// deliveries kept since the read (after `upto`), in order.
    fn merged_frames(
        from_bus: &[(u64, String)],
        since_seq: u64,
        upto: u64,
        state: &Channel,
    ) -> Vec<FramedText> {
        from_bus
            .iter()
            .filter(|(last, _)| *last > since_seq && *last <= upto)
            .map(|(_, frame)| FramedText::from(frame.clone()))
            .chain(
                state
                    .pending
                    .iter()
                    .filter(|(seq, _)| *seq > upto)
                    .map(|(_, frame)| frame.clone()),
            )
            .collect()
    }

    /// Switches a channel to a new epoch: its history and skip marks belong to the old one.
    pub(super) fn forget_epoch(&self, state: &mut Channel, epoch: u64) {
        state.reset_owed |= state.seq > 0;
        state.forget_all(&self.retention);
        state.epoch = epoch;
        state.seq = 0;
        state.floor = 0;
        // Subscribers' skips name the old epoch, so they no longer apply.
    }

    /// Gives up a pin taken by a subscribe that answered [`SubscribeError::NeedRemote`] and
    /// could not read the bus. Prefer [`Hub::adopt_pin`], which cannot forget it.
    pub fn unpin(&self, channel: &ChannelName) {
        let idle = self.with_existing_channel(channel, |state| {
            state.unpin();
            state.is_idle()
        });
        if idle == Some(true) {
            self.drop_if_idle(channel);
        }
    }

    /// Takes ownership of the pin a subscribe took when it answered
    /// [`SubscribeError::NeedRemote`]: the pin is given back when the guard is dropped,
    /// however the caller's read of the bus ends (an error, or its future dropped mid-read
    /// because the session closed), unless [`ChannelPin::consumed`] says the subscribe with
    /// the bus's view gave it back.
    pub fn adopt_pin(self: &Arc<Self>, channel: &ChannelName) -> ChannelPin {
        ChannelPin {
            hub: Arc::clone(self),
            channel: channel.clone(),
            held: true,
        }
    }

    /// The hub's own copy of a channel name when the channel exists: holding it instead of
    /// a freshly parsed name shares one allocation among every subscriber.
    #[must_use]
    pub fn intern(&self, channel: &ChannelName) -> ChannelName {
        read(&self.shard(channel).channels)
            .get_key_value(channel)
            .map_or_else(|| channel.clone(), |(name, _)| name.clone())
    }

    /// Removes one subscription; `false` when it did not exist.
    pub fn unsubscribe(&self, conn_id: ConnId, channel: &ChannelName) -> bool {
        self.leave(conn_id, channel).removed
    }

    /// [`Hub::unsubscribe`], saying whether the connection was subscribed and whether the
    /// channel is vacant on this node now. Vacant is reported once per occupancy: also when
    /// a fan-out had dropped the connection (a slow consumer) before it left, and then to
    /// the first leave that finds no subscriber.
    pub fn leave(&self, conn_id: ConnId, channel: &ChannelName) -> Left {
        let shard = self.shard(channel);
        let Some(slot) = read(&shard.channels).get(channel).cloned() else {
            return Left::default();
        };
        let (left, idle) = {
            let mut subscribers = lock(&slot.subscribers);
            let mut state = lock(&slot.state);
            let removed = !state.removed && subscribers.swap_remove(conn_id).is_some();
            if removed {
                state.subscribed -= 1;
            }
            let vacated = state.subscribed == 0 && state.occupied;
            if vacated {
                state.occupied = false;
            }
            (Left { removed, vacated }, state.is_idle())
        };
        if left.removed {
            shard.subscriptions.fetch_sub(1, Ordering::Relaxed);
        }
        if idle {
            self.drop_if_idle(channel);
        }
        left
    }

    /// Drops a channel that holds nothing (no subscribers, no history, no pins) at once
    /// rather than at the next sweep: a client cycling through channel names leaves nothing.
    /// Takes the shard lock, then the channel's (the lock order), and checks again under both.
    pub(super) fn drop_if_idle(&self, name: &ChannelName) {
        let shard = self.shard(name);
        let mut channels = write(&shard.channels);
        let Some(slot) = channels.get(name) else {
            return;
        };
        let mut channel = lock(&slot.state);
        if !channel.is_idle() {
            return;
        }
        channel.forget_all(&self.retention);
        channel.removed = true;
        drop(channel);
        channels.remove(name);
        self.channels_dropped.fetch_add(1, Ordering::AcqRel);
    }

    /// The first page of a resume from `since` too large to replay at once: the oldest
    /// messages after it whose frames fit `budget` bytes (at least one), as the frames history
    /// holds (shared, not encoded again), with their offsets. `None` when there is nothing to
    /// page: the channel is not held here with a known position (the bus is asked instead),
    /// `since` is not recoverable (the subscribe says so), or the rest fits `budget`.
    #[must_use]
    pub fn replay_page(
        &self,
        channel: &ChannelName,
        since: Offset,
        budget: usize,
    ) -> Option<Vec<(Offset, FramedText)>> {
        self.with_existing_channel(channel, |state| {
            if !state.synced {
                return None;
            }
            state.expire(&self.retention, Instant::now());
            if state.recoverable(since) {
                state.prepare_states(channel, since.seq, false, &self.retention);
            }
            let entries = state.changes_after(since)?;
            if entries
                .iter()
                .map(|entry| entry.replay_frame().len())
                .sum::<usize>()
                <= budget
            {
                return None;
            }
            let mut used = 0;
            let page = entries
                .into_iter()
                .take_while(|entry| {
                    let first = used == 0;
                    used += entry.replay_frame().len();
                    first || used <= budget
                })
                .map(|entry| {
                    let offset = Offset {
                        epoch: state.epoch,
                        seq: entry.last,
                    };
                    (offset, entry.replay_frame().clone())
                })
                .collect();
            Some(page)
        })
        .flatten()
    }
}
