-- Fence one poll run: only the message carrying the current generation may call the API.
-- KEYS[1] job hash  KEYS[2] due zset  KEYS[3] parked zset  KEYS[4] lag hash
-- [KEYS[5] the account's 429 cool-down]
-- ARGV[1] unused (no fields)  ARGV[2] task_id  ARGV[3] gen of the message  ARGV[4] lease_at
-- ARGV[5] max_crashes  ARGV[6] lag_s of this run ('' when unknown)  ARGV[7] lag window (s)
-- -> {verdict, crashes, cool-down left (us), record as flat field/value pairs...}
-- A run that begins holds the running lease in due; a parked entry of the job (an early poll, or a
-- re-driven one, ran before its parked time) goes, so the job keeps one index entry.
-- verdict: ok | stale (an older or newer copy) | missing | terminal (the terminal generation's
-- copy, redelivered: the record comes back so the caller can return the same Outcome) |
-- crashloop (this generation began more than max_crashes times without advancing)
local rec = redis.call('HMGET', KEYS[1], 'gen', 'state', 'terminal_gen', 'crashes')
if not rec[1] then return {'missing', '0', '0'} end
local gen = tonumber(rec[1])
local msg = tonumber(ARGV[3])
if rec[2] ~= 'polling' then
  if rec[3] and tonumber(rec[3]) == msg then
    return {'terminal', '0', '0', unpack(redis.call('HGETALL', KEYS[1]))}
  end
  return {'stale', '0', '0'}
end
if gen ~= msg then return {'stale', '0', '0'} end
local crashes = redis.call('HINCRBY', KEYS[1], 'crashes', 1)
if crashes > tonumber(ARGV[5]) then
  return {'crashloop', tostring(crashes - 1), '0', unpack(redis.call('HGETALL', KEYS[1]))}
end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
local t = redis.call('TIME')
-- How late this current-generation copy started (a stale copy's lateness says nothing): the largest
-- over the last window, so the sweeper can tell a backlogged queue from a lost message.
local lag = tonumber(ARGV[6])
if lag then
  local now_s = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local cur = redis.call('HMGET', KEYS[4], 'lag_s', 'at')
  if not cur[2] or now_s - tonumber(cur[2]) > tonumber(ARGV[7]) or lag >= tonumber(cur[1]) then
    redis.call('HSET', KEYS[4], 'lag_s', ARGV[6], 'at', string.format('%.3f', now_s))
  end
end
-- The shared 429 cool-down, read in the same round trip.
local cool = 0
if KEYS[5] then
  local until_us = tonumber(redis.call('GET', KEYS[5]) or '0')
  cool = until_us - (tonumber(t[1]) * 1000000 + tonumber(t[2]))
  if cool < 0 then cool = 0 end
end
return {'ok', '0', string.format('%.0f', cool), unpack(redis.call('HGETALL', KEYS[1]))}
