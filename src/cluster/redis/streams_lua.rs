//! The Lua that keeps messages with ids in Redis (see `docs/streams.md`, "Cluster"): the
//! history trimming shared with the publish script, and the operation script.
//!
//! Keys of a channel beside its meta hash and history stream (all in its partition's slot;
//! `<e>` is the channel's epoch, so that an instance created after one expired never meets
//! the keys of the one before):
//! - `ids:<channel>`: hash, `message_id` -> the seq of its publish; `idt:<channel>`: sorted
//!   set, `message_id` by its publish time (ms), for `streams.dedupe_window`.
//! - `m:<channel> <e> <seq>`: hash, the state of the message published at `seq` while
//!   history holds it: `i` id, `o` owner, `st` status, `k` `1` for a stream, `d` data once a
//!   finish or an update replaced it, `l` the seq of its last operation, `t` when it was last
//!   touched (ms). `x:<channel> <e> <seq>`: a stream's text (`APPEND`ed).
//! - `chg:<channel>`: sorted set, the seqs of messages changed since their publish, by `l`.
//! - `opn:<channel>`: sorted set, the seqs of open streams, by `t`; `sb:{sb:P}:open`: the
//!   partition's open streams (`<channel> <message_id>`), by `t`, which every node's sweep
//!   reads to abandon those idle past `streams.idle_timeout`.
//! - The meta hash's `f`, the floor: the greatest seq whose change history no longer holds
//!   (a dropped message's last operation). A resume from below it is not recoverable. `i`:
//!   the channel has had messages with ids, so `trim_history` trims it (see `PUBLISH_LUA`).

/// Shared by the publish, operation and read scripts: `now_ms`, and `trim_history`, which drops
/// history entries beyond `history.size` (oldest first) and older than `history.ttl`,
/// raising the floor past each and dropping a dropped message's state.
pub(super) const HISTORY_LUA: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function entry_fields(entry)
  local fields = {}
  local kv = entry[2]
  for i = 1, #kv - 1, 2 do fields[kv[i]] = kv[i + 1] end
  return fields
end

local function entry_seq(entry)
  return tonumber(string.match(entry[1], '^(%d+)'))
end

-- ch: {meta, hist, ids, idt, chg, opn, open, mp, xp, name, window}
local function drop_entry(ch, entry, now)
  local fields = entry_fields(entry)
  local seq = entry_seq(entry)
  local last = seq
  local id = fields['m']
  if id then
    local key = ch.mp .. seq
    local l = redis.call('HGET', key, 'l')
    if l then last = tonumber(l) end
    redis.call('DEL', key, ch.xp .. seq)
    redis.call('ZREM', ch.chg, seq)
    if redis.call('ZREM', ch.opn, seq) == 1 then
      redis.call('ZREM', ch.open, ch.name .. ' ' .. id)
    end
    if now - tonumber(fields['t']) >= ch.window then
      redis.call('HDEL', ch.ids, id)
      redis.call('ZREM', ch.idt, id)
    end
  end
  redis.call('XDEL', ch.hist, entry[1])
  if last > tonumber(redis.call('HGET', ch.meta, 'f') or '0') then
    redis.call('HSET', ch.meta, 'f', last)
  end
end

-- When an entry was last touched: a message with an id counts from its last operation.
local function touched(ch, entry)
  local fields = entry_fields(entry)
  if fields['m'] then
    local t = redis.call('HGET', ch.mp .. entry_seq(entry), 't')
    if t then return tonumber(t) end
  end
  return tonumber(fields['t'] or '0')
end

local function trim_history(ch, size, oldest_ms, now)
  local over = redis.call('XLEN', ch.hist) - size
  if over > 0 then
    for _, entry in ipairs(redis.call('XRANGE', ch.hist, '-', '+', 'COUNT', over)) do
      drop_entry(ch, entry, now)
    end
  end
  while true do
    local oldest = redis.call('XRANGE', ch.hist, '-', '+', 'COUNT', 1)[1]
    if not oldest or touched(ch, oldest) >= oldest_ms then return end
    drop_entry(ch, oldest, now)
  end
end
";

