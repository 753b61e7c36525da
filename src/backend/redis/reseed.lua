-- Names this Redis's data with an epoch. A Redis that has none is new, or lost its data
-- (restarted empty): it gets a new epoch, and the seq counter and the fencing counter are
-- raised above the highest the calling node has seen plus a margin (a block of 2^20).
-- A node that knew an older epoch (it lived through the loss) raises them above what it
-- saw too, when it reconnects. So no seq or fencing token is handed out twice, except a
-- token granted between the loss and the reconnection of the node that knew a higher one.
-- KEYS: 1 the seq counter, 2 the epoch, 3 the fencing counter
-- ARGV: 1 the highest seq the node has seen, 2 a new epoch, 3 the margin,
--       4 the highest fencing token the node has seen, 5 the epoch the node knew ("")
-- Returns the epoch.
local margin = tonumber(ARGV[3])
local function raise(key, seen)
  seen = tonumber(seen)
  if seen > 0 and tonumber(redis.call('GET', key) or '0') < seen + margin then
    redis.call('SET', key, string.format('%d', seen + margin))
  end
end
local e = redis.call('GET', KEYS[2])
if e and (ARGV[5] == '' or ARGV[5] == e) then
  return e
end
raise(KEYS[1], ARGV[1])
raise(KEYS[3], ARGV[4])
if not e then
  redis.call('SET', KEYS[2], ARGV[2])
  e = ARGV[2]
end
return e
