//! Who is subscribed to a channel (presence), and `join`/`leave` events as that changes.
//!
//! A channel's namespace opts in (`presence`, `join_leave`; see `auth::namespaces`). Its
//! subscribers are then *members*: a connection (`node`, `conn_id`), the token's user (empty
//! for an anonymous connection) and the token's `info`. [`Presence`] keeps this node's
//! members per channel, answers `presence` / `presence_stats` (client frames and the
//! control API) from them, and sends `join` / `leave` frames through the bus, so they reach
//! every node's subscribers in the channel's order.
//!
//! Events are coalesced per channel (`presence.coalesce`): the first event after a quiet
//! interval leaves at once, as one frame about one member; the events that follow within
//! the interval wait for its end and leave as one `join` and one `leave` frame listing
//! every member that came or went (a member that came and went within it is in neither).
//! A mass reconnect of N members of a room then costs each subscriber a few frames per
//! interval, where one frame per event would cost N each: N² deliveries in all.
//!
//! In a cluster a [`PresenceStore`] (Redis) holds every node's members: this node writes
//! its changes there in batches (every `SYNC_EVERY`), refreshes them once per third of
//! `presence.ttl` (a slice of the channels at a time, evenly over that period), and answers `presence` / `presence_stats` from it. A node that stops
//! refreshing (it died) loses its members after the TTL, or as soon as another node sees
//! it leave the registry; the node that removes them sends their `leave` events.
//!
//! Files: `events` (the coalescer), `members` (a channel's members here), `sync` (keeping
//! this node's members in the store, and the events that wait for its writes). The frames
//! and `Member` are `protocol`'s.

use std::{collections::HashMap, ops::Bound, sync::Arc, time::Duration};

use dashmap::DashMap;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::Namespaces,
    cluster::{Bus, BusError, PresenceStore, member_id, parse_member_id},
    hub::ConnId,
    protocol::ChannelName,
    shutdown::TaskGroup,
    telemetry,
};
use members::Members;

/// Events waiting to be sent, at most; past it an event is dropped and counted (the bus is
/// far behind, or something floods subscribes).
const MAX_QUEUED_EVENTS: usize = 65_536;
/// How often changes go to the store: a join is listed on every node this much later at
/// most (plus a Redis round trip), and a mass reconnect is a few writes per channel.
const SYNC_EVERY: Duration = Duration::from_millis(50);
/// After a write failed (the store is unreachable), the next waits this long.
const SYNC_RETRY: Duration = Duration::from_secs(1);

/// One subscriber of a channel whose namespace tracks members (defined with its frames).
pub use crate::protocol::Member;

/// A channel's member counts.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Stats {
    pub connections: usize,
    /// Distinct users; anonymous connections count as one user ("").
    pub users: usize,
}

/// One page of a channel's members.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    pub members: Vec<Arc<Member>>,
    /// Where the next page starts (`cursor`), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Why members could not be listed or counted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PresenceError {
    #[error("`cursor` is not a `next_cursor`")]
    BadCursor,
    #[error(transparent)]
    Unavailable(#[from] BusError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Join,
    Leave,
}

impl Change {
    /// Its frame's `type`.
    fn kind(self) -> &'static str {
        match self {
            Change::Join => "join",
            Change::Leave => "leave",
        }
    }
}

/// A member on any node: its node and connection.
type MemberKey = (Arc<str>, ConnId);

/// A channel's coalescing state: there is one while an interval runs (its end is
/// scheduled), and none while the channel is quiet.
#[derive(Debug, Default)]
struct Pending {
    /// Net changes since the last flush, by connection (events are about this node's own
    /// members), each with its place in the order they happened: a mass reconnect puts
    /// thousands here, so cancelling a pair must not search the list.
    changes: HashMap<MemberKey, (u64, Change, Arc<Member>)>,
    /// Changes seen this interval, for their order.
    seen: u64,
}

