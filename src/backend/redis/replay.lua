-- Dead letters back to the queue (ARGV[1] = "replay", attempt 1 again: new entries) or
-- purged ("purge"). A replayed task keeps its seq (its taskId) under a new entry id
-- "<current seq>-<n>", above every entry so far and below the next publication's.
-- KEYS: 1 the queue, 2 dead letters (zset), 3 their records, 4 replayed entry ids,
--       5 the seq counter
-- Returns how many.
local seqs = redis.call('ZRANGE', KEYS[2], 0, -1)
if ARGV[1] == 'replay' then
  local top = redis.call('GET', KEYS[5]) or '0'
  for _, s in ipairs(seqs) do
    local raw = redis.call('HGET', KEYS[3], s)
    if raw then
      local r = cjson.decode(raw)
      local id = redis.call('XADD', KEYS[1], top .. '-*', 's', r.s, 'p', r.p, 'e', r.e,
        'd', r.d, 't', r.t, 'i', r.i)
      redis.call('HSET', KEYS[4], s, id)
    end
  end
end
redis.call('DEL', KEYS[2], KEYS[3])
return #seqs
