//! The HTTP server API (`/api/*`), health and readiness.

use crate::state::{ApiError, Gateway};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use std::sync::Arc;
use tokio_stream::StreamExt;
use turnout_proto::codes::ErrorCode;

/// A JSON error body: `{"error":{"code":…,"message":…}}`.
pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

pub(crate) fn api_error(e: &ApiError) -> Response {
    error(e.http_status(), e.code.as_str(), &e.message)
}

/// One query parameter, percent-decoded.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    let query = query?;
    let pairs: Vec<(String, String)> = serde_urlencoded_pairs(query);
    pairs.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn serde_urlencoded_pairs(query: &str) -> Vec<(String, String)> {
    Query::<Vec<(String, String)>>::try_from_uri(&format!("/?{query}").parse().unwrap_or_default())
        .map(|q| q.0)
        .unwrap_or_default()
}

pub(crate) fn count(gw: &Gateway, op: &str, ok: bool) {
    gw.metrics
        .api_requests
        .with_label_values(&[op, if ok { "ok" } else { "error" }])
        .inc();
}

#[derive(Deserialize)]
pub(crate) struct RouteQuery {
    room: Option<String>,
}

pub(crate) async fn route(State(gw): State<Arc<Gateway>>, Query(q): Query<RouteQuery>) -> Response {
    if let Some(room) = &q.room {
        if let Err(e) = turnout_proto::names::check_room(room) {
            return error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadName.as_str(),
                &format!("room {e}"),
            );
        }
    }
    match gw.route(q.room.as_deref()).await {
        Ok(node) => Json(json!({"node": node.id, "url": node.url})).into_response(),
        Err(e) => api_error(&e),
    }
}

#[derive(Deserialize)]
struct PublishBody {
    data: Box<RawValue>,
    #[serde(default)]
    from: Option<String>,
}

pub(crate) async fn publish(
    State(gw): State<Arc<Gateway>>,
    Path(room): Path<String>,
    body: Bytes,
) -> Response {
    let body: PublishBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            count(&gw, "publish", false);
            let msg = e.to_string();
            return error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadJson.as_str(),
                &format!(
                    "body must be {{\"data\": <json>}}: {}",
                    msg.split(" at line").next().unwrap_or("")
                ),
            );
        }
    };
    let result = gw
        .publish(&room, body.data.get().to_owned(), body.from)
        .await;
    count(&gw, "publish", result.is_ok());
    match result {
        Ok(seq) => Json(json!({"seq": seq})).into_response(),
        Err(e) => api_error(&e),
    }
}

#[derive(Deserialize)]
pub(crate) struct HistoryQuery {
    since: Option<u64>,
    limit: Option<u64>,
}

pub(crate) async fn history(
    State(gw): State<Arc<Gateway>>,
    Path(room): Path<String>,
    q: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadFrame.as_str(),
            "since and limit must be non-negative integers",
        );
    };
    let result = gw
        .history(&room, q.since.unwrap_or(0), q.limit.unwrap_or(100))
        .await;
    count(&gw, "history", result.is_ok());
    match result {
        Ok(slice) => {
            let messages: Vec<Box<RawValue>> = slice
                .messages
                .into_iter()
                .filter_map(|(_, f)| RawValue::from_string(f).ok())
                .collect();
            // A struct, not `json!`: the stored frames go out as stored.
            #[derive(serde::Serialize)]
            struct History {
                room: String,
                seq: u64,
                epoch: String,
                complete: bool,
                messages: Vec<Box<RawValue>>,
            }
            Json(History {
                room,
                seq: slice.seq,
                epoch: slice.epoch,
                complete: slice.complete,
                messages,
            })
            .into_response()
        }
        Err(e) => api_error(&e),
    }
}

pub(crate) async fn presence(State(gw): State<Arc<Gateway>>, Path(room): Path<String>) -> Response {
    let result = gw.presence(&room).await;
    count(&gw, "presence", result.is_ok());
    match result {
        Ok(users) => Json(json!({"room": room, "users": users})).into_response(),
        Err(e) => api_error(&e),
    }
}

pub(crate) async fn cluster(State(gw): State<Arc<Gateway>>) -> Response {
    Json(cluster_json(&gw)).into_response()
}

/// The `/api/cluster` document.
pub(crate) fn cluster_json(gw: &Gateway) -> serde_json::Value {
    let view = gw.view.borrow().clone();
    let nodes: Vec<_> = view
        .reply
        .nodes
        .iter()
        .map(|n| {
            json!({
                "id": n.id, "url": n.url, "strategy": n.strategy,
                "connections": n.connections, "rooms": n.rooms,
                "draining": n.draining, "heartbeat_age_ms": n.heartbeat_age_ms,
                "version": n.version,
            })
        })
        .collect();
    let conflicts = gw.conflicts();
    json!({
        "strategy": gw.strategy().as_str(),
        "gateway": {"id": gw.id, "strategy": gw.strategy().as_str()},
        "router": {"id": view.reply.router_id, "url": view.router, "connected": view.connected, "strategy": view.reply.strategy},
        "nodes": nodes,
        "conflicts": conflicts,
        "ready": gw.readiness().is_ok(),
    })
}

pub(crate) async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    match gw.readiness() {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

pub(crate) async fn metrics(State(gw): State<Arc<Gateway>>) -> impl IntoResponse {
    turnout_common::metrics::render(&gw.metrics.registry)
}

/// Middleware: the server API needs `X-API-Key` when a key is configured.
pub(crate) async fn require_key(
    State(key): State<Option<String>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(key) = &key {
        let given = req
            .headers()
            .get(turnout_common::auth::API_KEY_HEADER)
            .map(|v| v.as_bytes());
        if !given.is_some_and(|g| turnout_common::auth::ct_eq(g, key.as_bytes())) {
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "X-API-Key missing or wrong",
            );
        }
    }
    next.run(req).await
}

