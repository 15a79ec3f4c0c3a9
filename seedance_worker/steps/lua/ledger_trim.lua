-- Drop the oldest ledger entries, given oldest first, each only while it is still first in line.
-- KEYS[1] ledger list  KEYS[2] ledger:by_task hash
-- ARGV[1..] task ids of the entries to drop, in charge order (charge.py chose them by age and
-- found no job record for any of them)
-- -> how many entries were dropped
-- A worker trimming at the same moment may have dropped some already: the first id that is no
-- longer at the head ends the script, so an entry nobody chose is never dropped.
local n = 0
for i = 1, #ARGV do
  if redis.call('LINDEX', KEYS[1], 0) ~= ARGV[i] then break end
  redis.call('LPOP', KEYS[1])
  redis.call('HDEL', KEYS[2], ARGV[i])
  n = n + 1
end
return n
