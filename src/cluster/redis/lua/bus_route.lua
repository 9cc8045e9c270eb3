
local function route(interest, prefix, id, maxlen, ttl, now, ...)
  local nodes = redis.call('HGETALL', interest)
  for i = 1, #nodes, 2 do
    if tonumber(nodes[i + 1]) > now then
      local inbox = prefix .. nodes[i]
      redis.pcall('XADD', inbox, 'MAXLEN', '~', maxlen, id, ...)
      redis.call('PEXPIRE', inbox, ttl)
    else
      redis.call('HDEL', interest, nodes[i])
    end
  end
end
