//! Following the bus: one reader per partition with its own connection, going on from the
//! last entry it saw and handing what it reads to `deliver`; with inbox routing, the renewal of this
//! node's interest and the read of the log for what an inbox missed; the watchdog that
//! restarts a reader stuck while Redis answers; the partitions' lag gauge.

use std::{
    sync::{Arc, PoisonError, atomic::Ordering},
    time::Duration,
};

use redis::{RedisResult, Value};
use tokio_util::sync::CancellationToken;

use super::{
    Inner, bus_key,
    connection::RedisConn,
    deliver::{READ_COUNT, deliver_batch},
    health::{READER_STALL, stalled_readers},
    interest::{FORGET_EVERY, forget_interest, renew_interest},
    on_time_ms, since_start_ms,
    values::as_string,
};
use crate::{shutdown::TaskGroup, telemetry};

/// How long one `XREAD` blocks before returning empty.
const BLOCK: Duration = Duration::from_millis(1000);

/// Starts one reader per partition and restarts any that is stuck while Redis answers.
pub(super) async fn watch_readers(inner: Arc<Inner>, tasks: TaskGroup, stop: CancellationToken) {
    let partitions = inner.settings.partitions;
    let mut readers: Vec<_> = (0..partitions)
        .map(|partition| tasks.spawn(read_partition(Arc::clone(&inner), partition, stop.clone())))
        .collect();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !inner.health.redis_up.load(Ordering::Acquire) {
            continue;
        }
        let now = since_start_ms(&inner);
        let grace = u64::try_from(READER_STALL.as_millis()).unwrap_or(u64::MAX);
        for partition in stalled_readers(&inner) {
            // Readiness stays failed until the reader completes a read again; restarts are
            // spaced by the stall period so a reader that cannot get through is not
            // restarted every second.
            let restarted = &inner.health.reader_restarted_ms[partition];
            if now.saturating_sub(restarted.load(Ordering::Relaxed)) < grace {
                continue;
            }
            restarted.store(now, Ordering::Relaxed);
            tracing::warn!(
                partition,
                "Bus reader stalled while Redis answers; restarting it"
            );
            telemetry::bus_reader_restarted();
            readers[partition].abort();
            let partition_u32 = u32::try_from(partition).expect("partitions fit in u32");
            readers[partition] = tasks.spawn(read_partition(
                Arc::clone(&inner),
                partition_u32,
                stop.clone(),
            ));
        }
        record_partition_lag(&inner).await;
    }
}

