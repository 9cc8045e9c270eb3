
local node = ARGV[1]
local ttl = tonumber(ARGV[4])
local call = ARGV[#ARGV - 1]
local lost_since = tonumber(ARGV[#ARGV]) or 0
local recovered = {}
if lost_since > 0 then
  local memo = redis.call('HGET', KEYS[5], node)
  local inc, id, list = string.match(memo or '', '^(%d+):(%d+):(.*)$')
  if inc == ARGV[2] and (tonumber(id) or 0) >= lost_since then
    local ok, kept = pcall(cjson.decode, list)
    if ok and type(kept) == 'table' then recovered = kept end
  end
end
local function settle()
  local out = {}
  for _, crossing in ipairs(recovered) do table.insert(out, crossing) end
  for _, crossing in ipairs(crossings()) do table.insert(out, crossing) end
  local encoded = '[]'
  if #out > 0 then encoded = cjson.encode(out) end
  redis.call('HSET', KEYS[5], node, ARGV[2] .. ':' .. call .. ':' .. encoded)
  redis.call('PEXPIRE', KEYS[5], 2 * ttl)
  return out
end
local now = now_ms()
local departed = {}
prune(now, nil, departed)
local buried = redis.call('HEXISTS', KEYS[4], '~' .. node) == 1
local known = redis.call('HEXISTS', KEYS[4], node) == 1
  and redis.call('HGET', KEYS[4], '!' .. node) == ARGV[2]
local outcome = 0
if ARGV[6] == '1' then
  drop(node, nil, '')
  if buried then outcome = 2 end
elseif ARGV[5] == '1' and not known then
  return {departed, settle(), 1}
end
local joins = tonumber(ARGV[7])
local i = 8
for _ = 1, joins do
  if redis.call('ZADD', KEYS[1], 'NX', 0, ARGV[i]) == 1 then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
    touch(ARGV[i + 1])
    redis.call('HINCRBY', KEYS[3], ARGV[i + 1], 1)
  end
  i = i + 3
end
while i < #ARGV - 2 do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then forget(ARGV[i], ARGV[i + 1]) end
  i = i + 2
end
if #redis.call('ZRANGEBYLEX', KEYS[1], '[' .. node .. ' ', '(' .. node .. '!', 'LIMIT', 0, 1) > 0 then
  redis.call('HSET', KEYS[4], node, string.format('%d', now + ttl), '!' .. node, ARGV[2])
  redis.call('HDEL', KEYS[4], '~' .. node)
  expire(ttl)
else
  redis.call('HDEL', KEYS[4], node, '!' .. node)
end
return {departed, settle(), outcome}
