//! The gateway's watch over the nodes it splices clients to.
//!
//! A spliced connection carries bytes the gateway does not read, so when
//! the path to its node breaks without a reset (a cut network, a frozen
//! process) neither end may notice for a long time, and its client hangs.
//! Every [`PROBE_EVERY`] the gateway asks each node it splices to for its
//! gRPC health, with a deadline; a node that fails [`FAILURES`] probes in a
//! row has its spliced connections closed (its clients reconnect, and land
//! elsewhere: the node is avoided) and is avoided for new clients.

use crate::state::Gateway;
use dashmap::DashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// How often spliced-to nodes are probed.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a probe may take.
const PROBE_DEADLINE: Duration = Duration::from_secs(1);
/// Failed probes in a row after which a node's clients are let go.
const FAILURES: u32 = 2;

/// One node's spliced connections: how many, and the token that closes them.
struct Link {
    /// Where its health is asked.
    url: String,
    conns: usize,
    cut: CancellationToken,
    failures: u32,
}

#[derive(Default)]
pub(crate) struct Links {
    links: DashMap<String, Link>,
    probes: DashMap<String, HealthClient<Channel>>,
}

/// Held by one spliced connection; counts it out when dropped.
pub(crate) struct Spliced {
    gw: Arc<Gateway>,
    node: String,
    pub(crate) cut: CancellationToken,
}

impl Drop for Spliced {
    fn drop(&mut self) {
        self.gw.links.links.remove_if_mut(&self.node, |_, l| {
            l.conns -= 1;
            l.conns == 0
        });
    }
}

impl Links {
    /// Counts a spliced connection to `node`; its `cut` fires when the node
    /// stops answering.
    pub(crate) fn splice(gw: &Arc<Gateway>, node: &str, url: &str) -> Spliced {
        let mut l = gw
            .links
            .links
            .entry(node.to_owned())
            .or_insert_with(|| Link {
                url: url.to_owned(),
                conns: 0,
                cut: CancellationToken::new(),
                failures: 0,
            });
        l.conns += 1;
        Spliced {
            gw: gw.clone(),
            node: node.to_owned(),
            cut: l.cut.clone(),
        }
    }
}

/// Probes the nodes with spliced connections until `stop`.
pub(crate) async fn watch(gw: Arc<Gateway>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let nodes: Vec<(String, String)> = gw
            .links
            .links
            .iter()
            .map(|l| (l.key().clone(), l.url.clone()))
            .collect();
        let probes = nodes.into_iter().map(|(id, url)| {
            let gw = gw.clone();
            async move {
                let ok = probe(&gw, &url).await;
                (id, ok)
            }
        });
        for (id, ok) in futures_util::future::join_all(probes).await {
            judge(&gw, &id, ok);
        }
    }
}

async fn probe(gw: &Gateway, url: &str) -> bool {
    let mut client = match gw.links.probes.get(url) {
        Some(c) => c.clone(),
        None => {
            let Ok(ep) = Channel::from_shared(url.to_owned()) else {
                return false;
            };
            let c = HealthClient::new(
                ep.connect_timeout(PROBE_DEADLINE)
                    .timeout(PROBE_DEADLINE)
                    .connect_lazy(),
            );
            gw.links.probes.insert(url.to_owned(), c.clone());
            c
        }
    };
    let check = client.check(HealthCheckRequest::default());
    matches!(tokio::time::timeout(PROBE_DEADLINE, check).await, Ok(Ok(_)))
}

fn judge(gw: &Gateway, node: &str, ok: bool) {
    let Some(mut l) = gw.links.links.get_mut(node) else {
        return;
    };
    if ok {
        l.failures = 0;
        return;
    }
    l.failures += 1;
    if l.failures < FAILURES {
        return;
    }
    tracing::warn!(
        node,
        connections = l.conns,
        "ws-node does not answer health checks: closing its proxied connections (their clients reconnect elsewhere)"
    );
    gw.metrics.links_cut.inc();
    l.cut.cancel();
    l.cut = CancellationToken::new();
    l.failures = 0;
    drop(l);
    gw.avoid_node(node);
}
