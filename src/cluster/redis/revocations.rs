//! The cluster's revocation list (`POST /v1/revoke`): revoked tokens in the sorted set
//! `sb:{sb:nodes}:revoked:tokens` (`jti` → until), revoked users in
//! `sb:{sb:nodes}:revoked:users` (user → until) with their `issued_before` in the hash
//! `sb:{sb:nodes}:revoked:issued`, every change numbered (`...:revoked:seq`) and logged in the
//! stream `sb:{sb:nodes}:revoked:log` by one script (`revoke.lua`).
//!
//! Each node loads the whole list once at start, then reads only the log's new entries
//! every [`POLL`]: a million revocations cost one full read per node start, not one every few
//! seconds. A node that finds a change number skipped (it was away longer than the log
//! holds, or Redis restarted) reads the whole list again. Changes only add or lengthen (see
//! `crate::revocations`), so reading one twice or out of order is harmless, and a Redis that
//! restarted empty leaves every node its copy.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use redis::{Script, Value};
use tokio_util::sync::CancellationToken;

use super::{Inner, RedisBus, values::as_u64};
use crate::{
    blocks::unix_now,
    cluster::{BusError, RevokeFailed},
    revocations::{MAX_REVOCATIONS, Revocation, RevokeError},
};

const TOKENS_KEY: &str = "sb:{sb:nodes}:revoked:tokens";
const USERS_KEY: &str = "sb:{sb:nodes}:revoked:users";
const ISSUED_KEY: &str = "sb:{sb:nodes}:revoked:issued";
const LOG_KEY: &str = "sb:{sb:nodes}:revoked:log";
const SEQ_KEY: &str = "sb:{sb:nodes}:revoked:seq";

/// Changes the log keeps (about): a node away for fewer changes than this catches up from
/// the log, one away longer reads the whole list.
const LOG_LENGTH: u32 = 10_000;

/// How often each node reads the log: a revocation closes its connections everywhere
/// within this (plus a round trip).
const POLL: Duration = Duration::from_millis(250);

/// How often this node forgets the revocations that ended.
const PRUNE: Duration = Duration::from_secs(60);

/// Log entries, or list entries, one read takes at most.
const PAGE: usize = 1000;

/// The change counter and the log's newest id, at once: where a node that reads the whole
/// list starts following the log.
const MARK_LUA: &str = include_str!("lua/revocations_mark.lua");

impl RedisBus {
    /// Writes the revocation and applies it here; the other nodes read it from the log.
    pub(super) async fn revoke_everywhere(
        &self,
        revocation: &Revocation,
    ) -> Result<usize, RevokeFailed> {
        let inner = &self.inner;
        let mut conn = inner.conn()?;
        let (kind, id, issued_before) = match revocation {
            Revocation::Token { jti, .. } => ("t", jti.as_str(), 0),
            Revocation::User {
                user,
                issued_before,
                ..
            } => ("u", user.as_str(), *issued_before),
        };
        let answer: Vec<Value> = inner
            .revoke_script
            .key(TOKENS_KEY)
            .key(USERS_KEY)
            .key(ISSUED_KEY)
            .key(LOG_KEY)
            .key(SEQ_KEY)
            .arg(kind)
            .arg(id)
            .arg(revocation.until())
            .arg(issued_before)
            .arg(unix_now())
            .arg(MAX_REVOCATIONS)
            .arg(LOG_LENGTH)
            .invoke_async(&mut conn)
            .await
            .map_err(|err| inner.failed("revoke", &err))?;
        if answer.first().and_then(as_u64) != Some(1) {
            let kind = if kind == "t" { "tokens" } else { "users" };
            return Err(RevokeFailed::Refused(RevokeError::Full(kind)));
        }
        Ok(inner.hub.revoke(revocation))
    }
}

