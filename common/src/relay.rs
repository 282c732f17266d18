//! Strategy `relay`, the follower's side: links from a process to the
//! owners of the rooms it follows (a ws-node with members of a room, or a
//! gateway streaming a room to a backend).
//!
//! One link per owner node carries one long-lived gRPC stream
//! (`turnout.v1.Relay/Follow`): the follower attaches and detaches rooms on
//! it, and the owner sends the attached rooms' messages, many rooms per
//! batch. A room is attached once its owner said `ATTACHED`: every message
//! published after that comes down the stream, and whatever came before it
//! is the follower's to read from history (as a join does).
//!
//! When a link breaks (the owner died, was cut off, or dropped a follower
//! that fell too far behind) or the owner says a room `MOVED`, the room is
//! attached again wherever it lives now, in the background and with
//! backoff, and then caught up from history ([`Follower::catch_up`]): the
//! members stay where they are and lose nothing that history holds.

use crate::auth::InternalToken;
use crate::backoff::Backoff;
use crate::redis::Con;
use dashmap::DashMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;
use turnout_proto::v1::relay_client::RelayClient;
use turnout_proto::v1::relay_item::Kind;
use turnout_proto::v1::{
    FollowRequest, RelayItem, RelayPublishReply, RelayPublishRequest, follow_request::Op,
};

/// How long a follower waits for an owner to answer an attach or a
/// publish: past the owner's own Redis timeout, so that a slow Redis makes
/// a late answer, not a room taken from a live owner.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(6);

/// Requests a link queues for its owner at most (attach, detach, presence):
/// past it the link is dropped and its rooms attached again.
const UP_QUEUE: usize = 65_536;

/// The largest batch a follower takes from an owner.
const MAX_BATCH_BYTES: usize = 64 << 20;

/// How often a follower checks that each room it follows is attached at
/// the owner Redis names (a lost `MOVED`, a detach that raced a rejoin).
pub const RECHECK: Duration = Duration::from_secs(5);

/// A gRPC client of a room owner's `Relay` service, with the internal token.
pub type Client = RelayClient<InterceptedService<Channel, InternalToken>>;

/// What the process does with what the owners send.
pub trait Follower: Send + Sync + 'static {
    /// A message of `room`: its seq, history epoch and client frame.
    fn message(&self, room: &str, seq: u64, epoch: &str, frame: String);
    /// A presence event of a member on another node.
    fn presence(&self, room: &str, origin: &str, frame: String);
    /// History may hold messages of `room` that were not streamed here
    /// (after a re-attach, or a publish whose outcome the owner could not
    /// learn): read it after what was delivered.
    fn catch_up(&self, room: &str);
    /// Whether `room` is still followed here (a re-attach stops when not).
    fn wanted(&self, room: &str) -> bool;
    /// This process itself owns `room` at `epoch` (ws-nodes only).
    fn owned_here(&self, room: &str, epoch: u64);
    /// Every room followed here.
    fn rooms(&self) -> Vec<String>;
}

/// Where an attach landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attached {
    /// The room's owner is this process, at this epoch.
    Here(u64),
    /// Another node owns the room and streams it here.
    At(String),
}

/// Why an attach failed; every one is retryable.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("no live node can own the room")]
    NoOwner,
    #[error("the owner {0} did not answer the attach")]
    Unreachable(String),
}

/// Counters a link keeps (the process registers them).
#[derive(Clone, Default)]
pub struct LinkMetrics {
    pub items_received: Option<prometheus::IntCounter>,
    pub reattached: Option<prometheus::IntCounter>,
    /// Periodic checks of the followed rooms done ([`RECHECK`]).
    pub rechecks: Option<prometheus::IntCounter>,
    pub links: Option<prometheus::IntGauge>,
}

/// How a process follows rooms.
pub struct Settings {
    /// This process's id: a ws-node's node id (it may own rooms), or a
    /// gateway's (it never does).
    pub me: String,
    pub token: InternalToken,
    /// How long an unused placement stays pinned to its owner.
    pub pin: Duration,
    /// Placement's load bound (as the routers'; by rooms owned).
    pub load_factor: f64,
}

/// One process's links to room owners.
pub struct Links {
    settings: Settings,
    con: Con,
    metrics: LinkMetrics,
    follower: OnceLock<Weak<dyn Follower>>,
    /// Open links by owner node id.
    links: Mutex<HashMap<String, Arc<Link>>>,
    /// Followed rooms and the owner each is attached at.
    attached: DashMap<String, String>,
    /// Rooms being attached again in the background; true: asked again
    /// meanwhile, so the task goes round once more.
    reattaching: DashMap<String, bool>,
    stop: CancellationToken,
}

