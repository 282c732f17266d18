//! `relay`: clients land on any node; each room has one owner node, placed
//! and fenced as in sticky (rendezvous hashing, a claim with an epoch).
//!
//! - A publish on any node goes to the owner (up the follow stream to it,
//!   `PUBLISH`; or as a `Relay.Publish` call, which older nodes make), which runs
//!   the publish script fenced by its epoch (same dedupe, same history) and
//!   hands the message to every node holding members of the room, over
//!   one follow stream per node pair (`Relay.Follow`, many rooms per batch),
//!   and to its own members.
//! - A node with members of a room follows it at the owner
//!   ([`turnout_common::relay::Links`]); what it receives goes through the
//!   hub's sequencer like a pubsub node's bus messages.
//! - Redis keeps seq, history, presence and ownership; no room message goes
//!   over Redis pub/sub, personal rooms aside: they are of the pubsub kind,
//!   as in sticky (`super`).
//!
//! An owner that loses a room (a claim took it, its publish was fenced, its
//! periodic check found another owner, it drains) tells the room's
//! followers `MOVED`; they attach it wherever it lives now and catch up
//! from history. A follower whose link to the owner breaks does the same.

use crate::hub::{Hub, RoomError};
use crate::metrics::NodeMetrics;
use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use turnout_common::redis::{Origin, Published, Publisher, rooms};
use turnout_common::relay::{AttachError, Follower, Links};
use turnout_proto::bus::FrameParts;
use turnout_proto::codes::ErrorCode;
use turnout_proto::names::RoomName;
use turnout_proto::v1::relay_item::Kind;
use turnout_proto::v1::{RelayItem, RelayPublishReply, RelayPublishRequest};

/// Items one batch on a follow stream carries at most.
const BATCH: usize = 512;

/// How many owners a publish tries before it answers `unavailable`.
const PUBLISH_TRIES: usize = 3;

/// Publishes one follower may have under way at an owner at once, as
/// HTTP/2 bounded them when each was a call of its own (hyper's 200
/// streams per connection): beyond, `unavailable` at once. A follower's
/// publishes are its clients', each waiting for its answer, so this is
/// reached only when the owner's Redis stalls.
const PUBLISHES_PER_STREAM: usize = 1024;

pub(crate) struct Relay(pub(crate) Arc<Inner>);

pub(crate) struct Inner {
    me: String,
    /// Personal rooms (`#user`): no owner; their channels, as in pubsub.
    personal: super::pubsub::Pubsub,
    /// How long an unused placement stays pinned.
    pin: Duration,
    /// A follow stream's queue, in items and bytes (`bus_buffer`,
    /// `bus_buffer_bytes`): a follower that falls further behind is cut
    /// off, attaches again and catches up from history.
    buffer: (usize, usize),
    hub: Weak<Hub>,
    metrics: NodeMetrics,
    pub(crate) links: Arc<Links>,
    /// What the links hand their messages to (they hold it weakly).
    follower: std::sync::OnceLock<Arc<dyn Follower>>,
    /// Rooms this node owns.
    owned: DashMap<String, Owned>,
    /// Follow streams open to this node.
    streams: DashMap<u64, Arc<Outbound>>,
    next_stream: AtomicU64,
    /// The node drains: it takes no room it does not own already.
    draining: std::sync::atomic::AtomicBool,
}

struct Owned {
    epoch: u64,
    /// The follow streams of nodes with members of the room.
    streams: HashSet<u64>,
    /// This node has members of the room too.
    here: bool,
}

/// The owner's end of one follow stream.
pub(crate) struct Outbound {
    /// The follower: its peer address, then its id once it attached a room.
    pub(crate) node: Mutex<String>,
    tx: mpsc::Sender<RelayItem>,
    bytes: AtomicUsize,
    max_bytes: usize,
    pub(crate) closed: CancellationToken,
    rooms: Mutex<HashSet<String>>,
    /// Attaches being checked in Redis; a detach meanwhile drops its room.
    pending: Mutex<HashSet<String>>,
    /// Publishes of this follower under way here ([`PUBLISHES_PER_STREAM`]).
    publishes: Arc<tokio::sync::Semaphore>,
}

