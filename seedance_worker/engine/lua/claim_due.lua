-- The dispatcher's claim: parked polls due before the horizon leave the parked index, each once.
-- KEYS[1] parked zset  KEYS[2] due zset
-- ARGV[1] unused (no fields)  ARGV[2] horizon (s)  ARGV[3] limit  ARGV[4] job hash key prefix
-- ARGV[5] grace (s): a claimed job's lease in due is its due time + grace, as it was while parked
-- -> flat: task_id, due, the record as one JSON object, per job still polling (others are just
-- dropped): a batched round has every record it reads without another round trip, and one string
-- per record is far cheaper to take apart than a reply of every field
-- A claimer that dies before publishing loses nothing: the lease runs out and the sweeper re-drives.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
local grace = tonumber(ARGV[5])
for i = 1, #ids, 2 do
  local id = ids[i]
  redis.call('ZREM', KEYS[1], id)
  if redis.call('HGET', ARGV[4] .. id, 'state') == 'polling' then
    redis.call('ZADD', KEYS[2], tonumber(ids[i + 1]) + grace, id)
    local flat, rec = redis.call('HGETALL', ARGV[4] .. id), {}
    for j = 1, #flat, 2 do rec[flat[j]] = flat[j + 1] end
    out[#out + 1] = id; out[#out + 1] = ids[i + 1]; out[#out + 1] = cjson.encode(rec)
  end
end
return out
