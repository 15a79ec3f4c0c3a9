-- After a 429: hold every request of the account until now + seconds (only ever extended).
-- KEYS[1] cool-down end (us)
-- ARGV[1] seconds
-- -> the cool-down end (us)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local until_us = now + math.ceil(tonumber(ARGV[1]) * 1000000)
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_us > cur then
  redis.call('SET', KEYS[1], string.format('%.0f', until_us), 'PX', math.ceil((until_us - now) / 1000) + 1000)
  return until_us
end
return cur