fn item_bytes(item: &RelayItem) -> usize {
    item.room.len()
        + item.epoch.len()
        + item.frame.len()
        + item.origin.len()
        + item.error.len()
        + item.reply.as_ref().map_or(0, |r| r.epoch.len() + 16)
        + 16
}

impl Outbound {
    /// Queues `item`; a stream that is full is closed (its follower catches
    /// up from history after attaching again).
    fn send(&self, item: RelayItem) {
        let n = item_bytes(&item);
        if self.bytes.fetch_add(n, Ordering::AcqRel) + n > self.max_bytes
            || self.tx.try_send(item).is_err()
        {
            if !self.closed.is_cancelled() {
                let node = self.node.lock().unwrap_or_else(|e| e.into_inner()).clone();
                tracing::warn!(follower = %node, "follow stream full: closing it (the follower catches up from history)");
            }
            self.closed.cancel();
        }
    }

    /// Takes what is queued, up to one batch.
    pub(crate) async fn next_batch(
        &self,
        rx: &mut mpsc::Receiver<RelayItem>,
    ) -> Option<Vec<RelayItem>> {
        let mut items = Vec::new();
        tokio::select! {
            n = rx.recv_many(&mut items, BATCH) => if n == 0 { return None },
            _ = self.closed.cancelled() => return None,
        }
        let n: usize = items.iter().map(item_bytes).sum();
        self.bytes.fetch_sub(n, Ordering::AcqRel);
        Some(items)
    }
}

fn item(kind: Kind, room: &str) -> RelayItem {
    RelayItem {
        kind: kind as i32,
        room: room.to_owned(),
        ..Default::default()
    }
}

fn unavailable(what: &str, e: &dyn std::fmt::Display, room: &str) -> RoomError {
    tracing::warn!(room, error = %e, "{what}");
    RoomError::from(ErrorCode::Unavailable)
}

