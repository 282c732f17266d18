//! The gateway's view of the cluster, fed by a router's `WatchNodes` stream,
//! with failover between routers and a pick of the node for a new client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use turnout_common::auth::InternalToken;
use turnout_proto::Strategy;
use turnout_proto::v1::router_client::RouterClient;
use turnout_proto::v1::{NodeInfo, NodesReply, WatchNodesRequest};

/// What the gateway knows of the cluster.
#[derive(Debug, Clone, Default)]
pub(crate) struct View {
    /// Connected to a router and receiving its stream.
    pub(crate) connected: bool,
    pub(crate) router: String,
    pub(crate) reply: NodesReply,
    /// Changes with every reply, so per-snapshot state can be reset.
    pub(crate) generation: u64,
    /// Why the last router could not be followed.
    pub(crate) router_error: Option<String>,
}

static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Follows the routers, one at a time, until `stop`.
pub(crate) async fn follow(
    routers: Vec<String>,
    token: InternalToken,
    tx: watch::Sender<Arc<View>>,
    stop: CancellationToken,
) {
    let mut i = 0usize;
    let mut backoff =
        turnout_common::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        if stop.is_cancelled() {
            return;
        }
        let url = routers[i % routers.len()].clone();
        i += 1;
        let result = tokio::select! {
            r = watch_one(&url, token.clone(), &tx) => r,
            _ = stop.cancelled() => return,
        };
        let error = result.err().unwrap_or_else(|| "stream closed".into());
        let error = format!("{url}: {error}");
        let cur = tx.borrow().clone();
        if cur.connected {
            // It was working: try again soon.
            backoff.reset();
        }
        // Said once per distinct reply, not at every retry.
        if cur.connected || cur.router_error.as_deref() != Some(error.as_str()) {
            tracing::warn!(%error, "router not followed; trying the next router");
            let _ = tx.send(Arc::new(View {
                connected: false,
                router_error: Some(error),
                ..(*cur).clone()
            }));
        }
        tokio::select! {
            _ = backoff.wait() => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn watch_one(
    url: &str,
    token: InternalToken,
    tx: &watch::Sender<Arc<View>>,
) -> Result<(), String> {
    let channel = router_channel(url)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut client = RouterClient::with_interceptor(channel, token);
    let mut stream = client
        .watch_nodes(WatchNodesRequest {})
        .await
        .map_err(|e| e.message().to_owned())?
        .into_inner();
    tracing::info!(router = %url, "following router");
    while let Some(item) = stream.next().await {
        let reply = item.map_err(|e| e.message().to_owned())?;
        let generation = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _ = tx.send(Arc::new(View {
            connected: true,
            router: url.to_owned(),
            reply,
            generation,
            router_error: None,
        }));
    }
    Err("stream closed".into())
}

fn router_channel(url: &str) -> Result<Endpoint, http::uri::InvalidUri> {
    Ok(Channel::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5)))
}

/// Picks nodes for new clients, counting its own recent picks so a burst of
/// connections between two heartbeats does not all land on one node.
#[derive(Default)]
pub(crate) struct Picker {
    /// Picks per node since the snapshot identified by `.0`.
    recent: Mutex<(u64, HashMap<String, u64>)>,
}

impl Picker {
    /// Least-loaded live, non-draining node; `record` counts the pick
    /// (for a new client, not for a one-off API call).
    pub(crate) fn least_loaded(
        &self,
        view: &View,
        record: bool,
        avoid: &[String],
    ) -> Option<NodeInfo> {
        let mut recent = self.recent.lock().expect("picker lock");
        if recent.0 != view.generation {
            *recent = (view.generation, HashMap::new());
        }
        let node = view
            .reply
            .nodes
            .iter()
            .filter(|n| !n.draining && !avoid.contains(&n.id))
            .min_by_key(|n| {
                (
                    n.connections + recent.1.get(&n.id).copied().unwrap_or(0),
                    n.id.clone(),
                )
            })?
            .clone();
        if record {
            *recent.1.entry(node.id.clone()).or_default() += 1;
        }
        Some(node)
    }
}

/// Strategy problems: the gateway's own against the router's and nodes'.
pub(crate) fn conflicts(own: Strategy, view: &View) -> Vec<String> {
    let mut out = view.reply.strategy_conflicts.clone();
    if view.connected && !view.reply.strategy.is_empty() && view.reply.strategy != own.as_str() {
        out.push(format!(
            "gateway runs {own}, router {} runs {}",
            view.reply.router_id, view.reply.strategy
        ));
    }
    out
}
