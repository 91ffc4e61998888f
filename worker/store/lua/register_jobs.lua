-- Register a chunk of jobs of one submission run: each new job gets its state, its payload and a place
-- in the first tier's queued set (with the sequence number its message carries).
-- KEYS[1] jobs hash, KEYS[2] batch hash, KEYS[3] live hash, KEYS[4] payload hash,
-- KEYS[5] queued set of the first tier, KEYS[6] that tier's sequence counter
-- ARGV[1] run number, ARGV[2] batch id, then for each job: id, line, prompt tokens, payload
-- Returns one integer per job: its message's sequence number (> 0: publish it), 0 already submitted by an
-- earlier run (the reconciler owns its message now), -L duplicate of line L in this run.
-- A batch hash that is gone (Redis restarted without its data) is an error: HINCRBY would make a hash with
-- no pipeline, and the producer would go on submitting into a batch nothing else knows.
if redis.call('EXISTS', KEYS[2]) == 0 then return redis.error_reply('NOBATCH the batch is not in Redis') end
local run = ARGV[1]
local prefix = ARGV[2] .. '\31'
local out = {}
local new = 0
for i = 3, #ARGV, 4 do
  local id, line = ARGV[i], ARGV[i + 1]
  local cur = redis.call('HGET', KEYS[1], id)
  if not cur then
    redis.call('HSET', KEYS[1], id, run .. ':' .. line .. '::-:')
    redis.call('HSET', KEYS[3], id, '0||0|0|' .. ARGV[i + 2])
    redis.call('HSET', KEYS[4], id, ARGV[i + 3])
    local seq = redis.call('INCR', KEYS[6])
    redis.call('ZADD', KEYS[5], seq, prefix .. id)
    new = new + 1
    out[#out + 1] = seq
  else
    local r, l = string.match(cur, '^(%d+):(%d+):')
    if r == run then out[#out + 1] = -tonumber(l) else out[#out + 1] = 0 end
  end
end
if new > 0 then redis.call('HINCRBY', KEYS[2], 'total', new) end
return out
