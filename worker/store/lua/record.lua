-- Record one attempt of a leased job, exactly once: count it, release its reservation, and either finalize
-- the job (result record) or move it to the next tier (queued there with a new sequence number).
-- KEYS[1] jobs hash, KEYS[2] batch hash, KEYS[3] the namespace's results stream, KEYS[4] pipeline counters, KEYS[5] live,
-- KEYS[6] payload, KEYS[7] paid, KEYS[8] kept, KEYS[9] leased set, KEYS[10] next tier's queued set,
-- KEYS[11] next tier's sequence counter (KEYS[10..11]: any key when finalizing)
-- ARGV[1] job id, ARGV[2] tier index of the attempt (-1: no call was made), ARGV[3] lease token,
-- ARGV[4] the attempt's cost (nano-USD), ARGV[5] 'final' | 'escalate', ARGV[6] result record | next payload,
-- ARGV[7] counters, one "field<TAB>increment" per line, ARGV[8] retention (ms, 0: keep), ARGV[9] member,
-- ARGV[10] for a job kept for retry: "status|step|final tier|counterfactual" ('' otherwise; the prompt
-- tokens are appended here)
-- Returns {1, seq}: recorded (seq of the next tier's message, 0 when final), {2}: this very call already
-- ran (a retried write), {0}: a duplicate (the lease was lost); its cost goes to cost_duplicate.
local id, token = ARGV[1], ARGV[3]
local cur = redis.call('HGET', KEYS[1], id)
if not cur then return {0} end
local run, line, flags, done, last = string.match(cur, '^(%d+):(%d+):([01]*):(.):(.*)$')
local live = redis.call('HGET', KEYS[5], id)
local step, holder, deliveries, reserved, ptok = '0', '', '0', '0', '0'
if live then step, holder, deliveries, reserved, ptok = string.match(live, '^(%-?%d+)|([^|]*)|(%d+)|(%d+)|(%d+)$') end
if holder ~= token or done == 'd' then
  if last == token then return {2} end
  redis.call('HINCRBY', KEYS[2], 'cost_duplicate', ARGV[4])
  return {0}
end
if tonumber(reserved) > 0 then redis.call('HINCRBY', KEYS[2], 'reserved', -tonumber(reserved)) end
local i = tonumber(ARGV[2]) + 1
if i > 0 then
  while #flags < i do flags = flags .. '0' end
  flags = string.sub(flags, 1, i - 1) .. '1' .. string.sub(flags, i + 1)
end
for field, n in string.gmatch(ARGV[7], '([^\n]+)\t(-?%d+)') do
  redis.call('HINCRBY', KEYS[2], field, n)
  redis.call('HINCRBY', KEYS[4], field, n)
end
redis.call('ZREM', KEYS[9], ARGV[9])
redis.call('HDEL', KEYS[7], id)
if ARGV[5] == 'escalate' then
  local seq = redis.call('INCR', KEYS[11])
  redis.call('HSET', KEYS[1], id, run .. ':' .. line .. ':' .. flags .. ':-:' .. token)
  redis.call('HSET', KEYS[5], id, (tonumber(step) + 1) .. '||0|0|' .. ptok)
  redis.call('HSET', KEYS[6], id, ARGV[6])
  redis.call('ZADD', KEYS[10], seq, ARGV[9])
  return {1, seq}
end
redis.call('HSET', KEYS[1], id, run .. ':' .. line .. ':' .. flags .. ':d:' .. token)
if ARGV[10] ~= '' then
  redis.call('HSET', KEYS[8], id, ARGV[10] .. '|' .. ptok .. '\n' .. (redis.call('HGET', KEYS[6], id) or ''))
end
redis.call('HDEL', KEYS[5], id)
redis.call('HDEL', KEYS[6], id)
local done_jobs = redis.call('HINCRBY', KEYS[2], 'done', 1)
redis.call('XADD', KEYS[3], '*', 'r', ARGV[6])
local retention = tonumber(ARGV[8])
if retention > 0 then
  local b = redis.call('HMGET', KEYS[2], 'state', 'total')
  if (b[1] == 'submitted' or b[1] == 'cancelled') and done_jobs >= tonumber(b[2] or '0') then
    for _, key in ipairs({KEYS[1], KEYS[2], KEYS[5], KEYS[6], KEYS[7], KEYS[8]}) do
      redis.call('PEXPIRE', key, retention)
    end
  end
end
return {1, 0}
