//! The coalescer: `join` and `leave` frames of a channel closer together than
//! `presence.coalesce` leave as one frame each at the end of the interval.

use std::{collections::hash_map::Entry as MapEntry, sync::Arc};

use dashmap::mapref::entry::Entry;

use tokio::time::Instant;

use super::{Change, Member, Pending, Presence};
use crate::{
    protocol::{ChannelName, encode_presence_change, encode_presence_changes},
    telemetry,
};

impl Presence {
    /// Sends an event now when the channel was quiet, and starts an interval whose end
    /// sends what came meanwhile; within an interval, adds it to what its end sends.
    pub(super) fn event(
        self: &Arc<Self>,
        channel: &ChannelName,
        change: Change,
        member: Arc<Member>,
    ) {
        if self.coalesce.is_zero() {
            // Every event on its own: nothing to hold, nothing to remember.
            return self.send(
                channel,
                encode_presence_change(change.kind(), channel, &member),
            );
        }
        let mut state = match self.pending.entry(channel.clone()) {
            Entry::Vacant(vacant) => {
                drop(vacant.insert(Pending::default()));
                self.flush_at(channel, Instant::now() + self.coalesce);
                return self.send(
                    channel,
                    encode_presence_change(change.kind(), channel, &member),
                );
            }
            Entry::Occupied(state) => state,
        };
        // A member that came and goes (or went and comes back) within the interval: the
        // two cancel out.
        let Pending { changes, seen } = state.get_mut();
        match changes.entry((Arc::clone(&member.node), member.conn_id)) {
            MapEntry::Occupied(pending) if pending.get().1 != change => {
                pending.remove();
            }
            MapEntry::Occupied(_) => {}
            MapEntry::Vacant(vacant) => {
                vacant.insert((*seen, change, member));
                *seen += 1;
            }
        }
    }

    /// Flushes `channel` at `at`.
    fn flush_at(self: &Arc<Self>, channel: &ChannelName, at: Instant) {
        let presence = Arc::clone(self);
        let channel = channel.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            presence.flush(&channel);
        });
    }

    /// The end of a channel's interval: one `join` frame and one `leave` frame for what
    /// changed, each in the order it happened, whichever way the channel moved first going
    /// first.
    /// A channel that sent something starts another interval, whose end forgets it if
    /// nothing came.
    fn flush(self: &Arc<Self>, channel: &ChannelName) {
        let mut changes: Vec<(u64, Change, Arc<Member>)> = {
            let Entry::Occupied(mut state) = self.pending.entry(channel.clone()) else {
                return;
            };
            if state.get().changes.is_empty() {
                // Quiet for a whole interval: nothing to keep.
                state.remove();
                return;
            }
            let state = state.get_mut();
            state.seen = 0;
            std::mem::take(&mut state.changes).into_values().collect()
        };
        self.flush_at(channel, Instant::now() + self.coalesce);
        changes.sort_unstable_by_key(|(order, _, _)| *order);
        let first = changes[0].1;
        let (mut same, other): (Vec<_>, Vec<_>) = changes
            .into_iter()
            .partition(|(_, change, _)| *change == first);
        let mut frames = vec![(first, std::mem::take(&mut same))];
        if let Some((_, change, _)) = other.first() {
            frames.push((*change, other));
        }
        for (change, list) in frames {
            let members: Vec<&Member> = list.iter().map(|(_, _, member)| &**member).collect();
            let text = if let [only] = members.as_slice() {
                encode_presence_change(change.kind(), channel, only)
            } else {
                encode_presence_changes(change.kind(), channel, &members)
            };
            self.send(channel, text);
        }
    }

    pub(super) fn send(&self, channel: &ChannelName, text: String) {
        telemetry::presence_event_sent();
        if self.events.try_send((channel.clone(), text)).is_err() {
            telemetry::presence_event_dropped("queue_full");
        }
    }
}
