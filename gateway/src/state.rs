//! The gateway's shared state and the operations the HTTP and gRPC APIs share.

use crate::cluster::{self, Picker, View};
use crate::settings::Settings;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tonic::transport::Channel;
use turnout_common::auth::{ClientAuth, InternalToken};
use turnout_common::metrics::register;
use turnout_common::redis::Con;
use turnout_proto::codes::ErrorCode;
use turnout_proto::v1::node_client::NodeClient;

/// A gRPC channel whose calls carry the internal token.
pub(crate) type Internal = tonic::service::interceptor::InterceptedService<Channel, InternalToken>;
use turnout_proto::Strategy;
use turnout_proto::names::{RoomName, UserId};
use turnout_proto::v1::NodeInfo;
use turnout_proto::v1::router_client::RouterClient;

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
    pub(crate) links_cut: IntCounter,
    pub(crate) auth_failures: IntCounter,
    pub(crate) rate_limited: IntCounter,
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
            ring_full: c(
                "stream_ring_full_total",
                "Room messages past a room ring's subscriber_buffer_bytes: its streams read them from history",
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
            rate_limited: c(
                "rate_limited_total",
                "WebSocket upgrades refused per client address (too many open, or opened too fast)",
            ),
            links_cut: c(
                "links_cut_total",
                "Times a ws-node failed health checks and its proxied connections were closed",
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
/// It knows its HTTP status and gRPC code ([`ErrorCode`]), so every handler
/// returns it as is.
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
}

impl IntoResponse for ApiError {
    /// A JSON error body: `{"error":{"code":…,"message":…}}`.
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body =
            serde_json::json!({"error": {"code": self.code.as_str(), "message": self.message}});
        (status, axum::Json(body)).into_response()
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        e.code.status(e.message)
    }
}

/// A room name from outside, checked once.
pub(crate) fn room_name(room: impl Into<String>) -> Result<RoomName, ApiError> {
    RoomName::parse(room).map_err(|e| ApiError::new(ErrorCode::BadName, format!("room {e}")))
}

/// A user id from outside, checked once; `what` names the field.
pub(crate) fn user_id(user: impl Into<String>, what: &str) -> Result<UserId, ApiError> {
    UserId::parse(user).map_err(|e| ApiError::new(ErrorCode::BadName, format!("{what} {e}")))
}

/// Shared by every handler of one gateway.
pub(crate) struct Gateway {
    pub(crate) id: String,
    pub(crate) settings: Settings,
    pub(crate) view: watch::Receiver<Arc<View>>,
    pub(crate) picker: Picker,
    pub(crate) metrics: GatewayMetrics,
    pub(crate) redis: Con,
    nodes: DashMap<String, NodeClient<Internal>>,
    /// One client per router URL, in failover order.
    pub(crate) routers: Vec<RouterClient<Internal>>,
    pub(crate) internal: InternalToken,
    /// Client token verification; None runs open.
    pub(crate) auth: Option<ClientAuth>,
    /// Proxied connections per client address (IPv6: per /64).
    pub(crate) per_ip: Arc<turnout_common::net::IpSlots>,
    /// Sticky: room -> owner, for [`ROUTE_CACHE_TTL`] unless the owner leaves.
    pub(crate) route_cache: DashMap<String, (NodeInfo, Instant)>,
    /// Room streams (SSE, gRPC `Subscribe`); set once at start.
    pub(crate) follower: std::sync::OnceLock<Arc<crate::follow::Follower>>,
    /// What the gateway waits for besides the router (Redis).
    pub(crate) readiness: turnout_common::readiness::Readiness,
    /// Nodes that did not answer an upgrade in time, avoided until then.
    slow: DashMap<String, Instant>,
    /// The nodes clients are spliced to, watched for a broken path.
    pub(crate) links: crate::links::Links,
}

/// How long the gateway reuses a room's owner without asking a router.
pub(crate) const ROUTE_CACHE_TTL: Duration = Duration::from_secs(1);

/// How long a node that did not answer an upgrade in time is avoided.
pub(crate) const AVOID_FOR: Duration = Duration::from_secs(10);