impl Relay {
    pub(crate) fn new(
        me: &str,
        pin: Duration,
        buffer: (usize, usize),
        hub: Weak<Hub>,
        metrics: &NodeMetrics,
        links: Arc<Links>,
        personal: super::pubsub::Pubsub,
    ) -> Relay {
        Relay(Arc::new(Inner {
            me: me.to_owned(),
            personal,
            pin,
            buffer,
            hub,
            metrics: metrics.clone(),
            links,
            follower: std::sync::OnceLock::new(),
            owned: DashMap::new(),
            streams: DashMap::new(),
            next_stream: AtomicU64::new(1),
            draining: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// Personal rooms' channels.
    pub(crate) fn personal(&self) -> &super::pubsub::Pubsub {
        &self.0.personal
    }

    /// Hands what owners send this node to `follower` (the hub).
    pub(crate) fn set_follower(&self, follower: Arc<dyn Follower>) {
        self.0.links.set_follower(Arc::downgrade(&follower));
        let _ = self.0.follower.set(follower);
    }

    /// The room got its first member here: follow it at its owner.
    pub(crate) async fn open(&self, room: &str) -> Result<(), RoomError> {
        self.0
            .links
            .attach(room)
            .await
            .map(|_| ())
            .map_err(|e| unavailable("attaching the room at its owner failed", &e, room))
    }

    /// The room's last member here left.
    pub(crate) fn close(&self, room: &str) {
        if let Some(mut o) = self.0.owned.get_mut(room) {
            o.here = false;
        }
        self.0.links.detach(room);
    }

    /// A client's or the API's publish on this node: sent to the owner
    /// (this node, or another up the follow stream to it). The message reaches
    /// this node's members from the owner, like everyone else's.
    pub(crate) async fn publish(
        &self,
        hub: &Arc<Hub>,
        room: &RoomName,
        parts: &FrameParts,
        origin: Origin<'_>,
        id: Option<&str>,
    ) -> Result<Published, RoomError> {
        let inner = &self.0;
        let mut owner = inner.links.attached_at(room);
        for _ in 0..PUBLISH_TRIES {
            let node = match owner.take() {
                Some(node) => node,
                None => {
                    inner
                        .links
                        .owner(room, &[])
                        .await
                        .map_err(|e| unavailable("finding the room's owner failed", &e, room))?
                        .node
                }
            };
            if node == inner.me {
                match inner.own_publish(hub, room, parts, origin, id).await? {
                    Some(p) => return Ok(p),
                    None => continue,
                }
            }
            let req = RelayPublishRequest {
                room: room.to_string(),
                prefix: parts.prefix.to_string(),
                suffix: parts.suffix.to_string(),
                sender: origin.sender().to_owned(),
                client: matches!(origin, Origin::Client(_)),
                id: id.unwrap_or_default().to_owned(),
                trace: Default::default(),
            };
            match inner.links.publish(&node, req).await {
                Ok(r) => {
                    if r.not_owner {
                        continue;
                    }
                    inner.metrics.relay_forwarded.inc();
                    return Ok(Published {
                        seq: r.seq,
                        epoch: r.epoch,
                        duplicate: r.duplicate,
                        first_of_epoch: r.first_of_epoch,
                    });
                }
                Err(s) => {
                    if s.code() != tonic::Code::InvalidArgument {
                        // The owner may be gone or stalled: find the room's
                        // owner afresh (the members here too).
                        inner.links.reattach(room);
                    }
                    return Err(unavailable(
                        "publish at the room's owner failed",
                        &s.message(),
                        room,
                    ));
                }
            }
        }
        Err(unavailable(
            "the room kept moving",
            &"no stable owner",
            room,
        ))
    }

    /// Tells the room's members on every node about a presence event.
    pub(crate) fn announce(&self, hub: &Hub, room: &str, origin: &str, frame: String) {
        let inner = &self.0;
        if let Some(o) = inner.owned.get(room) {
            for id in &o.streams {
                if let Some(s) = inner.streams.get(id) {
                    s.send(RelayItem {
                        kind: Kind::Presence as i32,
                        room: room.to_owned(),
                        origin: origin.to_owned(),
                        frame: frame.clone(),
                        ..Default::default()
                    });
                }
            }
        } else {
            inner.links.presence(room, origin, &frame);
        }
        hub.deliver_presence(room, origin, frame.into());
    }

    /// A claim took `room` at epoch `claimed` (a notice on the control
    /// channel), or the periodic check found another owner.
    pub(crate) fn lost(&self, room: &str, claimed: Option<u64>) {
        let held = self.0.owned.get(room).map(|o| o.epoch);
        if let Some(epoch) = held
            && claimed.is_none_or(|c| c != epoch)
        {
            self.0.disown(room, Some(epoch), "claimed by another node");
        }
    }

    /// The node's lease lapsed: others may have placed its rooms anew, and
    /// it cannot tell which while Redis does not answer. Every room it owns
    /// goes: its followers attach them wherever Redis says.
    pub(crate) fn lease_lapsed(&self) {
        let rooms: Vec<String> = self.0.owned.iter().map(|o| o.key().clone()).collect();
        if !rooms.is_empty() {
            tracing::warn!(
                rooms = rooms.len(),
                "membership lease lapsed: handing every owned room on"
            );
        }
        for room in rooms {
            self.0.disown(&room, None, "lease lapsed");
        }
    }

    /// The node drains: every room it owns moves to another node.
    pub(crate) fn drain(&self) {
        self.0.draining.store(true, Ordering::Release);
        let rooms: Vec<String> = self.0.owned.iter().map(|o| o.key().clone()).collect();
        for room in rooms {
            self.0.disown(&room, None, "draining");
        }
    }

    /// Keeps the placements of the rooms this node owns pinned while they
    /// are followed, and finds rooms it no longer owns; drops the ones
    /// nobody follows any more.
    pub(crate) fn keep_owned(&self, stop: CancellationToken) {
        let inner = self.0.clone();
        let every = (self.0.pin / 3).max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.cancelled() => return,
                }
                inner.keep().await;
            }
        });
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.0
    }
}

