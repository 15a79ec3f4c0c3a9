-- The admitter's next step: the head of the queue, a slot taken for it, while under the cap. The
-- head stays in the queue until its task is created and tracked (admit done), so an admitter that
-- dies mid-create leaves it for the next one, which creates it again through the idempotency key.
-- KEYS[1] slots  KEYS[2] fifo  KEYS[3] entries  KEYS[4] lock  KEYS[5] hold
-- ARGV[1] lock token  ARGV[2] cap  ARGV[3] now  ARGV[4] lock lease (ms)  ARGV[5] placeholder prefix
-- -> {verdict, key, entry}: 'lost' (the lock is no longer this admitter's), 'hold' (a 429 holds
--    the queue), 'empty', 'full' (no slot free), 'go' (create this one; a head that holds its slot
--    already is a re-drive after a crash, and goes again)
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return {'lost', '', ''} end
redis.call('PEXPIRE', KEYS[4], ARGV[4])
if redis.call('EXISTS', KEYS[5]) == 1 then return {'hold', '', ''} end
while true do
  local key = redis.call('LINDEX', KEYS[2], 0)
  if not key then return {'empty', '', ''} end
  local entry = redis.call('HGET', KEYS[3], key)
  if entry then
    local member = ARGV[5] .. key
    if redis.call('ZSCORE', KEYS[1], member) then return {'go', key, entry} end
    if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return {'full', '', ''} end
    redis.call('ZADD', KEYS[1], ARGV[3], member)
    return {'go', key, entry}
  end
  redis.call('LPOP', KEYS[2])  -- a key without its entry (admitted or failed meanwhile)
end
