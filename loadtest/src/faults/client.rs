//! The campaign's own client, written to the protocol (docs/PROTOCOL.md)
//! and nothing else: it connects through the gateway, follows `redirect`
//! and `reconnect`, rejoins with `since` and `epoch`, rejoins on a seq jump
//! and after a cut replay, and resends unacked publishes with their ids. It
//! records what its application would see into the [`Book`], which the
//! checker reads.

use super::checker::{Event, MemberLog, PublishLog};
use futures_util::{SinkExt, StreamExt};
use rand::RngExt;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use turnout_proto::frames::ServerFrame;

/// Wall-clock milliseconds: every client of a run is on this machine, so
/// the checker compares their clocks.
pub(crate) fn now_ms() -> u64 {
    turnout_proto::now_ms()
}

/// What every client of a run recorded.
#[derive(Default)]
pub(crate) struct Book {
    members: Mutex<BTreeMap<(String, String), MemberLog>>,
    publishes: Mutex<HashMap<String, PublishLog>>,
    /// Publishes sent and neither acked nor refused yet: a run has settled
    /// only once there are none (an ack still to come owes a delivery).
    open: Mutex<std::collections::HashSet<String>>,
}

impl Book {
    fn member(&self, member: &str, user: &str, room: &str, ev: Event) {
        let mut m = self.members.lock().unwrap_or_else(|e| e.into_inner());
        m.entry((member.to_owned(), room.to_owned()))
            .or_insert_with(|| MemberLog {
                member: member.to_owned(),
                user: user.to_owned(),
                room: room.to_owned(),
                events: Vec::new(),
            })
            .events
            .push(ev);
    }

    pub(crate) fn joined(
        &self,
        member: &str,
        user: &str,
        room: &str,
        seq: u64,
        epoch: &str,
        recovered: Option<bool>,
    ) {
        self.joined_at(member, user, room, now_ms(), seq, epoch, recovered);
    }

    /// A `joined` seen at `at` (Unix ms: the moment the client saw it).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn joined_at(
        &self,
        member: &str,
        user: &str,
        room: &str,
        at: u64,
        seq: u64,
        epoch: &str,
        recovered: Option<bool>,
    ) {
        let ev = Event::Joined {
            at,
            seq,
            epoch: epoch.to_owned(),
            recovered,
        };
        self.member(member, user, room, ev);
    }

    pub(crate) fn message(&self, member: &str, user: &str, room: &str, seq: u64, key: &str) {
        self.message_at(member, user, room, now_ms(), seq, key);
    }

    pub(crate) fn message_at(
        &self,
        member: &str,
        user: &str,
        room: &str,
        at: u64,
        seq: u64,
        key: &str,
    ) {
        let ev = Event::Message {
            at,
            seq,
            key: key.to_owned(),
        };
        self.member(member, user, room, ev);
    }

    /// A jump in seq the member repaired by rejoining.
    pub(crate) fn repair(&self, member: &str, user: &str, room: &str, seq: u64, after: u64) {
        let ev = Event::Repair {
            at: now_ms(),
            seq,
            after,
        };
        self.member(member, user, room, ev);
    }

    /// A member that will join `room` (so that one that never manages to
    /// is checked too).
    pub(crate) fn expect(&self, member: &str, user: &str, room: &str) {
        let mut m = self.members.lock().unwrap_or_else(|e| e.into_inner());
        m.entry((member.to_owned(), room.to_owned()))
            .or_insert_with(|| MemberLog {
                member: member.to_owned(),
                user: user.to_owned(),
                room: room.to_owned(),
                events: Vec::new(),
            });
    }

    pub(crate) fn sent(&self, key: &str, room: &str, publisher: &str, at: u64) {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned());
        let mut p = self.publishes.lock().unwrap_or_else(|e| e.into_inner());
        p.entry(key.to_owned()).or_insert_with(|| PublishLog {
            key: key.to_owned(),
            room: room.to_owned(),
            publisher: publisher.to_owned(),
            sent: at,
            acked: None,
            other_acks: Vec::new(),
        });
    }

    pub(crate) fn acked(&self, key: &str, seq: u64) {
        self.refused(key);
        let mut p = self.publishes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = p.get_mut(key) {
            match p.acked {
                None => p.acked = Some(seq),
                Some(first) if first != seq && !p.other_acks.contains(&seq) => {
                    p.other_acks.push(seq)
                }
                Some(_) => {}
            }
        }
    }

    /// A publish that will get no ack (refused for good, or given up on).
    pub(crate) fn refused(&self, key: &str) {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Publishes still waiting for their answer.
    pub(crate) fn in_flight(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Everything recorded so far.
    pub(crate) fn snapshot(&self) -> (Vec<MemberLog>, Vec<PublishLog>) {
        let m = self.members.lock().unwrap_or_else(|e| e.into_inner());
        let p = self.publishes.lock().unwrap_or_else(|e| e.into_inner());
        let mut pubs: Vec<PublishLog> = p.values().cloned().collect();
        pubs.sort_by(|a, b| (a.sent, &a.key).cmp(&(b.sent, &b.key)));
        (m.values().cloned().collect(), pubs)
    }
}

/// One client in one room.
pub(crate) struct Member {
    pub(crate) name: String,
    pub(crate) user: String,
    pub(crate) room: String,
    /// The gateway's `/ws`.
    pub(crate) entry: String,
    /// How often it publishes while `publishing` says so.
    pub(crate) every: Duration,
}

/// Switches shared by the clients of a run.
#[derive(Clone)]
pub(crate) struct Controls {
    pub(crate) publishing: Arc<AtomicBool>,
    pub(crate) stop: CancellationToken,
}

/// A publish waiting for its ack.
struct Pending {
    key: String,
    frame: String,
    sent: bool,
    not_before: Instant,
    tries: u32,
}

/// Where the room is on the current connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Joining,
    /// A `leave` was sent to rejoin with `since`.
    Leaving,
    Joined,
}

