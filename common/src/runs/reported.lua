-- A node's end event was confirmed by the broker. The run's end event goes out only after every
-- node's own end event: this says (with the run's status, whose finality the caller judges)
-- whether the caller must now report it: no node's end is left unreported, and its end has not
-- been reported (`_end_reported`, set once that report is confirmed; a run rewound clears it).
-- Whichever worker confirms the last node end is the one told; a later call (a redelivery after
-- the run's end could not be published) is told again.
-- Returns {"1" if no node end is left unreported and the run's end was not reported, else "0",
-- run status, findings, created at ms, name}.
-- KEYS[1] state hash; ARGV[1] node id
local state, node = KEYS[1], ARGV[1]
local left
if redis.call('HDEL', state, '_unrep:' .. node) == 1 then
  left = redis.call('HINCRBY', state, '_unreported', -1)
else
  left = tonumber(redis.call('HGET', state, '_unreported') or '0') or 0
end
local run = redis.call('HGET', state, '_run') or 'running'
-- Whether the status is final is the caller's to judge (NodeEnd::run_ended).
local report = '0'
if left <= 0 and redis.call('HEXISTS', state, '_end_reported') == 0 then
  report = '1'
end
return {report, run, redis.call('HGET', state, '_findings') or '0',
  redis.call('HGET', state, '_created_at') or '0', redis.call('HGET', state, '_name') or ''}
