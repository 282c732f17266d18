//! The live set: nodes whose heartbeat key has not expired.
//!
//! Re-read on every announcement on `turnout:{nodes}:membership` and every
//! `poll_interval` (an expiry announces nothing). A new snapshot is
//! published to watchers only when something besides heartbeat time changed.

use prometheus::IntGauge;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use turnout_common::redis::Con;
use turnout_proto::v1::NodeInfo;
use turnout_proto::{Strategy, keys, now_ms};

/// One reading of the live set.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Snapshot {
    /// Live nodes ordered by id.
    pub(crate) nodes: Vec<NodeInfo>,
    /// Each node's heartbeat record as read, by id (a dead node is removed
    /// only if its record is still this one).
    pub(crate) records: std::collections::HashMap<String, String>,
    /// Strategy disagreements, e.g. `node n2 runs sticky`.
    pub(crate) conflicts: Vec<String>,
    /// False until the first successful read, and after Redis failures.
    pub(crate) fresh: bool,
}

impl Snapshot {
    fn same_as(&self, other: &Snapshot) -> bool {
        self.fresh == other.fresh
            && self.conflicts == other.conflicts
            && self.nodes.len() == other.nodes.len()
            && self.nodes.iter().zip(&other.nodes).all(|(a, b)| {
                a.id == b.id
                    && a.url == b.url
                    && a.internal_url == b.internal_url
                    && a.strategy == b.strategy
                    && a.connections == b.connections
                    && a.rooms == b.rooms
                    && a.draining == b.draining
            })
    }
}

/// Reads the live set from Redis.
pub(crate) async fn read(con: &mut Con, strategy: Strategy) -> redis::RedisResult<Snapshot> {
    let ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys::NODES)
        .query_async(con)
        .await?;
    if ids.is_empty() {
        return Ok(Snapshot {
            fresh: true,
            ..Default::default()
        });
    }
    let node_keys: Vec<String> = ids.iter().map(|id| keys::node(id)).collect();
    let records: Vec<Option<String>> = redis::cmd("MGET").arg(&node_keys).query_async(con).await?;
    let mut nodes = Vec::with_capacity(ids.len());
    let mut raw = std::collections::HashMap::new();
    for (id, record) in ids.iter().zip(records) {
        match record.and_then(|r| Some((serde_json::from_str::<NodeInfo>(&r).ok()?, r))) {
            Some((info, r)) => {
                raw.insert(info.id.clone(), r);
                nodes.push(info)
            }
            None => {
                let _: i64 = turnout_common::redis::scripts::forget(id)
                    .invoke_async(con)
                    .await?;
            }
        }
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let conflicts = nodes
        .iter()
        .filter(|n| n.strategy != strategy.as_str())
        .map(|n| {
            format!(
                "node {} runs {}, router runs {}",
                n.id, n.strategy, strategy
            )
        })
        .collect();
    Ok(Snapshot {
        nodes,
        records: raw,
        conflicts,
        fresh: true,
    })
}

/// Refused probes in a row after which a node counts as crashed.
const REFUSALS_TO_DROP: u32 = 2;

