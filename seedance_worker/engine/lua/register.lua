-- Register a job once: the first caller becomes its owner (the Celery id of its poll chain).
-- KEYS[1] job hash  KEYS[2] jobs zset  KEYS[3] due zset  KEYS[4] parked zset
-- ARGV[1] fields to set (JSON object)  ARGV[2] task_id  ARGV[3] owner  ARGV[4] now
-- ARGV[5] lease_at  ARGV[6] park_at (0: not parked)
-- -> {created 0|1, owner, state}
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner then
  return {0, owner, redis.call('HGET', KEYS[1], 'state') or ''}
end
redis.call('HSET', KEYS[1], 'owner', ARGV[3], 'gen', 1, 'state', 'polling', 'polls', 0,
           'crashes', 0, 'error_streak', 0, 'status_polls', 0, 'tracked_at', ARGV[4],
           'task_id', ARGV[2])
for k, v in pairs(cjson.decode(ARGV[1])) do redis.call('HSET', KEYS[1], k, v) end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[2])
if tonumber(ARGV[6]) > 0 then redis.call('ZADD', KEYS[4], ARGV[6], ARGV[2]) end
return {1, ARGV[3], 'polling'}
