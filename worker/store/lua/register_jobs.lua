-- Register a chunk of jobs of one submission run; decide which to publish.
-- KEYS[1] jobs hash, KEYS[2] batch hash
-- ARGV[1] run number, then pairs: job id, line number
-- Returns one integer per job: 1 publish, 0 already submitted by an earlier run, -L duplicate of line L in this run.
local run = ARGV[1]
local out = {}
local new = 0
for i = 2, #ARGV, 2 do
  local id, line = ARGV[i], ARGV[i + 1]
  local cur = redis.call('HGET', KEYS[1], id)
  if not cur then
    redis.call('HSET', KEYS[1], id, run .. ':' .. line .. '::-')
    new = new + 1
    out[#out + 1] = 1
  else
    local r, l, flags, done = string.match(cur, '^(%d+):(%d+):([01]*):(.)$')
    if r == run then
      out[#out + 1] = -tonumber(l)
    else
      -- an earlier run registered it; republish only if that run stopped before confirming the publish
      local published = tonumber(redis.call('HGET', KEYS[2], 'published:' .. r) or '0')
      if done == '-' and flags == '' and tonumber(l) > published then
        redis.call('HSET', KEYS[1], id, run .. ':' .. line .. '::-')
        out[#out + 1] = 1
      else
        out[#out + 1] = 0
      end
    end
  end
end
if new > 0 then redis.call('HINCRBY', KEYS[2], 'total', new) end
return out
