//! A channel's subscribers on this node, sized for the common case of a channel with one.
//!
//! Most channels of a chat platform are a person's own (an inbox, a reply stream) with one or
//! two subscribers; a few are rooms or broadcasts with thousands. A general map costs a
//! channel with one subscriber about 270 bytes (`IndexMap`: 72 inline, a hash table and an
//! entry vector on the heap); here the first subscriber is held inline (no allocation), more
//! go to a vector, and only past [`INDEXED_FROM`] does a hash index from connection to
//! position make inserts and removals constant-time. Fan-out rounds walk the vector.

use std::collections::HashMap;

use smallvec::SmallVec;

use std::sync::Arc;

use super::{ConnId, Outbound};
use crate::protocol::Offset;

/// One subscriber of a channel.
#[derive(Debug)]
pub(super) struct Subscriber {
    pub(super) outbound: Arc<Outbound>,
    /// Messages of this epoch up to this sequence number reached the subscriber another way
    /// (its subscribe's reply position, its replay, a read from the bus): rounds skip them.
    pub(super) skip: Offset,
}

/// Subscribers at which lookups go through the index instead of a scan of the vector; the
/// index is dropped again below half of it, so a channel at the edge does not rebuild it on
/// every change.
const INDEXED_FROM: usize = 32;

/// The subscribers, in no particular order (a removal moves the last one into its place).
#[derive(Debug, Default)]
pub(super) struct Subscribers {
    list: SmallVec<[(ConnId, Subscriber); 1]>,
    /// Each subscriber's position in `list`, while there are at least [`INDEXED_FROM`].
    #[allow(
        clippy::box_collection,
        reason = "8 bytes per channel instead of a map's 48: nearly every channel has none"
    )]
    index: Option<Box<HashMap<ConnId, u32>>>,
}

impl Subscribers {
    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    /// Adds `subscriber` as `conn_id`, or replaces the one it had: returns that one.
    pub(super) fn insert(&mut self, conn_id: ConnId, subscriber: Subscriber) -> Option<Subscriber> {
        if let Some(at) = self.position(conn_id) {
            return Some(std::mem::replace(&mut self.list[at].1, subscriber));
        }
        self.list.push((conn_id, subscriber));
        match &mut self.index {
            Some(index) => {
                index.insert(conn_id, position(self.list.len() - 1));
            }
            None if self.list.len() >= INDEXED_FROM => self.build_index(),
            None => {}
        }
        None
    }

    /// Removes `conn_id`'s subscriber, moving the last one into its place.
    pub(super) fn swap_remove(&mut self, conn_id: ConnId) -> Option<Subscriber> {
        let at = self.position(conn_id)?;
        let (_, removed) = self.list.swap_remove(at);
        if let Some(index) = &mut self.index {
            index.remove(&conn_id);
            if let Some((moved, _)) = self.list.get(at) {
                index.insert(*moved, position(at));
            }
        }
        self.shrink();
        Some(removed)
    }

    /// Keeps the subscribers for which `keep` returns true, visiting each once.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&mut Subscriber) -> bool) {
        let before = self.list.len();
        self.list.retain(|(_, subscriber)| keep(subscriber));
        if self.list.len() != before {
            if self.index.is_some() {
                self.build_index();
            }
            self.shrink();
        }
    }

    /// Where `conn_id` is in `list`.
    fn position(&self, conn_id: ConnId) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(&conn_id).map(|&at| at as usize),
            None => self.list.iter().position(|(id, _)| *id == conn_id),
        }
    }

    /// Indexes every subscriber.
    fn build_index(&mut self) {
        let index = self.index.get_or_insert_with(Box::default);
        index.clear();
        index.extend(
            self.list
                .iter()
                .enumerate()
                .map(|(at, (conn_id, _))| (*conn_id, position(at))),
        );
    }

    /// After removals: drops the index below half of [`INDEXED_FROM`], and gives back the
    /// vector's memory once it is three quarters empty (a room that emptied does not keep
    /// its crowd's allocation; with one subscriber left, it moves back inline).
    fn shrink(&mut self) {
        let len = self.list.len();
        if self.index.is_some() && len < INDEXED_FROM / 2 {
            self.index = None;
        }
        if self.list.spilled() && (len <= 1 || len <= self.list.capacity() / 4) {
            self.list.shrink_to_fit();
            if let Some(index) = &mut self.index {
                index.shrink_to_fit();
            }
        }
    }
}

/// A position in the list as the index keeps it: a channel cannot have 2^32 subscribers
/// on one node (each is a connection).
fn position(at: usize) -> u32 {
    u32::try_from(at).expect("fewer than 2^32 subscribers on a node")
}

#[cfg(test)]
mod tests;
