#!lua flags=allow-oom
-- A node's periodic word for one room it has members in: renews its
-- presence lease and, for a sticky owner, checks the room's owner record
-- and keeps the placement pinned and its epoch counter alive. Returns
-- {lost, owned, seq}: lost = 1 when the lease had lapsed and was dropped
-- (the node must write its members' entries again); owned = 0 when the
-- owner record no longer names this node at its epoch (1 otherwise, and
-- when no owner is given); seq, the room's latest seq, so that a node
-- notices a message it never delivered in a room that went quiet.
-- Allowed when Redis is at `maxmemory` (noeviction): it rewrites what is
-- there, and a full Redis must refuse publishes, not cost a node its rooms.
local presence_key = KEYS[1]   -- turnout:{room}:presence
local holders_key  = KEYS[2]   -- turnout:{room}:holders
local owner_key    = KEYS[3]   -- turnout:{room}:owner
local claims_key   = KEYS[4]   -- turnout:{room}:claims
local seq_key      = KEYS[5]   -- turnout:{room}:seq
local holder       = ARGV[1]
local lease        = tonumber(ARGV[2])   -- ms
local ttl          = ARGV[3]   -- room_ttl, ms
local owner        = ARGV[4]   -- '' = no ownership to check
local owner_epoch  = ARGV[5]
local pin          = ARGV[6]   -- placement_ttl, ms
local epoch_ttl    = ARGV[7]   -- how long the epoch counter lives after this renewal (twice pin), ms

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lost = redis.call('HSET', holders_key, holder, now + lease)
redis.call('PEXPIRE', holders_key, ttl)
redis.call('PEXPIRE', presence_key, ttl)
local owned = 1
if owner ~= '' then
  local o = redis.call('HMGET', owner_key, 'node', 'epoch')
  if o[1] == owner and o[2] == owner_epoch then
    redis.call('PEXPIRE', owner_key, pin)
    redis.call('PEXPIRE', claims_key, epoch_ttl)
  else
    owned = 0
  end
end
return {lost, owned, tonumber(redis.call('GET', seq_key) or '0')}
