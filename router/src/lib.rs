//! turnout router: which ws-nodes are alive, and where rooms go.
//!
//! # Layout
//! - [`settings`]: the router's settings.
//! - `membership`: reads heartbeats from Redis into the live set and
//!   publishes a snapshot whenever it changes.
//! - `placement`: sticky placement (rendezvous hashing with a load bound).
//! - `service`: the `turnout.v1.Router` gRPC service (Route, Nodes, WatchNodes).
//! - [`run`]: the process: gRPC + `/healthz` + `/metrics` on one port.

mod membership;
mod placement;
mod service;
pub mod settings;

pub use settings::Settings;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use prometheus::IntGauge;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use turnout_common::readiness::{Readiness, startup_app};
use turnout_proto::keys;

/// Why this process could not start or stopped with an error.
pub type RouterError = turnout_common::serve::RunError;

/// Runs a router on `listener` until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<(), RouterError> {
    let addr = listener.local_addr()?;
    let limits = settings.serve_limits();
    let internal = turnout_common::auth::InternalToken::new(settings.internal_token.as_deref())?;
    let missing: &[&str] = if settings.internal_token.is_none() {
        &["internal_token"]
    } else {
        &[]
    };
    turnout_common::auth::check_open_mode(
        "router",
        &turnout_common::settings::ListenSpec::from(addr),
        settings.insecure,
        missing,
    )?;
    let router_id = settings.node_id.clone().unwrap_or_else(|| {
        format!(
            "router-{}-{}",
            turnout_common::settings::host_name(),
            addr.port()
        )
    });
    let registry = turnout_common::metrics::registry("router", &[("router", &router_id)]);
    let live = turnout_common::metrics::register(
        &registry,
        IntGauge::new("live_nodes", "ws-nodes in the live set").expect("valid metric"),
    );

    let client = turnout_common::redis::client(
        &settings.redis_url,
        settings.redis_ca_file.as_deref(),
        settings.redis_cluster,
    )?;
    // Health and readiness answer from the first moment, while the router
    // waits for Redis.
    let readiness = Readiness::default();
    let (apps, apps_rx) = watch::channel(startup_app(readiness.clone()));
    let server = tokio::spawn(turnout_common::serve::serve(
        listener,
        apps_rx,
        shutdown.clone(),
        limits,
    ));
    let connected = turnout_common::redis::commands_patiently(
        &client,
        &settings.redis_url,
        &readiness,
        &shutdown,
    )
    .await;
    let Some(con) = connected else {
        let _ = server.await;
        return Ok(());
    };
    // Announcements from nodes wake the membership reader at once.
    let changed = Arc::new(Notify::new());
    let (push_tx, mut push_rx) = mpsc::unbounded_channel();
    let mut sub = client.pubsub(push_tx).await?;
    sub.subscribe(keys::MEMBERSHIP_CHANNEL).await?;
    let wake = changed.clone();
    let stop = CancellationToken::new();
    let stop_push = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                p = push_rx.recv() => if p.is_none() { return },
                _ = stop_push.cancelled() => return,
            }
            wake.notify_one();
        }
    });

    // The follower reads again at once if this first read fails.
    let first = membership::read(&mut con.clone(), settings.strategy)
        .await
        .unwrap_or_default();
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(membership::follow(
        con.clone(),
        settings.strategy,
        settings.poll_interval,
        changed,
        tx,
        live,
        readiness.clone(),
        stop.clone(),
    ));

    let (health, routes) = turnout_common::grpc::base_routes();
    health
        .set_serving::<turnout_proto::v1::router_server::RouterServer<service::RouterService>>()
        .await;
    let metrics = service::RouterMetrics {
        routes: turnout_common::metrics::register(
            &registry,
            prometheus::IntCounterVec::new(
                prometheus::Opts::new("routes_total", "Route requests, by outcome"),
                &["outcome"],
            )
            .expect("valid metric"),
        ),
        claims: turnout_common::metrics::register(
            &registry,
            prometheus::IntCounter::new(
                "placements_total",
                "Rooms placed (claims made) by this router",
            )
            .expect("valid metric"),
        ),
        deferred: turnout_common::metrics::counter(
            &registry,
            "placements_deferred_total",
            "Routes answered past max_placement_rate without writing a placement",
        ),
    };
    let strategy = settings.strategy;
    let ready = {
        let (readiness, snapshot) = (readiness.clone(), rx.clone());
        move || {
            let (readiness, fresh) = (readiness.clone(), snapshot.borrow().fresh);
            async move {
                match readiness.check() {
                    Ok(()) if fresh => (axum::http::StatusCode::OK, "ready".to_owned()),
                    Ok(()) => (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "membership not read yet".to_owned(),
                    ),
                    Err(why) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, why),
                }
            }
        }
    };
    let svc = service::RouterService::new(router_id.clone(), settings, rx, con.clone(), metrics);
    let grpc = routes
        .add_service(tonic::service::interceptor::InterceptedService::new(
            service::server(svc),
            internal.checker(),
        ))
        .into_axum_router();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route(
            "/metrics",
            get(|State(r): State<prometheus::Registry>| async move {
                turnout_common::metrics::render(&r)
            }),
        )
        .with_state(registry)
        .merge(grpc);
    let _ = apps.send(app);
    tracing::info!(router = %router_id, %addr, %strategy, "router serving");
    let result = server.await.map_err(std::io::Error::other)?;
    stop.cancel();
    tracing::info!(router = %router_id, "router stopped");
    Ok(result?)
}
