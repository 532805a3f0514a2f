-- Extends a lease if this attempt still holds it. KEYS[1] task key; ARGV[1] "lease:<owner>", ARGV[2] ms.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
