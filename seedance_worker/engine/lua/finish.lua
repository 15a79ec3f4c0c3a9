-- A terminal poll ends polling: the job enters its hand-off (downstream chain), exactly once.
-- KEYS[1] job hash  KEYS[2] due zset  KEYS[3] parked zset
-- ARGV[1] fields to set (JSON object; '' deletes)  ARGV[2] task_id  ARGV[3] gen of the message
-- ARGV[4] hand-off lease_at
-- -> 1 finished | 0 lost the race
-- A job ended while parked (cancel) leaves the parked index here, for the hand-off's lease in due.
local rec = redis.call('HMGET', KEYS[1], 'gen', 'state')
if not rec[1] or rec[2] ~= 'polling' or tonumber(rec[1]) ~= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 'gen', tonumber(ARGV[3]) + 1, 'terminal_gen', ARGV[3], 'state', 'handoff',
           'handoff', 'pending')
redis.call('HDEL', KEYS[1], 'crashes')
for k, v in pairs(cjson.decode(ARGV[1])) do
  if v == '' then redis.call('HDEL', KEYS[1], k) else redis.call('HSET', KEYS[1], k, v) end
end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 1
