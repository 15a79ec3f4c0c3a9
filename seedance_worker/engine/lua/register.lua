-- Register a job once: the first caller becomes its owner (the Celery id of its poll chain).
-- KEYS[1] job hash  KEYS[2] due zset  KEYS[3] parked zset
-- ARGV[1] fields to set (JSON object; '' deletes)  ARGV[2] task_id  ARGV[3] owner  ARGV[4] now
-- ARGV[5] lease_at  ARGV[6] park_at (0: not parked)
-- -> {created 0|1, owner, state}
-- The job gets one index entry: parked at park_at (its lease is park_at + the sweeper's grace), or a
-- lease in due. Defaults (polls 0, ...) are not written: a missing field reads as its default.
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner then
  return {0, owner, redis.call('HGET', KEYS[1], 'state') or ''}
end
redis.call('HSET', KEYS[1], 'owner', ARGV[3], 'gen', 1, 'state', 'polling', 'tracked_at', ARGV[4])
for k, v in pairs(cjson.decode(ARGV[1])) do
  if v ~= '' then redis.call('HSET', KEYS[1], k, v) end
end
if tonumber(ARGV[6]) > 0 then
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[2])
else
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[2])
end
return {1, ARGV[3], 'polling'}
