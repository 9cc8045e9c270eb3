//! The Lua scripts a publish and a read run (one round trip each), and the parsing of what
//! Redis answers.

use std::{sync::atomic::Ordering, time::Duration};

use redis::Value;
use tokio::time::Instant;

use super::Inner;
use crate::{
    cluster::BusError,
    protocol::{ChannelName, Offset},
    telemetry,
};

pub(super) const PUBLISH_LUA: &str = r"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[2]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', e, 's', 0)
end
local s = redis.call('HINCRBY', KEYS[1], 's', 1)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(ARGV[3]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], string.format('%d-0', s), 'd', ARGV[1], 't', now)
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'c', ARGV[6], 'e', e, 's', s, 'd', ARGV[1], 't', now)
return {e, s}
";

pub(super) const READ_LUA: &str = r"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', e, 's', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
local s = redis.call('HGET', KEYS[1], 's')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local entries
if ARGV[2] == '' then
  entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[3])
else
  entries = redis.call('XRANGE', KEYS[2], ARGV[2], '+', 'COUNT', ARGV[3])
end
return {e, s, now, entries}
";

impl Inner {
    fn state_ttl_ms(&self) -> u64 {
        u64::try_from(self.settings.channel_state_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Lifetime of the state a read creates for a channel that never had a message: as long
    /// as history would keep one (at least a second, at most `channel_state_ttl`), so that
    /// subscribes to names nobody publishes on leave nothing behind for a day. The first
    /// publish extends it to `channel_state_ttl`.
    fn fresh_state_ttl_ms(&self) -> u64 {
        let ttl = self
            .settings
            .history_ttl
            .max(Duration::from_secs(1))
            .min(self.settings.channel_state_ttl);
        u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) async fn publish(
        &self,
        channel: &ChannelName,
        data: &str,
    ) -> Result<Offset, BusError> {
        let mut conn = self.conn()?;
        let (meta, hist, bus) = self.channel_keys(channel);
        let depth = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        telemetry::redis_pipeline_depth(depth);
        let mut invocation = self.publish_script.key(&meta);
        invocation
            .key(&hist)
            .key(&bus)
            .arg(data)
            .arg(format!("{:016x}", rand::random::<u64>()))
            .arg(self.settings.history_size)
            .arg(self.state_ttl_ms())
            .arg(self.settings.bus_maxlen)
            .arg(channel.as_str());
        let result = tokio::time::timeout(
            self.settings.publish_timeout,
            invocation.invoke_async::<(String, u64)>(&mut conn),
        )
        .await;
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(Ok((epoch, seq))) => Ok(Offset {
                epoch: parse_epoch(&epoch)
                    .ok_or(BusError::BadReply("redis returned a bad epoch"))?,
                seq,
            }),
            Ok(Err(err)) => Err(self.failed("publish", &err)),
            Err(_elapsed) => {
                let err = redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "publish timed out",
                ));
                Err(self.failed("publish", &err))
            }
        }
    }

    /// Runs the read script: the channel's epoch and seq, Redis time, and history entries
    /// after `since` (or the newest `limit`). A read is safe to repeat, so one that finds
    /// the connection broken waits briefly for the keeper's new one and tries once more.
    pub(super) async fn read(
        &self,
        channel: &ChannelName,
        since: Option<Offset>,
        limit: usize,
    ) -> Result<ChannelRead, BusError> {
        match self.read_once(channel, since, limit).await {
            Err(BusError::Failed) => {
                let deadline = Instant::now() + self.settings.publish_timeout;
                while self.conn.load().is_none() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                self.read_once(channel, since, limit).await
            }
            other => other,
        }
    }

    async fn read_once(
        &self,
        channel: &ChannelName,
        since: Option<Offset>,
        limit: usize,
    ) -> Result<ChannelRead, BusError> {
        let mut conn = self.conn()?;
        let (meta, hist, _) = self.channel_keys(channel);
        let start = since.map_or(String::new(), |since| format!("{}-0", since.seq + 1));
        let mut invocation = self.read_script.key(&meta);
        invocation
            .key(&hist)
            .arg(format!("{:016x}", rand::random::<u64>()))
            .arg(start)
            .arg(limit.max(1))
            .arg(self.fresh_state_ttl_ms());
        let value = tokio::time::timeout(
            self.settings.publish_timeout,
            invocation.invoke_async::<Value>(&mut conn),
        )
        .await
        .map_err(|_| BusError::TimedOut)?
        .map_err(|err| self.failed("read", &err))?;
        let mut read =
            ChannelRead::parse(value).ok_or(BusError::BadReply("redis returned a bad reply"))?;
        let ttl_ms = u64::try_from(self.settings.history_ttl.as_millis()).unwrap_or(u64::MAX);
        let oldest_ms = read.now_ms.saturating_sub(ttl_ms);
        read.entries.retain(|entry| entry.time_ms >= oldest_ms);
        if since.is_none() {
            read.entries.reverse();
        }
        Ok(read)
    }
}

/// One channel read from Redis.
#[derive(Debug)]
pub(super) struct ChannelRead {
    pub(super) epoch: u64,
    pub(super) seq: u64,
    pub(super) now_ms: u64,
    pub(super) entries: Vec<ReadEntry>,
}

#[derive(Debug)]
pub(super) struct ReadEntry {
    pub(super) seq: u64,
    pub(super) time_ms: u64,
    pub(super) data: String,
}

impl ChannelRead {
    pub(super) fn parse(value: Value) -> Option<Self> {
        let Value::Array(mut parts) = value else {
            return None;
        };
        if parts.len() != 4 {
            return None;
        }
        let entries = parts.pop()?;
        let now_ms = as_u64(&parts.pop()?)?;
        let seq = as_u64(&parts.pop()?)?;
        let epoch = parse_epoch(&as_string(&parts.pop()?)?)?;
        let Value::Array(entries) = entries else {
            return None;
        };
        let entries = entries
            .into_iter()
            .map(|entry| {
                let Value::Array(mut pair) = entry else {
                    return None;
                };
                let fields = pair.pop()?;
                let id = as_string(&pair.pop()?)?;
                let seq = id.split_once('-')?.0.parse().ok()?;
                let mut data = None;
                let mut time_ms = 0;
                if let Value::Array(fields) = fields {
                    for pair in fields.chunks(2) {
                        match (as_string(&pair[0]).as_deref(), pair.get(1)) {
                            (Some("d"), Some(value)) => data = as_string(value),
                            (Some("t"), Some(value)) => time_ms = as_u64(value).unwrap_or(0),
                            _ => {}
                        }
                    }
                }
                Some(ReadEntry {
                    seq,
                    time_ms,
                    data: data?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            epoch,
            seq,
            now_ms,
            entries,
        })
    }

    /// Whether the entries hold every message after `since` up to `self.seq`: the resume is
    /// recoverable, and the read was not cut short by its limit or the history's TTL.
    pub(super) fn covers(&self, since: Offset) -> bool {
        let position = Offset {
            epoch: self.epoch,
            seq: self.seq,
        };
        let first = self.entries.first().map(|entry| entry.seq);
        // The entries are distinct seqs from `since.seq + 1` on (the read's start), so as
        // many as are missing means every one.
        let all_read = self.entries.len() as u64 == self.seq.saturating_sub(since.seq);
        since.recoverable_from(position, first) && all_read
    }
}

pub(super) fn parse_epoch(text: &str) -> Option<u64> {
    u64::from_str_radix(text, 16).ok()
}

pub(super) fn as_string(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(super) fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => as_string(other)?.parse().ok(),
    }
}
