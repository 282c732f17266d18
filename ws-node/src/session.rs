//! One client WebSocket session, one task: it handles the client's frames in
//! order and drains the bounded send queue, batching frames into one flush.

use crate::conn::Conn;
use crate::hooks::{Answer, Ask, Hook};
use crate::hub::{Hub, RoomError};
use crate::limits::{Limits, Over};
use crate::node::NodeState;
use axum::extract::ws::{CloseFrame, Message};
use futures_util::FutureExt;
use std::sync::Arc;
use tracing::Instrument;
use turnout_common::redis::Origin;
use turnout_proto::codes::{ErrorCode, close};
use turnout_proto::frames::{ClientFrame, ServerFrame, parse_client_frame};
use turnout_proto::names::RoomName;

/// Runs a session until the client leaves, the node drains or the
/// connection is killed. One task per connection reads the client's frames
/// in order and writes what the hub queued, batching queued frames into one
/// flush; frames for an idle connection are written in place by whoever
/// sends them (`Conn::push`).
pub(crate) async fn run(state: Arc<NodeState>, conn: Arc<Conn>, start: Start) {
    let span = tracing::debug_span!("session", node = %state.hub.node_id, conn = %conn.label, user = %conn.user);
    async move {
        let hub = &state.hub;
        state.conns.insert(conn.id, conn.clone());
        hub.metrics.connections.inc();
        conn.send_frame(
            &ServerFrame::Welcome {
                node: hub.node_id.clone(),
                strategy: hub.strategy.kind().as_str().to_owned(),
                conn: conn.label.clone(),
                data: start.data,
            },
            &hub.metrics,
        );
        // A drain that began while the connect hook was asked missed this
        // connection: it goes the way the others went.
        if state.draining() {
            let frame = ServerFrame::Reconnect {
                reason: "draining".into(),
            };
            conn.send_frame(&frame, &hub.metrics);
            conn.kill_with(close::SERVICE_RESTART, "draining");
        }
        // The user's personal room, and the rooms the backend's connect
        // hook chose: joined at once, as the client's own joins are (but
        // not asked about again).
        let personal = (state.settings.personal_rooms && start.named)
            .then(|| (RoomName::personal(&conn.user), true));
        let chosen = start.rooms.into_iter().map(|r| (r, false));
        for (room, quiet) in personal.into_iter().chain(chosen) {
            if conn.is_closed() || state.draining() {
                break;
            }
            let joined = Box::pin(join(&state, &conn, room, None, None, quiet)).await;
            if quiet && !joined {
                // A connection must be in its personal room: without it,
                // messages to its user would pass it by. It comes back.
                conn.send_frame(
                    &ServerFrame::error(
                        ErrorCode::Unavailable,
                        "could not join your personal room; reconnect",
                    ),
                    &hub.metrics,
                );
                conn.kill_with(close::TRY_AGAIN_LATER, "personal room unavailable; retry");
                break;
            }
        }
        let settings = &state.settings;
        let mut limits = Limits::new(settings.limits(), std::time::Instant::now());
        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + settings.ping_interval,
            settings.ping_interval,
        );
        let mut last_heard = tokio::time::Instant::now();
        let mut peer_closed = false;
        let mut write_failed = false;
        let mut batch = Vec::new();
        let closed = conn.closed.clone();
        let closed = closed.cancelled();
        tokio::pin!(closed);
        // The token's end: the connection closes then, unless a `refresh`
        // moved it.
        let mut expires = conn.expires();
        let expiry = tokio::time::sleep_until(deadline(expires));
        tokio::pin!(expiry);
        loop {
            let msg = tokio::select! {
                biased;
                _ = &mut closed => break,
                _ = &mut expiry => {
                    if conn.expires() != expires {
                        expires = conn.expires();
                        expiry.as_mut().reset(deadline(expires));
                        continue;
                    }
                    // The backend's expiry came (not the token's): its
                    // refresh hook decides.
                    if conn.hook_expiry().is_some() && conn.hook_expiry() == expires {
                        if !Box::pin(refresh_by_hook(&state, &conn)).await {
                            break;
                        }
                        expires = conn.expires();
                        expiry.as_mut().reset(deadline(expires));
                        continue;
                    }
                    hub.metrics.tokens_expired.inc();
                    conn.send_frame(
                        &ServerFrame::error(
                            ErrorCode::TokenExpired,
                            "your token expired; reconnect with a fresh one (or send `refresh` before it ends)",
                        ),
                        &hub.metrics,
                    );
                    conn.kill(close::TOKEN_EXPIRED);
                    break;
                }
                _ = conn.queued() => {
                    // A client that stops reading blocks the flush; it is
                    // killed as a slow consumer when its queue fills.
                    // What was buffered stays in the socket and goes out
                    // before the close frame.
                    let wrote = tokio::select! {
                        r = conn.write_queued(&mut batch, MAX_BATCH, false) => r,
                        _ = &mut closed => break,
                    };
                    if wrote.is_err() {
                        write_failed = true;
                        conn.kill(close::NORMAL);
                        break;
                    }
                    continue;
                }
                m = conn.next_frame() => m,
                _ = ping.tick() => {
                    if last_heard.elapsed() >= settings.idle_timeout {
                        hub.metrics.idle_closed.inc();
                        conn.kill(close::IDLE);
                        break;
                    }
                    conn.ping(&hub.metrics);
                    continue;
                }
            };
            last_heard = tokio::time::Instant::now();
            let msg = match msg {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    let code = close_code_for(&e);
                    tracing::debug!(error = %e, code, "read error");
                    conn.kill(code);
                    break;
                }
                None => {
                    peer_closed = true;
                    break;
                }
            };
            match msg {
                Message::Text(text) => {
                    // A bug in handling one frame ends this session, not the process.
                    // Boxed: a frame's handling (Redis calls) takes memory
                    // only while it runs, not in every idle session.
                    let handling = std::panic::AssertUnwindSafe(Box::pin(handle_text(
                        &state,
                        &conn,
                        &mut limits,
                        text.as_str(),
                    )))
                    .catch_unwind();
                    tokio::pin!(handling);
                    // What the rooms send goes out while a frame waits on
                    // Redis or the backend: one write at a time, polled
                    // beside the frame's handling, so that neither waits
                    // for the other (a client that stops reading does not
                    // hold up a hook call's timeout). The frame is always
                    // handled to its end; a write under way then is
                    // finished after it. As in the loop above, a killed
                    // connection stops writing (it closes after the frame).
                    let mut writing = true;
                    type Write<'a> = std::pin::Pin<
                        Box<dyn std::future::Future<Output = Result<(), axum::Error>> + Send + 'a>,
                    >;
                    let mut write: Option<Write<'_>> = None;
                    let handled = loop {
                        tokio::select! {
                            biased;
                            h = &mut handling => break h,
                            // (Built even when disabled: select! makes every
                            // branch's future, polling only enabled ones.)
                            r = async {
                                match write.as_mut() {
                                    Some(w) => w.await,
                                    None => std::future::pending().await,
                                }
                            }, if write.is_some() => {
                                write = None;
                                if r.is_err() {
                                    write_failed = true;
                                    writing = false;
                                    conn.kill(close::NORMAL);
                                }
                            }
                            _ = &mut closed, if write.is_some() => {
                                write = None;
                                writing = false;
                            }
                            _ = conn.queued(), if writing && write.is_none() => {
                                // Its own batch: this path is the rare one.
                                let conn = &conn;
                                write = Some(Box::pin(async move {
                                    conn.write_queued(&mut Vec::new(), MAX_BATCH, false).await
                                }));
                            }
                        }
                    };
                    if let Some(w) = write.take() {
                        tokio::select! {
                            r = w => {
                                if r.is_err() {
                                    write_failed = true;
                                    conn.kill(close::NORMAL);
                                }
                            }
                            _ = &mut closed => {}
                        }
                    }
                    if write_failed {
                        break;
                    }
                    if handled.is_err() {
                        hub.metrics.session_panics.inc();
                        tracing::error!("frame handling panicked; closing the session");
                        conn.kill(close::INTERNAL);
                        break;
                    }
                }
                Message::Binary(b) if b.len() > settings.max_frame_bytes => {
                    conn.kill(close::TOO_BIG);
                    break;
                }
                Message::Binary(_) => {
                    reject(
                        hub,
                        &conn,
                        ErrorCode::BadJson,
                        "binary frames are not accepted; send JSON text frames",
                    );
                }
                Message::Close(_) => {
                    peer_closed = true;
                    break;
                }
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
        // Out of every room first, so nothing more is queued for us; the
        // client hears its close before presence is updated in Redis, which
        // may be slow or unreachable.
        let left: Vec<(String, bool)> = conn
            .take_rooms()
            .into_iter()
            .filter_map(|room| Some((room.clone(), hub.remove_member(&room, conn.id)?)))
            .collect();
        conn.kill(close::NORMAL);
        if !write_failed {
            Box::pin(close_socket(&conn, peer_closed)).await;
        }
        conn.release_socket();
        state.conns.remove(&conn.id);
        hub.metrics.connections.dec();
        for (room, last_here) in left {
            Box::pin(hub.left(&room, &conn, last_here)).await;
        }
        tracing::debug!("session closed");
    }
    .instrument(span)
    .await
}

