//! Rooms on this node: membership, ordering and local fan-out.
//!
//! Every room message reaches members through [`Hub::deliver`], which keeps
//! the room's messages in seq order: a message that arrives early waits in
//! `pending`, a duplicate is dropped, and a gap that does not close by itself
//! within [`GAP_WAIT`] is filled from history (see `docs/DESIGN-NOTES.md`).
//! In pubsub mode messages come from the Redis bus; in sticky mode from this
//! node's own publishes.
//!
//! A joining member first buffers live messages while its `joined` reply and
//! any replay from history are queued, then the buffer is flushed above the
//! seq the reply announced: no gap, no duplicate at the hand-over.

use crate::bus::Bus;
use crate::metrics::NodeMetrics;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use dashmap::DashMap;
use futures_util::{SinkExt, StreamExt};
use redis::aio::ConnectionManager;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use turnout_common::redis::{self as store, Origin, Publisher, RoomStore};
use turnout_proto::codes::{ErrorCode, close};
use turnout_proto::frames::ServerFrame;
use turnout_proto::{Strategy, bus, keys, now_ms};

/// How long a gap in a room's seq may stay open before history is asked.
pub(crate) const GAP_WAIT: Duration = Duration::from_millis(25);

/// Without history, how long a gap may wait for late publish replies.
const REPLY_WAIT: Duration = Duration::from_secs(5);

/// Sticky: rooms up to this many members are fanned out by writing to each
/// idle member's socket in place; larger rooms queue every frame and let
/// the members' sessions write in parallel (docs/DESIGN-NOTES.md).
const DIRECT_FAN_OUT: usize = 64;

pub(crate) type ConnId = u64;

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

/// One client connection as the hub sees it.
pub(crate) struct Conn {
    pub(crate) id: ConnId,
    pub(crate) label: String,
    pub(crate) user: String,
    queue: SendQueue,
    socket: Socket,
    /// Cancelled when the connection must close; the writer then sends
    /// `close_code` (0 = normal).
    pub(crate) closed: CancellationToken,
    close_code: AtomicU16,
    /// Reason sent in the close frame instead of the code's default.
    close_reason: OnceLock<String>,
    /// Rooms this connection is in; written by its session, and by the hub
    /// when a room moves away (sticky).
    rooms: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The client's token claims, when tokens are required.
    pub(crate) claims: Option<turnout_common::auth::Claims>,
}

