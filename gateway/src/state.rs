//! The gateway's shared state and the operations the HTTP and gRPC APIs share.

use crate::cluster::{self, Picker, View};
use crate::settings::Settings;
use axum::http::StatusCode;
use dashmap::DashMap;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use redis::aio::ConnectionManager;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tonic::transport::Channel;
use turnout_common::auth::{ClientAuth, InternalToken};
use turnout_common::metrics::register;
use turnout_proto::codes::ErrorCode;
use turnout_proto::v1::node_client::NodeClient;

/// A gRPC channel whose calls carry the internal token.
pub(crate) type Internal = tonic::service::interceptor::InterceptedService<Channel, InternalToken>;
use turnout_proto::v1::router_client::RouterClient;
use turnout_proto::v1::{DeliverRequest, NodeInfo, RouteRequest};
use turnout_proto::{Strategy, names};

/// Most users one presence call returns (a sample in larger rooms).
pub(crate) const MAX_PRESENCE: u64 = 10_000;

/// Most messages one history call returns.
pub(crate) const MAX_HISTORY_LIMIT: u64 = 1000;

#[derive(Clone)]
pub(crate) struct GatewayMetrics {
    pub(crate) registry: Registry,
    pub(crate) proxied: IntGauge,
    pub(crate) proxied_bytes: IntCounterVec,
    pub(crate) upstream_errors: IntCounter,
    pub(crate) auth_failures: IntCounter,
    pub(crate) api_requests: IntCounterVec,
    pub(crate) follow: crate::follow::FollowMetrics,
}

impl GatewayMetrics {
    fn new(id: &str) -> Self {
        let registry = turnout_common::metrics::registry("gateway", &[("gateway", id)]);
        let c = |name: &str, help: &str| turnout_common::metrics::counter(&registry, name, help);
        let g = |name: &str, help: &str| turnout_common::metrics::gauge(&registry, name, help);
        let follow = crate::follow::FollowMetrics {
            streams: g("room_streams", "Open room streams (SSE and gRPC Subscribe)"),
            rooms: g("followed_rooms", "Rooms this gateway follows on Redis"),
            sent: c(
                "stream_messages_total",
                "Room messages sent to streams (live and caught up)",
            ),
            caught_up: c(
                "stream_caught_up_total",
                "Room messages streams read back from history (resume, gap, lag, reconnect)",
            ),
            resets: c(
                "stream_resets_total",
                "Streams told `reset` because Redis lost the room's state",
            ),
            push_dropped: c(
                "push_dropped_total",
                "Room messages dropped because the push buffer was full (recovered from history)",
            ),
            redis_disconnects: c(
                "redis_disconnects_total",
                "Times the pub/sub connection to Redis dropped",
            ),
            redis_errors: c("redis_errors_total", "Redis commands that failed"),
        };
        GatewayMetrics {
            follow,
            proxied: register(
                &registry,
                IntGauge::new(
                    "proxied_connections",
                    "WebSocket connections spliced to ws-nodes",
                )
                .expect("valid"),
            ),
            proxied_bytes: register(
                &registry,
                IntCounterVec::new(
                    Opts::new("proxied_bytes_total", "Bytes spliced, by direction"),
                    &["direction"],
                )
                .expect("valid"),
            ),
            auth_failures: register(
                &registry,
                IntCounter::new(
                    "auth_failures_total",
                    "WebSocket upgrades refused for a missing or bad token",
                )
                .expect("valid"),
            ),
            upstream_errors: register(
                &registry,
                IntCounter::new(
                    "upstream_errors_total",
                    "Failed attempts to reach a ws-node",
                )
                .expect("valid"),
            ),
            api_requests: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "api_requests_total",
                        "Server API calls, by operation and outcome",
                    ),
                    &["op", "outcome"],
                )
                .expect("valid"),
            ),
            registry,
        }
    }
}

