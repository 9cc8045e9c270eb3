
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local counted = {}
local function touch(user)
  if counted[user] == nil then
    counted[user] = tonumber(redis.call('HGET', KEYS[3], user) or '0') or 0
  end
end
local function crossings()
  local out = {}
  for user, before in pairs(counted) do
    local after = tonumber(redis.call('HGET', KEYS[3], user) or '0') or 0
    if before <= 0 and after > 0 then
      table.insert(out, '+' .. user)
    elseif before > 0 and after <= 0 then
      table.insert(out, '-' .. user)
    end
  end
  return out
end
local function forget(id, user)
  touch(user)
  if redis.call('HINCRBY', KEYS[3], user, -1) <= 0 then redis.call('HDEL', KEYS[3], user) end
  redis.call('HDEL', KEYS[2], id)
end
local function drop(node, departed, why)
  local ids = redis.call('ZRANGEBYLEX', KEYS[1], '[' .. node .. ' ', '(' .. node .. '!')
  for _, id in ipairs(ids) do
    local json = redis.call('HGET', KEYS[2], id)
    local user = ''
    if json then
      local ok, member = pcall(cjson.decode, json)
      if ok and type(member) == 'table' and type(member.user) == 'string' then
        user = member.user
      end
      if departed then table.insert(departed, why .. json) end
    end
    forget(id, user)
    redis.call('ZREM', KEYS[1], id)
  end
  redis.call('HDEL', KEYS[4], node, '!' .. node)
end
local function bury(node, now)
  local keep = 2 * tonumber(ARGV[4])
  redis.call('HSET', KEYS[4], '~' .. node, string.format('%d', now + keep))
  if redis.call('PTTL', KEYS[4]) < keep then redis.call('PEXPIRE', KEYS[4], keep) end
end
local function prune(now, forced, departed)
  if forced and redis.call('HEXISTS', KEYS[4], forced) == 1 then
    drop(forced, departed, 'g')
    bury(forced, now)
  end
  local fields = redis.call('HGETALL', KEYS[4])
  local held = {}
  for i = 1, #fields, 2 do held[fields[i]] = fields[i + 1] end
  for field, value in pairs(held) do
    local mark = string.sub(field, 1, 1)
    if mark == '~' then
      if (tonumber(value) or 0) < now then redis.call('HDEL', KEYS[4], field) end
    elseif mark == '!' then
      if not held[string.sub(field, 2)] then redis.call('HDEL', KEYS[4], field) end
    elseif field == ARGV[1] then
      if held['!' .. field] ~= ARGV[2] then drop(field, departed, 'r') end
    elseif (tonumber(ARGV[3]) or 0) >= now and (tonumber(value) or 0) < now then
      drop(field, departed, 'e')
      bury(field, now)
    end
  end
end
local function expire(ttl)
  for i = 1, 4 do
    if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
  end
end
