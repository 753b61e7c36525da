-- A channel's state changes in cluster mode (PROTOCOL.md §9, §14), one call each so that
-- concurrent requests on several nodes see one order. ARGV[1] names the operation.
-- The channel is a hash {spec, created, status, socket, event_count, last_event_at_ms,
-- missed, dropped}; `socket` is "<node_id>|<process>|<shard>:<conn>:<gen>" of the one
-- socket taking its events ("" when none); its backlog is a stream (see tasks.lua).
-- KEYS: 1 the channel, 2 its backlog, 3 the set of channels (zset by creation time),
--       4 the channels' subscriptions (hash id -> JSON), 5 the index version,
--       6 the owner's channel count, 7 the newest creation time given
local op = ARGV[1]
if op == 'create' then
  -- ARGV: 2 id, 3 spec JSON, 4 subscription JSON, 5 the owner's cap (0: none), 6 now ms
  local owned = tonumber(redis.call('GET', KEYS[6]) or '0')
  local cap = tonumber(ARGV[5])
  if cap > 0 and owned >= cap then
    return {-1, owned}
  end
  -- Later than every channel before it, so the list's creation order holds cluster-wide.
  local created = math.max(tonumber(ARGV[6]), tonumber(redis.call('GET', KEYS[7]) or '0') + 1)
  created = string.format('%d', created)
  redis.call('SET', KEYS[7], created)
  redis.call('INCR', KEYS[6])
  redis.call('HSET', KEYS[1], 'spec', ARGV[3], 'created', created, 'status', 'connected',
    'socket', '', 'event_count', 0, 'missed', 0, 'dropped', 0)
  redis.call('ZADD', KEYS[3], created, ARGV[2])
  redis.call('HSET', KEYS[4], ARGV[2], ARGV[4])
  return {created, redis.call('INCR', KEYS[5])}
elseif op == 'delete' then
  -- ARGV: 2 id. Returns the socket it had, or nil when it was gone already.
  local socket = redis.call('HGET', KEYS[1], 'socket')
  if not socket then
    return false
  end
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('ZREM', KEYS[3], ARGV[2])
  redis.call('HDEL', KEYS[4], ARGV[2])
  redis.call('INCR', KEYS[5])
  if tonumber(redis.call('DECR', KEYS[6])) <= 0 then
    redis.call('DEL', KEYS[6])
  end
  return socket
elseif op == 'reconnect' then
  -- Returns the events missed since the socket dropped, or nil.
  local missed = redis.call('HGET', KEYS[1], 'missed')
  if not missed then
    return false
  end
  redis.call('HSET', KEYS[1], 'missed', 0, 'status', 'connected')
  return tonumber(missed)
elseif op == 'attach' then
  -- ARGV: 2 the new socket. Returns the socket it replaces ("" none), or nil.
  local old = redis.call('HGET', KEYS[1], 'socket')
  if not old then
    return false
  end
  redis.call('HSET', KEYS[1], 'socket', ARGV[2], 'status', 'connected', 'missed', 0)
  return old
elseif op == 'detach' then
  -- ARGV: 2 the socket that closed: the channel is disconnected if it was still its one.
  if redis.call('HGET', KEYS[1], 'socket') == ARGV[2] then
    redis.call('HSET', KEYS[1], 'socket', '', 'status', 'disconnected', 'missed', 0)
    return 1
  end
  return 0
elseif op == 'pump' then
  -- ARGV: 2 the socket, 3 the last entry id sent ("-": none), 4 how many. Returns -1
  -- when the socket is not the channel's any more, -2 when the channel is gone, else
  -- the next entries.
  local socket = redis.call('HGET', KEYS[1], 'socket')
  if not socket then
    return -2
  end
  if socket ~= ARGV[2] then
    return -1
  end
  local from = ARGV[3] == '-' and '-' or ('(' .. ARGV[3])
  return redis.call('XRANGE', KEYS[2], from, '+', 'COUNT', ARGV[4])
elseif op == 'written' then
  -- ARGV: 2 the socket, 3 the newest seq written: those leave the backlog, if the
  -- socket is still the channel's (a replaced one's writes say nothing of the new one).
  if redis.call('HGET', KEYS[1], 'socket') == ARGV[2] then
    redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d-1', tonumber(ARGV[3])))
    return 1
  end
  return 0
end
return redis.error_reply('unknown channel operation ' .. op)
