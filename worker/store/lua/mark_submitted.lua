-- The producer has read the whole input. When every job is already done, the batch is finished:
-- its keys expire after the retention period (record.lua does the same for the last job).
-- A cancelled batch stays cancelled.
-- KEYS: every key of the batch, the batch hash first
-- ARGV[1] rejected rows, ARGV[2] retention (ms, 0: keep)
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('NOBATCH the batch is not in Redis') end
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'cancelled' then redis.call('HSET', KEYS[1], 'state', 'submitted') end
redis.call('HSET', KEYS[1], 'rejected', ARGV[1])
local b = redis.call('HMGET', KEYS[1], 'done', 'total')
local retention = tonumber(ARGV[2])
if retention > 0 and tonumber(b[1] or '0') >= tonumber(b[2] or '0') then
  for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, retention) end
end
return 1
