-- Takes over a lease whose holder's worker is dead. KEYS[1] task key; ARGV[1] the dead holder's
-- value ("lease:<owner>"), ARGV[2] the new "lease:<owner>", ARGV[3] lease ms. Returns 1 when
-- replaced, 0 when the key holds anything else now (completed, released, taken by another).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
