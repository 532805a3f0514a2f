-- Compare-and-set of a whole value. KEYS[1] the key; ARGV[1] the value expected ("" when absent);
-- ARGV[2] the new value; ARGV[3] TTL ms. Returns {1, ""} when swapped, else {0, current value}
-- ("" when absent). The value's format ("<version>|<json>") is parsed by the worker, never here,
-- so a garbage value cannot make this script fail.
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[1] then
  return {0, cur}
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return {1, ''}
