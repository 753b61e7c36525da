-- Names this Redis's data with an epoch. A Redis that has none is new, or lost its data
-- (restarted empty): it gets a new epoch, and the seq counter is raised above the
-- highest seq the calling node has seen plus a margin (a block of 2^20), so no seq is
-- ever handed out twice. With an epoch already there, nothing changes.
-- KEYS: 1 the seq counter, 2 the epoch
-- ARGV: 1 the highest seq the node has seen, 2 a new epoch, 3 the margin
-- Returns the epoch.
local e = redis.call('GET', KEYS[2])
if e then
  return e
end
local seen = tonumber(ARGV[1])
if seen > 0 then
  seen = seen + tonumber(ARGV[3])
end
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < seen then
  redis.call('SET', KEYS[1], string.format('%d', seen))
end
redis.call('SET', KEYS[2], ARGV[2])
return ARGV[2]
