-- Reserve a job's estimate until its charge: never for a task already charged, never twice.
-- KEYS[1] ledger:by_task hash  KEYS[2] ledger:reserved hash  KEYS[3] ledger:reserved_at zset
-- ARGV[1] task_id  ARGV[2] reservation JSON  ARGV[3] when (unix s)
-- -> 1 reserved, 0 not (charged already, or reserved already)
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return 1
