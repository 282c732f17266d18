//! Room streams for backends: gRPC `Subscribe` and SSE `/api/rooms/{room}/events`.
//!
//! Every message's publish script also publishes it on the room's Redis
//! channel, in both strategies, so a gateway follows a room the same way
//! whatever the strategy: one RESP3 pub/sub connection per gateway carries
//! every followed room, and each room has one in-process broadcast ring
//! (`subscriber_buffer` messages) that its streams read.
//!
//! A stream keeps the last seq it sent and never sends a seq twice or out of
//! order. It starts by subscribing, then reads history after `since` (or just
//! the room's current seq for a live-only stream), so the hand-over from
//! history to live messages has no gap. Whatever it misses later (a jump in
//! seq, a ring it fell behind on, a Redis reconnect) it reads back from
//! history; what history no longer holds shows as a jump in seq. When Redis
//! lost the room's state (its history epoch changed, or seq went backwards)
//! the stream says `reset` and continues from the room's new first message.

use crate::state::ApiError;
use bytes::Bytes;
use prometheus::{IntCounter, IntGauge};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use turnout_common::recovery::{Cursor, Step};
use turnout_common::redis::Con;
use turnout_common::redis::{HistorySlice, RoomPushes};
use turnout_proto::codes::ErrorCode;
use turnout_proto::names::RoomName;

/// Items queued between a stream's task and its HTTP/gRPC response.
const STREAM_QUEUE: usize = 64;
/// Messages one history read returns while a stream catches up.
const CATCH_UP_PAGE: u64 = 1000;

/// An item on its way to a stream's response, holding its bytes' share of
/// the stream's buffer (`stream_buffer_bytes`) until it is taken.
pub(crate) struct Queued {
    pub(crate) item: Item,
    _bytes: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// What a stream hands to its response.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// A room message: its seq, the history epoch it counts in, and the
    /// frame WebSocket clients get.
    Message {
        seq: u64,
        epoch: Arc<str>,
        frame: Arc<str>,
    },
    /// Redis lost the room's state: seq starts over after this.
    Reset { epoch: String, seq: u64 },
}

#[derive(Clone)]
enum Event {
    /// Seq, the history epoch it counts in, frame.
    Message(u64, Arc<str>, Arc<str>),
    /// The room's channel was (re)subscribed, or a message did not fit the
    /// ring's bytes: read what may have been missed.
    Resync,
}

/// How much a gateway buffers for its room streams.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// Each followed room's ring, in messages and in bytes.
    pub(crate) ring: usize,
    pub(crate) ring_bytes: usize,
    /// Bytes one stream may have queued for its response.
    pub(crate) stream_bytes: usize,
    /// The pub/sub connection's buffer, in pushes and bytes.
    pub(crate) bus: usize,
    pub(crate) bus_bytes: usize,
}

struct Feed {
    tx: broadcast::Sender<Event>,
    streams: usize,
    /// The sizes of the messages the ring holds, as it holds them (the
    /// last `ring` sent, less those every stream has read), and their sum:
    /// a message that would take it past `ring_bytes` goes as a `Resync`
    /// instead, and streams read it from history.
    sizes: std::collections::VecDeque<usize>,
    bytes: usize,
}

#[derive(Clone)]
pub(crate) struct FollowMetrics {
    pub(crate) streams: IntGauge,
    pub(crate) rooms: IntGauge,
    pub(crate) sent: IntCounter,
    pub(crate) caught_up: IntCounter,
    pub(crate) resets: IntCounter,
    pub(crate) ring_full: IntCounter,
    pub(crate) push_dropped: IntCounter,
    pub(crate) redis_disconnects: IntCounter,
    pub(crate) redis_errors: IntCounter,
}

/// Where a gateway hears a room's messages.
enum Source {
    /// The room's Redis channel (sticky, pubsub).
    Bus(turnout_common::redis::Channels),
    /// A follow stream from the room's owner node (relay); personal rooms,
    /// which have no owner in relay, on their Redis channel as in sticky.
    Relay(
        Arc<turnout_common::relay::Links>,
        turnout_common::redis::Channels,
    ),
}

/// Follows rooms for the streams of one gateway.
pub(crate) struct Follower {
    feeds: Mutex<HashMap<String, Feed>>,
    channels: Source,
    redis: Con,
    bounds: Bounds,
    /// Who holds streams, and how many each may.
    pub(crate) book: Arc<crate::streams::Book>,
    metrics: FollowMetrics,
    stop: CancellationToken,
}

