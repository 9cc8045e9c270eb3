
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
