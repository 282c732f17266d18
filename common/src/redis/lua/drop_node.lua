-- Removes a dead node from the live set, but only if its heartbeat record
-- is still the one the caller read: a node that heartbeated since (it was
-- only slow, or came back) keeps its place. Announces the change.
local node_key  = KEYS[1]   -- turnout:node:<id>
local nodes_key = KEYS[2]   -- turnout:nodes
local record    = ARGV[1]   -- the heartbeat record as read
local id        = ARGV[2]
local channel   = ARGV[3]   -- turnout:membership

if redis.call('GET', node_key) ~= record then return 0 end
redis.call('DEL', node_key)
redis.call('SREM', nodes_key, id)
redis.call('PUBLISH', channel, id)
return 1