impl Inner {
    fn hub(&self) -> Option<Arc<Hub>> {
        self.hub.upgrade()
    }

    /// Publishes as the room's owner: `None` when this node does not own
    /// the room (nothing was stored).
    pub(crate) async fn own_publish(
        &self,
        hub: &Arc<Hub>,
        room: &RoomName,
        parts: &FrameParts,
        origin: Origin<'_>,
        id: Option<&str>,
    ) -> Result<Option<Published>, RoomError> {
        let Some(epoch) = self.owned_epoch(room).await? else {
            return Ok(None);
        };
        let span = tracing::debug_span!("relay_publish", room = %room, epoch);
        let owner = Publisher::Owner(&self.me, epoch);
        let stored = tracing::Instrument::instrument(
            hub.store_publish(room, parts, owner, origin, id),
            span.clone(),
        )
        .await;
        // Entered only now: a guard held across an await would leave the
        // span entered on the thread for whatever task ran there meanwhile.
        let _entered = span.enter();
        let published = match stored {
            Ok(p) => p,
            Err(e) => {
                // The script may have run with its reply lost: the message
                // may be stored, and nobody would deliver it but history.
                self.broadcast(room, item(Kind::CatchUp, room));
                hub.catch_up(room);
                return Err(e);
            }
        };
        match published {
            Some(p) => {
                if !p.duplicate {
                    let frame = parts.rendered(p.seq, &p.epoch, p.first_of_epoch);
                    self.broadcast(
                        room,
                        RelayItem {
                            kind: Kind::Message as i32,
                            room: room.to_string(),
                            seq: p.seq,
                            epoch: p.epoch.clone(),
                            frame: frame.clone(),
                            ..Default::default()
                        },
                    );
                    hub.deliver(room, p.seq, &p.epoch, frame.into());
                }
                Ok(Some(p))
            }
            None => {
                self.metrics.fenced.inc();
                self.disown(room, Some(epoch), "publish fenced");
                Ok(None)
            }
        }
    }

    /// The epoch this node owns `room` at, claiming it when it has no live
    /// owner; None when another node owns it.
    async fn owned_epoch(&self, room: &str) -> Result<Option<u64>, RoomError> {
        if let Some(o) = self.owned.get(room) {
            return Ok(Some(o.epoch));
        }
        if self.draining.load(Ordering::Acquire) {
            return Ok(None);
        }
        let Some(hub) = self.hub() else {
            return Err(ErrorCode::Internal.into());
        };
        let Some(redis) = hub.store.redis() else {
            return Err(ErrorCode::Internal.into());
        };
        let owner = rooms::place(&mut redis.con.clone(), room, &self.me, self.pin, &[], &[])
            .await
            .map_err(|e| {
                hub.metrics.redis_errors.inc();
                unavailable("ownership check failed: Redis", &e, room)
            })?;
        if owner.node != self.me || self.draining.load(Ordering::Acquire) {
            return Ok(None);
        }
        let epoch = {
            let mut o = self.owned.entry(room.to_owned()).or_insert_with(|| Owned {
                epoch: owner.epoch,
                streams: HashSet::new(),
                here: false,
            });
            // Redis's word (a claim counter that expired restarts low).
            o.epoch = owner.epoch;
            o.epoch
        };
        // (Counted with no entry held: a map-wide read under an entry's
        // lock would deadlock.)
        self.metrics.relay_owned.set(self.owned.len() as i64);
        Ok(Some(epoch))
    }

    fn broadcast(&self, room: &str, item: RelayItem) {
        let Some(o) = self.owned.get(room) else {
            return;
        };
        let mut sent = 0;
        for id in &o.streams {
            if let Some(s) = self.streams.get(id) {
                s.send(item.clone());
                sent += 1;
            }
        }
        self.metrics.relay_items_sent.inc_by(sent);
    }