/// Presence on this node: members by channel, and the event coalescer.
#[derive(Debug)]
pub struct Presence {
    node: Arc<str>,
    members: DashMap<ChannelName, Members>,
    coalesce: Duration,
    pending: DashMap<ChannelName, Pending>,
    /// Event frames to send through the bus, in order, by one task.
    events: tokio::sync::mpsc::Sender<(ChannelName, String)>,
    max_listed: usize,
    /// Every node's members, in a cluster.
    store: Option<Arc<dyn PresenceStore>>,
    /// Channels with changes for the store, to the task that writes them.
    unsynced: tokio::sync::mpsc::UnboundedSender<ChannelName>,
    /// Whose members' departures (found in the store) are announced.
    namespaces: Namespaces,
    /// Members' lifetime in the store after this node's last refresh.
    ttl: Duration,
    /// With a store: when it last answered a write of this node's (for `rejoin_owed`).
    last_answer: std::sync::Mutex<Instant>,
    /// Told when a user is added to or removed from a channel across the cluster.
    watch: Option<MemberWatch>,
}

/// What [`Presence`] tells when a user's first connection in a channel joins (`true`) or
/// its last leaves (`false`), on every node together: once per change for the whole
/// cluster (with a store, by the node whose write made it), for `member_added` and
/// `member_removed` webhooks.
#[derive(Clone)]
pub struct MemberWatch(pub Arc<TellMember>);

/// Channel, user, and whether the user was added (else removed).
pub type TellMember = dyn Fn(&ChannelName, &str, bool) + Send + Sync;

impl std::fmt::Debug for MemberWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemberWatch")
    }
}

/// What [`Presence::start`] needs.
#[derive(Debug)]
pub struct PresenceSettings {
    pub node: Arc<str>,
    pub coalesce: Duration,
    pub max_listed: usize,
    /// Members' lifetime in the store after their node's last refresh.
    pub ttl: Duration,
    pub namespaces: Namespaces,
    /// Told of users added to and removed from channels (webhooks), if anyone listens.
    pub watch: Option<MemberWatch>,
}

impl PresenceSettings {
    /// From `[presence]` and `[[namespaces]]`; `node` is this node's id.
    #[must_use]
    pub fn from_config(config: &crate::config::Config, node: Arc<str>) -> Self {
        Self {
            node,
            coalesce: config.presence.coalesce,
            max_listed: config.presence.max_listed,
            ttl: config.presence.ttl,
            namespaces: Namespaces::new(&config.namespaces),
            watch: None,
        }
    }
}

impl Presence {
    /// Starts the task that sends event frames through `bus`, and with a `store` the one
    /// that keeps this node's members there, in `tasks` until `stop`.
    #[must_use]
    pub fn start(
        settings: PresenceSettings,
        bus: Arc<dyn Bus>,
        store: Option<Arc<dyn PresenceStore>>,
        tasks: &TaskGroup,
        stop: &CancellationToken,
    ) -> Arc<Self> {
        let (events, mut queued) =
            tokio::sync::mpsc::channel::<(ChannelName, String)>(MAX_QUEUED_EVENTS);
        tasks.spawn(async move {
            // One at a time, so a channel's events reach the bus in the order they were made.
            while let Some((channel, text)) = queued.recv().await {
                if let Err(err) = bus.announce(&channel, text).await {
                    telemetry::presence_event_dropped("bus");
                    tracing::debug!(%channel, error = %err, "Join/leave event not sent");
                }
            }
        });
        let (unsynced, to_sync) = tokio::sync::mpsc::unbounded_channel();
        let presence = Arc::new(Self {
            node: settings.node,
            members: DashMap::new(),
            coalesce: settings.coalesce,
            pending: DashMap::new(),
            events,
            max_listed: settings.max_listed,
            store,
            unsynced,
            namespaces: settings.namespaces,
            ttl: settings.ttl,
            last_answer: std::sync::Mutex::new(Instant::now()),
            watch: settings.watch,
        });
        if let Some(store) = presence.store.clone() {
            tasks.spawn(Arc::clone(&presence).keep_stored(
                store,
                to_sync,
                settings.ttl / 3,
                stop.clone(),
            ));
        }
        presence
    }

    /// This node's id, as members carry it.
    #[must_use]
    pub fn node(&self) -> &Arc<str> {
        &self.node
    }

    /// Members one `presence` frame lists at most.
    #[must_use]
    pub fn max_listed(&self) -> usize {
        self.max_listed
    }

