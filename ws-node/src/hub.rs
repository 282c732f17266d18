//! Rooms on this node: who is in them, and in-order fan-out.
//!
//! Every room message reaches members through [`Hub::deliver`], which runs
//! it through the room's [`Sequencer`]: the next seq goes out at once, an
//! early one waits, a duplicate is dropped, and a gap that does not close by
//! itself within [`GAP_WAIT`] is filled from history (see
//! `docs/DESIGN-NOTES.md`). Where messages come from is the strategy's
//! business (`crate::strategy`); joining and leaving are in `crate::join`,
//! presence in `crate::presence`.

use crate::conn::{Conn, ConnId, Sent};
use crate::metrics::NodeMetrics;
use crate::sequencer::{Offer, Sequencer};
use crate::store::Store;
use crate::strategy::Strategy;
use axum::extract::ws::{Message, Utf8Bytes};
use dashmap::DashMap;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use turnout_common::redis::{HistorySlice, Origin, Published, Publisher};
use turnout_proto::bus::FrameParts;
use turnout_proto::codes::{ErrorCode, close};
use turnout_proto::frames::ServerFrame;
use turnout_proto::names::RoomName;

/// How long a gap in a room's seq may stay open before history is asked.
pub(crate) const GAP_WAIT: Duration = Duration::from_millis(25);

/// Without history, how long a gap may wait for late publish replies.
const REPLY_WAIT: Duration = Duration::from_secs(5);

/// A refused join or publish: the code, and where the room lives when it is
/// owned by another node (sticky).
#[derive(Debug, Clone)]
pub(crate) struct RoomError {
    pub(crate) code: ErrorCode,
    pub(crate) redirect: Option<String>,
}

impl From<ErrorCode> for RoomError {
    fn from(code: ErrorCode) -> Self {
        RoomError {
            code,
            redirect: None,
        }
    }
}

pub(crate) struct Member {
    pub(crate) conn: Arc<Conn>,
    /// Highest seq queued to this member.
    pub(crate) after: u64,
    /// While joining: live messages held back until the reply and replay
    /// are queued (boxed: a member is in every room's map, and most are
    /// not joining).
    pub(crate) buffer: Option<Box<Held>>,
}

/// Live messages held back from a joining member, and their bytes (bounded
/// like the send queue).
#[derive(Default)]
pub(crate) struct Held {
    pub(crate) frames: Vec<(u64, Utf8Bytes)>,
    pub(crate) bytes: usize,
}

/// What the hub holds per connection and sends per join, at most.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// A connection's send queue, in frames and in bytes.
    pub(crate) send_queue: usize,
    pub(crate) send_queue_bytes: usize,
    /// Presence lists and events stop at rooms this large.
    pub(crate) presence_limit: u64,
    /// Bytes one join's replay sends at most.
    pub(crate) max_replay_bytes: usize,
}

impl Bounds {
    /// What one join's replay may queue: `max_replay_bytes`, and half the
    /// send queue (in frames and bytes), so that a replay never fills it
    /// on its own (the client asks for the rest: `replay_until`).
    pub(crate) fn replay(&self) -> (usize, usize) {
        (
            (self.send_queue / 2).max(1),
            self.max_replay_bytes.min(self.send_queue_bytes / 2).max(1),
        )
    }
}

#[derive(Default)]
pub(crate) struct Room {
    pub(crate) members: HashMap<ConnId, Member>,
    pub(crate) seq: Sequencer<Utf8Bytes>,
    /// Ownership epoch this node holds the room at (sticky); 0 otherwise.
    pub(crate) epoch: u64,
    /// A message showed the room's state was lost: a reset is under way.
    pub(crate) resetting: bool,
    /// A catch-up from history is under way ([`Hub::catch_up`]); `again`:
    /// another was asked for meanwhile, so it reads once more.
    pub(crate) catching_up: bool,
    pub(crate) catch_up_again: bool,
    /// The room's seq in Redis at the last renewal: a node that has not
    /// delivered that far by the next one missed a message.
    pub(crate) stored_seq: u64,
}