/// How a stream is opened: by whom, and until when (a client token's end).
pub(crate) struct Open {
    pub(crate) holder: crate::streams::Holder,
    pub(crate) until: Option<tokio::time::Instant>,
    /// The API for logs ("sse", "grpc").
    pub(crate) kind: &'static str,
}

impl Follower {
    /// Relay: a client of `owner`'s `Relay` service (None in the other
    /// strategies).
    pub(crate) async fn relay_client(&self, owner: &str) -> Option<turnout_common::relay::Client> {
        match &self.channels {
            Source::Relay(links, _) => links.client(owner).await.ok(),
            Source::Bus(_) => None,
        }
    }

    /// Connects the pub/sub connection and starts its tasks. `relay`
    /// (strategy relay: the gateway's id and the internal token): rooms are
    /// followed at their owners, personal rooms (which have no owner there)
    /// on their channel.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start(
        client: &turnout_common::redis::Redis,
        redis: Con,
        bounds: Bounds,
        book: Arc<crate::streams::Book>,
        metrics: FollowMetrics,
        readiness: turnout_common::readiness::Readiness,
        stop: CancellationToken,
        relay: Option<(&str, turnout_common::auth::InternalToken)>,
    ) -> redis::RedisResult<Arc<Self>> {
        let (con, push_rx) = turnout_common::redis::pubsub_bounded(
            client,
            bounds.bus,
            bounds.bus_bytes,
            metrics.push_dropped.clone(),
        )
        .await?;
        let links = relay.map(|(me, token)| {
            turnout_common::relay::Links::new(
                turnout_common::relay::Settings {
                    me: me.to_owned(),
                    token,
                    pin: crate::strategy::RELAY_PIN,
                    load_factor: turnout_common::placement::LOAD_FACTOR,
                },
                redis.clone(),
                turnout_common::relay::LinkMetrics::default(),
                stop.clone(),
            )
        });
        let follower = Arc::new_cyclic(|me: &std::sync::Weak<Follower>| {
            let me = me.clone();
            let wanted = move |room: &str| {
                me.upgrade()
                    .is_some_and(|f| f.wanted(room) && f.on_channel(room))
            };
            let channels = turnout_common::redis::Channels::start(
                con.clone(),
                wanted,
                metrics.redis_errors.clone(),
                stop.clone(),
            );
            Follower {
                feeds: Mutex::new(HashMap::new()),
                channels: match &links {
                    Some(links) => Source::Relay(links.clone(), channels),
                    None => Source::Bus(channels),
                },
                redis,
                bounds,
                book,
                metrics: metrics.clone(),
                stop: stop.clone(),
            }
        });
        if let Some(links) = &links {
            let weak: std::sync::Weak<dyn turnout_common::relay::Follower> =
                Arc::downgrade(&follower) as _;
            links.set_follower(weak);
        }
        tokio::spawn(turnout_common::redis::read_room_pushes(
            push_rx,
            follower.clone(),
            stop.clone(),
        ));
        tokio::spawn(turnout_common::redis::watchdog(
            con,
            metrics.redis_errors,
            readiness,
            stop,
        ));
        Ok(follower)
    }

    /// Whether `room` is heard on its Redis channel (not at an owner).
    fn on_channel(&self, room: &str) -> bool {
        match &self.channels {
            Source::Bus(_) => true,
            Source::Relay(..) => turnout_proto::names::is_personal(room),
        }
    }

    fn feeds(&self) -> std::sync::MutexGuard<'_, HashMap<String, Feed>> {
        self.feeds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a stream of `room`'s messages after `since` (0: live only)
    /// in history epoch `epoch` ("": whatever the room's is now; another
    /// than the room's means its state was lost since, and the stream says
    /// `reset` first).
    pub(crate) async fn stream(
        self: &Arc<Self>,
        room: &RoomName,
        since: u64,
        epoch: &str,
        open: Open,
    ) -> Result<mpsc::Receiver<Result<Queued, ApiError>>, ApiError> {
        let room = room.as_str();
        let kind = open.kind;
        let ticket = self.book.admit(open.holder)?;
        let (rx, guard) = {
            let mut feeds = self.feeds();
            let feed = feeds.entry(room.to_owned()).or_insert_with(|| {
                self.metrics.rooms.inc();
                Feed {
                    tx: broadcast::channel(self.bounds.ring).0,
                    streams: 0,
                    sizes: Default::default(),
                    bytes: 0,
                }
            });
            feed.streams += 1;
            self.metrics.streams.inc();
            let guard = StreamGuard {
                follower: self.clone(),
                room: room.to_owned(),
            };
            (feed.tx.subscribe(), guard)
        };
        // Subscribed before history is read: nothing falls between the two.
        let ensured = match &self.channels {
            Source::Relay(links, _) if !self.on_channel(room) => links
                .attach(room)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Source::Bus(c) | Source::Relay(_, c) => c.ensure(room).await,
        };
        if let Err(e) = ensured {
            tracing::warn!(room, error = %e, "cannot subscribe to the room's channel");
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "cannot follow the room now; retry",
            ));
        }
        let (out, out_rx) = mpsc::channel(STREAM_QUEUE);
        let mut state = StreamState {
            follower: self.clone(),
            room: room.to_owned(),
            cursor: Cursor::new(since, epoch),
            out,
            bytes: Arc::new(tokio::sync::Semaphore::new(self.bounds.stream_bytes)),
            until: open.until,
            ticket,
            _guard: guard,
        };
        // Live only: start at the room's seq. Either way the room's epoch
        // is known from the first read, so a loss of its state shows.
        let slice = state.read(0, 0).await?;
        if since == 0 {
            state.cursor = Cursor::new(slice.seq, slice.epoch);
        } else if slice.seq >= since {
            // Without the epoch `since` counts in, a room that started over
            // and reached `since` again cannot be told apart.
            state.cursor.learn_epoch(&slice);
        }
        let span = tracing::info_span!("stream", room, kind, since);
        tokio::spawn(
            async move {
                // A resumed stream first sends what history holds after
                // `since`, then anything live.
                if since > 0
                    && let Err(e) = state.catch_up(u64::MAX).await
                {
                    let _ = state.out.send(Err(e)).await;
                    return;
                }
                state.run(rx).await
            }
            .instrument(span),
        );
        Ok(out_rx)
    }

    fn send(&self, room: &str, mut event: Event) {
        let mut feeds = self.feeds();
        let Some(feed) = feeds.get_mut(room) else {
            return;
        };
        // What every stream has read is no longer held (the channel drops a
        // value once all its receivers have it): the mirror keeps the bytes
        // of what is still queued, the last `tx.len()` sent.
        while feed.sizes.len() > feed.tx.len() {
            feed.bytes -= feed.sizes.pop_front().unwrap_or(0);
        }
        let size = match &event {
            Event::Message(_, _, frame) => frame.len(),
            Event::Resync => 0,
        };
        if size > 0 && feed.bytes + size > self.bounds.ring_bytes {
            // Past the ring's bytes: the streams read it from history.
            self.metrics.ring_full.inc();
            event = Event::Resync;
        }
        // The ring holds the last `ring` events: so does the mirror.
        let size = if matches!(event, Event::Resync) {
            0
        } else {
            size
        };
        feed.sizes.push_back(size);
        feed.bytes += size;
        if feed.sizes.len() > self.bounds.ring {
            feed.bytes -= feed.sizes.pop_front().unwrap_or(0);
        }
        let _ = feed.tx.send(event);
    }

    fn wanted(&self, room: &str) -> bool {
        self.feeds().contains_key(room)
    }
}

