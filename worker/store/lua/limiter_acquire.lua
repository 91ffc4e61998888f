-- Admit one call to a tier, or say how long to wait. Every process of the cluster shares this state,
-- and the clock is Redis's own, so workers on different machines agree on time.
-- KEYS[1] state hash (rl/rt: requests bucket level and time, tl/tt: tokens bucket, cool, dur),
-- KEYS[2] leases sorted set (lease id -> expiry, ms)
-- ARGV[1] requests bucket capacity, ARGV[2] its refill per ms (0: no rpm limit),
-- ARGV[3] tokens bucket capacity, ARGV[4] its refill per ms (0: no tpm limit), ARGV[5] tokens to reserve,
-- ARGV[6] calls in flight allowed (0: no cap), ARGV[7] lease id, ARGV[8] lease lifetime (ms),
-- ARGV[9] furthest a slot may be booked ahead (ms; further for a call bigger than the tokens bucket), ARGV[10] in-flight refusals this caller already had
-- ARGV[11] this call's probe token, ARGV[12] how long a half-open circuit waits for a probe's result (ms)
-- Returns {admitted, wait_ms, cooldown_left_ms, circuit}:
--   admitted 1: the slot is booked; the caller sleeps wait_ms, then calls (no second round trip)
--   admitted 0: nothing was taken; ask again after wait_ms (cooldown, open circuit, in-flight cap, too far ahead)
--   circuit 1: the tier's circuit is open or half-open (this caller, when admitted, is its probe)
local r_cap, r_rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local t_cap, t_rate, cost = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local max_in_flight = tonumber(ARGV[6])
local max_book = tonumber(ARGV[9])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local s = redis.call('HMGET', KEYS[1], 'cool', 'rl', 'rt', 'tl', 'tt', 'dur', 'circ', 'probe', 'probe_until')
local cool_left = math.max(0, tonumber(s[1] or '0') - now)
local circuit = 0
if s[7] == 'open' then circuit = 1 end
if cool_left > 0 then
  return {0, math.ceil(cool_left), math.ceil(cool_left), circuit}
end
if circuit == 1 then
  -- half-open: one probe call at a time; the others wait for its result
  local probe_left = tonumber(s[9] or '0') - now
  if probe_left > 0 and s[8] ~= ARGV[11] then
    return {0, math.ceil(math.min(probe_left, 500)), 0, 1}
  end
  redis.call('HSET', KEYS[1], 'probe', ARGV[11], 'probe_until', string.format('%.3f', now + tonumber(ARGV[12])))
end
if max_in_flight > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)  -- leases of crashed callers lapse
  if redis.call('ZCARD', KEYS[2]) >= max_in_flight then
    -- a slot frees about every (mean call time / cap); back off from there, never past one call time
    local dur = tonumber(s[6] or '1000')
    local wait = math.min(dur, dur / max_in_flight * 2 ^ tonumber(ARGV[10]))
    return {0, math.ceil(math.max(wait, 5)), 0, circuit}
  end
end

-- Token buckets that may go below zero: a caller books the next free slot and sleeps until it,
-- so waiting threads neither poll nor stampede when a slot frees.
local function level(cap, rate, stored, stamp)
  if not stored then return cap end
  return math.min(cap, tonumber(stored) + (now - tonumber(stamp)) * rate)
end
local wait = 0
local rl, tl
if r_rate > 0 then
  rl = level(r_cap, r_rate, s[2], s[3]) - 1
  if rl < 0 then wait = -rl / r_rate end
end
if t_rate > 0 then
  tl = level(t_cap, t_rate, s[4], s[5]) - cost
  if tl < 0 then wait = math.max(wait, -tl / t_rate) end
end
-- A call bigger than the tokens bucket may book as far ahead as its own size needs from a full
-- bucket (plus the usual horizon); with the plain horizon it would be refused forever.
local horizon = max_book
if t_rate > 0 and cost > t_cap then horizon = max_book + (cost - t_cap) / t_rate end
if wait > horizon then
  return {0, math.ceil(wait - horizon), 0, circuit}
end
local stamp = string.format('%.3f', now)
if rl then redis.call('HSET', KEYS[1], 'rl', string.format('%.17g', rl), 'rt', stamp) end
if tl then redis.call('HSET', KEYS[1], 'tl', string.format('%.17g', tl), 'tt', stamp) end
if rl or tl then   -- idle buckets refill long before this; a longer life (an open circuit's) is kept
  redis.call('PEXPIRE', KEYS[1], math.max(120000, redis.call('PTTL', KEYS[1])))
end
if max_in_flight > 0 then
  local expiry = now + wait + tonumber(ARGV[8])
  redis.call('ZADD', KEYS[2], string.format('%.3f', expiry), ARGV[7])
  local ttl = redis.call('PTTL', KEYS[2])
  if ttl < expiry - now then redis.call('PEXPIRE', KEYS[2], math.ceil(expiry - now)) end
end
return {1, math.ceil(wait), 0, circuit}
