//! The Lua scripts a publish and a read run (one round trip each), and the parsing of what
//! Redis answers.

use std::{sync::atomic::Ordering, time::Duration};

use redis::Value;
use tokio::time::Instant;

use super::{
    Inner, inbox_prefix,
    read::{ChannelRead, ReadEntry},
};
use crate::{
    cluster::BusError,
    protocol::{ChannelName, Offset},
    telemetry,
};

/// Appends an entry to the inbox of every node whose interest in the channel has not
/// expired (and forgets the expired ones), under the log entry's id, so that an inbox is the
/// log filtered: its ids are log positions, in the log's order. `interest`: the channel's
/// interest hash (field: the inbox's name after `prefix`, value: expiry in Redis ms); `ttl`:
/// an inbox unread for this long (its node is gone) expires. An inbox whose newest id is
/// not below `id` (only if someone wrote to it by hand) is skipped rather than failing the
/// publish, which the log already holds. Prepended to the scripts that call `route`.
pub(super) const ROUTE_LUA: &str = r"
local function route(interest, prefix, id, maxlen, ttl, now, ...)
  local nodes = redis.call('HGETALL', interest)
  for i = 1, #nodes, 2 do
    if tonumber(nodes[i + 1]) > now then
      local inbox = prefix .. nodes[i]
      redis.pcall('XADD', inbox, 'MAXLEN', '~', maxlen, id, ...)
      redis.call('PEXPIRE', inbox, ttl)
    else
      redis.call('HDEL', interest, nodes[i])
    end
  end
end
";

/// The publish: creates the channel's epoch if it has none, bumps its seq, appends to its
/// history, to the partition's bus (the log) and to the inboxes of the nodes that follow the
/// channel (see [`ROUTE_LUA`]), and trims them. `KEYS`: meta hash, history stream, bus
/// stream, `born`, interest hash, then the keys of messages with ids (`ids`, `idt`, `chg`,
/// `opn`, the partition's open set: see `streams_lua`). `ARGV`: data, a fresh epoch,
/// `history.size`, `channel_state_ttl` (ms), `bus_maxlen`, channel, `history.ttl` (ms),
/// `bus_max_age` (ms), the inbox prefix, `interest_ttl` (ms), the message and text key
/// prefixes, `dedupe_window` (ms).
///
/// History keeps `history.size` entries, none older than `history.ttl`; the stream expires
/// `history.ttl` after the last publish. A channel that has had messages with ids (the meta
/// hash's `i`) is trimmed by `trim_history` (`streams_lua::HISTORY_LUA`), each dropped
/// entry raising the floor `f`; one with plain messages only as it always was (`MAXLEN`,
/// then the entries older than `history.ttl`, found by their `t` from the oldest on in
/// doubling batches), what it drops being below the oldest entry kept, which a read reports
/// (see [`ChannelRead::floor`]): 3 µs of Redis CPU less per publish than `trim_history`
/// (`loadtest/bus-cost.sh` with `history.size = 5`). The meta hash
/// lives `channel_state_ttl`: it is what says no message came after a resume's offset and
/// no other epoch came and went (see [`continuous_since`]).
pub(super) const PUBLISH_LUA: &str = r"
local function trim_older(key, oldest_ms)
  local start = '-'
  local count = 1
  while true do
    local entries = redis.call('XRANGE', key, start, '+', 'COUNT', count)
    for i, entry in ipairs(entries) do
      local fields = entry[2]
      local t = 0
      for f = 1, #fields - 1, 2 do
        if fields[f] == 't' then t = tonumber(fields[f + 1]) end
      end
      if t >= oldest_ms then
        if start ~= '-' or i > 1 then
          redis.call('XTRIM', key, 'MINID', entry[1])
        end
        return
      end
    end
    if #entries < count then return end
    start = '(' .. entries[#entries][1]
    count = count * 2
  end
end

local now = now_ms()
local meta = redis.call('HMGET', KEYS[1], 'e', 'i')
local e = meta[1]
if not e then
  e = ARGV[2]
  redis.call('DEL', KEYS[2], KEYS[6], KEYS[7], KEYS[8], KEYS[9])
  redis.call('HSET', KEYS[1], 'e', e, 's', 0)
  redis.call('SET', KEYS[4], now, 'NX')
end
local s = redis.call('HINCRBY', KEYS[1], 's', 1)
if tonumber(ARGV[3]) > 0 then
  if meta[2] then
    -- The channel has messages with ids: dropping one drops its state and raises the floor.
    local ch = {meta = KEYS[1], hist = KEYS[2], ids = KEYS[6], idt = KEYS[7], chg = KEYS[8],
      opn = KEYS[9], open = KEYS[10], mp = ARGV[11] .. e .. ' ', xp = ARGV[12] .. e .. ' ',
      name = ARGV[6], window = tonumber(ARGV[13])}
    redis.call('XADD', KEYS[2], string.format('%d-0', s), 'd', ARGV[1], 't', now)
    trim_history(ch, tonumber(ARGV[3]), now - tonumber(ARGV[7]), now)
  else
    -- Plain messages only: what was dropped is below the oldest entry kept.
    redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], string.format('%d-0', s), 'd', ARGV[1], 't', now)
    trim_older(KEYS[2], now - tonumber(ARGV[7]))
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[7])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'c', ARGV[6], 'e', e, 's', s, 'd', ARGV[1], 't', now)
redis.call('XTRIM', KEYS[3], 'MINID', '~', string.format('%d', now - tonumber(ARGV[8])))
route(KEYS[5], ARGV[9], id, ARGV[5], ARGV[10], now, 'c', ARGV[6], 'e', e, 's', s, 'd', ARGV[1], 't', now)
return {e, s}
";

