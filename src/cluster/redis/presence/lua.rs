//! The presence scripts (Lua run in Redis): what each key holds and what every script
//! removes before anything else is told at [`COMMON_LUA`].

/// Shared by every script: Redis time, and removing a node's members (all four keys). Every
/// script's `ARGV` starts with this node's id, its incarnation, the Redis time (ms) until
/// which it may judge other nodes departed (0: it may not), and the TTL in ms.
///
/// A channel's `pn` hash holds, per node, `<node>` -> the Redis time (ms) its members expire
/// at; beside it `!<node>` -> the incarnation that wrote them, and for a while after another
/// node removed a node's members for not refreshing them, `~<node>` -> until when (ms) that
/// is remembered (two TTLs), so that the node, if it was only paused, learns that their
/// `leave` was sent and sends `join` when it writes them back. Every value is a number and
/// node ids never start with `!` or `~`, so the scripts of releases before incarnations
/// (which take every field for a node and its value for an expiry) keep working beside
/// these during a rolling upgrade: an incarnation is above 2^47 (a time they never reach)
/// and a tombstone's time is when they drop it.
///
/// Every script removes, before anything else:
/// - this node id's members that another incarnation wrote (the process restarted under the
///   same id: they are ghosts), reason `r`;
/// - when it may judge, the members of other nodes whose expiry passed, reason `e`, leaving
///   a tombstone; a node that is forced out (gone from the registry) is reason `g`.
///
/// Removed members come back as `<reason><member JSON>` for `leave` events.
///
/// Every script also answers, second, the users whose connections on every node together
/// went from none to some (`+<user>`) or from some to none (`-<user>`) in this call: every
/// change of the `pu` hash is made by these scripts, one at a time, so each such crossing
/// is answered to exactly one call of one node (`member_added`, `member_removed`).
pub(super) const COMMON_LUA: &str = r"
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
";

/// ARGV (after the common four): expect (0/1), full (0/1), joins J, then J x (id, user,
/// json), then (id, user) per leave, then this call's number and the number of this node's
/// first call on the channel whose answer was lost since one was answered (0: none).
///
/// The crossings a call answers are also kept in `KEYS[5]` (`pc`: node ->
/// `<incarnation>:<call>:<JSON list>`) until the node's next call: when that one says
/// answers were lost since a call at or before the kept one, the kept crossings are
/// answered again, first (they were never told: a timeout, a dropped link).
///
/// Returns `{departed, crossings, outcome}`: 0 done; 1 not done, because this node's members were not there although `expect` said so (Redis lost them,
/// or another node removed them): write in full; 2 done in full over a tombstone: another
/// node removed this node's members and sent their `leave`, so they need a `join` again.
pub(super) const WRITE_LUA: &str = r"
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
";

/// ARGV (after the common four): cursor ('' from the start), count. Returns
/// `{departed, crossings, ids, jsons}`.
///
/// The members' JSON is read `HMGET` by `HMGET` of at most 1,000 ids: `unpack` puts every id
/// on Lua's C stack, which holds about 8,000, and `presence.max_listed` allows 100,000.
pub(super) const PAGE_LUA: &str = r"
local departed = {}
prune(now_ms(), nil, departed)
local from = '-'
if ARGV[5] ~= '' then from = '(' .. ARGV[5] end
local ids = redis.call('ZRANGEBYLEX', KEYS[1], from, '+', 'LIMIT', 0, tonumber(ARGV[6]))
local jsons = {}
for first = 1, #ids, 1000 do
  local part = redis.call('HMGET', KEYS[2], unpack(ids, first, math.min(first + 999, #ids)))
  for i = 1, #part do jsons[#jsons + 1] = part[i] end
end
return {departed, crossings(), ids, jsons}
";

/// Returns `{departed, crossings, connections, users, own}`: `own` is this node's connections
/// in the store, which the caller replaces with what it holds itself.
pub(super) const STATS_LUA: &str = r"
local departed = {}
prune(now_ms(), nil, departed)
local own = redis.call('ZLEXCOUNT', KEYS[1], '[' .. ARGV[1] .. ' ', '(' .. ARGV[1] .. '!')
return {departed, crossings(), redis.call('ZCARD', KEYS[1]), redis.call('HLEN', KEYS[3]), own}
";

/// ARGV (after the common four): the node gone, or '' to only prune. Returns
/// `{departed, crossings}`.
pub(super) const FORGET_LUA: &str = r"
local departed = {}
local forced = nil
if ARGV[5] ~= '' then forced = ARGV[5] end
prune(now_ms(), forced, departed)
return {departed, crossings()}
";
