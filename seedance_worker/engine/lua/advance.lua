-- A non-terminal read moves each job to its next generation (the message it publishes carries it).
-- KEYS[1] due zset  KEYS[2] parked zset  KEYS[3..] the job hashes, one per job
-- ARGV per job, 5 values each, in the order of the job keys: fields to set (JSON object; ''
-- deletes), task_id, gen of the message, lease_at, park_at (0: not parked)
-- -> one 1 (advanced) or 0 (lost the race: stale generation, or no longer polling) per job
-- One job (a poll run) or every job of a batched round's chunk in one call. Each keeps one index
-- entry: parked at park_at (next_due_at is then that score, not a field), or a lease in due.
-- Either way the other entry goes: a parked entry left from before (a re-driven job's old wait)
-- would make the dispatcher publish a second copy of the current generation.
-- (task_id: a field of records written before the key alone named the job; dropped here.)
local out = {}
for j = 3, #KEYS do
  local a = (j - 3) * 5
  local key, id, gen = KEYS[j], ARGV[a + 2], tonumber(ARGV[a + 3])
  local rec = redis.call('HMGET', key, 'gen', 'state')
  if not rec[1] or rec[2] ~= 'polling' or tonumber(rec[1]) ~= gen then
    out[#out + 1] = 0
  else
    redis.call('HSET', key, 'gen', gen + 1)
    redis.call('HDEL', key, 'crashes', 'task_id')
    for k, v in pairs(cjson.decode(ARGV[a + 1])) do
      if v == '' then redis.call('HDEL', key, k) else redis.call('HSET', key, k, v) end
    end
    if tonumber(ARGV[a + 5]) > 0 then
      redis.call('HDEL', key, 'next_due_at')
      redis.call('ZADD', KEYS[2], ARGV[a + 5], id)
      redis.call('ZREM', KEYS[1], id)
    else
      redis.call('ZADD', KEYS[1], ARGV[a + 4], id)
      redis.call('ZREM', KEYS[2], id)
    end
    out[#out + 1] = 1
  end
end
return out