    /// This node no longer owns `room`: its followers (and its own members)
    /// attach it again wherever it lives now.
    fn disown(&self, room: &str, epoch: Option<u64>, why: &str) {
        let removed = self
            .owned
            .remove_if(room, |_, o| epoch.is_none_or(|e| o.epoch == e));
        let Some((_, o)) = removed else {
            return;
        };
        self.metrics.relay_owned.set(self.owned.len() as i64);
        tracing::info!(
            room,
            epoch = o.epoch,
            followers = o.streams.len(),
            why,
            "room no longer owned here; its followers move"
        );
        for id in &o.streams {
            if let Some(s) = self.streams.get(id) {
                s.rooms
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(room);
                s.send(item(Kind::Moved, room));
            }
        }
        if o.here {
            self.links.reattach(room);
        }
    }

    /// Opens a follow stream from node `node`.
    pub(crate) fn open_stream(
        &self,
        node: String,
    ) -> (u64, Arc<Outbound>, mpsc::Receiver<RelayItem>) {
        let (tx, rx) = mpsc::channel(self.buffer.0.max(1));
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let out = Arc::new(Outbound {
            node: Mutex::new(node),
            tx,
            bytes: AtomicUsize::new(0),
            max_bytes: self.buffer.1.max(1),
            closed: CancellationToken::new(),
            rooms: Mutex::new(HashSet::new()),
            pending: Mutex::new(HashSet::new()),
            publishes: Arc::new(tokio::sync::Semaphore::new(PUBLISHES_PER_STREAM)),
        });
        self.streams.insert(id, out.clone());
        self.metrics.relay_streams.set(self.streams.len() as i64);
        (id, out, rx)
    }

    /// A follow stream ended: its rooms lose that follower.
    pub(crate) fn close_stream(&self, id: u64) {
        let Some((_, out)) = self.streams.remove(&id) else {
            return;
        };
        out.closed.cancel();
        self.metrics.relay_streams.set(self.streams.len() as i64);
        let rooms: Vec<String> = out
            .rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for room in rooms {
            if let Some(mut o) = self.owned.get_mut(&room) {
                o.streams.remove(&id);
            }
        }
    }

