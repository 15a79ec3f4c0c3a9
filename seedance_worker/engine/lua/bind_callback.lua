-- Bind the nonce of a per-task callback URL to the job its create made (the first binding stays).
-- KEYS[1] job hash
-- ARGV[1] unused (no fields)  ARGV[2] task_id  ARGV[3] nonce
-- -> 1 bound | 0 no such job, or bound already
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HSETNX', KEYS[1], 'callback_nonce', ARGV[3])
