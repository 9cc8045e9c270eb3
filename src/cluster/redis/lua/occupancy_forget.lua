
local dead, dead_inc = ARGV[1], ARGV[2]
local memo_ttl = tonumber(ARGV[5])
local record = '@' .. dead
local tag = 'f' .. dead_inc .. '/' .. ARGV[3] .. '/' .. ARGV[4] .. ':'
local out = {}
for i = 2, #KEYS do
  local key = KEYS[i]
  local held = redis.call('HGET', key, record) or ''
  if string.sub(held, 1, #tag) == tag then
    out[i - 1] = string.match(string.sub(held, #tag + 1), '^(%w*):') or ''
  elseif redis.call('HGET', key, dead) == dead_inc then
    local before = nodes(key, record, memo_ttl)
    redis.call('HDEL', key, dead)
    local result = ''
    if before == 1 then
      result = 'v' .. next_seq(key)
      redis.call('PEXPIRE', key, memo_ttl)
    end
    redis.call('HSET', key, record, tag .. result .. ':' .. now)
    out[i - 1] = result
  else
    out[i - 1] = ''
  end
  redis.call('SREM', KEYS[1], ARGV[4 + i])
end
return out