/// Rooms and their members on this node.
pub(crate) struct Hub {
    pub(crate) node_id: String,
    pub(crate) metrics: NodeMetrics,
    pub(crate) strategy: Strategy,
    pub(crate) store: Store,
    pub(crate) rooms: DashMap<String, Room>,
    pub(crate) bounds: Bounds,
    /// Room and member events for the backend, when `webhook_url` is set.
    pub(crate) webhooks: std::sync::OnceLock<crate::webhooks::Webhooks>,
}

impl Hub {
    /// Tells the backend about `room` and `user`, when webhooks are on.
    pub(crate) fn webhook(&self, kind: crate::webhooks::Kind, room: &str, user: &str) {
        if let Some(w) = self.webhooks.get() {
            w.send(kind, room, user);
        }
    }

    pub(crate) fn has_room(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    /// Rooms with members here, personal rooms aside.
    pub(crate) fn room_count(&self) -> usize {
        self.metrics.rooms.get().max(0) as usize
    }

    pub(crate) fn room_names(&self) -> Vec<String> {
        self.rooms.iter().map(|r| r.key().clone()).collect()
    }

    /// Whether `conn` is a member of `room` here.
    pub(crate) fn is_member(&self, room: &str, conn: &Conn) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|r| r.members.contains_key(&conn.id))
    }

    /// Highest seq fanned out for `room`, if the room is here.
    pub(crate) fn last_seq(&self, room: &str) -> Option<u64> {
        self.rooms.get(room).and_then(|r| r.seq.last())
    }

    /// The ownership epoch this node holds `room` at, if the room is here.
    pub(crate) fn room_epoch(&self, room: &str) -> Option<u64> {
        self.rooms.get(room).map(|r| r.epoch)
    }

    /// Every room here with its epoch.
    pub(crate) fn room_epochs(&self) -> Vec<(String, u64)> {
        self.rooms
            .iter()
            .map(|r| (r.key().clone(), r.epoch))
            .collect()
    }

    /// Runs the store's publish, counting it; None when fenced (sticky).
    pub(crate) async fn store_publish(
        &self,
        room: &RoomName,
        parts: &FrameParts,
        publisher: Publisher<'_>,
        origin: Origin<'_>,
        id: Option<&str>,
    ) -> Result<Option<Published>, RoomError> {
        let published = self
            .store
            .publish(room, parts, publisher, origin, id)
            .await
            .map_err(|e| {
                self.metrics.redis_errors.inc();
                tracing::warn!(room = %room, error = %e, "publish failed: Redis");
                RoomError::from(ErrorCode::Unavailable)
            })?;
        match &published {
            Some(p) if p.duplicate => {
                self.metrics.publish_duplicates.inc();
                tracing::debug!(room = %room, seq = p.seq, "publish id seen before: acked, not published again");
            }
            Some(_) => {
                self.metrics.published.inc();
                if matches!(origin, Origin::Client(_)) && self.store.global_config().inbox_size > 0
                {
                    self.metrics.inbox_appended.inc();
                }
            }
            None => {}
        }
        Ok(published)
    }

    /// Publishes into `room` the strategy's way. `origin` is `Client` for
    /// a client's publish (which goes to the backend inbox too, when it is
    /// on) and `Api` for the server API's; `id`, the publish id (or
    /// idempotency key), makes a resend within `dedupe_window` an ack of
    /// the first.
    #[tracing::instrument(target = "otel", name = "node.publish", skip_all, fields(room = %room, node = %self.node_id))]
    pub(crate) async fn publish(
        self: &Arc<Self>,
        room: &RoomName,
        from: &str,
        data: &serde_json::value::RawValue,
        origin: Origin<'_>,
        id: Option<&str>,
    ) -> Result<Published, RoomError> {
        let parts = turnout_proto::bus::frame_parts(
            room,
            from,
            &self.node_id,
            turnout_proto::now_ms(),
            data,
        );
        self.strategy.publish(self, room, &parts, origin, id).await
    }

    /// Hands a room message (seq in history epoch `epoch`) to the room's
    /// members, in seq order. A message of another epoch means Redis lost
    /// the room's state: the room starts over from what Redis holds now.
    pub(crate) fn deliver(self: &Arc<Self>, room: &str, seq: u64, epoch: &str, frame: Utf8Bytes) {
        let Some(mut r) = self.rooms.get_mut(room) else {
            return;
        };
        if r.resetting {
            return; // the reset reads what Redis holds, this message included
        }
        if r.seq.epoch_changed(epoch) {
            r.resetting = true;
            drop(r);
            let hub = self.clone();
            let room = room.to_owned();
            tokio::spawn(async move { hub.resync(&room).await });
            return;
        }
        self.offer(&mut r, room, seq, frame);
    }

    /// Runs one message of the room's current epoch through its sequencer.
    fn offer(self: &Arc<Self>, r: &mut Room, room: &str, seq: u64, frame: Utf8Bytes) {
        match r.seq.offer(seq, frame) {
            Offer::Now(frame) => {
                self.fan_out(r, seq, frame);
                while let Some((seq, frame)) = r.seq.next_ready() {
                    self.fan_out(r, seq, frame);
                }
            }
            Offer::Duplicate => self.metrics.duplicates_dropped.inc(),
            Offer::Held { repair: true } => {
                let hub = self.clone();
                let room = room.to_owned();
                tokio::spawn(async move { hub.repair(room).await });
            }
            Offer::Held { repair: false } => {}
        }
    }

    pub(crate) fn fan_out(&self, r: &mut Room, seq: u64, frame: Utf8Bytes) {
        if let Some(ts) = turnout_proto::bus::frame_ts(frame.as_bytes()) {
            let late = turnout_proto::now_ms().saturating_sub(ts);
            self.metrics.delivery_seconds.observe(late as f64 / 1000.0);
        }
        let direct = self.strategy.direct_fan_out(r.members.len());
        let (mut n, mut in_place) = (0, 0);
        for m in r.members.values_mut() {
            if let Some(buf) = &mut m.buffer {
                let fits = buf.frames.len() < self.bounds.send_queue
                    && buf.bytes + frame.len() <= self.bounds.send_queue_bytes;
                if fits {
                    buf.bytes += frame.len();
                    buf.frames.push((seq, frame.clone()));
                } else {
                    m.conn.kill(close::SLOW_CONSUMER);
                }
            } else if seq > m.after {
                m.after = seq;
                match m
                    .conn
                    .push_as(Message::Text(frame.clone()), &self.metrics, direct)
                {
                    Sent::InPlace => (n, in_place) = (n + 1, in_place + 1),
                    Sent::Queued => n += 1,
                    Sent::Dropped => {}
                }
            }
        }
        self.metrics.deliveries.inc_by(n);
        self.metrics.deliveries_in_place.inc_by(in_place);
    }

    /// Fills a gap in `room` from history, or skips it when history no longer
    /// holds the missing messages (members then see the jump in seq).
    pub(crate) async fn repair(self: Arc<Self>, room: String) {
        let started = tokio::time::Instant::now();
        let mut backoff = turnout_common::backoff::Backoff::new(
            Duration::from_millis(50),
            Duration::from_secs(2),
        );
        loop {
            tokio::time::sleep(GAP_WAIT).await;
            let Some((last, first_pending)) =
                self.rooms.get_mut(&room).and_then(|mut r| r.seq.gap())
            else {
                return;
            };
            let want = first_pending.saturating_sub(last + 1);
            let slice = match self.store.history(&room, last, want).await {
                Ok(slice) => slice,
                Err(e) => {
                    self.metrics.redis_errors.inc();
                    tracing::warn!(room, error = %e, "history read for gap repair failed; retrying");
                    backoff.wait().await;
                    continue;
                }
            };
            let Some(mut r) = self.rooms.get_mut(&room) else {
                return;
            };
            if !slice.epoch.is_empty()
                && !r.seq.cursor().epoch().is_empty()
                && slice.epoch != r.seq.cursor().epoch()
            {
                return; // the room started over; its next message resets it
            }
            let first_found = slice.messages.first().map(|m| m.0);
            let found = slice
                .messages
                .into_iter()
                .map(|(s, f)| (s, Utf8Bytes::from(f)));
            let filled = r.seq.fill(found, first_pending);
            self.metrics.gaps_repaired.inc_by(filled.from_history);
            for (seq, frame) in filled.ready {
                self.fan_out(&mut r, seq, frame);
            }
            // Only a gap that stayed exactly as read, with history answering
            // after it, is lost: any change means messages were still
            // arriving (e.g. replies delayed by a Redis reconnect).
            let waiting_for_replies =
                self.store.config(&room).history_size == 0 && started.elapsed() < REPLY_WAIT;
            if !waiting_for_replies
                && let Some((lost, ready)) = r.seq.give_up(last, first_pending, first_found)
            {
                self.metrics.messages_unrecoverable.inc_by(lost);
                tracing::warn!(
                    room,
                    lost,
                    "missing messages are no longer in history; skipping them"
                );
                for (seq, frame) in ready {
                    self.fan_out(&mut r, seq, frame);
                }
            }
            if r.seq.settled() {
                return;
            }
        }
    }

    /// Delivers what history holds beyond what this room's members got, in
    /// the background: after a publish whose outcome is unknown (its reply
    /// was lost: the message may be stored, and a quiet room would show no
    /// gap), or when the room's seq in Redis stayed ahead of what was
    /// delivered. Retried until Redis answers or the room is gone from this
    /// node; one at a time per room.
    pub(crate) fn catch_up(self: &Arc<Self>, room: &str) {
        {
            let Some(mut r) = self.rooms.get_mut(room) else {
                return;
            };
            if r.catching_up {
                r.catch_up_again = true;
                return;
            }
            r.catching_up = true;
        }
        let hub = self.clone();
        let room = room.to_owned();
        tokio::spawn(async move {
            let mut backoff = turnout_common::backoff::Backoff::new(
                Duration::from_millis(50),
                Duration::from_secs(2),
            );
            loop {
                let read = hub.resync(&room).await;
                let Some(mut r) = hub.rooms.get_mut(&room) else {
                    return;
                };
                if read && !std::mem::take(&mut r.catch_up_again) {
                    r.catching_up = false;
                    return;
                }
                drop(r);
                if !read {
                    backoff.wait().await;
                }
            }
        });
    }

    /// After the bus resubscribed a room, fetches what it may have missed.
    /// If the room's state in Redis was lost meanwhile (seq went back, or the
    /// history epoch changed), members are told so with a fresh `joined`
    /// (`recovered: false`, the new epoch) followed by the new epoch's history.
    /// False when Redis did not answer.
    pub(crate) async fn resync(self: &Arc<Self>, room: &str) -> bool {
        let Some(cursor) = self.rooms.get(room).and_then(|r| {
            r.seq.last()?;
            Some(r.seq.cursor().clone())
        }) else {
            if let Some(mut r) = self.rooms.get_mut(room) {
                r.resetting = false;
            }
            return true;
        };
        let keep = self.store.config(room).history_size.max(1);
        let resetting = self.rooms.get(room).is_some_and(|r| r.resetting);
        let mut read = true;
        let mut from = cursor.last();
        loop {
            match self.store.history(room, from, keep).await {
                Ok(slice) if resetting || cursor.lost_state(&slice) => {
                    match self.store.history(room, 0, keep).await {
                        Ok(all) => self.reset(room, all).await,
                        Err(e) => {
                            read = false;
                            self.metrics.redis_errors.inc();
                            tracing::warn!(room, error = %e, "history read after state loss failed")
                        }
                    }
                }
                Ok(slice) => {
                    let last = slice.messages.last().map(|m| m.0);
                    if slice.seq > from {
                        self.metrics
                            .gaps_repaired
                            .inc_by(slice.messages.len() as u64);
                        for (seq, frame) in slice.messages {
                            self.deliver(room, seq, &slice.epoch, frame.into());
                        }
                    }
                    // A read is bounded in bytes: read on after it.
                    if let Some(last) = last.filter(|&l| l < slice.seq && l > from) {
                        from = last;
                        continue;
                    }
                }
                Err(e) => {
                    read = false;
                    self.metrics.redis_errors.inc();
                    tracing::warn!(room, error = %e, "history read to catch up failed");
                }
            }
            break;
        }
        if let Some(mut r) = self.rooms.get_mut(room) {
            // A failed reset is tried again at the room's next message.
            r.resetting = false;
        }
        read
    }

    /// Starts the room over at the state Redis now holds.
    async fn reset(self: &Arc<Self>, room: &str, all: HistorySlice) {
        let presence = self.presence(room).await.unwrap_or_default();
        let Some(mut r) = self.rooms.get_mut(room) else {
            return;
        };
        if r.seq.in_epoch(&all.epoch) {
            // Another resync (the bus's, a new epoch's message, a catch-up)
            // started the room over at this epoch already: within an epoch
            // seq never goes back, so what this read brings beyond it is
            // delivered as usual, and nothing is replayed twice.
            for (seq, frame) in all.messages {
                self.offer(&mut r, room, seq, frame.into());
            }
            return;
        }
        tracing::warn!(room, old_seq = ?r.seq.last(), new_seq = all.seq, "room state was lost in Redis; members start over");
        self.metrics.room_resets.inc();
        // A read is bounded in bytes: what it did not bring comes as a gap.
        let upto = if all.complete {
            all.seq
        } else {
            all.messages.last().map_or(0, |m| m.0)
        };
        r.seq.reset(Some((upto, &all.epoch)));
        let joined = ServerFrame::Joined {
            room: room.to_owned(),
            seq: 0,
            epoch: all.epoch.clone(),
            presence,
            recovered: Some(false),
            replay_until: None,
        };
        let r = &mut *r;
        for m in r.members.values_mut() {
            if m.buffer.is_some() {
                continue; // its own join is under way and reads the new state
            }
            m.conn.send_frame(&joined, &self.metrics);
            for (_, frame) in &all.messages {
                m.conn
                    .push(Message::Text(frame.clone().into()), &self.metrics);
            }
            m.after = upto;
        }
    }

    /// Sends every member of `room` away to rejoin at `redirect` (the room
    /// moved to another node), if this node still holds it at `epoch`;
    /// their presence entries go with them.
    pub(crate) async fn evict(
        self: &Arc<Self>,
        room: &str,
        epoch: Option<u64>,
        redirect: Option<String>,
    ) {
        let removed = self
            .rooms
            .remove_if(room, |_, r| epoch.is_none_or(|e| r.epoch == e));
        let Some((_, r)) = removed else {
            return;
        };
        self.metrics.room_gauge(room).dec();
        self.strategy.close(room);
        let members: Vec<Arc<Conn>> = r.members.into_values().map(|m| m.conn).collect();
        self.tell_moved(room, &members, redirect);
        self.forget_presence(room, &members, true, true).await;
    }

    /// Tells members of a room that moved to rejoin it at `redirect`.
    pub(crate) fn tell_moved(&self, room: &str, members: &[Arc<Conn>], redirect: Option<String>) {
        for conn in members {
            conn.send_frame(
                &ServerFrame::Error {
                    code: ErrorCode::WrongNode.as_str().to_owned(),
                    message: "the room moved to another node; rejoin there with since".into(),
                    room: Some(room.to_owned()),
                    id: None,
                    redirect: redirect.clone(),
                },
                &self.metrics,
            );
            conn.left_room(room);
        }
    }

    /// Tells every connection to reconnect elsewhere (`reason`: draining,
    /// lease_lost) and closes it with 1012.
    pub(crate) fn send_away(&self, conns: &DashMap<ConnId, Arc<Conn>>, reason: &str) {
        let frame = ServerFrame::Reconnect {
            reason: reason.into(),
        };
        for c in conns.iter() {
            c.send_frame(&frame, &self.metrics);
            // The close says why too (`draining`, `lease_lost`).
            c.kill_with(close::SERVICE_RESTART, reason);
        }
    }
}

impl Hub {
    /// A hub with the strategy and store chosen at start.
    pub(crate) fn new(
        node_id: String,
        metrics: NodeMetrics,
        strategy: Strategy,
        store: Store,
        bounds: Bounds,
    ) -> Self {
        Hub {
            node_id,
            metrics,
            strategy,
            store,
            rooms: DashMap::new(),
            bounds,
            webhooks: std::sync::OnceLock::new(),
        }
    }
}
