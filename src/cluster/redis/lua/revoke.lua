-- POST /v1/revoke: takes one revocation into the cluster's list and logs the change.
--
-- KEYS: [1] revoked tokens (zset: jti -> until), [2] revoked users (zset: user -> until),
--       [3] users' issued_before (hash: user -> Unix seconds), [4] the change log (stream),
--       [5] the change counter.
-- ARGV: [1] kind ('t': a token, 'u': a user), [2] the jti or the user, [3] until (Unix s),
--       [4] issued_before (users; '0' for tokens), [5] now (Unix s), [6] the cap of each
--       kind, [7] the log's length.
--
-- Ended entries are removed first (at most 1000 users a call, each with its hash field).
-- Changes merge: the later `until` and the later `issued_before` win, so that the list is
-- the same whatever order nodes apply the log in.
--
-- Answers {0} when the list of that kind is full, else {1, until, issued_before, seq}: what
-- is held now, and the change's number in the log (each is one more than the last, so a
-- reader that finds a number skipped knows it missed changes).
local tokens, users, issued, log, counter = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local kind, id, now = ARGV[1], ARGV[2], tonumber(ARGV[5])

redis.call('ZREMRANGEBYSCORE', tokens, '-inf', now)
local ended = redis.call('ZRANGEBYSCORE', users, '-inf', now, 'LIMIT', 0, 1000)
if #ended > 0 then
  redis.call('HDEL', issued, unpack(ended))
  redis.call('ZREM', users, unpack(ended))
end

local set = tokens
if kind == 'u' then set = users end
if not redis.call('ZSCORE', set, id) and redis.call('ZCARD', set) >= tonumber(ARGV[6]) then
  return {0}
end
redis.call('ZADD', set, 'GT', ARGV[3], id)
local before = '0'
if kind == 'u' then
  before = ARGV[4]
  local held = redis.call('HGET', issued, id)
  if held and tonumber(held) > tonumber(before) then before = held end
  redis.call('HSET', issued, id, before)
end
local until_held = redis.call('ZSCORE', set, id)
local seq = redis.call('INCR', counter)
redis.call('XADD', log, 'MAXLEN', '~', ARGV[7], '*',
  'k', kind, 'i', id, 'x', until_held, 'b', before, 's', seq)
return {1, until_held, before, seq}
