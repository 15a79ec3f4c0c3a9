-- Take back a hint whose early poll could not be published, so the callback's retry may try again.
-- KEYS[1] job hash
-- ARGV[1] unused (no fields)  ARGV[2] task_id  ARGV[3] what identified the callback  ARGV[4] gen
-- -> 1 (whatever was still this hint's is cleared)
if redis.call('HGET', KEYS[1], 'hint_seen') == ARGV[3] then redis.call('HDEL', KEYS[1], 'hint_seen') end
if redis.call('HGET', KEYS[1], 'hint_gen') == ARGV[4] then redis.call('HDEL', KEYS[1], 'hint_gen') end
return 1