    /// A follower attaches `room` on stream `id`: at once when this node
    /// owns it already, otherwise after asking Redis, in a task of its own
    /// so that one slow claim does not hold up the stream's other attaches.
    pub(crate) fn attach(
        self: &Arc<Self>,
        id: u64,
        out: &Arc<Outbound>,
        room: String,
        follower: &str,
    ) {
        if !follower.is_empty() {
            *out.node.lock().unwrap_or_else(|e| e.into_inner()) = follower.to_owned();
        }
        if self.owned.contains_key(&room) {
            self.attached(id, out, &room, Ok(Some(0)));
            return;
        }
        out.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(room.clone());
        let (inner, out) = (self.clone(), out.clone());
        tokio::spawn(async move {
            let owned = match RoomName::parse(room.clone()) {
                Ok(_) => inner.owned_epoch(&room).await,
                Err(_) => Ok(None),
            };
            let still = out
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&room);
            if still {
                inner.attached(id, &out, &room, owned);
            }
        });
    }

    fn attached(&self, id: u64, out: &Outbound, room: &str, owned: Result<Option<u64>, RoomError>) {
        let kind = match owned {
            // The stream closed meanwhile (its follower fell behind): it
            // attaches again on a new one.
            Ok(Some(_)) if out.closed.is_cancelled() => return,
            Ok(Some(_)) => {
                if let Some(mut o) = self.owned.get_mut(room) {
                    o.streams.insert(id);
                    out.rooms
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(room.to_owned());
                    Kind::Attached
                } else {
                    Kind::NotOwner
                }
            }
            // Not the owner, or Redis did not say: the follower asks again.
            Ok(None) | Err(_) => Kind::NotOwner,
        };
        out.send(item(kind, room));
    }

    pub(crate) fn detach(&self, id: u64, out: &Outbound, room: &str) {
        out.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(room);
        out.rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(room);
        if let Some(mut o) = self.owned.get_mut(room) {
            o.streams.remove(&id);
        }
    }

    /// A presence event from a follower: to the room's other nodes and the
    /// members here.
    pub(crate) fn presence(&self, id: u64, room: &str, origin: String, frame: String) {
        let Some(o) = self.owned.get(room) else {
            return;
        };
        for other in o.streams.iter().filter(|s| **s != id) {
            if let Some(s) = self.streams.get(other) {
                s.send(RelayItem {
                    kind: Kind::Presence as i32,
                    room: room.to_owned(),
                    origin: origin.clone(),
                    frame: frame.clone(),
                    ..Default::default()
                });
            }
        }
        let here = o.here;
        drop(o);
        if here && let Some(hub) = self.hub() {
            hub.deliver_presence(room, &origin, frame.into());
        }
    }

    /// The owner's answer to `Relay.Carriers`.
    pub(crate) fn carriers(&self, room: &str) -> turnout_proto::v1::CarriersReply {
        let Some(o) = self.owned.get(room) else {
            return Default::default();
        };
        let mut followers: Vec<String> = o
            .streams
            .iter()
            .filter_map(|id| self.streams.get(id))
            .map(|s| s.node.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect();
        if o.here {
            followers.push(self.me.clone());
        }
        followers.sort();
        followers.dedup();
        turnout_proto::v1::CarriersReply {
            owned: true,
            epoch: o.epoch,
            followers,
        }
    }

    /// A publish a follower sent on its follow stream (`PUBLISH`): served
    /// as a `Relay.Publish` call is, and answered `PUBLISHED` on the
    /// stream with the follower's call number.
    pub(crate) fn publish_from(
        self: &Arc<Self>,
        out: &Arc<Outbound>,
        call: u64,
        req: Option<RelayPublishRequest>,
    ) {
        use tracing::Instrument;
        let answered = move |answer: Result<RelayPublishReply, tonic::Status>| {
            let mut item = item(Kind::Published, "");
            item.call = call;
            match answer {
                Ok(reply) => item.reply = Some(reply),
                Err(s) => {
                    item.code = s.code() as i32;
                    item.error = s.message().to_owned();
                }
            }
            item
        };
        let Ok(permit) = out.publishes.clone().try_acquire_owned() else {
            out.send(answered(Err(tonic::Status::unavailable(
                "too many publishes under way at the room's owner",
            ))));
            return;
        };
        let inner = self.clone();
        let out = out.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let answer = match req {
                Some(req) => {
                    let span = tracing::info_span!(
                        target: turnout_common::telemetry::TARGET,
                        "relay.publish",
                        node = %inner.me,
                    );
                    turnout_common::telemetry::continue_trace_from(&span, &req.trace);
                    inner.serve_publish(req).instrument(span).await
                }
                None => Err(ErrorCode::BadFrame.status("PUBLISH without a publish")),
            };
            out.send(answered(answer));
        });
    }

    /// The owner's answer to `Relay.Publish`.
    pub(crate) async fn serve_publish(
        &self,
        req: RelayPublishRequest,
    ) -> Result<RelayPublishReply, tonic::Status> {
        let room = RoomName::parse(req.room)
            .map_err(|e| ErrorCode::BadName.status(format!("room {e}")))?;
        let hub = self
            .hub()
            .ok_or_else(|| tonic::Status::unavailable("stopping"))?;
        let parts = FrameParts {
            prefix: req.prefix,
            suffix: req.suffix,
        };
        // The frame must be one of this room's (internal peers are trusted
        // with the rest of it: they rendered it from a checked publish).
        let head =
            turnout_proto::bus::frame_parts(&room, "", "", 0, serde_json::value::RawValue::NULL);
        if parts.prefix != head.prefix || !parts.suffix.starts_with(",\"from\":") {
            return Err(ErrorCode::BadFrame.status("the frame is not one of this room's"));
        }
        let origin = if req.client {
            Origin::Client(&req.sender)
        } else {
            Origin::Api
        };
        let id = (!req.id.is_empty()).then_some(req.id.as_str());
        match self.own_publish(&hub, &room, &parts, origin, id).await {
            Ok(Some(p)) => Ok(RelayPublishReply {
                seq: p.seq,
                epoch: p.epoch,
                duplicate: p.duplicate,
                first_of_epoch: p.first_of_epoch,
                not_owner: false,
            }),
            Ok(None) => Ok(RelayPublishReply {
                not_owner: true,
                ..Default::default()
            }),
            Err(e) => Err(e.code.status("publish failed at the owner")),
        }
    }

    async fn keep(&self) {
        let Some(hub) = self.hub() else { return };
        let Some(redis) = hub.store.redis() else {
            return;
        };
        self.owned.retain(|_, o| o.here || !o.streams.is_empty());
        self.metrics.relay_owned.set(self.owned.len() as i64);
        let rooms: Vec<(String, u64)> = self
            .owned
            .iter()
            .map(|o| (o.key().clone(), o.epoch))
            .collect();
        use futures_util::StreamExt;
        let checks = futures_util::stream::iter(rooms)
            .map(|(room, epoch)| {
                let mut con = redis.con.clone();
                async move {
                    let r = rooms::claim(&mut con, &room, &self.me, self.pin, &[]).await;
                    (room, epoch, r)
                }
            })
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await;
        for (room, epoch, r) in checks {
            match r {
                Ok(o) if o.node == self.me && o.epoch == epoch => {}
                Ok(_) => self.disown(&room, Some(epoch), "the owner record names another node"),
                Err(e) => {
                    hub.metrics.redis_errors.inc();
                    tracing::debug!(room, error = %e, "ownership check failed");
                }
            }
        }
    }
}

