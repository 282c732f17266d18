#!lua flags=allow-oom
-- A node's heartbeat: its record (with a TTL) and its place in the live
-- set, and, when `announce` is set, a word to routers on the membership
-- channel. Allowed when Redis is at `maxmemory` (noeviction): it rewrites a
-- record that is there already, and a full Redis must refuse publishes,
-- not make every node look dead.
local node_key  = KEYS[1]   -- turnout:{nodes}:node:<id>
local nodes_key = KEYS[2]   -- turnout:{nodes}
local record    = ARGV[1]   -- the node's NodeInfo, JSON
local ttl       = ARGV[2]   -- heartbeat_ttl, ms
local id        = ARGV[3]
local channel   = ARGV[4]   -- the membership channel; '' = no announcement

redis.call('SET', node_key, record, 'PX', ttl)
redis.call('SADD', nodes_key, id)
if channel ~= '' then redis.call('PUBLISH', channel, id) end
return 1
