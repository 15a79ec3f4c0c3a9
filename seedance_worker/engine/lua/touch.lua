-- Push a job's lease forward (and set fields) only while it is in the expected state.
-- KEYS[1] job hash  KEYS[2] due zset
-- ARGV[1] fields to set (JSON object; '' deletes)  ARGV[2] task_id  ARGV[3] expected state
-- ARGV[4] lease_at
-- -> 1 touched | 0 not in that state
if redis.call('HGET', KEYS[1], 'state') ~= ARGV[3] then return 0 end
for k, v in pairs(cjson.decode(ARGV[1])) do
  if v == '' then redis.call('HDEL', KEYS[1], k) else redis.call('HSET', KEYS[1], k, v) end
end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
return 1
