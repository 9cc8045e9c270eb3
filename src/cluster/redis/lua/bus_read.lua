
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
