//! Keeping this node's members in the cluster's [`PresenceStore`]: batched writes, the
//! periodic refresh, the events that wait for the write carrying their change, and the
//! `leave` of members the store found departed.

use std::{
    collections::{HashMap, hash_map::Entry},
    sync::Arc,
    time::Duration,
};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Change, Member, Presence, SYNC_EVERY, SYNC_RETRY};
use crate::{
    cluster::{Departure, PresenceStore, PresenceWrite, WriteOutcome},
    hub::ConnId,
    protocol::ChannelName,
    telemetry,
};

/// Events about this node's members that wait for a write: the net change per connection,
/// in the order they happened. A member that came and went before anyone was told is in
/// neither list, so a connection churning through a Redis outage holds one entry at most,
/// not one per event.
#[derive(Debug, Default)]
pub(super) struct Owed {
    pub(super) changes: HashMap<ConnId, (u64, Change, Arc<Member>)>,
    next: u64,
}

impl Owed {
    pub(super) fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub(super) fn push(&mut self, change: Change, member: Arc<Member>) {
        match self.changes.entry(member.conn_id) {
            Entry::Occupied(held) if held.get().1 != change => {
                held.remove();
            }
            Entry::Occupied(_) => {}
            Entry::Vacant(vacant) => {
                vacant.insert((self.next, change, member));
                self.next += 1;
            }
        }
    }

    /// Puts back `earlier` (taken for a write that failed) before what came since.
    pub(super) fn put_back(&mut self, earlier: Owed) {
        let later = std::mem::replace(self, earlier);
        for (change, member) in later.into_ordered() {
            self.push(change, member);
        }
    }

    pub(super) fn into_ordered(self) -> Vec<(Change, Arc<Member>)> {
        let mut changes: Vec<_> = self.changes.into_values().collect();
        changes.sort_unstable_by_key(|(order, _, _)| *order);
        changes
            .into_iter()
            .map(|(_, change, member)| (change, member))
            .collect()
    }
}

/// The refresh period is cut into this many slices at most, one every second at least: a
/// node refreshes a slice of its channels at a time, not all of them at once.
const MAX_REFRESH_SLICES: u32 = 64;

/// How many slices a refresh period of `refresh` is cut into: one a second at least, so
/// that picking a slice (a pass over the channels) stays cheap at a million channels.
fn refresh_slices(refresh: Duration) -> u32 {
    u32::try_from(refresh.as_secs())
        .unwrap_or(u32::MAX)
        .clamp(1, MAX_REFRESH_SLICES)
}

/// What one turn of the store loop refreshes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refresh {
    Nothing,
    /// Every channel (the store may have lost this node's members).
    All,
    /// The channels whose name hashes to this slice (of `slices`).
    Slice {
        slice: u32,
        slices: u32,
    },
}

impl Refresh {
    fn includes(self, channel: &ChannelName) -> bool {
        match self {
            Self::Nothing => false,
            Self::All => true,
            Self::Slice { slice, slices } => channel.stable_hash() % slices == slice,
        }
    }

    /// Whether this turn replaces the index of the node's channels: once per whole pass.
    fn replaces_index(self) -> bool {
        matches!(self, Self::All | Self::Slice { slice: 0, .. })
    }
}

