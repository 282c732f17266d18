//! `turnout.v1.Router`.

use crate::membership::{Snapshot, with_ages};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt, wrappers::WatchStream};
use tonic::{Request, Response, Status};
use turnout_proto::Strategy;
use turnout_proto::v1::router_server::{Router, RouterServer};
use turnout_proto::v1::{NodeInfo, NodesReply, NodesRequest, RouteReply, RouteRequest, WatchNodesRequest};

pub(crate) struct RouterService {
    id: String,
    strategy: Strategy,
    snapshot: watch::Receiver<Arc<Snapshot>>,
}

impl RouterService {
    pub(crate) fn new(id: String, strategy: Strategy, snapshot: watch::Receiver<Arc<Snapshot>>) -> Self {
        RouterService { id, strategy, snapshot }
    }

    fn reply(&self, snap: &Snapshot) -> NodesReply {
        NodesReply {
            strategy: self.strategy.as_str().to_owned(),
            nodes: with_ages(&snap.nodes),
            strategy_conflicts: snap.conflicts.clone(),
            router_id: self.id.clone(),
        }
    }
}

pub(crate) fn server(svc: RouterService) -> RouterServer<RouterService> {
    RouterServer::new(svc)
}

/// The live, non-draining node with the fewest connections.
pub(crate) fn least_loaded(nodes: &[NodeInfo]) -> Option<&NodeInfo> {
    nodes
        .iter()
        .filter(|n| !n.draining)
        .min_by(|a, b| a.connections.cmp(&b.connections).then_with(|| a.id.cmp(&b.id)))
}

type WatchStreamOut = Pin<Box<dyn Stream<Item = Result<NodesReply, Status>> + Send>>;

#[tonic::async_trait]
impl Router for RouterService {
    async fn route(&self, req: Request<RouteRequest>) -> Result<Response<RouteReply>, Status> {
        let room = req.into_inner().room;
        turnout_proto::names::check_room(&room).map_err(|e| Status::invalid_argument(format!("room {e}")))?;
        let snap = self.snapshot.borrow().clone();
        match self.strategy {
            Strategy::Pubsub => {
                let node = least_loaded(&snap.nodes).ok_or_else(|| Status::unavailable("no live ws-node"))?;
                Ok(Response::new(RouteReply { node: Some(node.clone()), epoch: 0 }))
            }
            Strategy::Sticky => Err(Status::unimplemented("sticky placement is not available in this build")),
        }
    }

    async fn nodes(&self, _req: Request<NodesRequest>) -> Result<Response<NodesReply>, Status> {
        let snap = self.snapshot.borrow().clone();
        if !snap.fresh {
            return Err(Status::unavailable("membership unknown: Redis unreachable"));
        }
        Ok(Response::new(self.reply(&snap)))
    }

    type WatchNodesStream = WatchStreamOut;

    async fn watch_nodes(&self, _req: Request<WatchNodesRequest>) -> Result<Response<WatchStreamOut>, Status> {
        let id = self.id.clone();
        let strategy = self.strategy;
        let stream = WatchStream::new(self.snapshot.clone()).map(move |snap| {
            Ok(NodesReply {
                strategy: strategy.as_str().to_owned(),
                nodes: if snap.fresh { with_ages(&snap.nodes) } else { Vec::new() },
                strategy_conflicts: snap.conflicts.clone(),
                router_id: id.clone(),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
