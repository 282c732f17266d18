//! The admin view: `GET /admin` (a page; its data comes from the calls
//! below, behind the API key) and the server API calls it makes: rooms by
//! members with their owners, a user's connections, a node's drain.

use crate::state::{ApiError, Gateway, user_id};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use turnout_proto::Strategy;
use turnout_proto::codes::ErrorCode;
use turnout_proto::v1::{NodeInfo, StatsReply, StatsRequest};

/// Rooms one admin call lists at most (and each node describes).
pub(crate) const MAX_TOP_ROOMS: u32 = 1000;

/// The admin page: a login form for the API key, then the cluster's live
/// view, polled from the calls below.
pub(crate) async fn page() -> impl IntoResponse {
    (
        [
            // Not to be framed by another site (clickjacking the buttons).
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"),
        ],
        Html(include_str!("admin.html")),
    )
}

impl Gateway {
    /// `Stats` of every live node, with the nodes that did not answer.
    async fn stats(&self, req: StatsRequest) -> (Vec<(NodeInfo, StatsReply)>, Vec<String>) {
        let nodes = self.view.borrow().reply.nodes.clone();
        let calls = nodes.into_iter().map(|node| {
            let req = req.clone();
            async move {
                let answer = match self.node_client(&node) {
                    Ok(mut client) => client
                        .stats(req)
                        .await
                        .map(|r| r.into_inner())
                        .map_err(|s| s.message().to_owned()),
                    Err(e) => Err(e.message),
                };
                if let Err(e) = &answer {
                    tracing::warn!(node = %node.id, error = %e, "Stats failed");
                }
                (node, answer.ok())
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
/// the cluster (100 by default, at most 1,000; from each node's own top
/// `N`), each with its members per node, its seq (the page turns its change
/// into a message rate) and its owner as Redis records it (sticky, relay).
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
    let strategy = gw.strategy();
    struct Room {
        members: u64,
        seq: u64,
        nodes: Vec<Value>,
    }
    let mut rooms: HashMap<String, Room> = HashMap::new();
    for (node, reply) in &answers {
        for s in &reply.room_stats {
            let r = rooms.entry(s.room.clone()).or_insert(Room {
                members: 0,
                seq: 0,
                nodes: Vec::new(),
            });
            r.members += s.members;
            // One room's seq, wherever it is delivered; in local each
            // server numbers its own copy, and the room's messages are
            // all of them.
            r.seq = if strategy == Strategy::Local {
                r.seq + s.seq
            } else {
                r.seq.max(s.seq)
            };
            r.nodes.push(json!({"node": node.id, "members": s.members}));
        }
    }
    let mut list: Vec<(String, Room)> = rooms.into_iter().collect();
    list.sort_by(|a, b| b.1.members.cmp(&a.1.members).then_with(|| a.0.cmp(&b.0)));
    list.truncate(top as usize);
    // Owners as Redis has them (a room's members may all be on nodes that
    // do not own it, and during a handover two nodes hold it).
    let owners = futures_util::future::join_all(list.iter().map(|(room, _)| {
        let mut con = gw.redis.clone();
        async move {
            if !matches!(strategy, Strategy::Sticky | Strategy::Relay) {
                return None;
            }
            let owner = turnout_common::redis::rooms::claim(
                &mut con,
                room,
                "",
                std::time::Duration::ZERO,
                &[],
            )
            .await
            .ok()?;
            (!owner.node.is_empty()).then_some(owner.node)
        }
    }))
    .await;
    let rooms: Vec<Value> = list
        .into_iter()
        .zip(owners)
        .map(|((room, r), owner)| {
            json!({"room": room, "members": r.members, "seq": r.seq, "owner": owner, "nodes": r.nodes})
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
/// elsewhere, leaves the cluster and exits, as at SIGTERM. The last node
/// still serving is not drained: its clients would have nowhere to go.
pub(crate) async fn drain(
    State(gw): State<Arc<Gateway>>,
    Path(node): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let result = async {
        let nodes = gw.view.borrow().reply.nodes.clone();
        let info = nodes
            .iter()
            .find(|n| n.id == node)
            .cloned()
            .ok_or_else(|| {
                ApiError::new(ErrorCode::BadRequest, format!("no live node {node:?}"))
            })?;
        if !info.draining && nodes.iter().all(|n| n.id == node || n.draining) {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("{node} is the last node serving: its clients would have nowhere to go"),
            ));
        }
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
