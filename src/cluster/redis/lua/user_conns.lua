-- limits.max_connections_per_user: counts a new connection as its user's across the
-- cluster, making room or refusing it.
--
-- KEYS: [1] the user's connections (sorted set: `<node>:<incarnation>:<conn_id>` -> when it
--       was counted, Redis ms).
-- ARGV: [1] the new connection's member, [2] the most the user may hold, [3] 'oldest' or
--       'newest' (which one goes over it), [4] stale (ms), [5] the key's lifetime (ms),
--       [6..] the processes (`<node>:<incarnation>`) the caller knows to be alive.
--
-- A member of a process not known to be alive is a dead process's (removed) when another
-- process runs under its node id now, or when it was counted more than `stale` ago (a
-- process that old would be known); a younger one may be a process that started since the
-- caller last read the registry, and still counts.
--
-- Answers {1, held, victims...} when the connection is counted (`held`: the user's other
-- connections counted; `victims`: the members removed to make room, oldest first, whose
-- connections the caller closes), {0, held} when it is refused.
local key, member = KEYS[1], ARGV[1]
local max, refuse, stale, ttl = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), ARGV[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function parent(name) return string.match(name, '^(.*):[^:]*$') or '' end

local live, live_nodes = {}, {}
for i = 6, #ARGV do
  live[ARGV[i]] = true
  live_nodes[parent(ARGV[i])] = true
end

local held = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
local kept = {}
for i = 1, #held, 2 do
  local m, since = held[i], tonumber(held[i + 1])
  local process = parent(m)
  if not live[process] and (live_nodes[parent(process)] or now - since > stale) then
    redis.call('ZREM', key, m)
  elseif m ~= member then
    kept[#kept + 1] = m
  end
end

local answer = {1, #kept}
if #kept >= max then
  if refuse == 'newest' then return {0, #kept} end
  for i = 1, #kept - max + 1 do
    redis.call('ZREM', key, kept[i])
    answer[#answer + 1] = kept[i]
  end
end
redis.call('ZADD', key, now, member)
redis.call('PEXPIRE', key, ttl)
return answer