impl Gateway {
    pub(crate) fn new(
        id: String,
        settings: Settings,
        view: watch::Receiver<Arc<View>>,
        redis: Con,
        internal: InternalToken,
        auth: Option<ClientAuth>,
        readiness: turnout_common::readiness::Readiness,
    ) -> Self {
        let routers = settings
            .routers()
            .into_iter()
            .filter_map(|url| {
                let ch = Channel::from_shared(url)
                    .ok()?
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(settings.rpc_timeout)
                    .connect_lazy();
                Some(RouterClient::with_interceptor(ch, internal.clone()))
            })
            .collect();
        let per_ip = turnout_common::net::IpSlots::new(turnout_common::net::IpLimits {
            max: settings.max_connections_per_ip,
            rate: settings.max_connect_rate_per_ip,
            burst: settings.max_connect_burst_per_ip,
        });
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
            per_ip,
            follower: std::sync::OnceLock::new(),
            readiness,
            slow: DashMap::new(),
            links: Default::default(),
        }
    }

    pub(crate) fn strategy(&self) -> Strategy {
        self.settings.strategy
    }

    /// Strategy disagreements seen from here.
    pub(crate) fn conflicts(&self) -> Vec<String> {
        cluster::conflicts(self.strategy(), &self.view.borrow())
    }

    /// Ready: Redis answers, following a router, at least one node takes
    /// clients, no mismatch.
    pub(crate) fn readiness(&self) -> Result<(), String> {
        self.readiness.check()?;
        let view = self.view.borrow().clone();
        if !view.connected {
            return Err(match &view.router_error {
                Some(e) => format!("no router reachable: {e}"),
                None => "no router reachable".into(),
            });
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

    /// Avoids `node` for [`AVOID_FOR`] (it did not answer in time).
    pub(crate) fn avoid_node(&self, node: &str) {
        self.slow
            .insert(node.to_owned(), Instant::now() + AVOID_FOR);
    }

    /// Nodes to avoid now: `also`, and those that were slow recently.
    /// Avoiding a slow node is a preference: when it would leave no live
    /// node to try (a one-node cluster, every node slow a moment ago), the
    /// slow ones are tried again.
    pub(crate) fn avoided(&self, also: &[String]) -> Vec<String> {
        self.slow.retain(|_, until| *until > Instant::now());
        let mut out: Vec<String> = also.to_vec();
        let slow: Vec<String> = self.slow.iter().map(|e| e.key().clone()).collect();
        let any_left = self
            .view
            .borrow()
            .reply
            .nodes
            .iter()
            .any(|n| !n.draining && !also.contains(&n.id) && !slow.contains(&n.id));
        if any_left {
            out.extend(slow);
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    pub(crate) fn node_client(&self, node: &NodeInfo) -> Result<NodeClient<Internal>, ApiError> {
        if let Some(c) = self.nodes.get(&node.internal_url) {
            return Ok(c.clone());
        }
        let channel = Channel::from_shared(node.internal_url.clone())
            .map_err(|_| ApiError::new(ErrorCode::Internal, "node has an invalid internal URL"))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(self.settings.rpc_timeout)
            .connect_lazy();
        let client = NodeClient::with_interceptor(channel, self.internal.clone());
        self.nodes.insert(node.internal_url.clone(), client.clone());
        Ok(client)
    }

    /// Closes every connection of `user` on every live node; returns how many.
    /// Fails (and may be retried: it is idempotent) when a node did not answer.
    pub(crate) async fn disconnect(&self, user: &UserId, reason: &str) -> Result<u64, ApiError> {
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
                user: user.to_string(),
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
        // The user's room streams (SSE) end too.
        let streams = self
            .follower
            .get()
            .map_or(0, |f| f.book.end_user(user.as_str()));
        tracing::info!(%user, closed, failed, streams, "user disconnected");
        if failed > 0 {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("{failed} node(s) did not answer ({closed} connections closed); retry"),
            ));
        }
        Ok(closed)
    }
}
