-- Reserve the next request slot of one account (GCRA), unless its 429 cool-down is running.
-- KEYS[1] tat (theoretical arrival time, us)  KEYS[2] cool-down end (us)
-- ARGV[1] emission interval (us; 0 = limiter off)  ARGV[2] burst tolerance (us)
-- ARGV[3] (optional) "try": a caller that will not wait for the slot (a batched round defers its
--         chunk instead) reserves nothing when told to wait, so refusals cannot push the rate on
-- -> {wait_us, kind}: kind 0 = go now, 1 = reserved slot in wait_us, 2 = cooling down for wait_us
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cool = tonumber(redis.call('GET', KEYS[2]) or '0')
if cool > now then return {math.ceil(cool - now), 2} end
local interval = tonumber(ARGV[1])
if interval <= 0 then return {0, 0} end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - tonumber(ARGV[2]) - now
if wait < 0 then wait = 0 end
if wait > 0 and ARGV[3] == 'try' then return {math.max(1, math.ceil(wait)), 1} end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
if wait > 0 then return {math.max(1, math.ceil(wait)), 1} end
return {0, 0}
