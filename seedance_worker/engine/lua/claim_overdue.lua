-- The sweeper's claim: jobs whose lease ran out get a new lease, so one sweeper re-drives each.
-- KEYS[1] due zset  KEYS[2] jobs zset
-- ARGV[1] unused (no fields)  ARGV[2] overdue before (s)  ARGV[3] new lease_at  ARGV[4] limit
-- ARGV[5] job hash key prefix
-- -> flat: task_id, state, gen, owner, handoff_fires, canvas per claimed job. Ids of records that
-- are gone (expired) or done leave the due index; gone ones leave the jobs index too.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, id in ipairs(ids) do
  local rec = redis.call('HMGET', ARGV[5] .. id, 'state', 'gen', 'owner', 'handoff_fires', 'canvas')
  if not rec[1] or rec[1] == 'done' then
    redis.call('ZREM', KEYS[1], id)
    if not rec[1] then redis.call('ZREM', KEYS[2], id) end
  else
    redis.call('ZADD', KEYS[1], ARGV[3], id)
    table.insert(out, id); table.insert(out, rec[1]); table.insert(out, rec[2] or '1')
    table.insert(out, rec[3] or ''); table.insert(out, rec[4] or '0'); table.insert(out, rec[5] or '')
  end
end
return out