impl Conn {
    pub(crate) fn new(
        id: ConnId,
        label: String,
        user: String,
        send_queue: usize,
        claims: Option<turnout_common::auth::Claims>,
        socket: WebSocket,
    ) -> Self {
        Conn {
            claims,
            id,
            label,
            user,
            queue: SendQueue::new(send_queue),
            socket: Socket::new(socket),
            closed: CancellationToken::new(),
            close_code: AtomicU16::new(0),
            close_reason: OnceLock::new(),
            rooms: Default::default(),
        }
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn in_room(&self, room: &str) -> bool {
        self.rooms().contains(room)
    }

    pub(crate) fn room_count(&self) -> usize {
        self.rooms().len()
    }

    pub(crate) fn joined_room(&self, room: &str) {
        self.rooms().insert(room.to_owned());
    }

    /// Forgets `room`; returns whether the connection was in it.
    pub(crate) fn left_room(&self, room: &str) -> bool {
        self.rooms().remove(room)
    }

    pub(crate) fn take_rooms(&self) -> Vec<String> {
        self.rooms().drain().collect()
    }

    /// Closes the connection with `code` (the first code set wins).
    pub(crate) fn kill(&self, code: u16) {
        let _ = self
            .close_code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.closed.cancel();
    }

    /// Closes the connection with `code` and a reason of at most 123 bytes
    /// (the close frame's limit).
    pub(crate) fn kill_with(&self, code: u16, reason: &str) {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let _ = self.close_reason.set(reason[..end].to_owned());
        self.kill(code);
    }

    pub(crate) fn close_reason(&self) -> Option<&str> {
        self.close_reason.get().map(String::as_str)
    }

    /// Whether the connection was told to close (an atomic load; cheaper
    /// than asking the cancellation token on every delivery).
    pub(crate) fn is_closed(&self) -> bool {
        self.close_code.load(Ordering::Acquire) != 0
    }

    pub(crate) fn close_code(&self) -> u16 {
        self.close_code.load(Ordering::Acquire)
    }

    /// Sends a frame without waiting: written to the socket in place when
    /// nothing is queued or being written (see [`Conn::try_write`]), queued
    /// for the session otherwise. A full queue marks a slow consumer.
    fn push(&self, msg: Message, metrics: &NodeMetrics) -> bool {
        self.push_as(msg, metrics, true) != Sent::Dropped
    }

    /// [`Conn::push`], but with `direct` false the frame is always queued.
    fn push_as(&self, msg: Message, metrics: &NodeMetrics, direct: bool) -> Sent {
        if self.is_closed() {
            return Sent::Dropped;
        }
        let msg = if direct {
            match self.try_write(msg) {
                Ok(true) => return Sent::InPlace,
                Ok(false) => return Sent::Dropped,
                Err(msg) => msg,
            }
        } else {
            msg
        };
        if self.queue.push(msg) {
            return Sent::Queued;
        }
        metrics.slow_consumers.inc();
        tracing::debug!(conn = %self.label, "send queue full: slow consumer");
        self.kill(close::SLOW_CONSUMER);
        Sent::Dropped
    }

    /// Writes `msg` to the socket in place when the session is not writing
    /// and nothing is queued, so frames stay in order. What the socket
    /// cannot take at once stays in the WebSocket's buffer and the session
    /// flushes it. `Err` gives the frame back to be queued; `Ok(false)`:
    /// the socket failed and the connection is closing.
    fn try_write(&self, msg: Message) -> Result<bool, Message> {
        let Ok(_writing) = self.socket.writing.try_lock() else {
            return Err(msg);
        };
        if !self.queue.is_empty() {
            return Err(msg);
        }
        let mut ws = self.socket.ws();
        let Some(ws) = ws.as_mut() else {
            return Ok(false);
        };
        // The session polls with its own waker whenever it writes; what is
        // left unwritten here is handed to it below.
        let mut cx = Context::from_waker(Waker::noop());
        match ws.poll_ready_unpin(&mut cx) {
            Poll::Pending => return Err(msg),
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Ok(self.write_failed()),
        }
        if ws.start_send_unpin(msg).is_err() {
            return Ok(self.write_failed());
        }
        match ws.poll_flush_unpin(&mut cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Ok(self.write_failed()),
            Poll::Pending => {
                self.socket.unflushed.store(true, Ordering::Release);
                self.queue.ready.notify_one();
            }
        }
        Ok(true)
    }

    fn write_failed(&self) -> bool {
        self.kill(close::NORMAL);
        false
    }

    /// Waits until the session has something to write: queued frames, or
    /// bytes a direct write left in the WebSocket's buffer.
    pub(crate) async fn queued(&self) {
        loop {
            if !self.queue.is_empty() || self.socket.unflushed.load(Ordering::Acquire) {
                return;
            }
            self.queue.ready.notified().await;
        }
    }

    /// Writes what is queued, at most `max` frames per flush (all of it
    /// when `all`), holding the write turn so no direct write comes between.
    /// `batch` is scratch space, left empty.
    pub(crate) async fn write_queued(
        &self,
        batch: &mut Vec<Message>,
        max: usize,
        all: bool,
    ) -> Result<(), axum::Error> {
        let _writing = self.socket.writing.lock().await;
        loop {
            self.socket.unflushed.store(false, Ordering::Release);
            self.queue.drain_into(batch, max);
            for m in batch.drain(..) {
                self.socket.feed(m).await?;
            }
            self.socket.flush().await?;
            if batch.capacity() > 16 {
                *batch = Vec::new();
            }
            if !all || self.queue.is_empty() {
                return Ok(());
            }
        }
    }

    /// Writes one frame after everything queued or buffered before it.
    pub(crate) async fn send_now(&self, msg: Message) -> Result<(), axum::Error> {
        let _writing = self.socket.writing.lock().await;
        self.socket.feed(msg).await?;
        self.socket.flush().await
    }

    /// The client's next frame; `None` once the stream ended.
    pub(crate) async fn next_frame(&self) -> Option<Result<Message, axum::Error>> {
        std::future::poll_fn(|cx| match self.socket.ws().as_mut() {
            Some(ws) => ws.poll_next_unpin(cx),
            None => Poll::Ready(None),
        })
        .await
    }

    /// Drops the socket (closing the TCP connection) and anything queued.
    pub(crate) fn release_socket(&self) {
        self.socket.ws().take();
        self.queue.clear();
    }

    /// Queues a WebSocket ping (keepalive).
    pub(crate) fn ping(&self, metrics: &NodeMetrics) -> bool {
        self.push(Message::Ping(bytes::Bytes::new()), metrics)
    }

    /// Queues a control frame (joined, ack, error…).
    pub(crate) fn send_frame(&self, frame: &ServerFrame, metrics: &NodeMetrics) -> bool {
        self.push(Message::Text(frame.to_json().into()), metrics)
    }
}

/// What became of a frame given to [`Conn::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    InPlace,
    Queued,
    /// The connection is closing.
    Dropped,
}

