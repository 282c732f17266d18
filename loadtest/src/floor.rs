//! `turnout-bench floor`: the floor a gateway cluster is measured against.
//!
//! One process, no Redis, no history, no limits: axum's WebSockets (the
//! same stack and buffer settings as a ws-node), one writer task per
//! socket, rooms in memory, each message's frame encoded once and shared by
//! every member's writer. It speaks the client frames the bench uses
//! (`join`, `leave`, `publish`, `ping`, and `welcome`, `joined`, `message`,
//! `ack`, `left`, `pong` back) and answers `/api/cluster` and `/api/route`
//! like a gateway, so `turnout-bench run --gateway http://ADDR` drives it
//! unchanged and its results sit beside the strategies' in one report
//! (deploy/loadtest/compare.sh, docs/BENCHMARKS.md "The floor").
//!
//! What a delivery costs here is what any fan-out over WebSockets costs on
//! this machine: a turnout strategy's cost above it is what its
//! guarantees (seqs, history, fencing, recovery) and its hops take.

use crate::cli::FloorOpts;
use anyhow::{Context, Result};
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Rooms are spread over this many locks, so publishes to different rooms
/// rarely wait on each other.
const SHARDS: usize = 64;
/// Frames a member's writer may fall behind by before the member is
/// dropped (a slow consumer), as a ws-node's outbound queue does.
const QUEUE: usize = 1024;

#[derive(Default)]
struct Room {
    seq: u64,
    members: Vec<(u64, mpsc::Sender<Message>)>,
}

struct Floor {
    id: String,
    url: String,
    rooms: Vec<Mutex<HashMap<String, Room>>>,
    next_conn: AtomicU64,
    connections: AtomicU64,
}

impl Floor {
    fn shard(&self, room: &str) -> &Mutex<HashMap<String, Room>> {
        // FNV-1a: cheap, and good enough to spread room names.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in room.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        &self.rooms[(h % SHARDS as u64) as usize]
    }

    fn rooms(&self) -> usize {
        self.rooms
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }
}

pub(crate) async fn run(o: FloorOpts) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(&o.listen)
        .await
        .with_context(|| format!("binding {}", o.listen))?;
    let addr = listener.local_addr()?;
    let floor = Arc::new(Floor {
        id: "floor".to_owned(),
        url: format!("ws://{addr}/ws"),
        rooms: (0..SHARDS).map(|_| Mutex::default()).collect(),
        next_conn: AtomicU64::new(1),
        connections: AtomicU64::new(0),
    });
    if let Some(p) = &o.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    let app = Router::new()
        .route("/ws", get(ws))
        .route("/api/cluster", get(cluster))
        .route("/api/route", get(route))
        .route("/api/rooms/{room}/history", get(history))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .with_state(floor);
    eprintln!("turnout-bench floor: listening on http://{addr}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

async fn cluster(State(f): State<Arc<Floor>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "strategy": "floor",
        "nodes": [{
            "id": f.id,
            "url": f.url,
            "connections": f.connections.load(Ordering::Relaxed),
            "rooms": f.rooms(),
            "draining": false,
            "heartbeat_age_ms": 0,
        }],
    }))
}

async fn route(State(f): State<Arc<Floor>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({"node": f.id, "url": f.url}))
}

/// A room's last seq (the bench counts what members missed from it); the
/// floor keeps no messages.
async fn history(
    State(f): State<Arc<Floor>>,
    axum::extract::Path(room): axum::extract::Path<String>,
) -> Json<serde_json::Value> {
    let seq = f
        .shard(&room)
        .lock()
        .expect("room lock")
        .get(&room)
        .map_or(0, |r| r.seq);
    Json(serde_json::json!({"room": room, "seq": seq, "messages": []}))
}

#[derive(Deserialize)]
struct WsQuery {
    user: Option<String>,
}

async fn ws(
    State(f): State<Arc<Floor>>,
    Query(q): Query<WsQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let max = 64 * 1024;
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| session(f, socket, q.user))
        .into_response()
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    room: Option<&'a str>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    id: Option<&'a str>,
}

