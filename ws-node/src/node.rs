//! The ws-node process: HTTP endpoints, WebSocket upgrades, heartbeats,
//! drain and shutdown.

use crate::conn::{Conn, ConnId};
use crate::hub::Hub;
use crate::metrics::NodeMetrics;
use crate::settings::Settings;
use crate::{grpc, heartbeat, session};
use axum::Router;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use dashmap::DashMap;
use serde::Deserialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use turnout_common::auth::{ClientAuth, InternalToken, check_open_mode};
use turnout_common::readiness::{Readiness, startup_app};
use turnout_common::redis::{Con, RoomConfig};
use turnout_common::settings::ListenSpec;
use turnout_proto::names::UserId;
use turnout_proto::now_ms;
use turnout_proto::v1::NodeInfo;

/// Why this process could not start or stopped with an error.
pub type NodeError = turnout_common::serve::RunError;

/// Shared by every task of one node.
pub(crate) struct NodeState {
    pub(crate) hub: Arc<Hub>,
    pub(crate) settings: Settings,
    pub(crate) conns: DashMap<ConnId, Arc<Conn>>,
    pub(crate) info: NodeInfo,
    draining: AtomicBool,
    next_conn: AtomicU64,
    limit: Arc<Semaphore>,
    sessions: TaskTracker,
    /// Cancelled to start a drain (signal or `Node.Drain`).
    pub(crate) drain: CancellationToken,
    /// Membership commands (heartbeats); unset while a `local` node serves
    /// without Redis.
    pub(crate) redis: OnceLock<Con>,
    /// Client token verification; None runs open.
    auth: Option<ClientAuth>,
    /// This node's lease on its membership: when it may have lapsed.
    pub(crate) lease: heartbeat::Lease,
    /// What the node waits for (`/readyz`).
    pub(crate) readiness: Readiness,
    /// Connections per client address (IPv6: per /64).
    per_ip: Arc<turnout_common::net::IpSlots>,
    /// New connections from everyone: a token bucket (`max_accept_rate`).
    admission: std::sync::Mutex<crate::limits::Bucket>,
    /// The backend's hooks (none configured: none called).
    pub(crate) hooks: crate::hooks::Hooks,
}

impl NodeState {
    /// Client token verification; None when the node runs open.
    pub(crate) fn auth(&self) -> Option<&ClientAuth> {
        self.auth.as_ref()
    }

    pub(crate) fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The heartbeat record as of now.
    pub(crate) fn node_info(&self) -> NodeInfo {
        NodeInfo {
            connections: self.conns.len() as u64,
            max_connections: self.settings.max_connections as u64,
            rooms: self.hub.room_count() as u64,
            draining: self.draining(),
            heartbeat_ms: now_ms(),
            ..self.info.clone()
        }
    }
}

