-- Who is in a room, optionally adding one member first.
--
-- Entries are `<holder>/<conn>` -> user, where the holder is one process
-- (`<node>/<incarnation>`), and each holder has a lease in `holders_key`
-- that its node renews while it lives. Entries of a holder whose lease ran
-- out are dropped here, lease and all (the node re-asserts them if it comes
-- back), so a crashed node's members vanish within the lease and a process
-- restarted under the same node id never revives a dead one's entries.
-- A room with more than `limit` entries is sampled (HRANDFIELD), so joining
-- a huge room stays cheap. Returns {new_lease, entries, user, user, ...}:
-- new_lease = 1 when adding created the holder's lease (it had none: its
-- first member here, or a lease dropped while the node was cut off, whose
-- other members must then be written again).
local presence_key = KEYS[1]   -- turnout:{room}:presence
local holders_key  = KEYS[2]   -- turnout:{room}:holders
local limit        = tonumber(ARGV[1])
local field        = ARGV[2]   -- entry to add ('' = read only)
local user         = ARGV[3]
local holder       = ARGV[4]   -- the adding node's holder id
local lease        = tonumber(ARGV[5])   -- ms
local ttl          = ARGV[6]   -- room_ttl, ms

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local new_lease = 0
if field ~= '' then
  redis.call('HSET', presence_key, field, user)
  new_lease = redis.call('HSET', holders_key, holder, now + lease)
  redis.call('PEXPIRE', presence_key, ttl)
  redis.call('PEXPIRE', holders_key, ttl)
end
local total = redis.call('HLEN', presence_key)
local all
if total <= limit then
  all = redis.call('HGETALL', presence_key)
else
  all = redis.call('HRANDFIELD', presence_key, limit, 'WITHVALUES')
end
local users, alive = {new_lease, total}, {}
for i = 1, #all, 2 do
  local f, u = all[i], all[i + 1]
  local h = string.match(f, '^(.*)/[^/]*$') or ''
  local ok = alive[h]
  if ok == nil then
    local until_ms = tonumber(redis.call('HGET', holders_key, h) or '0')
    ok = until_ms >= now
    alive[h] = ok
    if not ok then redis.call('HDEL', holders_key, h) end
  end
  if ok then users[#users + 1] = u else redis.call('HDEL', presence_key, f) end
end
return users