/// The client's WebSocket, shared by its session (reads, queued writes) and
/// by direct writes from whoever fans a frame out.
struct Socket {
    /// Locked for the length of one poll, never across an await.
    ws: std::sync::Mutex<Option<WebSocket>>,
    /// The write turn: held by the session for a whole write (which may
    /// wait for a slow client), taken with `try_lock` by a direct write.
    writing: tokio::sync::Mutex<()>,
    /// A direct write left bytes in the WebSocket's buffer.
    unflushed: AtomicBool,
}

impl Socket {
    fn new(ws: WebSocket) -> Self {
        Socket {
            ws: std::sync::Mutex::new(Some(ws)),
            writing: tokio::sync::Mutex::new(()),
            unflushed: AtomicBool::new(false),
        }
    }

    fn ws(&self) -> std::sync::MutexGuard<'_, Option<WebSocket>> {
        self.ws.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn feed(&self, msg: Message) -> Result<(), axum::Error> {
        std::future::poll_fn(|cx| match self.ws().as_mut() {
            Some(ws) => ws.poll_ready_unpin(cx),
            None => Poll::Ready(Err(released())),
        })
        .await?;
        match self.ws().as_mut() {
            Some(ws) => ws.start_send_unpin(msg),
            None => Err(released()),
        }
    }

    async fn flush(&self) -> Result<(), axum::Error> {
        std::future::poll_fn(|cx| match self.ws().as_mut() {
            Some(ws) => ws.poll_flush_unpin(cx),
            None => Poll::Ready(Err(released())),
        })
        .await
    }
}

fn released() -> axum::Error {
    axum::Error::new(std::io::Error::from(std::io::ErrorKind::NotConnected))
}

/// A connection's bounded queue of outgoing frames. Unlike a channel, which
/// allocates a block of slots up front, it allocates nothing until the first
/// frame, keeps only a few slots while idle and gives back what a burst took.
struct SendQueue {
    frames: std::sync::Mutex<std::collections::VecDeque<Message>>,
    ready: tokio::sync::Notify,
    cap: usize,
}

impl SendQueue {
    fn new(cap: usize) -> Self {
        SendQueue {
            frames: Default::default(),
            ready: tokio::sync::Notify::new(),
            cap,
        }
    }

