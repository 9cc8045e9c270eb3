
local node, inc, batch = ARGV[1], ARGV[2], tonumber(ARGV[3])
local memo_ttl = tonumber(ARGV[4])
local memo_field = '@' .. node
local out = {}
for i = 2, #KEYS do
  local key = KEYS[i]
  local op, channel = ARGV[2 * i + 1], ARGV[2 * i + 2]
  local m_inc, m_batch, m_result = string.match(redis.call('HGET', key, memo_field) or '',
    '^(%d+):(%d+):(%w*):')
  if m_inc == inc and tonumber(m_batch) == batch then
    out[i - 1] = m_result
  elseif m_inc == inc and tonumber(m_batch) > batch then
    out[i - 1] = ''
  else
    local before = nodes(key, memo_field, memo_ttl)
    local had = redis.call('HEXISTS', key, node) == 1
    local after = before
    if op == '+' then
      redis.call('HSET', key, node, inc)
      redis.call('SADD', KEYS[1], channel)
      if not had then after = before + 1 end
    else
      redis.call('HDEL', key, node)
      redis.call('SREM', KEYS[1], channel)
      if had then after = before - 1 end
    end
    local result = ''
    if before == 0 and after > 0 then
      result = 'o' .. next_seq(key)
    elseif before > 0 and after == 0 then
      result = 'v' .. next_seq(key)
    end
    redis.call('HSET', key, memo_field, inc .. ':' .. ARGV[3] .. ':' .. result .. ':' .. now)
    if after == 0 then
      redis.call('PEXPIRE', key, memo_ttl)
    else
      redis.call('PERSIST', key)
    end
    out[i - 1] = result
  end
end
return out