/// An API failure: a code from the documented set, safe to show callers.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn http_status(&self) -> StatusCode {
        match self.code {
            ErrorCode::BadJson
            | ErrorCode::BadFrame
            | ErrorCode::BadName
            | ErrorCode::UnknownType => StatusCode::BAD_REQUEST,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::RateLimited | ErrorCode::TooManyRooms => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::NotJoined | ErrorCode::WrongNode => StatusCode::CONFLICT,
            ErrorCode::Draining | ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub(crate) fn grpc_status(&self) -> tonic::Status {
        let m = self.message.clone();
        match self.code {
            ErrorCode::BadJson
            | ErrorCode::BadFrame
            | ErrorCode::BadName
            | ErrorCode::UnknownType => tonic::Status::invalid_argument(m),
            ErrorCode::Forbidden => tonic::Status::permission_denied(m),
            ErrorCode::RateLimited | ErrorCode::TooManyRooms => {
                tonic::Status::resource_exhausted(m)
            }
            ErrorCode::NotJoined | ErrorCode::WrongNode => tonic::Status::failed_precondition(m),
            ErrorCode::Draining | ErrorCode::Unavailable => tonic::Status::unavailable(m),
            ErrorCode::Internal => tonic::Status::internal(m),
        }
    }
}

/// Shared by every handler of one gateway.
pub(crate) struct Gateway {
    pub(crate) id: String,
    pub(crate) settings: Settings,
    pub(crate) view: watch::Receiver<Arc<View>>,
    pub(crate) picker: Picker,
    pub(crate) metrics: GatewayMetrics,
    pub(crate) redis: ConnectionManager,
    nodes: DashMap<String, NodeClient<Internal>>,
    /// One client per router URL, in failover order.
    routers: Vec<RouterClient<Internal>>,
    pub(crate) internal: InternalToken,
    /// Client token verification; None runs open.
    pub(crate) auth: Option<ClientAuth>,
    /// Proxied connections per client IP.
    pub(crate) per_ip: DashMap<std::net::IpAddr, usize>,
    /// Sticky: room -> owner, for [`ROUTE_CACHE_TTL`] unless the owner leaves.
    route_cache: DashMap<String, (NodeInfo, Instant)>,
    /// Room streams (SSE, gRPC `Subscribe`); set once at start.
    pub(crate) follower: std::sync::OnceLock<Arc<crate::follow::Follower>>,
}

/// How long the gateway reuses a room's owner without asking a router.
pub(crate) const ROUTE_CACHE_TTL: Duration = Duration::from_secs(1);

