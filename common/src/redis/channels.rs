//! Room-channel subscriptions that follow what their owner wants.

use super::Con;
use turnout_proto::keys;

/// How long a room channel the server unsubscribed waits before it is
/// subscribed again (see [`Channels::lost`]).
pub const RESUBSCRIBE_AFTER: std::time::Duration = std::time::Duration::from_millis(250);

enum ChannelCmd {
    Ensure(String, tokio::sync::oneshot::Sender<Result<(), String>>),
    Release(String),
    Lost(String),
}

/// Keeps the room-channel subscriptions of one pub/sub connection in line
/// with what its owner wants (`wanted(room)`): one task applies requests in
/// order and in batches, and decides from `wanted` at the time it handles
/// them, so a room that empties and fills again concurrently always ends up
/// subscribed.
pub struct Channels {
    cmds: tokio::sync::mpsc::UnboundedSender<ChannelCmd>,
}

impl Channels {
    /// Starts the task; it stops with `stop`. Failed commands count in `errors`.
    pub fn start(
        con: Con,
        wanted: impl Fn(&str) -> bool + Send + Sync + 'static,
        errors: prometheus::IntCounter,
        stop: tokio_util::sync::CancellationToken,
    ) -> Channels {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let retry = tx.downgrade();
        tokio::spawn(manage_channels(rx, retry, con, wanted, errors, stop));
        Channels { cmds: tx }
    }

    /// Returns once `room`'s channel is subscribed (or no longer wanted).
    pub async fn ensure(&self, room: &str) -> Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.cmds
            .send(ChannelCmd::Ensure(room.to_owned(), tx))
            .map_err(|_| "pub/sub stopped".to_owned())?;
        rx.await.map_err(|_| "pub/sub stopped".to_owned())?
    }

    /// Unsubscribes `room`'s channel if it is still unwanted when handled.
    pub fn release(&self, room: &str) {
        let _ = self.cmds.send(ChannelCmd::Release(room.to_owned()));
    }

    /// The server unsubscribed `room`'s channel (an unsubscribe push): it
    /// is subscribed again if still wanted. On a Redis Cluster this is how
    /// a room follows its slot to another shard, or to a promoted replica;
    /// the subscribe confirmation that follows makes the owner catch up
    /// from history.
    ///
    /// The subscription is made again after [`RESUBSCRIBE_AFTER`]: a shard's
    /// nodes learn of a failover by gossip, and a subscription made before
    /// they agree can land on the old master, a replica by then, where the
    /// new master's messages do not reach it. What the room missed
    /// meanwhile comes from history once it is subscribed.
    pub fn lost(&self, room: &str) {
        lost_later(self.cmds.downgrade(), room.to_owned());
    }
}

/// Sends `Lost(room)` after [`RESUBSCRIBE_AFTER`], unless the channels
/// are gone by then.
fn lost_later(cmds: tokio::sync::mpsc::WeakUnboundedSender<ChannelCmd>, room: String) {
    tokio::spawn(async move {
        tokio::time::sleep(RESUBSCRIBE_AFTER).await;
        if let Some(cmds) = cmds.upgrade() {
            let _ = cmds.send(ChannelCmd::Lost(room));
        }
    });
}

async fn manage_channels(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<ChannelCmd>,
    retry: tokio::sync::mpsc::WeakUnboundedSender<ChannelCmd>,
    mut con: Con,
    wanted: impl Fn(&str) -> bool,
    errors: prometheus::IntCounter,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut subscribed: std::collections::HashSet<String> = Default::default();
    let mut batch = Vec::new();
    loop {
        // Whatever is queued (up to a bound), handled as one batch.
        tokio::select! {
            n = rx.recv_many(&mut batch, 4096) => if n == 0 { return },
            _ = stop.cancelled() => return,
        }
        let mut mentioned = Vec::new();
        let mut waiters = Vec::new();
        let mut lost = Vec::new();
        let mut lost_rooms = std::collections::HashSet::new();
        for cmd in batch.drain(..) {
            match cmd {
                ChannelCmd::Ensure(room, tx) => {
                    mentioned.push(room.clone());
                    waiters.push((room, tx));
                }
                ChannelCmd::Release(room) => mentioned.push(room),
                ChannelCmd::Lost(room) => {
                    if subscribed.remove(&room) {
                        lost.push(keys::room_channel(&room));
                    }
                    lost_rooms.insert(room.clone());
                    mentioned.push(room);
                }
            }
        }
        mentioned.sort_unstable();
        mentioned.dedup();
        // Decide from the owner's state now, which includes every request queued so far.
        let (mut sub, mut unsub) = (Vec::new(), Vec::new());
        for room in mentioned {
            match (wanted(&room), subscribed.contains(&room)) {
                (true, false) => sub.push(room),
                (false, true) => unsub.push(room),
                _ => {}
            }
        }
        if !unsub.is_empty() {
            let channels: Vec<String> = unsub.iter().map(|r| keys::room_channel(r)).collect();
            match con.unsubscribe_rooms(&channels).await {
                Ok(()) => unsub.iter().for_each(|r| {
                    subscribed.remove(r);
                }),
                Err(e) => {
                    errors.inc();
                    tracing::warn!(error = %e, rooms = unsub.len(), "unsubscribe failed");
                }
            }
        }
        // (A no-op without lost channels, or on one Redis.)
        con.relearn_slots(&lost).await;
        let mut failed: Option<String> = None;
        if !sub.is_empty() {
            let channels: Vec<String> = sub.iter().map(|r| keys::room_channel(r)).collect();
            match con.subscribe_rooms(&channels).await {
                Ok(()) => subscribed.extend(sub),
                Err(e) => {
                    errors.inc();
                    tracing::warn!(error = %e, rooms = sub.len(), "subscribe failed");
                    // A room the server unsubscribed has no one waiting
                    // to retry it: try again until it is subscribed or
                    // no longer wanted.
                    for room in sub.into_iter().filter(|r| lost_rooms.contains(r)) {
                        lost_later(retry.clone(), room);
                    }
                    failed = Some(e.to_string());
                }
            }
        }
        for (room, tx) in waiters {
            let result = if subscribed.contains(&room) || !wanted(&room) {
                Ok(())
            } else {
                Err(failed.clone().unwrap_or_else(|| "not subscribed".into()))
            };
            let _ = tx.send(result);
        }
    }
}