/// What owners send this node, handed to the hub.
pub(crate) struct ToHub(pub(crate) Weak<Hub>);

impl Follower for ToHub {
    fn message(&self, room: &str, seq: u64, epoch: &str, frame: String) {
        if let Some(hub) = self.0.upgrade() {
            hub.metrics.bus_messages.inc();
            hub.deliver(room, seq, epoch, Utf8Bytes::from(frame));
        }
    }

    fn presence(&self, room: &str, origin: &str, frame: String) {
        if let Some(hub) = self.0.upgrade() {
            hub.deliver_presence(room, origin, frame.into());
        }
    }

    fn catch_up(&self, room: &str) {
        if let Some(hub) = self.0.upgrade() {
            hub.catch_up(room);
        }
    }

    // Personal rooms go over their channel: never followed.
    fn wanted(&self, room: &str) -> bool {
        !turnout_proto::names::is_personal(room)
            && self.0.upgrade().is_some_and(|h| h.has_room(room))
    }

    fn rooms(&self) -> Vec<String> {
        let Some(hub) = self.0.upgrade() else {
            return Vec::new();
        };
        let mut rooms = hub.room_names();
        rooms.retain(|r| !turnout_proto::names::is_personal(r));
        rooms
    }

    fn owned_here(&self, room: &str, epoch: u64) {
        let Some(hub) = self.0.upgrade() else { return };
        if let crate::strategy::Strategy::Relay(r) = &hub.strategy {
            if r.0.draining.load(Ordering::Acquire) {
                return; // its members are being sent away
            }
            {
                let mut o = r.0.owned.entry(room.to_owned()).or_insert_with(|| Owned {
                    epoch,
                    streams: HashSet::new(),
                    here: true,
                });
                o.here = true;
                // Redis's word: a counter that expired restarts low.
                o.epoch = epoch;
            }
            r.0.metrics.relay_owned.set(r.0.owned.len() as i64);
        }
    }
}

impl From<AttachError> for RoomError {
    fn from(_: AttachError) -> Self {
        ErrorCode::Unavailable.into()
    }
}