/// Runs a ws-node on `listener` until `shutdown` is cancelled, then drains.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let addr = listener.local_addr()?;
    let host = if addr.ip().is_unspecified() {
        turnout_common::settings::host_name()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    let node_id = settings.node_id.clone().unwrap_or_else(|| {
        let h: String = turnout_common::settings::host_name()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        format!("{h}-{}", addr.port())
    });
    let url = settings
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("ws://{host}:{}/ws", addr.port()));
    let internal_url = internal_url_of(&url);
    let auth = ClientAuth::from_settings(settings.jwt())?;
    let internal = InternalToken::new(settings.internal_token.as_deref())?;
    let mut missing = Vec::new();
    if auth.is_none() {
        missing.push("jwt_secret");
    }
    if settings.internal_token.is_none() {
        missing.push("internal_token");
    }
    check_open_mode(
        "ws-node",
        &ListenSpec::from(addr),
        settings.insecure,
        &missing,
    )?;
    let metrics = NodeMetrics::new(&node_id, settings.strategy);
    let hooks = crate::hooks::Hooks::new(
        &node_id,
        &crate::hooks::HookSettings {
            urls: settings.hook_urls().map(|(_, url)| url),
            timeout: settings.proxy_timeout,
            max_inflight: settings.proxy_max_inflight,
            max_reply_bytes: settings.proxy_max_reply_bytes,
            max_rooms: settings.max_rooms_per_conn,
            max_data_bytes: settings.max_frame_bytes,
        },
        metrics.hooks.clone(),
    )
    .map_err(|e| turnout_common::settings::SettingsError::invalid(e.key, e.message))?;
    let client = turnout_common::redis::client(
        &settings.redis_url,
        settings.redis_ca_file.as_deref(),
        settings.redis_cluster,
    )?;
    // Health and readiness answer from the first moment, while the node
    // waits for what it needs.
    let readiness = Readiness::default();
    let (apps, apps_rx) = watch::channel(startup_app(readiness.clone()));
    let server_stop = CancellationToken::new();
    let server = tokio::spawn(turnout_common::serve::serve(
        listener,
        apps_rx,
        server_stop.clone(),
        settings.serve_limits(),
    ));
    let cfg = RoomConfig {
        history_size: settings.history_size,
        room_ttl: settings.room_ttl,
        dedupe_window: settings.dedupe_window,
        inbox_size: if settings.inbox {
            settings.inbox_size
        } else {
            0
        },
        // The strategy says whether messages go on the room's channel.
        bus: true,
    };
    // Stops background tasks after the drain completes.
    let stop = CancellationToken::new();
    let started = crate::strategy::start(
        &settings, &node_id, &metrics, &client, cfg, &readiness, &stop,
    );
    let started = tokio::select! {
        s = started => s?,
        _ = shutdown.cancelled() => None,
    };
    let Some((hub, con)) = started else {
        server_stop.cancel();
        let _ = server.await;
        return Ok(());
    };
    if let Some(url) = settings.webhook_url.as_deref() {
        let webhooks = crate::webhooks::Webhooks::start(
            &node_id,
            &crate::webhooks::WebhookSettings {
                url,
                secret: settings.webhook_secret.as_deref(),
                batch: settings.webhook_batch,
                queue: settings.webhook_queue,
                queue_bytes: settings.webhook_queue_bytes,
                timeout: settings.webhook_timeout,
                retries: settings.webhook_retries,
            },
            metrics.webhooks.clone(),
            stop.clone(),
        )
        .map_err(|e| turnout_common::settings::SettingsError::invalid("webhook_url", e))?;
        let _ = hub.webhooks.set(webhooks);
    }
    let redis = OnceLock::new();
    if let Some(con) = con {
        let _ = redis.set(con);
    }
    let info = NodeInfo {
        id: node_id.clone(),
        url: url.clone(),
        internal_url,
        strategy: hub.strategy.kind().as_str().to_owned(),
        started_ms: now_ms(),
        version: turnout_common::VERSION.to_owned(),
        ..Default::default()
    };
    let per_ip = turnout_common::net::IpSlots::new(turnout_common::net::IpLimits {
        max: settings.max_connections_per_ip,
        rate: settings.max_connect_rate_per_ip,
        burst: settings.max_connect_burst_per_ip,
    });
    let admission = std::sync::Mutex::new(crate::limits::Bucket::new(
        settings.max_accept_rate,
        settings.max_accept_burst,
        std::time::Instant::now(),
    ));
    let state = Arc::new(NodeState {
        hub,
        conns: DashMap::new(),
        info,
        draining: AtomicBool::new(false),
        next_conn: AtomicU64::new(1),
        limit: Arc::new(Semaphore::new(settings.max_connections)),
        sessions: TaskTracker::new(),
        drain: CancellationToken::new(),
        redis,
        settings,
        auth,
        lease: heartbeat::Lease::default(),
        readiness,
        per_ip,
        admission,
        hooks,
    });
    if state.redis.get().is_none() {
        tokio::spawn(heartbeat::connect_later(
            state.clone(),
            client,
            stop.clone(),
        ));
    }

    let (health, routes) = turnout_common::grpc::base_routes();
    health
        .set_serving::<turnout_proto::v1::node_server::NodeServer<grpc::NodeService>>()
        .await;
    let grpc_routes = routes
        .add_service(tonic::service::interceptor::InterceptedService::new(
            grpc::server(state.clone()),
            internal.checker(),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            grpc::relay_server(state.clone()),
            internal.checker(),
        ))
        .into_axum_router();
    let mut app = Router::new()
        .route(
            "/ws",
            get(ws_handler).layer(axum::middleware::map_response(
                turnout_common::serve::close_unless_upgraded,
            )),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz_handler))
        .route("/metrics", get(metrics_handler))
        .route("/api/cluster", get(cluster_handler));
    if state.hub.strategy.serves_demo_page() {
        app = app.route("/", get(turnout_common::serve::demo_page)).route(
            "/turnout-client.js",
            get(turnout_common::serve::client_library),
        );
    }
    let app = app.with_state(state.clone()).merge(grpc_routes);

    let strategy = state.hub.strategy.kind();
    // Redis may stall here: a stop asked meanwhile is not kept waiting.
    tokio::select! {
        _ = heartbeat::register(&state) => {}
        _ = shutdown.cancelled() => {}
    }
    let heartbeat = tokio::spawn(heartbeat::run(state.clone(), stop.clone()));
    tokio::spawn(heartbeat::watch_lease(state.clone(), stop.clone()));
    let _ = apps.send(app);
    tracing::info!(node = %node_id, %addr, %url, %strategy, "ws-node serving");

    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = state.drain.cancelled() => {}
    }
    drain(&state).await;
    // Leave the live set before the port closes, so nobody is sent to a
    // closed port in between. The heartbeat may be waiting on a Redis that
    // does not answer: it is stopped where it is (a write it already sent
    // still reaches Redis before the leaving one, on the same connection).
    stop.cancel();
    heartbeat.abort();
    let _ = heartbeat.await;
    // Redis may be gone: leaving is best effort, the heartbeat expires anyway.
    // Meanwhile the webhook events of the drain get their one try.
    let webhooks = async {
        if let Some(w) = state.hub.webhooks.get() {
            w.finish().await;
        }
    };
    let (left, _) = tokio::join!(
        tokio::time::timeout(LEAVE_CALL, heartbeat::deregister(&state)),
        tokio::time::timeout(LEAVE_CALL, webhooks),
    );
    if left.is_err() {
        tracing::warn!("Redis did not answer the leaving call in time; the heartbeat will expire");
    }
    server_stop.cancel();
    match tokio::time::timeout(LEAVE_CALL, server).await {
        Ok(Ok(r)) => r?,
        _ => tracing::debug!("HTTP server did not stop in time"),
    }
    tracing::info!(node = %node_id, "ws-node stopped");
    Ok(())
}

