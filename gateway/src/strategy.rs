//! What differs between the strategies at the gateway, in one place:
//! where a new client goes, and where the server API finds a room.
//!
//! | | new client | publish | history, presence, streams |
//! | --- | --- | --- | --- |
//! | sticky | the room's owner (router) | the owner (`Node.Deliver`) | Redis |
//! | pubsub | least-loaded node | any node | Redis |
//! | relay | least-loaded node | any node (it sends it to the owner) | Redis; streams follow the room's owner |
//! | local | least-loaded node | the room's home node | the home node (no streams) |
//!
//! In `local` every node has its own copy of each room; the server API
//! speaks to one of them, the room's home node (rendezvous hash over the
//! live nodes), so publishing and reading agree with each other.

use crate::follow::Queued;
use crate::state::{ApiError, Gateway, MAX_HISTORY_LIMIT, MAX_PRESENCE, ROUTE_CACHE_TTL};
use std::time::Instant;
use tokio::sync::mpsc;
use turnout_common::redis::HistorySlice;
use turnout_proto::Strategy;
use turnout_proto::codes::ErrorCode;
use turnout_proto::names::{RoomName, UserId};
use turnout_proto::v1::{
    DeliverReply, DeliverRequest, HistoryRequest, NodeInfo, PresenceRequest, RouteRequest,
};

/// How long a room a gateway places (relay, to stream it) stays pinned
/// unused; its owner keeps it pinned with its own `placement_ttl` while
/// anyone follows it.
pub(crate) const RELAY_PIN: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether room streams follow each room at its owner node (relay) rather
/// than on its Redis channel.
pub(crate) fn follows_rooms_at_owners(strategy: Strategy) -> bool {
    strategy == Strategy::Relay
}

fn no_node() -> ApiError {
    ApiError::new(ErrorCode::Unavailable, "no live ws-node")
}

/// What a publish to a user did.
pub(crate) struct UserPublished {
    /// The personal room, `#user`.
    pub(crate) room: String,
    pub(crate) seq: u64,
    pub(crate) duplicate: bool,
    /// Strategy local: each node's seq for its own copy of the room.
    pub(crate) per_node: Vec<(String, u64)>,
}

impl Gateway {
    /// Picks a node for a client; `avoid` lists nodes that just failed to
    /// answer; `record` counts the pick against the node's load.
    pub(crate) async fn pick(
        &self,
        room: Option<&RoomName>,
        record: bool,
        avoid: &[String],
    ) -> Result<NodeInfo, ApiError> {
        let avoid = self.avoided(avoid);
        match (self.strategy(), room) {
            // Sticky: a room's members meet on its owner. A personal room
            // has no owner, and a client that names no room (one that joins
            // later, or only takes rpc and its personal room) may start
            // anywhere: a join of a room owned elsewhere is answered
            // `wrong_node` with the owner's URL.
            (Strategy::Sticky, Some(room)) if room.personal_user().is_none() => {
                self.owner(room, &avoid).await
            }
            _ => self.least_loaded(record, &avoid),
        }
    }

    fn least_loaded(&self, record: bool, avoid: &[String]) -> Result<NodeInfo, ApiError> {
        let view = self.view.borrow().clone();
        self.picker
            .least_loaded(&view, record, avoid)
            .ok_or_else(no_node)
    }

    /// Whether a client refused by its node may be sent to another. Not in
    /// sticky: a room's members meet on its owner, and placing the room
    /// anew because the owner is full would send every member away.
    pub(crate) fn another_node_may_serve(&self) -> bool {
        match self.strategy() {
            Strategy::Sticky => false,
            Strategy::Pubsub | Strategy::Relay | Strategy::Local => true,
        }
    }

