-- Write a task's one ledger entry: the first writer wins, and only it appends to the ledger order.
-- Either way the task's reservation (if any) is settled: removed with the entry in place.
-- KEYS[1] ledger:by_task hash  KEYS[2] ledger list  KEYS[3] ledger:reserved hash
-- KEYS[4] ledger:reserved_at zset
-- ARGV[1] task_id  ARGV[2] entry JSON
-- -> {created 0|1, the stored entry JSON}
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  return {1, ARGV[2]}
end
return {0, redis.call('HGET', KEYS[1], ARGV[1])}