struct Link {
    owner: String,
    client: Client,
    up: mpsc::Sender<FollowRequest>,
    /// The owner's port refused the connection: its process is gone.
    refused: AtomicBool,
    /// Attaches waiting for the owner's answer (true: attached).
    waiting: Mutex<HashMap<String, Vec<oneshot::Sender<bool>>>>,
    /// Publishes waiting for the owner's answer, by call number.
    calls: Calls,
    next_call: AtomicU64,
    dead: CancellationToken,
}

impl Links {
    pub fn new(
        settings: Settings,
        con: Con,
        metrics: LinkMetrics,
        stop: CancellationToken,
    ) -> Arc<Links> {
        Arc::new(Links {
            settings,
            con,
            metrics,
            follower: OnceLock::new(),
            links: Mutex::new(HashMap::new()),
            attached: DashMap::new(),
            reattaching: DashMap::new(),
            stop,
        })
    }

    /// Who handles what the owners send; set once, before the first
    /// attach. Starts the periodic check of what is followed here.
    pub fn set_follower(self: &Arc<Self>, follower: Weak<dyn Follower>) {
        if self.follower.set(follower).is_err() {
            return;
        }
        let links = Arc::downgrade(self);
        let stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(RECHECK) => {}
                    _ = stop.cancelled() => return,
                }
                let Some(links) = links.upgrade() else { return };
                links.recheck().await;
                if let Some(c) = &links.metrics.rechecks {
                    c.inc();
                }
            }
        });
    }

    /// Attaches again every followed room that is not attached, or is
    /// attached at a node that Redis no longer names as its owner.
    async fn recheck(self: &Arc<Self>) {
        use futures_util::StreamExt;
        let Some(f) = self.follower() else { return };
        let rooms = f.rooms();
        drop(f);
        let checks = futures_util::stream::iter(rooms)
            .filter_map(|room| async move {
                if self.reattaching.contains_key(&room) {
                    return None;
                }
                let Some(at) = self.attached_at(&room) else {
                    return Some((room, None));
                };
                let mut con = self.con.clone();
                let owner = crate::redis::rooms::claim(&mut con, &room, "", Duration::ZERO, &[])
                    .await
                    .ok()?;
                (owner.node != at).then_some((room, Some((at, owner.node))))
            })
            .collect::<Vec<_>>()
            .await;
        for (room, mismatch) in checks {
            tracing::info!(
                room,
                ?mismatch,
                "followed room not attached at its owner; attaching it again"
            );
            self.reattach(&room);
        }
    }

    fn follower(&self) -> Option<Arc<dyn Follower>> {
        self.follower.get().and_then(Weak::upgrade)
    }

    /// The owner `room` is attached at here, if any.
    pub fn attached_at(&self, room: &str) -> Option<String> {
        self.attached.get(room).map(|o| o.clone())
    }

    /// The owner of `room` now, placing it when it has none (or its owner
    /// is dead, draining, or in `avoid`: nodes this process could not reach).
    pub async fn owner(
        &self,
        room: &str,
        avoid: &[String],
    ) -> Result<crate::redis::Ownership, AttachError> {
        let mut con = self.con.clone();
        let owner = crate::placement::owner(
            &mut con,
            room,
            self.settings.pin,
            self.settings.load_factor,
            avoid,
        )
        .await?;
        if owner.node.is_empty() {
            return Err(AttachError::NoOwner);
        }
        Ok(owner)
    }

    /// Attaches `room`: from the moment this returns, its owner streams
    /// every message published into it here. Tries a few owners (a room may
    /// be moving) and gives up with a retryable error.
    pub async fn attach(self: &Arc<Self>, room: &str) -> Result<Attached, AttachError> {
        let mut avoid: Vec<String> = Vec::new();
        let mut last = AttachError::NoOwner;
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(200));
        for _ in 0..4 {
            let owner = self.owner(room, &avoid).await?;
            if owner.node == self.settings.me {
                self.attached.insert(room.to_owned(), owner.node);
                if let Some(f) = self.follower() {
                    f.owned_here(room, owner.epoch);
                }
                return Ok(Attached::Here(owner.epoch));
            }
            let link = match self.link(&owner.node).await {
                Ok(link) => link,
                Err(e) => {
                    tracing::debug!(room, owner = %owner.node, error = %e, "owner unreachable");
                    last = e;
                    backoff.wait().await;
                    continue;
                }
            };
            // Recorded before it is asked: a `MOVED` or the link's loss
            // that comes before the answer is read finds the room here.
            self.attached.insert(room.to_owned(), owner.node.clone());
            let answer = link.attach(room, &self.settings.me).await;
            if answer == Some(true) {
                if link.dead.is_cancelled() {
                    // The link broke meanwhile.
                    continue;
                }
                return Ok(Attached::At(owner.node));
            }
            self.attached.remove_if(room, |_, at| *at == owner.node);
            if answer.is_none() && !link.dead.is_cancelled() {
                // A live link with no answer in time: the owner is slow or
                // stalled. Ask again later rather than take its room.
                return Err(AttachError::Unreachable(owner.node));
            }
            if answer.is_none() && link.refused.load(Ordering::Acquire) {
                // Nothing listens at the owner's port: its process is gone,
                // and the room is placed anew without waiting for its
                // heartbeat to expire. An owner that is only slow or cut
                // off keeps its rooms (taking them would move them back and
                // forth); members are told `unavailable` meanwhile.
                avoid.push(owner.node.clone());
            }
            // Not the owner (any more), or no answer: ask Redis again.
            last = AttachError::Unreachable(owner.node);
            backoff.wait().await;
        }
        Err(last)
    }

    /// Stops following `room` here.
    pub fn detach(&self, room: &str) {
        let Some((_, owner)) = self.attached.remove(room) else {
            return;
        };
        if let Some(link) = self.link_of(&owner) {
            link.send(Op::Detach, room, "", "");
        }
    }

    /// The open link to `owner`, if there is one.
    fn link_of(&self, owner: &str) -> Option<Arc<Link>> {
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(owner)
            .cloned()
    }

    /// Sends a presence event of a member here to the room's other nodes,
    /// through its owner (best effort: presence carries no seq).
    pub fn presence(&self, room: &str, origin: &str, frame: &str) -> bool {
        let Some(owner) = self.attached_at(room) else {
            return false;
        };
        match self.link_of(&owner) {
            Some(link) => {
                link.send(Op::Presence, room, origin, frame);
                true
            }
            None => false,
        }
    }

    /// Publishes at the room's owner `owner`, on the link's follow stream:
    /// one message each way on a stream already open (a call of its own
    /// would open an HTTP/2 stream per publish), and many publishes in one
    /// write under load. Fails `unavailable` when the link breaks before
    /// the answer, `deadline_exceeded` past [`CALL_TIMEOUT`]: either way
    /// the outcome is unknown, as a call's would be.
    pub async fn publish(
        self: &Arc<Self>,
        owner: &str,
        req: RelayPublishRequest,
    ) -> Result<RelayPublishReply, tonic::Status> {
        let link = self
            .link(owner)
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        link.publish(req).await
    }

    /// A client of `owner`'s `Relay` service (the link's channel).
    pub async fn client(self: &Arc<Self>, owner: &str) -> Result<Client, AttachError> {
        Ok(self.link(owner).await?.client.clone())
    }

    /// The room's owner said it no longer owns it, or the link to it broke:
    /// attach it again wherever it lives now, then catch up from history.
    pub fn reattach(self: &Arc<Self>, room: &str) {
        self.attached.remove(room);
        match self.reattaching.entry(room.to_owned()) {
            dashmap::Entry::Occupied(mut e) => {
                *e.get_mut() = true;
                return;
            }
            dashmap::Entry::Vacant(e) => {
                e.insert(false);
            }
        }
        let links = self.clone();
        let room = room.to_owned();
        tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
            let mut told = false;
            loop {
                let Some(f) = links.follower() else { break };
                if !f.wanted(&room) || links.stop.is_cancelled() {
                    break;
                }
                match links.attach(&room).await {
                    Ok(at) => {
                        if let Some(m) = &links.metrics.reattached {
                            m.inc();
                        }
                        tracing::info!(room, ?at, "room attached again; catching up from history");
                        f.catch_up(&room);
                        break;
                    }
                    Err(e) => {
                        if !told {
                            told = true;
                            tracing::warn!(room, error = %e, "the room's owner cannot be reached; retrying");
                        }
                    }
                }
                drop(f);
                tokio::select! {
                    _ = backoff.wait() => {}
                    _ = links.stop.cancelled() => break,
                }
            }
            // Asked again meanwhile (the link it attached at broke, or the
            // room moved on): once more.
            let again = links
                .reattaching
                .remove_if(&room, |_, again| !*again)
                .is_none();
            if again {
                links.reattaching.remove(&room);
                links.reattach(&room);
                return;
            }
            // Detached meanwhile: the owner may stream it still.
            let still = links.follower().is_some_and(|f| f.wanted(&room));
            if !still {
                links.detach(&room);
            }
        });
    }

    /// The open link to `owner`, or a new one.
    async fn link(self: &Arc<Self>, owner: &str) -> Result<Arc<Link>, AttachError> {
        if let Some(l) = self
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(owner)
            && !l.dead.is_cancelled()
        {
            return Ok(l.clone());
        }
        let mut con = self.con.clone();
        let info = crate::redis::node_info(&mut con, owner)
            .await?
            .ok_or_else(|| AttachError::Unreachable(owner.to_owned()))?;
        let channel = Channel::from_shared(info.internal_url.clone())
            .map_err(|_| AttachError::Unreachable(owner.to_owned()))?
            .connect_timeout(CALL_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        let client = RelayClient::with_interceptor(channel, self.settings.token.clone())
            .max_decoding_message_size(MAX_BATCH_BYTES);
        let (up, rx) = mpsc::channel(UP_QUEUE);
        let link = Arc::new(Link::new(owner, client.clone(), up));
        {
            let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(l) = links.get(owner)
                && !l.dead.is_cancelled()
            {
                return Ok(l.clone());
            }
            links.insert(owner.to_owned(), link.clone());
            if let Some(g) = &self.metrics.links {
                g.set(links.len() as i64);
            }
        }
        let links = self.clone();
        let reader = link.clone();
        tokio::spawn(async move {
            let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
            let mut client = reader.client.clone();
            let why = tokio::select! {
                r = client.follow(requests) => match r {
                    Ok(stream) => links.read(&reader, stream.into_inner()).await,
                    Err(s) => {
                        if refused(&s) {
                            reader.refused.store(true, Ordering::Release);
                        }
                        s.message().to_owned()
                    }
                },
                _ = links.stop.cancelled() => "stopping".to_owned(),
                _ = reader.dead.cancelled() => "its request queue overflowed".to_owned(),
            };
            links.lost(&reader, &why);
        });
        Ok(link)
    }

    /// Reads a follow stream until it ends; returns why it ended.
    async fn read(
        self: &Arc<Self>,
        link: &Link,
        mut stream: tonic::Streaming<turnout_proto::v1::RelayBatch>,
    ) -> String {
        loop {
            let batch = tokio::select! {
                b = stream.message() => b,
                _ = self.stop.cancelled() => return "stopping".into(),
            };
            let batch = match batch {
                Ok(Some(b)) => b,
                Ok(None) => return "the owner ended the stream".into(),
                Err(s) => return s.message().to_owned(),
            };
            if let Some(m) = &self.metrics.items_received {
                m.inc_by(batch.items.len() as u64);
            }
            let Some(f) = self.follower() else {
                return "stopping".into();
            };
            for item in batch.items {
                self.handle(link, &*f, item);
            }
        }
    }

    fn handle(self: &Arc<Self>, link: &Link, f: &dyn Follower, item: RelayItem) {
        let RelayItem {
            kind,
            room,
            seq,
            epoch,
            frame,
            origin,
            call,
            reply,
            code,
            error,
        } = item;
        match Kind::try_from(kind) {
            Ok(Kind::Published) => link.published(call, reply, code, error),
            Ok(Kind::Message) => f.message(&room, seq, &epoch, frame),
            Ok(Kind::Presence) => f.presence(&room, &origin, frame),
            Ok(Kind::Attached) => link.answer(&room, true),
            Ok(Kind::NotOwner) => link.answer(&room, false),
            Ok(Kind::CatchUp) => f.catch_up(&room),
            Ok(Kind::Moved) => {
                if self.attached_at(&room).as_deref() == Some(link.owner.as_str()) {
                    self.reattach(&room);
                }
            }
            Err(_) => tracing::debug!(kind, "unknown relay item ignored"),
        }
    }

    /// A link ended: every room attached through it is attached again.
    fn lost(self: &Arc<Self>, link: &Arc<Link>, why: &str) {
        link.dead.cancel();
        link.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        // Their publishes' outcome is unknown: each caller hears so.
        link.calls.lock().unwrap_or_else(|e| e.into_inner()).clear();
        {
            let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
            if links.get(&link.owner).is_some_and(|l| Arc::ptr_eq(l, link)) {
                links.remove(&link.owner);
            }
            if let Some(g) = &self.metrics.links {
                g.set(links.len() as i64);
            }
        }
        if self.stop.is_cancelled() {
            return;
        }
        let rooms: Vec<String> = self
            .attached
            .iter()
            .filter(|a| a.value() == &link.owner)
            .map(|a| a.key().clone())
            .collect();
        if !rooms.is_empty() {
            tracing::warn!(owner = %link.owner, rooms = rooms.len(), why, "relay link lost; attaching its rooms again");
        }
        for room in rooms {
            self.reattach(&room);
        }
    }
}

