//! `turnout.v1.Router`.

use crate::membership::{Snapshot, with_ages};
use crate::placement::{RecentClaims, choose};
use crate::settings::Settings;
use prometheus::{IntCounter, IntCounterVec};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt, wrappers::WatchStream};
use tonic::{Request, Response, Status};
use turnout_common::redis::Con;
use turnout_proto::Strategy;
use turnout_proto::codes::ErrorCode;
use turnout_proto::names::RoomName;
use turnout_proto::v1::router_server::{Router, RouterServer};
use turnout_proto::v1::{
    NodeInfo, NodesReply, NodesRequest, RouteReply, RouteRequest, WatchNodesRequest,
};

pub(crate) struct RouterService {
    id: String,
    settings: Settings,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    redis: Con,
    recent: RecentClaims,
    metrics: RouterMetrics,
    /// Placement writes left: a token bucket (`max_placement_rate`).
    budget: std::sync::Mutex<(f64, std::time::Instant)>,
}

#[derive(Clone)]
pub(crate) struct RouterMetrics {
    pub(crate) routes: IntCounterVec,
    pub(crate) claims: IntCounter,
    pub(crate) deferred: IntCounter,
}

impl RouterService {
    pub(crate) fn new(
        id: String,
        settings: Settings,
        snapshot: watch::Receiver<Arc<Snapshot>>,
        redis: Con,
        metrics: RouterMetrics,
    ) -> Self {
        // Long enough for a placed room's members to join and show up in the
        // owner's heartbeat.
        let window = settings.poll_interval * 4 + Duration::from_secs(3);
        let burst = settings.max_placement_rate * 2.0;
        RouterService {
            id,
            settings,
            snapshot,
            redis,
            recent: RecentClaims::new(window),
            metrics,
            budget: std::sync::Mutex::new((burst, std::time::Instant::now())),
        }
    }

    /// Takes one placement write from the budget; false when it is spent.
    fn may_place(&self) -> bool {
        let rate = self.settings.max_placement_rate;
        let mut b = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * rate).min(rate * 2.0);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }

    fn strategy(&self) -> Strategy {
        self.settings.strategy
    }

    /// Sticky: the room's live owner, or a new placement claimed atomically.
    /// Nodes in `avoid` (the caller could not reach them) are not chosen,
    /// and a room they own is placed anew.
    async fn place(
        &self,
        room: &RoomName,
        snap: &Snapshot,
        avoid: &[String],
    ) -> Result<RouteReply, Status> {
        let recent = self.recent.counts();
        let load = |n: &NodeInfo| n.rooms + recent.get(&n.id).copied().unwrap_or(0);
        let usable: Vec<NodeInfo> = snap
            .nodes
            .iter()
            .filter(|n| !avoid.contains(&n.id))
            .cloned()
            .collect();
        let candidate = choose(room, &usable, &load, self.settings.load_factor)
            .ok_or_else(|| Status::unavailable("no live ws-node"))?;
        if !self.may_place() {
            // Past the write budget: the answer is a hint, and the node
            // claims the room when the first member joins it (or redirects
            // to the owner it finds).
            self.metrics.deferred.inc();
            return Ok(RouteReply {
                node: Some(candidate.clone()),
                epoch: 0,
                owner: String::new(),
            });
        }
        let mut con = self.redis.clone();
        // An owner this router does not see alive is checked in Redis first.
        let live: Vec<String> = usable
            .iter()
            .filter(|n| !n.draining)
            .map(|n| n.id.clone())
            .collect();
        let owner = turnout_common::redis::rooms::place(
            &mut con,
            room,
            &candidate.id,
            self.settings.placement_ttl,
            &live,
            avoid,
        )
        .await
        .map_err(|e| {
            tracing::warn!(room = %room, error = %e, "claim failed");
            Status::unavailable("placement store unreachable; retry")
        })?;
        if owner.claimed {
            self.recent.record(&owner.node);
            self.metrics.claims.inc();
            tracing::debug!(room = %room, node = %owner.node, epoch = owner.epoch, "room placed");
        }
        let node = match snap.nodes.iter().find(|n| n.id == owner.node) {
            Some(n) => n.clone(),
            // Alive in Redis but not yet in this router's snapshot.
            None => turnout_common::redis::node_info(&mut con, &owner.node)
                .await
                .ok()
                .flatten()
                .ok_or_else(|| Status::unavailable("room owner unknown; retry"))?,
        };
        Ok(RouteReply {
            owner: node.id.clone(),
            node: Some(node),
            epoch: owner.epoch,
        })
    }
}

