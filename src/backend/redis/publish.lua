-- Sequences a publish request: n publications get the next n seqs of the cluster
-- (one strictly increasing sequence) and go onto the stream as entries "<seq>-0", in
-- one atomic call, so the request is all or nothing.
-- KEYS: 1 the seq counter, 2 the stream, 3 the epoch
-- ARGV: 1 the stream's length bound, 2 the epoch the node knows, 3 n,
--       then per publication: path, event type, data (JSON text)
-- Returns {first, last}, or -1 when the epoch is not the node's (Redis lost its data:
-- the node re-seeds and tries again).
if redis.call('GET', KEYS[3]) ~= ARGV[2] then
  return -1
end
local n = tonumber(ARGV[3])
local last = redis.call('INCRBY', KEYS[1], n)
local first = last - n + 1
local t = redis.call('TIME')
local ms = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
for i = 0, n - 1 do
  local b = 4 + i * 3
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], string.format('%d-0', first + i),
    'p', ARGV[b], 'e', ARGV[b + 1], 'd', ARGV[b + 2], 't', ms)
end
return {first, last}
