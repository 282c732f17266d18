-- Assigns the next seq of a room, appends the rendered frame to the room's
-- history, publishes it on the room's channel and, for a client's message
-- with the inbox on, appends it to the backend inbox: one atomic step, so a
-- message on the bus always has its seq and is already in history and in
-- the inbox. Returns {seq, epoch, 0, first} (the room's history epoch, which
-- the bus message carries too; first = 1 when this message began the epoch,
-- and its frame names it), or {-1, '', 0, 0} when `owner` is set and the
-- room's owner record no longer names that node at that epoch (a stale
-- sticky owner cannot deliver).
--
-- Idempotent publish: with `dedupe_key` set (the room's key for this
-- sender's publish id) a publish whose id was accepted within the window
-- is not published again; it returns {seq of the first, epoch, 1, 0}.
local seq_key     = KEYS[1]   -- turnout:{room}:seq
local hist_key    = KEYS[2]   -- turnout:{room}:hist
local owner_key   = KEYS[3]   -- turnout:{room}:owner
local epoch_key   = KEYS[4]   -- turnout:{room}:epoch
local inbox_key   = KEYS[5]   -- turnout:inbox; on a Redis Cluster the seq key (inbox off here)
local dedupe_key  = KEYS[6]   -- turnout:{room}:id:<user>/<id>, or the seq key when no id
local prefix      = ARGV[1]   -- the frame up to its seq
local suffix      = ARGV[2]   -- the frame after its seq
local keep        = tonumber(ARGV[3])  -- history_size; 0 = no history
local ttl         = ARGV[4]   -- room_ttl, ms
local channel     = ARGV[5]   -- the room's channel
local owner       = ARGV[6]   -- sticky: the publishing owner; '' = anyone
local owner_epoch = ARGV[7]
local inbox_size  = ARGV[8]   -- '0' = not to the inbox
local user        = ARGV[9]
local room        = ARGV[10]
local dedupe_ms   = tonumber(ARGV[11])  -- dedupe_window, ms; 0 = no id to remember
local publish_cmd = ARGV[12]  -- 'PUBLISH', or 'SPUBLISH' on a Redis Cluster (the room's shard only); '' = not on the channel (relay)

if owner ~= '' then
  local o = redis.call('HMGET', owner_key, 'node', 'epoch')
  if o[1] ~= owner or o[2] ~= owner_epoch then return {-1, '', 0, 0} end
end
if dedupe_ms > 0 then
  local first = redis.call('GET', dedupe_key)
  if first then
    return {tonumber(first), redis.call('GET', epoch_key) or '', 1, 0}
  end
end
local seq = redis.call('INCR', seq_key)
-- The room's history epoch. Each kept message carries it too, so losing
-- the epoch key alone (eviction) loses nothing: the room goes on in the
-- epoch of its last message. Only a room that starts over at seq 1 (all
-- its state gone, or never there) gets a new one.
local epoch = redis.call('GET', epoch_key)
local last = nil
if keep > 0 and (seq == 1 or not epoch) then
  last = redis.call('XREVRANGE', hist_key, '+', '-', 'COUNT', 1)[1]
end
if seq == 1 and last then
  -- The counter was lost (evicted) while history survived: go on after the
  -- last kept message, or XADD below would refuse every id from now on.
  seq = tonumber(string.match(last[1], '^(%d+)')) + 1
  redis.call('SET', seq_key, seq)
end
if seq == 1 then
  epoch = false
elseif not epoch and last then
  epoch = last[2][4] or false
  if epoch then redis.call('SET', epoch_key, epoch, 'PX', ttl) end
elseif epoch then
  redis.call('PEXPIRE', epoch_key, ttl)
end
local frame
local first = 0
if not epoch then
  local t = redis.call('TIME')
  epoch = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('SET', epoch_key, epoch, 'PX', ttl)
  -- The first message of an epoch names it: a member that joined the room
  -- before it had one learns the epoch its seqs count in.
  frame = prefix .. seq .. ',"epoch":"' .. epoch .. '"' .. suffix
  first = 1
else
  frame = prefix .. seq .. suffix
end
if keep > 0 then
  redis.call('XADD', hist_key, 'MAXLEN', keep, seq .. '-0', 'f', frame, 'e', epoch)
  redis.call('PEXPIRE', hist_key, ttl)
end
redis.call('PEXPIRE', seq_key, ttl)
if publish_cmd ~= '' then
  redis.call(publish_cmd, channel, seq .. ' ' .. epoch .. ' ' .. frame)
end
if inbox_size ~= '0' then
  redis.call('XADD', inbox_key, 'MAXLEN', inbox_size, '*',
    'room', room, 'seq', seq, 'user', user, 'message', frame)
end
if dedupe_ms > 0 then
  redis.call('SET', dedupe_key, seq, 'PX', dedupe_ms)
end
return {seq, epoch, 0, first}
