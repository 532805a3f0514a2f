-- Claims a task for one attempt. KEYS[1] done marker, KEYS[2] lease; ARGV[1] owner, ARGV[2] lease ms.
-- Returns {"done", 0}, {"claimed", 0} or {"leased", remaining lease ms}.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'done', 0}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'claimed', 0}
end
return {'leased', redis.call('PTTL', KEYS[2])}
