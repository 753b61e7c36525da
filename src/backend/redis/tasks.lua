-- Prepended to publish.lua and entity.lua: a publication's service tasks and channel
-- backlog entries.
-- A task is an entry "<seq>-0" on its group's queue (a stream with the consumer group
-- "w"), self-contained (the publication's fields and the matched subscription ids), so
-- it outlives the publication stream's window. An owner whose name starts with a NUL
-- byte is a channel: the entry goes to its backlog (a stream bounded to `bound` entries,
-- the oldest dropped and counted) and its counters move, if it still exists. Returns the
-- owners, one per line, for the publication's entry: nodes read them to wake delivery.
local function add_tasks(prefix, seq, p, e, d, ms, argv, b, k, bound)
  local owners = {}
  for j = 0, k - 1 do
    local g, ids = argv[b + 2 * j], argv[b + 2 * j + 1]
    if string.byte(g, 1) == 0 then
      local id = string.sub(g, 2)
      local ck = prefix .. 'ch:' .. id
      local status = redis.call('HGET', ck, 'status')
      if status then
        local cb = prefix .. 'cb:' .. id
        redis.call('XADD', cb, seq .. '-0', 'p', p, 'e', e, 'd', d, 't', ms)
        local over = redis.call('XLEN', cb) - bound
        if over > 0 then
          redis.call('XTRIM', cb, 'MAXLEN', bound)
          redis.call('HINCRBY', ck, 'dropped', over)
          redis.call('INCRBY', prefix .. 'chdropped', over)
        end
        redis.call('INCR', prefix .. 'chcollected')
        redis.call('HINCRBY', ck, 'event_count', 1)
        redis.call('HSET', ck, 'last_event_at_ms', ms)
        if status == 'disconnected' then
          redis.call('HINCRBY', ck, 'missed', 1)
        end
        owners[#owners + 1] = g
      end
    else
      redis.call('XADD', prefix .. 'q:' .. g, seq .. '-0',
        's', seq, 'p', p, 'e', e, 'd', d, 't', ms, 'i', ids)
      owners[#owners + 1] = g
    end
  end
  return table.concat(owners, '\n')
end
