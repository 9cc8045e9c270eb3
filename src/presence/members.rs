//! A channel's members on this node ([`Members`]), kept small for the common case: a room
//! of ten spread over ten nodes has one member on each, so a node holds one channel here
//! per socket. Up to [`FEW`] members are a list sorted by connection, the first inline, and
//! their users are counted by a scan; more are a map by connection with a count per user.
//! What waits for the store is boxed, and only while something waits.

use std::{
    collections::{BTreeMap, HashMap, hash_map::Entry},
    ops::{Bound, RangeBounds},
    sync::Arc,
};

use smallvec::SmallVec;

use super::{Change, Member, sync::Owed};
use crate::hub::ConnId;

/// Members a channel lists without a map; one more turns the list into maps.
const FEW: usize = 16;
/// Members a map shrinks back to a list at (below [`FEW`], so a channel at the edge does
/// not switch on every change).
const FEW_AGAIN: usize = FEW / 4;

/// A channel's members on this node.
#[derive(Debug, Default)]
pub(super) struct Members {
    pub(super) conns: Conns,
    /// With a store: what waits for the next write; `None` when nothing does.
    waiting: Option<Box<Waiting>>,
    /// With a store: counts [`Presence::rewrite`](super::Presence)s, so that a write that
    /// was in flight while one happened does not mark the channel written in full.
    pub(super) generation: u64,
    /// With a store: write this node's members in full next time (a write failed, or the
    /// store lost them).
    pub(super) full: bool,
    /// With a store: it holds this node's members of the channel.
    pub(super) stored: bool,
    /// With a store: the channel waits in the queue of channels to write.
    pub(super) queued: bool,
    /// With a store: another node may have removed this node's members and sent their
    /// `leave` without this node seeing the tombstone that says so (its link was down for
    /// longer than the TTL, or a full write failed after finding it): the next full write
    /// that succeeds sends their `join`. A duplicate `join` is harmless, a missing one is not.
    pub(super) rejoin_owed: bool,
}

/// With a store: what the next write of a channel carries.
#[derive(Debug, Default)]
pub(super) struct Waiting {
    /// Changes the store has not been sent, by connection (joined, or left).
    pub(super) unsynced: HashMap<ConnId, (Change, Arc<Member>)>,
    /// With `join_leave`: events about this node's members that wait for the write
    /// carrying their change, so that whoever receives a `join` finds the member listed
    /// (and a `leave`, not).
    pub(super) announce: Owed,
}

impl Members {
    /// Nothing here, and nothing the store must still be told.
    pub(super) fn forgotten(&self) -> bool {
        self.conns.is_empty() && !self.queued && !self.stored
    }

    /// What waits for the next write, made when something first does.
    pub(super) fn waiting(&mut self) -> &mut Waiting {
        self.waiting.get_or_insert_with(Box::default)
    }

    /// Takes what waits, for a write.
    pub(super) fn take_waiting(&mut self) -> Waiting {
        self.waiting
            .take()
            .map(|waiting| *waiting)
            .unwrap_or_default()
    }

    /// Drops the changes waiting (a full write carries every member instead); the events
    /// waiting stay.
    pub(super) fn clear_unsynced(&mut self) {
        if let Some(waiting) = &mut self.waiting {
            if waiting.announce.is_empty() {
                self.waiting = None;
            } else {
                waiting.unsynced = HashMap::new();
            }
        }
    }
}

/// A channel's member connections here, in connection order, with their users.
#[derive(Debug)]
pub(super) enum Conns {
    /// At most [`FEW`], sorted by connection.
    Few(SmallVec<[Arc<Member>; 1]>),
    Many(Box<Many>),
}

/// More than [`FEW`] members.
#[derive(Debug, Default)]
pub(super) struct Many {
    by_conn: BTreeMap<ConnId, Arc<Member>>,
    /// Connections per user, for `presence_stats` without listing.
    users: HashMap<Arc<str>, u32>,
}

impl Default for Conns {
    fn default() -> Self {
        Self::Few(SmallVec::new())
    }
}

