-- Releases a lock if the caller holds it, and leaves the lock's wait queue (a holder that
-- disconnects does both). A waiter on any node takes the free lock at its next retry.
-- KEYS: 1 the lock, 2 the waiters (list), 3 the waiters' deadline:heartbeat (hash)
-- ARGV: 1 the holder id
-- Returns 1 if it held the lock (now released), else 0.
redis.call('LREM', KEYS[2], 0, ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if redis.call('HGET', KEYS[1], 'h') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
