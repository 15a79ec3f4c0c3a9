-- Drop from the jobs index the ids whose record is gone (expired after its TTL, or lost).
-- KEYS[1] jobs zset
-- ARGV[1] unused (no fields)  ARGV[2] job hash key prefix  ARGV[3..] task ids to look at
-- -> how many ids left the index
-- Checked and removed in one script: register writes the record and its index entry together, so
-- an id whose record exists here (a job in flight, a finished one within its TTL) is never dropped,
-- and one registered again after this script ran gets its entry back.
local removed = 0
for i = 3, #ARGV do
  if redis.call('EXISTS', ARGV[2] .. ARGV[i]) == 0 then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