/// Loads the cluster's list, then follows its log every [`POLL`] until `stop`.
pub(super) async fn keep_revocations(inner: Arc<Inner>, stop: CancellationToken) {
    let mark = Script::new(MARK_LUA);
    // Where the log was read to: its last id and change number; `None`: read it all first.
    let mut cursor: Option<(String, u64)> = None;
    let mut pruned = tokio::time::Instant::now();
    loop {
        // A failed read keeps the cursor: a Redis outage is not a missed change.
        let read = match cursor.clone() {
            None => load(&inner, &mark).await.map(|mark| (Some(mark), false)),
            Some(at) => follow(&inner, at).await,
        };
        let full_page = match read {
            Ok((at, full_page)) => {
                if at.is_some() {
                    // Read whole (or followed from a whole read): tokens it holds are refused.
                    inner
                        .health
                        .revocations_loaded
                        .store(true, Ordering::Release);
                }
                cursor = at;
                full_page
            }
            Err(err) => {
                tracing::debug!(%err, "Revocation list not read; the node keeps its copy");
                false
            }
        };
        if !full_page {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(POLL) => {}
            }
        }
        if pruned.elapsed() >= PRUNE {
            inner.hub.revocations().prune(unix_now());
            pruned = tokio::time::Instant::now();
        }
    }
}

/// Reads the whole list into this node's (asking the connections holding what it newly
/// revokes to check their tokens): where to follow the log from.
async fn load(inner: &Inner, mark: &Script) -> Result<(String, u64), BusError> {
    let mut conn = inner.conn()?;
    let (seq, id): (String, String) = mark
        .key(LOG_KEY)
        .key(SEQ_KEY)
        .invoke_async(&mut conn)
        .await
        .map_err(|err| inner.failed("revoke", &err))?;
    let hub = &inner.hub;
    let mut revoked = 0;
    for key in [TOKENS_KEY, USERS_KEY] {
        let mut cursor = 0u64;
        loop {
            let (next, page): (u64, Vec<(String, f64)>) = redis::cmd("ZSCAN")
                .arg(key)
                .arg(cursor)
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut conn)
                .await
                .map_err(|err| inner.failed("revoke", &err))?;
            if key == TOKENS_KEY {
                for (jti, until) in page {
                    revoked += hub.revoke(&Revocation::Token {
                        jti,
                        until: score(until),
                    });
                }
            } else if !page.is_empty() {
                let issued: Vec<Option<u64>> = redis::cmd("HMGET")
                    .arg(ISSUED_KEY)
                    .arg(page.iter().map(|(user, _)| user).collect::<Vec<_>>())
                    .query_async(&mut conn)
                    .await
                    .map_err(|err| inner.failed("revoke", &err))?;
                for ((user, until), issued_before) in page.into_iter().zip(issued) {
                    revoked += hub.revoke(&Revocation::User {
                        user,
                        issued_before: issued_before.unwrap_or(0),
                        until: score(until),
                    });
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    if revoked > 0 {
        tracing::info!(
            connections = revoked,
            "Revocations found on reading the whole list"
        );
    }
    Ok((id, seq.parse().unwrap_or(0)))
}

/// A sorted set's score as the Unix seconds it holds.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn score(score: f64) -> u64 {
    score as u64
}

/// Applies the log's entries after `at`: where it was read to (`None`: a change was missed,
/// read the whole list), and whether a whole page came (read on at once).
async fn follow(
    inner: &Inner,
    (mut id, mut seq): (String, u64),
) -> Result<(Option<(String, u64)>, bool), BusError> {
    let mut conn = inner.conn()?;
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(LOG_KEY)
        .arg(format!("({id}"))
        .arg("+")
        .arg("COUNT")
        .arg(PAGE)
        .query_async(&mut conn)
        .await
        .map_err(|err| inner.failed("revoke", &err))?;
    let full_page = entries.len() == PAGE;
    for (entry_id, fields) in entries {
        let field = |name: &str| {
            fields
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        let number = |name: &str| field(name).and_then(|value| value.parse::<u64>().ok());
        if number("s") != Some(seq + 1) {
            tracing::info!(
                after = seq,
                found = ?field("s"),
                "Revocation changes missed; reading the whole list"
            );
            return Ok((None, false));
        }
        let (Some(kind), Some(key), Some(until)) = (field("k"), field("i"), number("x")) else {
            tracing::warn!(%entry_id, "Revocation log entry not understood; skipped");
            (id, seq) = (entry_id, seq + 1);
            continue;
        };
        let revocation = match kind {
            "u" => Revocation::User {
                user: key.to_owned(),
                issued_before: number("b").unwrap_or(0),
                until,
            },
            _ => Revocation::Token {
                jti: key.to_owned(),
                until,
            },
        };
        let asked = inner.hub.revoke(&revocation);
        if asked > 0 {
            tracing::info!(asked, "Connections asked to check a revoked token");
        }
        (id, seq) = (entry_id, seq + 1);
    }
    Ok((Some((id, seq)), full_page))
}
