-- One entity write, atomic with its publication: applied only over the version the node
-- decided against (optimistic concurrency: a concurrent write in between makes the node
-- read again and decide again, so no update is lost), then sequenced onto the stream,
-- with the service tasks it matched (see tasks.lua).
-- KEYS: 1 the seq counter, 2 the stream, 3 the epoch, 4 the entity's hash {s, v},
--       5 the durable index's version
-- ARGV: 1 the stream's length bound, 2 the epoch the node knows, 3 the version read
--       ("0": absent), 4 the new state (JSON text; "": deleted), 5 path, 6 event type,
--       7 collection, 8 id, 9 the index version the node matched against, 10 the key
--       prefix, 11 the event's data (JSON text, for tasks), 12 a channel backlog's
--       bound, 13 the number of tasks k, then k × (owner, ids)
-- Returns the write's seq, -1 (epoch: re-seed and retry), -2 (the version moved:
-- read and decide again) or -3 (the durable index moved: reload it and retry).
if redis.call('GET', KEYS[3]) ~= ARGV[2] then
  return -1
end
local v = redis.call('HGET', KEYS[4], 'v')
if (v or '0') ~= ARGV[3] then
  return -2
end
if (redis.call('GET', KEYS[5]) or '0') ~= ARGV[9] then
  return -3
end
local seq = redis.call('INCR', KEYS[1])
local t = redis.call('TIME')
local ms = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
if ARGV[4] == '' then
  redis.call('DEL', KEYS[4])
else
  redis.call('HSET', KEYS[4], 's', ARGV[4], 'v', string.format('%d', seq))
end
local id = string.format('%d-0', seq)
local k = tonumber(ARGV[13])
if k == 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], id,
    'p', ARGV[5], 'e', ARGV[6], 'c', ARGV[7], 'i', ARGV[8], 'a', ARGV[4], 't', ms)
else
  local groups = add_tasks(ARGV[10], string.format('%d', seq), ARGV[5], ARGV[6], ARGV[11],
    ms, ARGV, 14, k, tonumber(ARGV[12]))
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], id,
    'p', ARGV[5], 'e', ARGV[6], 'c', ARGV[7], 'i', ARGV[8], 'a', ARGV[4], 't', ms,
    'g', groups)
end
return seq
