//! The connect hook's request and answer: who a connection is, decided by the backend from
//! what the upgrade request brought (cookies, headers, query, a token), with the meaning of
//! a JWT's claims; and the cache of allowing answers (`hooks.connect_cache`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest as _, Sha256};

use crate::auth::{self, Identity};

/// What the connect hook is sent.
#[derive(Debug, Serialize)]
pub struct ConnectRequest<'a> {
    pub conn_id: u64,
    pub node: &'a str,
    /// The client's address as this node sees it (a proxy's, behind one: forward
    /// `X-Forwarded-For`).
    pub remote_addr: Option<String>,
    /// The upgrade request's headers listed in `hooks.forward_headers` (names as listed),
    /// as a JSON object.
    #[serde(serialize_with = "as_object")]
    pub headers: &'a [(String, String)],
    /// The upgrade request's query parameters (decoded), as a JSON object.
    #[serde(serialize_with = "as_object")]
    pub query: &'a [(String, String)],
    /// The token the upgrade brought (`Authorization: Bearer` or `?token=`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<&'a str>,
}

fn as_object<S: serde::Serializer>(
    pairs: &&[(String, String)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(pairs.iter().map(|(name, value)| (name, value)))
}

/// A connect (or refresh) hook's `result`: the claims of a JWT, with `expires_in` for `exp`.
#[derive(Debug, Deserialize)]
struct ConnectResult {
    /// Empty or missing: the connection stays anonymous.
    #[serde(default)]
    user: String,
    #[serde(default)]
    info: Option<Box<RawValue>>,
    #[serde(default)]
    subs: Vec<String>,
    /// Seconds the identity holds; then the refresh hook is asked. Missing: for the
    /// connection's life.
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// The longest `expires_in` taken: 10 years.
const MAX_EXPIRES_IN: u64 = 10 * 365 * 24 * 3600;

/// The identity a connect or refresh hook's result gives: a result without `user` is
/// `default_user`'s (a refresh: the connection's user), or anonymous (`None`). An identity
/// without `expires_in` never expires ([`auth::MAX_EXP`]).
///
/// # Errors
/// The result is not an object of the documented fields.
pub fn identity(
    result: &RawValue,
    default_user: Option<&str>,
) -> Result<Option<Identity>, serde_json::Error> {
    let mut result: ConnectResult = serde_json::from_str(result.get())?;
    if result.user.is_empty() {
        match default_user {
            Some(user) => user.clone_into(&mut result.user),
            None => return Ok(None),
        }
    }
    let exp = match result.expires_in {
        Some(seconds) => auth::unix_now().saturating_add(seconds.clamp(1, MAX_EXPIRES_IN)),
        None => auth::MAX_EXP,
    };
    Ok(Some(Identity {
        user: Arc::from(result.user),
        exp,
        channels: result.channels,
        publish: result.publish,
        info: result.info,
        subs: result.subs,
        jti: None,
        // Issued now: a revocation of the user's earlier tokens closes it, a later one not.
        iat: Some(auth::unix_now()),
    }))
}

/// Allowing answers of the connect hook, per `(forwarded headers, query, token)`, for
/// `hooks.connect_cache`: a reconnect storm of the same sessions asks the backend once
/// each. At most `entries`; when full, expired entries are dropped, and while it is still
/// full nothing more is kept (every entry leaves when it expires, so a flood of distinct
/// cookies costs caching for one interval, never a connection).
#[derive(Debug)]
pub struct Cache {
    ttl: Duration,
    max: usize,
    held: AtomicUsize,
    entries: DashMap<[u8; 32], (tokio::time::Instant, Box<RawValue>)>,
    started: tokio::time::Instant,
    /// When a full cache may next drop its expired entries (ms since `started`).
    next_sweep_ms: AtomicU64,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Cache {
    #[must_use]
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            ttl,
            max,
            held: AtomicUsize::new(0),
            entries: DashMap::new(),
            started: tokio::time::Instant::now(),
            next_sweep_ms: AtomicU64::new(0),
        }
    }

    /// The key of a connect request: what the backend decides from, the connection's own
    /// id and address apart.
    #[must_use]
    pub fn key(request: &ConnectRequest<'_>) -> [u8; 32] {
        let mut hash = Sha256::new();
        // Each pair tagged with where it came from: a header and a query parameter of one
        // name and value are different requests.
        let tagged = (request.headers.iter().map(|pair| (b'h', pair)))
            .chain(request.query.iter().map(|pair| (b'q', pair)));
        for (from, (name, value)) in tagged {
            hash.update([from]);
            for part in [name.as_bytes(), value.as_bytes()] {
                hash.update(part.len().to_le_bytes());
                hash.update(part);
            }
            hash.update(b"\n");
        }
        if let Some(token) = request.token {
            hash.update(b"token");
            hash.update(token.as_bytes());
        }
        hash.finalize().into()
    }

    /// The answer kept for `key`, while it is fresh.
    #[must_use]
    pub fn get(&self, key: &[u8; 32]) -> Option<Box<RawValue>> {
        let entry = self.entries.get(key)?;
        (entry.0.elapsed() < self.ttl).then(|| entry.1.clone())
    }

    /// Keeps `result` for `key`. When full, expired entries are dropped, at most once per
    /// quarter of the TTL: a flood of distinct sessions costs one scan per interval, not
    /// one per connect.
    pub fn put(&self, key: [u8; 32], result: Box<RawValue>) {
        if self.held.load(Ordering::Acquire) >= self.max {
            let now_ms = millis(self.started.elapsed());
            let due = self.next_sweep_ms.load(Ordering::Acquire);
            if now_ms < due
                || self
                    .next_sweep_ms
                    .compare_exchange(
                        due,
                        now_ms + millis(self.ttl / 4),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_err()
            {
                return;
            }
            self.entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
            self.held.store(self.entries.len(), Ordering::Release);
            if self.entries.len() >= self.max {
                return;
            }
        }
        if self
            .entries
            .insert(key, (tokio::time::Instant::now(), result))
            .is_none()
        {
            self.held.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests;
