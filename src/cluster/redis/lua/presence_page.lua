
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