    /// The node the server API uses for `room`.
    async fn api_node(&self, room: &RoomName) -> Result<NodeInfo, ApiError> {
        match self.strategy() {
            // A personal room has no owner in sticky (its user's
            // connections are on any node): any node publishes into it.
            Strategy::Sticky if room.personal_user().is_some() => {
                self.pick(Some(room), false, &[]).await
            }
            Strategy::Sticky => self.owner(room, &self.avoided(&[])).await,
            Strategy::Pubsub | Strategy::Relay => self.pick(Some(room), false, &[]).await,
            Strategy::Local => {
                let view = self.view.borrow().clone();
                let live: Vec<&NodeInfo> =
                    view.reply.nodes.iter().filter(|n| !n.draining).collect();
                live.into_iter()
                    .max_by_key(|n| home_score(room, &n.id))
                    .cloned()
                    .ok_or_else(no_node)
            }
        }
    }

    /// Sticky: the owner of `room`, from the cache or a router; a router
    /// told to `avoid` nodes places the room anew if one of them owns it.
    async fn owner(&self, room: &RoomName, avoid: &[String]) -> Result<NodeInfo, ApiError> {
        if let Some(hit) = self.route_cache.get(room.as_str()) {
            let (node, at) = hit.value();
            let still_live = self
                .view
                .borrow()
                .reply
                .nodes
                .iter()
                .any(|n| n.id == node.id && !n.draining);
            if at.elapsed() < ROUTE_CACHE_TTL && still_live && !avoid.contains(&node.id) {
                return Ok(node.clone());
            }
        }
        let mut last = None;
        for router in &self.routers {
            let mut r = router.clone();
            match r
                .route(RouteRequest {
                    room: room.to_string(),
                    avoid: avoid.to_vec(),
                })
                .await
            {
                Ok(reply) => {
                    let node = reply.into_inner().node.ok_or_else(|| {
                        ApiError::new(ErrorCode::Unavailable, "router named no node")
                    })?;
                    self.route_cache
                        .insert(room.to_string(), (node.clone(), Instant::now()));
                    if self.route_cache.len() > 100_000 {
                        self.route_cache
                            .retain(|_, (_, at)| at.elapsed() < ROUTE_CACHE_TTL);
                    }
                    return Ok(node);
                }
                Err(s) if s.code() == tonic::Code::InvalidArgument => {
                    return Err(ApiError::new(ErrorCode::BadName, s.message()));
                }
                Err(s) => last = Some(s),
            }
        }
        let why = last.map(|s| s.message().to_owned()).unwrap_or_default();
        tracing::warn!(room = %room, error = %why, "no router could route the room");
        Err(ApiError::new(
            ErrorCode::Unavailable,
            "no router could place the room; retry",
        ))
    }

    /// Relay: the node that owns `room` now ("" when none does) and, with
    /// `carriers`, the processes its messages go to (the owner's answer;
    /// empty when it did not give one); None in the other strategies
    /// (sticky's owner is where clients go).
    pub(crate) async fn owner_now(
        &self,
        room: &RoomName,
        carriers: bool,
    ) -> Result<Option<(String, Option<Vec<String>>)>, ApiError> {
        if self.strategy() != Strategy::Relay {
            return Ok(None);
        }
        let mut con = self.redis.clone();
        let owner =
            turnout_common::redis::rooms::claim(&mut con, room, "", std::time::Duration::ZERO, &[])
                .await
                .map_err(|e| {
                    tracing::warn!(room = %room, error = %e, "owner read failed");
                    ApiError::new(ErrorCode::Unavailable, "owner unknown; retry")
                })?;
        if !carriers || owner.node.is_empty() {
            return Ok(Some((owner.node, None)));
        }
        let mut followers = Vec::new();
        if let Some(mut client) = match self.follower.get() {
            Some(f) => f.relay_client(&owner.node).await,
            None => None,
        } {
            let req = turnout_proto::v1::CarriersRequest {
                room: room.to_string(),
            };
            let call = tokio::time::timeout(self.settings.rpc_timeout, client.carriers(req));
            if let Ok(Ok(reply)) = call.await {
                followers = reply.into_inner().followers;
            }
        }
        Ok(Some((owner.node, Some(followers))))
    }

    /// Forgets a cached owner that turned out wrong.
    pub(crate) fn forget_route(&self, room: &str) {
        self.route_cache.remove(room);
    }

