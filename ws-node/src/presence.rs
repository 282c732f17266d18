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
    /// Users present in `room` across the cluster (at most `presence_limit`).
    pub(crate) async fn presence(&self, room: &str) -> redis::RedisResult<Vec<String>> {
        Ok(self.store.presence(room, self.presence_limit).await?.users)
    }

    /// Tells the room's members (on every node) that `conn`'s user joined or
    /// left. Best effort: presence events carry no seq and are not replayed.
    pub(crate) async fn announce(&self, room: &str, event: &str, conn: &Conn) {
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

    /// Removes `conn`'s presence entry in `room` (`last_here`: this node has
    /// no members left there); returns the room's remaining entries. When
    /// Redis does not answer, keeps trying in the background.
    pub(crate) async fn forget_presence(
        &self,
        room: &str,
        conn: &Conn,
        last_here: bool,
    ) -> Option<u64> {
        match self.store.leave(room, &conn.label, last_here).await {
            Ok(left) => Some(left),
            Err(e) => {
                self.metrics.redis_errors.inc();
                tracing::debug!(room, error = %e, "presence removal failed; retrying");
                let redis = self.store.redis()?;
                let (con, metrics) = (redis.con.clone(), self.metrics.clone());
                let (room, label, holder) =
                    (room.to_owned(), conn.label.clone(), redis.holder.clone());
                let field = format!("{holder}/{label}");
                tokio::spawn(async move {
                    let started = tokio::time::Instant::now();
                    let mut backoff = turnout_common::backoff::Backoff::new(
                        Duration::from_millis(100),
                        Duration::from_secs(5),
                    );
                    while started.elapsed() < FORGET_PATIENCE {
                        backoff.wait().await;
                        let r = turnout_common::redis::rooms::leave(
                            &mut con.clone(),
                            &room,
                            &field,
                            &holder,
                            last_here,
                        )
                        .await;
                        match r {
                            Ok(_) => return,
                            Err(_) => metrics.redis_errors.inc(),
                        }
                    }
                    tracing::warn!(room, conn = %label, "presence entry could not be removed; it goes with this node's lease");
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
        let sticky = self.strategy.sticky();
        let rooms = self.room_epochs();
        if rooms.is_empty() {
            return true;
        }
        let args: Vec<(String, Option<(&str, u64)>)> = rooms
            .iter()
            .map(|(room, epoch)| {
                let owner = sticky.map(|_| (self.node_id.as_str(), *epoch));
                (room.clone(), owner)
            })
            .collect();
        let pin = sticky.map(|s| s.pin).unwrap_or_default();
        let results = match redis.renew(&args, pin).await {
            Ok(r) => r,
            Err(e) => {
                self.metrics.redis_errors.inc();
                tracing::warn!(error = %e, "renewing presence leases failed");
                return false;
            }
        };
        for ((room, epoch), renewed) in rooms.iter().zip(results) {
            if !renewed.owned {
                crate::strategy::sticky::Sticky::lost(self, room, *epoch).await;
                continue;
            }
            if renewed.lost {
                self.metrics.presence_reasserted.inc();
                let members: Vec<(String, String)> = match self.rooms.get(room) {
                    Some(r) => r
                        .members
                        .values()
                        .map(|m| (m.conn.label.clone(), m.conn.user.to_string()))
                        .collect(),
                    None => continue,
                };
                tracing::info!(
                    room,
                    members = members.len(),
                    "presence lease had lapsed; members written again"
                );
                if let Err(e) = redis.reassert(room, &members).await {
                    self.metrics.redis_errors.inc();
                    tracing::warn!(room, error = %e, "writing presence again failed");
                }
            }
        }
        true
    }
}
