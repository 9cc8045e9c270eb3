
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function nodes(key, keep, memo_ttl)
  local all = redis.call('HGETALL', key)
  local n = 0
  for i = 1, #all, 2 do
    local field, value = all[i], all[i + 1]
    local mark = string.sub(field, 1, 1)
    if mark == '@' then
      local at = tonumber(string.match(value, ':(%d+)$')) or 0
      if field ~= keep and at + memo_ttl < now then redis.call('HDEL', key, field) end
    elseif mark ~= '#' then
      n = n + 1
    end
  end
  return n
end
local function next_seq(key)
  local seq = math.max(now * 1000, (tonumber(redis.call('HGET', key, '#')) or 0) + 1)
  local text = string.format('%d', seq)
  redis.call('HSET', key, '#', text)
  return text
end
