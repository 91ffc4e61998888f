-- Before calling a tier: is the job still to do here, and does the call fit the budget?
-- KEYS[1] jobs hash, KEYS[2] batch hash
-- ARGV[1] job id, ARGV[2] tier index (0-based), ARGV[3] cost to reserve (nano-USD)
-- Returns 0 go, 1 already final, 2 this tier was already counted (redelivery), 3 budget exhausted.
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local _, _, flags, done = string.match(cur, '^(%d+):(%d+):([01]*):(.)$')
  if done == 'd' then return 1 end
  local i = tonumber(ARGV[2]) + 1
  if string.sub(flags, i, i) == '1' then return 2 end
end
local reserve = tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[2], 'budget', 'cost', 'reserved')
local budget = tonumber(b[1] or '0')
if budget > 0 and tonumber(b[2] or '0') + tonumber(b[3] or '0') + reserve > budget then
  return 3
end
if reserve > 0 then redis.call('HINCRBY', KEYS[2], 'reserved', reserve) end
return 0