    fn frames(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Message>> {
        self.frames.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// False when the queue is full.
    fn push(&self, msg: Message) -> bool {
        let mut q = self.frames();
        if q.len() >= self.cap {
            return false;
        }
        let was_empty = q.is_empty();
        q.push_back(msg);
        drop(q);
        if was_empty {
            // Stores a permit when the session is not waiting yet.
            self.ready.notify_one();
        }
        true
    }

    fn is_empty(&self) -> bool {
        self.frames().is_empty()
    }

    fn clear(&self) {
        *self.frames() = Default::default();
    }

    /// Moves up to `max` frames to `out`; false when there were none.
    fn drain_into(&self, out: &mut Vec<Message>, max: usize) -> bool {
        let mut q = self.frames();
        if q.is_empty() {
            return false;
        }
        let n = q.len().min(max);
        out.extend(q.drain(..n));
        if q.is_empty() && q.capacity() > 64 {
            // Give back what a burst took.
            *q = Default::default();
        }
        true
    }
}

struct Member {
    conn: Arc<Conn>,
    /// Highest seq queued to this member.
    after: u64,
    /// While joining: live messages held back until the reply and replay are queued.
    buffer: Option<Vec<(u64, Utf8Bytes)>>,
}

#[derive(Default)]
struct Room {
    members: HashMap<ConnId, Member>,
    /// Highest seq fanned out on this node; None until the first join or message.
    last_seq: Option<u64>,
    /// Messages that arrived ahead of a gap.
    pending: BTreeMap<u64, Utf8Bytes>,
    repairing: bool,
    /// Ownership epoch this node holds the room at (sticky); 0 in pubsub.
    epoch: u64,
    /// The room's history epoch as last read from Redis.
    history_epoch: String,
}

/// Rooms and their members on this node.
pub(crate) struct Hub {
    pub(crate) node_id: String,
    pub(crate) strategy: Strategy,
    pub(crate) metrics: NodeMetrics,
    store: RoomStore,
    redis: ConnectionManager,
    rooms: DashMap<String, Room>,
    /// Set once at start in pubsub mode.
    pub(crate) bus: OnceLock<Bus>,
    send_queue: usize,
    /// How long an unused room placement is kept (sticky).
    placement_ttl: Duration,
    /// Presence lists and events stop at rooms this large.
    presence_limit: u64,
}

impl Hub {
    pub(crate) fn new(
        node_id: String,
        strategy: Strategy,
        store: RoomStore,
        redis: ConnectionManager,
        metrics: NodeMetrics,
        send_queue: usize,
        placement_ttl: Duration,
        presence_limit: u64,
    ) -> Self {
        Hub {
            node_id,
            strategy,
            metrics,
            store,
            redis,
            rooms: DashMap::new(),
            bus: OnceLock::new(),
            send_queue,
            placement_ttl,
            presence_limit,
        }
    }

    pub(crate) fn has_room(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    pub(crate) fn room_count(&self) -> usize {
        self.rooms.len()
    }

    pub(crate) fn room_names(&self) -> Vec<String> {
        self.rooms.iter().map(|r| r.key().clone()).collect()
    }

    /// Highest seq fanned out for `room`, if the room is here.
    pub(crate) fn last_seq(&self, room: &str) -> Option<u64> {
        self.rooms.get(room).and_then(|r| r.last_seq)
    }

    /// Hands a room message to the room's members, in seq order.
    pub(crate) fn deliver(self: &Arc<Self>, room: &str, seq: u64, frame: Utf8Bytes) {
        let Some(mut r) = self.rooms.get_mut(room) else {
            return;
        };
        let last = *r.last_seq.get_or_insert(seq.saturating_sub(1));
        if seq <= last {
            self.metrics.duplicates_dropped.inc();
            return;
        }
        if seq > last + 1 {
            r.pending.insert(seq, frame);
            if !r.repairing {
                r.repairing = true;
                let hub = self.clone();
                let room = room.to_owned();
                tokio::spawn(async move { hub.repair(room).await });
            }
            return;
        }
        self.fan_out(&mut r, seq, frame);
        self.drain_pending(&mut r);
    }

    fn drain_pending(&self, r: &mut Room) {
        while let Some(entry) = r.pending.first_entry() {
            let next = r.last_seq.unwrap_or(0) + 1;
            if *entry.key() < next {
                entry.remove();
                self.metrics.duplicates_dropped.inc();
            } else if *entry.key() == next {
                let frame = entry.remove();
                self.fan_out(r, next, frame);
            } else {
                break;
            }
        }
    }

    fn fan_out(&self, r: &mut Room, seq: u64, frame: Utf8Bytes) {
        r.last_seq = Some(seq);
        // In pubsub mode fan-out runs on the one task that reads the bus:
        // it only queues, so it never falls behind Redis.
        let direct = self.strategy == Strategy::Sticky && r.members.len() <= DIRECT_FAN_OUT;
        let (mut n, mut in_place) = (0, 0);
        for m in r.members.values_mut() {
            if let Some(buf) = &mut m.buffer {
                if buf.len() < self.send_queue {
                    buf.push((seq, frame.clone()));
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
    async fn repair(self: Arc<Self>, room: String) {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            tokio::time::sleep(GAP_WAIT).await;
            let (last, first_pending) = {
                let Some(mut r) = self.rooms.get_mut(&room) else {
                    return;
                };
                match r.pending.first_key_value() {
                    None => {
                        r.repairing = false;
                        return;
                    }
                    Some((&first, _)) => (r.last_seq.unwrap_or(0), first),
                }
            };
            let want = first_pending.saturating_sub(last + 1);
            let mut con = self.redis.clone();
            match store::history(&mut con, &room, last, want).await {
                Ok(slice) => {
                    let Some(mut r) = self.rooms.get_mut(&room) else {
                        return;
                    };
                    let first_found = slice.messages.first().map(|m| m.0);
                    for (seq, frame) in slice.messages {
                        if seq == r.last_seq.unwrap_or(0) + 1 && seq < first_pending {
                            self.fan_out(&mut r, seq, frame.into());
                            self.metrics.gaps_repaired.inc();
                        }
                    }
                    self.drain_pending(&mut r);
                    let now_last = r.last_seq.unwrap_or(0);
                    let same_gap = now_last == last
                        && r.pending.first_key_value().map(|(k, _)| *k) == Some(first_pending);
                    // Only a gap that stayed exactly as read, with history
                    // answering after it, is lost: any change means messages
                    // were still arriving (e.g. replies delayed by a Redis
                    // reconnect), so look again.
                    let waiting_for_replies =
                        self.store.history_size == 0 && started.elapsed() < REPLY_WAIT;
                    if same_gap && !waiting_for_replies {
                        let skip_to = first_found
                            .filter(|&f| f < first_pending)
                            .unwrap_or(first_pending)
                            - 1;
                        let lost = skip_to - now_last;
                        self.metrics.messages_unrecoverable.inc_by(lost);
                        tracing::warn!(
                            room,
                            lost,
                            "missing messages are no longer in history; skipping them"
                        );
                        r.last_seq = Some(skip_to);
                        self.drain_pending(&mut r);
                    }
                    if r.pending.is_empty() {
                        r.repairing = false;
                        return;
                    }
                }
                Err(e) => {
                    self.metrics.redis_errors.inc();
                    tracing::warn!(room, error = %e, "history read for gap repair failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// After the bus resubscribed a room, fetches what it may have missed.
    /// If the room's state in Redis was lost meanwhile (seq went back, or the
    /// history epoch changed), members are told so with a fresh `joined`
    /// (`recovered: false`, the new epoch) followed by the new epoch's history.
    pub(crate) async fn resync(self: &Arc<Self>, room: &str) {
        let Some(last) = self.last_seq(room) else {
            return;
        };
        let mut con = self.redis.clone();
        let known_epoch = self
            .rooms
            .get(room)
            .map(|r| r.history_epoch.clone())
            .unwrap_or_default();
        match store::history(&mut con, room, last, self.store.history_size.max(1)).await {
            Ok(slice)
                if slice.seq < last || (!known_epoch.is_empty() && slice.epoch != known_epoch) =>
            {
                match store::history(&mut con, room, 0, self.store.history_size.max(1)).await {
                    Ok(all) => self.reset(room, all).await,
                    Err(e) => {
                        tracing::warn!(room, error = %e, "history read after state loss failed")
                    }
                }
            }
            Ok(slice) => {
                if slice.seq > last {
                    self.metrics
                        .gaps_repaired
                        .inc_by(slice.messages.len() as u64);
                    for (seq, frame) in slice.messages {
                        self.deliver(room, seq, frame.into());
                    }
                }
            }
            Err(e) => {
                self.metrics.redis_errors.inc();
                tracing::warn!(room, error = %e, "history read after resubscribe failed");
            }
        }
    }

    /// Starts the room over at the state Redis now holds.
    async fn reset(&self, room: &str, all: store::HistorySlice) {
        let presence = self.presence(room).await.unwrap_or_default();
        let Some(mut r) = self.rooms.get_mut(room) else {
            return;
        };
        tracing::warn!(room, old_seq = ?r.last_seq, new_seq = all.seq, "room state was lost in Redis; members start over");
        self.metrics.room_resets.inc();
        r.last_seq = Some(all.seq);
        r.pending.clear();
        r.history_epoch = all.epoch.clone();
        let joined = ServerFrame::Joined {
            room: room.to_owned(),
            seq: 0,
            epoch: all.epoch.clone(),
            presence,
            recovered: Some(false),
        };
        for m in r.members.values_mut() {
            if m.buffer.is_some() {
                continue; // its own join is under way and reads the new state
            }
            m.conn.send_frame(&joined, &self.metrics);
            for (_, frame) in &all.messages {
                m.conn
                    .push(Message::Text(frame.clone().into()), &self.metrics);
            }
            m.after = all.seq;
        }
    }

    /// Joins `conn` to `room`: subscribes if needed, queues `joined` and the
    /// replay after `since`, then switches the member to live delivery.
    pub(crate) async fn join(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        room: &str,
        since: Option<u64>,
        client_epoch: Option<String>,
    ) -> Result<(), RoomError> {
        let epoch = match self.strategy {
            Strategy::Sticky => self.own(room).await?,
            Strategy::Pubsub => 0,
        };
        let already = self.rooms.get(room).and_then(|r| {
            r.members
                .get(&conn.id)
                .map(|m| (m.after, r.history_epoch.clone()))
        });
        if let Some((after, epoch)) = already {
            let presence = self.presence(room).await.unwrap_or_default();
            conn.send_frame(
                &ServerFrame::Joined {
                    room: room.to_owned(),
                    seq: after,
                    epoch,
                    presence,
                    recovered: None,
                },
                &self.metrics,
            );
            return Ok(());
        }
        let stale = {
            let mut r = self.rooms.entry(room.to_owned()).or_insert_with(|| {
                self.metrics.rooms.inc();
                Room {
                    epoch,
                    ..Room::default()
                }
            });
            // The room moved away and back since its members joined: they may
            // have missed what the other owner delivered; send them to rejoin.
            let stale = if r.epoch != epoch {
                r.epoch = epoch;
                r.last_seq = None;
                r.pending.clear();
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
                    buffer: Some(Vec::new()),
                },
            );
            stale
        };
        if !stale.is_empty() {
            self.tell_moved(room, stale, self.own_url().await);
        }
        if let Some(bus) = self.bus.get() {
            if let Err(e) = bus.ensure(room).await {
                tracing::warn!(room, error = %e, "subscribe failed");
                self.remove_member(room, conn.id).await;
                return Err(ErrorCode::Unavailable.into());
            }
        }
        let mut con = self.redis.clone();
        let (since_arg, limit) = match since {
            Some(s) => (s, self.store.history_size),
            None => (0, 0),
        };
        // History, presence entry and presence list: one round trip.
        let field = format!("{}/{}", self.node_id, conn.label);
        let read = store::join_reads(
            &mut con,
            room,
            since_arg,
            limit,
            &field,
            &conn.user,
            self.store.room_ttl,
            self.presence_limit,
        );
        let (slice, users) = match read.await {
            Ok(v) => v,
            Err(e) => {
                self.metrics.redis_errors.inc();
                tracing::warn!(room, error = %e, "join failed: Redis");
                self.remove_member(room, conn.id).await;
                return Err(ErrorCode::Unavailable.into());
            }
        };
        if let Some(mut r) = self.rooms.get_mut(room) {
            if r.last_seq.is_none() {
                r.last_seq = Some(slice.seq);
            }
            if !slice.epoch.is_empty() {
                r.history_epoch = slice.epoch.clone();
            }
        }
        // `since` counts in the epoch the client names; another epoch means
        // the room's history was lost since, and nothing can be replayed.
        let same_epoch = client_epoch
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == slice.epoch);
        let recovered = since.map(|s| same_epoch && s <= slice.seq && slice.complete);
        let replay = if same_epoch {
            slice.messages
        } else {
            Vec::new()
        };
        conn.send_frame(
            &ServerFrame::Joined {
                room: room.to_owned(),
                seq: slice.seq,
                epoch: slice.epoch.clone(),
                presence: users.users,
                recovered,
            },
            &self.metrics,
        );
        // Presence events are for rooms people can follow; a broadcast room
        // of thousands would turn every join into thousands of frames.
        if users.connections <= self.presence_limit {
            self.announce(room, "join", conn).await;
        }
        let replayed = replay.len() as u64;
        for (_, frame) in replay {
            conn.push(Message::Text(frame.into()), &self.metrics);
        }
        self.metrics.replayed.inc_by(replayed);
        let Some(mut r) = self.rooms.get_mut(room) else {
            return Ok(());
        };
        let Some(m) = r.members.get_mut(&conn.id) else {
            return Ok(());
        };
        m.after = slice.seq;
        let (mut n, mut in_place) = (0, 0);
        for (seq, frame) in m.buffer.take().unwrap_or_default() {
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
        Ok(())
    }

    /// Removes `conn` from `room`; returns whether it was a member.
    pub(crate) async fn leave(&self, room: &str, conn: &Conn) -> bool {
        let removed = self.remove_member(room, conn.id).await;
        if removed {
            let mut con = self.redis.clone();
            let key = keys::room_presence(room);
            let field = format!("{}/{}", self.node_id, conn.label);
            let r: redis::RedisResult<(u64, u64)> = redis::pipe()
                .hdel(&key, field)
                .hlen(&key)
                .query_async(&mut con)
                .await;
            match r {
                Ok((_, left)) if left < self.presence_limit => {
                    self.announce(room, "leave", conn).await
                }
                Ok(_) => {}
                Err(e) => {
                    self.metrics.redis_errors.inc();
                    tracing::debug!(room, error = %e, "presence removal failed");
                }
            }
        }
        removed
    }

    async fn remove_member(&self, room: &str, conn: ConnId) -> bool {
        let removed = match self.rooms.get_mut(room) {
            Some(mut r) => r.members.remove(&conn).is_some(),
            None => false,
        };
        if removed
            && self
                .rooms
                .remove_if(room, |_, r| r.members.is_empty())
                .is_some()
        {
            self.metrics.rooms.dec();
            if let Some(bus) = self.bus.get() {
                bus.release(room);
            }
        }
        removed
    }

    /// Users present in `room` across the cluster (at most `presence_limit`).
    pub(crate) async fn presence(&self, room: &str) -> redis::RedisResult<Vec<String>> {
        let mut con = self.redis.clone();
        Ok(store::presence(&mut con, room, self.presence_limit)
            .await?
            .users)
    }

    /// Tells the room's members (on every node) that `conn`'s user joined or
    /// left. Best effort: presence events carry no seq and are not replayed.
    async fn announce(&self, room: &str, event: &str, conn: &Conn) {
        let frame = ServerFrame::Presence {
            room: room.to_owned(),
            event: event.to_owned(),
            user: conn.user.clone(),
        };
        let json = frame.to_json();
        match self.strategy {
            Strategy::Sticky => self.deliver_presence(room, &conn.label, json.into()),
            Strategy::Pubsub => {
                let mut con = self.redis.clone();
                let r: redis::RedisResult<()> = redis::cmd("PUBLISH")
                    .arg(keys::room_channel(room))
                    .arg(bus::encode_presence(&conn.label, &json))
                    .query_async(&mut con)
                    .await;
                if let Err(e) = r {
                    self.metrics.redis_errors.inc();
                    tracing::debug!(room, error = %e, "presence event not published");
                }
            }
        }
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

    /// Publishes into `room`; returns the message's seq.
    /// `origin` is `Client` for a client's publish (which goes to the
    /// backend inbox too, when it is on) and `Api` for the server API's.
    pub(crate) async fn publish(
        self: &Arc<Self>,
        room: &str,
        from: &str,
        data: &RawValue,
        origin: Origin<'_>,
    ) -> Result<u64, RoomError> {
        let parts = bus::frame_parts(room, from, &self.node_id, now_ms(), data);
        let publisher = match self.strategy {
            Strategy::Pubsub => Publisher::Relay,
            Strategy::Sticky => {
                let epoch = match self.rooms.get(room).map(|r| r.epoch) {
                    Some(e) => e,
                    None => self.own(room).await?,
                };
                Publisher::Owner(&self.node_id, epoch)
            }
        };
        let mut con = self.redis.clone();
        let seq = store::publish(&mut con, self.store, room, &parts, publisher, origin)
            .await
            .map_err(|e| {
                self.metrics.redis_errors.inc();
                tracing::warn!(room, error = %e, "publish failed: Redis");
                ErrorCode::Unavailable
            })?;
        let Some(seq) = seq else {
            // Fenced: the room was placed elsewhere. Everyone here must move.
            self.metrics.fenced.inc();
            let redirect = self.owner_url(room).await;
            tracing::info!(
                room,
                ?redirect,
                "publish fenced: this node no longer owns the room"
            );
            let members = match self.rooms.remove(room) {
                Some((_, r)) => {
                    self.metrics.rooms.dec();
                    r.members.into_values().map(|m| m.conn).collect()
                }
                None => Vec::new(),
            };
            self.tell_moved(room, members, redirect.clone());
            return Err(RoomError {
                code: ErrorCode::WrongNode,
                redirect,
            });
        };
        self.metrics.published.inc();
        if matches!(origin, Origin::Client(_)) && self.store.inbox_size > 0 {
            self.metrics.inbox_appended.inc();
        }
        if matches!(publisher, Publisher::Owner(..)) {
            self.deliver(room, seq, parts.render(seq).into());
        }
        Ok(seq)
    }

    /// Sticky: makes sure this node owns `room` (claiming it when it has no
    /// live owner) and returns the epoch; otherwise `wrong_node` with the
    /// owner's URL.
    async fn own(&self, room: &str) -> Result<u64, RoomError> {
        let mut con = self.redis.clone();
        let owner = store::claim(&mut con, room, &self.node_id, self.placement_ttl)
            .await
            .map_err(|e| {
                self.metrics.redis_errors.inc();
                tracing::warn!(room, error = %e, "ownership check failed: Redis");
                RoomError::from(ErrorCode::Unavailable)
            })?;
        if owner.node == self.node_id {
            return Ok(owner.epoch);
        }
        let redirect = store::node_info(&mut con, &owner.node)
            .await
            .ok()
            .flatten()
            .map(|n| n.url);
        Err(RoomError {
            code: ErrorCode::WrongNode,
            redirect,
        })
    }

    async fn owner_url(&self, room: &str) -> Option<String> {
        let mut con = self.redis.clone();
        let owner = store::claim(&mut con, room, "", self.placement_ttl)
            .await
            .ok()?;
        if owner.node.is_empty() {
            return None;
        }
        store::node_info(&mut con, &owner.node)
            .await
            .ok()
            .flatten()
            .map(|n| n.url)
    }

    async fn own_url(&self) -> Option<String> {
        let mut con = self.redis.clone();
        store::node_info(&mut con, &self.node_id)
            .await
            .ok()
            .flatten()
            .map(|n| n.url)
    }

    /// Tells members of a room that moved to rejoin it at `redirect`.
    fn tell_moved(&self, room: &str, members: Vec<Arc<Conn>>, redirect: Option<String>) {
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

    /// Rooms with members here, to keep their placement pinned (sticky).
    pub(crate) fn pinned_rooms(&self) -> Vec<String> {
        self.room_names()
    }

    /// Tells every connection to reconnect elsewhere and close with 1012.
    pub(crate) fn drain_all(&self, conns: &DashMap<ConnId, Arc<Conn>>) {
        let frame = ServerFrame::Reconnect {
            reason: "draining".into(),
        };
        for c in conns.iter() {
            c.send_frame(&frame, &self.metrics);
            c.kill(close::SERVICE_RESTART);
        }
    }
}
