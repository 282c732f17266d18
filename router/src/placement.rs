//! Sticky placement: rendezvous (HRW) hashing with a load bound.
//!
//! A room's first placement goes to the live, non-draining node with the
//! highest hash score whose load is under ⌈c · (total + 1) / n⌉ (c =
//! `load_factor`); the choice is then pinned in Redis by an atomic claim, so
//! nodes that join later take only new rooms. HRW moves exactly the rooms of
//! a departed node; the bound keeps a node from taking more than its share.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use turnout_proto::v1::NodeInfo;
use xxhash_rust::xxh3::xxh3_64;

/// Rendezvous score of `node` for `room`.
pub(crate) fn score(room: &str, node: &str) -> u64 {
    let mut key = Vec::with_capacity(room.len() + node.len() + 1);
    key.extend_from_slice(room.as_bytes());
    key.push(0);
    key.extend_from_slice(node.as_bytes());
    xxh3_64(&key)
}

/// Picks the node for a new placement of `room` among `nodes` (live, not
/// draining, and not at their `max_connections` as last reported, when
/// any is not), given each node's current room count.
pub(crate) fn choose<'a>(
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

/// Placements this router made recently, counted on top of the nodes'
/// reported room counts until their heartbeats can reflect them.
pub(crate) struct RecentClaims {
    window: Duration,
    claims: Mutex<HashMap<String, Vec<Instant>>>,
}

impl RecentClaims {
    pub(crate) fn new(window: Duration) -> Self {
        RecentClaims {
            window,
            claims: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn record(&self, node: &str) {
        let mut c = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        c.entry(node.to_owned()).or_default().push(Instant::now());
    }

    /// Recent claims per node, dropping expired ones.
    pub(crate) fn counts(&self) -> HashMap<String, u64> {
        let mut c = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        let window = self.window;
        c.retain(|_, v| {
            v.retain(|t| t.elapsed() < window);
            !v.is_empty()
        });
        c.iter().map(|(k, v)| (k.clone(), v.len() as u64)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
