//! Joining and leaving a room on this node.
//!
//! A joining member is added to the room in a buffering state *before* the
//! node subscribes (pubsub) and reads the room's seq and history, so
//! anything published after that read is caught in the buffer. The node then
//! queues `joined` (with the seq it read), the replay after `since`, and
//! finally the buffered messages above that seq, and switches the member to
//! live delivery under the room's lock: no gap, no duplicate at the
//! hand-over.

use crate::conn::{Conn, ConnId, Sent};
use crate::hub::{Hub, Member, Room, RoomError};
use axum::extract::ws::Message;
use std::sync::Arc;
use turnout_proto::codes::ErrorCode;
use turnout_proto::frames::ServerFrame;
use turnout_proto::names::RoomName;

impl Hub {
    /// Joins `conn` to `room`: admits the room, registers the member,
    /// queues `joined` (unless `quiet`: the personal room a connection is
    /// put in at start) and the replay after `since`, then switches the
    /// member to live delivery.
    pub(crate) async fn join(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        room: &RoomName,
        since: Option<u64>,
        client_epoch: Option<String>,
        quiet: bool,
    ) -> Result<(), RoomError> {
        let epoch = self.strategy.admit(self, room).await?;
        if self.is_member(room, conn) {
            let presence = self.presence(room).await.unwrap_or_default();
            // The seq is read, and the frame queued, under the room's lock:
            // a message fanned out while presence was read comes before
            // this `joined`, and the seq it names counts it.
            if let Some(r) = self.rooms.get(room.as_str())
                && let Some(m) = r.members.get(&conn.id)
            {
                if quiet {
                    return Ok(());
                }
                conn.send_frame(
                    &ServerFrame::Joined {
                        room: room.to_string(),
                        seq: m.after,
                        epoch: r.seq.cursor().epoch().to_owned(),
                        presence,
                        recovered: None,
                        replay_until: None,
                    },
                    &self.metrics,
                );
                return Ok(());
            }
        }
        let stale = self.add_member(room, conn, epoch);
        if !stale.is_empty() {
            let here = crate::strategy::sticky::node_url(self, &self.node_id).await;
            self.tell_moved(room, &stale, here);
            // The joining member stays: the node keeps its lease on the room.
            self.forget_presence(room, &stale, false, true).await;
        }
        if let Err(e) = self.strategy.open(room).await {
            if self.remove_member(room, conn.id) == Some(true) {
                self.close_if_gone(room);
            }
            return Err(e);
        }
        let (since_arg, limit) = match since {
            Some(s) => (s, self.store.config(room).history_size),
            None => (0, 0),
        };
        // The read stops at the replay's byte bound (bringing one message
        // at least): a replay cut there says where (`replay_until`).
        let max_bytes = self.bounds.replay().1;
        let read = self.store.join(
            room,
            (since_arg, limit, max_bytes),
            &conn.label,
            &conn.user,
            self.bounds.presence_limit,
        );
        let (slice, mut users) = match read.await {
            Ok(v) => v,
            Err(e) => {
                self.metrics.redis_errors.inc();
                tracing::warn!(room = %room, error = %e, "join failed: Redis");
                // Redis may have run the join before failing to answer.
                let last_here = self.remove_member(room, conn.id).unwrap_or(false);
                self.forget_presence(room, std::slice::from_ref(conn), last_here, false)
                    .await;
                if last_here {
                    self.close_if_gone(room);
                }
                return Err(ErrorCode::Unavailable.into());
            }
        };
        // The room may have been taken from this node meanwhile (its members
        // were sent away): this join did not happen here.
        // (The room's guard is dropped with this statement: `join_undone`
        // below reads the same map.)
        let others = match self.rooms.get_mut(room.as_str()) {
            Some(mut r) if r.members.contains_key(&conn.id) => {
                // What arrived while the read was under way waited for it.
                let started = r.seq.start_at(slice.seq, &slice.epoch);
                for (seq, frame) in started.ready {
                    self.fan_out(&mut r, seq, frame);
                }
                if started.repair {
                    let hub = self.clone();
                    let room = room.to_string();
                    tokio::spawn(async move { hub.repair(room).await });
                }
                if started.resync {
                    let hub = self.clone();
                    let room = room.to_string();
                    tokio::spawn(async move { hub.resync(&room).await });
                }
                Some(r.members.len() > 1)
            }
            _ => None,
        };
        let Some(others) = others else {
            return self.join_undone(room, conn).await;
        };
        if !self.store.options(room).presence {
            // Kept for the node's own bookkeeping, not shown.
            users.users.clear();
        }
        if users.new_lease && others {
            // The node's lease here had lapsed and was dropped with its
            // members' entries: write them again.
            self.reassert(std::slice::from_ref(&room.to_string())).await;
        }
        // `since` counts in the epoch the client names; another epoch means
        // the room's history was lost since, and nothing can be replayed.
        let same_epoch = client_epoch
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == slice.epoch);
        let recovered = since.map(|s| same_epoch && s <= slice.seq && slice.covered);
        let mut replay = if same_epoch {
            slice.messages
        } else {
            Vec::new()
        };
        // A replay is bounded in bytes and frames: what does not fit is
        // asked for with another join (`since` = the last seq received),
        // which the jump to the live messages tells the client to send.
        let (max_frames, max_bytes) = self.bounds.replay();
        let mut bytes = 0usize;
        let mut replay_until = None;
        if let Some(cut) = replay.iter().enumerate().position(|(i, (_, f))| {
            bytes += f.len();
            bytes > max_bytes || i >= max_frames
        }) {
            replay.truncate(cut.max(1));
        }
        // Cut here or by the read's own bound: the rest is asked for.
        if let Some(&(last, _)) = replay.last().filter(|m| m.0 < slice.seq) {
            self.metrics.replays_cut.inc();
            replay_until = Some(last);
        }
        if !quiet {
            conn.send_frame(
                &ServerFrame::Joined {
                    room: room.to_string(),
                    seq: slice.seq,
                    epoch: slice.epoch.clone(),
                    presence: users.users,
                    recovered,
                    replay_until,
                },
                &self.metrics,
            );
        }
        // Presence events are for rooms people can follow; a broadcast room
        // of thousands would turn every join into thousands of frames.
        if users.connections <= self.bounds.presence_limit {
            self.announce(room, "join", conn).await;
        }
        let replayed = replay.len() as u64;
        for (_, frame) in replay {
            conn.push(Message::Text(frame.into()), &self.metrics);
        }
        self.metrics.replayed.inc_by(replayed);
        let Some(missed) = self.missed(room, conn, slice.seq, &slice.epoch).await else {
            // Redis lost the room's state after this join read it, and the
            // room started over meanwhile: what this member was told no
            // longer holds. It reconnects and resumes, and hears the room
            // started over (`recovered: false`) as the others did.
            // Its presence entry goes too, and the others, who heard it
            // join, hear it leave; the backend heard nothing of it yet.
            if let Some(last_here) = self.remove_member(room, conn.id) {
                self.forget_presence(room, std::slice::from_ref(conn), last_here, false)
                    .await;
                if users.connections <= self.bounds.presence_limit {
                    self.announce(room, "leave", conn).await;
                }
                if last_here {
                    self.close_if_gone(room);
                }
            }
            conn.send_frame(
                &ServerFrame::Reconnect {
                    reason: "room_reset".into(),
                },
                &self.metrics,
            );
            conn.kill_with(turnout_proto::codes::close::SERVICE_RESTART, "room_reset");
            return Ok(());
        };
        if !self.go_live(room, conn, slice.seq, missed) {
            return self.join_undone(room, conn).await;
        }
        // Personal rooms come and go with every connection: no events.
        if room.personal_user().is_none() {
            if users.connections == 1 {
                self.webhook(crate::webhooks::Kind::RoomOccupied, room, &conn.user);
            }
            self.webhook(crate::webhooks::Kind::MemberJoined, room, &conn.user);
        }
        Ok(())
    }

    /// A join whose member was sent away while it was under way (the room
    /// moved): its presence entry goes, and the client hears `wrong_node`.
    async fn join_undone(
        self: &Arc<Self>,
        room: &RoomName,
        conn: &Arc<Conn>,
    ) -> Result<(), RoomError> {
        let last_here = !self.has_room(room);
        self.forget_presence(room, std::slice::from_ref(conn), last_here, false)
            .await;
        Err(ErrorCode::WrongNode.into())
    }

    /// Registers `conn` in `room` as buffering. A room that moved away and
    /// back since its members joined (another ownership epoch) starts over:
    /// its members may have missed what the other owner delivered, so they
    /// are returned, to be sent to rejoin.
    fn add_member(&self, room: &RoomName, conn: &Arc<Conn>, epoch: u64) -> Vec<Arc<Conn>> {
        let mut r = self.rooms.entry(room.to_string()).or_insert_with(|| {
            self.metrics.room_gauge(room).inc();
            Room {
                epoch,
                ..Room::default()
            }
        });
        let stale = if r.epoch != epoch {
            r.epoch = epoch;
            r.seq.reset(None);
            std::mem::take(&mut r.members)
                .into_values()
                .map(|m| m.conn)
                .collect()
        } else {
            Vec::new()
        };
        r.members.insert(
            conn.id,
            Member {
                conn: conn.clone(),
                after: 0,
                buffer: Some(Box::default()),
            },
        );
        stale
    }

    /// What the joining member's buffer lacks between its read (`seq`) and
    /// where the room's order stands, read from history. A join that read
    /// less than the read that started the room here (reads of one fresh
    /// room under way at once) may have missed some: a message at or below
    /// the room's position that arrives after the start is a duplicate for
    /// the room, but not for this member. None when the room started over
    /// in another history epoch than the one this join read (Redis lost its
    /// state meanwhile).
    async fn missed(
        &self,
        room: &str,
        conn: &Arc<Conn>,
        seq: u64,
        epoch: &str,
    ) -> Option<Vec<(u64, axum::extract::ws::Utf8Bytes)>> {
        let last = {
            let Some(r) = self.rooms.get(room) else {
                return Some(Vec::new());
            };
            let now = r.seq.cursor().epoch();
            if r.seq.last().is_some() && !now.is_empty() && !epoch.is_empty() && now != epoch {
                return None;
            }
            let (Some(m), Some(last)) = (r.members.get(&conn.id), r.seq.last()) else {
                return Some(Vec::new());
            };
            match &m.buffer {
                Some(held) if !covers(&held.frames, seq, last) => last,
                _ => return Some(Vec::new()),
            }
        };
        // A short read (its byte bound) or a failed one leaves a jump in
        // seq, which the client repairs by joining again with `since`.
        Some(match self.store.history(room, seq, last - seq).await {
            // A read before the room's first message names no epoch.
            Ok(h) if h.epoch == epoch || epoch.is_empty() => {
                let found: Vec<_> = h
                    .messages
                    .into_iter()
                    .filter(|m| m.0 <= last)
                    .map(|(s, f)| (s, f.into()))
                    .collect();
                self.metrics.gaps_repaired.inc_by(found.len() as u64);
                found
            }
            // The room started over since: its next message resets it.
            Ok(_) => Vec::new(),
            Err(e) => {
                self.metrics.redis_errors.inc();
                tracing::warn!(room, error = %e, "history read for a join's missed messages failed");
                Vec::new()
            }
        })
    }

    /// Flushes what the joining member's buffer caught above `seq`, with
    /// `missed` (from history) in its place, and switches it to live
    /// delivery; false when the member is gone.
    fn go_live(
        &self,
        room: &str,
        conn: &Arc<Conn>,
        seq: u64,
        missed: Vec<(u64, axum::extract::ws::Utf8Bytes)>,
    ) -> bool {
        let Some(mut r) = self.rooms.get_mut(room) else {
            return false;
        };
        let Some(m) = r.members.get_mut(&conn.id) else {
            return false;
        };
        m.after = seq;
        let (mut n, mut in_place) = (0, 0);
        let buffer = m.buffer.take().map(|held| held.frames).unwrap_or_default();
        let frames = if missed.is_empty() {
            buffer
        } else {
            let mut all: std::collections::BTreeMap<_, _> = missed.into_iter().collect();
            all.extend(buffer);
            all.into_iter().collect()
        };
        for (seq, frame) in frames {
            if seq > m.after {
                m.after = seq;
                match m.conn.push_as(Message::Text(frame), &self.metrics, true) {
                    Sent::InPlace => (n, in_place) = (n + 1, in_place + 1),
                    Sent::Queued => n += 1,
                    Sent::Dropped => {}
                }
            }
        }
        self.metrics.deliveries.inc_by(n);
        self.metrics.deliveries_in_place.inc_by(in_place);
        true
    }

    /// Removes `conn` from `room`; returns whether it was a member.
    pub(crate) async fn leave(self: &Arc<Self>, room: &str, conn: &Arc<Conn>) -> bool {
        let Some(last_here) = self.remove_member(room, conn.id) else {
            return false;
        };
        self.left(room, conn, last_here).await;
        true
    }

    /// What follows a member's removal from `room` (`remove_member`): its
    /// presence entry goes, and the others hear it left.
    pub(crate) async fn left(self: &Arc<Self>, room: &str, conn: &Arc<Conn>, last_here: bool) {
        let left = self
            .forget_presence(room, std::slice::from_ref(conn), last_here, true)
            .await;
        if left.is_some_and(|n| n < self.bounds.presence_limit) {
            self.announce(room, "leave", conn).await;
        }
        if last_here {
            self.close_if_gone(room);
        }
    }

    /// Stops following `room` here (the strategy's `close`) unless it has
    /// members here again. It comes after a leave is announced, not with
    /// the removal: with relay the announcement travels up the room's
    /// follow stream, which closing ends. The check and the close hold the
    /// room's map shard, so no join slips between them (a join's `open`
    /// follows its `add_member`).
    pub(crate) fn close_if_gone(&self, room: &str) {
        if let dashmap::Entry::Vacant(_held) = self.rooms.entry(room.to_owned()) {
            self.strategy.close(room);
        }
    }

    /// Takes `conn` out of `room`'s members; None when it was not one,
    /// otherwise whether it was the last one here (the room is then gone
    /// here, and the caller closes it with [`Hub::close_if_gone`]).
    pub(crate) fn remove_member(&self, room: &str, conn: ConnId) -> Option<bool> {
        let removed = match self.rooms.get_mut(room) {
            Some(mut r) => r.members.remove(&conn).is_some(),
            None => false,
        };
        if !removed {
            return None;
        }
        let emptied = self
            .rooms
            .remove_if(room, |_, r| r.members.is_empty())
            .is_some();
        if emptied {
            self.metrics.room_gauge(room).dec();
        }
        Some(emptied)
    }
}

