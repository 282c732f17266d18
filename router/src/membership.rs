//! The live set: nodes whose heartbeat key has not expired.
//!
//! Re-read on every announcement on `turnout:membership` and every
//! `poll_interval` (an expiry announces nothing). A new snapshot is
//! published to watchers only when something besides heartbeat time changed.

use prometheus::IntGauge;
use redis::aio::ConnectionManager;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use turnout_proto::v1::NodeInfo;
use turnout_proto::{Strategy, keys, now_ms};

/// One reading of the live set.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Snapshot {
    /// Live nodes ordered by id.
    pub(crate) nodes: Vec<NodeInfo>,
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
pub(crate) async fn read(
    con: &mut ConnectionManager,
    strategy: Strategy,
) -> redis::RedisResult<Snapshot> {
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
    for (id, record) in ids.iter().zip(records) {
        match record.and_then(|r| serde_json::from_str::<NodeInfo>(&r).ok()) {
            Some(info) => nodes.push(info),
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
        conflicts,
        fresh: true,
    })
}

/// Probes every node's port; a node whose port refuses connections has
/// crashed (its process is gone), so it is removed from Redis at once instead
/// of after its heartbeat TTL. Timeouts prove nothing (a busy node may be slow
/// to accept) and are left to the TTL.
async fn drop_refusing(con: &mut ConnectionManager, snap: &mut Snapshot) {
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
    if !refused.iter().any(|r| *r) {
        return;
    }
    let mut kept = Vec::with_capacity(snap.nodes.len());
    for (node, refused) in std::mem::take(&mut snap.nodes).into_iter().zip(refused) {
        if !refused {
            kept.push(node);
            continue;
        }
        tracing::warn!(node = %node.id, url = %node.internal_url, "node refuses connections: removed from the live set");
        let r: redis::RedisResult<()> = redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(keys::node(&node.id))
            .ignore()
            .cmd("SREM")
            .arg(keys::NODES)
            .arg(&node.id)
            .ignore()
            .cmd("PUBLISH")
            .arg(keys::MEMBERSHIP_CHANNEL)
            .arg(&node.id)
            .ignore()
            .query_async(con)
            .await;
        if let Err(e) = r {
            tracing::warn!(node = %node.id, error = %e, "removing a dead node failed");
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
pub(crate) async fn follow(
    mut con: ConnectionManager,
    strategy: Strategy,
    poll: Duration,
    changed: Arc<Notify>,
    tx: watch::Sender<Arc<Snapshot>>,
    live: IntGauge,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = changed.notified() => {}
            _ = stop.cancelled() => return,
        }
        match read(&mut con, strategy).await {
            Ok(mut snap) => {
                drop_refusing(&mut con, &mut snap).await;
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
                if !failing {
                    tracing::warn!(error = %e, "reading membership from Redis failed");
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