async fn session(f: Arc<Floor>, socket: WebSocket, user: Option<String>) {
    let conn = f.next_conn.fetch_add(1, Ordering::Relaxed);
    let user = user.unwrap_or_else(|| format!("anon-{conn}"));
    f.connections.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            // Whatever else is queued goes out with it, in one flush.
            if sink.feed(m).await.is_err() {
                return;
            }
            while let Ok(m) = rx.try_recv() {
                if sink.feed(m).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let welcome = serde_json::json!({
        "type": "welcome", "node": f.id, "strategy": "floor", "conn": format!("{}-{conn}", f.id),
    });
    let _ = tx.try_send(Message::Text(welcome.to_string().into()));
    let mut joined: Vec<String> = Vec::new();
    while let Some(Ok(m)) = stream.next().await {
        let Message::Text(text) = m else {
            if matches!(m, Message::Close(_)) {
                break;
            }
            continue;
        };
        let Ok(frame) = serde_json::from_str::<Frame>(text.as_str()) else {
            let _ = tx.try_send(error("bad_frame", "not a frame"));
            continue;
        };
        match (frame.kind, frame.room) {
            ("join", Some(room)) => {
                let seq = {
                    let mut rooms = f.shard(room).lock().expect("room lock");
                    let r = rooms.entry(room.to_owned()).or_default();
                    if !r.members.iter().any(|(c, _)| *c == conn) {
                        r.members.push((conn, tx.clone()));
                    }
                    r.seq
                };
                if !joined.iter().any(|r| r == room) {
                    joined.push(room.to_owned());
                }
                let reply =
                    serde_json::json!({"type": "joined", "room": room, "seq": seq, "presence": []});
                let _ = tx.try_send(Message::Text(reply.to_string().into()));
            }
            ("leave", Some(room)) => {
                leave(&f, room, conn);
                joined.retain(|r| r != room);
                let reply = serde_json::json!({"type": "left", "room": room});
                let _ = tx.try_send(Message::Text(reply.to_string().into()));
            }
            ("publish", Some(room)) => {
                if !joined.iter().any(|r| r == room) {
                    let _ = tx.try_send(error("not_joined", "join the room first"));
                    continue;
                }
                let data = frame.data.map(RawValue::get).unwrap_or("null");
                publish(&f, room, &user, data, frame.id, &tx);
            }
            ("ping", _) => {
                let _ = tx.try_send(Message::Text(Utf8Bytes::from_static(r#"{"type":"pong"}"#)));
            }
            _ => {
                let _ = tx.try_send(error("bad_frame", "unknown frame"));
            }
        }
    }
    for room in &joined {
        leave(&f, room, conn);
    }
    drop(tx);
    let _ = writer.await;
    f.connections.fetch_sub(1, Ordering::Relaxed);
}

fn leave(f: &Floor, room: &str, conn: u64) {
    let mut rooms = f.shard(room).lock().expect("room lock");
    // The room stays, with its seq, as a room in Redis would.
    if let Some(r) = rooms.get_mut(room) {
        r.members.retain(|(c, _)| *c != conn);
    }
}

/// Numbers the message, encodes its frame once and hands the same bytes to
/// every member's writer; a member whose writer is `QUEUE` frames behind is
/// dropped from the room (the bench counts what it then misses).
fn publish(
    f: &Floor,
    room: &str,
    user: &str,
    data: &str,
    id: Option<&str>,
    tx: &mpsc::Sender<Message>,
) {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut rooms = f.shard(room).lock().expect("room lock");
    let Some(r) = rooms.get_mut(room) else { return };
    r.seq += 1;
    let seq = r.seq;
    let frame: Utf8Bytes = format!(
        r#"{{"type":"message","room":{},"seq":{seq},"from":{},"node":{},"ts":{ts},"data":{data}}}"#,
        json_str(room),
        json_str(user),
        json_str(&f.id),
    )
    .into();
    r.members
        .retain(|(_, member)| member.try_send(Message::Text(frame.clone())).is_ok());
    drop(rooms);
    let ack = match id {
        Some(id) => format!(
            r#"{{"type":"ack","room":{},"seq":{seq},"id":{}}}"#,
            json_str(room),
            json_str(id)
        ),
        None => format!(r#"{{"type":"ack","room":{},"seq":{seq}}}"#, json_str(room)),
    };
    let _ = tx.try_send(Message::Text(ack.into()));
}

fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn error(code: &str, message: &str) -> Message {
    let e = serde_json::json!({"type": "error", "code": code, "message": message});
    Message::Text(e.to_string().into())
}