/// Probes every node's port; a node whose port refuses connections
/// [`REFUSALS_TO_DROP`] times in a row has crashed (its process is gone), so
/// it is removed from Redis at once instead of after its heartbeat TTL, but
/// only if its heartbeat record is still the one read (`drop_node.lua`): a
/// node that heartbeated meanwhile stays. Timeouts prove nothing (a busy or
/// paused node may be slow to accept) and are left to the TTL.
async fn drop_refusing(
    con: &mut Con,
    snap: &mut Snapshot,
    refusals: &mut std::collections::HashMap<String, u32>,
) {
    let probes = snap.nodes.iter().map(|n| {
        let authority = n
            .internal_url
            .split("://")
            .nth(1)
            .map(|r| r.split('/').next().unwrap_or(r).to_owned())
            .unwrap_or_default();
        async move {
            let r = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(&authority),
            )
            .await;
            matches!(r, Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused)
        }
    });
    let refused = futures_util::future::join_all(probes).await;
    refusals.retain(|id, _| snap.nodes.iter().any(|n| &n.id == id));
    let mut kept = Vec::with_capacity(snap.nodes.len());
    for (node, refused) in std::mem::take(&mut snap.nodes).into_iter().zip(refused) {
        if !refused {
            refusals.remove(&node.id);
            kept.push(node);
            continue;
        }
        let n = refusals.entry(node.id.clone()).or_default();
        *n += 1;
        if *n < REFUSALS_TO_DROP {
            kept.push(node);
            continue;
        }
        let Some(record) = snap.records.get(&node.id) else {
            kept.push(node);
            continue;
        };
        let r: redis::RedisResult<u8> = turnout_common::redis::scripts::drop_node(&node.id, record)
            .invoke_async(con)
            .await;
        match r {
            Ok(1) => {
                refusals.remove(&node.id);
                tracing::warn!(node = %node.id, url = %node.internal_url, "node refuses connections: removed from the live set");
            }
            Ok(_) => {
                tracing::info!(node = %node.id, "node refused connections but heartbeated since: kept");
                kept.push(node);
            }
            Err(e) => {
                tracing::warn!(node = %node.id, error = %e, "removing a dead node failed");
                kept.push(node);
            }
        }
    }
    snap.nodes = kept;
}

/// Fills in `heartbeat_age_ms` for an answer.
pub(crate) fn with_ages(nodes: &[NodeInfo]) -> Vec<NodeInfo> {
    let now = now_ms();
    nodes
        .iter()
        .map(|n| NodeInfo {
            heartbeat_age_ms: now.saturating_sub(n.heartbeat_ms),
            ..n.clone()
        })
        .collect()
}

/// Keeps `tx` up to date until `stop`.
#[allow(clippy::too_many_arguments)] // called once, at start, by name
pub(crate) async fn follow(
    mut con: Con,
    strategy: Strategy,
    poll: Duration,
    changed: Arc<Notify>,
    tx: watch::Sender<Arc<Snapshot>>,
    live: IntGauge,
    readiness: turnout_common::readiness::Readiness,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let mut refusals = std::collections::HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = changed.notified() => {}
            _ = stop.cancelled() => return,
        }
        match read(&mut con, strategy).await {
            Ok(mut snap) => {
                drop_refusing(&mut con, &mut snap, &mut refusals).await;
                readiness.ok("redis");
                if failing {
                    tracing::info!("membership reads from Redis work again");
                    failing = false;
                }
                live.set(snap.nodes.len() as i64);
                let prev = tx.borrow().clone();
                if !snap.same_as(&prev) {
                    log_change(&prev, &snap);
                    let _ = tx.send(Arc::new(snap));
                } else {
                    // Same membership: refresh heartbeat times without waking watchers.
                    tx.send_if_modified(|cur| {
                        *cur = Arc::new(snap);
                        false
                    });
                }
            }
            Err(e) => {
                readiness.waiting_for("redis", format!("reading membership from Redis: {e}"));
                if !failing {
                    failing = true;
                }
                let prev = tx.borrow().clone();
                if prev.fresh {
                    let _ = tx.send(Arc::new(Snapshot {
                        fresh: false,
                        ..(*prev).clone()
                    }));
                }
            }
        }
    }
}

fn log_change(prev: &Snapshot, next: &Snapshot) {
    for n in &next.nodes {
        match prev.nodes.iter().find(|p| p.id == n.id) {
            None => tracing::info!(node = %n.id, url = %n.url, "node joined"),
            Some(p) if p.draining != n.draining && n.draining => {
                tracing::info!(node = %n.id, "node draining")
            }
            _ => {}
        }
    }
    for p in &prev.nodes {
        if !next.nodes.iter().any(|n| n.id == p.id) {
            tracing::info!(node = %p.id, "node left");
        }
    }
    if next.conflicts != prev.conflicts && !next.conflicts.is_empty() {
        tracing::error!(conflicts = ?next.conflicts, "strategy mismatch in the cluster: processes disagree");
    }
}
