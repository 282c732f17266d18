//! The admin view: `GET /admin` (a page; its data comes from the calls
//! below, behind the API key) and the server API calls it makes: rooms by
//! members with their owners, a user's connections, a node's drain.

use crate::state::{ApiError, Gateway, user_id};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use turnout_proto::codes::ErrorCode;
use turnout_proto::v1::{NodeInfo, StatsReply, StatsRequest};

/// Rooms one admin call lists at most (and each node describes).
pub(crate) const MAX_TOP_ROOMS: u32 = 1000;

/// The admin page: a login form for the API key, then the cluster's live
/// view, polled from the calls below.
pub(crate) async fn page() -> impl IntoResponse {
    Html(include_str!("admin.html"))
}

impl Gateway {
    /// `Stats` of every live node, with the nodes that did not answer.
    async fn stats(&self, req: StatsRequest) -> (Vec<(NodeInfo, StatsReply)>, Vec<String>) {
        let nodes = self.view.borrow().reply.nodes.clone();
        let calls = nodes.into_iter().map(|node| {
            let req = req.clone();
            async move {
                let answer = match self.node_client(&node) {
                    Ok(mut client) => client.stats(req).await.map(|r| r.into_inner()).ok(),
                    Err(_) => None,
                };
                (node, answer)
            }
        });
        let mut answered = Vec::new();
        let mut silent = Vec::new();
        for (node, answer) in futures_util::future::join_all(calls).await {
            match answer {
                Some(reply) => answered.push((node, reply)),
                None => silent.push(node.id),
            }
        }
        (answered, silent)
    }
}

#[derive(Deserialize)]
pub(crate) struct TopQuery {
    top: Option<u32>,
}

/// `GET /api/admin/rooms?top=N`: the rooms with the most members across
/// the cluster (100 by default, at most 1,000), each with its members per
/// node, its seq (the page turns its change into a message rate) and its
/// owner (sticky, relay).
pub(crate) async fn rooms(
    State(gw): State<Arc<Gateway>>,
    Query(q): Query<TopQuery>,
) -> Result<Json<Value>, ApiError> {
    let top = q.top.unwrap_or(100).clamp(1, MAX_TOP_ROOMS);
    let (answers, silent) = gw
        .stats(StatsRequest {
            top_rooms: top,
            user: String::new(),
        })
        .await;
    struct Room {
        members: u64,
        seq: u64,
        owner: Option<String>,
        nodes: Vec<Value>,
    }
    let mut rooms: HashMap<String, Room> = HashMap::new();
    for (node, reply) in &answers {
        for s in &reply.room_stats {
            let r = rooms.entry(s.room.clone()).or_insert(Room {
                members: 0,
                seq: 0,
                owner: None,
                nodes: Vec::new(),
            });
            r.members += s.members;
            r.seq = r.seq.max(s.seq);
            if s.owned {
                r.owner = Some(node.id.clone());
            }
            if s.members > 0 {
                r.nodes.push(json!({"node": node.id, "members": s.members}));
            }
        }
    }
    let mut list: Vec<(String, Room)> = rooms.into_iter().collect();
    list.sort_by(|a, b| b.1.members.cmp(&a.1.members).then_with(|| a.0.cmp(&b.0)));
    list.truncate(top as usize);
    let rooms: Vec<Value> = list
        .into_iter()
        .map(|(room, r)| {
            json!({"room": room, "members": r.members, "seq": r.seq, "owner": r.owner, "nodes": r.nodes})
        })
        .collect();
    crate::api::count(&gw, "admin_rooms", true);
    Ok(Json(
        json!({"strategy": gw.strategy().as_str(), "rooms": rooms, "unreachable": silent}),
    ))
}

/// `GET /api/admin/users/{user}`: the user's connections on every node,
/// with the rooms each is in.
pub(crate) async fn user(
    State(gw): State<Arc<Gateway>>,
    Path(user): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let user = user_id(user, "user")?;
    let (answers, silent) = gw
        .stats(StatsRequest {
            top_rooms: 0,
            user: user.to_string(),
        })
        .await;
    let connections: Vec<Value> = answers
        .iter()
        .flat_map(|(node, reply)| {
            reply
                .connections
                .iter()
                .map(|c| json!({"node": node.id, "id": c.id, "rooms": c.rooms}))
        })
        .collect();
    crate::api::count(&gw, "admin_user", true);
    Ok(Json(
        json!({"user": user.as_str(), "connections": connections, "unreachable": silent}),
    ))
}

/// `POST /api/nodes/{node}/drain`: the node tells its clients to reconnect
/// elsewhere and leaves the cluster (as at SIGTERM; the process stays up
/// until it is stopped).
pub(crate) async fn drain(
    State(gw): State<Arc<Gateway>>,
    Path(node): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let result = async {
        let info = gw
            .view
            .borrow()
            .reply
            .nodes
            .iter()
            .find(|n| n.id == node)
            .cloned()
            .ok_or_else(|| {
                ApiError::new(ErrorCode::BadRequest, format!("no live node {node:?}"))
            })?;
        let mut client = gw.node_client(&info)?;
        let reply = client
            .drain(turnout_proto::v1::DrainRequest {})
            .await
            .map_err(|s| ApiError::new(ErrorCode::Unavailable, s.message()))?
            .into_inner();
        tracing::info!(node = %info.id, connections = reply.connections, "drain requested by the server API");
        Ok(reply.connections)
    };
    let connections = crate::api::counted(&gw, "drain", result.await)?;
    Ok(Json(json!({"node": node, "connections": connections})))
}
