//! This node's interest in channels, which routes their messages to its inboxes
//! (`cluster.bus_routing = "inbox"`): renewed by the partition readers, removed once the
//! hub no longer holds a channel, and when found lost, made good from the partition's log.

use std::{collections::HashSet, sync::PoisonError, time::Duration};

use redis::{RedisResult, Value};

use super::{
    Inner, USERS_INTEREST, bus_key,
    connection::RedisConn,
    deliver::{READ_COUNT, deliver_entries},
    interest_key,
};
use crate::{protocol::ChannelName, telemetry};

/// Channels one interest renewal script writes at most.
const RENEW_CHUNK: usize = 500;
/// How often a reader removes this node's interest in channels the hub no longer holds (when
/// the hub dropped any since it last looked).
pub(super) const FORGET_EVERY: Duration = Duration::from_secs(2);

/// Writes this node's interest in every channel of `partition` it holds (and, on partition
/// 0, in requests about users) for another `cluster.interest_ttl`. When Redis had lost some
/// of it, the inbox missed those channels' entries since; they are all in the partition's
/// log, which is read from `cursor` up to where it stood when the interest was back (every
/// later entry reaches the inbox), handed to the hub (which drops what it has), and
/// `cursor` moved there. `first`: this process's first renewal, whose "missing" interest is
/// only new.
pub(super) async fn renew_interest(
    inner: &Inner,
    conn: &mut RedisConn,
    partition: u32,
    cursor: &mut String,
    first: bool,
) -> RedisResult<()> {
    let mut names: Vec<String> = interest_of(inner, partition)
        .iter()
        .map(|channel| channel.as_str().to_owned())
        .collect();
    if partition == 0 {
        names.push(USERS_INTEREST.to_owned());
    }
    renew(inner, conn, partition, &names, cursor, first).await
}

/// This node's interest in a partition's channels, locked (never across an await).
fn interest_of(inner: &Inner, partition: u32) -> std::sync::MutexGuard<'_, HashSet<ChannelName>> {
    inner.interest[partition as usize]
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Removes this node's interest in the channels of `partition` the hub no longer holds, so
/// that their messages stop reaching it (and a client cycling through channel names leaves
/// nothing in Redis). A subscribe may take such a channel again meanwhile, its read writing
/// the interest just before this removes it: the channels the hub holds again afterwards
/// are renewed, and what they missed read from the log, like lost interest.
pub(super) async fn forget_interest(
    inner: &Inner,
    conn: &mut RedisConn,
    partition: u32,
    cursor: &mut String,
) -> RedisResult<()> {
    let gone: Vec<ChannelName> = {
        let mut interest = interest_of(inner, partition);
        let gone: Vec<ChannelName> = interest
            .iter()
            .filter(|channel| !inner.hub.holds(channel.as_str()))
            .cloned()
            .collect();
        for channel in &gone {
            interest.remove(channel);
        }
        gone
    };
    for chunk in gone.chunks(RENEW_CHUNK) {
        let mut invocation = inner.forget_script.prepare_invoke();
        for channel in chunk {
            invocation.key(interest_key(partition, channel.as_str()));
        }
        invocation.arg(inner.inbox_name());
        invocation.invoke_async::<()>(conn).await?;
    }
    let back: Vec<String> = {
        let mut interest = interest_of(inner, partition);
        gone.into_iter()
            .filter(|channel| inner.hub.holds(channel.as_str()))
            .map(|channel| {
                let name = channel.as_str().to_owned();
                interest.insert(channel);
                name
            })
            .collect()
    };
    if back.is_empty() {
        return Ok(());
    }
    renew(inner, conn, partition, &back, cursor, false).await
}

/// Writes this node's interest in `names` (channels of `partition`, or the users' requests)
/// and reads from the log what the inbox missed where some was missing: see
/// [`renew_interest`].
async fn renew(
    inner: &Inner,
    conn: &mut RedisConn,
    partition: u32,
    names: &[String],
    cursor: &mut String,
    first: bool,
) -> RedisResult<()> {
    let log = bus_key(partition);
    let mut missing = 0_u64;
    let mut newest = String::from("0-0");
    for chunk in names.chunks(RENEW_CHUNK) {
        let mut invocation = inner.interest_script.key(&log);
        for name in chunk {
            invocation.key(interest_key(partition, name));
        }
        invocation
            .arg(inner.inbox_name())
            .arg(inner.interest_ttl_ms());
        let (lost, last): (u64, String) = invocation.invoke_async(conn).await?;
        missing += lost;
        newest = last;
    }
    if missing == 0 {
        return Ok(());
    }
    let replayed = read_log(inner, conn, &log, cursor, &newest).await?;
    if !first {
        tracing::warn!(
            partition,
            channels = missing,
            replayed,
            "This node's interest in channels was missing in Redis (lost or expired); \
             renewed, and what the inbox missed read from the log"
        );
        telemetry::bus_interest_lost(missing, replayed);
    }
    Ok(())
}

/// Hands the log's entries after `cursor` up to `until` to the hub, and moves `cursor` to
/// `until`. Returns how many entries it read.
async fn read_log(
    inner: &Inner,
    conn: &mut RedisConn,
    log: &str,
    cursor: &mut String,
    until: &str,
) -> RedisResult<u64> {
    let mut read = 0_u64;
    loop {
        let entries: Value = redis::cmd("XRANGE")
            .arg(log)
            .arg(format!("({cursor}"))
            .arg(until)
            .arg("COUNT")
            .arg(READ_COUNT)
            .query_async(conn)
            .await?;
        let Value::Array(entries) = entries else {
            break;
        };
        let count = entries.len();
        read += count as u64;
        let mut writes = inner.hub.write_batch();
        let mut n_entries = 0;
        if let Some(last) = deliver_entries(inner, entries, &mut writes, &mut n_entries) {
            *cursor = last;
        }
        if count < READ_COUNT {
            break;
        }
    }
    if id_parts(until) > id_parts(cursor) {
        until.clone_into(cursor);
    }
    Ok(read)
}

/// A stream entry id's two parts, to compare ids.
pub(super) fn id_parts(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}
