-- Prepended to publish.lua and entity.lua: a publication's service tasks.
-- Each task is an entry "<seq>-0" on its group's queue (a stream with the consumer group
-- "w"), self-contained (the publication's fields and the matched subscription ids), so
-- it outlives the publication stream's window. Returns the groups, one per line, for the
-- publication's entry: nodes read them to wake their instances' delivery.
local function add_tasks(prefix, seq, p, e, d, ms, argv, b, k)
  local groups = {}
  for j = 0, k - 1 do
    local g, ids = argv[b + 2 * j], argv[b + 2 * j + 1]
    redis.call('XADD', prefix .. 'q:' .. g, seq .. '-0',
      's', seq, 'p', p, 'e', e, 'd', d, 't', ms, 'i', ids)
    groups[#groups + 1] = g
  end
  return table.concat(groups, '\n')
end
