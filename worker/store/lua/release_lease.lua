-- A worker gives a job back without recording an attempt (it is shutting down): the job waits on the
-- tier's queue again, its reservation released, this delivery not counted against it.
-- KEYS[1] live hash, KEYS[2] batch hash, KEYS[3] leased set, KEYS[4] the tier's queued set
-- ARGV[1] job id, ARGV[2] lease token, ARGV[3] member, ARGV[4] sequence number of the message put back
-- Returns 1 released, 0 the lease was not this token's.
local live = redis.call('HGET', KEYS[1], ARGV[1])
if not live then return 0 end
local step, holder, deliveries, reserved, ptok = string.match(live, '^(%-?%d+)|([^|]*)|(%d+)|(%d+)|(%d+)$')
if holder ~= ARGV[2] then return 0 end
if tonumber(reserved) > 0 then redis.call('HINCRBY', KEYS[2], 'reserved', -tonumber(reserved)) end
redis.call('HSET', KEYS[1], ARGV[1], step .. '||' .. math.max(0, tonumber(deliveries) - 1) .. '|0|' .. ptok)
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[4], tonumber(ARGV[4]), ARGV[3])
return 1
