-- The producer has read the whole input. When every job is already done, the batch is finished:
-- its keys expire after the retention period (finish_attempt does the same for the last job).
-- KEYS[1] batch hash, KEYS[2] jobs hash, KEYS[3] results stream
-- ARGV[1] rejected rows, ARGV[2] retention (ms, 0: keep)
redis.call('HSET', KEYS[1], 'state', 'submitted', 'rejected', ARGV[1])
local b = redis.call('HMGET', KEYS[1], 'done', 'total')
local retention = tonumber(ARGV[2])
if retention > 0 and tonumber(b[1] or '0') >= tonumber(b[2] or '0') then
  for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, retention) end
end
return 1