impl Gateway {
    pub(crate) fn new(
        id: String,
        settings: Settings,
        view: watch::Receiver<Arc<View>>,
        redis: ConnectionManager,
        internal: InternalToken,
        auth: Option<ClientAuth>,
    ) -> Self {
        let routers = settings
            .routers()
            .into_iter()
            .filter_map(|url| {
                let ch = Channel::from_shared(url)
                    .ok()?
                    .connect_timeout(Duration::from_secs(2))
                    .connect_lazy();
                Some(RouterClient::with_interceptor(ch, internal.clone()))
            })
            .collect();
        Gateway {
            metrics: GatewayMetrics::new(&id),
            id,
            settings,
            view,
            picker: Picker::default(),
            redis,
            nodes: DashMap::new(),
            routers,
            route_cache: DashMap::new(),
            internal,
            auth,
            per_ip: DashMap::new(),
            follower: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn strategy(&self) -> Strategy {
        self.settings.strategy
    }

    /// Strategy disagreements seen from here.
    pub(crate) fn conflicts(&self) -> Vec<String> {
        cluster::conflicts(self.strategy(), &self.view.borrow())
    }

    /// Ready: following a router, at least one node takes clients, no mismatch.
    pub(crate) fn readiness(&self) -> Result<(), String> {
        let view = self.view.borrow().clone();
        if !view.connected {
            return Err("no router reachable".into());
        }
        if !view.reply.nodes.iter().any(|n| !n.draining) {
            return Err("no live ws-node".into());
        }
        let conflicts = cluster::conflicts(self.strategy(), &view);
        if !conflicts.is_empty() {
            return Err(format!("strategy mismatch: {}", conflicts.join("; ")));
        }
        Ok(())
    }

    /// The node a new client for `room` should use.
    pub(crate) async fn route(&self, room: Option<&str>) -> Result<NodeInfo, ApiError> {
        self.pick(room, true, &[]).await
    }

    /// Picks a node; `avoid` lists nodes that just failed to answer.
    pub(crate) async fn pick(
        &self,
        room: Option<&str>,
        record: bool,
        avoid: &[String],
    ) -> Result<NodeInfo, ApiError> {
        match self.strategy() {
            Strategy::Pubsub => {
                let view = self.view.borrow().clone();
                self.picker
                    .least_loaded(&view, record, avoid)
                    .ok_or_else(|| ApiError::new(ErrorCode::Unavailable, "no live ws-node"))
            }
            Strategy::Sticky => {
                let room = room.ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::BadFrame,
                        "sticky strategy: `room` is required to find the room's node",
                    )
                })?;
                names::check_room(room)
                    .map_err(|e| ApiError::new(ErrorCode::BadName, format!("room {e}")))?;
                self.owner(room).await
            }
        }
    }

    /// Sticky: the owner of `room`, from the cache or a router.
    async fn owner(&self, room: &str) -> Result<NodeInfo, ApiError> {
        if let Some(hit) = self.route_cache.get(room) {
            let (node, at) = hit.value();
            let still_live = self
                .view
                .borrow()
                .reply
                .nodes
                .iter()
                .any(|n| n.id == node.id && !n.draining);
            if at.elapsed() < ROUTE_CACHE_TTL && still_live {
                return Ok(node.clone());
            }
        }
        let mut last = None;
        for router in &self.routers {
            let mut r = router.clone();
            match r
                .route(RouteRequest {
                    room: room.to_owned(),
                })
                .await
            {
                Ok(reply) => {
                    let node = reply.into_inner().node.ok_or_else(|| {
                        ApiError::new(ErrorCode::Unavailable, "router named no node")
                    })?;
                    self.route_cache
                        .insert(room.to_owned(), (node.clone(), Instant::now()));
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
        tracing::warn!(room, error = %why, "no router could route the room");
        Err(ApiError::new(
            ErrorCode::Unavailable,
            "no router could place the room; retry",
        ))
    }

    /// Forgets a cached owner that turned out wrong.
    pub(crate) fn forget_route(&self, room: &str) {
        self.route_cache.remove(room);
    }

    fn node_client(&self, node: &NodeInfo) -> Result<NodeClient<Internal>, ApiError> {
        if let Some(c) = self.nodes.get(&node.internal_url) {
            return Ok(c.clone());
        }
        let channel = Channel::from_shared(node.internal_url.clone())
            .map_err(|_| ApiError::new(ErrorCode::Internal, "node has an invalid internal URL"))?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        let client = NodeClient::with_interceptor(channel, self.internal.clone());
        self.nodes.insert(node.internal_url.clone(), client.clone());
        Ok(client)
    }

    /// Publishes into `room` through a ws-node; returns the seq.
    pub(crate) async fn publish(
        &self,
        room: &str,
        data_json: String,
        from: Option<String>,
    ) -> Result<u64, ApiError> {
        names::check_room(room)
            .map_err(|e| ApiError::new(ErrorCode::BadName, format!("room {e}")))?;
        let from = from
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| "api".to_owned());
        names::check_user(&from)
            .map_err(|e| ApiError::new(ErrorCode::BadName, format!("from {e}")))?;
        if serde_json::from_str::<serde::de::IgnoredAny>(&data_json).is_err() {
            return Err(ApiError::new(ErrorCode::BadJson, "data is not valid JSON"));
        }
        // Sticky: a cached owner may have lost the room; ask again once.
        for attempt in 0..2 {
            let node = self.pick(Some(room), false, &[]).await?;
            let mut client = self.node_client(&node)?;
            let req = DeliverRequest {
                room: room.to_owned(),
                data_json: data_json.clone(),
                from: from.clone(),
                epoch: 0,
            };
            match client.deliver(req).await {
                Ok(reply) => return Ok(reply.into_inner().seq),
                Err(s) => {
                    tracing::warn!(node = %node.id, error = %s.message(), "Deliver failed");
                    match s.code() {
                        tonic::Code::InvalidArgument => {
                            return Err(ApiError::new(ErrorCode::BadFrame, s.message()));
                        }
                        _ if attempt == 0 && self.strategy() == Strategy::Sticky => {
                            self.forget_route(room)
                        }
                        _ => {
                            return Err(ApiError::new(
                                ErrorCode::Unavailable,
                                "publish failed; retry",
                            ));
                        }
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
        room: &str,
        since: u64,
        limit: u64,
    ) -> Result<turnout_common::redis::HistorySlice, ApiError> {
        names::check_room(room)
            .map_err(|e| ApiError::new(ErrorCode::BadName, format!("room {e}")))?;
        let limit = limit.clamp(1, MAX_HISTORY_LIMIT);
        let mut con = self.redis.clone();
        turnout_common::redis::history(&mut con, room, since, limit)
            .await
            .map_err(|e| {
                tracing::warn!(room, error = %e, "history read failed");
                ApiError::new(ErrorCode::Unavailable, "history unavailable; retry")
            })
    }

    /// Starts a stream of `room`'s messages after `since` (0: live only).
    pub(crate) async fn stream(
        &self,
        room: &str,
        since: u64,
        kind: &'static str,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<crate::follow::Item, ApiError>>, ApiError> {
        let follower = self
            .follower
            .get()
            .ok_or_else(|| ApiError::new(ErrorCode::Unavailable, "starting up; retry"))?;
        follower.stream(room, since, kind).await
    }

    /// Closes every connection of `user` on every live node; returns how many.
    /// Fails (and may be retried: it is idempotent) when a node did not answer.
    pub(crate) async fn disconnect(&self, user: &str, reason: &str) -> Result<u64, ApiError> {
        names::check_user(user)
            .map_err(|e| ApiError::new(ErrorCode::BadName, format!("user {e}")))?;
        if reason.len() > 123 {
            return Err(ApiError::new(
                ErrorCode::BadFrame,
                "reason must be at most 123 bytes (the WebSocket close frame's limit)",
            ));
        }
        let nodes = self.view.borrow().reply.nodes.clone();
        let calls = nodes.iter().map(|node| async move {
            let mut client = self.node_client(node)?;
            let req = turnout_proto::v1::DisconnectRequest {
                user: user.to_owned(),
                reason: reason.to_owned(),
            };
            client
                .disconnect(req)
                .await
                .map(|r| r.into_inner().connections)
                .map_err(|s| {
                    tracing::warn!(node = %node.id, error = %s.message(), "Disconnect failed");
                    ApiError::new(ErrorCode::Unavailable, s.message())
                })
        });
        let results = futures_util::future::join_all(calls).await;
        let mut closed = 0;
        let mut failed = 0;
        for r in results {
            match r {
                Ok(n) => closed += n,
                Err(_) => failed += 1,
            }
        }
        tracing::info!(user, closed, failed, "user disconnected");
        if failed > 0 {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("{failed} node(s) did not answer ({closed} connections closed); retry"),
            ));
        }
        Ok(closed)
    }

    /// Users present in `room`.
    pub(crate) async fn presence(&self, room: &str) -> Result<Vec<String>, ApiError> {
        names::check_room(room)
            .map_err(|e| ApiError::new(ErrorCode::BadName, format!("room {e}")))?;
        let mut con = self.redis.clone();
        let users = turnout_common::redis::presence(&mut con, room, MAX_PRESENCE)
            .await
            .map_err(|e| {
                tracing::warn!(room, error = %e, "presence read failed");
                ApiError::new(ErrorCode::Unavailable, "presence unavailable; retry")
            })?;
        Ok(users.users)
    }
}
