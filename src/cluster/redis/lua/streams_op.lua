
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