impl Presence {
    /// With a store: writes the queued channels' changes every `SYNC_EVERY`, refreshes
    /// every channel with members every `refresh` (a slice of them at a time, evenly over
    /// the period: all at once, every node's refresh is a burst that holds Redis for
    /// seconds at a few hundred thousand channels and delays every other command), and
    /// announces members the store found departed. Until `stop`, then writes what the
    /// closed sessions left.
    pub(super) async fn keep_stored(
        self: Arc<Self>,
        store: Arc<dyn PresenceStore>,
        mut queue: tokio::sync::mpsc::UnboundedReceiver<ChannelName>,
        refresh: Duration,
        stop: CancellationToken,
    ) {
        let slices = refresh_slices(refresh);
        let slice_every = refresh / slices;
        let mut slice = 0;
        let mut next_slice = Instant::now() + slice_every;
        let mut losses = store.state_losses();
        let mut pause = SYNC_EVERY;
        loop {
            let stopping = tokio::select! {
                () = stop.cancelled() => true,
                () = tokio::time::sleep(pause) => false,
            };
            let mut channels = Vec::new();
            while let Ok(channel) = queue.try_recv() {
                channels.push(channel);
            }
            // After the store may have lost this node's members (it lost its data, or judged
            // the node departed), every channel at once: the sooner they are back the better.
            let lost = store.state_losses() != losses;
            if lost {
                losses = store.state_losses();
            }
            let now = Instant::now();
            let turn = if stopping {
                Refresh::Nothing
            } else if lost {
                Refresh::All
            } else if now >= next_slice {
                // Late by more than a slice (a stall): no catching up in a burst.
                next_slice = if now > next_slice + slice_every {
                    now + slice_every
                } else {
                    next_slice + slice_every
                };
                let due = Refresh::Slice { slice, slices };
                slice = (slice + 1) % slices;
                due
            } else {
                Refresh::Nothing
            };
            let mut index = Vec::new();
            if turn != Refresh::Nothing {
                for entry in &self.members {
                    if turn.includes(entry.key()) && !entry.queued && entry.stored {
                        channels.push(entry.key().clone());
                    }
                    if turn.replaces_index() && !entry.conns.is_empty() {
                        index.push(entry.key().clone());
                    }
                }
            }
            let failed = self.write_store(&*store, channels).await;
            if turn.replaces_index() {
                store.index(index, true).await;
            }
            if !stopping {
                for departed in store.departed().await {
                    self.departed(&departed.channel, &departed.members);
                }
            }
            for crossing in store.crossings() {
                self.tell(&crossing.channel, &crossing.user, crossing.added);
            }
            if stopping {
                break;
            }
            pause = if failed { SYNC_RETRY } else { SYNC_EVERY };
        }
    }

