//! WebSocket entry: choose the node, forward the upgrade, then splice bytes.
//!
//! The gateway never parses WebSocket frames: it forwards the client's
//! upgrade request to the chosen node, relays the node's answer (101 or an
//! error) and then copies bytes both ways until either side closes.

use crate::state::Gateway;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;

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

pub(crate) async fn ws(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    if !is_upgrade(&req) {
        return crate::api::error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "expected a WebSocket upgrade",
        );
    }
    let room = crate::api::query_param(req.uri().query(), "room");
    let node = match gw.pick_node(room.as_deref()).await {
        Ok(n) => n,
        Err(resp) => return resp,
    };
    let Some(authority) = node
        .internal_url
        .split("://")
        .nth(1)
        .map(|r| r.split('/').next().unwrap_or(r).to_owned())
    else {
        return crate::api::error(
            StatusCode::BAD_GATEWAY,
            "unavailable",
            "node has no usable address",
        );
    };
    let upstream =
        match tokio::time::timeout(gw.settings.upstream_timeout, TcpStream::connect(&authority))
            .await
        {
            Ok(Ok(s)) => s,
            _ => {
                gw.metrics.upstream_errors.inc();
                tracing::warn!(node = %node.id, %authority, "cannot reach ws-node");
                return crate::api::error(
                    StatusCode::BAD_GATEWAY,
                    "unavailable",
                    "ws-node unreachable; retry",
                );
            }
        };
    let _ = upstream.set_nodelay(true);
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await {
            Ok(v) => v,
            Err(e) => {
                gw.metrics.upstream_errors.inc();
                tracing::warn!(node = %node.id, error = %e, "handshake with ws-node failed");
                return crate::api::error(
                    StatusCode::BAD_GATEWAY,
                    "unavailable",
                    "ws-node handshake failed; retry",
                );
            }
        };
    tokio::spawn(conn.with_upgrades());

    let path = match req.uri().query() {
        Some(q) => format!("/ws?{q}"),
        None => "/ws".to_owned(),
    };
    let mut up = hyper::Request::builder().method("GET").uri(path);
    for (name, value) in req.headers() {
        if name != header::HOST {
            up = up.header(name, value);
        }
    }
    let forwarded = match req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) => format!("{prev}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    let up = up
        .header(header::HOST, authority.as_str())
        .header("x-forwarded-for", forwarded)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("valid upstream request");
    let mut resp = match sender.send_request(up).await {
        Ok(r) => r,
        Err(e) => {
            gw.metrics.upstream_errors.inc();
            tracing::warn!(node = %node.id, error = %e, "upgrade request to ws-node failed");
            return crate::api::error(
                StatusCode::BAD_GATEWAY,
                "unavailable",
                "ws-node did not answer; retry",
            );
        }
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The node's refusal (full, draining, bad user…) goes to the client as is.
        let (parts, body) = resp.into_parts();
        return Response::from_parts(parts, Body::new(body));
    }
    let client_side = hyper::upgrade::on(&mut req);
    let node_side = hyper::upgrade::on(&mut resp);
    let metrics = gw.metrics.clone();
    let node_id = node.id.clone();
    tokio::spawn(async move {
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
        let r = tokio::io::copy_bidirectional(&mut client, &mut node_io).await;
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
