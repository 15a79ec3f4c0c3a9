-- Free a slot (a job seen running or ended), then say whether to send the admitter: submissions
-- wait, a slot is free, no admitter runs or is on its way, no 429 holds the queue.
-- KEYS[1] slots  KEYS[2] fifo  KEYS[3] lock  KEYS[4] hold  KEYS[5] kick
-- ARGV[1] the remote task id leaving its slot ('' for the dispatcher's periodic check)
-- ARGV[2] cap  ARGV[3] kick lease (ms)
-- -> 1: publish one admit message (the kick key now says one is on its way), else 0
if ARGV[1] ~= '' and redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('LLEN', KEYS[2]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[3]) == 1 or redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
if redis.call('SET', KEYS[5], '1', 'NX', 'PX', ARGV[3]) then return 1 end
return 0
