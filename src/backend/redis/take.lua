-- A node takes tasks of one group for its instances: first what is due again (failed
-- with a retry time that passed, given back by an instance that closed, or not completed
-- within ack_timeout_ms by whichever node held it, including a node that died), then
-- new tasks. Redis's delivery count is the attempt; a task delivered max_attempts times
-- goes to the dead letters instead of out again.
-- KEYS: 1 the queue (stream, consumer group "w"), 2 due times (hash entry id → ms),
--       3 dead letters (zset of seqs), 4 dead letters' records (hash seq → JSON),
--       5 replayed tasks' entry ids (hash seq → entry id)
-- ARGV: 1 the consumer (the node id), 2 ack_timeout_ms, 3 how many at most,
--       4 max_attempts
-- Returns {dead, e1, e2, ...}: each e = {entry id, attempt, field, value, ...}.
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
local want = tonumber(ARGV[3])
local max_attempts = tonumber(ARGV[4])
local out = {0}
local due = {}
local seen = {}
local function consider(id)
  if not seen[id] then
    seen[id] = true
    due[#due + 1] = id
  end
end
local r = redis.pcall('XPENDING', KEYS[1], 'w', 'IDLE', ARGV[2], '-', '+', want)
if type(r) == 'table' and r.err then
  -- No such group (a queue made by a publication after Redis lost the group): made now.
  redis.pcall('XGROUP', 'CREATE', KEYS[1], 'w', '0', 'MKSTREAM')
  r = {}
end
local marks = redis.call('HGETALL', KEYS[2])
for i = 1, #marks, 2 do
  if tonumber(marks[i + 1]) <= now then
    consider(marks[i])
  end
end
for _, p in ipairs(r) do
  -- Failed with a retry time still ahead: not due, however long ago it went out.
  local mark = redis.call('HGET', KEYS[2], p[1])
  if not mark or tonumber(mark) <= now then
    consider(p[1])
  end
end
local taken = 0
for _, id in ipairs(due) do
  if taken >= want then break end
  local p = redis.call('XPENDING', KEYS[1], 'w', id, id, 1)
  redis.call('HDEL', KEYS[2], id)
  if #p == 1 then
    local count = tonumber(p[1][4])
    if count >= max_attempts then
      local e = redis.call('XRANGE', KEYS[1], id, id)
      if #e == 1 then
        local f = e[1][2]
        local rec = {a = count}
        for i = 1, #f, 2 do rec[f[i]] = f[i + 1] end
        redis.call('ZADD', KEYS[3], tonumber(rec.s), rec.s)
        redis.call('HSET', KEYS[4], rec.s, cjson.encode(rec))
        redis.call('HDEL', KEYS[5], rec.s)
      end
      redis.call('XACK', KEYS[1], 'w', id)
      redis.call('XDEL', KEYS[1], id)
      out[1] = out[1] + 1
    else
      local c = redis.call('XCLAIM', KEYS[1], 'w', ARGV[1], 0, id)
      if #c == 1 and c[1] then
        out[#out + 1] = {c[1][1], count + 1, c[1][2]}
        taken = taken + 1
      end
    end
  end
end
if taken < want then
  local n = redis.pcall('XREADGROUP', 'GROUP', 'w', ARGV[1], 'COUNT', want - taken,
    'STREAMS', KEYS[1], '>')
  if type(n) == 'table' and not n.err and n[1] then
    for _, e in ipairs(n[1][2]) do
      out[#out + 1] = {e[1], 1, e[2]}
    end
  end
end
return out
