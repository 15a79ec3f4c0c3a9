-- Claim one webhook delivery attempt, with the budget check, before the POST.
-- KEYS[1] delivery hash
-- ARGV[1] now  ARGV[2] max_attempts  ARGV[3] retry_for_s  ARGV[4] ttl_s  ARGV[5] inflight_until
-- -> {verdict, attempts, in_doubt}: delivered (a 2xx was recorded) | exhausted (budget spent) |
-- busy (another copy is sending right now) | send (attempt claimed); in_doubt = '1' when the last
-- attempt's sender died mid-request (its claim ran out unreleased): the receiver may have it already.
local rec = redis.call('HMGET', KEYS[1], 'delivered', 'first_at', 'attempts', 'sending_until')
local attempts = tonumber(rec[3] or '0')
if rec[1] == '1' then return {'delivered', tostring(attempts)} end
local now = tonumber(ARGV[1])
if rec[4] and tonumber(rec[4]) > now then return {'busy', tostring(attempts)} end
local first = tonumber(rec[2])
if not first then
  redis.call('HSET', KEYS[1], 'first_at', ARGV[1])
  first = now
end
if attempts >= tonumber(ARGV[2]) or (attempts > 0 and now - first > tonumber(ARGV[3])) then
  return {'exhausted', tostring(attempts)}
end
local in_doubt = '0'
if rec[4] and tonumber(rec[4]) > 0 then
  in_doubt = '1'
  redis.call('HINCRBY', KEYS[1], 'in_doubt', 1)
end
attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
-- Until this attempt ends (or its timeout passes, if the sender dies), no other copy sends.
redis.call('HSET', KEYS[1], 'sending_until', ARGV[5])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return {'send', tostring(attempts), in_doubt}
