-- Release the admitter's lock, only if this admitter still holds it.
-- KEYS[1] lock
-- ARGV[1] token
-- -> 1 released | 0 not this admitter's
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