    /// Publishes into `user`'s personal room. Strategy local: into each
    /// node's own copy of it (the user's connections may be on any), each
    /// numbered by its node.
    /// A failure on one node fails the call: with an `id`, a retry is
    /// taken once by the nodes that took the first.
    pub(crate) async fn publish_to_user(
        &self,
        user: &UserId,
        data_json: String,
        from: Option<UserId>,
        id: Option<String>,
    ) -> Result<UserPublished, ApiError> {
        let room = RoomName::personal(user);
        if self.strategy() != Strategy::Local {
            let reply = self.publish(&room, data_json, from, id).await?;
            return Ok(UserPublished {
                room: room.into_string(),
                seq: reply.seq,
                duplicate: reply.duplicate,
                per_node: Vec::new(),
            });
        }
        if serde_json::from_str::<serde::de::IgnoredAny>(&data_json).is_err() {
            return Err(ApiError::new(ErrorCode::BadJson, "data is not valid JSON"));
        }
        let nodes: Vec<NodeInfo> = self
            .view
            .borrow()
            .reply
            .nodes
            .iter()
            .filter(|n| !n.draining)
            .cloned()
            .collect();
        if nodes.is_empty() {
            return Err(no_node());
        }
        let from = from
            .map(UserId::into_string)
            .unwrap_or_else(|| "api".to_owned());
        let calls = nodes.iter().map(|node| {
            let req = DeliverRequest {
                room: room.to_string(),
                data_json: data_json.clone(),
                from: from.clone(),
                epoch: 0,
                id: id.clone().unwrap_or_default(),
            };
            async move {
                let mut client = self.node_client(node)?;
                client
                    .deliver(req)
                    .await
                    .map(|r| (node.id.clone(), r.into_inner().seq))
                    .map_err(|s| {
                        tracing::warn!(node = %node.id, error = %s.message(), "Deliver failed");
                        ApiError::new(ErrorCode::Unavailable, s.message())
                    })
            }
        });
        let per_node = futures_util::future::try_join_all(calls).await?;
        Ok(UserPublished {
            room: room.into_string(),
            seq: 0,
            duplicate: false,
            per_node,
        })
    }

    /// Publishes into `room` through a ws-node; returns the seq, and
    /// whether the idempotency key `id` was accepted before (the seq is
    /// then the first publish's). With a key, a publish that failed may be
    /// retried as is: it is taken once. Without one the gateway makes its
    /// own for its retry: a try that timed out or lost its answer may have
    /// been stored, and the retry must not store it again.
    #[tracing::instrument(target = "otel", name = "gateway.publish", skip_all, fields(room = %room))]
    pub(crate) async fn publish(
        &self,
        room: &RoomName,
        data_json: String,
        from: Option<UserId>,
        id: Option<String>,
    ) -> Result<DeliverReply, ApiError> {
        let from = from
            .map(UserId::into_string)
            .unwrap_or_else(|| "api".to_owned());
        if serde_json::from_str::<serde::de::IgnoredAny>(&data_json).is_err() {
            return Err(ApiError::new(ErrorCode::BadJson, "data is not valid JSON"));
        }
        // Sticky: a cached owner may have lost the room; ask again once.
        let attempts = if self.strategy() == Strategy::Sticky {
            2
        } else {
            1
        };
        // Only a publish that may be tried twice needs a key of the
        // gateway's own (each key costs the store an entry for
        // `dedupe_window`); "" is no key.
        let own_key = id.is_none() && attempts > 1;
        let id = match id {
            Some(id) => id,
            None if own_key => format!("api-{:016x}", rand::random::<u64>()),
            None => String::new(),
        };
        if id.len() > turnout_proto::frames::MAX_ID_LEN {
            return Err(ApiError::new(
                ErrorCode::BadFrame,
                format!(
                    "the idempotency key must be at most {} bytes",
                    turnout_proto::frames::MAX_ID_LEN
                ),
            ));
        }
        for attempt in 1..=attempts {
            let node = self.api_node(room).await?;
            let mut client = self.node_client(&node)?;
            let req = DeliverRequest {
                room: room.to_string(),
                data_json: data_json.clone(),
                from: from.clone(),
                epoch: 0,
                id: id.clone(),
            };
            match client.deliver(req).await {
                Ok(reply) => {
                    let mut reply = reply.into_inner();
                    // A retry found the first try stored: that is news to
                    // nobody but the gateway.
                    reply.duplicate &= !own_key;
                    return Ok(reply);
                }
                Err(s) => {
                    tracing::warn!(node = %node.id, error = %s.message(), "Deliver failed");
                    if s.code() == tonic::Code::InvalidArgument {
                        return Err(ApiError::new(ErrorCode::BadFrame, s.message()));
                    }
                    if attempt < attempts {
                        self.forget_route(room);
                    }
                }
            }
        }
        Err(ApiError::new(
            ErrorCode::Unavailable,
            "publish failed; retry",
        ))
    }