impl RoomPushes for Follower {
    fn message(&self, room: &str, seq: u64, epoch: &str, frame: Bytes) {
        if let Ok(frame) = std::str::from_utf8(&frame) {
            self.send(
                room,
                Event::Message(seq, Arc::from(epoch), Arc::from(frame)),
            );
        }
    }

    // Presence events carry no seq and are not streamed.

    fn subscribed(&self, room: &str) {
        self.send(room, Event::Resync);
    }

    fn unsubscribed(&self, room: &str) {
        let (Source::Bus(c) | Source::Relay(_, c)) = &self.channels;
        c.lost(room);
    }

    fn disconnected(&self) {
        self.metrics.redis_disconnects.inc();
        tracing::warn!(
            "Redis pub/sub connection of room streams lost; reconnecting and resubscribing"
        );
    }
}

/// Strategy relay: what the rooms' owners send this gateway.
impl turnout_common::relay::Follower for Follower {
    fn message(&self, room: &str, seq: u64, epoch: &str, frame: String) {
        self.send(
            room,
            Event::Message(seq, Arc::from(epoch), Arc::from(frame)),
        );
    }

    // Presence events carry no seq and are not streamed.
    fn presence(&self, _room: &str, _origin: &str, _frame: String) {}

    fn catch_up(&self, room: &str) {
        self.send(room, Event::Resync);
    }

