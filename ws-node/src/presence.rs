//! Presence: who is in a room, across the cluster, and the join/leave
//! events members see.
//!
//! Each member is an entry under its node process (the holder,
//! `<node>/<incarnation>`), and each holder has a lease on the room that
//! the node renews every `presence_ttl / 3` while it has members there
//! ([`Hub::renew`]). Reads drop entries whose holder's lease ran out, so a
//! crashed node's members vanish within `presence_ttl`, and a process
//! restarted under the same node id (a new incarnation) never revives a
//! dead one's entries. A node whose lease lapsed while it lived (a pause, a
//! cut from Redis) finds out at its next renewal and writes its members
//! again. Entries of members who leave, or are moved away, are removed,
//! with retries when Redis does not answer.

use crate::conn::Conn;
use crate::hub::Hub;
use axum::extract::ws::{Message, Utf8Bytes};
use std::sync::Arc;
use std::time::Duration;
use turnout_proto::frames::ServerFrame;

/// How long a failed presence removal is retried.
const FORGET_PATIENCE: Duration = Duration::from_secs(30);

impl Hub {
    /// Users present in `room` across the cluster (at most `presence_limit`);
    /// none in a namespace without presence.
    pub(crate) async fn presence(&self, room: &str) -> redis::RedisResult<Vec<String>> {
        if !self.store.options(room).presence {
            return Ok(Vec::new());
        }
        Ok(self
            .store
            .presence(room, self.bounds.presence_limit)
            .await?
            .users)
    }

    /// Tells the room's members (on every node) that `conn`'s user joined or
    /// left. Best effort: presence events carry no seq and are not replayed.
    pub(crate) async fn announce(&self, room: &str, event: &str, conn: &Conn) {
        // (A personal room's members are its one user's own connections.)
        if !self.store.options(room).presence || turnout_proto::names::is_personal(room) {
            return;
        }
        let frame = ServerFrame::Presence {
            room: room.to_owned(),
            event: event.to_owned(),
            user: conn.user.to_string(),
        };
        self.strategy
            .announce(self, room, &conn.label, frame.to_json())
            .await;
    }

