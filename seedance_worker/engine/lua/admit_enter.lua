-- A new submission: take a slot for it, or queue it behind the waiting ones. One atomic step, so a
-- newcomer never jumps the queue (nor creates while an admitter is draining it).
-- KEYS[1] slots zset  KEYS[2] fifo list  KEYS[3] entries hash  KEYS[4] lock  KEYS[5] hold
-- KEYS[6] the submission's idempotency hash (submit.py)
-- ARGV[1] idempotency key  ARGV[2] the entry (JSON, with its celery_id)  ARGV[3] cap  ARGV[4] now
-- ARGV[5] the slot member of a create in flight (placeholder prefix + key)
-- -> {verdict, celery id, position}: 'waiting' (this key waits already: its handle's id),
--    'busy' (the key is being posted right now: ask again), 'known' (the key made its task, or
--    ended ambiguously: no slot), 'create' (a slot is taken: create now), 'queued' (appended:
--    its handle's id and position, 1 = next)
local waiting = redis.call('HGET', KEYS[3], ARGV[1])
if waiting then
  return {'waiting', cjson.decode(waiting)['celery_id'], 0}
end
local state = redis.call('HGET', KEYS[6], 'state')
if state == 'posting' then
  return {'busy', '', 0}
end
if state and state ~= 'released' then
  return {'known', '', 0}
end
if redis.call('LLEN', KEYS[2]) == 0 and redis.call('EXISTS', KEYS[4]) == 0
    and redis.call('EXISTS', KEYS[5]) == 0 and redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[5])
  return {'create', '', 0}
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
local n = redis.call('RPUSH', KEYS[2], ARGV[1])
return {'queued', cjson.decode(ARGV[2])['celery_id'], n}
