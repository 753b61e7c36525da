-- Changes a group's durable subscriptions and the index's version in one call, so a
-- publication sequenced after it is matched against the new index by whichever node
-- publishes it (publish.lua refuses an older version).
-- KEYS: 1 the index (hash "group\0id" → JSON), 2 its version, 3 the set of groups,
--       4 the group's queue, 5 the seq counter
-- ARGV: 1 the group, 2 "add" or "remove", then for add: (field, JSON) pairs, for
--       remove: fields
-- Returns {version, seq at the change, flag per subscription}: for add 1 when an
-- identical subscription existed, for remove 1 when it existed.
local flags = {}
if ARGV[2] == 'add' then
  redis.call('SADD', KEYS[3], ARGV[1])
  redis.pcall('XGROUP', 'CREATE', KEYS[4], 'w', '0', 'MKSTREAM')
  for i = 3, #ARGV, 2 do
    local old = redis.call('HGET', KEYS[1], ARGV[i])
    flags[#flags + 1] = (old == ARGV[i + 1]) and 1 or 0
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
else
  for i = 3, #ARGV do
    flags[#flags + 1] = redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
local v = redis.call('INCR', KEYS[2])
local seq = tonumber(redis.call('GET', KEYS[5]) or '0')
return {v, seq, flags}
