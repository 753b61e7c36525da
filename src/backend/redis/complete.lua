-- taskComplete: each task still pending is acknowledged and removed; unknown or already
-- completed ones are ignored (acknowledgements are idempotent, PROTOCOL.md §10).
-- KEYS: 1 the queue, 2 due times, 3 replayed tasks' entry ids
-- ARGV: seqs
-- Returns how many were completed now.
local n = 0
for _, seq in ipairs(ARGV) do
  local replayed = redis.call('HGET', KEYS[3], seq)
  local id = replayed or (seq .. '-0')
  local a = redis.call('XACK', KEYS[1], 'w', id)
  if a > 0 then
    n = n + a
    redis.call('XDEL', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    if replayed then
      redis.call('HDEL', KEYS[3], seq)
    end
  end
end
return n
