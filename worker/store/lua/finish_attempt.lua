-- Record one attempt (and finalize the job) atomically, exactly once.
-- KEYS[1] jobs hash, KEYS[2] batch hash, KEYS[3] results stream, KEYS[4] pipeline counters
-- ARGV[1] job id, ARGV[2] tier index (-1: no call was made), ARGV[3] reservation to release,
-- ARGV[4] this attempt's cost (nano-USD), ARGV[5] '1' to finalize, ARGV[6] result record,
-- ARGV[7] counters, one "field<TAB>increment" per line (zeros left out),
-- ARGV[8] retention (ms, 0: keep): how long a finished batch's keys stay
-- Returns 1 recorded, 0 a duplicate (its cost goes to cost_duplicate, nothing else counts).
local release = tonumber(ARGV[3])
if release > 0 then redis.call('HINCRBY', KEYS[2], 'reserved', -release) end
local cur = redis.call('HGET', KEYS[1], ARGV[1]) or '0:0::-'
local run, line, flags, done = string.match(cur, '^(%d+):(%d+):([01]*):(.)$')
local i = tonumber(ARGV[2]) + 1
local final = ARGV[5] == '1'
if (final and done == 'd') or (i > 0 and string.sub(flags, i, i) == '1') then
  redis.call('HINCRBY', KEYS[2], 'cost_duplicate', ARGV[4])
  return 0
end
if i > 0 then
  while #flags < i do flags = flags .. '0' end
  flags = string.sub(flags, 1, i - 1) .. '1' .. string.sub(flags, i + 1)
end
if final then done = 'd' end
redis.call('HSET', KEYS[1], ARGV[1], run .. ':' .. line .. ':' .. flags .. ':' .. done)
for field, n in string.gmatch(ARGV[7], '([^\n]+)\t(-?%d+)') do
  redis.call('HINCRBY', KEYS[2], field, n)
  redis.call('HINCRBY', KEYS[4], field, n)
end
if final then
  local done_jobs = redis.call('HINCRBY', KEYS[2], 'done', 1)
  redis.call('XADD', KEYS[3], '*', 'r', ARGV[6])
  local retention = tonumber(ARGV[8])
  if retention > 0 then
    local b = redis.call('HMGET', KEYS[2], 'state', 'total')
    if b[1] == 'submitted' and done_jobs >= tonumber(b[2] or '0') then   -- the batch's last job
      for j = 1, 3 do redis.call('PEXPIRE', KEYS[j], retention) end
    end
  end
end
return 1
