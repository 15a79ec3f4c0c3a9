-- A terminal poll ends polling: the job enters its hand-off (downstream chain), exactly once.
-- KEYS[1] job hash  KEYS[2] due zset
-- ARGV[1] fields to set (JSON object)  ARGV[2] task_id  ARGV[3] gen of the message
-- ARGV[4] hand-off lease_at
-- -> 1 finished | 0 lost the race
local rec = redis.call('HMGET', KEYS[1], 'gen', 'state')
if not rec[1] or rec[2] ~= 'polling' or tonumber(rec[1]) ~= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 'gen', tonumber(ARGV[3]) + 1, 'terminal_gen', ARGV[3], 'state', 'handoff',
           'handoff', 'pending', 'crashes', 0)
for k, v in pairs(cjson.decode(ARGV[1])) do redis.call('HSET', KEYS[1], k, v) end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
return 1
