-- A direct create was refused with a 429: its submission waits first in line, and the queue holds.
-- KEYS[1] slots  KEYS[2] fifo  KEYS[3] entries  KEYS[4] hold
-- ARGV[1] idempotency key  ARGV[2] the entry (JSON)  ARGV[3] its slot member (placeholder)
-- ARGV[4] hold (ms)
-- -> the celery id of the handle waiting for the key: this entry's, or that of one already waiting
--    (a second caller of the same key refused at the same moment)
redis.call('ZREM', KEYS[1], ARGV[3])
redis.call('SET', KEYS[4], '1', 'PX', ARGV[4])
local cur = redis.call('HGET', KEYS[3], ARGV[1])
if cur then return cjson.decode(cur)['celery_id'] end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('LPUSH', KEYS[2], ARGV[1])
return cjson.decode(ARGV[2])['celery_id']
