-- The reconciler claims jobs whose message is gone (a lease nobody renews, or a queued message that later
-- messages overtook): each gets a new sequence number on its tier's queued set, to be published again.
-- Claims are atomic, so two sweepers never republish the same job twice.
-- KEYS[1] live hash, KEYS[2] batch hash, KEYS[3] leased set, then the queued sets of the pipeline's tiers
-- (ladder order, k keys), then their sequence counters (k keys)
-- ARGV[1] k, ARGV[2] batch id, then pairs: job id, expectation: 'L' + lease expiry it must still have, or
-- 'Q' + the queued score it must still have
-- Returns flat triples: job id, step, new sequence number, for each job claimed.
local k = tonumber(ARGV[1])
local prefix = ARGV[2] .. '\31'
local out = {}
for i = 3, #ARGV, 2 do
  local id, expect = ARGV[i], ARGV[i + 1]
  local m = prefix .. id
  local live = redis.call('HGET', KEYS[1], id)
  if not live then
    redis.call('ZREM', KEYS[3], m)         -- finished meanwhile: nothing to republish
  else
    local step, holder, deliveries, reserved, ptok = string.match(live, '^(%-?%d+)|([^|]*)|(%d+)|(%d+)|(%d+)$')
    local s = tonumber(step) + 1
    local kind, value = string.sub(expect, 1, 1), string.sub(expect, 2)
    local ok
    if kind == 'L' then
      ok = holder ~= '' and tonumber(redis.call('ZSCORE', KEYS[3], m) or '-1') == tonumber(value)
    else
      ok = holder == '' and s <= k and tonumber(redis.call('ZSCORE', KEYS[3 + s], m) or '-1') == tonumber(value)
    end
    if ok and s <= k then
      if tonumber(reserved) > 0 then redis.call('HINCRBY', KEYS[2], 'reserved', -tonumber(reserved)) end
      redis.call('HSET', KEYS[1], id, step .. '||' .. deliveries .. '|0|' .. ptok)
      redis.call('ZREM', KEYS[3], m)
      local seq = redis.call('INCR', KEYS[3 + k + s])
      redis.call('ZADD', KEYS[3 + s], seq, m)
      redis.call('HINCRBY', KEYS[2], 'republished', 1)
      out[#out + 1] = id
      out[#out + 1] = step
      out[#out + 1] = seq
    end
  end
end
return out
