//! `turnout.v1.Node`: internal calls from gateways.

use crate::node::NodeState;
use serde_json::value::RawValue;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use turnout_common::redis::Origin;
use turnout_proto::codes::{ErrorCode, close};
use turnout_proto::names::{RoomName, UserId};
use turnout_proto::v1::node_server::{Node, NodeServer};
use turnout_proto::v1::{
    ConnectionInfo, DeliverReply, DeliverRequest, DisconnectReply, DisconnectRequest, DrainReply,
    DrainRequest, HistoryReply, HistoryRequest, PresenceReply, PresenceRequest, RoomStats,
    StatsReply, StatsRequest,
};

/// Most messages one `History` call returns.
const MAX_HISTORY_LIMIT: u64 = 1000;

fn room_arg(room: String) -> Result<RoomName, Status> {
    RoomName::parse(room).map_err(|e| ErrorCode::BadName.status(format!("room {e}")))
}

pub(crate) struct NodeService {
    state: Arc<NodeState>,
}

/// Rooms one `Stats` call describes at most.
const MAX_TOP_ROOMS: u32 = 1000;
/// Connections of one user one `Stats` call lists at most (each with up
/// to `max_rooms_per_conn` rooms: the reply stays well under gRPC's 4 MiB).
const MAX_USER_CONNECTIONS: usize = 200;

pub(crate) fn server(state: Arc<NodeState>) -> NodeServer<NodeService> {
    // A `Deliver` carries one message: bounded like a client's frame
    // (`max_frame_bytes`), plus room for the fields around it.
    let limit = state.settings.max_frame_bytes + 4096;
    NodeServer::new(NodeService { state }).max_decoding_message_size(limit)
}

