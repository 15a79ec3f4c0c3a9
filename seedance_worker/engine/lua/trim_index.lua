-- Drop from the jobs index the ids it no longer lists: records gone (their TTL ran out, or lost)
-- and records not done (in flight: listed from due or parked; written by the layout before this
-- one, which indexed every job from its registration).
-- KEYS[1] jobs zset
-- ARGV[1] unused (no fields)  ARGV[2] job hash key prefix  ARGV[3..] task ids to look at
-- -> how many ids left the index
-- Checked and removed in one script: complete writes state done and the index entry together, so a
-- finished record within its TTL is never dropped, and one completed after this script ran gets
-- its entry back.
local removed = 0
for i = 3, #ARGV do
  if redis.call('HGET', ARGV[2] .. ARGV[i], 'state') ~= 'done' then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