/// The member's place in its room, across connections.
#[derive(Default)]
struct Place {
    /// The last seq handed on (or the room's seq when joined); None before
    /// the first join.
    last: Option<u64>,
    epoch: String,
    /// A `recovered: false` rejoin: the next message may skip a hole.
    accept_jump: bool,
    /// A replay cut at `max_replay_bytes` ends at this seq.
    replay_until: Option<u64>,
}

fn jitter(max: Duration) -> Duration {
    let ms = max.as_millis().max(1) as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}

/// Runs the member until `ctl.stop`.
pub(crate) async fn run(m: Member, book: Arc<Book>, ctl: Controls) {
    book.expect(&m.name, &m.user, &m.room);
    let mut place = Place::default();
    let mut pending: Vec<Pending> = Vec::new();
    let mut n = 0u64;
    let mut redirect: Option<String> = None;
    let mut backoff = Duration::from_millis(50);
    while !ctl.stop.is_cancelled() {
        let url = match redirect.take() {
            Some(u) => u,
            None => format!("{}?room={}&user={}", m.entry, m.room, m.user),
        };
        let connected = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await;
        let mut ws = match connected {
            Ok(Ok((ws, _))) => ws,
            _ => {
                tokio::select! {
                    _ = tokio::time::sleep(jitter(backoff)) => {}
                    _ = ctl.stop.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        for p in &mut pending {
            p.sent = false;
        }
        let mut phase = Phase::Joining;
        let mut welcomed = false;
        let mut last_frame = Instant::now();
        let mut ping_sent = false;
        let mut tick = tokio::time::interval(m.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut poll = tokio::time::interval(Duration::from_millis(100));
        let mut moved = false;
        loop {
            let mut out: Vec<String> = Vec::new();
            tokio::select! {
                _ = ctl.stop.cancelled() => {
                    let _ = ws.close(None).await;
                    return;
                }
                _ = tick.tick(), if phase == Phase::Joined => {
                    if ctl.publishing.load(Ordering::Relaxed) {
                        n += 1;
                        let key = format!("{}-{n}", m.name);
                        book.sent(&key, &m.room, &m.name, now_ms());
                        let frame = json!({"type": "publish", "room": m.room, "id": key,
                            "data": {"k": key}}).to_string();
                        pending.push(Pending { key, frame, sent: false, not_before: Instant::now(), tries: 0 });
                    }
                }
                _ = poll.tick() => {
                    // A connection that stops answering is given up.
                    if last_frame.elapsed() > Duration::from_secs(4) {
                        if ping_sent {
                            break;
                        }
                        ping_sent = true;
                        out.push(json!({"type": "ping"}).to_string());
                    }
                    if !welcomed && last_frame.elapsed() > Duration::from_secs(5) {
                        break;
                    }
                }
                frame = ws.next() => {
                    let text = match frame {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => continue,
                    };
                    last_frame = Instant::now();
                    ping_sent = false;
                    let Ok(f) = serde_json::from_str::<ServerFrame>(text.as_str()) else { continue };
                    match f {
                        ServerFrame::Welcome { .. } => {
                            welcomed = true;
                            backoff = Duration::from_millis(50);
                            out.push(join_frame(&m.room, &place));
                        }
                        ServerFrame::Joined { seq, epoch, recovered, replay_until, .. } => {
                            // Unasked while joined: the node starts the
                            // room over (Redis lost its state).
                            let reset = phase == Phase::Joined;
                            if phase == Phase::Leaving {
                                continue;
                            }
                            let sent_since = place.last.is_some();
                            if !reset && sent_since && recovered.is_none() {
                                // Still a member here (a refused leave): leave and join again.
                                phase = Phase::Leaving;
                                out.push(json!({"type": "leave", "room": m.room}).to_string());
                                continue;
                            }
                            book.joined(&m.name, &m.user, &m.room, seq, &epoch, recovered);
                            match place.last {
                                None => place.last = Some(seq),
                                Some(last) => {
                                    let changed = !place.epoch.is_empty() && epoch != place.epoch;
                                    if changed || last > seq {
                                        place.last = Some(seq);
                                        place.accept_jump = false;
                                    } else if recovered == Some(false) {
                                        place.accept_jump = true;
                                    }
                                }
                            }
                            place.epoch = epoch;
                            place.replay_until = replay_until;
                            phase = Phase::Joined;
                        }
                        ServerFrame::Left { .. } if phase == Phase::Leaving => {
                            phase = Phase::Joining;
                            out.push(join_frame(&m.room, &place));
                        }
                        ServerFrame::Message { seq, epoch, data, .. } => {
                            if phase != Phase::Joined {
                                continue;
                            }
                            let last = place.last.unwrap_or(0);
                            let key = data["k"].as_str().unwrap_or("");
                            if seq <= last {
                                // The server sent it again, or out of order:
                                // recorded for the checker to name, not
                                // counted as the room's progress.
                                book.message(&m.name, &m.user, &m.room, seq, key);
                                continue;
                            }
                            if seq > last + 1 && !place.accept_jump {
                                // A hole: history fills it after a rejoin.
                                book.repair(&m.name, &m.user, &m.room, seq, last);
                                phase = Phase::Leaving;
                                out.push(json!({"type": "leave", "room": m.room}).to_string());
                                continue;
                            }
                            place.accept_jump = false;
                            place.last = Some(seq);
                            // Joined before the room had an epoch: the first
                            // message of one names it.
                            if place.epoch.is_empty()
                                && let Some(e) = epoch
                            {
                                place.epoch = e;
                            }
                            book.message(&m.name, &m.user, &m.room, seq, key);
                            if place.replay_until.is_some_and(|u| seq >= u) {
                                place.replay_until = None;
                                phase = Phase::Leaving;
                                out.push(json!({"type": "leave", "room": m.room}).to_string());
                            }
                        }
                        ServerFrame::Ack { id: Some(id), seq, .. } => {
                            if let Some(i) = pending.iter().position(|p| p.key == id) {
                                pending.remove(i);
                                book.acked(&id, seq);
                            }
                        }
                        ServerFrame::Error { code, id, redirect: to, .. } => {
                            match (code.as_str(), id) {
                                ("wrong_node", id) => {
                                    if let Some(p) = id.and_then(|id| pending.iter_mut().find(|p| p.key == id)) {
                                        p.sent = false;
                                    }
                                    redirect = to.map(|u| format!("{u}?room={}&user={}", m.room, m.user));
                                    moved = true;
                                    break;
                                }
                                ("draining", _) => break,
                                (code, Some(id)) => {
                                    let Some(i) = pending.iter().position(|p| p.key == id) else { continue };
                                    match code {
                                        "rate_limited" | "unavailable" | "internal" => {
                                            let p = &mut pending[i];
                                            p.sent = false;
                                            p.tries += 1;
                                            p.not_before = Instant::now()
                                                + jitter(Duration::from_millis(50 << p.tries.min(5)));
                                        }
                                        "not_joined" => {
                                            pending[i].sent = false;
                                            if phase == Phase::Joined {
                                                phase = Phase::Leaving;
                                                out.push(json!({"type": "leave", "room": m.room}).to_string());
                                            }
                                        }
                                        _ => {
                                            // Refused for good: never stored, not owed.
                                            book.refused(&pending.remove(i).key);
                                        }
                                    }
                                }
                                ("not_joined", None) if phase == Phase::Leaving => {
                                    phase = Phase::Joining;
                                    out.push(join_frame(&m.room, &place));
                                }
                                (_, None) => {
                                    // A refused join or leave: again, after a while.
                                    let again = if phase == Phase::Leaving {
                                        json!({"type": "leave", "room": m.room}).to_string()
                                    } else {
                                        join_frame(&m.room, &place)
                                    };
                                    tokio::time::sleep(jitter(Duration::from_millis(200))).await;
                                    out.push(again);
                                }
                            }
                        }
                        ServerFrame::Reconnect { .. } => {
                            redirect = None;
                        }
                        _ => {}
                    }
                }
            }
            if phase == Phase::Joined {
                let now = Instant::now();
                for p in pending.iter_mut().filter(|p| !p.sent) {
                    if p.not_before > now {
                        break; // in order
                    }
                    p.sent = true;
                    out.push(p.frame.clone());
                }
            }
            let mut failed = false;
            for f in out {
                if ws.send(Message::Text(f.into())).await.is_err() {
                    failed = true;
                    break;
                }
            }
            if failed {
                break;
            }
        }
        if ctl.stop.is_cancelled() {
            break;
        }
        // A redirect is followed soon, anything else after a backoff.
        let wait = if moved {
            jitter(Duration::from_millis(100))
        } else {
            jitter(backoff)
        };
        backoff = (backoff * 2).min(Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = ctl.stop.cancelled() => break,
        }
    }
}

fn join_frame(room: &str, place: &Place) -> String {
    match place.last {
        Some(since) => {
            json!({"type": "join", "room": room, "since": since, "epoch": place.epoch}).to_string()
        }
        None => json!({"type": "join", "room": room}).to_string(),
    }
}