    fn wanted(&self, room: &str) -> bool {
        !self.on_channel(room) && Follower::wanted(self, room)
    }

    // A gateway owns no room.
    fn owned_here(&self, _room: &str, _epoch: u64) {}

    fn rooms(&self) -> Vec<String> {
        let mut rooms: Vec<String> = self.feeds().keys().cloned().collect();
        rooms.retain(|r| !self.on_channel(r));
        rooms
    }
}

/// Releases a stream's share of its room when the stream ends.
struct StreamGuard {
    follower: Arc<Follower>,
    room: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let f = &self.follower;
        let mut feeds = f.feeds();
        f.metrics.streams.dec();
        if let Some(feed) = feeds.get_mut(&self.room) {
            feed.streams -= 1;
            if feed.streams == 0 {
                feeds.remove(&self.room);
                f.metrics.rooms.dec();
                match &f.channels {
                    Source::Relay(links, _) if !f.on_channel(&self.room) => {
                        links.detach(&self.room)
                    }
                    Source::Bus(c) | Source::Relay(_, c) => c.release(&self.room),
                }
            }
        }
    }
}

/// How long a stream keeps retrying a failed history read before it ends.
const READ_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// One stream: what it sent last, and where it sends.
struct StreamState {
    follower: Arc<Follower>,
    room: String,
    cursor: Cursor,
    out: mpsc::Sender<Result<Queued, ApiError>>,
    /// Bytes the response has not taken yet, at most `stream_buffer_bytes`:
    /// a slow reader stops the stream, which then falls behind the room's
    /// ring and catches up from history, bounded either way.
    bytes: Arc<tokio::sync::Semaphore>,
    /// A client token's end: the stream ends there.
    until: Option<tokio::time::Instant>,
    ticket: crate::streams::Ticket,
    _guard: StreamGuard,
}

