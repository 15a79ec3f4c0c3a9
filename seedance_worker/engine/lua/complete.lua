-- The last link of a hand-off chain: keep the final Outcome, drop the lease, start the record's TTL.
-- KEYS[1] job hash  KEYS[2] due zset  KEYS[3] parked zset  KEYS[4] jobs zset
-- ARGV[1] fields to set (JSON object; '' deletes)  ARGV[2] task_id  ARGV[3] ttl_s  ARGV[4] now
-- -> 1 completed | 2 completed again (a re-fired chain) | 0 no such job | -1 still polling
-- A finished record is listed from the jobs index (by tracked_at) until its TTL runs out; a job in
-- flight is listed from its one entry in due or parked.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'polling' then return -1 end
redis.call('HSET', KEYS[1], 'state', 'done')
for k, v in pairs(cjson.decode(ARGV[1])) do
  if v == '' then redis.call('HDEL', KEYS[1], k) else redis.call('HSET', KEYS[1], k, v) end
end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[4], redis.call('HGET', KEYS[1], 'tracked_at') or ARGV[4], ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
if state == 'done' then return 2 end
return 1
