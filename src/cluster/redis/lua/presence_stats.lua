
local departed = {}
prune(now_ms(), nil, departed)
local own = redis.call('ZLEXCOUNT', KEYS[1], '[' .. ARGV[1] .. ' ', '(' .. ARGV[1] .. '!')
return {departed, crossings(), redis.call('ZCARD', KEYS[1]), redis.call('HLEN', KEYS[3]), own}