/// Sets each partition's lag gauge: how far (by entry time, which Redis assigns, so no clock
/// skew enters) the entry this node has read trails the newest entry of the stream.
async fn record_partition_lag(inner: &Inner) {
    let Ok(mut conn) = inner.conn() else { return };
    for (partition, position) in inner.health.reader_position_ms.iter().enumerate() {
        let key = inner.reader_key(u32::try_from(partition).unwrap_or(u32::MAX));
        let newest = redis::cmd("XREVRANGE")
            .arg(&key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async::<Value>(&mut conn)
            .await;
        let Ok(Value::Array(entries)) = newest else {
            return;
        };
        let newest_ms = entries
            .first()
            .and_then(|entry| match entry {
                Value::Array(pair) => pair.first().and_then(as_string),
                _ => None,
            })
            .and_then(|id| id_ms(&id))
            .unwrap_or(0);
        let position = position.load(Ordering::Relaxed);
        let lag = newest_ms.saturating_sub(position) as f64 / 1000.0;
        telemetry::bus_partition_age(partition, lag);
    }
}

/// Follows one partition stream from the last entry seen, across reconnects: a dedicated
/// connection (a blocking `XREAD` would stall a shared one), the starting point found once,
/// then [`follow`] until the connection fails, with backoff between attempts.
async fn read_partition(inner: Arc<Inner>, partition: u32, stop: CancellationToken) {
    let key = inner.reader_key(partition);
    let index = partition as usize;
    let saved_cursor = &inner.health.reader_cursor[index];
    let mut last_id: Option<String> = saved_cursor
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut backoff = Duration::from_millis(50);
    let read_timeout = BLOCK + inner.settings.publish_timeout + Duration::from_secs(1);
    loop {
        if stop.is_cancelled() {
            return;
        }
        let connected = tokio::select! {
            () = stop.cancelled() => return,
            connected = inner.connector.connect(inner.patience(read_timeout)) => connected,
        };
        let mut conn = match connected {
            Ok(conn) => conn,
            Err(err) => {
                inner.health.error("read_connect", &err);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let first = last_id.is_none();
        let start = match last_id.take() {
            Some(id) => id,
            // Inbox ids are log ids: an inbox is read from where the log stands.
            None => match find_start(&mut conn, &bus_key(partition)).await {
                Ok(id) => id,
                Err(err) => {
                    inner.health.error("read", &err);
                    continue;
                }
            },
        };
        let mut cursor = start;
        if inner.reads_inbox() {
            // Redis may have lost this node's interest (restarted empty) or it may have
            // expired (the node stalled): renewed before reading, and what the inbox missed
            // meanwhile read from the log.
            if let Err(err) = renew_interest(&inner, &mut conn, partition, &mut cursor, first).await
            {
                inner.health.error("read", &err);
                last_id = Some(cursor);
                continue;
            }
        }
        let start = cursor;
        backoff = Duration::from_millis(50);
        saved_cursor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(start.clone());
        inner.health.reader_started[index].store(true, Ordering::Release);
        if let Some(ms) = id_ms(&start) {
            inner.health.reader_position_ms[index].fetch_max(ms, Ordering::Relaxed);
        }
        let mut cursor = start;
        let followed = follow(&inner, &mut conn, &key, partition, &mut cursor, &stop).await;
        last_id = Some(cursor);
        if followed == Followed::Stopped {
            return;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Where a reader starts the first time: after the newest entry of the stream (what came
/// before was for the nodes that were there), or at its beginning when it is empty. Later
/// reconnects go on from the last entry seen, so nothing published during an outage is
/// skipped.
async fn find_start(conn: &mut RedisConn, key: &str) -> RedisResult<String> {
    let newest: Value = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    let id = match newest {
        Value::Array(entries) => entries.first().and_then(|entry| match entry {
            Value::Array(pair) => pair.first().and_then(as_string),
            _ => None,
        }),
        _ => None,
    };
    Ok(id.unwrap_or_else(|| "0-0".to_owned()))
}

/// How [`follow`] ended.
#[derive(Debug, PartialEq, Eq)]
enum Followed {
    /// The node is stopping.
    Stopped,
    /// The connection failed or timed out: reconnect.
    Broken,
}

/// Reads the stream after `cursor` with blocking `XREAD`s and hands each reply to the hub,
/// moving `cursor` (and the reader's saved cursor and position) past what it delivered. An
/// inbox is trimmed up to what was delivered (in the same round trip as the next read) and
/// this node's interest renewed every third of `cluster.interest_ttl`, and at once when it
/// may have been lost (Redis lost its data, or the node stalled long enough to be judged
/// gone).
async fn follow(
    inner: &Inner,
    conn: &mut RedisConn,
    key: &str,
    partition: u32,
    cursor: &mut String,
    stop: &CancellationToken,
) -> Followed {
    let index = partition as usize;
    let renew_every = inner.settings.interest_ttl / 3;
    let mut renew_at = tokio::time::Instant::now() + renew_every;
    let mut losses = inner.health.state_losses();
    let mut forget_at = tokio::time::Instant::now() + FORGET_EVERY;
    // The hub's dropped-channel count at the last look for interest to remove: at rest
    // (nothing dropped) there is nothing to look for, and no pass over every channel.
    let mut looked_at_drops: Option<u64> = None;
    let mut trimmed = cursor.clone();
    loop {
        if inner.reads_inbox() {
            let now = tokio::time::Instant::now();
            let seen = inner.health.state_losses();
            let renewed = if seen != losses || now >= renew_at {
                losses = seen;
                renew_at = now + renew_every;
                Some(renew_interest(inner, conn, partition, cursor, false).await)
            } else if now >= forget_at {
                forget_at = now + FORGET_EVERY;
                // Read before the pass: a channel dropped during it moves the count again.
                let drops = inner.hub.channels_dropped();
                if looked_at_drops == Some(drops) {
                    None
                } else {
                    looked_at_drops = Some(drops);
                    Some(forget_interest(inner, conn, partition, cursor).await)
                }
            } else {
                None
            };
            if let Some(renewed) = renewed {
                if let Err(err) = renewed {
                    inner.health.error("read", &err);
                    return Followed::Broken;
                }
                save_cursor(inner, index, cursor);
            }
        }
        let mut pipe = redis::pipe();
        if inner.reads_inbox() && *cursor != trimmed {
            // What was delivered is not needed again: a lost inbox is made good from the log.
            pipe.cmd("XTRIM")
                .arg(key)
                .arg("MINID")
                .arg("~")
                .arg(&*cursor)
                .ignore();
            trimmed.clone_from(cursor);
        }
        let xread = pipe.cmd("XREAD");
        xread
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(u64::try_from(BLOCK.as_millis()).unwrap_or(1000))
            .arg("STREAMS")
            .arg(key)
            .arg(&*cursor);
        let read = tokio::select! {
            () = stop.cancelled() => return Followed::Stopped,
            read = pipe.query_async::<(Value,)>(conn) => read,
        };
        let value = match read {
            Ok((value,)) => value,
            Err(err) => {
                inner.health.error("read", &err);
                return Followed::Broken;
            }
        };
        inner.health.reader_ok_ms[index].store(on_time_ms(inner), Ordering::Relaxed);
        if let Some(new_last) = deliver_batch(inner, value) {
            *cursor = new_last;
            save_cursor(inner, index, cursor);
        }
    }
}

/// Records where a reader stands: its saved cursor (a restarted reader goes on from it) and
/// its position by entry time (the lag gauge).
fn save_cursor(inner: &Inner, index: usize, cursor: &str) {
    if let Some(ms) = id_ms(cursor) {
        inner.health.reader_position_ms[index].store(ms, Ordering::Relaxed);
    }
    // A short critical section, never across an await.
    *inner.health.reader_cursor[index]
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(cursor.to_owned());
}

/// The milliseconds part of a stream entry id (`<ms>-<n>`).
fn id_ms(id: &str) -> Option<u64> {
    id.split_once('-').and_then(|(ms, _)| ms.parse().ok())
}
