//! WebSocket entry: choose the node, forward the upgrade, then splice bytes.
//!
//! The gateway never parses WebSocket frames: it forwards the client's
//! upgrade request to the chosen node, relays the node's answer (101 or an
//! error) and then copies bytes both ways until either side closes.

use crate::state::{ApiError, Gateway, room_name};
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use turnout_common::net::CLIENT_IP_HEADER;
use turnout_proto::codes::ErrorCode;

fn is_upgrade(req: &Request) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "websocket")
}

/// Why an upgrade at one node did not happen.
enum Upstream {
    /// Refused with 503: draining or lost contact with Redis (`stays`
    /// false), or at its `max_connections` or `max_accept_rate` (`stays`:
    /// the node is fine, and a sticky room stays on it).
    Refused {
        stays: bool,
    },
    Failed(String),
}

/// Forwards the client's upgrade request to `node`: connect, HTTP/1.1
/// handshake, request, response. The caller bounds the whole of it.
async fn upgrade_at(
    gw: &Gateway,
    node: &turnout_proto::v1::NodeInfo,
    headers: &axum::http::HeaderMap,
    path: &str,
    forwarded: &str,
    client_ip: std::net::IpAddr,
) -> Result<hyper::Response<hyper::body::Incoming>, Upstream> {
    let authority = node
        .internal_url
        .split("://")
        .nth(1)
        .map(|r| r.split('/').next().unwrap_or(r).to_owned())
        .ok_or_else(|| Upstream::Failed("no address".into()))?;
    let upstream = TcpStream::connect(&authority)
        .await
        .map_err(|e| Upstream::Failed(format!("connect: {e}")))?;
    let _ = upstream.set_nodelay(true);
    // A node cut off from the gateway later is noticed on the spliced
    // connection too, and its clients are let go to reconnect.
    turnout_common::serve::keep_alive(&upstream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(upstream))
        .await
        .map_err(|e| Upstream::Failed(format!("handshake: {e}")))?;
    tokio::spawn(conn.with_upgrades());
    let mut up = hyper::Request::builder().method("GET").uri(path);
    // What a client says about itself in these headers is not passed on.
    let own = [
        header::HOST.as_str(),
        "x-forwarded-for",
        CLIENT_IP_HEADER,
        turnout_common::auth::INTERNAL_TOKEN_HEADER,
    ];
    for (name, value) in headers {
        if !own.contains(&name.as_str()) {
            up = up.header(name, value);
        }
    }
    // The node counts connections per client, not per gateway; it believes
    // the address next to the internal token.
    if let Some(t) = &gw.settings.internal_token {
        up = up.header(turnout_common::auth::INTERNAL_TOKEN_HEADER, t.as_str());
    }
    let up = up
        .header(header::HOST, authority.as_str())
        .header("x-forwarded-for", forwarded)
        .header(CLIENT_IP_HEADER, client_ip.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("valid upstream request");
    match sender.send_request(up).await {
        Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
            let why = r.headers().get(turnout_common::net::REFUSAL_HEADER);
            let stays = why.is_some_and(|v| {
                v == turnout_common::net::REFUSED_FULL || v == turnout_common::net::REFUSED_BUSY
            });
            Err(Upstream::Refused { stays })
        }
        Ok(r) => Ok(r),
        Err(e) => Err(Upstream::Failed(format!("request: {e}"))),
    }
}

