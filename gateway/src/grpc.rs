//! `turnout.v1.Gateway`: the server API over gRPC, same semantics as HTTP.

use crate::follow::Item;
use crate::state::{Gateway, room_name, user_id};
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
    // A request is bounded like an HTTP API body (`max_body_bytes`), plus
    // room for the fields around the data: tonic's own default is 4 MiB.
    let limit = gw.settings.max_body_bytes + 4096;
    GatewayServer::new(GatewayService { gw }).max_decoding_message_size(limit)
}

pub(crate) use turnout_proto::bus::room_message;

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<RoomMessage, Status>> + Send>>;

#[tonic::async_trait]
impl GatewayApi for GatewayService {
    async fn publish(
        &self,
        req: Request<PublishRequest>,
    ) -> Result<Response<PublishReply>, Status> {
        let r = req.into_inner();
        let room = room_name(r.room)?;
        let from = Some(r.from)
            .filter(|f| !f.is_empty())
            .map(|f| user_id(f, "from"))
            .transpose()?;
        let id = Some(r.id).filter(|id| !id.is_empty());
        let reply = self.gw.publish(&room, r.data_json, from, id).await?;
        Ok(Response::new(PublishReply {
            seq: reply.seq,
            duplicate: reply.duplicate,
        }))
    }

    async fn publish_to_user(
        &self,
        req: Request<PublishToUserRequest>,
    ) -> Result<Response<PublishToUserReply>, Status> {
        let r = req.into_inner();
        let user = user_id(r.user, "user")?;
        let from = Some(r.from)
            .filter(|f| !f.is_empty())
            .map(|f| user_id(f, "from"))
            .transpose()?;
        let id = Some(r.id).filter(|id| !id.is_empty());
        let reply = self
            .gw
            .publish_to_user(&user, r.data_json, from, id)
            .await?;
        Ok(Response::new(PublishToUserReply {
            room: reply.room,
            seq: reply.seq,
            duplicate: reply.duplicate,
            node_seqs: reply.per_node.into_iter().collect(),
        }))
    }

    async fn history(
        &self,
        req: Request<HistoryRequest>,
    ) -> Result<Response<HistoryReply>, Status> {
        let r = req.into_inner();
        let limit = if r.limit == 0 { 100 } else { r.limit as u64 };
        let slice = self.gw.history(&room_name(r.room)?, r.since, limit).await?;
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
        let room = room_name(req.into_inner().room)?;
        let users = self.gw.presence(&room).await?;
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
        let result = match room_name(r.room) {
            Ok(room) => {
                let open = crate::follow::Open {
                    holder: crate::streams::Holder::Backend,
                    until: None,
                    kind: "grpc",
                };
                if r.epoch.len() > 32 || !r.epoch.bytes().all(|b| b.is_ascii_digit()) {
                    Err(crate::state::ApiError::new(
                        turnout_proto::codes::ErrorCode::BadFrame,
                        "epoch must be a RoomMessage's epoch (digits)",
                    ))
                } else {
                    self.gw.stream(&room, r.since, &r.epoch, open).await
                }
            }
            Err(e) => Err(e),
        };
        crate::api::count(&self.gw, "subscribe", result.is_ok());
        let rx = result?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|q| match q.map(|q| q.item) {
            Ok(Item::Message { frame, epoch, .. }) => room_message(&frame)
                .map(|m| RoomMessage { epoch: epoch.to_string(), ..m })
                .ok_or_else(|| Status::internal("a stored message could not be decoded")),
            // The stream cannot go on with seq starting over: the caller
            // resubscribes (with since = 0, or after reading History).
            Ok(Item::Reset { epoch, seq }) => Err(Status::aborted(format!(
                "the room's state was reset in Redis (new epoch {epoch}, seq {seq}); resubscribe"
            ))),
            Err(e) => Err(e.into()),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn disconnect(
        &self,
        req: Request<DisconnectRequest>,
    ) -> Result<Response<DisconnectReply>, Status> {
        let r = req.into_inner();
        let result = match user_id(r.user, "user") {
            Ok(user) => self.gw.disconnect(&user, &r.reason).await,
            Err(e) => Err(e),
        };
        crate::api::count(&self.gw, "disconnect", result.is_ok());
        let connections = result?;
        Ok(Response::new(DisconnectReply { connections }))
    }
}