/// Appends a request or event entry to a bus stream (`KEYS[1]`) and to the inboxes of the
/// nodes interested (`KEYS[2]`: the channel's interest hash, or the one every node joins
/// for requests about users), and trims it like a publish does. `ARGV`: `bus_maxlen`,
/// `bus_max_age` (ms), the inbox prefix, `interest_ttl` (ms), then the entry's field-value
/// pairs.
pub(super) const APPEND_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 5))
redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d', now - tonumber(ARGV[2])))
route(KEYS[2], ARGV[3], id, ARGV[1], ARGV[4], now, unpack(ARGV, 5))
return 1
";

/// Renews this node's interest in channels of one partition and tells what was missing:
/// `KEYS`: the partition's bus stream, then the channels' interest hashes. `ARGV`: this
/// node's field (its inbox's name), `interest_ttl` (ms). Answers how many of the channels
/// had no interest of this node (expired, or Redis lost it), and the newest entry id of the
/// bus at that moment: every entry after it reaches the inbox, so entries up to it that the
/// node missed are read from the bus (see `follow`).
pub(super) const INTEREST_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[2])
local missing = 0
for i = 2, #KEYS do
  missing = missing + redis.call('HSET', KEYS[i], ARGV[1], until_ms)
end
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local last = '0-0'
if newest[1] then last = newest[1][1] end
return {missing, last}
";

/// Removes this node's interest (`ARGV[1]`, its field) from the interest hashes in `KEYS`:
/// channels it no longer holds.
pub(super) const FORGET_LUA: &str = r"
for i = 1, #KEYS do
  redis.call('HDEL', KEYS[i], ARGV[1])
end
return 1
";

/// Reads a channel: a channel without a meta hash answers an empty epoch and seq 0,
/// whoever asks and however often (see [`ChannelRead::since_as_read`]), and writes nothing
/// about it. `KEYS`: meta hash, history stream, `born`, `chg`, `opn`, and for a subscribe's
/// read the channel's interest hash, whose read also registers this node's interest
/// (`ARGV[5]`, its field; `ARGV[6]`, `interest_ttl` ms) in the same step: what the read does
/// not hold reaches the node's inbox. `ARGV[1]`: the first entry id to read (`` for the
/// newest), `ARGV[2]`: how many at most (one more is read to tell a cut-short read),
/// `ARGV[3]`/`ARGV[4]`: the message and text key prefixes (see `streams_lua`).
///
/// Answers the epoch, the seq, Redis time, the entries, `born`, the floor `f`, whether the
/// history stream exists, and the states of messages with ids: of those among the entries,
/// of those published up to `since` and changed after it, or without `since` of the open
/// streams, each `{seq, id, status, stream, data replaced, last, touched, text, data
/// published}`; and how many states named by `chg` or `opn` were gone.
pub(super) const READ_LUA: &str = r"
if KEYS[6] then
  redis.call('HSET', KEYS[6], ARGV[5], now_ms() + tonumber(ARGV[6]))