/// What the backend's connect hook gave a new connection.
#[derive(Default)]
pub(crate) struct Start {
    /// Sent in `welcome`.
    pub(crate) data: Option<serde_json::Value>,
    /// Joined at once.
    pub(crate) rooms: Vec<RoomName>,
    /// The user was named (a token, `user`, the connect hook): its
    /// connection joins the user's personal room (an anonymous one has
    /// nobody to address it).
    pub(crate) named: bool,
    /// When the connection ends unless the refresh hook extends it (Unix
    /// seconds).
    pub(crate) expire_at: Option<u64>,
}

/// Ends a connection refused before its session began (the connect hook):
/// what was queued, then the close frame with the connection's code and
/// reason.
pub(crate) async fn close_refused(conn: &Conn) {
    close_socket(conn, false).await;
    conn.release_socket();
}

/// When a token that expires at `exp` (Unix seconds) runs out; far away
/// without a token.
fn deadline(exp: Option<u64>) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    let far = std::time::Duration::from_secs(100 * 365 * 86_400);
    let left = match exp {
        Some(exp) => {
            let left = exp.saturating_sub(turnout_proto::now_ms() / 1000);
            std::time::Duration::from_secs(left).min(far)
        }
        None => far,
    };
    now + left
}

/// Frames written per flush at most.
const MAX_BATCH: usize = 256;

