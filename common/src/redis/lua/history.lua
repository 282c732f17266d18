-- Reads a room's current seq, its history epoch, the seq of its oldest kept
-- message, and up to `limit` messages from `from` on (at most `max_bytes` of
-- them, but at least one), atomically. Returns {seq, oldest, seqs, frames,
-- epoch}; a reader that got fewer than it asked for reads on after them.
local seq_key   = KEYS[1]   -- turnout:{room}:seq
local hist_key  = KEYS[2]   -- turnout:{room}:hist
local epoch_key = KEYS[3]   -- turnout:{room}:epoch
local from      = ARGV[1]   -- first stream id to return, `<seq>-0`
local limit     = tonumber(ARGV[2])
local max_bytes = tonumber(ARGV[3])   -- 0 = no bound

local seq = tonumber(redis.call('GET', seq_key) or '0')
local epoch = redis.call('GET', epoch_key)
local oldest = 0
local first = redis.call('XRANGE', hist_key, '-', '+', 'COUNT', 1)
if #first > 0 then oldest = tonumber(string.match(first[1][1], '^(%d+)')) end
if not epoch or seq == 0 then
  -- A lost epoch or seq key (eviction): the last kept message says both
  -- (publish.lua goes on from it).
  local last = redis.call('XREVRANGE', hist_key, '+', '-', 'COUNT', 1)[1]
  if last then
    epoch = epoch or last[2][4]
    if seq == 0 then seq = tonumber(string.match(last[1], '^(%d+)')) end
  end
end
epoch = epoch or ''
local seqs, frames = {}, {}
if limit > 0 then
  local entries = redis.call('XRANGE', hist_key, from, '+', 'COUNT', limit)
  local bytes = 0
  for i, e in ipairs(entries) do
    bytes = bytes + #e[2][2]
    if max_bytes > 0 and bytes > max_bytes and i > 1 then break end
    seqs[i] = tonumber(string.match(e[1], '^(%d+)'))
    frames[i] = e[2][2]
  end
end
return {seq, oldest, seqs, frames, epoch}
