
local departed = {}
local forced = nil
if ARGV[5] ~= '' then forced = ARGV[5] end
prune(now_ms(), forced, departed)
return {departed, crossings()}
