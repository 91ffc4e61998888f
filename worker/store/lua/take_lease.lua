-- A worker took a job's message from a tier's queue: lease the job to it, once, and reserve its call.
-- KEYS[1] jobs hash, KEYS[2] batch hash, KEYS[3] live hash, KEYS[4] payload hash, KEYS[5] paid hash,
-- KEYS[6] leased set, KEYS[7] the tier's queued set, KEYS[8] the tier's taken counter
-- ARGV[1] job id, ARGV[2] tier index, ARGV[3] the message's sequence number, ARGV[4] lease token,
-- ARGV[5] lease length (ms), ARGV[6] nano-USD reserved per prompt token, ARGV[7] nano-USD reserved per call,
-- ARGV[8] deliveries allowed, ARGV[9] due-set member
-- Returns {code, payload, paid completion, reserved nanos, deliveries}:
--   0 go (leased), 1 already final, 2 stale (this step is done or was never this tier's),
--   3 held by another lease, 4 the call does not fit the budget (leased, reserves nothing),
--   5 the batch is cancelled (leased), 6 delivered too often (leased: poison), 7 no such job in the batch
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return {7} end
local run, line, flags, done = string.match(cur, '^(%d+):(%d+):([01]*):(.):')
if done == 'd' then return {1} end
local seq = tonumber(ARGV[3])
if seq > tonumber(redis.call('GET', KEYS[8]) or '0') then redis.call('SET', KEYS[8], seq) end
local i = tonumber(ARGV[2])
if string.sub(flags, i + 1, i + 1) == '1' then return {2} end
local live = redis.call('HGET', KEYS[3], ARGV[1])
if not live then return {2} end
local step, holder, deliveries, reserved, ptok = string.match(live, '^(%-?%d+)|([^|]*)|(%d+)|(%d+)|(%d+)$')
if tonumber(step) ~= i then return {2} end
if holder ~= '' then return {3} end
deliveries = tonumber(deliveries) + 1
reserved = tonumber(reserved)
local b = redis.call('HMGET', KEYS[2], 'state', 'budget', 'cost', 'reserved')
local code, reserve = 0, 0
if b[1] == 'cancelled' then
  code = 5
elseif deliveries > tonumber(ARGV[8]) then
  code = 6
else
  local budget = tonumber(b[2] or '0')
  if budget > 0 then
    reserve = math.ceil(tonumber(ptok) * tonumber(ARGV[6]) + tonumber(ARGV[7]))
    -- the job's earlier reservation (a redelivery) is replaced, never added to
    if tonumber(b[3] or '0') + tonumber(b[4] or '0') - reserved + reserve > budget then
      code, reserve = 4, 0
    end
  end
end
if reserve ~= reserved then redis.call('HINCRBY', KEYS[2], 'reserved', reserve - reserved) end
redis.call('HSET', KEYS[3], ARGV[1], step .. '|' .. ARGV[4] .. '|' .. deliveries .. '|' .. reserve .. '|' .. ptok)
redis.call('ZREM', KEYS[7], ARGV[9])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZADD', KEYS[6], now + tonumber(ARGV[5]), ARGV[9])
return {code, redis.call('HGET', KEYS[4], ARGV[1]) or '', redis.call('HGET', KEYS[5], ARGV[1]) or '', reserve,
        deliveries}
