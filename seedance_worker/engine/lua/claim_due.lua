-- The dispatcher's claim: parked polls due before the horizon leave the parked index, each once.
-- KEYS[1] parked zset
-- ARGV[1] unused (no fields)  ARGV[2] horizon (s)  ARGV[3] limit  ARGV[4] job hash key prefix
-- -> flat: task_id, gen, owner, due, canvas per job still polling (others are just dropped)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for i = 1, #ids, 2 do
  local id = ids[i]
  redis.call('ZREM', KEYS[1], id)
  local rec = redis.call('HMGET', ARGV[4] .. id, 'state', 'gen', 'owner', 'canvas')
  if rec[1] == 'polling' then
    table.insert(out, id); table.insert(out, rec[2]); table.insert(out, rec[3] or '')
    table.insert(out, ids[i + 1]); table.insert(out, rec[4] or '')
  end
end
return out