pub(crate) async fn ws(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    if !is_upgrade(&req) {
        return ApiError::new(ErrorCode::BadRequest, "expected a WebSocket upgrade")
            .into_response();
    }
    // Refuse bad tokens here, before any node is bothered (nodes check too).
    if let Some(auth) = &gw.auth {
        let token = turnout_common::auth::token_from(req.headers(), req.uri().query());
        let verdict = match token {
            None => Err(turnout_common::auth::AuthError::Missing),
            Some(t) => auth.verify(&t).map(|_| ()),
        };
        if let Err(e) = verdict {
            gw.metrics.auth_failures.inc();
            return ApiError::new(ErrorCode::Unauthorized, e.to_string()).into_response();
        }
    }
    let ip_slot = match gw.per_ip.take(peer.ip()) {
        Ok(slot) => slot,
        Err(refused) => {
            gw.metrics.rate_limited.inc();
            return ApiError::new(ErrorCode::RateLimited, refused.reason()).into_response();
        }
    };
    let room = match crate::api::query_param(req.uri().query(), "room").map(room_name) {
        None => None,
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => return e.into_response(),
    };
    let path = match req.uri().query() {
        Some(q) => format!("/ws?{q}"),
        None => "/ws".to_owned(),
    };
    let forwarded = match req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) => format!("{prev}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    // The whole search, the node's answer included, is bounded: a client
    // waits at most this long for a refusal it can retry, never on a
    // router or nodes slowed by a stalled Redis.
    let within = gw.settings.upstream_timeout * 3;
    let headers = req.headers().clone();
    let search = find_upstream(&gw, room.as_ref(), &headers, &path, &forwarded, peer.ip());
    let (node, mut resp) = match tokio::time::timeout(within, search).await {
        Ok(Ok(found)) => found,
        Ok(Err(refusal)) => return refusal,
        Err(_) => {
            gw.metrics.upstream_errors.inc();
            let e = ApiError::new(
                ErrorCode::Unavailable,
                format!("no ws-node took the connection within {within:?}; retry"),
            );
            let retry = [(header::RETRY_AFTER, HeaderValue::from_static("1"))];
            return (StatusCode::SERVICE_UNAVAILABLE, retry, e).into_response();
        }
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            // The node refuses this address (it was closed for abuse, or
            // holds too many there): it pays here too, so its next tries
            // stop at the gateway instead of costing a route and an upgrade.
            ip_slot.penalize();
            gw.metrics.rate_limited.inc();
        }
        // The node's refusal (bad user, bad request…) goes to the client as is.
        let (parts, body) = resp.into_parts();
        return Response::from_parts(parts, Body::new(body));
    }
    let client_side = hyper::upgrade::on(&mut req);
    let node_side = hyper::upgrade::on(&mut resp);
    let metrics = gw.metrics.clone();
    let node_id = node.id.clone();
    let link = crate::links::Links::splice(&gw, &node.id, &node.internal_url);
    tokio::spawn(async move {
        let _slot = ip_slot;
        let (client, node_io) = match tokio::join!(client_side, node_side) {
            (Ok(c), Ok(n)) => (c, n),
            (c, n) => {
                tracing::debug!(
                    client = c.is_ok(),
                    node = n.is_ok(),
                    "upgrade did not complete"
                );
                return;
            }
        };
        metrics.proxied.inc();
        let mut client = TokioIo::new(client);
        let mut node_io = TokioIo::new(node_io);
        let r = tokio::select! {
            r = tokio::io::copy_bidirectional(&mut client, &mut node_io) => r,
            // The node stopped answering: let the client go, to reconnect.
            _ = link.cut.cancelled() => Err(std::io::Error::from(std::io::ErrorKind::TimedOut)),
        };
        drop(link);
        metrics.proxied.dec();
        if let Ok((up, down)) = r {
            metrics.proxied_bytes.with_label_values(&["up"]).inc_by(up);
            metrics
                .proxied_bytes
                .with_label_values(&["down"])
                .inc_by(down);
        }
        tracing::debug!(node = %node_id, "proxied connection closed");
    });
    let (parts, _) = resp.into_parts();
    let mut out = Response::from_parts(parts, Body::empty());
    out.headers_mut().insert(
        "x-turnout-node",
        HeaderValue::from_str(&node.id).unwrap_or(HeaderValue::from_static("?")),
    );
    out.into_response()
}

/// Finds a node that takes the client's upgrade: asks for a node (the
/// room's owner, sticky; the least loaded otherwise), forwards the upgrade,
/// and on a refusal or failure asks again, avoiding the nodes that did not
/// take it, a few times. `Err` is the answer to give the client.
async fn find_upstream(
    gw: &Gateway,
    room: Option<&turnout_proto::names::RoomName>,
    headers: &axum::http::HeaderMap,
    path: &str,
    forwarded: &str,
    client_ip: std::net::IpAddr,
) -> Result<
    (
        turnout_proto::v1::NodeInfo,
        hyper::Response<hyper::body::Incoming>,
    ),
    Response,
> {
    // A node can vanish, stall or start draining between the router's last
    // word and this request: each attempt (connect, request, response) has
    // `upstream_timeout`; a node that did not make it is avoided for a while
    // and another is asked (sticky: the room is placed anew elsewhere).
    let mut failed: Vec<String> = Vec::new();
    // Whether every node asked was fine but full or busy.
    let mut only_busy = true;
    loop {
        if failed.len() >= 3 {
            if only_busy {
                let e = ApiError::new(
                    ErrorCode::Unavailable,
                    "the ws-nodes take no more connections now (max_connections or max_accept_rate); retry later",
                );
                let retry = [(header::RETRY_AFTER, HeaderValue::from_static("1"))];
                return Err((StatusCode::SERVICE_UNAVAILABLE, retry, e).into_response());
            }
            let e = ApiError::new(ErrorCode::Unavailable, "no ws-node answered; retry");
            return Err((StatusCode::BAD_GATEWAY, e).into_response());
        }
        let node = match gw.pick(room, true, &failed).await {
            Ok(n) => n,
            Err(e) => return Err(e.into_response()),
        };
        let attempt = upgrade_at(gw, &node, headers, path, forwarded, client_ip);
        let why = match tokio::time::timeout(gw.settings.upstream_timeout, attempt).await {
            Ok(Ok(r)) => return Ok((node, r)),
            Ok(Err(Upstream::Refused { stays: true })) if !gw.another_node_may_serve() => {
                // Moving the room would send its members away: the room's
                // node is full or busy for now, not broken.
                gw.metrics.upstream_errors.inc();
                let e = ApiError::new(
                    ErrorCode::Unavailable,
                    "the room's node takes no more connections now (max_connections or max_accept_rate); retry later",
                );
                return Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, HeaderValue::from_static("5"))],
                    e,
                )
                    .into_response());
            }
            Ok(Err(Upstream::Refused { stays })) => {
                only_busy &= stays;
                tracing::debug!(node = %node.id, "node refused the upgrade (draining, full, busy or cut off); trying another");
                None
            }
            Ok(Err(Upstream::Failed(e))) => {
                only_busy = false;
                Some(e)
            }
            Err(_) => {
                only_busy = false;
                Some(format!(
                    "no answer within {:?}",
                    gw.settings.upstream_timeout
                ))
            }
        };
        gw.metrics.upstream_errors.inc();
        if let Some(why) = why {
            tracing::warn!(node = %node.id, error = %why, "upgrade at ws-node failed; avoiding it for a while");
            gw.avoid_node(&node.id);
        }
        if let Some(r) = room {
            gw.forget_route(r);
        }
        failed.push(node.id.clone());
    }
}
