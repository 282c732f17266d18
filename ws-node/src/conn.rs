//! The write path to one client: its socket, its bounded send queue, and
//! the rule that keeps frames in order whoever writes them.
//!
//! A frame for a connection that has nothing queued and is not being
//! written to goes to its socket in place, by whoever sends it (no session
//! wake-up); otherwise it waits in the connection's queue, which its session
//! drains in batches (see `docs/DESIGN-NOTES.md`, "Writing to clients").

use crate::metrics::NodeMetrics;
use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::task::{Context, Poll, Waker};
use tokio_util::sync::CancellationToken;
use turnout_proto::codes::close;
use turnout_proto::frames::ServerFrame;
use turnout_proto::names::UserId;

pub(crate) type ConnId = u64;

/// One client connection as the hub sees it.
pub(crate) struct Conn {
    pub(crate) id: ConnId,
    pub(crate) label: String,
    pub(crate) user: UserId,
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
    /// The client's token claims, when tokens are required; replaced by a
    /// `refresh` (its session), read by its joins.
    claims: std::sync::Mutex<Option<turnout_common::auth::Claims>>,
    /// When the backend's connect or refresh hook said the connection ends
    /// (Unix seconds; 0: never).
    expire_at: std::sync::atomic::AtomicU64,
}

impl Conn {
    pub(crate) fn new(
        id: ConnId,
        label: String,
        user: UserId,
        send_queue: (usize, usize),
        claims: Option<turnout_common::auth::Claims>,
        socket: WebSocket,
    ) -> Self {
        Conn {
            claims: std::sync::Mutex::new(claims),
            id,
            label,
            user,
            queue: SendQueue::new(send_queue.0, send_queue.1),
            socket: Socket::new(socket),
            closed: CancellationToken::new(),
            close_code: AtomicU16::new(0),
            close_reason: OnceLock::new(),
            rooms: Default::default(),
            expire_at: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, Option<turnout_common::auth::Claims>> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the client's token allows `room` (always, without tokens).
    pub(crate) fn may_join(&self, room: &str) -> bool {
        self.claims().as_ref().is_none_or(|c| c.may_join(room))
    }

    /// Whether `sub` is the subject of the connection's token (a fresh
    /// token must be for the same one, whatever user the connect hook named).
    pub(crate) fn same_subject(&self, sub: &str) -> bool {
        self.claims().as_ref().is_some_and(|c| c.sub == sub)
    }

    /// When the connection ends (Unix seconds): its token's expiry or the
    /// backend's `expire_at`, the earlier; None without either.
    pub(crate) fn expires(&self) -> Option<u64> {
        let token = self.claims().as_ref().map(|c| c.exp);
        let hook = self.hook_expiry();
        match (token, hook) {
            (Some(t), Some(h)) => Some(t.min(h)),
            (t, h) => t.or(h),
        }
    }

    /// The backend's `expire_at` for this connection, if it set one.
    pub(crate) fn hook_expiry(&self) -> Option<u64> {
        match self.expire_at.load(std::sync::atomic::Ordering::Acquire) {
            0 => None,
            e => Some(e),
        }
    }

    /// Sets (or, with None, lifts) the backend's `expire_at`.
    pub(crate) fn set_hook_expiry(&self, at: Option<u64>) {
        self.expire_at
            .store(at.unwrap_or(0), std::sync::atomic::Ordering::Release);
    }

    /// Takes the claims of a fresh token (same subject); returns the rooms
    /// the connection is in that they no longer allow (its personal room is
    /// the user's whatever they say).
    pub(crate) fn refresh(&self, claims: turnout_common::auth::Claims) -> Vec<String> {
        let lost = self
            .rooms()
            .iter()
            .filter(|r| !claims.may_join(r) && !turnout_proto::names::is_personal(r))
            .cloned()
            .collect();
        *self.claims() = Some(claims);
        lost
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn in_room(&self, room: &str) -> bool {
        self.rooms().contains(room)
    }

    /// Rooms joined, the personal room aside (it does not count against
    /// `max_rooms_per_conn`).
    pub(crate) fn room_count(&self) -> usize {
        let rooms = self.rooms();
        rooms.len() - usize::from(rooms.iter().any(|r| turnout_proto::names::is_personal(r)))
    }

    pub(crate) fn joined_room(&self, room: &str) {
        self.rooms().insert(room.to_owned());
    }

    /// Forgets `room`; returns whether the connection was in it.
    pub(crate) fn left_room(&self, room: &str) -> bool {
        self.rooms().remove(room)
    }

    /// The rooms joined, sorted.
    pub(crate) fn room_list(&self) -> Vec<String> {
        let mut rooms: Vec<String> = self.rooms().iter().cloned().collect();
        rooms.sort();
        rooms
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
    pub(crate) fn push(&self, msg: Message, metrics: &NodeMetrics) -> bool {
        self.push_as(msg, metrics, true) != Sent::Dropped
    }

    /// [`Conn::push`], but with `direct` false the frame is always queued.
    pub(crate) fn push_as(&self, msg: Message, metrics: &NodeMetrics, direct: bool) -> Sent {
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
pub(crate) enum Sent {
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

/// A connection's bounded queue of outgoing frames, bounded in frames
/// (`send_queue`) and in bytes (`send_queue_bytes`). Unlike a channel,
/// which allocates a block of slots up front, it allocates nothing until
/// the first frame, keeps only a few slots while idle and gives back what a
/// burst took.
struct SendQueue {
    frames: std::sync::Mutex<Frames>,
    ready: tokio::sync::Notify,
    cap: usize,
    cap_bytes: usize,
}

/// The queued frames and their bytes.
#[derive(Default)]
struct Frames {
    q: std::collections::VecDeque<Message>,
    bytes: usize,
}

/// What a frame costs the queue: its payload.
fn size(m: &Message) -> usize {
    match m {
        Message::Text(t) => t.len(),
        Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
        Message::Close(_) => 2,
    }
}

impl SendQueue {
    fn new(cap: usize, cap_bytes: usize) -> Self {
        SendQueue {
            frames: Default::default(),
            ready: tokio::sync::Notify::new(),
            cap,
            cap_bytes,
        }
    }

    fn frames(&self) -> std::sync::MutexGuard<'_, Frames> {
        self.frames.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// False when the queue is full, in frames or in bytes (a frame larger
    /// than the byte bound still goes into an empty queue).
    fn push(&self, msg: Message) -> bool {
        let mut f = self.frames();
        let n = size(&msg);
        if f.q.len() >= self.cap || (!f.q.is_empty() && f.bytes + n > self.cap_bytes) {
            return false;
        }
        let was_empty = f.q.is_empty();
        f.q.push_back(msg);
        f.bytes += n;
        drop(f);
        if was_empty {
            // Stores a permit when the session is not waiting yet.
            self.ready.notify_one();
        }
        true
    }

    fn is_empty(&self) -> bool {
        self.frames().q.is_empty()
    }

    fn clear(&self) {
        *self.frames() = Default::default();
    }

    /// Moves up to `max` frames to `out`; false when there were none.
    fn drain_into(&self, out: &mut Vec<Message>, max: usize) -> bool {
        let mut f = self.frames();
        if f.q.is_empty() {
            return false;
        }
        let n = f.q.len().min(max);
        let start = out.len();
        out.extend(f.q.drain(..n));
        f.bytes -= out[start..].iter().map(size).sum::<usize>();
        if f.q.is_empty() && f.q.capacity() > 64 {
            // Give back what a burst took.
            f.q = Default::default();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize) -> Message {
        Message::Text("x".repeat(n).into())
    }

    #[test]
    fn the_send_queue_is_bounded_in_frames_and_in_bytes() {
        let q = SendQueue::new(4, 10_000);
        assert!(q.push(text(3000)) && q.push(text(3000)) && q.push(text(3000)));
        assert!(!q.push(text(3000)), "12,000 bytes would pass 10,000");
        assert!(q.push(text(500)), "a small one still fits");
        assert!(!q.push(text(1)), "4 frames: full");
        let mut out = Vec::new();
        assert!(q.drain_into(&mut out, 2));
        assert_eq!(out.len(), 2);
        assert_eq!(q.frames().bytes, 3500, "what left gives its bytes back");
        assert!(q.push(text(3000)));
        out.clear();
        q.drain_into(&mut out, 10);
        assert_eq!(q.frames().bytes, 0);
        // A frame larger than the bound goes into an empty queue alone.
        assert!(q.push(text(20_000)));
        assert!(!q.push(text(1)));
    }
}
