-- Claim an idempotency key before the create POST (a released key can be claimed again).
-- KEYS[1] idempotency hash
-- ARGV[1] token of this caller  ARGV[2] now  ARGV[3] ttl_s
-- -> {state ('claimed' when this caller won), remote_id or '', token, claimed_at}
local cur = redis.call('HMGET', KEYS[1], 'state', 'remote_id', 'token', 'claimed_at')
if not cur[1] or cur[1] == 'released' then
  redis.call('HSET', KEYS[1], 'state', 'posting', 'token', ARGV[1], 'claimed_at', ARGV[2], 'remote_id', '')
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
  return {'claimed', '', ARGV[1], ARGV[2]}
end
return {cur[1], cur[2] or '', cur[3] or '', cur[4] or ''}
