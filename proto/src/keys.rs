//! Every Redis key and channel turnout uses. All keys of one room share the
//! hash tag `{room}`, so they live in one slot of a Redis Cluster and one
//! script may touch them all; the membership keys (node set, heartbeats,
//! draining set) share the tag `{nodes}`, so a heartbeat, a drop or a
//! liveness check is one single-slot step too. Rooms spread over a
//! cluster's shards by name; membership is small and lives on one.

/// Set of node ids that have heartbeated; entries whose heartbeat key expired
/// are removed by routers.
pub const NODES: &str = "turnout:{nodes}";
/// Channel on which nodes announce that they joined, changed state or left,
/// so routers refresh at once instead of at their next poll.
pub const MEMBERSHIP_CHANNEL: &str = "turnout:{nodes}:membership";

/// Set of node ids that are draining: alive, but owners of nothing new.
pub const DRAINING: &str = "turnout:{nodes}:draining";
/// Prefix of heartbeat keys (see [`node`]), for scripts that build them.
pub const NODE_PREFIX: &str = "turnout:{nodes}:node:";

/// Backend inbox: a stream of what clients publish (fields `room`, `seq`,
/// `user`, `message`), bounded by the ws-nodes' `inbox_size`, for backends
/// to consume with consumer groups. One stream in both modes; on a Redis
/// Cluster it lives on one shard and is appended to after the room's
/// publish (at least once: a resent publish may append its entry again).
pub const INBOX: &str = "turnout:inbox";

/// Prefix of nodes' control channels (see [`node_control`]).
pub const CONTROL_PREFIX: &str = "turnout:control:";

/// A node's control channel: claims that take a room from the node say so
/// here (`moved <room> <epoch> <new owner>`), so the old owner moves the
/// room's members at once.
pub fn node_control(id: &str) -> String {
    format!("{CONTROL_PREFIX}{id}")
}

/// Heartbeat record of a node (JSON `NodeInfo`), with a TTL.
pub fn node(id: &str) -> String {
    format!("{NODE_PREFIX}{id}")
}

/// Last assigned seq of a room (INCR).
pub fn room_seq(room: &str) -> String {
    format!("turnout:{{{room}}}:seq")
}

/// History stream of a room; entry ids are `<seq>-0`.
pub fn room_history(room: &str) -> String {
    format!("turnout:{{{room}}}:hist")
}

/// Pub/sub channel of a room: ws-nodes relay it (pubsub strategy), gateways
/// follow it for `Subscribe` and SSE (both strategies).
pub fn room_channel(room: &str) -> String {
    format!("turnout:{{{room}}}:bus")
}

/// Room name from a room channel name.
pub fn room_from_channel(channel: &str) -> Option<&str> {
    channel.strip_prefix("turnout:{")?.strip_suffix("}:bus")
}

/// Owner of a room (sticky): hash `node`, `epoch`.
pub fn room_owner(room: &str) -> String {
    format!("turnout:{{{room}}}:owner")
}

/// Claim counter of a room (sticky): incremented on every claim, its value
/// is the ownership epoch that fences a node that lost the room.
pub fn room_claims(room: &str) -> String {
    format!("turnout:{{{room}}}:claims")
}

/// History epoch of a room: set when the room's seq starts at 1, so a room
/// whose state was lost (e.g. Redis restarted empty) gets a new epoch and
/// clients can tell "nothing missed" from "history gone".
pub fn room_epoch(room: &str) -> String {
    format!("turnout:{{{room}}}:epoch")
}

/// Presence of a room: hash `"<holder>/<conn>"` → user id, where a holder
/// is one node process (`<node>/<incarnation>`).
pub fn room_presence(room: &str) -> String {
    format!("turnout:{{{room}}}:presence")
}

/// Presence leases of a room: hash holder → lease end (ms, Redis clock),
/// renewed by each node with members in the room while it lives.
pub fn room_holders(room: &str) -> String {
    format!("turnout:{{{room}}}:holders")
}

/// A publish id a room remembers for `dedupe_window`: the seq it was
/// accepted with, per sender (`user`; empty for the server API, whose
/// idempotency keys are the room's own). `/` is in no user id, so two
/// senders' ids never meet.
pub fn room_publish_id(room: &str, user: &str, id: &str) -> String {
    format!("turnout:{{{room}}}:id:{user}/{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_round_trip() {
        let c = room_channel("r1");
        assert_eq!(c, "turnout:{r1}:bus");
        assert_eq!(room_from_channel(&c), Some("r1"));
        assert_eq!(room_from_channel(MEMBERSHIP_CHANNEL), None);
    }

    #[test]
    fn publish_ids_of_two_senders_differ() {
        assert_ne!(
            room_publish_id("r", "a:b", "c"),
            room_publish_id("r", "a", "b:c")
        );
        assert_ne!(
            room_publish_id("r", "", "api/x"),
            room_publish_id("r", "api", "x")
        );
    }
}