/// How long each step after the drain may take (leaving the live set, closing
/// the port): a node stops within `drain_grace` + 2 × this even when Redis
/// does not answer.
pub const LEAVE_CALL: Duration = Duration::from_secs(1);

/// How long announcing the drain may take; it counts against `drain_grace`.
const ANNOUNCE_CALL: Duration = Duration::from_secs(2);

/// Drain: stop taking rooms, announce it, tell clients to reconnect (1012),
/// and wait for their sessions, all within `drain_grace`.
async fn drain(state: &Arc<NodeState>) {
    let grace = state.settings.drain_grace;
    let deadline = tokio::time::Instant::now() + grace;
    state.draining.store(true, Ordering::Release);
    let n = state.conns.len();
    tracing::info!(connections = n, ?grace, "draining");
    let announce = async {
        heartbeat::write(state, true).await;
        heartbeat::mark_draining(state, true).await;
    };
    if tokio::time::timeout(ANNOUNCE_CALL.min(grace), announce)
        .await
        .is_err()
    {
        tracing::warn!("Redis did not take the draining mark in time; draining anyway");
    }
    state.hub.strategy.drain();
    state.hub.send_away(&state.conns, "draining");
    state.sessions.close();
    if tokio::time::timeout_at(deadline, state.sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = state.conns.len(),
            "drain grace ran out; closing the rest"
        );
    }
}

fn internal_url_of(ws_url: &str) -> String {
    let rest = ws_url
        .strip_prefix("wss://")
        .map(|r| ("https://", r))
        .or_else(|| ws_url.strip_prefix("ws://").map(|r| ("http://", r)));
    match rest {
        Some((scheme, r)) => format!("{scheme}{}", r.split('/').next().unwrap_or(r)),
        None => ws_url.to_owned(),
    }
}

#[derive(Deserialize)]
struct WsQuery {
    user: Option<String>,
}

