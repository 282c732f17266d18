//! The HTTP server API (`/api/*`), health and readiness.

use crate::state::{ApiError, Gateway, room_name, user_id};
use crate::streams::Holder;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use std::sync::Arc;
use tokio_stream::StreamExt;
use turnout_proto::codes::ErrorCode;

fn bad(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError::new(code, message)
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

/// Counts the outcome of an API call under `op` and passes it on.
pub(crate) fn counted<T>(gw: &Gateway, op: &str, r: Result<T, ApiError>) -> Result<T, ApiError> {
    count(gw, op, r.is_ok());
    r
}

#[derive(Deserialize)]
pub(crate) struct RouteQuery {
    room: Option<String>,
    /// Relay: also name the processes the room's messages go to.
    #[serde(default)]
    carriers: bool,
}

/// `GET /api/route`: where a client for `room` should connect. With auth
/// on it takes a client token that may join the room, or the API key: a
/// route can write a placement (sticky), so anonymous callers get none.
pub(crate) async fn route(
    State(gw): State<Arc<Gateway>>,
    Query(q): Query<RouteQuery>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let room = q.room.map(room_name).transpose()?;
    may_use_room(&gw, &headers, uri.query(), room.as_deref())?;
    // A look at where a room lives (`carriers`, the demo page's poll) is
    // not a client on its way: it does not count against the node's load.
    let node = gw.pick(room.as_ref(), !q.carriers, &[]).await?;
    let mut body = json!({"node": node.id, "url": node.url});
    if let Some(room) = &room
        && let Some((owner, carriers)) = gw.owner_now(room, q.carriers).await?
    {
        body["owner"] = json!(owner);
        if let Some(carriers) = carriers {
            body["carriers"] = json!(carriers);
        }
    }
    Ok(Json(body).into_response())
}

#[derive(Deserialize)]
struct PublishBody {
    data: Box<RawValue>,
    #[serde(default)]
    from: Option<String>,
    /// Idempotency key; the `Idempotency-Key` header does the same.
    #[serde(default)]
    id: Option<String>,
}

pub(crate) async fn publish(
    State(gw): State<Arc<Gateway>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let result = async {
        let room = room_name(room)?;
        let (data, from, id) = publish_args(&headers, &body)?;
        gw.publish(&room, data, from, id).await
    };
    let reply = counted(&gw, "publish", result.await)?;
    let mut out = json!({"seq": reply.seq});
    if reply.duplicate {
        out["duplicate"] = json!(true);
    }
    Ok(Json(out).into_response())
}

/// `POST /api/users/{user}/publish`: into the user's personal room `#user`,
/// which every connection of the user is in, on every node.
pub(crate) async fn publish_to_user(
    State(gw): State<Arc<Gateway>>,
    Path(user): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let result = async {
        let user = user_id(user, "user")?;
        let (data, from, id) = publish_args(&headers, &body)?;
        gw.publish_to_user(&user, data, from, id).await
    };
    let reply = counted(&gw, "publish_to_user", result.await)?;
    let mut out = json!({"room": reply.room});
    if reply.per_node.is_empty() {
        out["seq"] = json!(reply.seq);
        if reply.duplicate {
            out["duplicate"] = json!(true);
        }
    } else {
        // Strategy local: each node numbers its own copy of the room.
        let seqs: serde_json::Map<String, serde_json::Value> = reply
            .per_node
            .iter()
            .map(|(node, seq)| (node.clone(), json!(seq)))
            .collect();
        out["seqs"] = json!(seqs);
    }
    Ok(Json(out).into_response())
}

/// A publish body (`{"data": …, "from": …, "id": …}`) and the
/// `Idempotency-Key` header: (data as JSON text, from, id).
fn publish_args(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(String, Option<turnout_proto::names::UserId>, Option<String>), ApiError> {
    {
        let body: PublishBody = serde_json::from_slice(body).map_err(|e| {
            let msg = e.to_string();
            let msg = msg.split(" at line").next().unwrap_or("");
            bad(
                ErrorCode::BadJson,
                format!("body must be {{\"data\": <json>}}: {msg}"),
            )
        })?;
        let from = body
            .from
            .filter(|f| !f.is_empty())
            .map(|f| user_id(f, "from"))
            .transpose()?;
        let header = match headers.get("idempotency-key").map(|v| v.to_str()) {
            Some(Ok(v)) => Some(v.to_owned()),
            Some(Err(_)) => {
                return Err(bad(
                    ErrorCode::BadFrame,
                    "Idempotency-Key must be visible ASCII",
                ));
            }
            None => None,
        };
        let id = match (body.id.filter(|id| !id.is_empty()), header) {
            (Some(a), Some(b)) if a != b => {
                return Err(bad(
                    ErrorCode::BadFrame,
                    "`id` and the Idempotency-Key header differ",
                ));
            }
            (a, b) => a.or(b).filter(|id| !id.is_empty()),
        };
        Ok((body.data.get().to_owned(), from, id))
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
) -> Result<Response, ApiError> {
    let result = async {
        let room = room_name(room)?;
        let Ok(Query(q)) = q else {
            return Err(bad(
                ErrorCode::BadFrame,
                "since and limit must be non-negative integers",
            ));
        };
        let slice = gw
            .history(&room, q.since.unwrap_or(0), q.limit.unwrap_or(100))
            .await?;
        Ok((room, slice))
    };
    let (room, slice) = counted(&gw, "history", result.await)?;
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
    Ok(Json(History {
        room: room.into_string(),
        seq: slice.seq,
        epoch: slice.epoch,
        complete: slice.complete,
        messages,
    })
    .into_response())
}

pub(crate) async fn presence(
    State(gw): State<Arc<Gateway>>,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
    let result = async {
        let room = room_name(room)?;
        let users = gw.presence(&room).await?;
        Ok((room, users))
    };
    let (room, users) = counted(&gw, "presence", result.await)?;
    Ok(Json(json!({"room": room, "users": users})).into_response())
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
            return bad(ErrorCode::Unauthorized, "X-API-Key missing or wrong").into_response();
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

#[derive(Deserialize)]
pub(crate) struct EventsQuery {
    since: Option<u64>,
    #[serde(default)]
    epoch: String,
}

/// Who a caller of the API turned out to be.
enum Caller {
    /// The gateway runs open.
    Anyone,
    /// The API key.
    Backend,
    /// A client token.
    Client(turnout_common::auth::Claims),
}

/// Who may route to or follow a room: with the API key, or with a client
/// token that may join the room (`?token=` or `Authorization: Bearer`; any
/// valid token when no room is named), or anyone when the gateway runs open.
fn may_use_room(
    gw: &Gateway,
    headers: &axum::http::HeaderMap,
    query: Option<&str>,
    room: Option<&str>,
) -> Result<Caller, ApiError> {
    let key = gw.settings.api_key.as_deref();
    if key.is_none() && gw.auth.is_none() {
        return Ok(Caller::Anyone);
    }
    if let (Some(key), Some(given)) = (key, headers.get(turnout_common::auth::API_KEY_HEADER)) {
        if turnout_common::auth::ct_eq(given.as_bytes(), key.as_bytes()) {
            return Ok(Caller::Backend);
        }
        return Err(bad(ErrorCode::Unauthorized, "X-API-Key wrong"));
    }
    let Some(auth) = &gw.auth else {
        return Err(bad(ErrorCode::Unauthorized, "X-API-Key missing"));
    };
    let token = turnout_common::auth::token_from(headers, query)
        .ok_or(turnout_common::auth::AuthError::Missing);
    match token.and_then(|t| auth.verify(&t)) {
        // A user's own personal room, whatever the rooms claim says.
        Ok(claims)
            if room.is_none_or(|r| {
                claims.may_join(r)
                    || r.strip_prefix(turnout_proto::names::PERSONAL) == Some(claims.sub.as_str())
            }) =>
        {
            Ok(Caller::Client(claims))
        }
        Ok(_) => Err(bad(
            ErrorCode::Forbidden,
            "the token's rooms claim does not include this room",
        )),
        Err(e) => {
            gw.metrics.auth_failures.inc();
            Err(bad(ErrorCode::Unauthorized, e.to_string()))
        }
    }
}

/// `GET /api/rooms/{room}/events`: the room's messages as Server-Sent
/// Events, `id:` = `<seq>:<epoch>`. Resumes after `Last-Event-ID` (or
/// `?since=` and `?epoch=`) from history, saying `reset` first when the
/// room's state was lost since; sends a keep-alive comment every
/// `sse_keepalive`.
pub(crate) async fn events(
    State(gw): State<Arc<Gateway>>,
    Path(room): Path<String>,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let result = async {
        let room = room_name(room)?;
        let Ok(Query(q)) = q else {
            return Err(bad(
                ErrorCode::BadFrame,
                "since must be a non-negative integer",
            ));
        };
        let caller = may_use_room(&gw, &headers, uri.query(), Some(&room))?;
        // The backend decides who joins these: a client reads them over a
        // WebSocket, where the join hook is asked.
        if !matches!(caller, Caller::Backend) && gw.settings.join_proxy_on(&room) {
            return Err(bad(
                ErrorCode::Forbidden,
                "this room's namespace asks the backend before each join (join_proxy): \
                 follow it over a WebSocket",
            ));
        }
        if !matches!(caller, Caller::Backend)
            && let Some(user) = room.personal_user()
            && !matches!(&caller, Caller::Client(c) if c.sub == user)
            && !matches!(caller, Caller::Anyone)
        {
            return Err(bad(
                ErrorCode::Forbidden,
                "a personal room is its own user's alone",
            ));
        }
        let ip = peer.ip();
        let (holder, until) = match caller {
            Caller::Backend => (Holder::Backend, None),
            Caller::Anyone => (Holder::Client { user: None, ip }, None),
            Caller::Client(c) => {
                // The stream ends with the token.
                let left = c.exp.saturating_sub(turnout_proto::now_ms() / 1000);
                let until = tokio::time::Instant::now() + std::time::Duration::from_secs(left);
                (
                    Holder::Client {
                        user: Some(c.sub),
                        ip,
                    },
                    Some(until),
                )
            }
        };
        // A reconnecting EventSource sends the last id it saw; that wins over the URL.
        let last_id = match headers
            .get("last-event-id")
            .map(|v| v.to_str().map(str::trim))
        {
            None | Some(Ok("")) => None,
            Some(Ok(v)) => Some(crate::follow::parse_event_id(v).ok_or_else(bad_last_id)?),
            Some(Err(_)) => return Err(bad_last_id()),
        };
        if !q.epoch.bytes().all(|b| b.is_ascii_digit()) || q.epoch.len() > 32 {
            return Err(bad(
                ErrorCode::BadFrame,
                "epoch must be a `joined` frame's epoch (digits)",
            ));
        }
        let (since, epoch) = match last_id {
            Some((seq, epoch)) => (seq, epoch),
            None => (q.since.unwrap_or(0), q.epoch.as_str()),
        };
        let open = crate::follow::Open {
            holder,
            until,
            kind: "sse",
        };
        gw.stream(&room, since, epoch, open).await
    };
    let rx = counted(&gw, "events", result.await)?;
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|item| {
        Ok::<_, std::convert::Infallible>(match item {
            Ok(q) => crate::follow::sse_event(q.item),
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
    Ok(response)
}

fn bad_last_id() -> ApiError {
    bad(
        ErrorCode::BadFrame,
        "Last-Event-ID must be an event's id: <seq> or <seq>:<epoch>",
    )
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
) -> Result<Response, ApiError> {
    let result = async {
        let user = user_id(user, "user")?;
        let body: DisconnectBody = if body.iter().all(u8::is_ascii_whitespace) {
            DisconnectBody::default()
        } else {
            serde_json::from_slice(&body).map_err(|_| {
                bad(
                    ErrorCode::BadJson,
                    "body must be empty or {\"reason\": \"…\"}",
                )
            })?
        };
        let n = gw
            .disconnect(&user, body.reason.as_deref().unwrap_or(""))
            .await?;
        Ok((user, n))
    };
    let (user, n) = counted(&gw, "disconnect", result.await)?;
    Ok(Json(json!({"user": user, "connections": n})).into_response())
}

/// The OpenAPI document of the HTTP API (`gateway/openapi.json`).
pub(crate) const OPENAPI: &str = include_str!("../openapi.json");

pub(crate) async fn openapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}
