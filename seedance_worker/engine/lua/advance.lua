-- A non-terminal poll moves the job to the next generation (the message it publishes carries it).
-- KEYS[1] job hash  KEYS[2] due zset  KEYS[3] parked zset
-- ARGV[1] fields to set (JSON object)  ARGV[2] task_id  ARGV[3] gen of the message
-- ARGV[4] lease_at  ARGV[5] park_at (0: not parked)
-- -> 1 advanced | 0 lost the race (stale generation, or the job is no longer polling)
-- Not parking drops any parked entry left from before (a re-driven job's old wait): the dispatcher
-- would otherwise publish a second copy of the current generation when it came due.
local rec = redis.call('HMGET', KEYS[1], 'gen', 'state')
if not rec[1] or rec[2] ~= 'polling' or tonumber(rec[1]) ~= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 'gen', tonumber(ARGV[3]) + 1, 'crashes', 0)
for k, v in pairs(cjson.decode(ARGV[1])) do redis.call('HSET', KEYS[1], k, v) end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
if tonumber(ARGV[5]) > 0 then
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[2])
else
  redis.call('ZREM', KEYS[3], ARGV[2])
end
return 1