    /// Writes `channels`' changes (a channel without any, its refresh); says whether a write
    /// failed (those channels are queued again, to be written in full).
    async fn write_store(
        self: &Arc<Self>,
        store: &dyn PresenceStore,
        channels: Vec<ChannelName>,
    ) -> bool {
        let mut writes = Vec::with_capacity(channels.len());
        let mut listed_after = Vec::with_capacity(channels.len());
        let mut announced = Vec::with_capacity(channels.len());
        let mut taken = Vec::with_capacity(channels.len());
        for channel in channels {
            let Some(mut members) = self.members.get_mut(&channel) else {
                continue;
            };
            members.queued = false;
            let waiting = members.take_waiting();
            let changes = waiting.unsynced;
            announced.push(waiting.announce);
            let json = |member: &Member| serde_json::to_string(member).unwrap_or_default();
            let mut write = PresenceWrite {
                channel: channel.clone(),
                full: members.full,
                expect: members.stored,
                joins: Vec::new(),
                leaves: Vec::new(),
            };
            if write.full {
                write.joins = members
                    .conns
                    .iter()
                    .map(|member| (member.conn_id, Arc::clone(&member.user), json(member)))
                    .collect();
            } else {
                for (change, member) in changes.into_values() {
                    match change {
                        Change::Join => write.joins.push((
                            member.conn_id,
                            Arc::clone(&member.user),
                            json(&member),
                        )),
                        Change::Leave => write
                            .leaves
                            .push((member.conn_id, Arc::clone(&member.user))),
                    }
                }
            }
            listed_after.push(!members.conns.is_empty());
            taken.push((members.generation, write.full, write.expect));
            writes.push(write);
        }
        if writes.is_empty() {
            return false;
        }
        let channels: Vec<ChannelName> = writes.iter().map(|write| write.channel.clone()).collect();
        let outcomes = store.write(writes).await;
        // This node's link was down longer than the TTL: others may have removed its
        // members and the tombstone saying so expired, so every channel owes a `join`.
        let long_outage = {
            let mut last_answer = self
                .last_answer
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let answered = outcomes
                .iter()
                .any(|outcome| *outcome != WriteOutcome::Failed);
            let long = answered && last_answer.elapsed() > self.ttl;
            if answered {
                *last_answer = Instant::now();
            }
            long
        };
        let mut failed = false;
        let mut indexed = Vec::new();
        let written = channels
            .into_iter()
            .zip(listed_after)
            .zip(announced)
            .zip(taken);
        for ((((channel, listed), owed), (generation, full, expect)), outcome) in
            written.zip(outcomes)
        {
            let Some(mut members) = self.members.get_mut(&channel) else {
                // Every member left meanwhile and nothing else is owed: their events still go.
                for (change, member) in owed.into_ordered() {
                    self.event(&channel, change, member);
                }
                continue;
            };
            let mut announce = Vec::new();
            members.rejoin_owed |= long_outage && expect;
            match outcome {
                WriteOutcome::Done | WriteOutcome::Rejoined => {
                    if members.generation == generation {
                        // No rewrite meanwhile (it would have cleared changes this write
                        // did not carry, and must run in full).
                        members.full = false;
                        if listed && !members.stored {
                            indexed.push(channel.clone());
                        }
                        members.stored = listed;
                    }
                    announce = owed.into_ordered();
                    let rejoin = outcome == WriteOutcome::Rejoined || (full && members.rejoin_owed);
                    if full || !expect {
                        members.rejoin_owed = false;
                    }
                    if rejoin {
                        // Another node removed them (this node was paused or cut off) and
                        // sent their `leave`: they are back, so say so.
                        telemetry::presence_rewrite("rejoined");
                        if self.join_leave(&channel) {
                            announce.extend(
                                members
                                    .conns
                                    .iter()
                                    .map(|member| (Change::Join, Arc::clone(member))),
                            );
                        }
                    }
                }
                WriteOutcome::Lost | WriteOutcome::Failed | WriteOutcome::PartlyRejoined => {
                    // A part of a full write found the tombstone and a later part failed:
                    // the tombstone is gone, the `join` still owed.
                    members.rejoin_owed |= outcome == WriteOutcome::PartlyRejoined;
                    let unreachable = outcome != WriteOutcome::Lost;
                    failed |= unreachable;
                    telemetry::presence_rewrite(if unreachable { "unreachable" } else { "lost" });
                    self.rewrite(&channel, &mut members);
                    // Their events go out after the write that succeeds, before later ones.
                    if !owed.is_empty() {
                        members.waiting().announce.put_back(owed);
                    }
                }
            }
            let forgotten = members.forgotten();
            drop(members);
            for (change, member) in announce {
                self.event(&channel, change, member);
            }
            if forgotten {
                self.members
                    .remove_if(&channel, |_, members| members.forgotten());
            }
        }
        if !indexed.is_empty() {
            store.index(indexed, false).await;
        }
        failed
    }

    /// Whether the channel's namespace sends `join` and `leave`.
    fn join_leave(&self, channel: &ChannelName) -> bool {
        self.namespaces
            .membership(channel.as_str())
            .is_some_and(|membership| membership.join_leave)
    }

    /// Members the store removed (their node died, or this node id's process restarted and
    /// they are the old process's ghosts): `leave` events where the namespace has them.
    fn departed(self: &Arc<Self>, channel: &ChannelName, members: &[(Departure, String)]) {
        let join_leave = self.join_leave(channel);
        for (reason, json) in members {
            telemetry::presence_departed(reason.as_str(), 1);
            let Ok(member) = serde_json::from_str::<Member>(json) else {
                continue;
            };
            let live = member.node == self.node
                && self
                    .members
                    .get(channel)
                    .is_some_and(|members| members.conns.contains(member.conn_id));
            if live {
                // Not a ghost after all (connection ids do not repeat across restarts, so
                // only another process running under this id gets here): put it back.
                if let Some(mut members) = self.members.get_mut(channel) {
                    telemetry::presence_rewrite("lost");
                    self.rewrite(channel, &mut members);
                }
                continue;
            }
            if join_leave {
                self.event(channel, Change::Leave, Arc::new(member));
            }
        }
    }
}
