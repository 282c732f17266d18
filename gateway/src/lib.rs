//! turnout gateway: the public door of a cluster.
//!
//! # Layout
//! - [`settings`]: the gateway's settings.
//! - `cluster`: follows a router's `WatchNodes` stream (with failover between
//!   routers) and picks the node for a new client.
//! - `proxy`: `/ws`, forwarding the upgrade to the node and splicing bytes.
//! - `api`: the HTTP server API, `/healthz`, `/readyz`, `/metrics`.
//! - `grpc`: the `turnout.v1.Gateway` service on the same port.
//! - `follow`: room streams (gRPC `Subscribe`, SSE) fed from Redis.
//! - `state`: shared state, the API error, and the operations both APIs use.
//! - `strategy`: what differs between the strategies: where a client goes,
//!   where the server API finds a room.
//! - `streams`: who holds room streams and how many each may.
//! - `links`: health probes of the nodes clients are spliced to; a node that
//!   stops answering has its spliced connections closed.

mod admin;
mod api;
mod cluster;
mod follow;
mod grpc;
mod links;
mod proxy;
pub mod settings;
mod state;
mod strategy;
mod streams;

pub use settings::Settings;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use turnout_common::readiness::{Readiness, startup_app};

/// One HTTP route of the gateway.
struct HttpRoute {
    method: &'static str,
    path: &'static str,
    /// Behind `X-API-Key` when an API key is configured.
    needs_key: bool,
    handler: axum::routing::MethodRouter<Arc<state::Gateway>>,
}

/// Every HTTP route, in one table: the server is built from it and a test
/// checks `openapi.json` against it, so the document cannot drift.
fn http_routes() -> Vec<HttpRoute> {
    let r = |method, path, needs_key, handler| HttpRoute {
        method,
        path,
        needs_key,
        handler,
    };
    vec![
        r(
            "get",
            "/ws",
            false,
            get(proxy::ws).layer(axum::middleware::map_response(
                turnout_common::serve::close_unless_upgraded,
            )),
        ),
        r("get", "/api/route", false, get(api::route)),
        r("get", "/api/cluster", false, get(api::cluster)),
        r(
            "post",
            "/api/rooms/{room}/publish",
            true,
            post(api::publish),
        ),
        r("get", "/api/rooms/{room}/history", true, get(api::history)),
        r(
            "get",
            "/api/rooms/{room}/presence",
            true,
            get(api::presence),
        ),
        // Own check: the API key, or a client token that may join the room.
        r("get", "/api/rooms/{room}/events", false, get(api::events)),
        r(
            "post",
            "/api/users/{user}/disconnect",
            true,
            post(api::disconnect),
        ),
        r(
            "post",
            "/api/users/{user}/publish",
            true,
            post(api::publish_to_user),
        ),
        r("get", "/api/admin/rooms", true, get(admin::rooms)),
        r("get", "/api/admin/users/{user}", true, get(admin::user)),
        r("post", "/api/nodes/{node}/drain", true, post(admin::drain)),
        r("get", "/api/openapi.json", false, get(api::openapi)),
        r("get", "/", false, get(turnout_common::serve::demo_page)),
        // The page holds no data: what it shows needs the API key.
        r("get", "/admin", false, get(admin::page)),
        r(
            "get",
            "/turnout-client.js",
            false,
            get(turnout_common::serve::client_library),
        ),
        r("get", "/healthz", false, get(|| async { "ok" })),
        r("get", "/readyz", false, get(api::readyz)),
        r("get", "/metrics", false, get(api::metrics)),
    ]
}

/// Why this process could not start or stopped with an error.
pub type GatewayError = turnout_common::serve::RunError;

/// Runs a gateway on `listener` until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let addr = listener.local_addr()?;
    let limits = settings.serve_limits();
    let id = settings.node_id.clone().unwrap_or_else(|| {
        format!(
            "gateway-{}-{}",
            turnout_common::settings::host_name(),
            addr.port()
        )
    });
    let auth = turnout_common::auth::ClientAuth::from_settings(settings.jwt())?;
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
    let client = turnout_common::redis::client(
        &settings.redis_url,
        settings.redis_ca_file.as_deref(),
        settings.redis_cluster,
    )?;
    // Health and readiness answer from the first moment, while the gateway
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
    let Some(redis) = connected else {
        let _ = server.await;
        return Ok(());
    };
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
    let bounds = follow::Bounds {
        ring: settings.subscriber_buffer,
        ring_bytes: settings.subscriber_buffer_bytes,
        stream_bytes: settings.stream_buffer_bytes,
        bus: settings.bus_buffer,
        bus_bytes: settings.bus_buffer_bytes,
    };
    let book = streams::Book::new(streams::StreamLimits {
        backends: settings.max_subscribers,
        clients: settings.max_client_streams,
        per_user: settings.max_streams_per_user,
        per_ip: settings.max_streams_per_ip,
    });
    let gw = Arc::new(state::Gateway::new(
        id.clone(),
        settings,
        rx,
        redis.clone(),
        internal,
        auth,
        readiness.clone(),
    ));
    // Streams end when shutdown starts, so graceful shutdown does not wait on them.
    let relay = strategy::follows_rooms_at_owners(gw.strategy())
        .then(|| (id.as_str(), gw.internal.clone()));
    let follower = follow::Follower::start(
        &client,
        redis,
        bounds,
        book,
        gw.metrics.follow.clone(),
        readiness,
        shutdown.child_token(),
        relay,
    )
    .await?;
    let _ = gw.follower.set(follower);
    tokio::spawn(links::watch(gw.clone(), stop.clone()));

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
    let (keyed, open) =
        http_routes()
            .into_iter()
            .fold((Router::new(), Router::new()), |(keyed, open), r| {
                tracing::debug!(
                    method = r.method,
                    path = r.path,
                    api_key = r.needs_key,
                    "route"
                );
                if r.needs_key {
                    (keyed.route(r.path, r.handler), open)
                } else {
                    (keyed, open.route(r.path, r.handler))
                }
            });
    // The server API needs the API key (when one is configured).
    let keyed = keyed.route_layer(axum::middleware::from_fn_with_state(
        api_key,
        api::require_key,
    ));
    let app = open
        .merge(keyed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(gw)
        .merge(grpc);
    let _ = apps.send(app);
    tracing::info!(gateway = %id, %addr, %strategy, "gateway serving");
    let result = server.await.map_err(std::io::Error::other)?;
    stop.cancel();
    tracing::info!(gateway = %id, "gateway stopped");
    Ok(result?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// `openapi.json` documents exactly the routes the server is built from,
    /// with the API key where the server asks for it.
    #[test]
    fn openapi_matches_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(api::OPENAPI).expect("valid JSON");
        let mut documented = BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().expect("paths") {
            for (method, op) in ops.as_object().expect("operations") {
                let keyed = op["security"]
                    .as_array()
                    .is_some_and(|s| s.len() == 1 && s[0].get("apiKey").is_some());
                documented.insert((method.clone(), path.clone(), keyed));
            }
        }
        let served: BTreeSet<_> = http_routes()
            .into_iter()
            .map(|r| (r.method.to_owned(), r.path.to_owned(), r.needs_key))
            .collect();
        let missing: Vec<_> = served.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&served).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "openapi.json is out of sync: undocumented {missing:?}, not served {extra:?}"
        );
        // Every schema reference resolves.
        let text = api::OPENAPI;
        for part in text.split("\"#/components/schemas/").skip(1) {
            let name = &part[..part.find('"').expect("closing quote")];
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "unresolved schema {name}"
            );
        }
    }
}
