-- Compare-and-set of a versioned value stored as "<version>|<json>".
-- KEYS[1] the key; ARGV[1] expected version ("-1": just read); ARGV[2] new json; ARGV[3] TTL ms.
-- Returns {1, new version, ""} when swapped, else {0, current version, current json}.
local cur = redis.call('GET', KEYS[1])
local version, json = 0, ''
if cur then
  local sep = string.find(cur, '|', 1, true)
  version = tonumber(string.sub(cur, 1, sep - 1))
  json = string.sub(cur, sep + 1)
end
if tonumber(ARGV[1]) ~= version then
  return {0, version, json}
end
redis.call('SET', KEYS[1], (version + 1) .. '|' .. ARGV[2], 'PX', ARGV[3])
return {1, version + 1, ''}