/// Publishes waiting for their owner's answer, by call number.
type Calls = Mutex<HashMap<u64, oneshot::Sender<Result<RelayPublishReply, tonic::Status>>>>;

/// Removes a publish's call from its link's `calls` when dropped.
struct Forget<'a>(&'a Calls, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

/// Whether a failed call found nothing listening at the owner's port.
fn refused(s: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = e.source();
    }
    false
}

impl Link {
    fn new(owner: &str, client: Client, up: mpsc::Sender<FollowRequest>) -> Link {
        Link {
            owner: owner.to_owned(),
            client,
            up,
            refused: AtomicBool::new(false),
            waiting: Mutex::new(HashMap::new()),
            calls: Mutex::new(HashMap::new()),
            next_call: AtomicU64::new(0),
            dead: CancellationToken::new(),
        }
    }

    fn send(&self, op: Op, room: &str, origin: &str, frame: &str) {
        self.push(FollowRequest {
            op: op as i32,
            room: room.to_owned(),
            origin: origin.to_owned(),
            frame: frame.to_owned(),
            ..Default::default()
        });
    }

    fn push(&self, req: FollowRequest) {
        if let Err(mpsc::error::TrySendError::Full(req)) = self.up.try_send(req) {
            // Presence is best effort; an attach or detach must not be
            // lost: the link goes, and its rooms are attached again.
            if req.op != Op::Presence as i32 {
                self.dead.cancel();
            }
        }
    }

