-- One entity write, atomic with its publication: applied only over the version the node
-- decided against (optimistic concurrency: a concurrent write in between makes the node
-- read again and decide again, so no update is lost), then sequenced onto the stream.
-- KEYS: 1 the seq counter, 2 the stream, 3 the epoch, 4 the entity's hash {s, v}
-- ARGV: 1 the stream's length bound, 2 the epoch the node knows, 3 the version read
--       ("0": absent), 4 the new state (JSON text; "": deleted), 5 path, 6 event type,
--       7 collection, 8 id
-- Returns the write's seq, -1 (epoch: re-seed and retry) or -2 (the version moved:
-- read and decide again).
if redis.call('GET', KEYS[3]) ~= ARGV[2] then
  return -1
end
local v = redis.call('HGET', KEYS[4], 'v')
if (v or '0') ~= ARGV[3] then
  return -2
end
local seq = redis.call('INCR', KEYS[1])
local t = redis.call('TIME')
local ms = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
if ARGV[4] == '' then
  redis.call('DEL', KEYS[4])
else
  redis.call('HSET', KEYS[4], 's', ARGV[4], 'v', string.format('%d', seq))
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], string.format('%d-0', seq),
  'p', ARGV[5], 'e', ARGV[6], 'c', ARGV[7], 'i', ARGV[8], 'a', ARGV[4], 't', ms)
return seq
