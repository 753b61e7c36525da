-- Sequences a publish request: n publications get the next n seqs of the cluster
-- (one strictly increasing sequence) and go onto the stream as entries "<seq>-0", in
-- one atomic call, so the request is all or nothing. The service tasks the node matched
-- go onto their groups' queues in the same call (see tasks.lua), so a task exists
-- before its publisher is answered.
-- KEYS: 1 the seq counter, 2 the stream, 3 the epoch, 4 the durable index's version
-- ARGV: 1 the stream's length bound, 2 the epoch the node knows, 3 the index version the
--       node matched against, 4 the key prefix, 5 a channel backlog's bound, 6 n, then
--       per publication: path, event type, data (JSON text), the number of tasks k, then
--       k × (owner, ids)
-- Returns {first, last}, -1 when the epoch is not the node's (Redis lost its data: the
-- node re-seeds and tries again), or -2 when the durable index moved (the node reloads
-- it, matches again and tries again).
if redis.call('GET', KEYS[3]) ~= ARGV[2] then
  return -1
end
if (redis.call('GET', KEYS[4]) or '0') ~= ARGV[3] then
  return -2
end
local n = tonumber(ARGV[6])
local bound = tonumber(ARGV[5])
local last = redis.call('INCRBY', KEYS[1], n)
local first = last - n + 1
local t = redis.call('TIME')
local ms = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local b = 7
for i = 0, n - 1 do
  local seq = string.format('%d', first + i)
  local p, e, d = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  local k = tonumber(ARGV[b + 3])
  b = b + 4
  if k == 0 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], seq .. '-0',
      'p', p, 'e', e, 'd', d, 't', ms)
  else
    local groups = add_tasks(ARGV[4], seq, p, e, d, ms, ARGV, b, k, bound)
    b = b + 2 * k
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], seq .. '-0',
      'p', p, 'e', e, 'd', d, 't', ms, 'g', groups)
  end
end
return {first, last}
