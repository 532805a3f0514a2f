-- A claim that found the task key taken (SET NX failed). KEYS[1] task key;
-- ARGV[1] "lease:<owner>", ARGV[2] lease ms. Returns {"claimed", 0, ""} when the other holder's
-- key expired in between, else {"held", PTTL, value}: the worker parses the value (lease,
-- completing or done marker) and treats anything else as corrupted state.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'claimed', 0, ''}
end
local v = redis.call('GET', KEYS[1])
return {'held', redis.call('PTTL', KEYS[1]), v or ''}
