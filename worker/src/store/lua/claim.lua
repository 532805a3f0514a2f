-- A claim that found the task key taken (SET NX failed). KEYS[1] task key;
-- ARGV[1] "lease:<owner>", ARGV[2] lease ms. Returns {status, ms, value}: {"done", 0, ""},
-- {"completing", 0, "<since ms>:<owner>"} (an attempt completed the task and is reporting it, or
-- died doing so), {"leased", remaining ms, "<the holder's value>"}, or {"claimed", 0, ""} when
-- the other lease expired in between.
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 5) == 'done:' then
  return {'done', 0, ''}
end
if v and string.sub(v, 1, 11) == 'completing:' then
  return {'completing', 0, string.sub(v, 12)}
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'claimed', 0, ''}
end
return {'leased', redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[1])}