    /// Records a subscriber as a member of `channel`; with `join_leave`, the channel's
    /// subscribers hear of it.
    pub fn joined(self: &Arc<Self>, channel: &ChannelName, member: Member, join_leave: bool) {
        let member = Arc::new(member);
        {
            let mut members = self.members.entry(channel.clone()).or_default();
            let Some(first) = members.conns.insert(Arc::clone(&member)) else {
                return;
            };
            self.unsynced(channel, &mut members, Change::Join, &member);
            if join_leave && self.store.is_some() {
                members.waiting().announce.push(Change::Join, member);
                return;
            }
            if first && self.store.is_none() {
                // Under the channel's lock, as in `remove`.
                self.tell(channel, &member.user, true);
            }
        }
        if join_leave {
            self.event(channel, Change::Join, member);
        }
    }

    /// Forgets connection `conn_id` as a member of `channel` (an unsubscribe, or the session
    /// ended); with `join_leave`, the channel's subscribers hear of it.
    pub fn left(self: &Arc<Self>, channel: &ChannelName, conn_id: ConnId, join_leave: bool) {
        let Some((member, _)) = self.remove(channel, conn_id, join_leave) else {
            return;
        };
        if join_leave && self.store.is_none() {
            self.event(channel, Change::Leave, member);
        }
    }

    /// Tells the watch, if any, that `user` was added to `channel` (or removed).
    fn tell(&self, channel: &ChannelName, user: &str, added: bool) {
        if let Some(MemberWatch(watch)) = &self.watch {
            watch(channel, user, added);
        }
    }

    /// A member's token was refreshed: its entry takes `member`'s `info` (same connection,
    /// same user). No `join` or `leave`: the member stayed. With a store, this node's members
    /// of the channel are written in full next time, since a write adds only members the
    /// store does not hold yet; that happens only when the `info` changed.
    pub fn refreshed(&self, channel: &ChannelName, member: Member) {
        let Some(mut members) = self.members.get_mut(channel) else {
            return;
        };
        let Some(held) = members.conns.get_mut(member.conn_id) else {
            return;
        };
        if held.info.as_deref().map(RawValue::get) == member.info.as_deref().map(RawValue::get) {
            return;
        }
        *held = Arc::new(member);
        if self.store.is_some() {
            self.rewrite(channel, &mut members);
        }
    }

    /// Forgets a member here; with a store and `announce`, its `leave` waits for the write.
    fn remove(
        &self,
        channel: &ChannelName,
        conn_id: ConnId,
        announce: bool,
    ) -> Option<(Arc<Member>, bool)> {
        let mut members = self.members.get_mut(channel)?;
        let (member, last) = members.conns.remove(conn_id)?;
        self.unsynced(channel, &mut members, Change::Leave, &member);
        if announce && self.store.is_some() {
            members
                .waiting()
                .announce
                .push(Change::Leave, Arc::clone(&member));
        }
        if last && self.store.is_none() {
            // Under the channel's lock, so that a user's removed and added (two sessions on
            // two threads) are told in the order they happened.
            self.tell(channel, &member.user, false);
        }
        let forgotten = members.forgotten();
        drop(members);
        if forgotten {
            self.members
                .remove_if(channel, |_, members| members.forgotten());
        }
        Some((member, last))
    }

    /// With a store: the next write puts this node's members of the channel in full.
    fn rewrite(&self, channel: &ChannelName, members: &mut Members) {
        members.generation += 1;
        members.full = true;
        members.stored = false;
        members.clear_unsynced();
        if !members.queued {
            members.queued = true;
            let _ = self.unsynced.send(channel.clone());
        }
    }

    /// With a store: notes a change for the next write, and queues the channel for it.
    fn unsynced(
        &self,
        channel: &ChannelName,
        members: &mut Members,
        change: Change,
        member: &Arc<Member>,
    ) {
        if self.store.is_none() {
            return;
        }
        members
            .waiting()
            .unsynced
            .insert(member.conn_id, (change, Arc::clone(member)));
        if !members.queued {
            members.queued = true;
            let _ = self.unsynced.send(channel.clone());
        }
    }

