-- The sweeper's claim: jobs whose lease ran out get a new lease, so one sweeper re-drives each.
-- KEYS[1] due zset  KEYS[2] parked zset
-- ARGV[1] unused (no fields)  ARGV[2] overdue before (s)  ARGV[3] new lease_at  ARGV[4] limit
-- ARGV[5] job hash key prefix  ARGV[6] grace (s): a parked job's lease is its due time + grace
-- -> flat: task_id, state, gen, owner, handoff_fires, canvas, trace per claimed job. Ids of records
-- that are gone (expired) or done leave both indexes. A claimed job keeps one entry: the new lease
-- in due.
local out = {}
local function claim(id)
  local rec = redis.call('HMGET', ARGV[5] .. id, 'state', 'gen', 'owner', 'handoff_fires', 'canvas',
                         'trace')
  redis.call('ZREM', KEYS[2], id)
  if not rec[1] or rec[1] == 'done' then
    redis.call('ZREM', KEYS[1], id)
  else
    redis.call('ZADD', KEYS[1], ARGV[3], id)
    table.insert(out, id); table.insert(out, rec[1]); table.insert(out, rec[2] or '1')
    table.insert(out, rec[3] or ''); table.insert(out, rec[4] or '0'); table.insert(out, rec[5] or '')
    table.insert(out, rec[6] or '')
  end
end
local limit = tonumber(ARGV[4])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, limit)
for _, id in ipairs(ids) do claim(id) end
if #ids < limit then
  local parked = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[2]) - tonumber(ARGV[6]),
                            'LIMIT', 0, limit - #ids)
  for _, id in ipairs(parked) do claim(id) end
end
return out