impl Conns {
    pub(super) fn len(&self) -> usize {
        match self {
            Self::Few(list) => list.len(),
            Self::Many(many) => many.by_conn.len(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Distinct users (anonymous connections are one user, "").
    pub(super) fn users(&self) -> usize {
        match self {
            Self::Few(list) => (0..list.len())
                .filter(|&i| !list[..i].iter().any(|m| m.user == list[i].user))
                .count(),
            Self::Many(many) => many.users.len(),
        }
    }

    pub(super) fn contains(&self, conn_id: ConnId) -> bool {
        match self {
            Self::Few(list) => find(list, conn_id).is_ok(),
            Self::Many(many) => many.by_conn.contains_key(&conn_id),
        }
    }

    pub(super) fn get_mut(&mut self, conn_id: ConnId) -> Option<&mut Arc<Member>> {
        match self {
            Self::Few(list) => {
                let at = find(list, conn_id).ok()?;
                Some(&mut list[at])
            }
            Self::Many(many) => many.by_conn.get_mut(&conn_id),
        }
    }

    /// Adds `member` unless its connection is here already (`None`); whether it is its
    /// user's first connection here.
    pub(super) fn insert(&mut self, member: Arc<Member>) -> Option<bool> {
        if let Self::Few(list) = self
            && list.len() == FEW
            && find(list, member.conn_id).is_err()
        {
            *self = Self::Many(Box::new(Many::from_list(list)));
        }
        match self {
            Self::Few(list) => {
                let at = find(list, member.conn_id).err()?;
                let first = !list.iter().any(|held| held.user == member.user);
                list.insert(at, member);
                Some(first)
            }
            Self::Many(many) => many.insert(member),
        }
    }

    /// Removes connection `conn_id`; with whether it was its user's last connection here.
    pub(super) fn remove(&mut self, conn_id: ConnId) -> Option<(Arc<Member>, bool)> {
        match self {
            Self::Few(list) => {
                let member = list.remove(find(list, conn_id).ok()?);
                let last = !list.iter().any(|held| held.user == member.user);
                if list.len() <= 1 {
                    // Back inline: a room down to one member holds no list.
                    list.shrink_to_fit();
                }
                Some((member, last))
            }
            Self::Many(many) => {
                let removed = many.remove(conn_id)?;
                if many.by_conn.len() <= FEW_AGAIN {
                    *self = Self::Few(many.by_conn.values().cloned().collect());
                }
                Some(removed)
            }
        }
    }

    /// Every member, in connection order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Arc<Member>> {
        let (few, many) = match self {
            Self::Few(list) => (Some(list.iter()), None),
            Self::Many(many) => (None, Some(many.by_conn.values())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    /// Up to `limit` members from `from` to `to` (connections), in connection order.
    pub(super) fn range(
        &self,
        from: Bound<ConnId>,
        to: Bound<ConnId>,
        limit: usize,
    ) -> Vec<Arc<Member>> {
        match self {
            Self::Few(list) => list
                .iter()
                .filter(|member| (from, to).contains(&member.conn_id))
                .take(limit)
                .cloned()
                .collect(),
            Self::Many(many) => many
                .by_conn
                .range((from, to))
                .take(limit)
                .map(|(_, member)| Arc::clone(member))
                .collect(),
        }
    }
}

/// Where connection `conn_id` is in `list` (sorted by connection), or would go.
fn find(list: &[Arc<Member>], conn_id: ConnId) -> Result<usize, usize> {
    list.binary_search_by_key(&conn_id, |member| member.conn_id)
}

impl Many {
    fn from_list(list: &[Arc<Member>]) -> Self {
        let mut many = Self::default();
        for member in list {
            many.insert(Arc::clone(member));
        }
        many
    }

    fn insert(&mut self, member: Arc<Member>) -> Option<bool> {
        let user = Arc::clone(&member.user);
        if let std::collections::btree_map::Entry::Vacant(vacant) =
            self.by_conn.entry(member.conn_id)
        {
            vacant.insert(member);
        } else {
            return None;
        }
        let count = self.users.entry(user).or_default();
        *count += 1;
        Some(*count == 1)
    }

    fn remove(&mut self, conn_id: ConnId) -> Option<(Arc<Member>, bool)> {
        let member = self.by_conn.remove(&conn_id)?;
        let mut last = false;
        if let Entry::Occupied(mut count) = self.users.entry(Arc::clone(&member.user)) {
            *count.get_mut() -= 1;
            if *count.get() == 0 {
                count.remove();
                last = true;
            }
        }
        Some((member, last))
    }
}

#[cfg(test)]
mod tests;
