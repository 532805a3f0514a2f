-- Drops a lease if this attempt holds it (never a done marker). KEYS[1] task key; ARGV[1] "lease:<owner>".
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