    /// Asks the owner to stream `room` here (`me`: this process's id);
    /// None when it did not answer.
    async fn attach(&self, room: &str, me: &str) -> Option<bool> {
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(room.to_owned())
            .or_default()
            .push(tx);
        self.send(Op::Attach, room, me, "");
        tokio::select! {
            r = tokio::time::timeout(CALL_TIMEOUT, rx) => r.ok()?.ok(),
            _ = self.dead.cancelled() => None,
        }
    }

    /// Sends a publish up the stream and waits for its answer.
    async fn publish(
        &self,
        mut req: RelayPublishRequest,
    ) -> Result<RelayPublishReply, tonic::Status> {
        let call = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(call, tx);
        req.trace = crate::telemetry::context_fields();
        self.push(FollowRequest {
            op: Op::Publish as i32,
            publish: Some(req),
            call,
            ..Default::default()
        });
        // However this ends (the caller may give up first), the call is
        // forgotten.
        let _forget = Forget(&self.calls, call);
        let lost = || tonic::Status::unavailable("the link to the room's owner broke");
        let answer = tokio::select! {
            // An answer read just before the link broke is the answer.
            biased;
            r = tokio::time::timeout(CALL_TIMEOUT, rx) => match r {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => Err(lost()),
                Err(_) => Err(tonic::Status::deadline_exceeded("the room's owner did not answer in time")),
            },
            _ = self.dead.cancelled() => Err(lost()),
        };
        answer
    }

