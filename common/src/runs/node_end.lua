-- A node of a run ended. Marks it, stores its outputs, updates its dependents and returns the
-- ones that became ready to publish. Exactly once: a second call for an ended node changes
-- nothing and returns the dependents whose publish was never confirmed, flagged "already".
-- Returns {ready dependents JSON, run status, "1" if the node had already ended else "0",
-- run's findings so far, run created at ms, recipe name}.
-- A failed or cancelled run whose succeeded nodes have compensations is "compensating" until
-- the last compensation ends; only then does it take its final status. The run's end is
-- reported by the worker that confirms the last node end event (reported.lua).
-- KEYS[1] links hash (id -> {"d": dependents, "o": optional, "w": when, "c": compensation}),
-- KEYS[2] state hash (id -> state, plus run fields), KEYS[3] waiting hash (id -> upstreams not
-- ended), KEYS[4] outputs hash, KEYS[5] unpublished hash, KEYS[6] compensations hash (node ->
-- its compensation node), KEYS[7] node specs hash, KEYS[8] sealed hooks (may not exist)
-- ARGV[1] node id, ARGV[2] "ok" | "failed", ARGV[3] outputs JSON (ok) or why it failed, ARGV[4] now ms,
-- ARGV[5] findings the node produced, ARGV[6] how a completed node was served (record JSON, or
-- ''), ARGV[7] "1" if that record degrades the run (served below full quality, or skipped)
local nodes, state, waiting, outputs, unpublished = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local node, outcome = ARGV[1], ARGV[2]
-- Every key of the run lives as long as the run: refreshed on each change.
local function keep()
  for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, ARGV[8]) end
end
local function summary(ready, run, already)
  return {ready, run, already, redis.call('HGET', state, '_findings') or '0',
    redis.call('HGET', state, '_created_at') or '0', redis.call('HGET', state, '_name') or ''}
end
local current = redis.call('HGET', state, node)
if current == 'succeeded' or current == 'failed' or current == 'skipped' then
  return summary(redis.call('HGET', unpublished, node) or '[]', redis.call('HGET', state, '_run') or 'running', '1')
end
-- Its end event is not confirmed yet: the run's end is reported only once every node's own end
-- is (reported.lua).
if redis.call('HSET', state, '_unrep:' .. node, '1') == 1 then
  redis.call('HINCRBY', state, '_unreported', 1)
end
if outcome == 'ok' then
  local found = tonumber(ARGV[5]) or 0
  redis.call('HSET', state, '_f:' .. node, found)
  redis.call('HINCRBY', state, '_findings', found)
  if ARGV[6] and ARGV[6] ~= '' then redis.call('HSET', state, '_rec:' .. node, ARGV[6]) end
end
local ready = {}
local own = cjson.decode(redis.call('HGET', nodes, node))
if own.c then
  -- A compensation node: it undoes another's effects after the run failed; the run's own
  -- accounting is already closed, and it ends once its last compensation has.
  redis.call('HSET', state, node, outcome == 'ok' and 'succeeded' or 'failed')
  if outcome == 'ok' then redis.call('HSET', outputs, node, ARGV[3]) end
  redis.call('HSET', unpublished, node, '[]')
  local run = ''
  if redis.call('HEXISTS', state, '_compensating') == 1 then
    run = 'compensating'
    if redis.call('HINCRBY', state, '_compensating', -1) <= 0 then
      run = redis.call('HGET', state, '_final')
      redis.call('HSET', state, '_run', run, '_ended_at', ARGV[4])
      redis.call('HDEL', state, '_compensating')
    end
  end
  keep()
  return summary('[]', run, '0')
end
-- Work list of (node, ended well?) so skipped nodes cascade without recursion.
local todo = {{node, outcome == 'ok'}}
if outcome == 'ok' then
  redis.call('HSET', state, node, 'succeeded')
  redis.call('HSET', outputs, node, ARGV[3])
  if ARGV[7] == '1' then redis.call('HSET', state, '_degraded', '1') end
else
  redis.call('HSET', state, node, 'failed')
  if ARGV[3] ~= '' then redis.call('HSET', state, '_error:' .. node, ARGV[3]) end
  local links = cjson.decode(redis.call('HGET', nodes, node))
  if not links.o then
    redis.call('HSETNX', state, '_blocking', node)
  else
    redis.call('HSET', state, '_partial', '1')
  end
end
redis.call('HINCRBY', state, '_ended', 1)
local i = 1
while i <= #todo do
  local id, well = todo[i][1], todo[i][2]
  local links = cjson.decode(redis.call('HGET', nodes, id))
  for _, d in ipairs(links.d) do
    local dlinks = cjson.decode(redis.call('HGET', nodes, d))
    -- A failed optional upstream still feeds its dependents (marked partial); a failed
    -- required one blocks them, unless they run whatever happens.
    if not well and not links.o and dlinks.w ~= 'always' then
      redis.call('HSET', state, '_blocked:' .. d, id)
    end
    local left = redis.call('HINCRBY', waiting, d, -1)
    if left == 0 then
      if redis.call('HEXISTS', state, '_blocked:' .. d) == 1 then
        redis.call('HSET', state, d, 'skipped')
        redis.call('HINCRBY', state, '_ended', 1)
        table.insert(todo, {d, false})
      else
        redis.call('HSET', state, d, 'queued')
        table.insert(ready, d)
      end
    end
  end
  i = i + 1
end
local run = 'running'
if tonumber(redis.call('HGET', state, '_ended')) == tonumber(redis.call('HGET', state, '_total')) then
  if redis.call('HEXISTS', state, '_cancelled') == 1 then run = 'cancelled'
  elseif redis.call('HEXISTS', state, '_blocking') == 1 then run = 'failed'
  elseif redis.call('HEXISTS', state, '_partial') == 1 then run = 'partial'
  elseif redis.call('HEXISTS', state, '_degraded') == 1 then run = 'degraded'
  else run = 'succeeded' end
  -- A failed (or cancelled) run undoes what succeeded: each succeeded node's compensation runs.
  local queued = 0
  if run == 'failed' or run == 'cancelled' then
    local comp = redis.call('HGETALL', KEYS[6])
    for j = 1, #comp, 2 do
      if redis.call('HGET', state, comp[j]) == 'succeeded' then
        redis.call('HSET', state, comp[j + 1], 'queued')
        table.insert(ready, comp[j + 1])
        queued = queued + 1
      end
    end
  end
  if queued > 0 then
    redis.call('HSET', state, '_final', run, '_compensating', queued, '_run', 'compensating')
    run = 'compensating'
  else
    redis.call('HSET', state, '_run', run, '_ended_at', ARGV[4])
  end
end
local encoded = cjson.encode(ready)
if #ready == 0 then encoded = '[]' end
redis.call('HSET', unpublished, node, encoded)
keep()
return summary(encoded, run, '0')
