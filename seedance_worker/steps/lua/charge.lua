-- Write a task's one ledger entry: the first writer wins, and only it appends to the ledger order.
-- KEYS[1] ledger:by_task hash  KEYS[2] ledger list
-- ARGV[1] task_id  ARGV[2] entry JSON
-- -> {created 0|1, the stored entry JSON}
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  return {1, ARGV[2]}
end
return {0, redis.call('HGET', KEYS[1], ARGV[1])}