    /// The owner's answer to publish `call`.
    fn published(&self, call: u64, reply: Option<RelayPublishReply>, code: i32, error: String) {
        let Some(tx) = self
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&call)
        else {
            return;
        };
        let answer = match (reply, tonic::Code::from_i32(code)) {
            (Some(reply), tonic::Code::Ok) => Ok(reply),
            (None, tonic::Code::Ok) => Err(tonic::Status::internal(
                "the room's owner answered without a reply",
            )),
            (_, code) => Err(tonic::Status::new(code, error)),
        };
        let _ = tx.send(answer);
    }

    fn answer(&self, room: &str, attached: bool) {
        let waiters = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(room);
        for w in waiters.into_iter().flatten() {
            let _ = w.send(attached);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> Link {
        let channel = Channel::from_static("http://127.0.0.1:9").connect_lazy();
        let (up, _rx) = mpsc::channel(4);
        let client = RelayClient::with_interceptor(channel, InternalToken::new(None).unwrap());
        Link::new("owner", client, up)
    }

    fn waiting(
        link: &Link,
        call: u64,
    ) -> oneshot::Receiver<Result<RelayPublishReply, tonic::Status>> {
        let (tx, rx) = oneshot::channel();
        link.calls.lock().unwrap().insert(call, tx);
        rx
    }

    /// A publish on `link` under way: sent, and waiting for its answer.
    async fn publishing(
        link: &Arc<Link>,
    ) -> tokio::task::JoinHandle<Result<RelayPublishReply, tonic::Status>> {
        let task = {
            let link = link.clone();
            tokio::spawn(async move { link.publish(RelayPublishRequest::default()).await })
        };
        while link.calls.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        task
    }

    /// Each answer on the stream reaches the publish with its call number,
    /// as the reply or as the status the owner gave.
    #[tokio::test]
    async fn a_publish_hears_its_own_answer() {
        let link = link();
        let (a, b, c, d) = (
            waiting(&link, 1),
            waiting(&link, 2),
            waiting(&link, 3),
            waiting(&link, 4),
        );
        let reply = RelayPublishReply {
            seq: 7,
            epoch: "e".into(),
            ..Default::default()
        };
        link.published(2, Some(reply.clone()), 0, String::new());
        link.published(
            1,
            None,
            tonic::Code::InvalidArgument as i32,
            "bad frame".into(),
        );
        link.published(3, None, 0, String::new());
        link.published(9, Some(reply.clone()), 0, String::new());
        assert_eq!(b.await.unwrap().unwrap(), reply);
        let e = a.await.unwrap().unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (tonic::Code::InvalidArgument, "bad frame")
        );
        assert_eq!(c.await.unwrap().unwrap_err().code(), tonic::Code::Internal);
        assert_eq!(link.calls.lock().unwrap().len(), 1, "call 4 still waits");
        drop(d);
    }

    /// An answer that came in just before the link broke is the answer: a
    /// publish that was stored is not reported failed.
    #[tokio::test]
    async fn an_answer_read_before_the_link_broke_wins() {
        let link = Arc::new(link());
        let publishing = publishing(&link).await;
        let call = *link.calls.lock().unwrap().keys().next().unwrap();
        let reply = RelayPublishReply {
            seq: 3,
            ..Default::default()
        };
        // Both before the publishing task runs again.
        link.published(call, Some(reply.clone()), 0, String::new());
        link.dead.cancel();
        assert_eq!(publishing.await.unwrap().unwrap(), reply);
    }

    /// A caller that gives up (its own deadline dropped it) leaves no call
    /// behind for an answer that may never come.
    #[tokio::test]
    async fn a_publish_given_up_leaves_nothing_behind() {
        let link = Arc::new(link());
        let publishing = publishing(&link).await;
        publishing.abort();
        assert!(publishing.await.unwrap_err().is_cancelled());
        assert!(link.calls.lock().unwrap().is_empty());
    }

    /// A publish whose link breaks before the answer hears `unavailable`
    /// (its outcome is unknown), and leaves nothing behind.
    #[tokio::test]
    async fn a_publish_on_a_broken_link_is_unavailable() {
        let link = Arc::new(link());
        let publishing = publishing(&link).await;
        link.dead.cancel();
        let e = publishing.await.unwrap().unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert!(link.calls.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_port_nothing_listens_on_is_told_from_an_owner_that_does_not_answer() {
        // A port bound and let go: nothing listens on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect_lazy();
        let mut client = RelayClient::with_interceptor(channel, InternalToken::default());
        let e = client
            .publish(RelayPublishRequest::default())
            .await
            .unwrap_err();
        assert!(refused(&e), "{e:?}");
        // Unavailable, but not for want of a listener: a stalled or cut-off
        // owner keeps its rooms.
        assert!(!refused(&tonic::Status::unavailable("no answer in time")));
        assert!(!refused(&tonic::Status::from_error(Box::new(
            std::io::Error::from(std::io::ErrorKind::TimedOut)
        ))));
    }
}
