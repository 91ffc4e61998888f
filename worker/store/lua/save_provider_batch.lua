-- Update a provider batch's record, unless it was closed meanwhile (a slower worker must not revive it).
-- KEYS[1] the tier's provider-batches hash; ARGV[1] record id, ARGV[2] record JSON
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
