-- `cascade retry`: put jobs that ended without an accepted answer back where they stopped. Their final
-- counters are taken back, the tier they stopped at will count a new attempt, the rest of their history
-- (cheaper tiers already paid) is kept, and each is queued on that tier with a new sequence number.
-- KEYS[1] jobs hash, KEYS[2] batch hash, KEYS[3] live, KEYS[4] payload, KEYS[5] kept, KEYS[6] pipeline
-- counters, then the queued sets of the pipeline's tiers (ladder order, k keys), then their sequence
-- counters (k keys), then the batch's other keys to keep alive
-- ARGV[1] k, ARGV[2] batch id, ARGV[3] how many batch keys follow the counters,
-- then triples: job id, the kept value it must still have, its new payload
-- Returns flat triples: job id, step, sequence number, for each job put back.
local k = tonumber(ARGV[1])
local prefix = ARGV[2] .. '\31'
local out = {}
for i = 4, #ARGV, 3 do
  local id, expected, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local cur = redis.call('HGET', KEYS[1], id)
  if redis.call('HGET', KEYS[5], id) == expected and cur then
    local run, line, flags, done, last = string.match(cur, '^(%d+):(%d+):([01]*):(.):(.*)$')
    local head = string.match(expected, '^([^\n]*)')
    local status, step, final, cf, ptok = string.match(head, '^([^|]*)|(%d+)|([^|]*)|(%-?%d+)|(%d+)$')
    local s = tonumber(step) + 1
    if done == 'd' and s <= k then
      if #flags >= s then flags = string.sub(flags, 1, s - 1) .. '0' .. string.sub(flags, s + 1) end
      redis.call('HSET', KEYS[1], id, run .. ':' .. line .. ':' .. flags .. ':-:' .. last)
      redis.call('HSET', KEYS[3], id, step .. '||0|0|' .. ptok)
      redis.call('HSET', KEYS[4], id, payload)
      redis.call('HDEL', KEYS[5], id)
      redis.call('HINCRBY', KEYS[2], 'done', -1)
      for _, key in ipairs({KEYS[2], KEYS[6]}) do
        redis.call('HINCRBY', key, 'status:' .. status, -1)
        redis.call('HINCRBY', key, 'final:' .. final, -1)
        redis.call('HINCRBY', key, 'counterfactual', 0 - tonumber(cf))
      end
      redis.call('HINCRBY', KEYS[2], 'retried', 1)
      local seq = redis.call('INCR', KEYS[6 + k + s])
      redis.call('ZADD', KEYS[6 + s], seq, prefix .. id)
      out[#out + 1] = id
      out[#out + 1] = step
      out[#out + 1] = seq
    end
  end
end
if #out > 0 then
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
  for j = 1, tonumber(ARGV[3]) do redis.call('PERSIST', KEYS[6 + 2 * k + j]) end
end
return out
