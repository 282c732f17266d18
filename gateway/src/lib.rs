//! turnout gateway: the public door of a cluster.
//!
//! # Layout
//! - [`settings`]: the gateway's settings.
//! - `cluster`: follows a router's `WatchNodes` stream (with failover between
//!   routers) and picks the node for a new client.
//! - `proxy`: `/ws`, forwarding the upgrade to the node and splicing bytes.
//! - `api`: the HTTP server API, `/healthz`, `/readyz`, `/metrics`.
//! - `grpc`: the `turnout.v1.Gateway` service on the same port.
//! - `state`: shared state and the operations both APIs use.

mod api;
mod cluster;
mod grpc;
mod proxy;
pub mod settings;
mod state;

pub use settings::Settings;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Why this process could not start or stopped with an error.
pub type GatewayError = turnout_common::serve::RunError;

/// Runs a gateway on `listener` until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let addr = listener.local_addr()?;
    let handshake_timeout = settings.handshake_timeout;
    let id = settings.node_id.clone().unwrap_or_else(|| {
        format!(
            "gateway-{}-{}",
            turnout_common::settings::host_name(),
            addr.port()
        )
    });
    let auth = turnout_common::auth::ClientAuth::from_settings(
        settings.jwt_secret.as_deref(),
        settings.jwt_public_key.as_deref(),
    )?;
    let internal = turnout_common::auth::InternalToken::new(settings.internal_token.as_deref())?;
    let mut missing = Vec::new();
    if auth.is_none() {
        missing.push("jwt_secret");
    }
    if settings.api_key.is_none() {
        missing.push("api_key");
    }
    if settings.internal_token.is_none() {
        missing.push("internal_token");
    }
    turnout_common::auth::check_open_mode(
        "gateway",
        &turnout_common::settings::ListenSpec::from(addr),
        settings.insecure,
        &missing,
    )?;
    let client = turnout_common::redis::client(&settings.redis_url)?;
    let redis = turnout_common::redis::commands(&client).await?;
    let (tx, rx) = watch::channel(Arc::new(cluster::View::default()));
    let stop = CancellationToken::new();
    tokio::spawn(cluster::follow(
        settings.routers(),
        internal.clone(),
        tx,
        stop.clone(),
    ));
    let body_limit = settings.max_body_bytes;
    let strategy = settings.strategy;
    let api_key = settings.api_key.clone();
    let gw = Arc::new(state::Gateway::new(
        id.clone(),
        settings,
        rx,
        redis,
        internal,
        auth,
    ));

    let (health, routes) = turnout_common::grpc::base_routes();
    health
        .set_serving::<turnout_proto::v1::gateway_server::GatewayServer<grpc::GatewayService>>()
        .await;
    let grpc = routes
        .add_service(tonic::service::interceptor::InterceptedService::new(
            grpc::server(gw.clone()),
            api::grpc_key_checker(api_key.clone()),
        ))
        .into_axum_router();
    // The server API needs the API key (when one is configured).
    let rooms_api = Router::new()
        .route("/api/rooms/{room}/publish", post(api::publish))
        .route("/api/rooms/{room}/history", get(api::history))
        .route("/api/rooms/{room}/presence", get(api::presence))
        .route_layer(axum::middleware::from_fn_with_state(
            api_key,
            api::require_key,
        ));
    let app = Router::new()
        .route("/ws", get(proxy::ws))
        .route("/api/route", get(api::route))
        .route("/api/cluster", get(api::cluster))
        .merge(rooms_api)
        .route("/", get(api::demo_page))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(gw)
        .merge(grpc);
    tracing::info!(gateway = %id, %addr, %strategy, "gateway listening");
    let result = turnout_common::serve::serve(listener, app, shutdown, handshake_timeout).await;
    stop.cancel();
    tracing::info!(gateway = %id, "gateway stopped");
    Ok(result?)
}
