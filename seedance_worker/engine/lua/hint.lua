-- Take a callback's hint for one job: de-duplicate it and say whether, and when, to poll early.
-- KEYS[1] job hash  KEYS[2] parked zset (a parked job's next read is its score there)
-- ARGV[1] unused (no fields)  ARGV[2] task_id  ARGV[3] the callback's status ('' when it had none)
-- ARGV[4] what identifies the callback (status and updated_at)  ARGV[5] now
-- ARGV[6] the least time between the job's last poll and an early one (s)
-- ARGV[7] the nonce of the per-task callback URL it came by ('' for the shared path)
-- -> {verdict, gen, owner, countdown_s, canvas, trace}; verdict:
--    ignored    no such job, or not polling (nothing is written)
--    wrong_job  the per-task URL was made for another job (nothing is written)
--    duplicate  the same callback as the last one taken for this job
--    unchanged  the last poll already saw this status
--    pending    an early poll of this generation is already on its way
--    scheduled  the regular poll comes as soon as an early one could
--    accepted   publish a poll of generation gen after countdown_s (hint_gen marks it sent)
local rec = redis.call('HMGET', KEYS[1], 'state', 'gen', 'owner', 'status', 'updated_at',
                       'tracked_at', 'next_due_at', 'hint_seen', 'hint_gen', 'canvas', 'callback_nonce',
                       'trace')
if not rec[1] then return {'ignored'} end
if ARGV[7] ~= '' and rec[11] ~= ARGV[7] then return {'wrong_job'} end
if rec[1] ~= 'polling' or not rec[3] or rec[3] == '' then return {'ignored'} end
if rec[8] == ARGV[4] then return {'duplicate', rec[2]} end
redis.call('HSET', KEYS[1], 'hint_seen', ARGV[4])
local status = rec[4]
if not status or status == '' then status = 'queued' end
if ARGV[3] ~= '' and status == ARGV[3] then return {'unchanged', rec[2]} end
if rec[9] == rec[2] then return {'pending', rec[2]} end
local now = tonumber(ARGV[5])
local last = tonumber(rec[5]) or tonumber(rec[6]) or 0
local due = math.max(now, last + tonumber(ARGV[6]))
local next_due = tonumber(rec[7]) or tonumber(redis.call('ZSCORE', KEYS[2], ARGV[2]))
if next_due and next_due <= due then return {'scheduled', rec[2]} end
redis.call('HSET', KEYS[1], 'hint_gen', rec[2])
return {'accepted', rec[2], rec[3], string.format('%.3f', due - now), rec[10] or '',
        rec[12] or ''}
