
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