impl StreamState {
    async fn read(&self, since: u64, limit: u64) -> Result<HistorySlice, ApiError> {
        let metrics = &self.follower.metrics;
        turnout_common::recovery::read_history(
            &self.follower.redis,
            &self.room,
            since,
            limit,
            READ_RETRY,
            |e| {
                metrics.redis_errors.inc();
                tracing::warn!(room = %self.room, error = %e, "history read for a stream failed");
            },
        )
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::Unavailable,
                "history unavailable; resume with since",
            )
        })
    }

    /// Queues an item once its bytes fit the stream's buffer; Err when the
    /// receiver is gone.
    async fn emit(&self, item: Item) -> Result<(), ()> {
        let size = match &item {
            Item::Message { frame, .. } => {
                self.follower.metrics.sent.inc();
                frame.len()
            }
            Item::Reset { .. } => 0,
        };
        let want = (size as u32).clamp(1, self.follower.bounds.stream_bytes as u32);
        let bytes = self.bytes.clone().acquire_many_owned(want).await.ok();
        let queued = Queued {
            item,
            _bytes: bytes,
        };
        self.out.send(Ok(queued)).await.map_err(|_| ())
    }

    /// Sends what history holds after the last seq sent, up to `upto` (or
    /// the room's current seq), noticing a reset of the room's state on the
    /// way.
    async fn catch_up(&mut self, upto: u64) -> Result<(), ApiError> {
        loop {
            let slice = self.read(self.cursor.last(), CATCH_UP_PAGE).await?;
            if self.cursor.lost_state(&slice) {
                self.follower.metrics.resets.inc();
                tracing::info!(room = %self.room, last = self.cursor.last(), seq = slice.seq, "room state was reset in Redis; stream starts over");
                self.cursor.reset(0, slice.epoch.clone());
                let reset = Item::Reset {
                    epoch: slice.epoch,
                    seq: slice.seq,
                };
                if self.emit(reset).await.is_err() {
                    return Ok(());
                }
                continue;
            }
            self.cursor.learn_epoch(&slice);
            let mut progressed = false;
            for (seq, frame) in slice.messages {
                if self.cursor.classify(seq) != Step::Duplicate {
                    self.follower.metrics.caught_up.inc();
                    self.cursor.advance(seq);
                    progressed = true;
                    let item = Item::Message {
                        seq,
                        epoch: Arc::from(self.cursor.epoch()),
                        frame: Arc::from(frame),
                    };
                    if self.emit(item).await.is_err() {
                        return Ok(());
                    }
                }
            }
            if !progressed || self.cursor.last() >= upto.min(slice.seq) {
                return Ok(());
            }
        }
    }

    async fn run(mut self, mut rx: broadcast::Receiver<Event>) {
        let stop = self.follower.stop.clone();
        let end = self.ticket.end.clone();
        let until = tokio::time::sleep_until(self.until.unwrap_or_else(|| {
            tokio::time::Instant::now() + std::time::Duration::from_secs(1 << 40)
        }));
        tokio::pin!(until);
        loop {
            let event = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = self.out.closed() => return,
                _ = end.cancelled() => {
                    let e = ApiError::new(ErrorCode::Unauthorized, "disconnected by the server");
                    let _ = self.out.send(Err(e)).await;
                    return;
                }
                _ = &mut until => {
                    let e = ApiError::new(ErrorCode::TokenExpired, "your token expired; resume with a fresh one");
                    let _ = self.out.send(Err(e)).await;
                    return;
                }
                e = rx.recv() => e,
            };
            let result = match event {
                // Another epoch: Redis lost the room's state. History tells
                // (and the stream says `reset`).
                Ok(Event::Message(_, epoch, _)) if self.cursor.epoch_changed(&epoch) => {
                    self.catch_up(u64::MAX).await
                }
                Ok(Event::Message(seq, epoch, frame)) => {
                    let mut r = Ok(());
                    if let Step::Gap { to, .. } = self.cursor.classify(seq) {
                        r = self.catch_up(to).await;
                        // What history could not fill (or does not keep)
                        // is gone: the jump in seq shows it; go on live.
                        if r.is_ok() && self.cursor.classify(seq) != Step::Duplicate {
                            self.cursor.advance(to);
                        }
                    }
                    if r.is_ok() && self.cursor.classify(seq) == Step::Next {
                        self.cursor.advance(seq);
                        if self
                            .emit(Item::Message { seq, epoch, frame })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    r
                }
                Ok(Event::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.catch_up(u64::MAX).await
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if let Err(e) = result {
                let _ = self.out.send(Err(e)).await;
                return;
            }
            if self.out.is_closed() {
                return;
            }
        }
    }
}

/// An SSE event for an item: `id:` = `<seq>:<epoch>` (the resume point a
/// reconnecting `EventSource` sends back as `Last-Event-ID`; `parseInt`
/// reads the seq), data = the message frame.
pub(crate) fn sse_event(item: Item) -> axum::response::sse::Event {
    use axum::response::sse::Event;
    match item {
        Item::Message { seq, epoch, frame } => {
            Event::default().id(event_id(seq, &epoch)).data(&*frame)
        }
        Item::Reset { epoch, seq } => Event::default()
            .event("reset")
            .data(serde_json::json!({"epoch": epoch, "seq": seq}).to_string()),
    }
}

/// The SSE id of a message: its seq and its history epoch.
fn event_id(seq: u64, epoch: &str) -> String {
    if epoch.is_empty() {
        seq.to_string()
    } else {
        format!("{seq}:{epoch}")
    }
}

/// Reads a resume point: `<seq>` or `<seq>:<epoch>` (an SSE id).
pub(crate) fn parse_event_id(id: &str) -> Option<(u64, &str)> {
    let (seq, epoch) = id.split_once(':').unwrap_or((id, ""));
    let epoch_ok = epoch.bytes().all(|b| b.is_ascii_digit()) && epoch.len() <= 32;
    Some((seq.parse().ok()?, epoch)).filter(|_| epoch_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_carry_the_epoch() {
        assert_eq!(event_id(7, "1795000000123456"), "7:1795000000123456");
        assert_eq!(event_id(7, ""), "7");
        for (id, want) in [
            ("7:1795000000123456", Some((7, "1795000000123456"))),
            ("7", Some((7, ""))),
            ("7:", Some((7, ""))),
            ("x:1", None),
            ("7:abc", None),
            ("-1", None),
            ("", None),
        ] {
            assert_eq!(parse_event_id(id), want, "{id:?}");
        }
    }
}
