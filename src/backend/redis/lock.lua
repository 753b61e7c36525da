-- A lock request, or a waiter's retry (PROTOCOL.md §10, cluster-wide). The lock is a
-- hash {h: holder, t: fencing token} that expires with its ttl (PX), so a holder whose
-- node died keeps it until then. Waiters queue in one list in arrival order, whichever
-- node they are on; only the head may take a free lock (first come, first served). A
-- waiter's entry says until when it waits and when its node last asked for it: a waiter
-- whose deadline passed, or whose node stopped asking (3 s), is dropped from the head.
-- KEYS: 1 the lock, 2 the waiters (list), 3 the waiters' deadline:heartbeat (hash),
--       4 the fencing counter
-- ARGV: 1 the holder id (node/shard/conn/gen), 2 ttl ms, 3 now ms,
--       4 wait until (ms; 0: do not wait)
-- Returns {1, token}: granted; {2, token}: extended (held already); {0}: waiting;
-- {-1}: not acquired.
local me, ttl, now, deadline = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local holder = redis.call('HGET', KEYS[1], 'h')
if holder == me then
  redis.call('PEXPIRE', KEYS[1], ttl)
  return {2, tonumber(redis.call('HGET', KEYS[1], 't'))}
end
while true do
  local head = redis.call('LINDEX', KEYS[2], 0)
  if not head then break end
  local meta = redis.call('HGET', KEYS[3], head)
  local alive = false
  if meta then
    local d, b = string.match(meta, '^(%d+):(%d+)$')
    alive = d ~= nil and tonumber(d) >= now and tonumber(b) + 3000 >= now
  end
  if alive then break end
  redis.call('LPOP', KEYS[2])
  redis.call('HDEL', KEYS[3], head)
end
if not holder then
  local head = redis.call('LINDEX', KEYS[2], 0)
  if (not head) or head == me then
    if head == me then
      redis.call('LPOP', KEYS[2])
      redis.call('HDEL', KEYS[3], me)
    end
    local t = redis.call('INCR', KEYS[4])
    redis.call('HSET', KEYS[1], 'h', me, 't', t)
    redis.call('PEXPIRE', KEYS[1], ttl)
    return {1, t}
  end
end
if deadline > now then
  if redis.call('HEXISTS', KEYS[3], me) == 0 then
    redis.call('RPUSH', KEYS[2], me)
  end
  redis.call('HSET', KEYS[3], me, string.format('%d:%d', deadline, now))
  return {0}
end
return {-1}
