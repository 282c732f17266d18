//! The Redis pub/sub relay (pubsub strategy).
//!
//! One RESP3 connection carries every room subscription. Its pushes go into a
//! bounded buffer (`bus_buffer`) read by one task that decodes each message
//! once and hands it to the hub, itself or, with `relay_workers` above one,
//! through the worker its room hashes to (a room's messages stay in order on
//! one worker; fan-out writes to idle sockets in place, so it is spread over
//! cores this way). Nothing on this path waits for a client, so a slow
//! client can never make Redis drop the node's subscription. A full buffer
//! drops the push and counts it; the room's next message exposes the gap and
//! the hub fills it from history.
//!
//! Subscriptions follow membership: one task applies subscribe/unsubscribe
//! requests in order, in batches, and decides from the hub's current state, so
//! a room that empties and fills again concurrently ends up subscribed.
//! After a reconnect the client library resubscribes; each confirmation makes
//! the hub fetch what the room missed from history.

use crate::hub::Hub;
use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use redis::PushInfo;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use turnout_common::redis::{RoomPush, channel_room};
use turnout_proto::bus;

/// Handle the hub uses to follow membership with subscriptions.
pub(crate) type Bus = turnout_common::redis::Channels;

/// Connects the pub/sub connection and starts the relay's tasks.
pub(crate) async fn start(
    client: &redis::Client,
    hub: Arc<Hub>,
    buffer: usize,
    workers: usize,
    shutdown: CancellationToken,
) -> redis::RedisResult<Bus> {
    let (con, push_rx) =
        turnout_common::redis::pubsub_bounded(client, buffer, hub.metrics.push_dropped.clone())
            .await?;
    let relay = Relay::start(hub.clone(), workers, buffer);
    tokio::spawn(read_pushes(push_rx, hub.clone(), relay, shutdown.clone()));
    tokio::spawn(turnout_common::redis::watchdog(
        con.clone(),
        hub.metrics.redis_errors.clone(),
        shutdown.clone(),
    ));
    let wanted = {
        let hub = hub.clone();
        move |room: &str| hub.has_room(room)
    };
    let errors = hub.metrics.redis_errors.clone();
    Ok(turnout_common::redis::Channels::start(
        con, wanted, errors, shutdown,
    ))
}

/// One room message or presence event for the hub.
enum Work {
    Message {
        room: String,
        seq: u64,
        frame: Utf8Bytes,
    },
    Presence {
        room: String,
        origin: String,
        frame: Utf8Bytes,
    },
}

impl Work {
    fn run(self, hub: &Arc<Hub>) {
        match self {
            Work::Message { room, seq, frame } => hub.deliver(&room, seq, frame),
            Work::Presence {
                room,
                origin,
                frame,
            } => hub.deliver_presence(&room, &origin, frame),
        }
    }
}

/// Where decoded pushes go: the reader itself, or one of several workers
/// chosen by the room's hash.
struct Relay {
    hub: Arc<Hub>,
    workers: Vec<mpsc::Sender<Work>>,
    hasher: std::hash::RandomState,
}

impl Relay {
    fn start(hub: Arc<Hub>, workers: usize, buffer: usize) -> Relay {
        let workers = if workers <= 1 { 0 } else { workers };
        let senders = (0..workers)
            .map(|_| {
                let (tx, mut rx) = mpsc::channel::<Work>((buffer / workers).max(64));
                let hub = hub.clone();
                tokio::spawn(async move {
                    while let Some(w) = rx.recv().await {
                        w.run(&hub);
                    }
                });
                tx
            })
            .collect();
        Relay {
            hub,
            workers: senders,
            hasher: Default::default(),
        }
    }

    async fn send(&self, w: Work) {
        let room = match &w {
            Work::Message { room, .. } | Work::Presence { room, .. } => room,
        };
        if self.workers.is_empty() {
            return w.run(&self.hub);
        }
        let i = std::hash::BuildHasher::hash_one(&self.hasher, room) as usize % self.workers.len();
        // Waits when that worker is behind: the reader's buffer absorbs it.
        let _ = self.workers[i].send(w).await;
    }
}

async fn read_pushes(
    mut rx: mpsc::Receiver<PushInfo>,
    hub: Arc<Hub>,
    relay: Relay,
    shutdown: CancellationToken,
) {
    loop {
        let push = tokio::select! {
            p = rx.recv() => match p { Some(p) => p, None => return },
            _ = shutdown.cancelled() => return,
        };
        match RoomPush::decode(push) {
            Some(RoomPush::Message(channel, payload)) => {
                hub.metrics.bus_messages.inc();
                let Some(room) = channel_room(&channel) else {
                    continue;
                };
                let (seq, start) = match bus::decode_any(&payload) {
                    Some(bus::Payload::Message { seq, frame }) => {
                        (Some(seq), payload.len() - frame.len())
                    }
                    Some(bus::Payload::Presence { origin, frame }) => {
                        if let Ok(text) = std::str::from_utf8(frame) {
                            let (room, origin) = (room.to_owned(), origin.to_owned());
                            relay
                                .send(Work::Presence {
                                    room,
                                    origin,
                                    frame: text.into(),
                                })
                                .await;
                        }
                        continue;
                    }
                    None => {
                        tracing::warn!(room, "undecodable bus payload dropped");
                        continue;
                    }
                };
                let Ok(frame) = Utf8Bytes::try_from(Bytes::from(payload).slice(start..)) else {
                    tracing::warn!(room, "non-UTF-8 bus payload dropped");
                    continue;
                };
                if let Some(seq) = seq {
                    let room = room.to_owned();
                    relay.send(Work::Message { room, seq, frame }).await;
                }
            }
            Some(RoomPush::Disconnected) => {
                hub.metrics.redis_disconnects.inc();
                tracing::warn!("Redis pub/sub connection lost; reconnecting and resubscribing");
            }
            Some(RoomPush::Subscribed(channel)) => {
                let Some(room) = channel_room(&channel) else {
                    continue;
                };
                if hub.last_seq(room).is_some() {
                    // Known room subscribed again: a reconnect. Catch up from history.
                    hub.metrics.resubscribed.inc();
                    let hub = hub.clone();
                    let room = room.to_owned();
                    tokio::spawn(async move { hub.resync(&room).await });
                }
            }
            None => {}
        }
    }
}
