-- Record how the create POST ended, only for the caller holding the claim.
-- KEYS[1] idempotency hash
-- ARGV[1] token  ARGV[2] new state (created | ambiguous | released)  ARGV[3] remote_id  ARGV[4] error
-- -> 1 settled | 0 not this caller's claim
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'remote_id', ARGV[3], 'error', ARGV[4])
return 1
