-- The provider said 429 (or its headers said the limit is nearly spent): no caller of the tier starts
-- a call until the cooldown ends. A second cooldown keeps whichever of the two ends later.
-- KEYS[1] state hash; ARGV[1] cooldown length (ms)
-- Returns the cooldown left (ms) after this call.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local current = tonumber(redis.call('HGET', KEYS[1], 'cool') or '0')
local until_ms = math.max(current, now + tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'cool', string.format('%.3f', until_ms))
redis.call('PEXPIRE', KEYS[1], math.ceil(until_ms - now) + 120000)
return math.ceil(until_ms - now)
