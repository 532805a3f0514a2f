-- Marks a task done and drops its lease. KEYS[1] done, KEYS[2] lease; ARGV[1] owner, ARGV[2] done TTL ms.
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
return 1
