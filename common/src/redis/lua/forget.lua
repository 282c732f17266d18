-- Removes a node id from the node set only if its heartbeat record is
-- still absent, so a node that heartbeats concurrently is never dropped.
local nodes_key = KEYS[1]   -- turnout:nodes
local node_key  = KEYS[2]   -- turnout:node:<id>
local id        = ARGV[1]

if redis.call('EXISTS', node_key) == 0 then
  return redis.call('SREM', nodes_key, id)
end
return 0
