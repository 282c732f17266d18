//! `turnout.v1.Node`: internal calls from gateways.

use crate::node::NodeState;
use serde_json::value::RawValue;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use turnout_common::redis::Origin;
use turnout_proto::codes::{ErrorCode, close};
use turnout_proto::names;
use turnout_proto::v1::node_server::{Node, NodeServer};
use turnout_proto::v1::{
    DeliverReply, DeliverRequest, DisconnectReply, DisconnectRequest, DrainReply, DrainRequest,
    StatsReply, StatsRequest,
};

pub(crate) struct NodeService {
    state: Arc<NodeState>,
}

pub(crate) fn server(state: Arc<NodeState>) -> NodeServer<NodeService> {
    NodeServer::new(NodeService { state })
}

/// Maps a turnout error code to a gRPC status.
pub(crate) fn status(code: ErrorCode, message: &str) -> Status {
    match code {
        ErrorCode::BadJson | ErrorCode::BadFrame | ErrorCode::BadName | ErrorCode::UnknownType => {
            Status::invalid_argument(message)
        }
        ErrorCode::Forbidden => Status::permission_denied(message),
        ErrorCode::RateLimited | ErrorCode::TooManyRooms => Status::resource_exhausted(message),
        ErrorCode::WrongNode | ErrorCode::NotJoined => Status::failed_precondition(message),
        ErrorCode::Draining | ErrorCode::Unavailable => Status::unavailable(message),
        ErrorCode::Internal => Status::internal(message),
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn deliver(
        &self,
        req: Request<DeliverRequest>,
    ) -> Result<Response<DeliverReply>, Status> {
        let req = req.into_inner();
        names::check_room(&req.room).map_err(|e| Status::invalid_argument(format!("room {e}")))?;
        let from = if req.from.is_empty() {
            "api".to_owned()
        } else {
            req.from
        };
        names::check_user(&from).map_err(|e| Status::invalid_argument(format!("from {e}")))?;
        let data = RawValue::from_string(req.data_json)
            .map_err(|_| Status::invalid_argument("data_json is not valid JSON"))?;
        let seq = self
            .state
            .hub
            .publish(&req.room, &from, &data, Origin::Api)
            .await
            .map_err(|e| match e.redirect {
                Some(url) => {
                    Status::failed_precondition(format!("wrong_node: room is owned by {url}"))
                }
                None => status(e.code, "publish failed"),
            })?;
        Ok(Response::new(DeliverReply { seq }))
    }

    async fn drain(&self, _req: Request<DrainRequest>) -> Result<Response<DrainReply>, Status> {
        let connections = self.state.conns.len() as u64;
        tracing::info!("drain requested over gRPC");
        self.state.drain.cancel();
        Ok(Response::new(DrainReply { connections }))
    }

    async fn disconnect(
        &self,
        req: Request<DisconnectRequest>,
    ) -> Result<Response<DisconnectReply>, Status> {
        let req = req.into_inner();
        names::check_user(&req.user).map_err(|e| Status::invalid_argument(format!("user {e}")))?;
        let reason = if req.reason.is_empty() {
            "disconnected by the server"
        } else {
            &req.reason
        };
        let mut connections = 0;
        for c in self.state.conns.iter() {
            // Connections already closing are not counted again.
            if c.user == req.user && !c.is_closed() {
                c.kill_with(close::KICKED, reason);
                connections += 1;
            }
        }
        self.state.hub.metrics.kicked.inc_by(connections);
        tracing::info!(user = %req.user, connections, "user disconnected by the server API");
        Ok(Response::new(DisconnectReply { connections }))
    }

    async fn stats(&self, _req: Request<StatsRequest>) -> Result<Response<StatsReply>, Status> {
        Ok(Response::new(StatsReply {
            node: Some(self.state.node_info()),
            rooms: self.state.hub.room_names(),
        }))
    }
}
