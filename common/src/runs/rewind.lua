-- A failed node is about to run again (requeued from the DLQ, or `producer resume`): put it and
-- the nodes its failure skipped back to waiting, so its next end moves the run on as if the
-- failure had not happened. Upstream outputs stay. Returns 1 if it rewound, 2 if the node
-- already succeeded (a redelivery after its end was recorded), 0 otherwise (nothing to do).
-- KEYS[1] links hash, KEYS[2] state hash, KEYS[3] waiting hash, KEYS[4..] the run's other keys
-- (only kept alive); ARGV[1] node id, ARGV[2] the run's TTL in seconds: every key of the run is
-- kept that long after a rewind
local nodes, state, waiting = KEYS[1], KEYS[2], KEYS[3]
local node = ARGV[1]
local current = redis.call('HGET', state, node)
if current == 'succeeded' then
  return 2
end
if current ~= 'failed' then
  return 0
end
redis.call('HSET', state, node, 'queued')
redis.call('HDEL', state, '_error:' .. node)
redis.call('HINCRBY', state, '_ended', -1)
if redis.call('HGET', state, '_blocking') == node then
  redis.call('HDEL', state, '_blocking')
end
redis.call('HSET', state, '_run', 'running')
redis.call('HDEL', state, '_ended_at', '_final', '_compensating', '_end_reported')
-- Every node that will end again gives each dependent back the count its first end took.
local todo = {node}
local i = 1
while i <= #todo do
  local id = todo[i]
  local links = cjson.decode(redis.call('HGET', nodes, id))
  for _, d in ipairs(links.d) do
    local s = redis.call('HGET', state, d)
    if s == 'pending' or s == 'skipped' or s == 'queued' then
      redis.call('HINCRBY', waiting, d, 1)
    end
    if s == 'skipped' then
      redis.call('HSET', state, d, 'pending')
      redis.call('HDEL', state, '_blocked:' .. d)
      redis.call('HINCRBY', state, '_ended', -1)
      table.insert(todo, d)
    elseif redis.call('HGET', state, '_blocked:' .. d) == id then
      redis.call('HDEL', state, '_blocked:' .. d)
    end
  end
  i = i + 1
end
for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, ARGV[2]) end
return 1