/// Whether `buffer` (seqs ascending, as fanned out) holds every seq after
/// `after` up to `last`.
fn covers<F>(buffer: &[(u64, F)], after: u64, last: u64) -> bool {
    let mut next = after + 1;
    for &(seq, _) in buffer {
        if next > last {
            break;
        }
        if seq == next {
            next += 1;
        } else if seq > next {
            return false;
        }
    }
    next > last
}

#[cfg(test)]
mod tests {
    use super::covers;

    fn buffer(seqs: &[u64]) -> Vec<(u64, ())> {
        seqs.iter().map(|&s| (s, ())).collect()
    }

    #[test]
    fn a_buffer_covers_what_follows_the_read() {
        assert!(covers(&buffer(&[]), 5, 5), "nothing since the read");
        assert!(covers(&buffer(&[6, 7]), 5, 7));
        // Released at the start: at or below this member's read as well.
        assert!(covers(&buffer(&[3, 4, 5, 6, 7]), 5, 7));
        assert!(
            covers(&buffer(&[6, 7, 8]), 5, 7),
            "ahead of the room's last is fine"
        );
        // Another join's read started the room at 7; 6 came after it.
        assert!(!covers(&buffer(&[]), 5, 7));
        assert!(!covers(&buffer(&[7]), 5, 7));
        assert!(!covers(&buffer(&[6, 8]), 5, 8));
        assert!(!covers(&buffer(&[6]), 5, 7));
        assert!(
            covers(&buffer(&[6, 9]), 5, 6),
            "past the room's last says nothing"
        );
    }
}
