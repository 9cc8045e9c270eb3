//! Revoked tokens (`POST /v1/revoke`): a token's `jti` until a time, or a user's tokens
//! issued before a time (its `iat`). Matching tokens are refused at connect, `auth` and
//! `refresh`, and live connections holding one are closed with 4003. Each node holds the
//! whole list in memory, so a check costs a map lookup or two; clustered, the list lives in
//! Redis and each change reaches every node through a change log (see
//! `cluster::redis::revocations`).
//!
//! Changes only ever add or lengthen: a later `until` or a later `issued_before` wins, so
//! nodes that apply the same changes in any order, or twice, hold the same list. Entries end
//! by themselves at `until`; there is no un-revoking.
//!
//! Revoked `jti`s and users are held as a 64-bit SipHash under a key drawn at start, not as
//! text: a million revoked `jti`s cost a node 36 MB, against 131 MB as text (`cargo bench
//! --bench revocations`). The price is that an unrevoked token may collide with a revoked
//! one: with a million revoked, about one check in 2^44, a different one on every node and
//! at every start, and nobody can aim for it without the node's key. Depends on
//! nothing of the crate.

use std::hash::{BuildHasher, RandomState};

use dashmap::DashMap;

/// Entries of each kind one list holds at most: a runaway script cannot grow a node
/// without bound.
pub const MAX_REVOCATIONS: usize = 1_000_000;

/// The latest `until`: the last second of the year 9999, as for tokens' `exp`.
pub const MAX_UNTIL: u64 = 253_402_300_799;

/// How far ahead of now `issued_before` may lie: clocks of the caller and the node differ.
pub const ISSUED_BEFORE_SKEW: u64 = 300;

/// The longest `jti` taken: identifiers are UUIDs or similar, not documents.
pub const MAX_JTI_BYTES: usize = 256;

/// One change to the list, as `POST /v1/revoke` takes it and the change log carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// The token with this `jti`, until `until` (Unix seconds).
    Token { jti: String, until: u64 },
    /// `user`'s tokens issued before `issued_before` (their `iat`, or with none), until
    /// `until` (Unix seconds).
    User {
        user: String,
        issued_before: u64,
        until: u64,
    },
}

impl Revocation {
    /// When it stops mattering.
    #[must_use]
    pub fn until(&self) -> u64 {
        match self {
            Revocation::Token { until, .. } | Revocation::User { until, .. } => *until,
        }
    }
}

/// Why a revocation was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevokeError {
    #[error("`jti` must not be empty")]
    EmptyJti,
    #[error("`jti` is longer than {MAX_JTI_BYTES} bytes")]
    LongJti,
    #[error("`user` must not be empty")]
    EmptyUser,
    #[error("`until` ({0}) is not in the future")]
    Past(u64),
    #[error("`until` ({0}) is past the year 9999")]
    TooFar(u64),
    #[error(
        "`issued_before` ({0}) is more than {ISSUED_BEFORE_SKEW} s ahead of this node's clock: \
         to refuse a user's future tokens, block the user (POST /v1/block)"
    )]
    Ahead(u64),
    #[error("the revocation list holds {MAX_REVOCATIONS} {0}; wait for some to end")]
    Full(&'static str),
}

/// Why a token is refused: what the `unauthorized` error says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// Its `jti` is revoked.
    Token,
    /// Its user's tokens issued before `issued_before` are.
    IssuedBefore(u64),
}

/// How long a user's revocation holds, and from when on tokens are taken again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UserEntry {
    issued_before: u64,
    until: u64,
}

/// The revocations a node knows of.
#[derive(Debug)]
pub struct Revocations {
    /// A keyed hash of each revoked `jti` → `until`.
    tokens: DashMap<u64, u64>,
    /// A keyed hash of each revoked user → its entry.
    users: DashMap<u64, UserEntry>,
    /// The key of `tokens`' hashes, drawn at start.
    hasher: RandomState,
    /// Entries of each kind held at most: [`MAX_REVOCATIONS`].
    cap: usize,
}

impl Default for Revocations {
    fn default() -> Self {
        Self::with_cap(MAX_REVOCATIONS)
    }
}