/// Ends the connection: what is queued goes out first (unless the client is
/// a slow consumer), then the close frame with the connection's code; when
/// we closed first, reads until the client's close (at most [`CLOSE_WAIT`]),
/// so the close frame is not lost to a TCP reset over unread data.
async fn close_socket(conn: &Conn, peer_closed: bool) {
    let code = match conn.close_code() {
        0 => close::NORMAL,
        c => c,
    };
    let finish = async {
        if code != close::SLOW_CONSUMER {
            conn.write_queued(&mut Vec::new(), MAX_BATCH, true).await?;
        }
        let reason = match code {
            close::SLOW_CONSUMER => "slow consumer",
            close::SERVICE_RESTART => "draining",
            close::TOO_BIG => "frame too big",
            close::IDLE => "idle timeout",
            close::POLICY => "policy violation",
            close::INTERNAL => "internal error",
            close::KICKED => "disconnected by the server",
            close::TOKEN_EXPIRED => "token expired",
            _ => "",
        };
        let reason = conn.close_reason().unwrap_or(reason).to_owned();
        conn.send_now(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await
    };
    if tokio::time::timeout(WRITE_WAIT, finish).await.is_err() {
        return;
    }
    if !peer_closed {
        let started = tokio::time::Instant::now();
        let mut discarded = 0usize;
        let drain = async {
            loop {
                match conn.next_frame().await {
                    Some(Ok(Message::Close(_))) => return true,
                    // What the client still sends is read and dropped, up to
                    // a bound, so the close is not lost to a reset.
                    Some(Ok(m)) => {
                        discarded += match &m {
                            Message::Text(t) => t.len(),
                            Message::Binary(b) => b.len(),
                            _ => 0,
                        };
                        if discarded > MAX_DISCARD {
                            return false;
                        }
                    }
                    _ => return false,
                }
            }
        };
        let closed = tokio::time::timeout(CLOSE_WAIT, drain).await;
        if !matches!(closed, Ok(true)) {
            // The stream cannot be read on (a frame past the WebSocket
            // layer's ceiling): holding the socket a little longer, unread,
            // still lets the close frame reach the client before the reset
            // that closing a socket with unread input sends.
            tokio::time::sleep_until(started + CLOSE_WAIT).await;
        }
    }
}

/// Bytes a closing session reads and drops at most while it waits for the
/// client's close.
const MAX_DISCARD: usize = 1 << 20;

fn reject(hub: &Hub, conn: &Conn, code: ErrorCode, message: impl Into<String>) {
    hub.metrics
        .frame_errors
        .with_label_values(&[code.as_str()])
        .inc();
    conn.send_frame(&ServerFrame::error(code, message), &hub.metrics);
}

/// How long a closing session may take to write what is left and its close
/// frame to a client that reads slowly.
const WRITE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a closing session waits for the client's close frame.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Refuses a frame over one of the connection's limits: `rate_limited`,
/// and when that keeps happening, close 1008.
fn over_limit(hub: &Hub, conn: &Conn, limits: &Limits, over: Over, room: &str, id: Option<String>) {
    hub.metrics.rate_limited.inc();
    if closed_for_abuse(conn, limits) {
        return;
    }
    if room.is_empty() {
        return send_error(hub, conn, ErrorCode::RateLimited, id, over.message());
    }
    let e = ErrorCode::RateLimited.into();
    send_room_error(hub, conn, e, room, id, over.message());
}

/// An error about no room, naming the frame's `id` when it had one.
fn send_error(hub: &Hub, conn: &Conn, code: ErrorCode, id: Option<String>, message: &str) {
    hub.metrics
        .frame_errors
        .with_label_values(&[code.as_str()])
        .inc();
    conn.send_frame(
        &ServerFrame::Error {
            code: code.as_str().to_owned(),
            message: message.to_owned(),
            room: None,
            id,
            redirect: None,
        },
        &hub.metrics,
    );
}

/// Joins `room` (the client's join, or one the connect hook chose);
/// `quiet`: without `joined` (the personal room a connection is put in at
/// start: a client that never asked for it is not surprised by one).
async fn join(
    state: &NodeState,
    conn: &Arc<Conn>,
    room: RoomName,
    since: Option<u64>,
    epoch: Option<String>,
    quiet: bool,
) -> bool {
    let hub = &state.hub;
    match hub.join(conn, &room, since, epoch, quiet).await {
        Ok(()) => {
            conn.joined_room(&room);
            true
        }
        Err(e) => {
            send_room_error(hub, conn, e, &room, None, "join failed; retry");
            false
        }
    }
}

/// The backend's `expire_at` for `conn` came: its refresh hook may extend
/// it (a later `expire_at`) or lift it (none); a refusal ends the
/// connection (4403), and so does no answer (1013: reconnect, which asks
/// the connect hook again). Without a refresh hook the connection ends
/// (3010). Returns whether it lives on.
async fn refresh_by_hook(state: &NodeState, conn: &Conn) -> bool {
    let hub = &state.hub;
    // The backend's session is over: 3010.
    let expired = || {
        hub.metrics.tokens_expired.inc();
        conn.send_frame(
            &ServerFrame::error(ErrorCode::TokenExpired, "your session expired; reconnect"),
            &hub.metrics,
        );
        conn.kill_with(close::TOKEN_EXPIRED, "session expired");
        false
    };
    if !state.hooks.has(Hook::Refresh) {
        return expired();
    }
    let ask = Ask {
        conn: &conn.label,
        user: &conn.user,
        ..Default::default()
    };
    match state.hooks.call(Hook::Refresh, ask).await {
        Answer::Granted(g) => {
            let now = turnout_proto::now_ms() / 1000;
            match g.expire_at {
                // Not later than now: the session ends (a backend that
                // sends the old expire_at back did not extend it).
                Some(e) if e <= now => expired(),
                later => {
                    conn.set_hook_expiry(later);
                    true
                }
            }
        }
        Answer::Refused { message, .. } => {
            conn.kill_with(close::REFUSED, &message);
            false
        }
        Answer::Failed(_) => {
            conn.send_frame(
                &ServerFrame::error(
                    ErrorCode::Unavailable,
                    "the backend did not answer the session's refresh; reconnect",
                ),
                &hub.metrics,
            );
            conn.kill_with(close::TRY_AGAIN_LATER, "the backend did not answer; retry");
            false
        }
    }
}

/// A client's `rpc`: the backend's rpc hook answers it.
async fn rpc(
    state: &NodeState,
    conn: &Conn,
    id: String,
    method: &str,
    data: &serde_json::value::RawValue,
) {
    let hub = &state.hub;
    if !state.hooks.has(Hook::Rpc) {
        let msg = "this server answers no rpc (no proxy_rpc_url)";
        return send_error(hub, conn, ErrorCode::Rejected, Some(id), msg);
    }
    let ask = Ask {
        conn: &conn.label,
        user: &conn.user,
        data: Some(data),
        method: Some(method),
        ..Default::default()
    };
    match state.hooks.call(Hook::Rpc, ask).await {
        Answer::Granted(g) => {
            let data = match g.data {
                None => serde_json::Value::Null,
                Some(d) => serde_json::from_str(d.get()).unwrap_or(serde_json::Value::Null),
            };
            conn.send_frame(&ServerFrame::RpcResult { id, data }, &hub.metrics);
        }
        Answer::Refused { message, .. } => {
            send_error(hub, conn, ErrorCode::Rejected, Some(id), &message)
        }
        Answer::Failed(_) => send_error(
            hub,
            conn,
            ErrorCode::Unavailable,
            Some(id),
            "the backend did not answer the rpc; retry",
        ),
    }
}

/// Closes (1008) a connection whose refusals add up to abuse.
fn closed_for_abuse(conn: &Conn, limits: &Limits) -> bool {
    if !limits.abusive() {
        return false;
    }
    tracing::info!("closing a connection that keeps going over its limits");
    conn.kill(close::POLICY);
    true
}

async fn handle_text(state: &NodeState, conn: &Arc<Conn>, limits: &mut Limits, text: &str) {
    let hub = &state.hub;
    if text.len() > state.settings.max_frame_bytes {
        // Read whole (up to the WebSocket layer's ceiling) so the close
        // handshake can follow: the client sees 1009, not a reset.
        conn.kill(close::TOO_BIG);
        return;
    }
    let now = std::time::Instant::now();
    if let Err(over) = limits.frame(now) {
        // The refusal names the join or publish it refuses (its room, and
        // the publish's id), so that the client can retry that one.
        let (room, id) = match parse_client_frame(text) {
            Ok(ClientFrame::Join { room, .. } | ClientFrame::Leave { room }) => (room, None),
            Ok(ClientFrame::Publish { room, id, .. }) => (room, id),
            Ok(ClientFrame::Rpc { id, .. }) => {
                return over_limit(hub, conn, limits, over, "", Some(id));
            }
            _ => return over_limit(hub, conn, limits, over, "", None),
        };
        return over_limit(hub, conn, limits, over, &room, id);
    }
    let frame = match parse_client_frame(text) {
        Ok(f) => f,
        Err(e) => {
            limits.refused(now);
            if closed_for_abuse(conn, limits) {
                return;
            }
            return reject(hub, conn, e.code, e.message);
        }
    };
    match frame {
        ClientFrame::Ping => {
            conn.send_frame(&ServerFrame::Pong, &hub.metrics);
        }
        ClientFrame::Rpc { id, method, data } => {
            if let Err(over) = limits.publish(now) {
                return over_limit(hub, conn, limits, over, "", Some(id));
            }
            rpc(state, conn, id, &method, &data).await
        }
        ClientFrame::Refresh { token } => {
            if let Err(over) = limits.refresh(now) {
                return over_limit(hub, conn, limits, over, "", None);
            }
            refresh(state, conn, &token).await
        }
        ClientFrame::Join { room, since, epoch } => {
            let limited = if conn.in_room(&room) {
                limits.leave(now)
            } else {
                limits.join(&room, now)
            };
            if let Err(over) = limited {
                return over_limit(hub, conn, limits, over, &room, None);
            }
            if !conn.in_room(&room) && conn.room_count() >= state.settings.max_rooms_per_conn {
                let msg = format!(
                    "at most {} rooms per connection",
                    state.settings.max_rooms_per_conn
                );
                // With the room, so a client knows which join was refused.
                let e = ErrorCode::TooManyRooms.into();
                return send_room_error(hub, conn, e, &room, None, &msg);
            }
            if state.draining() {
                return reject(
                    hub,
                    conn,
                    ErrorCode::Draining,
                    "node is draining; reconnect through the gateway",
                );
            }
            match room.personal_user() {
                Some(_) if !state.settings.personal_rooms => {
                    let e = ErrorCode::Forbidden.into();
                    let msg = "personal rooms are off on this cluster (personal_rooms)";
                    return send_room_error(hub, conn, e, &room, None, msg);
                }
                Some(user) if user != conn.user.as_str() => {
                    let e = ErrorCode::Forbidden.into();
                    let msg = "a personal room is its own user's alone";
                    return send_room_error(hub, conn, e, &room, None, msg);
                }
                // Your own: whatever the token's rooms say.
                Some(_) => {}
                None if !conn.may_join(&room) => {
                    let e = ErrorCode::Forbidden.into();
                    return send_room_error(
                        hub,
                        conn,
                        e,
                        &room,
                        None,
                        "your token does not allow this room",
                    );
                }
                None => {}
            }
            if hub.store.options(&room).join_proxy && !conn.in_room(&room) {
                let ask = Ask {
                    conn: &conn.label,
                    user: &conn.user,
                    room: Some(&room),
                    ..Default::default()
                };
                match state.hooks.call(Hook::Join, ask).await {
                    Answer::Granted(_) => {}
                    Answer::Refused { message, .. } => {
                        let e = ErrorCode::Forbidden.into();
                        return send_room_error(hub, conn, e, &room, None, &message);
                    }
                    Answer::Failed(_) => {
                        let e = ErrorCode::Unavailable.into();
                        let msg = "the backend did not answer the join; retry";
                        return send_room_error(hub, conn, e, &room, None, msg);
                    }
                }
            }
            join(state, conn, room, since, epoch, false).await;
        }
        ClientFrame::Leave { room } => {
            if let Err(over) = limits.leave(now) {
                return over_limit(hub, conn, limits, over, &room, None);
            }
            if conn.left_room(&room) {
                hub.leave(&room, conn).await;
                conn.send_frame(
                    &ServerFrame::Left {
                        room: room.into_string(),
                    },
                    &hub.metrics,
                );
            } else {
                limits.refused(now);
                if closed_for_abuse(conn, limits) {
                    return;
                }
                send_room_error(
                    hub,
                    conn,
                    ErrorCode::NotJoined.into(),
                    &room,
                    None,
                    "room not joined on this connection",
                );
            }
        }
        ClientFrame::Publish { room, data, id } => {
            if !conn.in_room(&room) {
                limits.refused(now);
                if closed_for_abuse(conn, limits) {
                    return;
                }
                return send_room_error(
                    hub,
                    conn,
                    ErrorCode::NotJoined.into(),
                    &room,
                    id,
                    "join the room before publishing",
                );
            }
            if let Err(over) = limits.publish(now) {
                return over_limit(hub, conn, limits, over, &room, id);
            }
            let options = hub.store.options(&room);
            if !options.client_publish {
                hub.metrics.publishes_forbidden.inc();
                return send_room_error(
                    hub,
                    conn,
                    ErrorCode::Forbidden.into(),
                    &room,
                    id,
                    "clients do not publish in this room's namespace (client_publish = false); \
                     the server API does",
                );
            }
            let mut data = data;
            if options.publish_proxy {
                // A resend of a publish already taken is acked as the
                // first was, without asking the backend again.
                if let Some(taken) = id.as_deref() {
                    match hub.store.seen(&room, &conn.user, taken).await {
                        Ok(Some(seq)) => {
                            hub.metrics.publish_duplicates.inc();
                            let ack = ServerFrame::Ack {
                                id,
                                seq,
                                duplicate: true,
                            };
                            conn.send_frame(&ack, &hub.metrics);
                            return;
                        }
                        Ok(None) => {}
                        Err(e) => {
                            hub.metrics.redis_errors.inc();
                            tracing::warn!(room = %room, error = %e, "publish id lookup failed: Redis");
                            let e = ErrorCode::Unavailable.into();
                            let msg = "publish failed; retry";
                            return send_room_error(hub, conn, e, &room, id, msg);
                        }
                    }
                }
                let ask = Ask {
                    conn: &conn.label,
                    user: &conn.user,
                    room: Some(&room),
                    data: Some(&data),
                    ..Default::default()
                };
                match state.hooks.call(Hook::Publish, ask).await {
                    Answer::Granted(g) => {
                        // Checked: at most max_frame_bytes.
                        if let Some(replaced) = g.data {
                            data = replaced;
                        }
                    }
                    Answer::Refused { message, .. } => {
                        let e = ErrorCode::Rejected.into();
                        return send_room_error(hub, conn, e, &room, id, &message);
                    }
                    Answer::Failed(_) => {
                        let e = ErrorCode::Unavailable.into();
                        let msg = "the backend did not answer the publish; retry";
                        return send_room_error(hub, conn, e, &room, id, msg);
                    }
                }
            }
            match hub
                .publish(
                    &room,
                    &conn.user,
                    &data,
                    Origin::Client(&conn.user),
                    id.as_deref(),
                )
                .await
            {
                Ok(p) => {
                    let ack = ServerFrame::Ack {
                        id,
                        seq: p.seq,
                        duplicate: p.duplicate,
                    };
                    conn.send_frame(&ack, &hub.metrics);
                }
                Err(e) => send_room_error(hub, conn, e, &room, id, "publish failed; retry"),
            }
        }
    }
}

/// A fresh token for this connection: same subject, checked like the first;
/// rooms it no longer allows are left (`forbidden`).
async fn refresh(state: &NodeState, conn: &Arc<Conn>, token: &str) {
    let hub = &state.hub;
    let Some(auth) = state.auth() else {
        return reject(
            hub,
            conn,
            ErrorCode::BadFrame,
            "this server takes no tokens",
        );
    };
    let claims = match auth.verify(token) {
        Ok(c) if conn.same_subject(&c.sub) => c,
        Ok(_) => {
            return reject(
                hub,
                conn,
                ErrorCode::Unauthorized,
                "the fresh token is for another user",
            );
        }
        Err(e) => return reject(hub, conn, ErrorCode::Unauthorized, e.to_string()),
    };
    let exp = claims.exp;
    for room in conn.refresh(claims) {
        if conn.left_room(&room) {
            hub.leave(&room, conn).await;
            send_room_error(
                hub,
                conn,
                ErrorCode::Forbidden.into(),
                &room,
                None,
                "your fresh token does not allow this room; you left it",
            );
        }
    }
    conn.send_frame(&ServerFrame::Refreshed { exp }, &hub.metrics);
}

fn send_room_error(
    hub: &Hub,
    conn: &Conn,
    e: RoomError,
    room: &str,
    id: Option<String>,
    message: &str,
) {
    let code = e.code;
    hub.metrics
        .frame_errors
        .with_label_values(&[code.as_str()])
        .inc();
    let message = match code {
        ErrorCode::WrongNode => {
            "this room is owned by another node; connect to `redirect` and join there"
        }
        ErrorCode::Draining => "node is draining; reconnect through the gateway",
        _ => message,
    };
    conn.send_frame(
        &ServerFrame::Error {
            code: code.as_str().to_owned(),
            message: message.to_owned(),
            room: Some(room.to_owned()),
            id,
            redirect: e.redirect,
        },
        &hub.metrics,
    );
}

/// Maps a read error to the close code the client gets.
fn close_code_for(e: &axum::Error) -> u16 {
    let msg = e.to_string();
    if msg.contains("too long") || msg.contains("too big") {
        close::TOO_BIG
    } else if msg.contains("UTF-8") || msg.contains("utf-8") {
        close::INVALID_DATA
    } else {
        close::PROTOCOL
    }
}
