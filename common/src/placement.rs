//! Placement of a room on an owner node (sticky, relay): rendezvous (HRW)
//! hashing with a load bound.
//!
//! A room's first placement goes to the live, non-draining node with the
//! highest hash score whose load is under ⌈c · (total + 1) / n⌉ (c =
//! `load_factor`); the choice is then pinned in Redis by an atomic claim, so
//! nodes that join later take only new rooms. HRW moves exactly the rooms of
//! a departed node; the bound keeps a node from taking more than its share.

use turnout_proto::v1::NodeInfo;
use xxhash_rust::xxh3::xxh3_64;

/// Rendezvous score of `node` for `room`.
pub fn score(room: &str, node: &str) -> u64 {
    let mut key = Vec::with_capacity(room.len() + node.len() + 1);
    key.extend_from_slice(room.as_bytes());
    key.push(0);
    key.extend_from_slice(node.as_bytes());
    xxh3_64(&key)
}

/// Picks the node for a new placement of `room` among `nodes` (live, not
/// draining, and not at their `max_connections` as last reported, when
/// any is not), given each node's current room count.
pub fn choose<'a>(
    room: &str,
    nodes: &'a [NodeInfo],
    load: &dyn Fn(&NodeInfo) -> u64,
    load_factor: f64,
) -> Option<&'a NodeInfo> {
    let open: Vec<&NodeInfo> = nodes.iter().filter(|n| !n.draining).collect();
    let full = |n: &NodeInfo| n.max_connections > 0 && n.connections >= n.max_connections;
    let mut ranked: Vec<&NodeInfo> = if open.iter().all(|n| full(n)) {
        open
    } else {
        open.into_iter().filter(|n| !full(n)).collect()
    };
    if ranked.is_empty() {
        return None;
    }
    ranked.sort_by_key(|n| std::cmp::Reverse(score(room, &n.id)));
    let total: u64 = ranked.iter().map(|n| load(n)).sum();
    let cap = ((load_factor * (total + 1) as f64) / ranked.len() as f64).ceil() as u64;
    ranked
        .iter()
        .copied()
        .find(|n| load(n) < cap)
        .or(Some(ranked[0]))
}

/// The load bound nodes place relay rooms with (the routers' default
/// `load_factor`).
pub const LOAD_FACTOR: f64 = 1.25;

/// Live nodes as their heartbeat records say (nodes whose record expired
/// are left out; the routers forget them).
pub async fn live_nodes(con: &mut crate::redis::Con) -> redis::RedisResult<Vec<NodeInfo>> {
    let ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg(turnout_proto::keys::NODES)
        .query_async(con)
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = ids.iter().map(|id| turnout_proto::keys::node(id)).collect();
    let records: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(con).await?;
    Ok(records
        .into_iter()
        .flatten()
        .filter_map(|r| serde_json::from_str(&r).ok())
        .collect())
}

/// The owner of `room` (relay), placing it when it has none or its owner
/// is dead, draining or in `avoid` (nodes the caller could not reach):
/// among the other live nodes by rendezvous hashing with the load bound
/// (`load_factor`, by rooms), then an atomic claim, so that callers racing
/// on one room agree. `pin` is how long an unused placement stays.
pub async fn owner(
    con: &mut crate::redis::Con,
    room: &str,
    pin: std::time::Duration,
    load_factor: f64,
    avoid: &[String],
) -> redis::RedisResult<crate::redis::Ownership> {
    use crate::redis::rooms;
    let current = rooms::claim(con, room, "", std::time::Duration::ZERO, &[]).await?;
    if !current.node.is_empty()
        && !avoid.contains(&current.node)
        && rooms::alive(con, &current.node).await?
    {
        return Ok(current);
    }
    let mut nodes = live_nodes(con).await?;
    nodes.retain(|n| !avoid.contains(&n.id));
    let Some(candidate) = choose(room, &nodes, &|n| n.rooms, load_factor) else {
        return Ok(current);
    };
    let candidate = candidate.id.clone();
    rooms::place(con, room, &candidate, pin, &[], avoid).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn nodes(ids: &[&str]) -> Vec<NodeInfo> {
        ids.iter()
            .map(|id| NodeInfo {
                id: (*id).into(),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn hrw_moves_only_the_departed_nodes_rooms() {
        let three = nodes(&["a", "b", "c"]);
        let two = nodes(&["a", "b"]);
        let none = |_: &NodeInfo| 0;
        for i in 0..1000 {
            let room = format!("room-{i}");
            let before = choose(&room, &three, &none, 100.0).unwrap().id.clone();
            let after = choose(&room, &two, &none, 100.0).unwrap().id.clone();
            if before != "c" {
                assert_eq!(before, after, "{room} moved although its node stayed");
            }
        }
    }

    #[test]
    fn load_bound_caps_every_node() {
        let ns = nodes(&["a", "b", "c"]);
        let mut load: HashMap<String, u64> = HashMap::new();
        for i in 0..300 {
            let room = format!("r{i}");
            let l = load.clone();
            let pick = choose(&room, &ns, &|n| l.get(&n.id).copied().unwrap_or(0), 1.25).unwrap();
            *load.entry(pick.id.clone()).or_default() += 1;
        }
        let max = *load.values().max().unwrap();
        assert!(max <= 125, "max {max} over the 1.25 x 100 bound: {load:?}");
        assert_eq!(load.values().sum::<u64>(), 300);
    }

    #[test]
    fn draining_nodes_take_nothing() {
        let mut ns = nodes(&["a", "b"]);
        ns[0].draining = true;
        for i in 0..50 {
            assert_eq!(choose(&format!("x{i}"), &ns, &|_| 0, 1.25).unwrap().id, "b");
        }
    }

    #[test]
    fn full_nodes_take_new_rooms_only_when_all_are_full() {
        let mut ns = nodes(&["a", "b"]);
        for n in &mut ns {
            n.max_connections = 5;
        }
        ns[0].connections = 5;
        for i in 0..50 {
            assert_eq!(choose(&format!("y{i}"), &ns, &|_| 0, 1.25).unwrap().id, "b");
        }
        ns[1].connections = 7;
        let picks: std::collections::HashSet<String> = (0..50)
            .map(|i| {
                choose(&format!("y{i}"), &ns, &|_| 0, 1.25)
                    .unwrap()
                    .id
                    .clone()
            })
            .collect();
        assert_eq!(picks.len(), 2, "all full: placed as if none were");
        // An older node that reports no limit is never counted full.
        ns[1].max_connections = 0;
        assert_eq!(choose("z", &ns, &|_| 0, 1.25).unwrap().id, "b");
    }
}