impl Revocations {
    fn with_cap(cap: usize) -> Self {
        Self {
            tokens: DashMap::new(),
            users: DashMap::new(),
            hasher: RandomState::new(),
            cap,
        }
    }

    /// The key `jti` is held under (also the hub's index of live connections by token).
    #[must_use]
    pub fn token_key(&self, jti: &str) -> u64 {
        self.key(jti)
    }

    fn key(&self, text: &str) -> u64 {
        self.hasher.hash_one(text)
    }

    /// Checks a revocation before anything is written.
    ///
    /// # Errors
    /// Why it cannot be taken.
    pub fn check(&self, revocation: &Revocation, now: u64) -> Result<(), RevokeError> {
        let until = revocation.until();
        if until <= now {
            return Err(RevokeError::Past(until));
        }
        if until > MAX_UNTIL {
            return Err(RevokeError::TooFar(until));
        }
        match revocation {
            Revocation::Token { jti, .. } => {
                if jti.is_empty() {
                    return Err(RevokeError::EmptyJti);
                }
                if jti.len() > MAX_JTI_BYTES {
                    return Err(RevokeError::LongJti);
                }
                let key = self.token_key(jti);
                if self.tokens.len() >= self.cap && !self.tokens.contains_key(&key) {
                    self.prune(now);
                    if self.tokens.len() >= self.cap {
                        return Err(RevokeError::Full("tokens"));
                    }
                }
            }
            Revocation::User {
                user,
                issued_before,
                ..
            } => {
                if user.is_empty() {
                    return Err(RevokeError::EmptyUser);
                }
                if *issued_before > now.saturating_add(ISSUED_BEFORE_SKEW) {
                    return Err(RevokeError::Ahead(*issued_before));
                }
                if self.users.len() >= self.cap && !self.users.contains_key(&self.key(user)) {
                    self.prune(now);
                    if self.users.len() >= self.cap {
                        return Err(RevokeError::Full("users"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Takes `revocation` in (the later `until` and `issued_before` win): whether it changed
    /// anything, so that live connections are looked at only then. A full list takes no new
    /// entry (the cluster's copy refused it already).
    pub fn apply(&self, revocation: &Revocation) -> bool {
        match revocation {
            Revocation::Token { jti, until } => {
                let key = self.token_key(jti);
                if let Some(mut held) = self.tokens.get_mut(&key) {
                    let longer = *until > *held;
                    *held = (*held).max(*until);
                    return longer;
                }
                if self.tokens.len() >= self.cap {
                    return false;
                }
                self.tokens.insert(key, *until);
                true
            }
            Revocation::User {
                user,
                issued_before,
                until,
            } => {
                let fresh = UserEntry {
                    issued_before: *issued_before,
                    until: *until,
                };
                let key = self.key(user);
                if let Some(mut held) = self.users.get_mut(&key) {
                    let merged = UserEntry {
                        issued_before: held.issued_before.max(fresh.issued_before),
                        until: held.until.max(fresh.until),
                    };
                    let changed = merged != *held;
                    *held = merged;
                    return changed;
                }
                if self.users.len() >= self.cap {
                    return false;
                }
                self.users.insert(key, fresh);
                true
            }
        }
    }

    /// Whether a token of `user`, with `jti` and issued at `iat`, is refused at `now`.
    #[must_use]
    pub fn revoked(
        &self,
        user: &str,
        jti: Option<&str>,
        iat: Option<u64>,
        now: u64,
    ) -> Option<Revoked> {
        if let Some(jti) = jti
            && self
                .tokens
                .get(&self.token_key(jti))
                .is_some_and(|until| *until > now)
        {
            return Some(Revoked::Token);
        }
        let entry = *self.users.get(&self.key(user))?;
        (entry.until > now && iat.is_none_or(|iat| iat < entry.issued_before))
            .then_some(Revoked::IssuedBefore(entry.issued_before))
    }

    /// Revoked tokens and users held.
    #[must_use]
    pub fn len(&self) -> (usize, usize) {
        (self.tokens.len(), self.users.len())
    }

    /// Forgets what ended by `now`.
    pub fn prune(&self, now: u64) {
        self.tokens.retain(|_, until| *until > now);
        self.users.retain(|_, entry| entry.until > now);
    }
}

#[cfg(test)]
mod tests;