/// One operation on a message with an id (a publish with `message_id`, append, finish,
/// update, delete, abandon): checks it against the message's state here, assigns the seq,
/// changes the state, and appends one bus entry routed like a publish (fields `c e s t`,
/// `o` the operation, `m` the id, `d` data, `x` text, `k` stream, `r` reason).
///
/// `KEYS`: meta, hist, bus, born, interest, ids, idt, chg, opn, the partition's open set.
/// `ARGV`: 1 operation (`p a f u x b`), 2 id, 3 data, 4 `1` when data is given, 5 text, 6 `1`
/// when text is given, 7 `1` for a stream, 8 owner (`` for a backend), 9 edit rule (`any
/// own none`), 10 abandon reason, 11 a fresh epoch, 12 `history.size`, 13
/// `channel_state_ttl` ms, 14 `bus_maxlen`, 15 channel, 16 `history.ttl` ms, 17 `bus_max_age`
/// ms, 18 inbox prefix, 19 `interest_ttl` ms, 20 the message key prefix (`...:m:<channel> `),
/// 21 the text key prefix, 22 `max_text_bytes`, 23 `max_open_per_channel`, 24
/// `idle_timeout` ms, 25 `dedupe_window` ms.
///
/// Answers `{'+', epoch, seq}`, `{'=', epoch, seq}` for a duplicate (nothing done), or
/// `{'!', code, detail}` when refused.
pub(super) const OP_LUA: &str = r"
local now = now_ms()
local kind, id = ARGV[1], ARGV[2]
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  if kind ~= 'p' then
    -- An abandon of a stream whose channel state is gone: no longer open anywhere.
    if kind == 'b' then redis.call('ZREM', KEYS[10], ARGV[15] .. ' ' .. id) end
    return {'!', 'not_found', ''}
  end
  e = ARGV[11]
  redis.call('DEL', KEYS[2], KEYS[6], KEYS[7], KEYS[8], KEYS[9])
  redis.call('HSET', KEYS[1], 'e', e, 's', 0)
  redis.call('SET', KEYS[4], now, 'NX')
end
local ch = {meta = KEYS[1], hist = KEYS[2], ids = KEYS[6], idt = KEYS[7], chg = KEYS[8],
  opn = KEYS[9], open = KEYS[10], mp = ARGV[20] .. e .. ' ', xp = ARGV[21] .. e .. ' ',
  name = ARGV[15], window = tonumber(ARGV[25])}
local history_ttl = tonumber(ARGV[16])
local has_data, has_text = ARGV[4] == '1', ARGV[6] == '1'
local fields = {'o', kind, 'm', id}
local s
local seq = tonumber(redis.call('HGET', ch.ids, id) or '0')
local key = ch.mp .. seq
local held = seq > 0 and redis.call('EXISTS', key) == 1
if kind == 'p' then
  if seq > 0 then
    local at = tonumber(redis.call('ZSCORE', ch.idt, id) or '0')
    if held or now - at < ch.window then return {'=', e, seq} end
  end
  local stream = ARGV[7] == '1'
  if stream then
    -- Streams whose keys expired with history are no longer open.
    redis.call('ZREMRANGEBYSCORE', ch.opn, '-inf', now - history_ttl)
    if redis.call('ZCARD', ch.opn) >= tonumber(ARGV[23]) then
      return {'!', 'too_many_open', ARGV[23]}
    end
  end
  s = redis.call('HINCRBY', KEYS[1], 's', 1)
  key = ch.mp .. s
  local entry = {'d', ARGV[3], 't', now, 'm', id}
  local status = 'finished'
  if stream then
    status = 'open'
    table.insert(entry, 'k')
    table.insert(entry, '1')
    redis.call('ZADD', ch.opn, now, s)
    redis.call('ZADD', ch.open, now, ch.name .. ' ' .. id)
    table.insert(fields, 'k')
    table.insert(fields, '1')
  end
  redis.call('XADD', ch.hist, string.format('%d-0', s), unpack(entry))
  redis.call('HSET', key, 'i', id, 'o', ARGV[8], 'st', status, 'k', stream and '1' or '', 't', now)
  redis.call('HSET', ch.ids, id, s)
  -- From now on the channel's history is trimmed by trim_history.
  redis.call('HSET', KEYS[1], 'i', 1)
  redis.call('ZADD', ch.idt, now, id)
  -- Ids past the window whose messages history no longer holds are forgotten.
  for _, old in ipairs(redis.call('ZRANGEBYSCORE', ch.idt, '-inf', now - ch.window, 'LIMIT', 0, 4)) do
    local old_seq = redis.call('HGET', ch.ids, old)
    if not old_seq or redis.call('EXISTS', ch.mp .. old_seq) == 0 then
      redis.call('HDEL', ch.ids, old)
    end
    redis.call('ZREM', ch.idt, old)
  end
  table.insert(fields, 'd')
  table.insert(fields, ARGV[3])
