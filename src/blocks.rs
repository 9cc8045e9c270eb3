//! Blocked users (`POST /v1/block`): their connections are closed with 4003 on every node,
//! and their tokens (or the connect hook's word for them) are refused at connect, `auth` and
//! `refresh` until the block ends (`until`, Unix seconds) or is lifted. Each node holds the
//! whole list in memory, so a check costs a map lookup; clustered, the list lives in Redis
//! and reaches every node through the bus at once and a reload every few seconds (see
//! `cluster::redis::blocks`). Depends on nothing of the crate.

use std::sync::Arc;

use dashmap::DashMap;
use serde::Serialize;

/// Users one list holds at most: a runaway script cannot grow a node without bound.
pub const MAX_BLOCKS: usize = 1_000_000;

/// The latest `until`: the last second of the year 9999, as for tokens' `exp`.
pub const MAX_UNTIL: u64 = 253_402_300_799;

/// Now, in Unix seconds: the clock `until` is read against (the one tokens' `exp` is).
pub use crate::clock::unix_now;

/// One block, as `GET /v1/blocks` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Block {
    pub user: String,
    /// Unix seconds; `None`: until lifted.
    pub until: Option<u64>,
}

/// The blocked users a node knows of.
#[derive(Debug)]
pub struct Blocklist {
    users: DashMap<Arc<str>, Option<u64>>,
    /// Users held at most: [`MAX_BLOCKS`].
    cap: usize,
}

impl Default for Blocklist {
    fn default() -> Self {
        Self::with_cap(MAX_BLOCKS)
    }
}

/// Why a block was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("`user` must not be empty")]
    EmptyUser,
    #[error("`until` ({0}) is not in the future")]
    Past(u64),
    #[error("`until` ({0}) is past the year 9999")]
    TooFar(u64),
    #[error("the block list holds {MAX_BLOCKS} users; lift some first")]
    Full,
}

impl Blocklist {
    fn with_cap(cap: usize) -> Self {
        Self {
            users: DashMap::new(),
            cap,
        }
    }

    /// Checks a block before anything is written.
    ///
    /// # Errors
    /// Why the block cannot be taken.
    pub fn check(&self, user: &str, until: Option<u64>, now: u64) -> Result<(), BlockError> {
        if user.is_empty() {
            return Err(BlockError::EmptyUser);
        }
        match until {
            Some(until) if until <= now => return Err(BlockError::Past(until)),
            Some(until) if until > MAX_UNTIL => return Err(BlockError::TooFar(until)),
            _ => {}
        }
        if self.users.len() >= self.cap && !self.users.contains_key(user) {
            // Ended blocks are forgotten by a cluster's reload; on one node they stay until
            // here, so that a full list of blocks that have all ended does not refuse.
            self.prune(now);
            if self.users.len() >= self.cap {
                return Err(BlockError::Full);
            }
        }
        Ok(())
    }

    /// Blocks `user` until `until` (a later block replaces an earlier one).
    pub fn block(&self, user: &str, until: Option<u64>) {
        if self.users.len() < self.cap || self.users.contains_key(user) {
            self.users.insert(Arc::from(user), until);
        }
    }

    /// Lifts `user`'s block: whether there was one.
    pub fn unblock(&self, user: &str) -> bool {
        self.users.remove(user).is_some()
    }

    /// `Some(until)` while `user` is blocked at `now` (Unix seconds).
    #[must_use]
    pub fn blocked(&self, user: &str, now: u64) -> Option<Option<u64>> {
        let until = *self.users.get(user)?;
        until.is_none_or(|until| until > now).then_some(until)
    }

    /// The blocks in force at `now`, by user, after `cursor`, at most `limit`; and whether
    /// more follow.
    #[must_use]
    pub fn list(&self, now: u64, cursor: Option<&str>, limit: usize) -> (Vec<Block>, bool) {
        let mut after: Vec<(Arc<str>, Option<u64>)> = self
            .users
            .iter()
            .filter(|entry| entry.value().is_none_or(|until| until > now))
            .filter(|entry| cursor.is_none_or(|cursor| &**entry.key() > cursor))
            .map(|entry| (Arc::clone(entry.key()), *entry.value()))
            .collect();
        let more = after.len() > limit;
        if more {
            // The page's users, without sorting all the others: linear per page.
            after.select_nth_unstable_by(limit, |a, b| a.0.cmp(&b.0));
            after.truncate(limit);
        }
        after.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let blocks = after
            .into_iter()
            .map(|(user, until)| Block {
                user: user.to_string(),
                until,
            })
            .collect();
        (blocks, more)
    }

    /// Takes `blocks` as the whole list (a reload from the cluster's copy), dropping what
    /// ended by `now`: the users it blocks that were not blocked here (whose connections
    /// the caller closes: the bus entry that would have told this node was missed).
    pub fn replace_all(&self, blocks: impl IntoIterator<Item = Block>, now: u64) -> Vec<Arc<str>> {
        let fresh: std::collections::HashMap<Arc<str>, Option<u64>> = blocks
            .into_iter()
            .filter(|block| block.until.is_none_or(|until| until > now))
            .take(self.cap)
            .map(|block| (Arc::from(block.user), block.until))
            .collect();
        self.users.retain(|user, _| fresh.contains_key(user));
        let mut added = Vec::new();
        for (user, until) in fresh {
            if self.users.insert(Arc::clone(&user), until).is_none() {
                added.push(user);
            }
        }
        added
    }

    /// Forgets blocks that ended by `now`.
    fn prune(&self, now: u64) {
        self.users
            .retain(|_, until| until.is_none_or(|until| until > now));
    }
}

#[cfg(test)]
mod tests;