/// The client's address: the peer's, or the one a gateway vouches for (next
/// to the internal token, or in open mode).
fn client_ip(
    state: &NodeState,
    peer: std::net::IpAddr,
    headers: &axum::http::HeaderMap,
) -> std::net::IpAddr {
    let vouched = headers
        .get(turnout_common::net::CLIENT_IP_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let Some(ip) = vouched else {
        return peer;
    };
    let trusted = match &state.settings.internal_token {
        None => true,
        Some(t) => headers
            .get(turnout_common::auth::INTERNAL_TOKEN_HEADER)
            .is_some_and(|v| turnout_common::auth::ct_eq(v.as_bytes(), t.as_bytes())),
    };
    if trusted { ip } else { peer }
}

async fn ws_handler(
    State(state): State<Arc<NodeState>>,
    Query(q): Query<WsQuery>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if state.draining() {
        return refuse(
            "draining",
            "node is draining; reconnect through the gateway",
        );
    }
    if state.lease.lapsed() {
        return refuse(
            "lease",
            "node lost contact with Redis; reconnect through the gateway",
        );
    }
    let claims = match &state.auth {
        None => None,
        Some(auth) => match turnout_common::auth::token_from(&headers, uri.query()) {
            None => {
                state.hub.metrics.auth_failures.inc();
                let msg = turnout_common::auth::AuthError::Missing.to_string();
                return (StatusCode::UNAUTHORIZED, msg).into_response();
            }
            Some(t) => match auth.verify(&t) {
                Ok(c) => Some(c),
                Err(e) => {
                    state.hub.metrics.auth_failures.inc();
                    return (StatusCode::UNAUTHORIZED, e.to_string()).into_response();
                }
            },
        },
    };
    let id = state.next_conn.fetch_add(1, Ordering::Relaxed);
    let label = format!("{}-{id}", state.hub.node_id);
    // A token's subject wins over the `user` parameter.
    let named = claims.is_some() || q.user.is_some();
    let user = match claims.as_ref().map(|c| c.sub.clone()).or(q.user) {
        Some(u) => match UserId::parse(u) {
            Ok(u) => u,
            Err(e) => return (StatusCode::BAD_REQUEST, format!("user id {e}")).into_response(),
        },
        // Random, not the connection counter: anonymous users on two nodes
        // must not share an id (presence, publish ids).
        None => UserId::parse(format!("anon-{:016x}", rand::random::<u64>()))
            .expect("a valid generated user id"),
    };
    let Ok(permit) = state.limit.clone().try_acquire_owned() else {
        return refuse(
            turnout_common::net::REFUSED_FULL,
            "node is at max_connections",
        );
    };
    let admitted = state
        .admission
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take(std::time::Instant::now());
    if !admitted {
        state.hub.metrics.rate_limited.inc();
        return refuse(
            turnout_common::net::REFUSED_BUSY,
            "node takes new connections at max_accept_rate; retry shortly",
        );
    }
    let ip_slot = match state.per_ip.take(client_ip(&state, peer.ip(), &headers)) {
        Ok(slot) => slot,
        Err(refused) => {
            state.hub.metrics.rate_limited.inc();
            return (StatusCode::TOO_MANY_REQUESTS, refused.reason()).into_response();
        }
    };
    let max = state.settings.read_ceiling();
    let queue = (state.settings.send_queue, state.settings.send_queue_bytes);
    // What the connection's task starts from, in one box: the task keeps
    // the room its largest state takes for as long as the connection lives,
    // and after the upgrade that should be the session alone
    // (docs/BENCHMARKS.md, idle).
    let upgrade = Box::new(Upgrade {
        state: state.clone(),
        id,
        label,
        user,
        named,
        claims,
        queue,
        permit,
        ip_slot,
    });
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| {
            let tracker = upgrade.state.sessions.clone();
            let opening = Box::pin(upgrade.open(socket));
            let task = async move {
                let Some(Opened {
                    state,
                    conn,
                    start,
                    permit,
                    ip_slot,
                }) = opening.await
                else {
                    return;
                };
                // Awaited where it is made: a future held in a variable first
                // takes its room twice in this one.
                session::run(state.clone(), conn.clone(), start).await;
                if conn.close_code() == turnout_proto::codes::close::POLICY {
                    ip_slot.penalize();
                    state.hub.metrics.abusive_closed.inc();
                }
                drop(permit);
                drop(ip_slot);
            };
            tracing::trace!(bytes = std::mem::size_of_val(&task), "connection future");
            tracker.track_future(task)
        })
}

/// A connection accepted, before its upgrade.
struct Upgrade {
    state: Arc<NodeState>,
    id: ConnId,
    label: String,
    user: UserId,
    /// A token or the `user` parameter named the user.
    named: bool,
    claims: Option<turnout_common::auth::Claims>,
    queue: (usize, usize),
    permit: tokio::sync::OwnedSemaphorePermit,
    ip_slot: turnout_common::net::IpSlot,
}

/// A connection the backend let in, ready for its session.
struct Opened {
    state: Arc<NodeState>,
    conn: Arc<Conn>,
    start: session::Start,
    permit: tokio::sync::OwnedSemaphorePermit,
    ip_slot: turnout_common::net::IpSlot,
}