else
  if not held then
    if kind == 'b' then redis.call('ZREM', ch.open, ch.name .. ' ' .. id) end
    return {'!', 'not_found', ''}
  end
  local m = {}
  local kv = redis.call('HGETALL', key)
  for i = 1, #kv - 1, 2 do m[kv[i]] = kv[i + 1] end
  local rule = ARGV[9]
  if rule == 'none' then return {'!', 'editing_off', ''} end
  if rule == 'own' and m['o'] ~= ARGV[8] then return {'!', 'not_yours', ''} end
  local status, stream = m['st'], m['k'] == '1'
  local max_text = tonumber(ARGV[22])
  if kind == 'a' then
    if status ~= 'open' then return {'!', 'not_open', status} end
    if not stream then return {'!', 'not_stream', ''} end
    if redis.call('STRLEN', ch.xp .. seq) + #ARGV[5] > max_text then
      return {'!', 'text_too_large', ARGV[22]}
    end
  elseif kind == 'f' or kind == 'b' then
    if status ~= 'open' then
      if kind == 'b' then redis.call('ZREM', ch.open, ch.name .. ' ' .. id) end
      return {'!', 'not_open', status}
    end
    if kind == 'b' and ARGV[10] == 'idle' and now - tonumber(m['t']) < tonumber(ARGV[24]) then
      -- Touched since the sweep read it: due again when idle from its last touch.
      redis.call('ZADD', ch.open, m['t'], ch.name .. ' ' .. id)
      return {'!', 'not_idle', ''}
    end
  elseif kind == 'u' then
    if status == 'deleted' then return {'!', 'not_open', status} end
    if has_text then
      if not stream then return {'!', 'not_stream', ''} end
      if #ARGV[5] > max_text then return {'!', 'text_too_large', ARGV[22]} end
    end
  elseif kind == 'x' then
    if status == 'deleted' then return {'=', e, tonumber(m['l'] or seq)} end
  end
  s = redis.call('HINCRBY', KEYS[1], 's', 1)
  if kind == 'a' then
    redis.call('APPEND', ch.xp .. seq, ARGV[5])
    table.insert(fields, 'x')
    table.insert(fields, ARGV[5])
  elseif kind == 'f' then
    status = 'finished'
  elseif kind == 'b' then
    status = 'abandoned'
    table.insert(fields, 'r')
    table.insert(fields, ARGV[10])
  elseif kind == 'u' and has_text then
    redis.call('SET', ch.xp .. seq, ARGV[5])
    table.insert(fields, 'x')
    table.insert(fields, ARGV[5])
  elseif kind == 'x' then
    status = 'deleted'
    redis.call('HDEL', key, 'd')
    redis.call('DEL', ch.xp .. seq)
  end
  if has_data and (kind == 'f' or kind == 'u') then
    redis.call('HSET', key, 'd', ARGV[3])
    table.insert(fields, 'd')
    table.insert(fields, ARGV[3])
  end
  redis.call('HSET', key, 'st', status, 'l', s, 't', now)
  redis.call('ZADD', ch.chg, s, seq)
  if status == 'open' then
    redis.call('ZADD', ch.opn, now, seq)
    redis.call('ZADD', ch.open, now, ch.name .. ' ' .. id)
  elseif m['st'] == 'open' then
    redis.call('ZREM', ch.opn, seq)
    redis.call('ZREM', ch.open, ch.name .. ' ' .. id)
  end
end
redis.call('PEXPIRE', key, history_ttl)
redis.call('PEXPIRE', KEYS[2], history_ttl)
-- A stream's text exists from its first append on.
if kind ~= 'p' then redis.call('PEXPIRE', ch.xp .. seq, history_ttl) end
-- The channel's own keys live channel_state_ttl (a day by default): an append renews them
-- only once half of it is gone, saving five writes (each replicated) per token.
if kind ~= 'a' or redis.call('PTTL', KEYS[1]) < tonumber(ARGV[13]) / 2 then
  for _, k in ipairs({KEYS[1], KEYS[6], KEYS[7], KEYS[8], KEYS[9]}) do
    redis.call('PEXPIRE', k, ARGV[13])
  end
end
-- Only a publish adds an entry; what ages meanwhile the next publish drops (reads skip it).
if kind == 'p' then trim_history(ch, tonumber(ARGV[12]), now - history_ttl, now) end
local head = {'c', ARGV[15], 'e', e, 's', s, 't', now}
for _, v in ipairs(fields) do table.insert(head, v) end
local bus_id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[14], '*', unpack(head))
redis.call('XTRIM', KEYS[3], 'MINID', '~', string.format('%d', now - tonumber(ARGV[17])))
route(KEYS[5], ARGV[18], bus_id, ARGV[14], ARGV[19], now, unpack(head))
return {'+', e, s}
";