    /// Messages of `room` after `since`.
    pub(crate) async fn history(
        &self,
        room: &RoomName,
        since: u64,
        limit: u64,
    ) -> Result<HistorySlice, ApiError> {
        let limit = limit.clamp(1, MAX_HISTORY_LIMIT);
        if self.strategy() == Strategy::Local {
            let node = self.api_node(room).await?;
            let req = HistoryRequest {
                room: room.to_string(),
                since,
                limit: limit as u32,
            };
            let reply = self
                .node_client(&node)?
                .history(req)
                .await
                .map_err(|s| node_failed(&node, "History", &s))?
                .into_inner();
            let messages = reply
                .messages
                .iter()
                .filter_map(|m| Some((m.seq, turnout_proto::bus::message_frame(m)?)))
                .collect();
            return Ok(HistorySlice {
                seq: reply.seq,
                messages,
                complete: reply.complete,
                covered: reply.complete,
                epoch: reply.epoch,
            });
        }
        let mut con = self.redis.clone();
        turnout_common::redis::rooms::history(&mut con, room, since, limit)
            .await
            .map_err(|e| {
                tracing::warn!(room = %room, error = %e, "history read failed");
                ApiError::new(ErrorCode::Unavailable, "history unavailable; retry")
            })
    }

    /// Users present in `room`.
    pub(crate) async fn presence(&self, room: &RoomName) -> Result<Vec<String>, ApiError> {
        if !self.settings.presence_on(room) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "presence is off in this room's namespace (presence = false)",
            ));
        }
        if self.strategy() == Strategy::Local {
            let node = self.api_node(room).await?;
            let req = PresenceRequest {
                room: room.to_string(),
            };
            let reply = self
                .node_client(&node)?
                .presence(req)
                .await
                .map_err(|s| node_failed(&node, "Presence", &s))?;
            return Ok(reply.into_inner().users);
        }
        let mut con = self.redis.clone();
        let users = turnout_common::redis::rooms::presence(&mut con, room, MAX_PRESENCE)
            .await
            .map_err(|e| {
                tracing::warn!(room = %room, error = %e, "presence read failed");
                ApiError::new(ErrorCode::Unavailable, "presence unavailable; retry")
            })?;
        Ok(users.users)
    }

    /// Starts a stream of `room`'s messages after `since` (0: live only)
    /// in history epoch `epoch` ("": the room's current one).
    pub(crate) async fn stream(
        &self,
        room: &RoomName,
        since: u64,
        epoch: &str,
        open: crate::follow::Open,
    ) -> Result<mpsc::Receiver<Result<Queued, ApiError>>, ApiError> {
        if self.strategy() == Strategy::Local {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "room streams follow a room on the shared bus; strategy local has none",
            ));
        }
        let follower = self
            .follower
            .get()
            .ok_or_else(|| ApiError::new(ErrorCode::Unavailable, "starting up; retry"))?;
        follower.stream(room, since, epoch, open).await
    }
}

fn node_failed(node: &NodeInfo, call: &str, s: &tonic::Status) -> ApiError {
    tracing::warn!(node = %node.id, error = %s.message(), "{call} failed");
    ApiError::new(ErrorCode::Unavailable, format!("{call} failed; retry"))
}

/// Rendezvous score of `node` for `room`: the live node with the highest
/// is the room's home node.
fn home_score(room: &str, node: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(format!("{room}\0{node}").as_bytes())
}
