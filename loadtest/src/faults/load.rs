//! The load a campaign puts on the cluster besides its members: server
//! API publishers, bursts into one room, and what is sampled while it runs
//! (memory, presence).

use super::*;
use checker::PresenceCheck;
use client::{Book, Controls};
use futures_util::{SinkExt, StreamExt};
use schedule::Kind;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A backend publishing through the server API: one message every 250 ms
/// into one room after another, every other one with an `Idempotency-Key`
/// (retried with it when the answer does not come: taken once), the rest
/// without (not retried: an unknown outcome is not owed, and must not come
/// twice).
pub(super) async fn api_publisher(
    gateway: String,
    rooms: Vec<String>,
    book: Arc<Book>,
    ctl: Controls,
) {
    let mut n = 0u64;
    while ctl.publishing.load(Ordering::Relaxed) && !ctl.stop.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(250)).await;
        n += 1;
        let room = &rooms[n as usize % rooms.len()];
        let key = format!("api-{n}");
        let keyed = n.is_multiple_of(2);
        book.sent(&key, room, "api", client::now_ms());
        let url = format!("{gateway}/api/rooms/{room}/publish");
        let body = json!({"data": {"k": key}}).to_string();
        let headers: Vec<(&str, &str)> = if keyed {
            vec![("idempotency-key", key.as_str())]
        } else {
            Vec::new()
        };
        for attempt in 0..4 {
            let r =
                crate::http::post_json(&url, body.clone(), &headers, Duration::from_secs(15)).await;
            if let Ok((200, b)) = &r {
                if let Some(seq) = serde_json::from_slice::<serde_json::Value>(b)
                    .ok()
                    .and_then(|v| v["seq"].as_u64())
                {
                    book.acked(&key, seq);
                }
                break;
            }
            if !keyed || attempt == 3 {
                book.refused(&key);
                break;
            }
            tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        }
    }
}

/// Load faults: clients that join a room and never read (with a burst
/// into the room to fill their queues), or more clients for a room than
/// its node takes. They hold on until `stop`.
pub(super) async fn load_fault(
    kind: Kind,
    entry: String,
    room: String,
    max_connections: usize,
    book: Arc<Book>,
    stop: CancellationToken,
) {
    let count = match kind {
        Kind::SlowReaders => 3,
        _ => max_connections + 10,
    };
    let mut held = Vec::new();
    for i in 0..count {
        let url = format!("{entry}?room={room}&user={}-{i}", kind.as_str());
        if let Ok(Ok((mut ws, _))) = tokio::time::timeout(
            Duration::from_secs(3),
            tokio_tungstenite::connect_async(url),
        )
        .await
        {
            let join = json!({"type": "join", "room": room}).to_string();
            if ws.send(join.into()).await.is_ok() {
                held.push(ws);
            }
        }
    }
    if kind == Kind::SlowReaders {
        burst(&entry, &room, &book, &stop).await;
    }
    stop.cancelled().await;
    drop(held);
}

/// Publishes 500 messages of 4 KiB into `room` as fast as they are acked
/// (recorded like any other publisher's).
pub(super) async fn burst(entry: &str, room: &str, book: &Book, stop: &CancellationToken) {
    let url = format!("{entry}?room={room}&user=burst");
    let Ok(Ok((mut ws, _))) = tokio::time::timeout(
        Duration::from_secs(3),
        tokio_tungstenite::connect_async(url),
    )
    .await
    else {
        return;
    };
    let join = json!({"type": "join", "room": room}).to_string();
    if ws.send(join.into()).await.is_err() {
        return;
    }
    let pad = "x".repeat(4096);
    let tag: u32 = rand::random();
    let mut joined = false;
    let mut sent = 0;
    let mut in_flight = 0;
    while !stop.is_cancelled() && (sent < 500 || in_flight > 0) {
        while joined && sent < 500 && in_flight < 50 {
            sent += 1;
            in_flight += 1;
            let key = format!("burst-{tag:08x}-{sent}");
            book.sent(&key, room, "burst", client::now_ms());
            let f =
                json!({"type": "publish", "room": room, "id": key, "data": {"k": key, "p": pad}});
            if ws.send(f.to_string().into()).await.is_err() {
                return;
            }
        }
        let next = tokio::select! {
            m = ws.next() => m,
            _ = stop.cancelled() => return,
        };
        let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) = next else {
            return;
        };
        let Ok(f) = serde_json::from_str::<turnout_proto::frames::ServerFrame>(t.as_str()) else {
            continue;
        };
        match f {
            turnout_proto::frames::ServerFrame::Joined { .. } => joined = true,
            turnout_proto::frames::ServerFrame::Ack {
                id: Some(id), seq, ..
            } => {
                in_flight -= 1;
                book.acked(&id, seq);
            }
            turnout_proto::frames::ServerFrame::Error { id: Some(id), .. } => {
                in_flight -= 1;
                book.refused(&id);
            }
            _ => {}
        }
    }
}

/// Samples every process's resident memory each second; keeps each peak.
pub(super) async fn sample_memory(
    pids: Arc<std::sync::Mutex<Vec<(String, u32)>>>,
    peaks: Arc<std::sync::Mutex<BTreeMap<String, u64>>>,
    stop: CancellationToken,
) {
    loop {
        let now = pids.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (name, pid) in now {
            if let Some(kib) = crate::sample::rss_kib(pid) {
                let mut p = peaks.lock().unwrap_or_else(|e| e.into_inner());
                let e = p.entry(name).or_insert(0);
                *e = (*e).max(kib * 1024);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Reads each room's presence until it lists exactly the room's members
/// (3 × `presence_ttl` at most: a dead process's entries go within one).
pub(super) async fn check_presence(
    gateway: &str,
    book: &Book,
    ttl: Duration,
) -> Vec<PresenceCheck> {
    let (members, _) = book.snapshot();
    let mut rooms: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in members {
        rooms.entry(m.room).or_default().insert(m.user);
    }
    let end = Instant::now() + ttl * 3 + Duration::from_secs(5);
    let mut out = Vec::new();
    for (room, users) in rooms {
        let url = format!("{gateway}/api/rooms/{room}/presence");
        let mut seen = Vec::new();
        loop {
            if let Ok(v) = crate::http::get_json(&url).await {
                seen = v["users"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|u| u.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                let set: BTreeSet<String> = seen.iter().cloned().collect();
                if set == users {
                    break;
                }
            }
            if Instant::now() > end {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        out.push(PresenceCheck {
            room,
            expected: users.into_iter().collect(),
            seen,
        });
    }
    out
}
