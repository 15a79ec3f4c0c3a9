-- Renew or give up the lease of one S3 upload, only while no other attempt holds it.
-- KEYS[1] lease string (value: the holder's token)
-- ARGV[1] token  ARGV[2] ttl_ms (renew) or '0' (release)
-- -> 1 when the caller holds the lease now (renewed, or taken again after it ran out unclaimed
--    during a stall) or has released it; 0 when another attempt holds it.
local holder = redis.call('GET', KEYS[1])
if ARGV[2] == '0' then
  if holder == ARGV[1] then redis.call('DEL', KEYS[1]) end
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
