-- Client publish rate limits across the cluster (`limits.publishes_per_minute_per_user`,
-- `..._per_address`): the generic cell rate algorithm on one budget, handing out up to
-- `wanted` grants at once (a node's lease, spent locally).
--
-- KEYS: [1] the budget: its theoretical arrival time, in Redis microseconds.
-- ARGV: [1] grants wanted, [2] the interval one grant costs (µs), [3] the burst.
--
-- Answers {granted, retry_after_ms}: `granted` (at most `wanted`, at least 1) and 0, or 0
-- and when one grant will be free. The key lives until the budget is full again.
local wanted, interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local free = math.floor((now + burst * interval - tat) / interval)
if free < 1 then
  return {0, math.ceil((tat + interval - now - burst * interval) / 1000)}
end
local granted = math.min(wanted, free)
tat = tat + granted * interval
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return {granted, 0}
