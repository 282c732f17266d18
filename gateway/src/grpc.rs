//! `turnout.v1.Gateway`: the server API over gRPC, same semantics as HTTP.

use crate::follow::Item;
use crate::state::Gateway;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use turnout_proto::v1::gateway_server::{Gateway as GatewayApi, GatewayServer};
use turnout_proto::v1::*;

pub(crate) struct GatewayService {
    gw: Arc<Gateway>,
}

pub(crate) fn server(gw: Arc<Gateway>) -> GatewayServer<GatewayService> {
    GatewayServer::new(GatewayService { gw })
}

/// A stored message frame as a `RoomMessage`.
pub(crate) fn room_message(frame: &str) -> Option<RoomMessage> {
    match serde_json::from_str(frame).ok()? {
        turnout_proto::frames::ServerFrame::Message {
            room,
            seq,
            from,
            node,
            ts,
            data,
        } => Some(RoomMessage {
            room,
            seq,
            from,
            node,
            ts,
            data_json: data.to_string(),
        }),
        _ => None,
    }
}

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<RoomMessage, Status>> + Send>>;

#[tonic::async_trait]
impl GatewayApi for GatewayService {
    async fn publish(
        &self,
        req: Request<PublishRequest>,
    ) -> Result<Response<PublishReply>, Status> {
        let r = req.into_inner();
        let from = Some(r.from).filter(|f| !f.is_empty());
        let seq = self
            .gw
            .publish(&r.room, r.data_json, from)
            .await
            .map_err(|e| e.grpc_status())?;
        Ok(Response::new(PublishReply { seq }))
    }

    async fn history(
        &self,
        req: Request<HistoryRequest>,
    ) -> Result<Response<HistoryReply>, Status> {
        let r = req.into_inner();
        let limit = if r.limit == 0 { 100 } else { r.limit as u64 };
        let slice = self
            .gw
            .history(&r.room, r.since, limit)
            .await
            .map_err(|e| e.grpc_status())?;
        Ok(Response::new(HistoryReply {
            messages: slice
                .messages
                .iter()
                .filter_map(|(_, f)| room_message(f))
                .collect(),
            seq: slice.seq,
            complete: slice.complete,
            epoch: slice.epoch,
        }))
    }

    async fn presence(
        &self,
        req: Request<PresenceRequest>,
    ) -> Result<Response<PresenceReply>, Status> {
        let users = self
            .gw
            .presence(&req.into_inner().room)
            .await
            .map_err(|e| e.grpc_status())?;
        Ok(Response::new(PresenceReply { users }))
    }

    async fn cluster(
        &self,
        _req: Request<ClusterRequest>,
    ) -> Result<Response<ClusterReply>, Status> {
        let view = self.gw.view.borrow().clone();
        Ok(Response::new(ClusterReply {
            strategy: self.gw.strategy().as_str().to_owned(),
            nodes: view.reply.nodes.clone(),
            strategy_conflicts: self.gw.conflicts(),
        }))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<SubscribeStream>, Status> {
        let r = req.into_inner();
        let result = self.gw.stream(&r.room, r.since, "grpc").await;
        crate::api::count(&self.gw, "subscribe", result.is_ok());
        let rx = result.map_err(|e| e.grpc_status())?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|item| match item {
            Ok(Item::Message { frame, .. }) => room_message(&frame)
                .ok_or_else(|| Status::internal("a stored message could not be decoded")),
            // The stream cannot go on with seq starting over: the caller
            // resubscribes (with since = 0, or after reading History).
            Ok(Item::Reset { epoch, seq }) => Err(Status::aborted(format!(
                "the room's state was reset in Redis (new epoch {epoch}, seq {seq}); resubscribe"
            ))),
            Err(e) => Err(e.grpc_status()),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn disconnect(
        &self,
        req: Request<DisconnectRequest>,
    ) -> Result<Response<DisconnectReply>, Status> {
        let r = req.into_inner();
        let result = self.gw.disconnect(&r.user, &r.reason).await;
        crate::api::count(&self.gw, "disconnect", result.is_ok());
        let connections = result.map_err(|e| e.grpc_status())?;
        Ok(Response::new(DisconnectReply { connections }))
    }
}
