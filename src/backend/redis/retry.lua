-- taskFailed (ARGV[1] = retryInMs) or an instance that closed (0): each task still
-- pending becomes due again at now + ARGV[1], for whichever node takes it (take.lua).
-- KEYS: 1 the queue, 2 due times, 3 replayed tasks' entry ids
-- ARGV: 1 the delay in ms, then seqs
-- Returns how many were marked.
local t = redis.call('TIME')
local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local n = 0
for i = 2, #ARGV do
  local seq = ARGV[i]
  local id = redis.call('HGET', KEYS[3], seq) or (seq .. '-0')
  if #redis.call('XPENDING', KEYS[1], 'w', id, id, 1) == 1 then
    redis.call('HSET', KEYS[2], id, string.format('%d', due))
    n = n + 1
  end
end
return n
