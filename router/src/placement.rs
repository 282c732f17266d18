//! Placement of rooms (sticky, relay): rendezvous (HRW) hashing with a load
//! bound, in `turnout_common::placement`.
//!
//! A room's first placement goes to the live, non-draining node with the
//! highest hash score whose load is under ⌈c · (total + 1) / n⌉ (c =
//! `load_factor`); the choice is then pinned in Redis by an atomic claim, so
//! nodes that join later take only new rooms. HRW moves exactly the rooms of
//! a departed node; the bound keeps a node from taking more than its share.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(crate) use turnout_common::placement::choose;

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