end
local e = redis.call('HGET', KEYS[1], 'e')
local s, f, exists = 0, 0, 0
local entries, states, lost = {}, {}, 0
if e then
  s = redis.call('HGET', KEYS[1], 's')
  f = redis.call('HGET', KEYS[1], 'f') or 0
  exists = redis.call('EXISTS', KEYS[2])
  local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
  -- Plain messages dropped from history are below the oldest entry kept.
  if oldest and entry_seq(oldest) - 1 > tonumber(f) then f = entry_seq(oldest) - 1 end
  local limit = tonumber(ARGV[2]) + 1
  if ARGV[1] == '' then
    entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', limit)
  else
    entries = redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', limit)
  end
  local seen = {}
  local function add_state(seq, published)
    if seen[seq] then return true end
    seen[seq] = true
    local kv = redis.call('HGETALL', ARGV[3] .. e .. ' ' .. seq)
    if #kv == 0 then return false end
    local m = {}
    for i = 1, #kv - 1, 2 do m[kv[i]] = kv[i + 1] end
    local text = false
    if m['k'] == '1' and m['st'] ~= 'deleted' then
      text = redis.call('GET', ARGV[4] .. e .. ' ' .. seq) or ''
    end
    if not published then
      local got = redis.call('XRANGE', KEYS[2], seq .. '-0', seq .. '-0')[1]
      if not got then return false end
      published = entry_fields(got)['d']
    end
    table.insert(states, {seq, m['i'], m['st'], m['k'] or '', m['d'] or false, m['l'] or false,
      m['t'], text, published or ''})
    return true
  end
  for _, entry in ipairs(entries) do
    local fields = entry_fields(entry)
    if fields['m'] then add_state(entry_seq(entry), fields['d']) end
  end
  local others
  if ARGV[1] == '' then
    others = redis.call('ZRANGE', KEYS[5], 0, -1)
  else
    local since = entry_seq({ARGV[1]}) - 1
    others = {}
    for _, seq in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '(' .. since, '+inf')) do
      if tonumber(seq) <= since then table.insert(others, seq) end
    end
  end
  for _, seq in ipairs(others) do
    if not add_state(tonumber(seq), nil) then lost = lost + 1 end
  end
else
  e = ''
end
return {e, s, now_ms(), entries, redis.call('GET', KEYS[3]) or '', f, exists, states, lost}
";

/// Records when the partition's keys began (`sb:{sb:P}:born`, Redis time in ms), unless
/// they already have, and answers it: run by every node when it connects (a new value means
/// Redis lost its data since the last connection), and inline by the publish that creates a
/// channel, so that the key exists before any read a node answers.
pub(super) const BORN_LUA: &str = r"
local t = redis.call('TIME')
redis.call('SET', KEYS[1], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), 'NX')
return redis.call('GET', KEYS[1])
";

/// Epochs below this are not drawn at random: such an epoch is the Redis time (ms) at which
/// a read found the channel without state (the *absent epoch* a subscriber of a channel that
/// never had a message is given). Random epochs are drawn at or above it.
pub(super) const ABSENT_EPOCH_LIMIT: u64 = 1 << 48;

/// A random epoch for a channel a publish creates, never one that could be taken for an
/// absent epoch.
pub(super) fn random_epoch() -> u64 {
    rand::random::<u64>() | (1 << 63)
}

impl Inner {
    pub(super) fn state_ttl_ms(&self) -> u64 {
        millis(self.settings.channel_state_ttl)
    }

    /// How long `channel`'s history keeps a message (its namespace's `history_ttl`, or
    /// `history.ttl`), in ms.
    pub(super) fn history_ttl_ms(&self, channel: &ChannelName) -> u64 {
        millis(self.hub.history_limit(channel.as_str()).ttl)
    }

    /// How many messages `channel`'s history keeps (its namespace's `history_size`, or
    /// `history.size`).
    pub(super) fn history_size(&self, channel: &ChannelName) -> usize {
        self.hub.history_limit(channel.as_str()).size
    }

    pub(super) fn bus_max_age_ms(&self) -> u64 {
        millis(self.settings.bus_max_age)
    }