/// The live set as an answer; empty while membership is unknown.
fn reply(id: &str, strategy: Strategy, snap: &Snapshot) -> NodesReply {
    NodesReply {
        strategy: strategy.as_str().to_owned(),
        nodes: if snap.fresh {
            with_ages(&snap.nodes)
        } else {
            Vec::new()
        },
        strategy_conflicts: snap.conflicts.clone(),
        router_id: id.to_owned(),
    }
}

pub(crate) fn server(svc: RouterService) -> RouterServer<RouterService> {
    RouterServer::new(svc)
}

/// The live, non-draining node with the fewest connections, not in `avoid`.
pub(crate) fn least_loaded<'a>(nodes: &'a [NodeInfo], avoid: &[String]) -> Option<&'a NodeInfo> {
    nodes
        .iter()
        .filter(|n| !n.draining && !avoid.contains(&n.id))
        .min_by(|a, b| {
            a.connections
                .cmp(&b.connections)
                .then_with(|| a.id.cmp(&b.id))
        })
}

type WatchStreamOut = Pin<Box<dyn Stream<Item = Result<NodesReply, Status>> + Send>>;

#[tonic::async_trait]
impl Router for RouterService {
    async fn route(&self, req: Request<RouteRequest>) -> Result<Response<RouteReply>, Status> {
        let req = req.into_inner();
        let room = RoomName::parse(req.room)
            .map_err(|e| ErrorCode::BadName.status(format!("room {e}")))?;
        let avoid = req.avoid;
        let snap = self.snapshot.borrow().clone();
        // The one place where the strategies differ here: sticky places the
        // room on an owner; the others send a client to the least-loaded node.
        let result = match self.strategy() {
            Strategy::Pubsub | Strategy::Local => least_loaded(&snap.nodes, &avoid)
                .map(|node| RouteReply {
                    node: Some(node.clone()),
                    epoch: 0,
                    owner: String::new(),
                })
                .ok_or_else(|| Status::unavailable("no live ws-node")),
            Strategy::Sticky => self.place(&room, &snap, &avoid).await,
            // Relay: the client goes to the least-loaded node; the room is
            // placed on its owner as in sticky.
            // Nodes the client could not reach keep their rooms: only
            // their heartbeats decide that.
            Strategy::Relay => match least_loaded(&snap.nodes, &avoid) {
                Some(node) => {
                    let placed = self.place(&room, &snap, &[]).await.ok();
                    Ok(RouteReply {
                        node: Some(node.clone()),
                        epoch: placed.as_ref().map_or(0, |p| p.epoch),
                        owner: placed.map(|p| p.owner).unwrap_or_default(),
                    })
                }
                None => Err(Status::unavailable("no live ws-node")),
            },
        };
        self.metrics
            .routes
            .with_label_values(&[if result.is_ok() { "ok" } else { "error" }])
            .inc();
        result.map(Response::new)
    }

    async fn nodes(&self, _req: Request<NodesRequest>) -> Result<Response<NodesReply>, Status> {
        let snap = self.snapshot.borrow().clone();
        if !snap.fresh {
            return Err(Status::unavailable("membership unknown: Redis unreachable"));
        }
        Ok(Response::new(reply(&self.id, self.strategy(), &snap)))
    }

    type WatchNodesStream = WatchStreamOut;

    async fn watch_nodes(
        &self,
        _req: Request<WatchNodesRequest>,
    ) -> Result<Response<WatchStreamOut>, Status> {
        let id = self.id.clone();
        let strategy = self.strategy();
        let stream = WatchStream::new(self.snapshot.clone())
            .map(move |snap| Ok(reply(&id, strategy, &snap)));
        Ok(Response::new(Box::pin(stream)))
    }
}