    /// Hands a presence event to the room's live members except its subject.
    pub(crate) fn deliver_presence(&self, room: &str, origin: &str, frame: Utf8Bytes) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        for m in r.members.values() {
            if m.buffer.is_none() && m.conn.label != origin {
                m.conn.push(Message::Text(frame.clone()), &self.metrics);
            }
        }
    }

    /// Removes the presence entries of `conns` in `room` (`last_here`: this
    /// node has no members left there); returns the room's remaining
    /// entries. When Redis does not answer, keeps trying in the background,
    /// for the connections that have not joined the room again meanwhile.
    ///
    /// With `events` (the members had joined: not a join that failed on
    /// its way), the backend hears `member_left` for each, and
    /// `room_vacated` once the room has nobody left.
    pub(crate) async fn forget_presence(
        self: &Arc<Self>,
        room: &str,
        conns: &[Arc<Conn>],
        last_here: bool,
        events: bool,
    ) -> Option<u64> {
        // Personal rooms come and go with every connection: no events.
        let events = events && !turnout_proto::names::is_personal(room);
        if events {
            for c in conns {
                self.webhook(crate::webhooks::Kind::MemberLeft, room, &c.user);
            }
        }
        let vacated = |hub: &Hub, left: u64| {
            if events && left == 0 {
                let user = conns.last().map_or("", |c| c.user.as_str());
                hub.webhook(crate::webhooks::Kind::RoomVacated, room, user);
            }
        };
        let labels: Vec<&str> = conns.iter().map(|c| c.label.as_str()).collect();
        match self.store.leave(room, &labels, last_here).await {
            Ok(left) => {
                vacated(self, left);
                Some(left)
            }
            Err(e) => {
                self.metrics.redis_errors.inc();
                tracing::debug!(room, error = %e, "presence removal failed; retrying");
                let (hub, room, conns) = (self.clone(), room.to_owned(), conns.to_vec());
                let last_user = conns.last().map(|c| c.user.to_string()).unwrap_or_default();
                tokio::spawn(async move {
                    let started = tokio::time::Instant::now();
                    let mut backoff = turnout_common::backoff::Backoff::new(
                        Duration::from_millis(100),
                        Duration::from_secs(5),
                    );
                    while started.elapsed() < FORGET_PATIENCE {
                        backoff.wait().await;
                        // A connection back in the room has a live entry again.
                        let gone: Vec<&str> = conns
                            .iter()
                            .filter(|c| !hub.is_member(&room, c))
                            .map(|c| c.label.as_str())
                            .collect();
                        let last_here = last_here && !hub.has_room(&room);
                        match hub.store.leave(&room, &gone, last_here).await {
                            Ok(left) => {
                                if events && left == 0 {
                                    let kind = crate::webhooks::Kind::RoomVacated;
                                    hub.webhook(kind, &room, &last_user);
                                }
                                return;
                            }
                            Err(_) => hub.metrics.redis_errors.inc(),
                        }
                    }
                    tracing::warn!(
                        room,
                        "presence entries could not be removed; they go with this node's lease"
                    );
                });
                None
            }
        }
    }

    /// Renews this node's presence leases on every room it has members in
    /// and, sticky, checks each room's owner record (keeping the placement
    /// pinned). Rooms whose lease had lapsed get their members written
    /// again; rooms this node no longer owns have their members moved.
    /// False when Redis did not answer.
    pub(crate) async fn renew(self: &Arc<Self>) -> bool {
        let Some(redis) = self.store.redis() else {
            return true;
        };
        let pin = self.strategy.owner_pin();
        let rooms = self.room_epochs();
        if rooms.is_empty() {
            return true;
        }
        let args: Vec<(String, Option<(&str, u64)>)> = rooms
            .iter()
            .map(|(room, epoch)| {
                // Sticky's personal rooms have no owner to check.
                let owner = pin
                    .filter(|_| !turnout_proto::names::is_personal(room))
                    .map(|_| (self.node_id.as_str(), *epoch));
                (room.clone(), owner)
            })
            .collect();
        let pin = pin.unwrap_or_default();
        let results = match redis.renew(&args, pin).await {
            Ok(r) => r,
            Err(e) => {
                self.metrics.redis_errors.inc();
                tracing::warn!(error = %e, "renewing presence leases failed");
                return false;
            }
        };
        let mut lapsed = Vec::new();
        for ((room, epoch), renewed) in rooms.iter().zip(results) {
            if !renewed.owned {
                let how = crate::strategy::sticky::Lost::NotAt(*epoch);
                self.strategy.lost(self, room, how, None);
                continue;
            }
            if renewed.lost {
                lapsed.push(room.clone());
            }
            self.check_delivered(room, renewed.seq);
        }
        if !lapsed.is_empty() {
            tracing::info!(
                rooms = lapsed.len(),
                "presence lease had lapsed; members written again"
            );
            self.reassert(&lapsed).await;
        }
        true
    }

    /// A renewal read the room's seq in Redis as `stored`. A message the
    /// previous renewal already saw stored and that this node has still not
    /// delivered was missed (a push dropped, a reply lost) in a room that
    /// then went quiet, so no later message showed the gap: read it back.
    /// (Messages stored since the previous renewal may still be on their
    /// way.)
    fn check_delivered(self: &Arc<Self>, room: &str, stored: u64) {
        let behind = {
            let Some(mut r) = self.rooms.get_mut(room) else {
                return;
            };
            let seen = std::mem::replace(&mut r.stored_seq, stored);
            r.seq.last().is_some_and(|last| last < seen.min(stored))
        };
        if behind {
            self.metrics.caught_up_quiet.inc();
            tracing::info!(
                room,
                "room's latest message was never delivered here; reading it back"
            );
            self.catch_up(room);
        }
    }

    /// Writes the presence entries of this node's members of `rooms` again
    /// (their lease had lapsed), then removes any of them that left while
    /// that was under way.
    pub(crate) async fn reassert(self: &Arc<Self>, rooms: &[String]) {
        let Some(redis) = self.store.redis() else {
            return;
        };
        let members: Vec<(String, Vec<Arc<Conn>>)> = rooms
            .iter()
            .filter_map(|room| {
                let r = self.rooms.get(room)?;
                Some((
                    room.clone(),
                    r.members.values().map(|m| m.conn.clone()).collect(),
                ))
            })
            .collect();
        self.metrics
            .presence_reasserted
            .inc_by(members.len() as u64);
        let entries: Vec<(String, Vec<(String, String)>)> = members
            .iter()
            .map(|(room, conns)| {
                let e = conns
                    .iter()
                    .map(|c| (c.label.clone(), c.user.to_string()))
                    .collect();
                (room.clone(), e)
            })
            .collect();
        if let Err(e) = redis.reassert(&entries).await {
            self.metrics.redis_errors.inc();
            tracing::warn!(error = %e, "writing presence again failed");
            return;
        }
        for (room, conns) in members {
            let left: Vec<Arc<Conn>> = conns
                .into_iter()
                .filter(|c| !self.is_member(&room, c))
                .collect();
            if !left.is_empty() {
                // Their leave told the backend already.
                self.forget_presence(&room, &left, !self.has_room(&room), false)
                    .await;
            }
        }
    }
}
