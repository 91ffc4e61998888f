-- A call on a tier ended: a transient failure (5xx, connection, timeout) counts toward opening the tier's
-- circuit; a success closes it. Open, nobody calls until `cool`; then one probe call at a time (half-open):
-- its success closes the circuit, its failure opens it again for twice as long (up to the maximum).
-- KEYS[1] the tier's limiter state hash
-- ARGV[1] 'ok' | 'fail', ARGV[2] the caller's probe token, ARGV[3] consecutive failures that open it,
-- ARGV[4] first open period (ms), ARGV[5] longest open period (ms)
-- Returns the open period just set (ms), 0 when the circuit did not open, -1 when it closed.
local s = redis.call('HMGET', KEYS[1], 'circ', 'probe', 'cback', 'cfail')
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
if ARGV[1] == 'ok' then
  if s[1] == 'open' then
    redis.call('HDEL', KEYS[1], 'circ', 'probe', 'probe_until', 'cback', 'cfail')
    return -1
  end
  if tonumber(s[4] or '0') > 0 then redis.call('HDEL', KEYS[1], 'cfail') end
  return 0
end
if s[1] == 'open' and s[2] ~= ARGV[2] then return 0 end   -- a call from before the circuit opened
local fails = redis.call('HINCRBY', KEYS[1], 'cfail', 1)
if s[1] ~= 'open' and fails < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], math.max(120000, redis.call('PTTL', KEYS[1])))
  return 0
end
local back = tonumber(ARGV[4])
if s[1] == 'open' then back = math.min(tonumber(ARGV[5]), tonumber(s[3] or ARGV[4]) * 2) end
local cool = math.max(tonumber(redis.call('HGET', KEYS[1], 'cool') or '0'), now + back)
redis.call('HSET', KEYS[1], 'circ', 'open', 'cback', back, 'cool', string.format('%.3f', cool))
redis.call('HDEL', KEYS[1], 'probe', 'probe_until')
redis.call('PEXPIRE', KEYS[1], math.ceil(cool - now) + 600000)
return back
