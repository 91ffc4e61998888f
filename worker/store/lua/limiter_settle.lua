-- A call on a tier ended: free its in-flight slot and correct the tokens bucket to what it really used.
-- KEYS[1] state hash, KEYS[2] leases sorted set
-- ARGV[1] tokens bucket capacity, ARGV[2] its refill per ms (0: no tpm limit),
-- ARGV[3] used minus reserved tokens (negative: refund, positive: overshoot debited),
-- ARGV[4] lease id ('' when the tier has no in-flight cap), ARGV[5] how long the call took (ms)
local t_cap, t_rate, delta = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if ARGV[4] ~= '' then
  redis.call('ZREM', KEYS[2], ARGV[4])
  local dur = tonumber(redis.call('HGET', KEYS[1], 'dur') or ARGV[5])
  redis.call('HSET', KEYS[1], 'dur', string.format('%.3f', dur * 0.8 + tonumber(ARGV[5]) * 0.2))
end
if t_rate > 0 and delta ~= 0 then
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
  local s = redis.call('HMGET', KEYS[1], 'tl', 'tt')
  local tl = t_cap
  if s[1] then tl = math.min(t_cap, tonumber(s[1]) + (now - tonumber(s[2])) * t_rate) end
  tl = math.min(t_cap, tl - delta)
  redis.call('HSET', KEYS[1], 'tl', string.format('%.17g', tl), 'tt', string.format('%.3f', now))
end
redis.call('PEXPIRE', KEYS[1], math.max(120000, redis.call('PTTL', KEYS[1])))
return 1