impl Upgrade {
    /// Asks the backend's connect hook (before `welcome`) and makes the
    /// connection; None when the hook refused it (closed here).
    async fn open(self: Box<Self>, socket: axum::extract::ws::WebSocket) -> Option<Opened> {
        let Upgrade {
            state,
            id,
            label,
            user,
            named,
            claims,
            queue,
            permit,
            ip_slot,
        } = *self;
        let (user, mut start, refused) = admit(&state, &label, user).await;
        start.named |= named;
        let conn = Arc::new(Conn::new(id, label, user, queue, claims, socket));
        conn.set_hook_expiry(start.expire_at);
        if let Some((code, reason)) = refused {
            if code != turnout_proto::codes::close::REFUSED {
                conn.send_frame(
                    &turnout_proto::frames::ServerFrame::error(
                        turnout_proto::codes::ErrorCode::Unavailable,
                        reason.clone(),
                    ),
                    &state.hub.metrics,
                );
            }
            conn.kill_with(code, &reason);
            session::close_refused(&conn).await;
            drop(permit);
            drop(ip_slot);
            return None;
        }
        Some(Opened {
            state,
            conn,
            start,
            permit,
            ip_slot,
        })
    }
}

/// Asks the backend's connect hook, when there is one, about a new
/// connection: its user from now on, what it starts with, or the close code
/// and reason that refuse it (4403, the backend's message; 1013 when the
/// backend did not answer).
async fn admit(
    state: &NodeState,
    label: &str,
    user: UserId,
) -> (UserId, session::Start, Option<(u16, String)>) {
    use crate::hooks::{Answer, Ask, Hook};
    if !state.hooks.has(Hook::Connect) {
        return (user, session::Start::default(), None);
    }
    let ask = Ask {
        conn: label,
        user: &user,
        ..Default::default()
    };
    match state.hooks.call(Hook::Connect, ask).await {
        Answer::Granted(g) => {
            let start = session::Start {
                data: g.data.and_then(|d| serde_json::from_str(d.get()).ok()),
                rooms: g.rooms,
                named: g.user.is_some(),
                expire_at: g.expire_at,
            };
            (g.user.unwrap_or(user), start, None)
        }
        Answer::Refused { message, .. } => (
            user,
            session::Start::default(),
            Some((turnout_proto::codes::close::REFUSED, message)),
        ),
        Answer::Failed(_) => (
            user,
            session::Start::default(),
            Some((
                turnout_proto::codes::close::TRY_AGAIN_LATER,
                "the backend did not answer; retry".to_owned(),
            )),
        ),
    }
}

/// A `503` to an upgrade, with the reason a gateway acts on (and, when
/// the node is full or busy, when to try again).
fn refuse(why: &'static str, message: &'static str) -> Response {
    let retry = match why {
        turnout_common::net::REFUSED_FULL => "5",
        _ => "1",
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (turnout_common::net::REFUSAL_HEADER, why),
            (axum::http::header::RETRY_AFTER.as_str(), retry),
        ],
        message,
    )
        .into_response()
}

async fn metrics_handler(State(state): State<Arc<NodeState>>) -> impl IntoResponse {
    turnout_common::metrics::render(&state.hub.metrics.registry)
}

/// `GET /readyz`: the node takes clients (Redis answers, its lease holds,
/// it is not draining), or what it waits for.
async fn readyz_handler(State(state): State<Arc<NodeState>>) -> Response {
    let mut why = state.readiness.check().err();
    if state.draining() {
        why = Some("draining".into());
    }
    match why {
        None => (StatusCode::OK, "ready").into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

/// `GET /api/cluster` on a node: the node as it sees itself (the demo
/// page's cluster panel, when a local node serves it alone).
async fn cluster_handler(State(state): State<Arc<NodeState>>) -> impl IntoResponse {
    let n = state.node_info();
    axum::Json(serde_json::json!({
        "strategy": n.strategy,
        "nodes": [{
            "id": n.id, "url": n.url, "strategy": n.strategy,
            "connections": n.connections, "rooms": n.rooms,
            "draining": n.draining, "heartbeat_age_ms": 0, "version": n.version,
        }],
        "conflicts": [],
        "redis": state.redis.get().is_some(),
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn internal_url() {
        assert_eq!(
            super::internal_url_of("ws://10.0.0.1:9000/ws"),
            "http://10.0.0.1:9000"
        );
        assert_eq!(
            super::internal_url_of("wss://n.example:443/ws"),
            "https://n.example:443"
        );
    }
}