    pub(super) async fn publish(
        &self,
        channel: &ChannelName,
        data: &str,
    ) -> Result<Offset, BusError> {
        let mut conn = self.conn()?;
        let keys = self.channel_keys(channel);
        let depth = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        telemetry::redis_pipeline_depth(depth);
        let mut invocation = keys.writing(&self.publish_script);
        invocation
            .arg(data)
            .arg(format!("{:016x}", random_epoch()))
            .arg(self.history_size(channel))
            .arg(self.state_ttl_ms())
            .arg(self.settings.bus_maxlen)
            .arg(channel.as_str())
            .arg(self.history_ttl_ms(channel))
            .arg(self.bus_max_age_ms())
            .arg(inbox_prefix(keys.partition))
            .arg(self.interest_ttl_ms())
            .arg(&keys.message_prefix)
            .arg(&keys.text_prefix)
            .arg(millis(self.settings.streams.dedupe_window));
        let result = invocation.invoke_async::<(String, u64)>(&mut conn).await;
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok((epoch, seq)) => Ok(Offset {
                epoch: parse_epoch(&epoch)
                    .ok_or(BusError::BadReply("redis returned a bad epoch"))?,
                seq,
            }),
            Err(err) => Err(self.failed("publish", &err)),
        }
    }

    /// Runs the read script: the channel's epoch and seq, Redis time, and history entries
    /// after `since` (or the newest `limit`). Writes nothing about the channel, so a read of
    /// a channel that never had a message costs Redis no memory; a subscribe's read
    /// (`subscribing`) registers this node's interest in it when it reads its inbox. A read
    /// is safe to repeat, so one that finds the connection broken waits briefly for the
    /// keeper's new one and tries once more.
    pub(super) async fn read(
        &self,
        channel: &ChannelName,
        since: Option<Offset>,
        limit: usize,
        subscribing: bool,
    ) -> Result<ChannelRead, BusError> {
        let subscribing = subscribing && self.reads_inbox();
        match self.read_once(channel, since, limit, subscribing).await {
            Err(BusError::Failed) => {
                let deadline = Instant::now() + self.settings.publish_timeout;
                while self.conn.load().is_none() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                self.read_once(channel, since, limit, subscribing).await
            }
            other => other,
        }
    }

    async fn read_once(
        &self,
        channel: &ChannelName,
        since: Option<Offset>,
        limit: usize,
        subscribing: bool,
    ) -> Result<ChannelRead, BusError> {
        let mut conn = self.conn()?;
        let keys = self.channel_keys(channel);
        let start = since.map_or(String::new(), |since| format!("{}-0", since.seq + 1));
        let mut invocation = self.read_script.key(&keys.meta);
        invocation
            .key(&keys.hist)
            .key(&keys.born)
            .key(&keys.chg)
            .key(&keys.opn)
            .arg(start)
            .arg(limit.max(1))
            .arg(&keys.message_prefix)
            .arg(&keys.text_prefix);
        if subscribing {
            invocation
                .key(&keys.interest)
                .arg(self.inbox_name())
                .arg(self.interest_ttl_ms());
        }
        let answer = invocation.invoke_async::<Value>(&mut conn).await;
        if subscribing {
            // Once the script ran (or may have, on an error): a renewal that ran meanwhile
            // would otherwise count the interest it had not written yet as lost. The hub
            // holds the channel (the subscribe's pin) from before the script to after this.
            self.interest[keys.partition as usize]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(channel.clone());
        }
        let value = answer.map_err(|err| self.failed("read", &err))?;
        let mut read = ChannelRead::parse(value, since, self.state_ttl_ms())
            .ok_or(BusError::BadReply("redis returned a bad reply"))?;
        if read.entries.len() > limit.max(1) {
            read.cut_at = read.entries.pop().map(|entry| entry.seq);
            read.entries.truncate(limit.max(1));
            read.truncated = true;
        }
        // The stream is trimmed by age only when published to: drop what aged out since.
        let oldest_ms = read.now_ms.saturating_sub(self.history_ttl_ms(channel));
        let states = &read.states;
        let touched = |entry: &ReadEntry| {
            states
                .iter()
                .find(|state| entry.with_id && state.seq == entry.seq)
                .map_or(entry.time_ms, |state| state.touched_ms)
        };
        let before = read.entries.len();
        read.entries.retain(|entry| touched(entry) >= oldest_ms);
        read.aged_out = read.entries.len() < before;
        if since.is_none() {
            read.entries.reverse();
        }
        Ok(read)
    }
}

pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
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