impl NodeService {
    /// A server API publish (`Deliver`), within its trace's span.
    async fn deliver_in(&self, req: DeliverRequest) -> Result<Response<DeliverReply>, Status> {
        let room = room_arg(req.room)?;
        let from = if req.from.is_empty() {
            "api".to_owned()
        } else {
            req.from
        };
        let from =
            UserId::parse(from).map_err(|e| ErrorCode::BadName.status(format!("from {e}")))?;
        let data = RawValue::from_string(req.data_json)
            .map_err(|_| Status::invalid_argument("data_json is not valid JSON"))?;
        let id = (!req.id.is_empty()).then_some(req.id.as_str());
        if id.is_some_and(|id| id.len() > turnout_proto::frames::MAX_ID_LEN) {
            return Err(ErrorCode::BadFrame.status(format!(
                "id must be at most {} bytes",
                turnout_proto::frames::MAX_ID_LEN
            )));
        }
        let published = self
            .state
            .hub
            .publish(&room, &from, &data, Origin::Api, id)
            .await
            .map_err(|e| match e.redirect {
                Some(url) => e.code.status(format!("wrong_node: room is owned by {url}")),
                None => e.code.status("publish failed"),
            })?;
        Ok(Response::new(DeliverReply {
            seq: published.seq,
            duplicate: published.duplicate,
        }))
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn deliver(
        &self,
        req: Request<DeliverRequest>,
    ) -> Result<Response<DeliverReply>, Status> {
        use tracing::Instrument;
        let span = tracing::info_span!(target: turnout_common::telemetry::TARGET, "node.deliver");
        turnout_common::telemetry::continue_trace(&span, req.extensions());
        self.deliver_in(req.into_inner()).instrument(span).await
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
        let user =
            UserId::parse(req.user).map_err(|e| ErrorCode::BadName.status(format!("user {e}")))?;
        let reason = if req.reason.is_empty() {
            "disconnected by the server"
        } else {
            &req.reason
        };
        let mut connections = 0;
        for c in self.state.conns.iter() {
            // Connections already closing are not counted again.
            if c.user == user && !c.is_closed() {
                c.kill_with(close::KICKED, reason);
                connections += 1;
            }
        }
        self.state.hub.metrics.kicked.inc_by(connections);
        tracing::info!(%user, connections, "user disconnected by the server API");
        Ok(Response::new(DisconnectReply { connections }))
    }

    /// The node's own copy of a room's history (what strategy `local` has).
    async fn history(
        &self,
        req: Request<HistoryRequest>,
    ) -> Result<Response<HistoryReply>, Status> {
        let req = req.into_inner();
        let room = room_arg(req.room)?;
        let limit = (req.limit as u64).clamp(1, MAX_HISTORY_LIMIT);
        let slice = self
            .state
            .hub
            .store
            .history(&room, req.since, limit)
            .await
            .map_err(|_| ErrorCode::Unavailable.status("history unavailable; retry"))?;
        Ok(Response::new(HistoryReply {
            messages: slice
                .messages
                .iter()
                .filter_map(|(_, f)| turnout_proto::bus::room_message(f))
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
        let room = room_arg(req.into_inner().room)?;
        let users = self
            .state
            .hub
            .presence(&room)
            .await
            .map_err(|_| ErrorCode::Unavailable.status("presence unavailable; retry"))?;
        Ok(Response::new(PresenceReply { users }))
    }

    async fn stats(&self, req: Request<StatsRequest>) -> Result<Response<StatsReply>, Status> {
        let req = req.into_inner();
        let hub = &self.state.hub;
        let admin = req.top_rooms > 0 || !req.user.is_empty();
        // Personal rooms are named after users: not listed.
        let rooms: Vec<String> = if admin {
            Vec::new()
        } else {
            hub.room_names()
                .into_iter()
                .filter(|r| !turnout_proto::names::is_personal(r))
                .collect()
        };
        let room_stats = if req.top_rooms == 0 {
            Vec::new()
        } else {
            let mut stats: Vec<RoomStats> = hub
                .rooms
                .iter()
                .filter(|r| !turnout_proto::names::is_personal(r.key()))
                .map(|r| RoomStats {
                    room: r.key().clone(),
                    members: r.members.len() as u64,
                    seq: r.seq.last().unwrap_or(0),
                })
                .collect();
            // The busiest first: only those are sorted.
            let by_members = |a: &RoomStats, b: &RoomStats| {
                b.members.cmp(&a.members).then_with(|| a.room.cmp(&b.room))
            };
            let top = req.top_rooms.min(MAX_TOP_ROOMS) as usize;
            if stats.len() > top {
                stats.select_nth_unstable_by(top, by_members);
                stats.truncate(top);
            }
            stats.sort_unstable_by(by_members);
            stats
        };
        let connections = if req.user.is_empty() {
            Vec::new()
        } else {
            self.state
                .conns
                .iter()
                .filter(|c| c.user.as_str() == req.user)
                .take(MAX_USER_CONNECTIONS)
                .map(|c| ConnectionInfo {
                    id: c.id,
                    user: c.user.to_string(),
                    rooms: c.room_list(),
                })
                .collect()
        };
        Ok(Response::new(StatsReply {
            node: Some(self.state.node_info()),
            rooms,
            room_stats,
            connections,
        }))
    }
}

/// `turnout.v1.Relay`: the owner's side of strategy relay.
pub(crate) struct RelayService {
    state: Arc<NodeState>,
}

pub(crate) fn relay_server(
    state: Arc<NodeState>,
) -> turnout_proto::v1::relay_server::RelayServer<RelayService> {
    // A publish carries one message, bounded like a client's frame (or a
    // `Deliver`: `max_frame_bytes` and 4 KiB), rendered once around its
    // data with the room, sender and id beside it: twice that and 64 KiB
    // holds any publish a node took. A follow request past it would end
    // the whole stream, not fail one publish.
    let limit = 2 * state.settings.max_frame_bytes + 64 * 1024;
    turnout_proto::v1::relay_server::RelayServer::new(RelayService { state })
        .max_decoding_message_size(limit)
}

impl RelayService {
    fn relay(&self) -> Result<&crate::strategy::relay::Relay, Status> {
        self.state
            .hub
            .strategy
            .relay()
            .ok_or_else(|| Status::failed_precondition("this node does not run strategy relay"))
    }
}

type BatchStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<turnout_proto::v1::RelayBatch, Status>> + Send>,
>;

#[tonic::async_trait]
impl turnout_proto::v1::relay_server::Relay for RelayService {
    async fn publish(
        &self,
        req: Request<turnout_proto::v1::RelayPublishRequest>,
    ) -> Result<Response<turnout_proto::v1::RelayPublishReply>, Status> {
        use tracing::Instrument;
        let relay = self.relay()?;
        let span = tracing::info_span!(
            target: turnout_common::telemetry::TARGET,
            "relay.publish",
            node = %self.state.hub.node_id,
        );
        turnout_common::telemetry::continue_trace(&span, req.extensions());
        relay
            .inner()
            .serve_publish(req.into_inner())
            .instrument(span)
            .await
            .map(Response::new)
    }

    async fn carriers(
        &self,
        req: Request<turnout_proto::v1::CarriersRequest>,
    ) -> Result<Response<turnout_proto::v1::CarriersReply>, Status> {
        let relay = self.relay()?;
        Ok(Response::new(
            relay.inner().carriers(&req.into_inner().room),
        ))
    }

    type FollowStream = BatchStream;

    async fn follow(
        &self,
        req: Request<tonic::Streaming<turnout_proto::v1::FollowRequest>>,
    ) -> Result<Response<BatchStream>, Status> {
        use turnout_proto::v1::follow_request::Op;
        let inner = self.relay()?.inner().clone();
        let peer = req
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "a peer".to_owned());
        let mut requests = req.into_inner();
        let (id, out, rx) = inner.open_stream(peer);
        let reader = inner.clone();
        let stream_out = out.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    r = requests.message() => r,
                    _ = stream_out.closed.cancelled() => break,
                };
                let Ok(Some(r)) = next else { break };
                match Op::try_from(r.op) {
                    Ok(Op::Attach) => reader.attach(id, &stream_out, r.room, &r.origin),
                    Ok(Op::Detach) => reader.detach(id, &stream_out, &r.room),
                    Ok(Op::Presence) => reader.presence(id, &r.room, r.origin, r.frame),
                    Ok(Op::Publish) => reader.publish_from(&stream_out, r.call, r.publish),
                    Err(_) => tracing::debug!(op = r.op, "unknown follow request ignored"),
                }
            }
            reader.close_stream(id);
        });
        let stream = futures_util::stream::unfold(
            (rx, out, inner, id),
            |(mut rx, out, inner, id)| async move {
                match out.next_batch(&mut rx).await {
                    Some(items) => Some((
                        Ok(turnout_proto::v1::RelayBatch { items }),
                        (rx, out, inner, id),
                    )),
                    None => {
                        inner.close_stream(id);
                        None
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}
