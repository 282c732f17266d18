-- Sticky placement: makes `candidate` the owner of a room unless it has an
-- owner that is not known to be gone, and returns the owner: {node, epoch,
-- claimed}. Liveness is the caller's to tell (heartbeats live in other
-- slots of a Redis Cluster): ARGV[5..] are the nodes it checked and found
-- dead or draining. Every new claim increments the room's epoch, which
-- fences the old owner's publishes, and tells the old owner on its control
-- channel. Atomic, so routers and nodes racing on one room always agree.
-- An empty candidate only reads the owner. The epoch counter lives at least
-- `pin` after a claim; renew.lua keeps it for twice `pin` after each renewal
-- while the room has members (so it outlives the owner record, pinned for
-- `pin`), and a room that empties leaves nothing behind for long.
local owner_key  = KEYS[1]   -- turnout:{room}:owner
local claims_key = KEYS[2]   -- turnout:{room}:claims
local candidate  = ARGV[1]
local pin        = ARGV[2]   -- how long the placement stays unused, ms
local room       = ARGV[3]
local control    = ARGV[4]   -- prefix of nodes' control channels

local o = redis.call('HMGET', owner_key, 'node', 'epoch')
local owner = o[1]
if owner then
  local gone = false
  for i = 5, #ARGV do
    if ARGV[i] == owner then gone = true break end
  end
  if not gone or candidate == '' or candidate == owner then
    if candidate ~= '' then
      redis.call('PEXPIRE', owner_key, pin)
      -- The epoch counter outlives the record it numbers (relay owners
      -- renew their rooms this way), so a later claim never reuses an epoch.
      if candidate == owner and redis.call('PTTL', claims_key) < 2 * tonumber(pin) then
        redis.call('PEXPIRE', claims_key, 2 * tonumber(pin))
      end
    end
    return {owner, tonumber(o[2]), 0}
  end
end
if candidate == '' then return {'', 0, 0} end
local epoch = redis.call('INCR', claims_key)
if redis.call('PTTL', claims_key) < tonumber(pin) then
  redis.call('PEXPIRE', claims_key, pin)
end
redis.call('HSET', owner_key, 'node', candidate, 'epoch', epoch)
redis.call('PEXPIRE', owner_key, pin)
if owner then
  redis.call('PUBLISH', control .. owner, 'moved ' .. room .. ' ' .. epoch .. ' ' .. candidate)
end
return {candidate, epoch, 1}