    /// Up to `limit` of the channel's members after `cursor` (a `next_cursor`): on every
    /// node with a store, else on this one.
    ///
    /// # Errors
    /// A `cursor` that is not a `next_cursor`; the store cannot be read.
    pub async fn page(
        &self,
        channel: &ChannelName,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, PresenceError> {
        let after = match cursor {
            None => None,
            Some(cursor) => Some(parse_member_id(cursor).ok_or(PresenceError::BadCursor)?),
        };
        let Some(store) = &self.store else {
            // One node: its own members, and a cursor names one of them.
            let after = after.map(|(_, conn_id)| conn_id);
            return Ok(self.local_page(channel, after, limit));
        };
        let page = store.page(channel, cursor, limit).await?;
        Ok(self.merge_own(channel, after, limit, page))
    }

    /// A page of the store with this node's members in it replaced by those it holds: the
    /// store lags them by a write (a connection lists itself once `subscribed` was sent).
    /// Ids sort by node, then connection; the store's page covers ids up to its cursor.
    fn merge_own(
        &self,
        channel: &ChannelName,
        after: Option<(&str, ConnId)>,
        limit: usize,
        page: crate::cluster::StoredPage,
    ) -> Page {
        let upto = page.next_cursor.as_deref().and_then(parse_member_id);
        let mut listed: Vec<Arc<Member>> = page
            .members
            .iter()
            .filter_map(|json| serde_json::from_str::<Member>(json).ok())
            .filter(|member| member.node != self.node)
            .map(Arc::new)
            .collect();
        // This node's members are one range of ids: those after `after` and up to the
        // store page's end, read from the connection map without walking the room.
        let own = &*self.node;
        let from = match after {
            Some((node, conn_id)) if node == own => Some(Bound::Excluded(conn_id)),
            Some((node, _)) if node > own => None,
            _ => Some(Bound::Unbounded),
        };
        let to = match upto {
            Some((node, conn_id)) if node == own => Some(Bound::Included(conn_id)),
            Some((node, _)) if node < own => None,
            _ => Some(Bound::Unbounded),
        };
        if let (Some(from), Some(to), Some(members)) = (from, to, self.members.get(channel)) {
            let empty = matches!((from, to), (Bound::Excluded(a), Bound::Included(b)) if a >= b);
            if !empty {
                listed.extend(members.conns.range(from, to, limit + 1));
            }
        }
        listed.sort_unstable_by(|a, b| (&*a.node, a.conn_id).cmp(&(&*b.node, b.conn_id)));
        let next_cursor = if listed.len() > limit {
            listed.truncate(limit);
            listed
                .last()
                .map(|member| member_id(&member.node, member.conn_id))
        } else {
            page.next_cursor
        };
        Page {
            members: listed,
            next_cursor,
        }
    }

    /// Up to `limit` of the channel's members on this node, from connection `after` on.
    #[must_use]
    pub fn local_page(&self, channel: &ChannelName, after: Option<ConnId>, limit: usize) -> Page {
        let Some(members) = self.members.get(channel) else {
            return Page {
                members: Vec::new(),
                next_cursor: None,
            };
        };
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut listed = members.conns.range(start, Bound::Unbounded, limit + 1);
        let next_cursor = (listed.len() > limit).then(|| {
            listed.truncate(limit);
            listed
                .last()
                .map(|member| member_id(&member.node, member.conn_id))
                .unwrap_or_default()
        });
        Page {
            members: listed,
            next_cursor,
        }
    }

    /// The channel's member counts, from counters: on every node with a store, else on
    /// this one.
    ///
    /// # Errors
    /// The store cannot be read.
    pub async fn stats(&self, channel: &ChannelName) -> Result<Stats, PresenceError> {
        let Some(store) = &self.store else {
            return Ok(self.local_stats(channel));
        };
        let stored = store.stats(channel).await?;
        // This node's connections as it holds them, not as the store has them yet.
        // Distinct users cannot be merged exactly without listing: the store's count, at
        // least this node's own, at most the connections.
        let own = self.local_stats(channel);
        let connections = stored.connections - stored.own.min(stored.connections) + own.connections;
        Ok(Stats {
            connections,
            users: stored.users.max(own.users).min(connections),
        })
    }

    /// The channel's member counts on this node.
    #[must_use]
    pub fn local_stats(&self, channel: &ChannelName) -> Stats {
        self.members
            .get(channel)
            .map(|members| Stats {
                connections: members.conns.len(),
                users: members.conns.users(),
            })
            .unwrap_or_default()
    }
}

mod events;
mod members;
mod sync;

#[cfg(test)]
mod tests;