/// gRPC: the `Gateway` service needs metadata `x-api-key` when a key is configured.
pub(crate) fn grpc_key_checker(
    key: Option<String>,
) -> impl Fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>
+ Clone
+ Send
+ Sync
+ 'static {
    move |req: tonic::Request<()>| match &key {
        None => Ok(req),
        Some(key) => match req.metadata().get(turnout_common::auth::API_KEY_HEADER) {
            Some(v) if turnout_common::auth::ct_eq(v.as_bytes(), key.as_bytes()) => Ok(req),
            _ => Err(tonic::Status::unauthenticated("x-api-key missing or wrong")),
        },
    }
}

/// The demo page: one self-contained file, no external assets.
pub(crate) async fn demo_page() -> impl IntoResponse {
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../demo/index.html"),
    )
}

#[derive(Deserialize)]
pub(crate) struct EventsQuery {
    since: Option<u64>,
}

/// Who may read a room's stream: with the API key, or with a client token
/// that may join the room (`?token=` or `Authorization: Bearer`), or anyone
/// when the gateway runs open.
fn may_stream(
    gw: &Gateway,
    headers: &axum::http::HeaderMap,
    query: Option<&str>,
    room: &str,
) -> Result<(), Box<Response>> {
    let key = gw.settings.api_key.as_deref();
    if key.is_none() && gw.auth.is_none() {
        return Ok(());
    }
    if let (Some(key), Some(given)) = (key, headers.get(turnout_common::auth::API_KEY_HEADER)) {
        if turnout_common::auth::ct_eq(given.as_bytes(), key.as_bytes()) {
            return Ok(());
        }
        return Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "X-API-Key wrong",
        )));
    }
    let Some(auth) = &gw.auth else {
        return Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "X-API-Key missing",
        )));
    };
    let token = turnout_common::auth::token_from(headers, query)
        .ok_or(turnout_common::auth::AuthError::Missing);
    match token.and_then(|t| auth.verify(&t)) {
        Ok(claims) if claims.may_join(room) => Ok(()),
        Ok(_) => Err(Box::new(error(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden.as_str(),
            "the token's rooms claim does not include this room",
        ))),
        Err(e) => {
            gw.metrics.auth_failures.inc();
            Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                &e.to_string(),
            )))
        }
    }
}

/// `GET /api/rooms/{room}/events`: the room's messages as Server-Sent
/// Events, `id:` = seq. Resumes after `Last-Event-ID` (or `?since=`) from
/// history; sends a keep-alive comment every `sse_keepalive`.
pub(crate) async fn events(
    State(gw): State<Arc<Gateway>>,
    Path(room): Path<String>,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
    req: axum::extract::Request,
) -> Response {
    let Ok(Query(q)) = q else {
        return error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadFrame.as_str(),
            "since must be a non-negative integer",
        );
    };
    if let Err(refused) = may_stream(&gw, req.headers(), req.uri().query(), &room) {
        count(&gw, "events", false);
        return *refused;
    }
    // A reconnecting EventSource sends the last id it saw; that wins over the URL.
    let last_id = match req
        .headers()
        .get("last-event-id")
        .map(|v| v.to_str().map(str::trim))
    {
        None | Some(Ok("")) => None,
        Some(Ok(v)) => match v.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadFrame.as_str(),
                    "Last-Event-ID must be a seq (a non-negative integer)",
                );
            }
        },
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadFrame.as_str(),
                "Last-Event-ID must be a seq (a non-negative integer)",
            );
        }
    };
    let since = last_id.or(q.since).unwrap_or(0);
    let result = gw.stream(&room, since, "sse").await;
    count(&gw, "events", result.is_ok());
    let rx = match result {
        Ok(rx) => rx,
        Err(e) => return api_error(&e),
    };
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|item| {
        Ok::<_, std::convert::Infallible>(match item {
            Ok(item) => crate::follow::sse_event(item),
            Err(e) => axum::response::sse::Event::default()
                .event("error")
                .data(json!({"code": e.code.as_str(), "message": e.message}).to_string()),
        })
    });
    let keepalive = axum::response::sse::KeepAlive::new()
        .interval(gw.settings.sse_keepalive)
        .text("keep-alive");
    let mut response = axum::response::sse::Sse::new(stream)
        .keep_alive(keepalive)
        .into_response();
    // Tell buffering reverse proxies (nginx) to pass events through at once.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    response
}

#[derive(Deserialize, Default)]
struct DisconnectBody {
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /api/users/{user}/disconnect`: closes the user's connections on
/// every node (close code 3500); body `{"reason": "…"}` is optional.
pub(crate) async fn disconnect(
    State(gw): State<Arc<Gateway>>,
    Path(user): Path<String>,
    body: Bytes,
) -> Response {
    let body: DisconnectBody = if body.iter().all(u8::is_ascii_whitespace) {
        DisconnectBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(_) => {
                count(&gw, "disconnect", false);
                return error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadJson.as_str(),
                    "body must be empty or {\"reason\": \"…\"}",
                );
            }
        }
    };
    let result = gw
        .disconnect(&user, body.reason.as_deref().unwrap_or(""))
        .await;
    count(&gw, "disconnect", result.is_ok());
    match result {
        Ok(n) => Json(json!({"user": user, "connections": n})).into_response(),
        Err(e) => api_error(&e),
    }
}

/// The OpenAPI document of the HTTP API (`gateway/openapi.json`).
pub(crate) const OPENAPI: &str = include_str!("../openapi.json");

pub(crate) async fn openapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}
